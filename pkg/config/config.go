// Package config reads the adapter's rules file.
//
// The file format is prometheus-adapter's, so an existing prometheus-adapter
// configuration can be used unchanged. It has three sections, one per
// metrics API:
//
//   - rules (custom.metrics.k8s.io): seriesQuery, seriesFilters, resources
//     (overrides, template), name (matches, as), metricsQuery and
//     labelValueReplacements;
//   - externalRules (external.metrics.k8s.io): the same fields, plus
//     resources.namespaced (default true: the HPA's namespace becomes a
//     matcher on the rule's namespace label);
//   - resourceRules (metrics.k8s.io): cpu and memory, each with
//     containerQuery, nodeQuery, resources and containerLabel, and window.
//
// The one addition, resources.aggregateFromPods, is optional: it lets a rule
// whose series carry only pod and namespace labels serve objects that own or
// front those pods (Deployments, Services, Ingresses, ...).
//
// The package parses and validates; it does not talk to Prometheus or to
// Kubernetes. Unknown keys are errors, and every error names the file, the
// rule, the field and the line.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"text/template"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// Config is the whole rules file.
type Config struct {
	// Rules map Prometheus series to custom metrics. They are applied
	// independently, so they should not overlap.
	Rules []Rule `yaml:"rules"`
	// ResourceRules serve the resource metrics API (metrics.k8s.io): the
	// CPU and memory of pods and nodes.
	ResourceRules *ResourceRules `yaml:"resourceRules,omitempty"`
	// ExternalRules map Prometheus series to external metrics
	// (external.metrics.k8s.io), which name no Kubernetes object.
	ExternalRules []Rule `yaml:"externalRules,omitempty"`
}

// Rule describes how a set of Prometheus series becomes custom metrics:
// discovery (SeriesQuery, SeriesFilters), association (Resources), naming
// (Name) and querying (MetricsQuery).
type Rule struct {
	// SeriesQuery is a series selector for Prometheus' /api/v1/series.
	SeriesQuery string `yaml:"seriesQuery"`
	// SeriesFilters further filter the discovered series by name.
	SeriesFilters []RegexFilter `yaml:"seriesFilters,omitempty"`
	// Resources maps series labels to Kubernetes resources.
	Resources ResourceMapping `yaml:"resources"`
	// Name turns a series name into the metric name served by the API.
	Name NameMapping `yaml:"name"`
	// MetricsQuery is a Go template, with << and >> as delimiters, that
	// renders the PromQL for one request.
	MetricsQuery string `yaml:"metricsQuery"`
	// LabelValueReplacements rewrite object names before they are used as
	// label values in a query.
	LabelValueReplacements []LabelValueReplacement `yaml:"labelValueReplacements,omitempty"`
}

// RegexFilter keeps (Is) or drops (IsNot) series whose name matches a
// regular expression. Exactly one of the two is set.
type RegexFilter struct {
	Is    string `yaml:"is,omitempty"`
	IsNot string `yaml:"isNot,omitempty"`
}

// ResourceMapping associates series labels with Kubernetes resources.
type ResourceMapping struct {
	// Template maps label names to group-resources, e.g.
	// "kube_<<.Group>>_<<.Resource>>". .Group has dots replaced with
	// underscores and .Resource is singular.
	Template string `yaml:"template,omitempty"`
	// Overrides maps one label name to one group-resource.
	Overrides map[string]GroupResource `yaml:"overrides,omitempty"`
	// AggregateFromPods lists resources ("deployments.apps", "services",
	// "ingresses.networking.k8s.io", ...) that are served by resolving the
	// object to its pods and querying the pods' series. It is an extension
	// to prometheus-adapter's format and needs series with pod and
	// namespace labels.
	AggregateFromPods []string `yaml:"aggregateFromPods,omitempty"`
	// Namespaced applies to externalRules only. When true (the default),
	// a request's namespace becomes a matcher on the label that maps to
	// namespaces; false queries across namespaces.
	Namespaced *bool `yaml:"namespaced,omitempty"`
}

// IsNamespaced reports resources.namespaced, defaulting to true.
func (m ResourceMapping) IsNamespaced() bool { return m.Namespaced == nil || *m.Namespaced }

// GroupResource names a Kubernetes group-resource. Resource may be singular
// or plural; the adapter normalises it against the cluster's discovery.
type GroupResource struct {
	Group    string `yaml:"group,omitempty"`
	Resource string `yaml:"resource"`
}

// NameMapping turns a Prometheus series name into an API metric name.
type NameMapping struct {
	// Matches is a regular expression on the series name; empty means ".*".
	// Series whose name does not match are dropped.
	Matches string `yaml:"matches,omitempty"`
	// As is the API name, expanded with Matches' capture groups ($1, ${1}).
	// It defaults to $0 without capture groups and to $1 with one.
	As string `yaml:"as,omitempty"`
}

// LabelValueReplacement replaces Find with Replace in object names before
// they are sent to Prometheus.
type LabelValueReplacement struct {
	Find    string `yaml:"find,omitempty"`
	Replace string `yaml:"replace,omitempty"`
}

// ResourceRules describe how the CPU and memory of pods and nodes are read
// from Prometheus for the resource metrics API.
type ResourceRules struct {
	CPU    ResourceRule `yaml:"cpu"`
	Memory ResourceRule `yaml:"memory"`
	// Window is the period CPU usage is averaged over, reported with every
	// value. When unset it is the range of cpu.containerQuery ("[1m]").
	Window model.Duration `yaml:"window,omitempty"`
}

// ResourceRule reads one resource (CPU in cores, memory in bytes).
type ResourceRule struct {
	// ContainerQuery renders the usage of the containers of the requested
	// pods, one series per container. .LabelMatchers selects the pods (and
	// their namespace), .GroupBy holds the pod, namespace and container
	// labels.
	ContainerQuery string `yaml:"containerQuery"`
	// NodeQuery renders the usage of the requested nodes, one series per
	// node. .GroupBy holds the node label.
	NodeQuery string `yaml:"nodeQuery"`
	// Resources maps the series' labels to pods, namespaces and nodes.
	Resources ResourceMapping `yaml:"resources"`
	// ContainerLabel is the series label holding the container name.
	ContainerLabel string `yaml:"containerLabel"`
}

//go:embed default.yaml
var defaultConfig []byte

// DefaultSource is how errors and logs name the built-in configuration.
const DefaultSource = "<built-in config>"

// Default returns the built-in configuration: requests-per-second and
// packets-per-second, both sum(rate(app_requests_total[1m])) per object, for
// pods, namespaces and every pod owner (package podowners).
func Default() (*Config, error) {
	return Parse(defaultConfig, DefaultSource)
}

// DefaultYAML returns the text of the built-in configuration.
func DefaultYAML() []byte { return slices.Clone(defaultConfig) }

// Load reads and validates the rules file at path. Warnings are problems
// that do not stop the adapter, such as sections it ignores.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates a rules file. source names the file in
// errors. All problems found are reported together.
func Parse(data []byte, source string) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty; it needs at least one entry under rules", source)
		}
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}

	var errs []error
	checkKnownFields(doc, reflect.TypeFor[Config](), "", source, &errs)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	var c Config
	if err := doc.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}

	v := validator{source: source, doc: doc}
	for i := range c.Rules {
		v.rule("rules", i, &c.Rules[i])
	}
	for i := range c.ExternalRules {
		v.rule("externalRules", i, &c.ExternalRules[i])
	}
	if c.ResourceRules != nil {
		v.resourceRules(c.ResourceRules)
	}
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	if len(c.Rules) == 0 && len(c.ExternalRules) == 0 && c.ResourceRules == nil {
		// An adapter that serves nothing looks healthy and fails every
		// HPA: refuse to start instead.
		return nil, fmt.Errorf("%s: no rules, externalRules or resourceRules: there is nothing to serve", source)
	}
	return &c, nil
}

// Delims are the metricsQuery and template delimiters.
const (
	LeftDelim  = "<<"
	RightDelim = ">>"
)

// QueryData is what a metricsQuery template sees.
type QueryData struct {
	// Series is the Prometheus series (metric) name.
	Series string
	// LabelMatchers is a comma-separated list of PromQL label matchers for
	// the requested objects and the metric selector.
	LabelMatchers string
	// LabelValuesByName maps each matched label to its values joined by |.
	LabelValuesByName map[string]string
	// GroupBy is a comma-separated list of the labels to group by.
	GroupBy string
	// GroupBySlice is GroupBy as a slice.
	GroupBySlice []string
}

// ResourceTemplateData is what a resources.template sees.
type ResourceTemplateData struct {
	Group    string
	Resource string
}

// ParseQueryTemplate parses a metricsQuery.
func ParseQueryTemplate(text string) (*template.Template, error) {
	return template.New("metricsQuery").Delims(LeftDelim, RightDelim).Option("missingkey=error").Parse(text)
}

// ParseResourceTemplate parses a resources.template.
func ParseResourceTemplate(text string) (*template.Template, error) {
	return template.New("resources.template").Delims(LeftDelim, RightDelim).Option("missingkey=error").Parse(text)
}

// NameRegexp compiles name.matches, defaulting to ".*".
func (n NameMapping) NameRegexp() (*regexp.Regexp, error) {
	expr := n.Matches
	if expr == "" {
		expr = ".*"
	}
	return regexp.Compile(expr)
}

// AsTemplate returns name.as, or its default for re: $0 without capture
// groups, $1 with one. It fails with more than one group and no as.
func (n NameMapping) AsTemplate(re *regexp.Regexp) (string, error) {
	if n.As != "" {
		return n.As, nil
	}
	switch re.NumSubexp() {
	case 0:
		return "$0", nil
	case 1:
		return "$1", nil
	default:
		return "", fmt.Errorf("name.matches %q has %d capture groups, so name.as must say which to use", re.String(), re.NumSubexp())
	}
}

type validator struct {
	source string
	doc    *yaml.Node
	errs   []error
}

// fail records a problem with section[i].field; i < 0 means section is a
// mapping (resourceRules) and field a path inside it.
func (v *validator) fail(section string, i int, field string, format string, args ...any) {
	line := lineOf(v.doc, section, i, field)
	where := fmt.Sprintf("%s:%d", v.source, line)
	msg := fmt.Sprintf(format, args...)
	path := fmt.Sprintf("%s[%d].%s", section, i, field)
	if i < 0 {
		path = section + "." + field
	}
	v.errs = append(v.errs, fmt.Errorf("%s: %s: %s", where, path, msg))
}

// queryTemplate checks that a metricsQuery-like template parses and renders
// with sample data, and returns the rendered sample.
func (v *validator) queryTemplate(section string, i int, field, text, example string) (string, bool) {
	if strings.TrimSpace(text) == "" {
		v.fail(section, i, field, "is required (e.g. '%s')", example)
		return "", false
	}
	t, err := ParseQueryTemplate(text)
	if err != nil {
		v.fail(section, i, field, "invalid template: %v", err)
		return "", false
	}
	sample := QueryData{
		Series:            "series",
		LabelMatchers:     `namespace="ns",pod=~"a|b"`,
		LabelValuesByName: map[string]string{"namespace": "ns", "pod": "a|b"},
		GroupBy:           "pod",
		GroupBySlice:      []string{"pod"},
	}
	var b strings.Builder
	if err := t.Execute(&b, sample); err != nil {
		v.fail(section, i, field, "template cannot be rendered: %v", err)
		return "", false
	}
	return b.String(), true
}

func (v *validator) rule(section string, i int, r *Rule) {
	if strings.TrimSpace(r.SeriesQuery) == "" {
		v.fail(section, i, "seriesQuery", "is required (a series selector such as 'app_requests_total{namespace!=\"\",pod!=\"\"}')")
	}
	for j, f := range r.SeriesFilters {
		field := fmt.Sprintf("seriesFilters[%d]", j)
		switch {
		case f.Is != "" && f.IsNot != "":
			v.fail(section, i, field, "sets both is and isNot; a filter takes exactly one")
		case f.Is == "" && f.IsNot == "":
			v.fail(section, i, field, "sets neither is nor isNot")
		default:
			expr := f.Is + f.IsNot
			if _, err := regexp.Compile(expr); err != nil {
				v.fail(section, i, field, "invalid regular expression %q: %v", expr, err)
			}
		}
	}

	re, err := r.Name.NameRegexp()
	if err != nil {
		v.fail(section, i, "name.matches", "invalid regular expression %q: %v", r.Name.Matches, err)
	} else if _, err := r.Name.AsTemplate(re); err != nil {
		v.fail(section, i, "name.as", "%v", err)
	}

	v.queryTemplate(section, i, "metricsQuery", r.MetricsQuery, "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)")
	v.resourceMapping(section, i, "resources", r.Resources)

	external := section == "externalRules"
	switch {
	case !external && r.Resources.Namespaced != nil:
		v.fail(section, i, "resources.namespaced", "only externalRules take namespaced; a custom metric's scope is its resource's")
	case external && len(r.Resources.AggregateFromPods) > 0:
		v.fail(section, i, "resources.aggregateFromPods", "externalRules name no objects; aggregateFromPods belongs in rules")
	case external && r.Resources.IsNamespaced() && r.Resources.Template == "" && !overridesResource(r.Resources.Overrides, "namespace"):
		v.fail(section, i, "resources", "a namespaced external rule needs the label that holds the namespace: add overrides: {namespace: {resource: namespace}} (or a template), or set namespaced: false to query across namespaces")
	case external && r.Resources.IsNamespaced() && r.Resources.Template != "" && !overridesResource(r.Resources.Overrides, "namespace"):
		if label, ok := templateLabel(r.Resources.Template, "namespace"); !ok {
			v.fail(section, i, "resources.template", "renders %q for namespaces, which is not a Prometheus label name, so a namespaced external rule could not match its namespace: add overrides: {namespace: {resource: namespace}}, or set namespaced: false to query across namespaces", label)
		}
	}
	seen := map[string]bool{}
	for j, name := range r.Resources.AggregateFromPods {
		field := fmt.Sprintf("resources.aggregateFromPods[%d]", j)
		owner, ok := podowners.Lookup(name)
		if !ok {
			v.fail(section, i, field, "%q cannot be resolved to pods; supported: %s", name, strings.Join(podowners.Names(), ", "))
			continue
		}
		canonical := owner.Name()
		if seen[canonical] {
			v.fail(section, i, field, "%q is listed twice", name)
		}
		seen[canonical] = true
		r.Resources.AggregateFromPods[j] = canonical
	}
	if len(r.Resources.AggregateFromPods) > 0 && r.Resources.Template == "" &&
		(!overridesResource(r.Resources.Overrides, "pod") || !overridesResource(r.Resources.Overrides, "namespace")) {
		v.fail(section, i, "resources.aggregateFromPods", "needs series labels for pods and namespaces: add overrides for both (e.g. pod: {resource: pod}, namespace: {resource: namespace}) or a template")
	}
	for j, rep := range r.LabelValueReplacements {
		if rep.Find == "" {
			v.fail(section, i, fmt.Sprintf("labelValueReplacements[%d].find", j), "is required")
		}
	}
}

// resourceMapping checks resources.template and resources.overrides.
func (v *validator) resourceMapping(section string, i int, field string, m ResourceMapping) {
	if m.Template != "" {
		t, err := ParseResourceTemplate(m.Template)
		if err != nil {
			v.fail(section, i, field+".template", "invalid template: %v", err)
		} else if err := t.Execute(&strings.Builder{}, ResourceTemplateData{Group: "apps", Resource: "deployment"}); err != nil {
			v.fail(section, i, field+".template", "template cannot be rendered: %v", err)
		} else if !strings.Contains(m.Template, ".Resource") {
			v.fail(section, i, field+".template", "must use <<.Resource>>, or every label would map to the same resource")
		}
	}
	labels := make([]string, 0, len(m.Overrides))
	for label := range m.Overrides {
		labels = append(labels, label)
	}
	sort.Strings(labels)
	for _, label := range labels {
		gr := m.Overrides[label]
		f := field + ".overrides." + label
		if !model.LegacyValidation.IsValidLabelName(label) {
			v.fail(section, i, f, "%q is not a valid Prometheus label name", label)
		}
		if gr.Resource == "" {
			v.fail(section, i, f, "resource is required")
		}
	}
}

// templateLabel renders a resources.template for a core resource, as
// TemplateLabel does.
func templateLabel(text, resource string) (string, bool) {
	t, err := ParseResourceTemplate(text)
	if err != nil {
		return "", false
	}
	return TemplateLabel(t, resource)
}

// TemplateLabel renders a parsed resources.template for a core resource
// (group "", resource singular) and reports whether the result is a valid
// Prometheus label name.
func TemplateLabel(t *template.Template, resource string) (string, bool) {
	var b strings.Builder
	if err := t.Execute(&b, ResourceTemplateData{Resource: resource}); err != nil {
		return "", false
	}
	return b.String(), b.Len() > 0 && model.LegacyValidation.IsValidLabelName(b.String())
}

// resourceRules checks the resource metrics section.
func (v *validator) resourceRules(rr *ResourceRules) {
	const section = "resourceRules"
	var cpuSample string
	for _, res := range []struct {
		name string
		rule ResourceRule
	}{{"cpu", rr.CPU}, {"memory", rr.Memory}} {
		r := res.rule
		if reflect.ValueOf(r).IsZero() {
			v.fail(section, -1, res.name, "is required: resourceRules serve both cpu and memory")
			continue
		}
		sample, _ := v.queryTemplate(section, -1, res.name+".containerQuery", r.ContainerQuery,
			"sum by (<<.GroupBy>>) (rate(container_cpu_usage_seconds_total{container!=\"\",<<.LabelMatchers>>}[1m]))")
		if res.name == "cpu" {
			cpuSample = sample
		}
		v.queryTemplate(section, -1, res.name+".nodeQuery", r.NodeQuery,
			"sum by (<<.GroupBy>>) (rate(container_cpu_usage_seconds_total{id=\"/\",<<.LabelMatchers>>}[1m]))")
		v.resourceMapping(section, -1, res.name+".resources", r.Resources)
		if r.Resources.Namespaced != nil || len(r.Resources.AggregateFromPods) > 0 {
			v.fail(section, -1, res.name+".resources", "takes only overrides and template")
		}
		if r.Resources.Template == "" {
			for _, want := range []string{"pod", "namespace", "node"} {
				if !overridesResource(r.Resources.Overrides, want) {
					v.fail(section, -1, res.name+".resources.overrides", "no label maps to %ss: add %s: {resource: %s} (with the label your series use), or a template", want, want, want)
				}
			}
		}
		switch {
		case r.ContainerLabel == "":
			v.fail(section, -1, res.name+".containerLabel", "is required: the label holding the container name (cAdvisor's is container)")
		case !model.LegacyValidation.IsValidLabelName(r.ContainerLabel):
			v.fail(section, -1, res.name+".containerLabel", "%q is not a valid Prometheus label name", r.ContainerLabel)
		}
	}
	if rr.Window < 0 {
		v.fail(section, -1, "window", "must be positive, got %s", rr.Window)
	} else if rr.Window == 0 && cpuSample != "" {
		if _, ok := promql.Window(cpuSample); !ok {
			v.fail(section, -1, "window", "is not set and cpu.containerQuery has no range ([1m]) to take it from")
		}
	}
}

func overridesResource(overrides map[string]GroupResource, singular string) bool {
	for _, gr := range overrides {
		if gr.Group == "" && (gr.Resource == singular || gr.Resource == singular+"s") {
			return true
		}
	}
	return false
}

// lineOf finds the line of section[i].field (field may be dotted) in the
// document, falling back to the closest enclosing node.
func lineOf(doc *yaml.Node, section string, i int, field string) int {
	n := mapValue(doc, section)
	if n == nil {
		return doc.Line
	}
	line := mapKey(doc, section).Line
	if i >= 0 {
		if n.Kind != yaml.SequenceNode || i >= len(n.Content) {
			return n.Line
		}
		n = n.Content[i]
		line = n.Line
	}
	path := strings.Split(field, ".")
	for _, p := range path {
		name, idx, hasIdx := strings.Cut(strings.TrimSuffix(p, "]"), "[")
		key := mapKey(n, name)
		if key == nil {
			return line
		}
		line = key.Line
		n = mapValue(n, name)
		if hasIdx && n != nil && n.Kind == yaml.SequenceNode {
			var k int
			if _, err := fmt.Sscan(idx, &k); err == nil && k < len(n.Content) {
				n = n.Content[k]
				line = n.Line
			}
		}
		if n == nil {
			return line
		}
	}
	return line
}

func mapKey(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if n.Content[j].Value == key {
			return n.Content[j]
		}
	}
	return nil
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if n.Content[j].Value == key {
			return n.Content[j+1]
		}
	}
	return nil
}

// checkKnownFields walks the YAML tree next to the Go type it decodes into
// and reports every mapping key the type does not have.
func checkKnownFields(n *yaml.Node, t reflect.Type, path, source string, errs *[]error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode || t == reflect.TypeFor[model.Duration]() {
			return // type errors are reported by the decoder
		}
		fields := map[string]reflect.Type{}
		var names []string
		for k := range t.NumField() {
			f := t.Field(k)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			fields[name] = f.Type
			names = append(names, name)
		}
		for j := 0; j+1 < len(n.Content); j += 2 {
			key := n.Content[j].Value
			ft, ok := fields[key]
			child := joinPath(path, key)
			if !ok {
				msg := fmt.Sprintf("%s:%d: %s: unknown field", source, n.Content[j].Line, child)
				if s := closest(key, names); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				} else {
					msg += fmt.Sprintf(" (known fields: %s)", strings.Join(names, ", "))
				}
				*errs = append(*errs, errors.New(msg))
				continue
			}
			checkKnownFields(n.Content[j+1], ft, child, source, errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for j, c := range n.Content {
			checkKnownFields(c, t.Elem(), fmt.Sprintf("%s[%d]", path, j), source, errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for j := 0; j+1 < len(n.Content); j += 2 {
			checkKnownFields(n.Content[j+1], t.Elem(), joinPath(path, n.Content[j].Value), source, errs)
		}
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// closest returns the known name nearest to key when it is a likely typo.
func closest(key string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(key), strings.ToLower(n)); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
