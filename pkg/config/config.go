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
// The package decodes: unknown keys are errors that name the file and line
// and suggest the known key, and Where tells the file and line of any rule's
// field for the errors of package rules, which compiles the rules and so
// validates them. It does not talk to Prometheus or to Kubernetes.
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
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Config is the whole rules file.
type Config struct {
	// source names the file; doc is its YAML tree, for Where.
	source string
	doc    *yaml.Node

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

// Parse decodes a rules file. source names the file in errors. Unknown
// keys are errors naming the file, the line and the key, with the known
// key it most likely meant. The rules themselves are checked by compiling
// them (rules.CompileSet).
func Parse(data []byte, source string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if root.Kind == 0 || (root.Kind == yaml.DocumentNode && len(root.Content) == 0) {
		return nil, fmt.Errorf("%s: the file is empty; it needs at least one entry under rules", source)
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, decodeError(err, source, doc)
	}
	if len(c.Rules) == 0 && len(c.ExternalRules) == 0 && c.ResourceRules == nil {
		// An adapter that serves nothing looks healthy and fails every
		// HPA: refuse to start instead.
		return nil, fmt.Errorf("%s: no rules, externalRules or resourceRules: there is nothing to serve", source)
	}
	c.source, c.doc = source, doc
	return &c, nil
}

// Source names the file the config was read from.
func (c *Config) Source() string { return c.source }

// Where names section[i].field with the file and the line it is on, as
// errors say it: "rules.yaml:12: rules[0].metricsQuery". i < 0 means
// section is a mapping (resourceRules) and field a path inside it; field
// may be dotted and indexed (resources.aggregateFromPods[1]).
func (c *Config) Where(section string, i int, field string) string {
	path := fmt.Sprintf("%s[%d].%s", section, i, field)
	if i < 0 {
		path = section + "." + field
	}
	line := 0
	if c.doc != nil {
		line = lineOf(c.doc, section, i, field)
	}
	return fmt.Sprintf("%s:%d: %s", c.source, line, path)
}

// unknownField is yaml's message for a key the type does not have.
var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)

// decodeError turns the decoder's errors into ones that name the file:
// an unknown key with its path and the known key it most likely meant.
func decodeError(err error, source string, doc *yaml.Node) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %w", source, err)
	}
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		m := unknownField.FindStringSubmatch(msg)
		if m == nil {
			errs = append(errs, fmt.Errorf("%s: %s", source, msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		path := m[2]
		if p, ok := keyPath(doc, line, m[2], ""); ok {
			path = p
		}
		msg := fmt.Sprintf("%s:%d: %s: unknown field", source, line, path)
		names := fieldNames(m[3])
		if s := closest(m[2], names); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		} else if len(names) > 0 {
			msg += fmt.Sprintf(" (known fields: %s)", strings.Join(names, ", "))
		}
		errs = append(errs, errors.New(msg))
	}
	return errors.Join(errs...)
}

// keyPath finds the key named key on line in the tree and returns its path
// (rules[0].resources.overrides.pod.grop).
func keyPath(n *yaml.Node, line int, key, path string) (string, bool) {
	switch n.Kind {
	case yaml.MappingNode:
		for j := 0; j+1 < len(n.Content); j += 2 {
			k := n.Content[j]
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			if k.Line == line && k.Value == key {
				return child, true
			}
			if p, ok := keyPath(n.Content[j+1], line, key, child); ok {
				return p, true
			}
		}
	case yaml.SequenceNode:
		for j, c := range n.Content {
			if p, ok := keyPath(c, line, key, fmt.Sprintf("%s[%d]", path, j)); ok {
				return p, true
			}
		}
	case yaml.AliasNode:
		if n.Alias != nil {
			return keyPath(n.Alias, line, key, path)
		}
	}
	return "", false
}

// configTypes are the types of the file, by the name yaml's errors give.
var configTypes = func() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for _, t := range []reflect.Type{
		reflect.TypeFor[Config](), reflect.TypeFor[Rule](), reflect.TypeFor[RegexFilter](), reflect.TypeFor[ResourceMapping](),
		reflect.TypeFor[GroupResource](), reflect.TypeFor[NameMapping](), reflect.TypeFor[LabelValueReplacement](),
		reflect.TypeFor[ResourceRules](), reflect.TypeFor[ResourceRule](),
	} {
		out[t.String()] = t
	}
	return out
}()

// fieldNames lists the keys of a type of the file, in their order.
func fieldNames(typeName string) []string {
	t, ok := configTypes[typeName]
	if !ok {
		return nil
	}
	var names []string
	for k := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(k).Tag.Get("yaml"), ",")
		if name != "" && name != "-" && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
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
