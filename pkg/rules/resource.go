package rules

import (
	"reflect"
	"text/template"
	"time"

	"github.com/prometheus/common/model"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// ResourceRules are the compiled resourceRules section: how to read the
// CPU (cores) and memory (bytes) of containers and nodes.
type ResourceRules struct {
	CPU    *ResourceQuery
	Memory *ResourceQuery
	// Window is the period CPU usage is averaged over: resourceRules.window,
	// or the range of the CPU container query.
	Window time.Duration
	// Backend names the store both queries read ("": the default).
	Backend string
}

// ResourceQuery is one compiled config.ResourceRule, with the labels its
// series carry for pods, namespaces, nodes and containers.
type ResourceQuery struct {
	// Name is "cpu" or "memory".
	Name string
	// Backend names the store it reads ("": the default): the
	// resourceRules' backend.
	Backend string
	// PodLabel, NamespaceLabel, NodeLabel and ContainerLabel are the series
	// labels holding those names.
	PodLabel, NamespaceLabel, NodeLabel, ContainerLabel string

	container *template.Template
	node      *template.Template
}

// resourceRules compiles the resourceRules section.
func (c *compiler) resourceRules(cr *config.ResourceRules) *ResourceRules {
	const section = "resourceRules"
	rr := &ResourceRules{CPU: c.resource("cpu", cr.CPU), Memory: c.resource("memory", cr.Memory), Window: time.Duration(cr.Window),
		Backend: c.backend(section, -1, "backend", cr.Backend)}
	for _, q := range []*ResourceQuery{rr.CPU, rr.Memory} {
		if q != nil {
			q.Backend = rr.Backend
		}
	}
	switch {
	case cr.Window < 0:
		c.fail(section, -1, "window", "must be positive, got %s", cr.Window)
	case cr.Window == 0 && rr.CPU != nil && rr.CPU.container != nil:
		sample, err := rr.CPU.RenderContainers([]promql.Matcher{promql.Equals(rr.CPU.PodLabel, "p")}, []string{rr.CPU.PodLabel})
		d, ok := promql.Window(sample)
		if err != nil || !ok {
			c.fail(section, -1, "window", "is not set and cpu.containerQuery has no range ([1m]) to take it from")
		}
		rr.Window = d
	}
	return rr
}

// resource compiles resourceRules.cpu or .memory.
func (c *compiler) resource(name string, cr config.ResourceRule) *ResourceQuery {
	const section = "resourceRules"
	if reflect.ValueOf(cr).IsZero() {
		c.fail(section, -1, name, "is required: resourceRules serve both cpu and memory")
		return nil
	}
	q := &ResourceQuery{Name: name, ContainerLabel: cr.ContainerLabel}
	q.container, _ = c.queryTemplate(section, -1, name+".containerQuery", cr.ContainerQuery,
		"sum by (<<.GroupBy>>) (rate(container_cpu_usage_seconds_total{container!=\"\",<<.LabelMatchers>>}[1m]))")
	q.node, _ = c.queryTemplate(section, -1, name+".nodeQuery", cr.NodeQuery,
		"sum by (<<.GroupBy>>) (rate(container_cpu_usage_seconds_total{id=\"/\",<<.LabelMatchers>>}[1m]))")
	m := c.mapping(section, -1, name+".resources", cr.Resources)
	if cr.Resources.Namespaced != nil || len(cr.Resources.AggregateFromPods) > 0 {
		c.fail(section, -1, name+".resources", "takes only overrides and template")
	}
	for _, l := range []struct {
		singular string
		dst      *string
	}{{"pod", &q.PodLabel}, {"namespace", &q.NamespaceLabel}, {"node", &q.NodeLabel}} {
		var ok bool
		if *l.dst, ok = m.LabelFor(l.singular); ok {
			continue
		}
		if cr.Resources.Template == "" {
			c.fail(section, -1, name+".resources.overrides", "no label maps to %ss: add %s: {resource: %s} (with the label your series use), or a template", l.singular, l.singular, l.singular)
		} else {
			c.fail(section, -1, name+".resources.template", "renders no valid label name for %ss: add an override %s: {resource: %s}", l.singular, l.singular, l.singular)
		}
	}
	switch {
	case cr.ContainerLabel == "":
		c.fail(section, -1, name+".containerLabel", "is required: the label holding the container name (cAdvisor's is container)")
	case !model.LegacyValidation.IsValidLabelName(cr.ContainerLabel):
		c.fail(section, -1, name+".containerLabel", "%q is not a valid Prometheus label name", cr.ContainerLabel)
	}
	return q
}

// RenderContainers renders the container query for the given matchers,
// grouped by groupBy.
func (q *ResourceQuery) RenderContainers(matchers []promql.Matcher, groupBy []string) (string, error) {
	return execute(q.container, "resourceRules."+q.Name+".containerQuery", QueryData("", matchers, groupBy))
}

// RenderNodes renders the node query for the given matchers, grouped by
// groupBy.
func (q *ResourceQuery) RenderNodes(matchers []promql.Matcher, groupBy []string) (string, error) {
	return execute(q.node, "resourceRules."+q.Name+".nodeQuery", QueryData("", matchers, groupBy))
}
