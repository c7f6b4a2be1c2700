package rules

import (
	"fmt"
	"text/template"
	"time"

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
}

// ResourceQuery is one compiled config.ResourceRule, with the labels its
// series carry for pods, namespaces, nodes and containers.
type ResourceQuery struct {
	// Name is "cpu" or "memory".
	Name string
	// PodLabel, NamespaceLabel, NodeLabel and ContainerLabel are the series
	// labels holding those names.
	PodLabel, NamespaceLabel, NodeLabel, ContainerLabel string

	container *template.Template
	node      *template.Template
}

// CompileResourceRules compiles a validated resourceRules section.
func CompileResourceRules(c *config.ResourceRules) (*ResourceRules, error) {
	cpu, err := compileResource("cpu", c.CPU)
	if err != nil {
		return nil, err
	}
	mem, err := compileResource("memory", c.Memory)
	if err != nil {
		return nil, err
	}
	rr := &ResourceRules{CPU: cpu, Memory: mem, Window: time.Duration(c.Window)}
	if rr.Window == 0 {
		sample, err := cpu.RenderContainers([]promql.Matcher{promql.Equals(cpu.PodLabel, "p")}, []string{cpu.PodLabel})
		if err != nil {
			return nil, err
		}
		d, ok := promql.Window(sample)
		if !ok {
			return nil, fmt.Errorf("resourceRules.window: not set, and cpu.containerQuery has no range to take it from")
		}
		rr.Window = d
	}
	return rr, nil
}

func compileResource(name string, c config.ResourceRule) (*ResourceQuery, error) {
	q := &ResourceQuery{Name: name, ContainerLabel: c.ContainerLabel}
	var err error
	if q.container, err = config.ParseQueryTemplate(c.ContainerQuery); err != nil {
		return nil, fmt.Errorf("resourceRules.%s.containerQuery: %w", name, err)
	}
	if q.node, err = config.ParseQueryTemplate(c.NodeQuery); err != nil {
		return nil, fmt.Errorf("resourceRules.%s.nodeQuery: %w", name, err)
	}
	m, err := compileMapping(c.Resources)
	if err != nil {
		return nil, fmt.Errorf("resourceRules.%s.%w", name, err)
	}
	for _, l := range []struct {
		singular string
		dst      *string
	}{{"pod", &q.PodLabel}, {"namespace", &q.NamespaceLabel}, {"node", &q.NodeLabel}} {
		var ok bool
		if *l.dst, ok = m.LabelFor(l.singular); !ok {
			return nil, fmt.Errorf("resourceRules.%s.resources: no label maps to %ss", name, l.singular)
		}
	}
	return q, nil
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
