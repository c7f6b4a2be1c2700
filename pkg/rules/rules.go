// Package rules compiles the rules of a config file into the operations the
// adapter performs with them: filtering and naming discovered series,
// associating series labels with Kubernetes resources, and rendering a
// rule's metricsQuery for one request.
//
// It needs a RESTMapper to resolve label names to group-resources, and does
// not talk to Prometheus.
package rules

import (
	"fmt"
	"regexp"
	"strings"
	"text/template"

	"github.com/prometheus/common/model"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
)

// Well-known group-resources.
var (
	Pods       = schema.GroupResource{Resource: "pods"}
	Namespaces = schema.GroupResource{Resource: "namespaces"}
)

// Rule is a compiled config.Rule.
type Rule struct {
	// Index is the rule's position in the config file's rules list.
	Index int

	seriesQuery string
	filters     []filter
	nameRe      *regexp.Regexp
	nameAs      string
	query       *template.Template
	overrides   map[string]schema.GroupResource // label -> group-resource, as written
	resTemplate *template.Template
	resRe       *regexp.Regexp // reverse of resTemplate: label -> group, resource
	groupIdx    int
	resourceIdx int
	aggregate   []schema.GroupResource
	replacer    *strings.Replacer
	unreplacer  *strings.Replacer
}

type filter struct {
	re   *regexp.Regexp
	keep bool
}

// Compile compiles validated config rules.
func Compile(cfg []config.Rule) ([]*Rule, error) {
	out := make([]*Rule, 0, len(cfg))
	for i, c := range cfg {
		r, err := compile(i, c)
		if err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func compile(i int, c config.Rule) (*Rule, error) {
	r := &Rule{Index: i, seriesQuery: c.SeriesQuery, overrides: map[string]schema.GroupResource{}}
	for _, f := range c.SeriesFilters {
		expr, keep := f.Is, true
		if f.IsNot != "" {
			expr, keep = f.IsNot, false
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, fmt.Errorf("seriesFilters: %w", err)
		}
		r.filters = append(r.filters, filter{re: re, keep: keep})
	}
	var err error
	if r.nameRe, err = c.Name.NameRegexp(); err != nil {
		return nil, fmt.Errorf("name.matches: %w", err)
	}
	if r.nameAs, err = c.Name.AsTemplate(r.nameRe); err != nil {
		return nil, err
	}
	if r.query, err = config.ParseQueryTemplate(c.MetricsQuery); err != nil {
		return nil, fmt.Errorf("metricsQuery: %w", err)
	}
	for label, gr := range c.Resources.Overrides {
		r.overrides[label] = schema.GroupResource{Group: gr.Group, Resource: gr.Resource}
	}
	if c.Resources.Template != "" {
		if r.resTemplate, err = config.ParseResourceTemplate(c.Resources.Template); err != nil {
			return nil, fmt.Errorf("resources.template: %w", err)
		}
		if err := r.compileReverseTemplate(); err != nil {
			return nil, fmt.Errorf("resources.template: %w", err)
		}
	}
	for _, name := range c.Resources.AggregateFromPods {
		canonical, ok := config.CanonicalPodOwner(name)
		if !ok {
			return nil, fmt.Errorf("resources.aggregateFromPods: %q cannot be resolved to pods", name)
		}
		r.aggregate = append(r.aggregate, schema.ParseGroupResource(canonical))
	}
	if len(c.LabelValueReplacements) > 0 {
		var fwd, back []string
		for _, rep := range c.LabelValueReplacements {
			fwd = append(fwd, rep.Find, rep.Replace)
			if rep.Replace != "" {
				back = append(back, rep.Replace, rep.Find)
			}
		}
		r.replacer = strings.NewReplacer(fwd...)
		r.unreplacer = strings.NewReplacer(back...)
	}
	return r, nil
}

// compileReverseTemplate turns a resources.template such as
// "kube_<<.Group>>_<<.Resource>>" into a regular expression that extracts
// the group and resource from a label name.
func (r *Rule) compileReverseTemplate() error {
	const groupTok, resTok = "\x00GROUP\x00", "\x00RESOURCE\x00"
	var b strings.Builder
	if err := r.resTemplate.Execute(&b, config.ResourceTemplateData{Group: groupTok, Resource: resTok}); err != nil {
		return err
	}
	rendered := b.String()
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

// MetricName returns the API metric name for a series name, or false when
// the rule's filters or name.matches drop the series.
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
	return name, name != ""
}

// LabelResource resolves a series label name to the group-resource it
// stands for, through the overrides and then the template. mapper
// normalises the result (singular to plural, group guessed when the
// template has none). It reports false for labels that name no resource.
func (r *Rule) LabelResource(label string, mapper apimeta.RESTMapper) (schema.GroupResource, bool) {
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

// Render executes the metricsQuery template.
func (r *Rule) Render(data config.QueryData) (string, error) {
	var b strings.Builder
	if err := r.query.Execute(&b, data); err != nil {
		return "", fmt.Errorf("rendering metricsQuery of rules[%d]: %w", r.Index, err)
	}
	return b.String(), nil
}

// ToLabelValue applies labelValueReplacements to an object name.
func (r *Rule) ToLabelValue(name string) string {
	if r.replacer == nil {
		return name
	}
	return r.replacer.Replace(name)
}

// FromLabelValue undoes labelValueReplacements on a label value.
func (r *Rule) FromLabelValue(value string) string {
	if r.unreplacer == nil {
		return value
	}
	return r.unreplacer.Replace(value)
}

// SeriesName returns the metric name of a discovered series.
func SeriesName(ls model.LabelSet) string { return string(ls[model.MetricNameLabel]) }
