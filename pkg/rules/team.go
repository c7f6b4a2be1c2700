package rules

import (
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
)

// TeamSection names a team's rule in messages: a rule object, not a
// section of the file.
const TeamSection = "MetricRule"

// Owner is the rule object a team's rule was compiled from. A team's rule
// is served in its namespace only, and reads that namespace's series only.
type Owner struct {
	Namespace, Name string
	// label is the series label that holds the namespace, which every
	// selector of the rule's queries is confined to.
	label string
}

// TeamRule is one rule object: a rule as the rules file writes it, owned
// by a namespace.
type TeamRule struct {
	Namespace, Name string
	// External is true for a rule of the external metrics API, false for
	// one of the custom metrics API.
	External bool
	Rule     config.Rule
	// Index orders the namespace's rules: the first of two rules naming
	// one metric serves it.
	Index int
	// Backends are the stores MetricRules may name (the rules file's
	// backends with teams: true).
	Backends []string
}

// CompileTeam compiles a team's rule. namespaceLabel is the series label
// that holds the namespace (Prometheus' kubernetes_sd relabelling writes
// it): the rule's seriesQuery, and every query it renders, are rewritten
// by promql.Confine so that each selector reads only series whose
// namespaceLabel is the rule's namespace, whatever the rule's author wrote.
// The rule's resources must hold the namespace in that label (it is added
// when they name none). What cannot be confined, or compiled, is an error
// naming the field of the rule object (spec.metricsQuery).
func CompileTeam(t TeamRule, namespaceLabel string) (*Rule, error) {
	c := &compiler{where: func(_ string, _ int, field string) string { return "spec." + field }, team: true, backends: t.Backends}
	section := "rules"
	if t.External {
		section = "externalRules"
	}
	cr := t.Rule
	owner := &Owner{Namespace: t.Namespace, Name: t.Name, label: namespaceLabel}
	if cr.Resources.Namespaced != nil && !*cr.Resources.Namespaced {
		c.fail(section, t.Index, "resources.namespaced", "a MetricRule reads its own namespace only; namespaced: false is for the rules file")
		cr.Resources.Namespaced = nil
	}
	cr.Resources = withNamespaceLabel(c, section, t.Index, cr.Resources, namespaceLabel)
	r := c.rule(section, t.Index, cr)
	r.name = fmt.Sprintf("%s %s/%s", TeamSection, t.Namespace, t.Name)
	r.owner = owner
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	confined, err := promql.Confine(cr.SeriesQuery, namespaceLabel, t.Namespace)
	if err != nil {
		return nil, fmt.Errorf("spec.seriesQuery: %w", err)
	}
	r.seriesQuery = confined
	// The template rendered with placeholder values parsed; confining it
	// tells what can never be confined (info()) now, not per request.
	if _, err := r.Render(sampleData.Series, nil, sampleData.GroupBySlice); err != nil {
		return nil, fmt.Errorf("spec.metricsQuery: %w", err)
	}
	if r.leftOut != nil {
		return nil, r.leftOut
	}
	return r, nil
}

// withNamespaceLabel checks that resources hold the namespace in label,
// and maps label to namespaces when they name no namespace label.
func withNamespaceLabel(c *compiler, section string, i int, m config.ResourceMapping, label string) config.ResourceMapping {
	var mp mapping
	probe := &compiler{where: c.where, team: c.team}
	mp = probe.mapping(section, i, "resources", m)
	if len(probe.errs) > 0 {
		return m // c.rule reports them
	}
	got, ok := mp.LabelFor("namespace")
	switch {
	case !ok:
		overrides := make(map[string]config.GroupResource, len(m.Overrides)+1)
		for k, v := range m.Overrides {
			overrides[k] = v
		}
		overrides[label] = config.GroupResource{Resource: Namespaces.Resource}
		m.Overrides = overrides
	case got != label:
		c.fail(section, i, "resources", "map the label %q to namespaces, not %q: a MetricRule reads the series whose %q is its namespace", label, got, label)
	}
	return m
}

// Owner is the rule object of a team's rule, nil for a rule of the file.
func (r *Rule) Owner() *Owner { return r.owner }

// Namespace is the namespace a team's rule is served in; "" for a rule of
// the file, served in every namespace.
func (r *Rule) Namespace() string {
	if r.owner == nil {
		return ""
	}
	return r.owner.Namespace
}

// ServesIn reports whether a team's rule may serve gr in its namespace:
// namespaced resources, and the namespace object itself. A rule of the
// file serves everything.
func (r *Rule) ServesIn(gr schema.GroupResource, namespaced bool) bool {
	return r.owner == nil || namespaced || gr == Namespaces
}
