package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
)

func TestDefaultConfigIsValid(t *testing.T) {
	c, err := Parse(DefaultYAML(), DefaultSource)
	if err != nil {
		t.Fatalf("the built-in rules: %v", err)
	}
	var names []string
	for _, r := range c.Rules {
		names = append(names, r.Name.As)
	}
	if d := cmp.Diff([]string{"requests-per-second", "packets-per-second", "requests-per-second"}, names); d != "" {
		t.Errorf("metric names (-want +got):\n%s", d)
	}
	// The app's counter, per pod and through the pods of every owner but
	// Ingresses, which the ingress controller measures in front of them.
	owners := slices.DeleteFunc(podowners.Names(), func(n string) bool { return n == "ingresses.networking.k8s.io" })
	for _, r := range c.Rules[:2] {
		if r.SeriesQuery != `app_requests_total{namespace!="",pod!=""}` || !strings.Contains(r.MetricsQuery, "rate(<<.Series>>{<<.LabelMatchers>>}[1m])") || r.EmptyIsZero {
			t.Errorf("rule %q = %+v", r.Name.As, r)
		}
		if d := cmp.Diff(owners, r.Resources.AggregateFromPods); d != "" {
			t.Errorf("rule %q aggregateFromPods (-want +got):\n%s", r.Name.As, d)
		}
	}
	nginx := c.Rules[2]
	if !strings.HasPrefix(nginx.SeriesQuery, "nginx_ingress_controller_requests{") || nginx.Resources.Overrides["ingress"].Resource != "ingress" || !nginx.EmptyIsZero {
		t.Errorf("the Ingress rule = %+v, want ingress-nginx's counter, by Ingress, with emptyIsZero", nginx)
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

// What Parse itself refuses: what is not YAML, not the file's shape, or
// has keys the format does not have. The rules are checked by compiling
// them (package rules).
func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{name: "rejects an empty file", yaml: "# nothing\n", want: []string{"cfg.yaml", "empty"}},
		{name: "rejects YAML that does not parse", yaml: "rules: [\n", want: []string{"cfg.yaml", "line"}},
		{name: "rejects a rules section that is not a list", yaml: "rules: x\n", want: []string{"cfg.yaml", "line 1", "cannot unmarshal"}},
		{name: "rejects an unknown top-level key and suggests the right one", yaml: "rule:\n- seriesQuery: x\n", want: []string{"cfg.yaml:1", "rule: unknown field", `did you mean "rules"`}},
		{name: "rejects an unknown key inside a rule", yaml: "rules:\n- seriesQuery: x\n  metricQuery: y\n", want: []string{"cfg.yaml:3", "rules[0].metricQuery: unknown field", `did you mean "metricsQuery"`}},
		{name: "rejects an unknown key deep inside overrides", yaml: "rules:\n- seriesQuery: x\n  resources:\n    overrides:\n      pod: {grop: x, resource: pod}\n",
			want: []string{"cfg.yaml:5", "rules[0].resources.overrides.pod.grop: unknown field", `did you mean "group"`}},
		{name: "rejects an unknown key with no close match by listing the known ones", yaml: "rules:\n- seriesQuery: x\n  name:\n    zzzzzz: y\n",
			want: []string{"cfg.yaml:4", "rules[0].name.zzzzzz: unknown field", "known fields: matches, as"}},
		{name: "rejects an unknown key whose value is an alias to itself, without following it", yaml: "rules:\n- seriesQuery: up\n  bogus: &x [*x]\n  typo: 1\n",
			want: []string{"cfg.yaml:3: rules[0].bogus: unknown field", "cfg.yaml:4: rules[0].typo: unknown field"}},
		{name: "reports every unknown key", yaml: "rules:\n- seriesQuery: x\n  metricQuery: y\n- seriesQuery: x\n  nmae: {}\n",
			want: []string{"cfg.yaml:3: rules[0].metricQuery", "cfg.yaml:5: rules[1].nmae", `did you mean "name"`}},
	} {
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

// Where names a field with its file and line, for compile errors.
func TestWhere(t *testing.T) {
	c, err := Parse([]byte("rules:\n- seriesQuery: x\n  resources:\n    aggregateFromPods:\n    - a\n    - b\n  metricsQuery: y\n"), "cfg.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		section string
		i       int
		field   string
		want    string
	}{
		{"rules", 0, "metricsQuery", "cfg.yaml:7: rules[0].metricsQuery"},
		{"rules", 0, "resources.aggregateFromPods[1]", "cfg.yaml:6: rules[0].resources.aggregateFromPods[1]"},
		{"rules", 0, "name.as", "cfg.yaml:2: rules[0].name.as"},
		{"resourceRules", -1, "window", "cfg.yaml:1: resourceRules.window"},
	} {
		if got := c.Where(tc.section, tc.i, tc.field); got != tc.want {
			t.Errorf("Where(%s, %d, %s) = %q, want %q", tc.section, tc.i, tc.field, got, tc.want)
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
	if len(c.Rules) != 3 {
		t.Errorf("Load() got %d rules, want 3", len(c.Rules))
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) error = %v, want one naming the file", err)
	}
}

type pinned struct {
	Known string `yaml:"known"`
}

// The message yaml.v3 writes for an unknown key is what unknownField
// reads: an upgrade that changes it fails here, not silently in the "did
// you mean" of every unknown key.
func TestYAMLUnknownFieldMessageIsPinned(t *testing.T) {
	var v pinned
	dec := yaml.NewDecoder(strings.NewReader("known: a\nunknown: b\n"))
	dec.KnownFields(true)
	err := dec.Decode(&v)
	var te *yaml.TypeError
	if !errors.As(err, &te) || len(te.Errors) != 1 || !unknownField.MatchString(te.Errors[0]) {
		t.Fatalf("yaml's error %v does not match %s", err, unknownField)
	}
}
