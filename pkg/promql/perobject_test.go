package promql

import (
	"strings"
	"testing"
)

// A query can answer for many objects at once only where each object's
// value comes from its own series: the shapes prometheus-adapter's rules
// use can, and each way of mixing objects cannot, with the reason.
func TestPerObject(t *testing.T) {
	const p = `pod=~"probe"`
	for _, tc := range []struct {
		expr string
		why  string // "" when it is per object
	}{
		{`sum(rate(app_requests_total{namespace="shop",` + p + `}[1m])) by (pod)`, ""},
		{`sum by (namespace, pod) (rate(x{` + p + `}[2m])) * 1000`, ""},
		{`rate(x{` + p + `}[1m])`, ""},
		{`avg_over_time(x{` + p + `}[5m:30s])`, ""},
		{`histogram_quantile(0.9, sum by (pod, le) (rate(x_bucket{` + p + `}[5m])))`, ""},
		{`sum by (pod) (rate(errors_total{` + p + `}[1m])) / sum by (pod) (rate(requests_total{` + p + `}[1m]))`, ""},
		{`sum without (container) (x{` + p + `})`, ""},
		{`clamp_min(sum by (pod) (x{` + p + `}), 0)`, ""},
		{`max by (pod) (x{` + p + `}) > 0`, ""},
		{`x{pod="probe"} / on (pod) group_left y{pod="probe"}`, ""},

		{`sum(rate(x{` + p + `}[1m]))`, "does not group by pod"},
		{`topk(3, x{` + p + `})`, "does not group by pod"},
		{`sum without (pod) (x{` + p + `})`, "does not group by pod"},
		{`sum by (pod) (x{` + p + `}) / scalar(sum(x{` + p + `}))`, "scalar() is not computed series by series"},
		{`sum by (pod) (x{` + p + `}) / on () group_left sum(x{` + p + `})`, "not on pod"},
		{`x{` + p + `} / ignoring (pod) y{` + p + `}`, "not on pod"},
		{`sum by (pod) (x{` + p + `}) / on (pod) group_left sum by (pod) (x{namespace="shop"})`, "does not name the objects"},
		{`x{pod=~".+"}`, "does not name the objects"},
		{`x{pod!="other"}`, "does not name the objects"},
		{`label_replace(x{` + p + `}, "pod", "a", "", "")`, "label_replace() is not computed"},
		{`absent(x{` + p + `})`, "absent() is not computed"},
		{`quantile(scalar(y{` + p + `}), x{` + p + `})`, "does not group by pod"},
		{`quantile by (pod) (scalar(y{` + p + `}), x{` + p + `})`, "parameter of quantile reads series"},
	} {
		err := PerObject(tc.expr, "pod", "probe")
		switch {
		case tc.why == "" && err != nil:
			t.Errorf("%s: %v, want per object", tc.expr, err)
		case tc.why != "" && (err == nil || !strings.Contains(err.Error(), tc.why)):
			t.Errorf("%s: %v, want an error saying %q", tc.expr, err, tc.why)
		}
	}
	if err := PerObject("sum(", "pod", "probe"); err == nil {
		t.Error("a query that does not parse is per object")
	}
}

func TestOutermostAggregation(t *testing.T) {
	for expr, want := range map[string]string{
		`sum(rate(x[1m])) by (namespace, pod)`: "sum",
		`(max by (pod) (x))`:                   "max",
		`count by (pod) (x)`:                   "count",
		`avg by (pod) (x)`:                     "",
		`sum by (pod) (x) * 2`:                 "",
		`rate(x[1m])`:                          "",
		`sum(`:                                 "",
	} {
		if got := OutermostAggregation(expr); got != want {
			t.Errorf("%s: %q, want %q", expr, got, want)
		}
	}
}

// An external metric's query for one object (app="a") is rewritten to
// answer for several: aggregations group by the object label, on()
// matchings match on it; the rewritten query is per object, and says
// whether the original answer carried the label.
func TestGroupByObjects(t *testing.T) {
	for _, tc := range []struct {
		expr, want string
		keeps      bool
		perObject  bool
	}{
		{`sum(rate(x{namespace="shop",app="probe"}[1m]))`, `sum by (app) (rate(x{app="probe",namespace="shop"}[1m]))`, false, true},
		{`sum by (queue) (x{app="probe"})`, `sum by (queue, app) (x{app="probe"})`, false, true},
		{`rate(x{app="probe"}[1m])`, `rate(x{app="probe"}[1m])`, true, true},
		{`sum(a{app="probe"}) / on () sum(b{app="probe"})`, `sum by (app) (a{app="probe"}) / on (app) sum by (app) (b{app="probe"})`, false, true},
		{`topk(1, x{app="probe"})`, `topk by (app) (1, x{app="probe"})`, false, true},
		{`scalar(sum(x{app="probe"}))`, ``, false, false},
		{`sum(x{app="probe"}) / sum(x{namespace="shop"})`, ``, false, false},
	} {
		got, keeps, err := GroupByObjects(tc.expr, "app")
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if tc.want != "" && (got != tc.want || keeps != tc.keeps) {
			t.Errorf("%s: %s (keeps %v), want %s (keeps %v)", tc.expr, got, keeps, tc.want, tc.keeps)
		}
		if err := PerObject(got, "app", "probe"); (err == nil) != tc.perObject {
			t.Errorf("%s rewritten %s: per object: %v, want %v", tc.expr, got, err, tc.perObject)
		}
	}
	if _, _, err := GroupByObjects(`sum without (app) (x{app="probe"})`, "app"); err == nil {
		t.Error("without (app) rewritten")
	}
}
