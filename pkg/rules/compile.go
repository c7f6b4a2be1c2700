package rules

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/common/model"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// Set is a whole compiled config file: the rules of each metrics API.
type Set struct {
	// Custom are the rules section (custom.metrics.k8s.io).
	Custom []*Rule
	// External are the externalRules section (external.metrics.k8s.io).
	External []*Rule
	// Resource is the resourceRules section (metrics.k8s.io); nil when
	// the file has none.
	Resource *ResourceRules
	// Backends are the file's stores as it writes them (package backends
	// builds their clients), and BackendWhere names a field of one in
	// errors ("file:line: backends[1].url").
	Backends     []config.Backend
	BackendWhere func(i int, field string) string
}

// Parse reads and compiles a rules file: config.Parse, then CompileSet.
func Parse(data []byte, source string) (*Set, error) {
	cfg, err := config.Parse(data, source)
	if err != nil {
		return nil, err
	}
	return CompileSet(cfg)
}

// CompileSet compiles a config file, and so validates it: compiling is the
// only parse of its regular expressions and templates. Every problem is
// reported, each with the file, line, rule and field. A rule that is valid
// in prometheus-adapter's format but cannot be served correctly is not an
// error: it is compiled with LeftOut saying why, and every other rule
// serves.
func CompileSet(cfg *config.Config) (*Set, error) {
	c := &compiler{where: cfg.Where}
	for _, b := range cfg.Backends {
		c.backends = append(c.backends, b.Name)
	}
	s := &Set{Backends: cfg.Backends, BackendWhere: func(i int, field string) string { return cfg.Where("backends", i, field) }}
	for i := range cfg.Rules {
		s.Custom = append(s.Custom, c.rule("rules", i, cfg.Rules[i]))
	}
	for i := range cfg.ExternalRules {
		s.External = append(s.External, c.rule("externalRules", i, cfg.ExternalRules[i]))
	}
	if cfg.ResourceRules != nil {
		s.Resource = c.resourceRules(cfg.ResourceRules)
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	return s, nil
}

// LeftOut lists the rules that are left out, each with why.
func (s *Set) LeftOut() []*Rule {
	var out []*Rule
	for _, r := range append(slices.Clone(s.Custom), s.External...) {
		if r.LeftOut() != nil {
			out = append(out, r)
		}
	}
	return out
}

// compiler collects the problems of one file, or of one rule object.
type compiler struct {
	// where names section[i].field for a person: the file and line, or
	// the rule object's field.
	where func(section string, i int, field string) string
	errs  []error
	// team is set for a team's rule: its templates are text with
	// placeholders only (checkTeamTemplate).
	team bool
	// backends are the stores a rule may name (for a team's rule, those
	// that take MetricRules).
	backends []string
}

// problem is a problem with section[i].field ("file:line: path: msg"); i <
// 0 means section is a mapping (resourceRules) and field a path inside it.
func (c *compiler) problem(section string, i int, field, format string, args ...any) error {
	return fmt.Errorf("%s: %s", c.where(section, i, field), fmt.Sprintf(format, args...))
}

func (c *compiler) fail(section string, i int, field, format string, args ...any) {
	c.errs = append(c.errs, c.problem(section, i, field, format, args...))
}

// rule compiles one rule of rules or externalRules; what it cannot
// compile is recorded in c.errs.
func (c *compiler) rule(section string, i int, cr config.Rule) *Rule {
	r := &Rule{Index: i, name: fmt.Sprintf("%s[%d]", section, i), seriesQuery: cr.SeriesQuery,
		namespaced: cr.Resources.IsNamespaced(), replacements: cr.LabelValueReplacements}
	r.backend = c.backend(section, i, "backend", cr.Backend)
	if strings.TrimSpace(cr.SeriesQuery) == "" {
		c.fail(section, i, "seriesQuery", "is required (a series selector such as 'app_requests_total{namespace!=\"\",pod!=\"\"}')")
	} else if err := promql.ParseSeriesSelector(cr.SeriesQuery); err != nil {
		c.fail(section, i, "seriesQuery", "is not a series selector: %v", err)
	}
	c.filters(section, i, r, cr.SeriesFilters)
	c.name(section, i, r, cr.Name)
	r.query, r.window = c.queryTemplate(section, i, "metricsQuery", cr.MetricsQuery, "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)")
	r.mapping = c.mapping(section, i, "resources", cr.Resources)
	external := section == "externalRules"
	r.external = external
	switch {
	case !external && cr.Resources.Namespaced != nil:
		c.fail(section, i, "resources.namespaced", "only externalRules take namespaced; a custom metric's scope is its resource's")
	case external && len(cr.Resources.AggregateFromPods) > 0:
		c.fail(section, i, "resources.aggregateFromPods", "externalRules name no objects; aggregateFromPods belongs in rules")
	case external && r.namespaced:
		r.leftOut = c.namespaceLabel(section, i, r, cr.Resources)
	}
	r.aggregate = c.aggregate(section, i, cr.Resources)
	if cr.EmptyIsZero && !external && r.servesPods() {
		c.fail(section, i, "emptyIsZero", "a rule that serves pods may not answer 0 for no series: an HPA averages a Pods metric over the pods, and a made-up 0 would be a wrong number. "+
			"Serve the objects in front of the pods (an Ingress, a Service: their traffic goes on at zero replicas) from a rule of their own, or use an externalRule")
	}
	r.emptyIsZero = cr.EmptyIsZero
	longest := float64(MaxObjectName)
	for j, rep := range cr.LabelValueReplacements {
		if rep.Find == "" {
			c.fail(section, i, fmt.Sprintf("labelValueReplacements[%d].find", j), "is required")
			continue
		}
		// Each replacement can multiply a name's length by len(replace)
		// / len(find): sixteen of them would make a 253-character pod
		// name gigabytes long, per name, per request.
		longest *= max(1, float64(len(rep.Replace))/float64(len(rep.Find)))
		if longest > MaxLabelValue {
			c.fail(section, i, fmt.Sprintf("labelValueReplacements[%d]", j),
				"the replacements so far can make an object name of %d characters longer than %d bytes: replace with shorter text", MaxObjectName, MaxLabelValue)
			break
		}
	}
	return r
}

// MaxObjectName is the longest Kubernetes object name; MaxLabelValue the
// longest label value labelValueReplacements may make of one.
const (
	MaxObjectName = 253
	MaxLabelValue = 4096
)

// backend checks that a rule names a known store ("" or
// config.DefaultBackend is the default), and returns its name.
func (c *compiler) backend(section string, i int, field, name string) string {
	switch {
	case name == "" || name == config.DefaultBackend:
		return ""
	case slices.Contains(c.backends, name):
		return name
	case c.team:
		c.fail(section, i, field, "%q does not take MetricRules: a MetricRule may name the rules file's backends with teams: true (%s)", name, strings.Join(c.backends, ", "))
	default:
		c.fail(section, i, field, "no backend is named %q (the rules file's backends: %s)", name, strings.Join(c.backends, ", "))
	}
	return ""
}

// namespaceLabel checks that a namespaced external rule has a label for
// the namespace; without one it could only be served without its
// namespace matcher, every namespace's series at once, so it is left out
// (prometheus-adapter serves it so).
func (c *compiler) namespaceLabel(section string, i int, r *Rule, m config.ResourceMapping) error {
	if _, ok := r.LabelFor("namespace"); ok {
		return nil
	}
	if m.Template == "" {
		return c.problem(section, i, "resources", "a namespaced external rule needs the label that holds the namespace: add overrides: {namespace: {resource: namespace}} (or a template), or set namespaced: false to query across namespaces")
	}
	label := ""
	if r.resTemplate != nil {
		label, _ = templateLabel(r.resTemplate, "namespace")
	}
	return c.problem(section, i, "resources.template", "renders %q for namespaces, which is not a Prometheus label name, so a namespaced external rule could not match its namespace: add overrides: {namespace: {resource: namespace}}, or set namespaced: false to query across namespaces", label)
}

func (c *compiler) filters(section string, i int, r *Rule, fs []config.RegexFilter) {
	for j, f := range fs {
		field := fmt.Sprintf("seriesFilters[%d]", j)
		switch {
		case f.Is != "" && f.IsNot != "":
			c.fail(section, i, field, "sets both is and isNot; a filter takes exactly one")
		case f.Is == "" && f.IsNot == "":
			c.fail(section, i, field, "sets neither is nor isNot")
		default:
			expr := f.Is + f.IsNot
			re, err := regexp.Compile(expr)
			if err != nil {
				c.fail(section, i, field, "invalid regular expression %q: %v", expr, err)
				continue
			}
			r.filters = append(r.filters, filter{re: re, keep: f.Is != ""})
		}
	}
}

// name compiles name.matches (".*" when empty) and name.as ($0 without
// capture groups, $1 with one).
func (c *compiler) name(section string, i int, r *Rule, n config.NameMapping) {
	expr := n.Matches
	if expr == "" {
		expr = ".*"
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		c.fail(section, i, "name.matches", "invalid regular expression %q: %v", n.Matches, err)
		return
	}
	r.nameRe, r.nameAs = re, n.As
	if n.As != "" {
		// Each reference copies a capture of the series name: a team's
		// name.as of a hundred $0s would make every series name a
		// hundred times longer, per series, per round.
		if refs := strings.Count(n.As, "$"); c.team && refs > MaxTeamNameReferences {
			c.fail(section, i, "name.as", "uses %d references ($1, ${name}), more than the %d allowed", refs, MaxTeamNameReferences)
		}
		return
	}
	switch re.NumSubexp() {
	case 0:
		r.nameAs = "$0"
	case 1:
		r.nameAs = "$1"
	default:
		c.fail(section, i, "name.as", "name.matches %q has %d capture groups, so name.as must say which to use", re.String(), re.NumSubexp())
	}
}

// MaxTeamNameReferences is how many capture references a team's name.as
// may use.
const MaxTeamNameReferences = 4

// aggregate compiles resources.aggregateFromPods.
func (c *compiler) aggregate(section string, i int, m config.ResourceMapping) []schema.GroupResource {
	var out []schema.GroupResource
	for j, name := range m.AggregateFromPods {
		field := fmt.Sprintf("resources.aggregateFromPods[%d]", j)
		owner, ok := podowners.Lookup(name)
		switch {
		case !ok:
			c.fail(section, i, field, "%q cannot be resolved to pods; supported: %s", name, strings.Join(podowners.Names(), ", "))
		case slices.Contains(out, owner.GVR.GroupResource()):
			c.fail(section, i, field, "%q is listed twice", name)
		default:
			out = append(out, owner.GVR.GroupResource())
		}
	}
	if len(m.AggregateFromPods) > 0 && m.Template == "" &&
		(!overridesResource(m.Overrides, "pod") || !overridesResource(m.Overrides, "namespace")) {
		c.fail(section, i, "resources.aggregateFromPods", "needs series labels for pods and namespaces: add overrides for both (e.g. pod: {resource: pod}, namespace: {resource: namespace}) or a template")
	}
	return out
}

// mapping compiles resources.template and resources.overrides.
func (c *compiler) mapping(section string, i int, field string, cm config.ResourceMapping) mapping {
	m := mapping{overrides: map[string]schema.GroupResource{}}
	if cm.Template != "" {
		if err := m.compileTemplate(cm.Template, c.team); err != nil {
			c.fail(section, i, field+".template", "%v", err)
		}
	}
	for _, label := range slicesSortedKeys(cm.Overrides) {
		gr := cm.Overrides[label]
		f := field + ".overrides." + label
		if !model.LegacyValidation.IsValidLabelName(label) {
			c.fail(section, i, f, "%q is not a valid Prometheus label name", label)
		}
		if gr.Resource == "" {
			c.fail(section, i, f, "resource is required")
		}
		m.overrides[label] = schema.GroupResource{Group: gr.Group, Resource: gr.Resource}
	}
	return m
}

// servesPods reports whether the rule can serve pods: a label maps to
// them, by override or template, or it serves objects through their pods.
func (r *Rule) servesPods() bool {
	_, podLabel := r.LabelFor("pod")
	return podLabel || len(r.aggregate) > 0
}

func overridesResource(overrides map[string]config.GroupResource, singular string) bool {
	for _, gr := range overrides {
		if gr.Group == "" && (gr.Resource == singular || gr.Resource == singular+"s") {
			return true
		}
	}
	return false
}
