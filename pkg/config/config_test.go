package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
)

func TestDefaultConfigIsValid(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatalf("Default() error: %v", err)
	}
	var names []string
	for _, r := range c.Rules {
		names = append(names, r.Name.As)
		if r.SeriesQuery != `app_requests_total{namespace!="",pod!=""}` {
			t.Errorf("rule %q seriesQuery = %q", r.Name.As, r.SeriesQuery)
		}
		if !strings.Contains(r.MetricsQuery, "rate(<<.Series>>{<<.LabelMatchers>>}[1m])") {
			t.Errorf("rule %q metricsQuery = %q, want a 1m rate", r.Name.As, r.MetricsQuery)
		}
		if d := cmp.Diff(podowners.Names(), r.Resources.AggregateFromPods); d != "" {
			t.Errorf("rule %q aggregateFromPods (-want +got):\n%s", r.Name.As, d)
		}
	}
	if d := cmp.Diff([]string{"requests-per-second", "packets-per-second"}, names); d != "" {
		t.Errorf("metric names (-want +got):\n%s", d)
	}
}

// A prometheus-adapter configuration, as its documentation and Helm chart
// write them, loads unchanged.
const prometheusAdapterConfig = `
rules:
- seriesQuery: '{__name__=~"^container_.*",container!="POD",namespace!="",pod!=""}'
  seriesFilters: []
  resources:
    overrides:
      namespace: {resource: "namespace"}
      pod: {resource: "pod"}
  name:
    matches: "^container_(.*)_seconds_total$"
  metricsQuery: "sum(rate(<<.Series>>{<<.LabelMatchers>>,container!=\"POD\"}[2m])) by (<<.GroupBy>>)"
- seriesQuery: '{__name__=~"^container_.*_total",container!="POD",namespace!="",pod!=""}'
  seriesFilters:
  - isNot: "^container_.*_seconds_total$"
  resources:
    template: "<<.Resource>>"
  name:
    matches: "^(.*)_total$"
    as: "${1}_per_second"
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)'
  labelValueReplacements:
  - find: "#"
    replace: "_"
resourceRules:
  cpu:
    containerQuery: sum(rate(container_cpu_usage_seconds_total{<<.LabelMatchers>>}[3m])) by (<<.GroupBy>>)
    nodeQuery: sum(rate(container_cpu_usage_seconds_total{<<.LabelMatchers>>, id='/'}[3m])) by (<<.GroupBy>>)
    resources:
      overrides:
        node: {resource: node}
        namespace: {resource: namespace}
        pod: {resource: pod}
    containerLabel: container
  memory:
    containerQuery: sum(container_memory_working_set_bytes{<<.LabelMatchers>>}) by (<<.GroupBy>>)
    nodeQuery: sum(container_memory_working_set_bytes{<<.LabelMatchers>>,id='/'}) by (<<.GroupBy>>)
    resources:
      overrides:
        node: {resource: node}
        namespace: {resource: namespace}
        pod: {resource: pod}
    containerLabel: container
  window: 3m
externalRules:
- seriesQuery: '{__name__=~"^queue_.*",queue!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: '{__name__="queue_depth",topic!=""}'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (topic)
  resources:
    namespaced: false
`

func TestParseAcceptsPrometheusAdapterConfig(t *testing.T) {
	c, err := Parse([]byte(prometheusAdapterConfig), "pa.yaml")
	if err != nil {
		t.Fatalf("Parse() error: %v", err)
	}
	if len(c.Rules) != 2 {
		t.Fatalf("got %d rules, want 2", len(c.Rules))
	}
	if got := c.Rules[1].Resources.Template; got != "<<.Resource>>" {
		t.Errorf("rules[1].resources.template = %q", got)
	}
	if got := c.Rules[0].Resources.Overrides["pod"]; got != (GroupResource{Resource: "pod"}) {
		t.Errorf("rules[0] pod override = %+v", got)
	}
	if got := c.Rules[1].LabelValueReplacements; len(got) != 1 || got[0].Find != "#" {
		t.Errorf("rules[1].labelValueReplacements = %+v", got)
	}
	if len(c.ExternalRules) != 2 {
		t.Fatalf("got %d externalRules, want 2", len(c.ExternalRules))
	}
	if !c.ExternalRules[0].Resources.IsNamespaced() || c.ExternalRules[1].Resources.IsNamespaced() {
		t.Errorf("externalRules namespaced = %v, %v; want the default (true), then false",
			c.ExternalRules[0].Resources.IsNamespaced(), c.ExternalRules[1].Resources.IsNamespaced())
	}
	rr := c.ResourceRules
	if rr == nil || rr.CPU.ContainerLabel != "container" || rr.Memory.NodeQuery == "" || rr.Window.String() != "3m" {
		t.Errorf("resourceRules = %+v", rr)
	}
}

func TestParseRejects(t *testing.T) {
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
			name: "rejects an empty file",
			yaml: "",
			want: []string{"cfg.yaml", "empty"},
		},
		{
			name: "rejects YAML that does not parse",
			yaml: "rules: [",
			want: []string{"cfg.yaml", "line"},
		},
		{
			name: "rejects a rules section that is not a list",
			yaml: "rules: foo\n",
			want: []string{"cfg.yaml", "line 1", "cannot unmarshal"},
		},
		{
			name: "rejects an unknown top-level key and suggests the right one",
			yaml: "rule:\n- seriesQuery: x\n",
			want: []string{"cfg.yaml:1", "rule: unknown field", `did you mean "rules"`},
		},
		{
			name: "rejects an unknown key inside a rule",
			yaml: "rules:\n- seriesQuery: x\n  metricQuery: y\n",
			want: []string{"cfg.yaml:3", "rules[0].metricQuery: unknown field", `did you mean "metricsQuery"`},
		},
		{
			name: "rejects an unknown key deep inside overrides",
			yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      pod: {resource: pod, grop: apps}\n  metricsQuery: y\n",
			want: []string{"cfg.yaml:5", "rules[0].resources.overrides.pod.grop: unknown field", `did you mean "group"`},
		},
		{
			name: "rejects an unknown key with no close match by listing the known ones",
			yaml: "rules:\n- seriesQuery: x\n  name:\n    zzzzzz: y\n",
			want: []string{"cfg.yaml:4", "rules[0].name.zzzzzz: unknown field", "known fields: matches, as"},
		},
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
			name: "rejects a namespaced external rule without a namespace label",
			yaml: "externalRules:\n- seriesQuery: x\n  metricsQuery: y\n",
			want: []string{"cfg.yaml:2", "externalRules[0].resources", "namespace: {resource: namespace}", "namespaced: false"},
		},
		{
			name: "rejects a namespaced external rule whose template names no label for namespaces",
			yaml: "externalRules:\n- seriesQuery: x\n  metricsQuery: y\n  resources:\n    template: <<.Group>>.<<.Resource>>\n",
			want: []string{"cfg.yaml:5", "externalRules[0].resources.template", `renders ".namespace"`, "not a Prometheus label name", "namespaced: false"},
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

func TestParseReportsEveryProblem(t *testing.T) {
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

func TestParseRejectsAFileWithNothingToServe(t *testing.T) {
	for _, text := range []string{"rules: []\n", "rules: []\nexternalRules: []\n", "{}\n"} {
		_, err := Parse([]byte(text), "cfg.yaml")
		if err == nil || !strings.Contains(err.Error(), "cfg.yaml: no rules, externalRules or resourceRules") {
			t.Errorf("%q: error %v, want one saying there is nothing to serve", text, err)
		}
	}
}

func TestParseCanonicalisesAggregateFromPods(t *testing.T) {
	yaml := "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      namespace: {resource: namespace}\n      pod: {resource: pod}\n    aggregateFromPods: [Deployment, ingress, svc.apps]\n  metricsQuery: y\n"
	_, err := Parse([]byte(yaml), "cfg.yaml")
	if err == nil || !strings.Contains(err.Error(), `"svc.apps" cannot be resolved`) {
		t.Fatalf("Parse() error = %v, want svc.apps rejected", err)
	}
	yaml = strings.Replace(yaml, ", svc.apps", "", 1)
	c, err := Parse([]byte(yaml), "cfg.yaml")
	if err != nil {
		t.Fatalf("Parse() error: %v", err)
	}
	want := []string{"deployments.apps", "ingresses.networking.k8s.io"}
	if d := cmp.Diff(want, c.Rules[0].Resources.AggregateFromPods); d != "" {
		t.Errorf("aggregateFromPods (-want +got):\n%s", d)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, DefaultYAML(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load() error: %v", err)
	}
	if len(c.Rules) != 2 {
		t.Errorf("Load() got %d rules, want 2", len(c.Rules))
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) error = %v, want one naming the file", err)
	}
}

func TestNameMappingAsDefaults(t *testing.T) {
	tests := []struct {
		name    string
		mapping NameMapping
		want    string
		wantErr bool
	}{
		{name: "defaults to $0 without capture groups", mapping: NameMapping{Matches: "^foo$"}, want: "$0"},
		{name: "defaults to $1 with one capture group", mapping: NameMapping{Matches: "^(.*)_total$"}, want: "$1"},
		{name: "keeps an explicit as", mapping: NameMapping{Matches: "(a)(b)", As: "${2}"}, want: "${2}"},
		{name: "fails with two groups and no as", mapping: NameMapping{Matches: "(a)(b)"}, wantErr: true},
		{name: "treats an empty matches as .*", mapping: NameMapping{}, want: "$0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			re, err := tc.mapping.NameRegexp()
			if err != nil {
				t.Fatal(err)
			}
			got, err := tc.mapping.AsTemplate(re)
			if (err != nil) != tc.wantErr {
				t.Fatalf("AsTemplate() error = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("AsTemplate() = %q, want %q", got, tc.want)
			}
		})
	}
}
