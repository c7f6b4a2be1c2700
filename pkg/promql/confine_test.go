package promql

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// confinedTo fails unless every vector selector of expr (alone, in a
// range, in a subquery) has exactly one matcher on label, label="value".
func confinedTo(t testing.TB, expr, label, value string) {
	t.Helper()
	e, err := parse.ParseExpr(expr)
	if err != nil {
		t.Fatalf("the confined expression does not parse: %v\n%s", err, expr)
	}
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		var on []*labels.Matcher
		for _, m := range vs.LabelMatchers {
			if m.Name == label {
				on = append(on, m)
			}
		}
		if len(on) != 1 || on[0].Type != labels.MatchEqual || on[0].Value != value {
			t.Fatalf("selector %s is not confined to %s=%q: %v\nin %s", vs, label, value, on, expr)
		}
		return nil
	})
}

// Nothing a rule's author writes reads another namespace's series.
func TestConfine(t *testing.T) {
	for _, tc := range []struct {
		expr, want string
	}{
		{`sum(rate(app_requests_total{namespace="b"}[1m])) by (pod)`, `sum by (pod) (rate(app_requests_total{namespace="a"}[1m]))`},
		{`up{namespace=~".+"}`, `up{namespace="a"}`},
		{`up{namespace!="a"}`, `up{namespace="a"}`},
		{`{__name__=~".+"}`, `{__name__=~".+",namespace="a"}`},
		{`up or on() up{namespace="b"}`, `up{namespace="a"} or on () up{namespace="a"}`},
		{`up unless up{namespace="b"}`, `up{namespace="a"} unless up{namespace="a"}`},
		{`max_over_time(up{namespace="b"}[5m:1m] offset 1h)`, `max_over_time(up{namespace="a"}[5m:1m] offset 1h)`},
		{`up{namespace="b"} @ 1700000000`, `up{namespace="a"} @ 1700000000.000`},
		{`label_replace(up{namespace="b"}, "namespace", "a", "", "")`, `label_replace(up{namespace="a"}, "namespace", "a", "", "")`},
		{`absent(nothing{namespace="b"})`, `absent(nothing{namespace="a"})`},
		{`vector(1) + scalar(up)`, `vector(1) + scalar(up{namespace="a"})`},
		{`count({__name__!=""}) by (namespace)`, `count by (namespace) ({__name__!="",namespace="a"})`},
	} {
		got, err := Confine(tc.expr, "namespace", "a")
		if err != nil {
			t.Errorf("Confine(%s): %v", tc.expr, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Confine(%s) = %s, want %s", tc.expr, got, tc.want)
		}
		confinedTo(t, got, "namespace", "a")
	}
	for _, tc := range []struct{ expr, want string }{
		{`info(up)`, "info"},
		{`sum(`, "unclosed left parenthesis"},
	} {
		if _, err := Confine(tc.expr, "namespace", "a"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Confine(%s) = %v, want an error saying %q", tc.expr, err, tc.want)
		}
	}
	if _, err := Confine("up", "__name__", "x"); err == nil {
		t.Error("confining by __name__ was accepted")
	}
}

// FuzzIsolation: whatever the input, Confine either refuses it or returns
// an expression whose every selector is confined to the namespace, and
// confining that again changes nothing.
func FuzzIsolation(f *testing.F) {
	for _, seed := range []string{
		`sum(rate(app_requests_total{namespace="b",pod=~"a|b"}[1m])) by (pod)`,
		`{__name__=~".+"}`, `up{namespace=~"b|a"} or on() down{namespace!="a"}`,
		`max_over_time((up unless up{namespace="b"})[10m:30s] offset -5m @ end())`,
		`label_replace(sum by (namespace) (up), "namespace", "b", "namespace", ".*")`,
		`count_values("x", up) * on(namespace) group_left topk(3, {namespace="b"})`,
		`absent_over_time(x{namespace="b"}[1h]) > bool 0`, `-vector(time())`, `"string"`, `1 + 2`,
		`sort_by_label(up{namespace="b"}, "pod")`, `histogram_quantile(0.9, sum by (le) (rate(h_bucket{namespace="b"}[5m])))`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		got, err := Confine(expr, "namespace", "a")
		if err != nil {
			if _, perr := parse.ParseExpr(expr); perr == nil && !errors.Is(err, ErrUnconfinable) {
				t.Fatalf("Confine(%q) refused a parseable expression: %v", expr, err)
			}
			return
		}
		confinedTo(t, got, "namespace", "a")
		again, err := Confine(got, "namespace", "a")
		if err != nil || again != got {
			t.Fatalf("confining %q again: %q, %v", got, again, err)
		}
	})
}
