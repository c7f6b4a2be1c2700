package rules

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
)

// Compiling is validating: every problem a rules file can have is refused
// at load, naming the file, the line, the rule and the field.
func TestCompileRejects(t *testing.T) {
	const good = `  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
`
	tests := []struct {
		name string
		yaml string
		// every string must appear in the error
		want []string
	}{
		{
			name: "rejects a rule without seriesQuery",
			yaml: "rules:\n- name: {as: foo}\n" + good,
			want: []string{"cfg.yaml:2", "rules[0].seriesQuery: is required"},
		},
		{
			name: "rejects a rule without metricsQuery",
			yaml: "rules:\n- seriesQuery: x\n",
			want: []string{"cfg.yaml:2", "rules[0].metricsQuery: is required"},
		},
		{
			name: "rejects a metricsQuery that is not a valid template",
			yaml: "rules:\n- seriesQuery: x\n  metricsQuery: 'sum(<<.Series'\n",
			want: []string{"rules[0].metricsQuery: invalid template"},
		},
		{
			name: "rejects a metricsQuery using a field templates do not have",
			yaml: "rules:\n- seriesQuery: x\n  metricsQuery: 'sum(<<.Serie>>)'\n",
			want: []string{"cfg.yaml:3", "rules[0].metricsQuery: template cannot be rendered", "Serie"},
		},
		{
			name: "rejects an invalid name.matches",
			yaml: "rules:\n- seriesQuery: x\n  name:\n    matches: '('\n" + good,
			want: []string{"cfg.yaml:4", "rules[0].name.matches: invalid regular expression"},
		},
		{
			name: "rejects name.matches with two groups and no as",
			yaml: "rules:\n- seriesQuery: x\n  name:\n    matches: '(a)(b)'\n" + good,
			want: []string{"rules[0].name.as", "2 capture groups"},
		},
		{
			name: "rejects a filter with both is and isNot",
			yaml: "rules:\n- seriesQuery: x\n  seriesFilters:\n  - {is: a, isNot: b}\n" + good,
			want: []string{"cfg.yaml:4", "rules[0].seriesFilters[0]: sets both is and isNot"},
		},
		{
			name: "rejects a filter with neither is nor isNot",
			yaml: "rules:\n- seriesQuery: x\n  seriesFilters:\n  - {}\n" + good,
			want: []string{"rules[0].seriesFilters[0]: sets neither"},
		},
		{
			name: "rejects a filter with an invalid regex",
			yaml: "rules:\n- seriesQuery: x\n  seriesFilters:\n  - isNot: '['\n" + good,
			want: []string{"rules[0].seriesFilters[0]: invalid regular expression"},
		},
		{
			name: "rejects an override without resource",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      pod: {group: ''}\n  metricsQuery: y\n",
			want: []string{"cfg.yaml:5", "rules[0].resources.overrides.pod: resource is required"},
		},
		{
			name: "rejects an override on an invalid label name",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      kube-pod: {resource: pod}\n  metricsQuery: y\n",
			want: []string{"rules[0].resources.overrides.kube-pod", "not a valid Prometheus label name"},
		},
		{
			name: "rejects a resource template that cannot be parsed",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    template: '<<.Resource'\n  metricsQuery: y\n",
			want: []string{"cfg.yaml:4", "rules[0].resources.template: invalid template"},
		},
		{
			name: "rejects a resource template without .Resource",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    template: 'kube_<<.Group>>'\n  metricsQuery: y\n",
			want: []string{"rules[0].resources.template: must use <<.Resource>>"},
		},
		{
			name: "rejects aggregateFromPods with a resource that has no pods",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      namespace: {resource: namespace}\n      pod: {resource: pod}\n    aggregateFromPods: [configmaps]\n  metricsQuery: y\n",
			want: []string{"rules[0].resources.aggregateFromPods[0]", `"configmaps" cannot be resolved to pods`},
		},
		{
			name: "rejects aggregateFromPods listing a resource twice",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      namespace: {resource: namespace}\n      pod: {resource: pod}\n    aggregateFromPods: [deployments.apps, deployment]\n  metricsQuery: y\n",
			want: []string{"rules[0].resources.aggregateFromPods[1]", "listed twice"},
		},
		{
			name: "rejects aggregateFromPods without pod and namespace labels",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      pod: {resource: pod}\n    aggregateFromPods: [services]\n  metricsQuery: y\n",
			want: []string{"rules[0].resources.aggregateFromPods: needs series labels for pods and namespaces"},
		},
		{
			name: "rejects a label value replacement without find",
			yaml: "rules:\n- seriesQuery: x\n  labelValueReplacements:\n  - {replace: x}\n" + good,
			want: []string{"rules[0].labelValueReplacements[0].find: is required"},
		},
		{
			name: "rejects namespaced in a custom rule",
			yaml: "rules:\n- seriesQuery: x\n  metricsQuery: y\n  resources:\n    namespaced: false\n",
			want: []string{"cfg.yaml:5", "rules[0].resources.namespaced: only externalRules take namespaced"},
		},
		{
			name: "rejects aggregateFromPods in an external rule",
			yaml: "externalRules:\n- seriesQuery: x\n  metricsQuery: y\n  resources:\n    namespaced: false\n    aggregateFromPods: [deployments.apps]\n",
			want: []string{"cfg.yaml:6", "externalRules[0].resources.aggregateFromPods", "belongs in rules"},
		},
		{
			name: "rejects resourceRules without memory",
			yaml: "resourceRules:\n  cpu:\n    containerQuery: sum(rate(c{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)\n    nodeQuery: sum(rate(n{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)\n    resources: {overrides: {pod: {resource: pod}, namespace: {resource: namespace}, node: {resource: node}}}\n    containerLabel: container\n",
			want: []string{"cfg.yaml:1", "resourceRules.memory: is required"},
		},
		{
			name: "rejects a resource rule that maps no label to nodes, or names no container label",
			yaml: "resourceRules:\n  cpu:\n    containerQuery: sum(rate(c{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)\n    nodeQuery: n\n    resources: {overrides: {pod: {resource: pod}, namespace: {resource: namespace}}}\n  memory:\n    containerQuery: c\n    nodeQuery: n\n    resources: {template: <<.Resource>>}\n    containerLabel: 'a-b'\n",
			want: []string{"cfg.yaml:5", "resourceRules.cpu.resources.overrides: no label maps to nodes", "resourceRules.cpu.containerLabel: is required", "cfg.yaml:10", `resourceRules.memory.containerLabel: "a-b" is not a valid Prometheus label name`},
		},
		{
			name: "rejects resourceRules without a window and a CPU query without a range",
			yaml: "resourceRules:\n  cpu:\n    containerQuery: sum(c{<<.LabelMatchers>>}) by (<<.GroupBy>>)\n    nodeQuery: n\n    resources: {template: <<.Resource>>}\n    containerLabel: container\n  memory:\n    containerQuery: m\n    nodeQuery: n\n    resources: {template: <<.Resource>>}\n    containerLabel: container\n",
			want: []string{"resourceRules.window: is not set and cpu.containerQuery has no range"},
		},
		{
			name: "rejects a resource query that is not a valid template",
			yaml: "resourceRules:\n  cpu:\n    containerQuery: 'sum(<<.LabelMatchers)'\n    nodeQuery: n\n    resources: {template: <<.Resource>>}\n    containerLabel: container\n  memory:\n    containerQuery: m\n    nodeQuery: n\n    resources: {template: <<.Resource>>}\n    containerLabel: container\n  window: 1m\n",
			want: []string{"cfg.yaml:3", "resourceRules.cpu.containerQuery: invalid template"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "cfg.yaml")
			if err == nil {
				t.Fatalf("Parse() succeeded, want an error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestCompileReportsEveryProblem(t *testing.T) {
	yaml := "rules:\n- seriesQuery: ''\n  metricsQuery: ''\n- seriesQuery: x\n  name: {matches: '('}\n  metricsQuery: y\n"
	_, err := Parse([]byte(yaml), "cfg.yaml")
	if err == nil {
		t.Fatal("Parse() succeeded")
	}
	for _, want := range []string{"cfg.yaml:2: rules[0].seriesQuery", "cfg.yaml:3: rules[0].metricsQuery", "cfg.yaml:5: rules[1].name.matches"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestAggregateFromPodsAcceptsKindsAndSingulars(t *testing.T) {
	yaml := "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      namespace: {resource: namespace}\n      pod: {resource: pod}\n    aggregateFromPods: [Deployment, ingress, svc.apps]\n  metricsQuery: y\n"
	_, err := Parse([]byte(yaml), "cfg.yaml")
	if err == nil || !strings.Contains(err.Error(), `"svc.apps" cannot be resolved`) || !strings.Contains(err.Error(), "cfg.yaml:7") {
		t.Fatalf("Parse() error = %v, want svc.apps rejected at line 7", err)
	}
	s, err := Parse([]byte(strings.Replace(yaml, ", svc.apps", "", 1)), "cfg.yaml")
	if err != nil {
		t.Fatalf("Parse() error: %v", err)
	}
	want := []schema.GroupResource{{Group: "apps", Resource: "deployments"}, {Group: "networking.k8s.io", Resource: "ingresses"}}
	if d := cmp.Diff(want, s.Custom[0].AggregateFromPods()); d != "" {
		t.Errorf("aggregateFromPods (-want +got):\n%s", d)
	}
}

// A namespaced external rule without a label for the namespace could only
// be served across every namespace: it is left out, loudly, and the
// others serve (prometheus-adapter starts and serves it; refusing to start
// would break a file that works there).
func TestNamespacedExternalRuleWithoutNamespaceLabelIsLeftOut(t *testing.T) {
	const good = "- seriesQuery: good\n  resources: {overrides: {namespace: {resource: namespace}}}\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})\n"
	for _, tc := range []struct {
		name, rule string
		want       []string
	}{
		{"no label", "- seriesQuery: q\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})\n",
			[]string{"cfg.yaml:5", "externalRules[1].resources", "namespace: {resource: namespace}", "namespaced: false"}},
		{"a template that names no label", "- seriesQuery: q\n  resources:\n    template: .<<.Resource>>\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})\n",
			[]string{"cfg.yaml:7", "externalRules[1].resources.template", `renders ".namespace"`, "not a Prometheus label name", "namespaced: false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse([]byte("externalRules:\n"+good+tc.rule), "cfg.yaml")
			if err != nil {
				t.Fatalf("Parse() error %v: the file must load", err)
			}
			if s.External[0].LeftOut() != nil {
				t.Errorf("the good rule is left out: %v", s.External[0].LeftOut())
			}
			why := s.External[1].LeftOut()
			if why == nil {
				t.Fatal("the rule without a namespace label is served")
			}
			for _, w := range tc.want {
				if !strings.Contains(why.Error(), w) {
					t.Errorf("why %q does not say %q", why, w)
				}
			}
			if got := s.LeftOut(); len(got) != 1 || got[0] != s.External[1] {
				t.Errorf("LeftOut() = %v", got)
			}
		})
	}
}

// emptyIsZero is allowed where no series can mean 0 (external metrics,
// objects in front of the pods) and refused, at its line, where a made-up
// 0 would be a wrong number: a rule that serves pods.
func TestEmptyIsZeroOnlyWhereZeroIsMeaningful(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       string // an error that names file:line, or "" to load
	}{
		{"an external rule", "externalRules:\n- seriesQuery: q\n  resources: {namespaced: false}\n  metricsQuery: sum(<<.Series>>)\n  emptyIsZero: true\n", ""},
		{"a rule on Ingresses", "rules:\n- seriesQuery: q\n  resources: {overrides: {namespace: {resource: namespace}, ingress: {group: networking.k8s.io, resource: ingress}}}\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)\n  emptyIsZero: true\n", ""},
		{"a rule on pods", "rules:\n- seriesQuery: q\n  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)\n  emptyIsZero: true\n",
			"cfg.yaml:5: rules[0].emptyIsZero: a rule that serves pods may not answer 0"},
		{"a rule whose template maps pods", "rules:\n- seriesQuery: q\n  resources: {template: <<.Resource>>}\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)\n  emptyIsZero: true\n",
			"cfg.yaml:5: rules[0].emptyIsZero"},
		{"a resource rule", "resourceRules:\n  cpu: {containerQuery: x, nodeQuery: y, containerLabel: c, emptyIsZero: true}\n", "cfg.yaml:2: resourceRules.cpu.emptyIsZero: unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse([]byte(tc.yaml), "cfg.yaml")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse() error: %v", err)
				}
				for _, r := range append(s.Custom, s.External...) {
					if !r.EmptyIsZero() {
						t.Errorf("%s: emptyIsZero not set", r)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse() error = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// An emptyIsZero rule is served before Prometheus has any of its series,
// when its series name and resources do not depend on the series.
func TestUnlisted(t *testing.T) {
	const tail = "\n  resources: {overrides: {namespace: {resource: namespace}, ingress: {group: networking.k8s.io, resource: ingress}}}\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)\n"
	for _, tc := range []struct {
		rule string
		want string // the series name, or "" for none
	}{
		{"- seriesQuery: 'nginx_ingress_controller_requests{namespace!=\"\"}'" + tail + "  emptyIsZero: true\n", "nginx_ingress_controller_requests"},
		{"- seriesQuery: '{__name__=\"queue_depth\",queue!=\"\"}'" + tail + "  emptyIsZero: true\n", "queue_depth"},
		{"- seriesQuery: '{__name__=~\"queue_.*\"}'" + tail + "  emptyIsZero: true\n", ""},
		{"- seriesQuery: 'nginx_ingress_controller_requests'" + tail, ""},
		{"- seriesQuery: 'a_total'\n  name: {matches: ^b$}" + tail + "  emptyIsZero: true\n", ""},
	} {
		s, err := Parse([]byte("rules:\n"+tc.rule), "cfg.yaml")
		if err != nil {
			t.Fatal(err)
		}
		ls, ok := s.Custom[0].Unlisted()
		if got := string(ls["__name__"]); ok != (tc.want != "") || got != tc.want {
			t.Errorf("%s: Unlisted() = %v, %v; want %q", tc.rule, ls, ok, tc.want)
		}
		if ok && (ls["namespace"] != "" || len(ls) != 3) {
			t.Errorf("%s: labels %v, want the overrides' namespace and ingress", tc.rule, ls)
		}
	}
}

// The PromQL of the file is parsed at load, rendered with placeholder
// values: a broken query stops the file with its line, not as a 500 on
// every request.
func TestPromQLIsParsedAtLoad(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"rules:\n- seriesQuery: 'up{'\n  metricsQuery: sum(<<.Series>>)\n", "cfg.yaml:2: rules[0].seriesQuery: is not a series selector"},
		{"rules:\n- seriesQuery: up\n  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]) by (<<.GroupBy>>)\n", "cfg.yaml:3: rules[0].metricsQuery: is not valid PromQL once rendered"},
		{"externalRules:\n- seriesQuery: up\n  resources: {namespaced: false}\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) bye (x)\n", "cfg.yaml:4: externalRules[0].metricsQuery: is not valid PromQL"},
	} {
		if _, err := Parse([]byte(tc.yaml), "cfg.yaml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error saying %q", tc.yaml, err, tc.want)
		}
	}
}

// A rule names a store of the file's backends (or none: the default);
// another name is refused at its line. A team's rule may name only the
// stores that take MetricRules. The listing of a rule on another store is
// keyed apart from the same selector on the default one.
func TestRulesNameTheirBackend(t *testing.T) {
	const file = `backends:
- name: thanos
  url: http://thanos:9090
externalRules:
- seriesQuery: queue_depth
  metricsQuery: sum(<<.Series>>)
  backend: thanos
- seriesQuery: queue_depth
  metricsQuery: sum(<<.Series>>)
- seriesQuery: queue_depth
  metricsQuery: sum(<<.Series>>)
  backend: default
resourceRules:
  backend: thanos
  cpu:
    containerQuery: sum(rate(c{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
    nodeQuery: sum(rate(c{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}
    containerLabel: container
  memory:
    containerQuery: sum(m{<<.LabelMatchers>>}) by (<<.GroupBy>>)
    nodeQuery: sum(m{<<.LabelMatchers>>}) by (<<.GroupBy>>)
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}, node: {resource: node}}}
    containerLabel: container
`
	set, err := Parse([]byte(file), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e := set.External
	if e[0].Backend() != "thanos" || e[1].Backend() != "" || e[2].Backend() != "" || set.Resource.CPU.Backend != "thanos" {
		t.Errorf("backends: %q %q %q, resourceRules %q", e[0].Backend(), e[1].Backend(), e[2].Backend(), set.Resource.CPU.Backend)
	}
	if e[0].Listing() == e[1].Listing() || e[1].Listing() != "queue_depth" {
		t.Errorf("listings %q and %q: the same selector on two stores must be listed apart", e[0].Listing(), e[1].Listing())
	}
	if b, sel := SplitListing(e[0].Listing()); b != "thanos" || sel != "queue_depth" {
		t.Errorf("SplitListing(%q) = %q, %q", e[0].Listing(), b, sel)
	}
	_, err = Parse([]byte("externalRules:\n- seriesQuery: x\n  metricsQuery: sum(<<.Series>>)\n  backend: thanos\n"), "c.yaml")
	if err == nil || !strings.Contains(err.Error(), `c.yaml:4: externalRules[0].backend: no backend is named "thanos"`) {
		t.Errorf("an unknown backend: %v", err)
	}

	tr := TeamRule{Namespace: "t", Name: "r", External: true, Rule: config.Rule{SeriesQuery: "x", MetricsQuery: "sum(<<.Series>>)", Backend: "thanos"}}
	if _, err := CompileTeam(tr, "namespace"); err == nil || !strings.Contains(err.Error(), `spec.backend: "thanos" does not take MetricRules`) {
		t.Errorf("a team's rule on a store that takes none: %v", err)
	}
	tr.Backends = []string{"thanos"}
	r, err := CompileTeam(tr, "namespace")
	if err != nil || r.Backend() != "thanos" || r.Listing() != `@thanos x{namespace="t"}` {
		t.Errorf("a team's rule on a store that takes MetricRules: %v, %v", r, err)
	}
}
