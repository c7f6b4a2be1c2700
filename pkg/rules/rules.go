// Package rules compiles the rules of a config file (a Set of Rule, and its
// ResourceRules, a ResourceQuery each for cpu and memory) and the rule of a
// team's MetricRule (a TeamRule, compiled confined to its namespace, its
// Owner) into the operations the adapter performs with them: filtering and
// naming discovered series, associating series labels with Kubernetes
// resources, and rendering a rule's metricsQuery for one request (with
// TemplateData; a resources.template with ResourceTemplateData). A team's
// templates are text with placeholders, and every render is capped.
//
// It needs a RESTMapper to resolve label names to group-resources, and does
// not talk to Prometheus.
package rules

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/prometheus/common/model"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// Well-known group-resources.
var (
	Pods       = schema.GroupResource{Resource: "pods"}
	Namespaces = schema.GroupResource{Resource: "namespaces"}
)

// Rule is a compiled config.Rule, of the rules or the externalRules
// section.
type Rule struct {
	// Index is the rule's position in its section of the config file;
	// for a team's rule, its position among its namespace's rule objects.
	Index int
	// name is String(), formatted once.
	name string

	seriesQuery string
	filters     []filter
	nameRe      *regexp.Regexp
	nameAs      string
	query       *template.Template
	mapping
	aggregate  []schema.GroupResource
	namespaced bool
	// replacements rewrite object names into label values, in order.
	replacements []config.LabelValueReplacement
	// leftOut says why the rule is not served, when it is not.
	leftOut error
	// emptyIsZero answers 0 for what has no series.
	emptyIsZero bool
	// owner is the rule object of a team's rule; nil for the file's.
	owner *Owner
	// external is set for a rule of the external metrics API.
	external bool
	// backend names the store the rule reads ("": the default).
	backend string
	// window is the longest range of the metricsQuery (nil: none), read
	// at compile time from the query rendered with sample data: ranges
	// are the template's, never the request's.
	window *int64
}

// WindowSeconds is the window the rule's values are computed over: the
// longest range of its metricsQuery ("[1m]" is 60), nil for a query
// without a range.
func (r *Rule) WindowSeconds() *int64 { return r.window }

// External reports whether the rule serves the external metrics API
// (externalRules, or a MetricRule of api External).
func (r *Rule) External() bool { return r.external }

// EmptyIsZero reports the rule's emptyIsZero: a query that returns no
// series for an object (or, for an external metric, none at all) is
// answered 0 rather than with no value. Errors stay errors.
func (r *Rule) EmptyIsZero() bool { return r.emptyIsZero }

// Unlisted is the series an emptyIsZero rule serves before Prometheus has
// any: its series name, from its seriesQuery, with the labels its
// overrides name. A rule with emptyIsZero answers 0 for no series, so
// its metric exists before the first sample: an Ingress that has never
// had a request (ingress-nginx exports nothing for it until then) is 0,
// not an unknown metric. It reports false for other rules, and for rules
// whose series name or resources depend on the series (a regular
// expression on __name__, a resources.template).
func (r *Rule) Unlisted() (model.LabelSet, bool) {
	if !r.emptyIsZero || r.resTemplate != nil {
		return nil, false
	}
	name, ok := promql.SelectedName(r.seriesQuery)
	if !ok || !model.LegacyValidation.IsValidMetricName(name) {
		return nil, false
	}
	if _, ok := r.MetricName(name); !ok {
		return nil, false
	}
	ls := model.LabelSet{model.MetricNameLabel: model.LabelValue(name)}
	for label := range r.overrides {
		ls[model.LabelName(label)] = ""
	}
	return ls, true
}

// LeftOut says why the rule cannot be served correctly, or is nil: such a
// rule is still listed (so that a request for its metrics is answered
// with the reason) but serves nothing, and every other rule serves.
func (r *Rule) LeftOut() error { return r.leftOut }

// mapping is a compiled resources section: which series labels name which
// Kubernetes resources.
type mapping struct {
	overrides   map[string]schema.GroupResource // label -> group-resource, as written
	resTemplate *template.Template
	resRe       *regexp.Regexp // reverse of resTemplate: label -> group, resource
	groupIdx    int
	resourceIdx int
}

// String names the rule as the config file does: rules[2].
func (r *Rule) String() string { return r.name }

type filter struct {
	re   *regexp.Regexp
	keep bool
}

// LabelFor returns the series label that holds the names of a core
// resource ("namespace", "pod", "node", singular): the override naming it,
// else the resources.template rendered for it. It reports false when
// neither names the resource.
func (m *mapping) LabelFor(singular string) (string, bool) {
	plural := singular + "s"
	var found []string
	for label, gr := range m.overrides {
		if gr.Group == "" && (gr.Resource == singular || gr.Resource == plural) {
			found = append(found, label)
		}
	}
	if len(found) > 0 {
		slices.Sort(found) // the same answer every time, should two labels claim it
		return found[0], true
	}
	if m.resTemplate == nil {
		return "", false
	}
	if label, ok := templateLabel(m.resTemplate, singular); ok {
		return label, true
	}
	return "", false
}

// compileReverseTemplate turns a resources.template such as
// "kube_<<.Group>>_<<.Resource>>" into a regular expression that extracts
// the group and resource from a label name.
func (r *mapping) compileReverseTemplate() error {
	const groupTok, resTok = "\x00GROUP\x00", "\x00RESOURCE\x00"
	rendered, err := render(r.resTemplate, ResourceTemplateData{Group: groupTok, Resource: resTok}, MaxRender)
	if err != nil {
		return err
	}
	var expr strings.Builder
	expr.WriteString("^")
	idx := 0
	r.groupIdx, r.resourceIdx = -1, -1
	for rendered != "" {
		gi := strings.Index(rendered, groupTok)
		ri := strings.Index(rendered, resTok)
		next, tok := -1, ""
		switch {
		case gi >= 0 && (ri < 0 || gi < ri):
			next, tok = gi, groupTok
		case ri >= 0:
			next, tok = ri, resTok
		}
		if next < 0 {
			expr.WriteString(regexp.QuoteMeta(rendered))
			break
		}
		expr.WriteString(regexp.QuoteMeta(rendered[:next]))
		idx++
		if tok == groupTok {
			expr.WriteString("(.*)")
			r.groupIdx = idx
		} else {
			expr.WriteString("(.+)")
			r.resourceIdx = idx
		}
		rendered = rendered[next+len(tok):]
	}
	expr.WriteString("$")
	if r.resourceIdx < 0 {
		return fmt.Errorf("template %q does not use <<.Resource>>", r.resTemplate.Root.String())
	}
	re, err := regexp.Compile(expr.String())
	if err != nil {
		return err
	}
	r.resRe = re
	return nil
}

// SeriesQuery is the rule's series selector.
func (r *Rule) SeriesQuery() string { return r.seriesQuery }

// Backend names the store the rule reads: "" for the default one
// (--prometheus-url), else a name of the rules file's backends.
func (r *Rule) Backend() string { return r.backend }

// Listing is what discovery lists for the rule and keys its series by:
// its seriesQuery on its store (ListingOf).
func (r *Rule) Listing() string { return ListingOf(r.backend, r.seriesQuery) }

// ListingOf is a listing's key: the selector itself on the default store,
// "@BACKEND SELECTOR" on another (a selector never starts with @, and a
// backend's name holds no space).
func ListingOf(backend, selector string) string {
	if backend == "" {
		return selector
	}
	return "@" + backend + " " + selector
}

// SplitListing reads a listing's key: its store ("" for the default) and
// its selector.
func SplitListing(key string) (backend, selector string) {
	if !strings.HasPrefix(key, "@") {
		return "", key
	}
	backend, selector, _ = strings.Cut(key[1:], " ")
	return backend, selector
}

// MetricName returns the API metric name for a series name, or false when
// the rule's filters or name.matches drop the series, or the name it makes
// is longer than MaxMetricName.
func (r *Rule) MetricName(series string) (string, bool) {
	for _, f := range r.filters {
		if f.re.MatchString(series) != f.keep {
			return "", false
		}
	}
	m := r.nameRe.FindStringSubmatchIndex(series)
	if m == nil {
		return "", false
	}
	name := string(r.nameRe.ExpandString(nil, r.nameAs, series, m))
	return name, name != "" && len(name) <= MaxMetricName
}

// MaxMetricName is the longest metric name served: a metric is a resource
// name in discovery (pods/NAME), which Kubernetes bounds.
const MaxMetricName = 253

// LabelResource resolves a series label name to the group-resource it
// stands for, through the overrides and then the template. mapper
// normalises the result (singular to plural, group guessed when the
// template has none). It reports false for labels that name no resource.
func (r *mapping) LabelResource(label string, mapper apimeta.RESTMapper) (schema.GroupResource, bool) {
	if gr, ok := r.overrides[label]; ok {
		return normalise(gr, mapper)
	}
	if r.resRe == nil {
		return schema.GroupResource{}, false
	}
	m := r.resRe.FindStringSubmatch(label)
	if m == nil {
		return schema.GroupResource{}, false
	}
	gr := schema.GroupResource{Resource: m[r.resourceIdx]}
	if r.groupIdx > 0 {
		gr.Group = strings.ReplaceAll(m[r.groupIdx], "_", ".")
	}
	return normalise(gr, mapper)
}

func normalise(gr schema.GroupResource, mapper apimeta.RESTMapper) (schema.GroupResource, bool) {
	gvr, err := mapper.ResourceFor(gr.WithVersion(""))
	if err != nil {
		return schema.GroupResource{}, false
	}
	return gvr.GroupResource(), true
}

// AggregateFromPods lists the resources this rule serves by resolving
// objects to their pods.
func (r *Rule) AggregateFromPods() []schema.GroupResource { return r.aggregate }

// Namespaced reports resources.namespaced of an external rule: whether a
// request's namespace becomes a matcher on NamespaceLabel.
func (r *Rule) Namespaced() bool { return r.namespaced }

// Render executes the metricsQuery template for a series, the matchers of
// a request and the labels to group by. A team's rule (Owner) renders
// PromQL confined to its namespace: every selector of the query, whatever
// the template wrote, reads that namespace's series only.
func (r *Rule) Render(series string, matchers []promql.Matcher, groupBy []string) (string, error) {
	expr, err := execute(r.query, "metricsQuery of "+r.String(), QueryData(series, matchers, groupBy))
	if err != nil || r.owner == nil {
		return expr, err
	}
	confined, err := promql.Confine(expr, r.owner.label, r.owner.Namespace)
	if err != nil {
		return "", fmt.Errorf("rendering metricsQuery of %s: %w", r, err)
	}
	return confined, nil
}

// QueryData is what a query template sees for a request: .LabelMatchers
// joins the matchers; .GroupBy joins groupBy; .LabelValuesByName maps each
// label matched by = or =~ (the first matcher of a label) to a regular
// expression matching exactly its values (a\.b|c for "a.b" and "c", the
// values joined by | as prometheus-adapter's documentation says), escaped
// for a double-quoted PromQL string: `pod=~"<<index .LabelValuesByName
// "pod">>"` selects those objects and nothing else, whatever their names.
func QueryData(series string, matchers []promql.Matcher, groupBy []string) TemplateData {
	valuesByName := map[string]string{}
	for _, m := range matchers {
		if _, dup := valuesByName[m.Name]; dup {
			continue
		}
		switch m.Op {
		case promql.Equal:
			valuesByName[m.Name] = promql.StringBody(regexp.QuoteMeta(m.Value))
		case promql.RegexpEq:
			valuesByName[m.Name] = promql.StringBody(m.Value)
		}
	}
	return TemplateData{
		Series:            series,
		LabelMatchers:     promql.Join(matchers),
		LabelValuesByName: valuesByName,
		GroupBy:           strings.Join(groupBy, ","),
		GroupBySlice:      groupBy,
	}
}

// execute renders a query template for a request, within the request's
// renderLimit.
func execute(t *template.Template, what string, data TemplateData) (string, error) {
	out, err := render(t, data, renderLimit(data))
	if err != nil {
		return "", fmt.Errorf("rendering %s: %w", what, err)
	}
	if strings.TrimSpace(out) == "" {
		return "", fmt.Errorf("rendering %s: the query is empty", what)
	}
	return out, nil
}

// ToLabelValue applies labelValueReplacements to an object name, each in
// turn, as prometheus-adapter does. There is no way back: a label value is
// mapped to an object by the values of the names a request asked for
// (LabelValues).
func (r *Rule) ToLabelValue(name string) string {
	for _, rep := range r.replacements {
		name = strings.ReplaceAll(name, rep.Find, rep.Replace)
	}
	return name
}

// LabelValues maps names to their label values (ToLabelValue), and back:
// byValue holds the index in names of each label value's one name, or -1
// when several names have the same label value (then a sample of that
// value cannot be told apart, and belongs to none of them).
func (r *Rule) LabelValues(names []string) (values []string, byValue map[string]int) {
	values = make([]string, len(names))
	byValue = make(map[string]int, len(names))
	for i, n := range names {
		v := r.ToLabelValue(n)
		values[i] = v
		if _, dup := byValue[v]; dup {
			byValue[v] = -1
		} else {
			byValue[v] = i
		}
	}
	return values, byValue
}

// SeriesName returns the metric name of a discovered series.
func SeriesName(ls model.LabelSet) string { return string(ls[model.MetricNameLabel]) }
