package rules

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/google/go-cmp/cmp"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

func compileOne(t *testing.T, yaml string) *Rule {
	t.Helper()
	s, err := Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s.Custom[0]
}

func TestMetricName(t *testing.T) {
	tests := []struct {
		name   string
		rule   string
		series string
		want   string
		wantOK bool
	}{
		{name: "uses the literal as", rule: "name: {matches: ^app_requests_total$, as: requests-per-second}", series: "app_requests_total", want: "requests-per-second", wantOK: true},
		{name: "drops series name.matches rejects", rule: "name: {matches: ^app_requests_total$, as: rps}", series: "app_requests", wantOK: false},
		{name: "defaults as to the only capture group", rule: `name: {matches: "^container_(.*)_seconds_total$"}`, series: "container_cpu_usage_seconds_total", want: "cpu_usage", wantOK: true},
		{name: "defaults as to the whole name without groups", rule: "name: {matches: ^http_.*}", series: "http_requests_total", want: "http_requests_total", wantOK: true},
		{name: "expands ${1} in as", rule: `name: {matches: "^(.*)_total$", as: "${1}_per_second"}`, series: "http_requests_total", want: "http_requests_per_second", wantOK: true},
		{name: "keeps every name without a name section", rule: "", series: "anything", want: "anything", wantOK: true},
		{name: "drops series an isNot filter matches", rule: "seriesFilters: [{isNot: _seconds_total$}]", series: "x_seconds_total", wantOK: false},
		{name: "keeps series an isNot filter does not match", rule: "seriesFilters: [{isNot: _seconds_total$}]", series: "x_bytes_total", want: "x_bytes_total", wantOK: true},
		{name: "drops series an is filter does not match", rule: "seriesFilters: [{is: ^http_}]", series: "grpc_calls_total", wantOK: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			yaml := "rules:\n- seriesQuery: x\n  metricsQuery: y\n"
			if tc.rule != "" {
				yaml += "  " + tc.rule + "\n"
			}
			r := compileOne(t, yaml)
			got, ok := r.MetricName(tc.series)
			if ok != tc.wantOK || got != tc.want {
				t.Errorf("MetricName(%q) = %q, %v; want %q, %v", tc.series, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestLabelResource(t *testing.T) {
	mapper := BuiltinMapper()
	tests := []struct {
		name      string
		resources string
		label     string
		want      schema.GroupResource
		wantOK    bool
	}{
		{name: "resolves a singular override to the plural resource", resources: "overrides: {pod: {resource: pod}}", label: "pod", want: schema.GroupResource{Resource: "pods"}, wantOK: true},
		{name: "resolves an override with a group", resources: "overrides: {microservice: {group: apps, resource: deployment}}", label: "microservice", want: schema.GroupResource{Group: "apps", Resource: "deployments"}, wantOK: true},
		{name: "ignores an override the cluster does not know", resources: "overrides: {widget: {resource: widget}}", label: "widget", wantOK: false},
		{name: "ignores labels without override or template", resources: "overrides: {pod: {resource: pod}}", label: "namespace", wantOK: false},
		{name: "maps a label through the bare resource template", resources: `template: "<<.Resource>>"`, label: "namespace", want: schema.GroupResource{Resource: "namespaces"}, wantOK: true},
		{name: "ignores template matches that are no resource", resources: `template: "<<.Resource>>"`, label: "container", wantOK: false},
		{name: "maps a label through a template with group", resources: `template: "kube_<<.Group>>_<<.Resource>>"`, label: "kube_apps_deployment", want: schema.GroupResource{Group: "apps", Resource: "deployments"}, wantOK: true},
		{name: "turns underscores in the group back into dots", resources: `template: "kube_<<.Group>>_<<.Resource>>"`, label: "kube_networking_k8s_io_ingress", want: schema.GroupResource{Group: "networking.k8s.io", Resource: "ingresses"}, wantOK: true},
		{name: "maps a core resource through a template with an empty group", resources: `template: "kube_<<.Group>>_<<.Resource>>"`, label: "kube__pod", want: schema.GroupResource{Resource: "pods"}, wantOK: true},
		{name: "prefers the override over the template", resources: "template: \"<<.Resource>>\"\n    overrides: {service: {group: apps, resource: deployment}}", label: "service", want: schema.GroupResource{Group: "apps", Resource: "deployments"}, wantOK: true},
		{name: "does not match a label outside the template's shape", resources: `template: "kube_<<.Resource>>"`, label: "pod", wantOK: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: y\n  resources:\n    "+tc.resources+"\n")
			got, ok := r.LabelResource(tc.label, mapper)
			if ok != tc.wantOK || got != tc.want {
				t.Errorf("LabelResource(%q) = %v, %v; want %v, %v", tc.label, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestRender(t *testing.T) {
	r := compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>) + on(<<index .GroupBySlice 0>>) y{pod=~\"<<index .LabelValuesByName \"pod\">>\"}'\n")
	got, err := r.Render("app_requests_total", []promql.Matcher{promql.Equals("namespace", "default"), promql.OneOf("pod", []string{"b", "a"})}, []string{"pod"})
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	want := `sum(rate(app_requests_total{namespace="default",pod=~"a|b"}[1m])) by (pod) + on(pod) y{pod=~"a|b"}`
	if got != want {
		t.Errorf("Render() = %s\nwant       %s", got, want)
	}

	// Validation renders sample data; this template only fails on other data.
	r = compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: <<index .GroupBySlice 0>>\n")
	_, err = r.Render("x", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "rules[0]") {
		t.Errorf("Render() error = %v, want one naming the rule", err)
	}
}

func TestLabelValueReplacements(t *testing.T) {
	r := compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: y\n  labelValueReplacements:\n  - {find: '.', replace: '-'}\n  - {find: '-v', replace: '_v'}\n")
	// In order, as prometheus-adapter applies them: "." then "-v".
	if got := r.ToLabelValue("my-app.v1"); got != "my-app_v1" {
		t.Errorf("ToLabelValue = %q, want my-app_v1", got)
	}
	// Back from label values through the names asked for: my-app.v1 is
	// found again (reversing the replacements would give my.app.v1), and
	// two names with one label value belong to neither.
	values, byValue := r.LabelValues([]string{"my-app.v1", "a.b", "a-b", "plain"})
	if d := cmp.Diff([]string{"my-app_v1", "a-b", "a-b", "plain"}, values); d != "" {
		t.Errorf("values (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]int{"my-app_v1": 0, "a-b": -1, "plain": 3}, byValue); d != "" {
		t.Errorf("byValue (-want +got):\n%s", d)
	}
	plain := compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: y\n")
	if got := plain.ToLabelValue("a#b"); got != "a#b" {
		t.Errorf("ToLabelValue without replacements = %q", got)
	}
}

// TestLabelValuesByNameIsExactAndSafe renders a template that uses
// .LabelValuesByName inside a PromQL string, with names that carry dots,
// quotes, backslashes and "}: the result is a valid string whose regex
// matches exactly those names.
func TestLabelValuesByNameIsExactAndSafe(t *testing.T) {
	r := compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: 'sum(<<.Series>>{pod=~\"<<index .LabelValuesByName \"pod\">>\",namespace=\"<<index .LabelValuesByName \"namespace\">>\"})'\n")
	names := []string{`a.b`, `c"}or vector(1)`, `d\e`, `f|g`}
	got, err := r.Render("s", []promql.Matcher{promql.Equals("namespace", `n"s.x`), promql.OneOf("pod", names)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `sum(s{pod=~"a\\.b|c\"\\}or vector\\(1\\)|d\\\\e|f\\|g",namespace="n\"s\\.x"})`
	if got != want {
		t.Fatalf("rendered\n  %s\nwant\n  %s", got, want)
	}
	// The string Prometheus reads from it is the regex of exactly the names.
	body := got[strings.Index(got, `pod=~`)+5 : strings.Index(got, `,namespace=`)]
	regex, err := strconv.Unquote(body)
	if err != nil {
		t.Fatalf("pod=~%s is not a valid string: %v", body, err)
	}
	re := regexp.MustCompile("^(?:" + regex + ")$")
	for _, n := range names {
		if !re.MatchString(n) {
			t.Errorf("the regex %q does not match %q", regex, n)
		}
	}
	for _, other := range []string{"aXb", `c"`, "f", "g", `d\\e`} {
		if re.MatchString(other) {
			t.Errorf("the regex %q matches %q, which was not asked for", regex, other)
		}
	}
}

func TestAggregateFromPods(t *testing.T) {
	r := compileOne(t, "rules:\n- seriesQuery: x\n  metricsQuery: y\n  resources:\n    overrides: {pod: {resource: pod}, namespace: {resource: namespace}}\n    aggregateFromPods: [deployment, ingresses.networking.k8s.io]\n")
	got := r.AggregateFromPods()
	want := []schema.GroupResource{{Group: "apps", Resource: "deployments"}, {Group: "networking.k8s.io", Resource: "ingresses"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("AggregateFromPods() = %v, want %v", got, want)
	}
}

// A rule's window is its metricsQuery's longest range, read once when it
// is compiled (a bracket in a string is not a range), nil without one.
func TestWindowSeconds(t *testing.T) {
	set, err := Parse([]byte(`rules:
- seriesQuery: x
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>,a="[5m]"}[2m])) by (<<.GroupBy>>)'
- seriesQuery: x
  metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
`), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := set.Custom[0].WindowSeconds(); got == nil || *got != 120 {
		t.Errorf("the window of a [2m] rate = %v, want 120", got)
	}
	if got := set.Custom[1].WindowSeconds(); got != nil {
		t.Errorf("the window of a query without a range = %d, want nil", *got)
	}
}
