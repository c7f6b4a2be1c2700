// Package promql is the adapter's PromQL: it builds the label matchers a
// rule's metricsQuery gets for objects and Kubernetes label selectors
// (Matcher, with its MatchOp; FromSelector, whose SelectorError is a
// selector PromQL cannot say), with every value escaped so that no request can
// change the shape of a query; and, with Prometheus' own parser, it checks
// rules' PromQL (Parse, ParseSeriesSelector), reads what a query is over
// (Window, SelectedName) and confines a team's PromQL to its namespace
// (Confine). It quotes text for messages (Short, Cut).
//
// It does not evaluate PromQL; Prometheus does that.
package promql

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// MatchOp is a PromQL label matching operator.
type MatchOp string

// The four PromQL matching operators.
const (
	Equal     MatchOp = "="
	NotEqual  MatchOp = "!="
	RegexpEq  MatchOp = "=~"
	RegexpNeq MatchOp = "!~"
)

// Matcher is one PromQL label matcher. Value is the raw value: for regex
// operators it is a regular expression, for the others a literal.
type Matcher struct {
	Name  string
	Op    MatchOp
	Value string
}

// String renders the matcher with its value quoted as a PromQL string.
func (m Matcher) String() string {
	return m.Name + string(m.Op) + Quote(m.Value)
}

// Quote renders s as a double-quoted PromQL string literal. PromQL string
// literals follow Go's escaping rules, so the result always unquotes to s
// and never ends before its closing quote.
func Quote(s string) string {
	return strconv.Quote(s)
}

// StringBody is s escaped for the inside of a double-quoted PromQL string:
// Quote(s) without its quotes.
func StringBody(s string) string {
	q := Quote(s)
	return q[1 : len(q)-1]
}

// Equals matches label name equal to the literal value.
func Equals(name, value string) Matcher { return Matcher{Name: name, Op: Equal, Value: value} }

// OneOf matches label name equal to any of values (as literals). With one
// value it is an equality matcher. Values are deduplicated and sorted so
// that equal sets render to equal queries.
func OneOf(name string, values []string) Matcher {
	if len(values) > 0 && !slices.ContainsFunc(values, func(v string) bool { return v != values[0] }) {
		return Equals(name, values[0])
	}
	return Matcher{Name: name, Op: RegexpEq, Value: Alternation(values)}
}

// Alternation returns a regular expression matching exactly the given
// literal strings: each is escaped with regexp.QuoteMeta and they are joined
// with |. The result is sorted and deduplicated.
func Alternation(values []string) string {
	vs := slices.Clone(values)
	slices.Sort(vs)
	vs = slices.Compact(vs)
	var b strings.Builder
	for i, v := range vs {
		if i > 0 {
			b.WriteByte('|')
		}
		b.WriteString(regexp.QuoteMeta(v))
	}
	return b.String()
}

// Join renders matchers as a comma-separated list, the form of a rule's
// .LabelMatchers.
func Join(ms []Matcher) string {
	var b strings.Builder
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.String())
	}
	return b.String()
}

// SelectorError is returned for a Kubernetes label selector that has no
// PromQL equivalent. Callers turn it into a 400 Bad Request.
type SelectorError struct {
	Requirement string
	Reason      string
}

func (e *SelectorError) Error() string {
	return fmt.Sprintf("metric label selector %q cannot be used with Prometheus: %s", e.Requirement, e.Reason)
}

// FromSelector converts a Kubernetes label selector (the metricSelector of
// an HPA metric) into PromQL matchers. Set-based requirements become regex
// matchers of escaped literals; Exists and DoesNotExist become != "" and
// = "". Greater-than and less-than, and label keys that are not valid
// Prometheus label names, are rejected with a *SelectorError.
func FromSelector(sel labels.Selector) ([]Matcher, error) {
	if sel == nil || sel.Empty() {
		return nil, nil
	}
	reqs, selectable := sel.Requirements()
	if !selectable {
		return nil, &SelectorError{Requirement: sel.String(), Reason: "it can never match"}
	}
	out := make([]Matcher, 0, len(reqs))
	for _, r := range reqs {
		key := r.Key()
		if !model.LegacyValidation.IsValidLabelName(key) {
			return nil, &SelectorError{Requirement: r.String(), Reason: fmt.Sprintf("%q is not a valid Prometheus label name", key)}
		}
		values := r.ValuesUnsorted()
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals:
			out = append(out, Equals(key, values[0]))
		case selection.NotEquals:
			out = append(out, Matcher{Name: key, Op: NotEqual, Value: values[0]})
		case selection.In:
			out = append(out, OneOf(key, values))
		case selection.NotIn:
			if len(values) == 1 {
				out = append(out, Matcher{Name: key, Op: NotEqual, Value: values[0]})
			} else {
				out = append(out, Matcher{Name: key, Op: RegexpNeq, Value: Alternation(values)})
			}
		case selection.Exists:
			out = append(out, Matcher{Name: key, Op: NotEqual, Value: ""})
		case selection.DoesNotExist:
			out = append(out, Equals(key, ""))
		default:
			return nil, &SelectorError{Requirement: r.String(), Reason: fmt.Sprintf("operator %q has no PromQL matcher", r.Operator())}
		}
	}
	return out, nil
}
