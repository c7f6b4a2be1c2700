package promql

import (
	"fmt"
	"slices"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// perSeriesFunctions compute each output series from one input series (or,
// for histogram_quantile and the histogram_ functions, from the buckets of
// one histogram), keeping its labels but __name__ (and le): the value they
// give for one object does not depend on the other objects' series.
var perSeriesFunctions = []string{
	"abs", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt", "sgn",
	"clamp", "clamp_min", "clamp_max",
	"rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "resets", "changes",
	"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
	"quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time",
	"histogram_quantile", "histogram_avg", "histogram_count", "histogram_sum", "histogram_fraction",
	"histogram_stddev", "histogram_stdvar",
}

// PerObject checks that expr, a rule's query rendered for one object whose
// series carry probe (a value no real object has) in label, gives each
// object the value the same query for that object alone gives: each
// object's value comes from that object's series only. Then one query for
// many objects can answer for each of them (queries shared across HPAs).
//
// It holds when every series selector names the objects (its matcher on
// label is the one rendered for probe), every aggregation keeps label in
// its groups (by (..., label), or without (...) that leaves it), functions
// work series by series (rate, *_over_time, histogram_quantile, abs, ...:
// perSeriesFunctions), and binary operations are with constants or between
// two such expressions matched on label. It does not hold, and the error
// says why, for topk or a sum over every object, a ratio to a total,
// scalar(), absent(), label_replace() (which can rename the object label),
// a selector of other series (a total), or anything else.
func PerObject(expr, label, probe string) error {
	e, err := parse.ParseExpr(expr)
	if err != nil {
		return err
	}
	return objects{label, probe}.check(e)
}

// objects is the label that names the objects and the probe value the
// expression was rendered for.
type objects struct{ label, probe string }

func (o objects) check(node parser.Node) error {
	label := o.label
	switch n := node.(type) {
	case *parser.VectorSelector:
		for _, m := range n.LabelMatchers {
			if m.Name == label && (m.Type == labels.MatchEqual || m.Type == labels.MatchRegexp) && m.Matches(o.probe) && !m.Matches("") &&
				!m.Matches(o.probe+"x") {
				return nil
			}
		}
		return fmt.Errorf("the selector %s does not name the objects (no matcher on %s for the objects asked for): it reads other series", n, label)
	case *parser.MatrixSelector:
		return o.check(n.VectorSelector)
	case *parser.SubqueryExpr:
		return o.check(n.Expr)
	case *parser.ParenExpr:
		return o.check(n.Expr)
	case *parser.StepInvariantExpr:
		return o.check(n.Expr)
	case *parser.UnaryExpr:
		return o.check(n.Expr)
	case *parser.NumberLiteral, *parser.StringLiteral:
		return nil
	case *parser.Call:
		if !slices.Contains(perSeriesFunctions, n.Func.Name) {
			return fmt.Errorf("%s() is not computed series by series", n.Func.Name)
		}
		for _, a := range n.Args {
			if err := o.argument(a); err != nil {
				return err
			}
		}
		return nil
	case *parser.AggregateExpr:
		keeps := slices.Contains(n.Grouping, label)
		if n.Without {
			keeps = !keeps
		}
		if !keeps {
			return fmt.Errorf("%s aggregates over every object: it does not group by %s", n.Op, label)
		}
		if n.Param != nil && !constant(n.Param) {
			return fmt.Errorf("the parameter of %s reads series", n.Op)
		}
		return o.check(n.Expr)
	case *parser.BinaryExpr:
		lc, rc := constant(n.LHS), constant(n.RHS)
		switch {
		case lc && rc:
			return nil
		case lc:
			return o.check(n.RHS)
		case rc:
			return o.check(n.LHS)
		}
		if vm := n.VectorMatching; vm != nil && vm.On != slices.Contains(vm.MatchingLabels, label) {
			return fmt.Errorf("%s matches series of different objects (not on %s)", n.Op, label)
		}
		if err := o.check(n.LHS); err != nil {
			return err
		}
		return o.check(n.RHS)
	default:
		return fmt.Errorf("%T is not known to be computed object by object", node)
	}
}

// argument is check for a function's argument, which may be a constant
// (clamp's bounds, histogram_quantile's quantile).
func (o objects) argument(e parser.Expr) error {
	if constant(e) {
		return nil
	}
	return o.check(e)
}

// constant reports whether e reads no series: numbers and strings, and
// arithmetic of them.
func constant(e parser.Expr) bool {
	switch n := e.(type) {
	case *parser.NumberLiteral, *parser.StringLiteral:
		return true
	case *parser.ParenExpr:
		return constant(n.Expr)
	case *parser.StepInvariantExpr:
		return constant(n.Expr)
	case *parser.UnaryExpr:
		return constant(n.Expr)
	case *parser.BinaryExpr:
		return constant(n.LHS) && constant(n.RHS)
	default:
		return false
	}
}

// OutermostAggregation is the aggregation expr ends with ("sum", "min",
// "max", "count"; parentheses aside), or "" when it ends with anything
// else. The value of a set of objects is then that aggregation of their
// values, for sum, min and max, or their sum, for count.
func OutermostAggregation(expr string) string {
	e, err := parse.ParseExpr(expr)
	if err != nil {
		return ""
	}
	for {
		switch n := e.(type) {
		case *parser.ParenExpr:
			e = n.Expr
			continue
		case *parser.StepInvariantExpr:
			e = n.Expr
			continue
		case *parser.AggregateExpr:
			switch op := n.Op.String(); op {
			case "sum", "min", "max", "count":
				return op
			}
		}
		return ""
	}
}

// GroupByObjects rewrites expr, a query whose every selector names one
// object by label (an external metric's selector, app="a"), so that it
// answers for many objects at once: every aggregation groups by label too
// and every on() matching matches on it. The value for one object is then
// the series of that object (what the query restricted to that object's
// series gives), when PerObject holds for the result. keeps reports
// whether expr's own answer carries label (else a shared answer's series
// should have it removed).
func GroupByObjects(expr, label string) (rewritten string, keeps bool, err error) {
	e, err := parse.ParseExpr(expr)
	if err != nil {
		return "", false, err
	}
	keeps = carries(e, label)
	err = parser.Walk(rewriter{label}, e, nil)
	if err != nil {
		return "", false, err
	}
	return e.String(), keeps, nil
}

// rewriter adds label to aggregations' groups and on() matchings.
type rewriter struct{ label string }

func (r rewriter) Visit(node parser.Node, _ []parser.Node) (parser.Visitor, error) {
	switch n := node.(type) {
	case *parser.AggregateExpr:
		has := slices.Contains(n.Grouping, r.label)
		switch {
		case n.Without && has:
			return nil, fmt.Errorf("%s without (%s) aggregates over the objects", n.Op, r.label)
		case !n.Without && !has:
			n.Grouping = append(n.Grouping, r.label)
		}
	case *parser.BinaryExpr:
		if vm := n.VectorMatching; vm != nil && vm.On && !slices.Contains(vm.MatchingLabels, r.label) {
			vm.MatchingLabels = append(vm.MatchingLabels, r.label)
		}
	}
	return r, nil
}

// carries reports whether the series e answers with have label, as far as
// the expression tells (a selector that names it, functions that keep it,
// aggregations that group by it).
func carries(node parser.Node, label string) bool {
	switch n := node.(type) {
	case *parser.VectorSelector:
		for _, m := range n.LabelMatchers {
			if m.Name == label && (m.Type == labels.MatchEqual || m.Type == labels.MatchRegexp) && !m.Matches("") {
				return true
			}
		}
		return false
	case *parser.MatrixSelector:
		return carries(n.VectorSelector, label)
	case *parser.SubqueryExpr:
		return carries(n.Expr, label)
	case *parser.ParenExpr:
		return carries(n.Expr, label)
	case *parser.StepInvariantExpr:
		return carries(n.Expr, label)
	case *parser.UnaryExpr:
		return carries(n.Expr, label)
	case *parser.Call:
		for _, a := range n.Args {
			if !constant(a) {
				return carries(a, label)
			}
		}
		return false
	case *parser.AggregateExpr:
		if n.Without {
			return !slices.Contains(n.Grouping, label) && carries(n.Expr, label)
		}
		return slices.Contains(n.Grouping, label)
	case *parser.BinaryExpr:
		switch {
		case constant(n.LHS):
			return carries(n.RHS, label)
		case n.VectorMatching != nil && n.VectorMatching.Card == parser.CardOneToMany:
			return carries(n.RHS, label)
		default:
			return carries(n.LHS, label)
		}
	default:
		return false
	}
}
