package promql

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// parse is Prometheus' own parser, with its default functions (no
// experimental ones: info(), which reads series the expression does not
// select, is not among them).
var parse = parser.NewParser(parser.Options{})

// Parse parses a PromQL expression with Prometheus' own parser.
func Parse(expr string) error {
	_, err := parse.ParseExpr(expr)
	return err
}

// ParseSeriesSelector parses a series selector (a seriesQuery:
// `name{label="value"}` or `{__name__=~"..."}`) as Prometheus'
// /api/v1/series takes it.
func ParseSeriesSelector(sel string) error {
	_, err := parse.ParseMetricSelector(sel)
	return err
}

// Window returns the longest range of an expression ("[1m]", or the range
// of a subquery "[5m:30s]"), the window its values are computed over. It
// reports false when the expression has none or does not parse.
func Window(expr string) (time.Duration, bool) {
	e, err := parse.ParseExpr(expr)
	if err != nil {
		return 0, false
	}
	var longest time.Duration
	found := false
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.MatrixSelector:
			longest, found = max(longest, n.Range), true
		case *parser.SubqueryExpr:
			longest, found = max(longest, n.Range), true
		}
		return nil
	})
	return longest, found
}

// SelectedName is the metric name a series selector selects, when it
// names one: name{...}, or {__name__="name",...}.
func SelectedName(sel string) (string, bool) {
	ms, err := parse.ParseMetricSelector(sel)
	if err != nil {
		return "", false
	}
	for _, m := range ms {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
			return m.Value, true
		}
	}
	return "", false
}

// SelectorMatches returns whether a series (its labels, with __name__)
// matches a series selector, as Prometheus' /api/v1/series matches it: a
// label the series lacks is the empty string.
func SelectorMatches(sel string) (func(model.LabelSet) bool, error) {
	ms, err := parse.ParseMetricSelector(sel)
	if err != nil {
		return nil, err
	}
	return func(ls model.LabelSet) bool {
		for _, m := range ms {
			if !m.Matches(string(ls[model.LabelName(m.Name)])) {
				return false
			}
		}
		return true
	}, nil
}

// ErrUnconfinable is an expression Confine refuses.
var ErrUnconfinable = errors.New("cannot be confined")

// Confine rewrites a PromQL expression so that every series it reads
// carries label="value": each vector selector, alone, in a range or in a
// subquery, gets that matcher, and every matcher the expression had on
// label is dropped. Whatever the expression does with what it reads
// (or, unless, and, subqueries, label_replace, aggregations, offset and @
// modifiers), it reads nothing else: a selector of every series,
// {__name__=~".+"}, reads that label value's series only. Functions that
// read series the expression does not select (info(), which the default
// parser does not accept) are refused.
//
// It returns the expression as Prometheus prints it.
func Confine(expr, label, value string) (string, error) {
	if label == "" || label == model.MetricNameLabel {
		return "", fmt.Errorf("confining to label %q: not a label a series can be confined by", label)
	}
	e, err := parse.ParseExpr(expr)
	if err != nil {
		return "", err
	}
	confined, err := labels.NewMatcher(labels.MatchEqual, label, value)
	if err != nil {
		return "", err
	}
	var refused error
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			kept := make([]*labels.Matcher, 0, len(n.LabelMatchers)+1)
			for _, m := range n.LabelMatchers {
				if m.Name != label {
					kept = append(kept, m)
				}
			}
			n.LabelMatchers = append(kept, confined)
		case *parser.Call:
			if n.Func != nil && strings.EqualFold(n.Func.Name, "info") {
				refused = fmt.Errorf("%w: %s() reads series the expression does not select", ErrUnconfinable, n.Func.Name)
			}
		}
		return nil
	})
	if refused != nil {
		return "", refused
	}
	return e.String(), nil
}
