package rules

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"

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

// The placeholders a team's templates (a MetricRule's) may use: a team's
// template is text with these in it, nothing else. It has no range, if,
// with, define, template, block, variables or function calls, so it runs
// each placeholder once, and what it renders is its text plus the
// request's data, a bounded number of times.
var (
	// queryPlaceholders are those of metricsQuery, besides <<index
	// .LabelValuesByName "label">>.
	queryPlaceholders = []string{"Series", "LabelMatchers", "GroupBy", "GroupBySlice"}
	// resourcePlaceholders are those of resources.template.
	resourcePlaceholders = []string{"Group", "Resource"}
)

// MaxTeamPlaceholders is how many placeholders a team's template may use;
// at most MaxTeamDataPlaceholders of them may be .LabelMatchers or
// .LabelValuesByName, the ones as long as the request (a label matcher of
// every pod asked for).
const (
	MaxTeamPlaceholders     = 16
	MaxTeamDataPlaceholders = 8
)

// errTeamTemplate is a team's template that is more than text and
// placeholders.
var errTeamTemplate = errors.New("a MetricRule's templates are text with placeholders only")

// checkTeamTemplate refuses, on its parse tree and before it ever runs, a
// team's template that is more than text with the placeholders of fields
// (and, when index is set, <<index .LabelValuesByName "label">>).
func checkTeamTemplate(t *template.Template, fields []string, index bool) error {
	if len(t.Templates()) > 1 {
		return fmt.Errorf("%w: define and block are not allowed", errTeamTemplate)
	}
	allowed := func() string {
		var names []string
		for _, f := range fields {
			names = append(names, LeftDelim+"."+f+RightDelim)
		}
		if index {
			names = append(names, LeftDelim+`index .LabelValuesByName "label"`+RightDelim)
		}
		return strings.Join(names, ", ")
	}
	n, data := 0, 0
	for _, node := range t.Root.Nodes {
		switch node := node.(type) {
		case *parse.TextNode:
			continue
		case *parse.ActionNode:
			field, ok := placeholder(node.Pipe, fields, index)
			if !ok {
				return fmt.Errorf("%w: %s is not one of %s", errTeamTemplate, promql.Short(node.String()), allowed())
			}
			n++
			if field == "LabelMatchers" || field == "LabelValuesByName" {
				data++
			}
		default:
			return fmt.Errorf("%w: %s is not allowed (no range, if, with, template, define or block)", errTeamTemplate, promql.Short(node.String()))
		}
	}
	switch {
	case n > MaxTeamPlaceholders:
		return fmt.Errorf("%w: it uses %d placeholders, more than the %d allowed", errTeamTemplate, n, MaxTeamPlaceholders)
	case data > MaxTeamDataPlaceholders:
		return fmt.Errorf("%w: it uses .LabelMatchers and .LabelValuesByName %d times, more than the %d allowed", errTeamTemplate, data, MaxTeamDataPlaceholders)
	}
	return nil
}

// placeholder reports which field an action prints, when it is one
// allowed placeholder: <<.Field>>, or <<index .LabelValuesByName "x">>.
func placeholder(p *parse.PipeNode, fields []string, index bool) (string, bool) {
	if p == nil || len(p.Decl) > 0 || p.IsAssign || len(p.Cmds) != 1 {
		return "", false
	}
	args := p.Cmds[0].Args
	switch {
	case len(args) == 1:
		f, ok := args[0].(*parse.FieldNode)
		if ok && len(f.Ident) == 1 && slices.Contains(fields, f.Ident[0]) {
			return f.Ident[0], true
		}
	case len(args) == 3 && index:
		fn, ok1 := args[0].(*parse.IdentifierNode)
		f, ok2 := args[1].(*parse.FieldNode)
		_, ok3 := args[2].(*parse.StringNode)
		if ok1 && ok2 && ok3 && fn.Ident == "index" && len(f.Ident) == 1 && f.Ident[0] == "LabelValuesByName" {
			return "LabelValuesByName", true
		}
	}
	return "", false
}

// MaxRender is what any render may write beyond its data: a query is its
// template's text and the request's data, and a render past
// MaxRender + RenderDataFactor × the request's data fails rather than grow.
const (
	MaxRender        = 64 << 10
	RenderDataFactor = MaxTeamDataPlaceholders
)

// errTooLong stops a render at its limit.
var errTooLong = errors.New("too long")

// capped is a strings.Builder that refuses to grow past max.
type capped struct {
	strings.Builder
	max int
}

func (w *capped) Write(p []byte) (int, error) {
	if w.Len()+len(p) > w.max {
		return 0, errTooLong
	}
	return w.Builder.Write(p)
}

// render executes t with data into a buffer of at most limit bytes. Past
// it the render fails, saying so without the text.
func render(t *template.Template, data any, limit int) (string, error) {
	w := &capped{max: limit}
	if err := t.Execute(w, data); err != nil {
		if errors.Is(err, errTooLong) {
			return "", fmt.Errorf("the rendered text is longer than %d bytes (%d bytes of the template's text and its data, times %d)", limit, MaxRender, RenderDataFactor)
		}
		return "", err
	}
	return w.String(), nil
}

// renderLimit is the most a query template may render for data: its
// request's own size, RenderDataFactor times, plus MaxRender.
func renderLimit(data TemplateData) int {
	n := len(data.Series) + len(data.LabelMatchers) + len(data.GroupBy)
	for _, v := range data.LabelValuesByName {
		n += len(v)
	}
	return MaxRender + RenderDataFactor*n
}

// queryTemplate compiles a metricsQuery-like field: it must be set, parse,
// (for a team's rule) be text with placeholders only, and render with
// sample data. It returns nil, with the problem recorded, when it does
// not.
func (c *compiler) queryTemplate(section string, i int, field, text, example string) (*template.Template, *int64) {
	if strings.TrimSpace(text) == "" {
		c.fail(section, i, field, "is required (e.g. '%s')", example)
		return nil, nil
	}
	t, err := newTemplate(field, text)
	if err != nil {
		c.fail(section, i, field, "invalid template: %v", err)
		return nil, nil
	}
	if c.team {
		if err := checkTeamTemplate(t, queryPlaceholders, true); err != nil {
			c.fail(section, i, field, "%v", err)
			return nil, nil
		}
	}
	out, err := render(t, sampleData, renderLimit(sampleData))
	if err != nil {
		c.fail(section, i, field, "template cannot be rendered: %v", err)
		return nil, nil
	}
	// What a request renders is PromQL: parsed here, with placeholder
	// values, so that a broken query stops the file at load rather than
	// answering 500 on every request.
	if err := promql.Parse(out); err != nil {
		c.fail(section, i, field, "is not valid PromQL once rendered (as %s): %s", promql.Short(out), promql.Cut(err.Error(), 4*promql.MaxInMessage))
		return nil, nil
	}
	return t, windowSeconds(out)
}

// windowSeconds is the longest range of a query in seconds, or nil.
func windowSeconds(expr string) *int64 {
	d, ok := promql.Window(expr)
	if !ok {
		return nil
	}
	s := int64(d / time.Second)
	return &s
}

// compileTemplate compiles resources.template and its reverse, the
// regular expression that reads a group and resource from a label name.
// A team's (team set) is text with placeholders only.
func (m *mapping) compileTemplate(text string, team bool) error {
	t, err := newTemplate("resources.template", text)
	if err != nil {
		return fmt.Errorf("invalid template: %w", err)
	}
	if team {
		if err := checkTeamTemplate(t, resourcePlaceholders, false); err != nil {
			return err
		}
	}
	if _, err := render(t, ResourceTemplateData{Group: "apps", Resource: "deployment"}, MaxRender); err != nil {
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
	label, err := render(t, ResourceTemplateData{Resource: resource}, MaxRender)
	if err != nil {
		return "", false
	}
	return label, label != "" && model.LegacyValidation.IsValidLabelName(label)
}

func slicesSortedKeys[V any](m map[string]V) []string {
	return slices.SortedFunc(maps.Keys(m), cmp.Compare[string])
}
