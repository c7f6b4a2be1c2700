package rules

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template"

	"github.com/prometheus/common/model"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// Delims are the delimiters of metricsQuery and resources.template, as in
// prometheus-adapter.
const (
	LeftDelim  = "<<"
	RightDelim = ">>"
)

// TemplateData is what a metricsQuery (or a resource rule's query) sees.
type TemplateData struct {
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

// ResourceTemplateData is what a resources.template sees: .Group has dots
// replaced with underscores, .Resource is singular.
type ResourceTemplateData struct {
	Group    string
	Resource string
}

// sampleData renders a query template at load, so that a template that
// cannot be rendered is refused there, not on the first request.
var sampleData = TemplateData{
	Series:            "series",
	LabelMatchers:     `namespace="ns",pod=~"a|b"`,
	LabelValuesByName: map[string]string{"namespace": "ns", "pod": "a|b"},
	GroupBy:           "pod",
	GroupBySlice:      []string{"pod"},
}

func newTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Delims(LeftDelim, RightDelim).Option("missingkey=error").Parse(text)
}

// queryTemplate compiles a metricsQuery-like field: it must be set, parse,
// and render with sample data. It returns nil, with the problem recorded,
// when it does not.
func (c *compiler) queryTemplate(section string, i int, field, text, example string) *template.Template {
	if strings.TrimSpace(text) == "" {
		c.fail(section, i, field, "is required (e.g. '%s')", example)
		return nil
	}
	t, err := newTemplate(field, text)
	if err != nil {
		c.fail(section, i, field, "invalid template: %v", err)
		return nil
	}
	var b strings.Builder
	if err := t.Execute(&b, sampleData); err != nil {
		c.fail(section, i, field, "template cannot be rendered: %v", err)
		return nil
	}
	// What a request renders is PromQL: parsed here, with placeholder
	// values, so that a broken query stops the file at load rather than
	// answering 500 on every request.
	if err := promql.Parse(b.String()); err != nil {
		c.fail(section, i, field, "is not valid PromQL once rendered (as %s): %v", b.String(), err)
		return nil
	}
	return t
}

// compileTemplate compiles resources.template and its reverse, the
// regular expression that reads a group and resource from a label name.
func (m *mapping) compileTemplate(text string) error {
	t, err := newTemplate("resources.template", text)
	if err != nil {
		return fmt.Errorf("invalid template: %w", err)
	}
	if err := t.Execute(&strings.Builder{}, ResourceTemplateData{Group: "apps", Resource: "deployment"}); err != nil {
		return fmt.Errorf("template cannot be rendered: %w", err)
	}
	if !strings.Contains(text, ".Resource") {
		return fmt.Errorf("must use <<.Resource>>, or every label would map to the same resource")
	}
	m.resTemplate = t
	return m.compileReverseTemplate()
}

// templateLabel renders a parsed resources.template for a core resource
// (group "", resource singular) and reports whether the result is a valid
// Prometheus label name.
func templateLabel(t *template.Template, resource string) (string, bool) {
	var b strings.Builder
	if err := t.Execute(&b, ResourceTemplateData{Resource: resource}); err != nil {
		return "", false
	}
	return b.String(), b.Len() > 0 && model.LegacyValidation.IsValidLabelName(b.String())
}

func slicesSortedKeys[V any](m map[string]V) []string {
	return slices.SortedFunc(maps.Keys(m), cmp.Compare[string])
}
