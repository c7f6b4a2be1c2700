// Package config reads the adapter's rules file.
//
// The file format is prometheus-adapter's, so an existing prometheus-adapter
// configuration can be used unchanged: rules[] with seriesQuery,
// seriesFilters, resources (overrides, template), name (matches, as),
// metricsQuery and labelValueReplacements. resourceRules and externalRules
// are accepted so such files load, but this adapter serves only the custom
// metrics API and ignores them (Load reports them as warnings).
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
)

// Config is the whole rules file.
type Config struct {
	// Rules map Prometheus series to custom metrics. They are applied
	// independently, so they should not overlap.
	Rules []Rule `yaml:"rules"`
	// ResourceRules is prometheus-adapter's resource metrics API
	// (metrics.k8s.io) section. It is parsed and ignored.
	ResourceRules *ResourceRules `yaml:"resourceRules,omitempty"`
	// ExternalRules is prometheus-adapter's external metrics API section. It
	// is parsed and ignored.
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
}

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

// ResourceRules is prometheus-adapter's resource metrics section, kept so
// that such files parse. This adapter does not serve metrics.k8s.io.
type ResourceRules struct {
	CPU    ResourceRule   `yaml:"cpu"`
	Memory ResourceRule   `yaml:"memory"`
	Window model.Duration `yaml:"window"`
}

// ResourceRule is one entry of ResourceRules.
type ResourceRule struct {
	ContainerQuery string          `yaml:"containerQuery"`
	NodeQuery      string          `yaml:"nodeQuery"`
	Resources      ResourceMapping `yaml:"resources"`
	ContainerLabel string          `yaml:"containerLabel"`
}

//go:embed default.yaml
var defaultConfig []byte

// DefaultSource is how errors and logs name the built-in configuration.
const DefaultSource = "<built-in config>"

// Default returns the built-in configuration: requests-per-second and
// packets-per-second, both sum(rate(app_requests_total[1m])) per object, for
// pods, namespaces and the objects in PodOwnerResources.
func Default() (*Config, []string, error) {
	return Parse(defaultConfig, DefaultSource)
}

// DefaultYAML returns the text of the built-in configuration.
func DefaultYAML() []byte { return slices.Clone(defaultConfig) }

// Load reads and validates the rules file at path. Warnings are problems
// that do not stop the adapter, such as sections it ignores.
func Load(path string) (*Config, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates a rules file. source names the file in
// errors. All problems found are reported together.
func Parse(data []byte, source string) (*Config, []string, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%s: the file is empty; it needs at least one entry under rules", source)
		}
		return nil, nil, fmt.Errorf("%s: %w", source, err)
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}

	var errs []error
	checkKnownFields(doc, reflect.TypeFor[Config](), "", source, &errs)
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}

	var c Config
	if err := doc.Decode(&c); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", source, err)
	}

	v := validator{source: source, doc: doc}
	for i := range c.Rules {
		v.rule("rules", i, &c.Rules[i])
	}
	if len(v.errs) > 0 {
		return nil, nil, errors.Join(v.errs...)
	}

	var warnings []string
	if len(c.Rules) == 0 {
		warnings = append(warnings, fmt.Sprintf("%s: no rules: the adapter will serve no custom metrics", source))
	}
	if c.ResourceRules != nil {
		warnings = append(warnings, fmt.Sprintf("%s: resourceRules are ignored: this adapter serves custom.metrics.k8s.io only; use metrics-server for CPU and memory", source))
	}
	if len(c.ExternalRules) > 0 {
		warnings = append(warnings, fmt.Sprintf("%s: externalRules are ignored: this adapter does not serve external.metrics.k8s.io", source))
	}
	return &c, warnings, nil
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

func (v *validator) fail(section string, i int, field string, format string, args ...any) {
	line := lineOf(v.doc, section, i, field)
	where := fmt.Sprintf("%s:%d", v.source, line)
	msg := fmt.Sprintf(format, args...)
	v.errs = append(v.errs, fmt.Errorf("%s: %s[%d].%s: %s", where, section, i, field, msg))
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

	if strings.TrimSpace(r.MetricsQuery) == "" {
		v.fail(section, i, "metricsQuery", "is required (e.g. 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)')")
	} else if t, err := ParseQueryTemplate(r.MetricsQuery); err != nil {
		v.fail(section, i, "metricsQuery", "invalid template: %v", err)
	} else {
		sample := QueryData{
			Series:            "series",
			LabelMatchers:     `namespace="ns",pod=~"a|b"`,
			LabelValuesByName: map[string]string{"namespace": "ns", "pod": "a|b"},
			GroupBy:           "pod",
			GroupBySlice:      []string{"pod"},
		}
		if err := t.Execute(&strings.Builder{}, sample); err != nil {
			v.fail(section, i, "metricsQuery", "template cannot be rendered: %v", err)
		}
	}

	if r.Resources.Template != "" {
		t, err := ParseResourceTemplate(r.Resources.Template)
		if err != nil {
			v.fail(section, i, "resources.template", "invalid template: %v", err)
		} else if err := t.Execute(&strings.Builder{}, ResourceTemplateData{Group: "apps", Resource: "deployment"}); err != nil {
			v.fail(section, i, "resources.template", "template cannot be rendered: %v", err)
		} else if !strings.Contains(r.Resources.Template, ".Resource") {
			v.fail(section, i, "resources.template", "must use <<.Resource>>, or every label would map to the same resource")
		}
	}
	labels := make([]string, 0, len(r.Resources.Overrides))
	for label := range r.Resources.Overrides {
		labels = append(labels, label)
	}
	sort.Strings(labels)
	for _, label := range labels {
		gr := r.Resources.Overrides[label]
		field := "resources.overrides." + label
		if !model.LabelName(label).IsValidLegacy() {
			v.fail(section, i, field, "%q is not a valid Prometheus label name", label)
		}
		if gr.Resource == "" {
			v.fail(section, i, field, "resource is required")
		}
	}
	seen := map[string]bool{}
	for j, name := range r.Resources.AggregateFromPods {
		field := fmt.Sprintf("resources.aggregateFromPods[%d]", j)
		canonical, ok := CanonicalPodOwner(name)
		if !ok {
			v.fail(section, i, field, "%q cannot be resolved to pods; supported: %s", name, strings.Join(PodOwnerResources, ", "))
			continue
		}
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

func overridesResource(overrides map[string]GroupResource, singular string) bool {
	for _, gr := range overrides {
		if gr.Group == "" && (gr.Resource == singular || gr.Resource == singular+"s") {
			return true
		}
	}
	return false
}

// PodOwnerResources are the resources that aggregateFromPods can resolve to
// pods, in canonical "resource.group" form.
var PodOwnerResources = []string{
	"deployments.apps",
	"replicasets.apps",
	"statefulsets.apps",
	"daemonsets.apps",
	"services",
	"ingresses.networking.k8s.io",
}

// CanonicalPodOwner returns the canonical form of a pod-owner resource
// name, accepting singular names and kinds ("deployment.apps",
// "Deployment", "ingress").
func CanonicalPodOwner(name string) (string, bool) {
	n := strings.ToLower(strings.TrimSpace(name))
	resource, group, _ := strings.Cut(n, ".")
	for _, c := range PodOwnerResources {
		cr, cg, _ := strings.Cut(c, ".")
		singular := strings.TrimSuffix(cr, "s")
		if cr == "ingresses" {
			singular = "ingress"
		}
		if (resource == cr || resource == singular) && (group == "" || group == cg) {
			return c, true
		}
	}
	return "", false
}

// lineOf finds the line of section[i].field (field may be dotted) in the
// document, falling back to the closest enclosing node.
func lineOf(doc *yaml.Node, section string, i int, field string) int {
	n := mapValue(doc, section)
	if n == nil {
		return doc.Line
	}
	if n.Kind != yaml.SequenceNode || i >= len(n.Content) {
		return n.Line
	}
	n = n.Content[i]
	line := n.Line
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
