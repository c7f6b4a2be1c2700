// Package metricrules serves the rules teams write as MetricRule objects
// (pkg/apis/rules/v1alpha1) in their own namespaces: it watches them,
// compiles each one confined to its namespace (rules.CompileTeam), keeps at
// most --metric-rules-per-namespace of each namespace's, hands the compiled
// rules to the adapter (which serves them after the rules file's, through
// the same swap as a reload of the file), and writes each object's status:
// accepted or not and why, the series discovered and when, the metrics
// served and what overrules them. A failed query of a rule is an Event on
// its object.
//
// The Controller does this in every replica of the adapter; the replicas
// elect (LeaderElection) the one that writes status, from a workqueue.
// Compile turns objects into an Outcome each, through a Cache of what each
// generation compiled to; Status turns an Outcome and a discovery round's
// Observation into the object's status.
//
// It does not serve requests: the providers do, with the rules it hands
// over, and query.Budgets bound each namespace's queries.
package metricrules

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apis/rules/v1alpha1"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// Config converts a MetricRule's spec to the rules file's rule.
func Config(spec v1alpha1.MetricRuleSpec) config.Rule {
	r := config.Rule{
		SeriesQuery:  spec.SeriesQuery,
		MetricsQuery: spec.MetricsQuery,
		Name:         config.NameMapping{Matches: spec.Name.Matches, As: spec.Name.As},
		EmptyIsZero:  spec.EmptyIsZero,
		Backend:      spec.Backend,
		Resources: config.ResourceMapping{
			Template:          spec.Resources.Template,
			AggregateFromPods: spec.Resources.AggregateFromPods,
		},
	}
	for _, f := range spec.SeriesFilters {
		r.SeriesFilters = append(r.SeriesFilters, config.RegexFilter{Is: f.Is, IsNot: f.IsNot})
	}
	if len(spec.Resources.Overrides) > 0 {
		r.Resources.Overrides = make(map[string]config.GroupResource, len(spec.Resources.Overrides))
		for label, gr := range spec.Resources.Overrides {
			r.Resources.Overrides[label] = config.GroupResource{Group: gr.Group, Resource: gr.Resource}
		}
	}
	for _, rep := range spec.LabelValueReplacements {
		r.LabelValueReplacements = append(r.LabelValueReplacements, config.LabelValueReplacement{Find: rep.Find, Replace: rep.Replace})
	}
	return r
}

// Outcome is what became of one MetricRule: its rule, or why it is not
// served.
type Outcome struct {
	Object *v1alpha1.MetricRule
	// Rule is the compiled rule; nil when Err or OverLimit.
	Rule *rules.Rule
	// Err says why the rule does not compile or cannot be confined.
	Err error
	// OverLimit is set when the namespace has PerNamespace older rules.
	OverLimit bool
}

// Compile compiles MetricRules, each confined to its namespace's series
// in namespaceLabel. A namespace's rules are ordered by creation (then
// name): beyond perNamespace (when positive), the newest are over the
// limit. The outcomes are ordered by namespace, then that order.
func Compile(objs []*v1alpha1.MetricRule, namespaceLabel string, perNamespace int, backends []string, cache *Cache) []Outcome {
	objs = slices.Clone(objs)
	slices.SortFunc(objs, func(a, b *v1alpha1.MetricRule) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace),
			a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Name, b.Name))
	})
	out := make([]Outcome, 0, len(objs))
	i := 0
	for j, o := range objs {
		if j > 0 && objs[j-1].Namespace != o.Namespace {
			i = 0
		}
		if perNamespace > 0 && i >= perNamespace {
			out = append(out, Outcome{Object: o, OverLimit: true})
			continue
		}
		r, err := cache.compile(o, i, namespaceLabel, backends)
		out = append(out, Outcome{Object: o, Rule: r, Err: err})
		i++
	}
	return out
}

// Cache keeps the rules compiled from each object's generation, so that an
// unchanged object keeps its rule (and the series discovered for it).
type Cache struct {
	entries map[string]cached
}

type cached struct {
	generation     int64
	index          int
	namespaceLabel string
	// backends are the stores MetricRules could name when it compiled.
	backends string
	rule     *rules.Rule
	err      error
}

// NewCache returns an empty Cache.
func NewCache() *Cache { return &Cache{entries: map[string]cached{}} }

func (c *Cache) compile(o *v1alpha1.MetricRule, index int, namespaceLabel string, backends []string) (*rules.Rule, error) {
	key := cacheKey(o)
	allowed := strings.Join(backends, ",")
	if e, ok := c.entries[key]; ok && e.generation == o.Generation && e.index == index && e.namespaceLabel == namespaceLabel && e.backends == allowed {
		return e.rule, e.err
	}
	tr := rules.TeamRule{
		Namespace: o.Namespace, Name: o.Name, External: o.Spec.API == v1alpha1.External, Rule: Config(o.Spec), Index: index,
		Backends: backends,
	}
	r, err := compileWithin(CompileTimeout, o.Namespace, func() (*rules.Rule, error) { return rules.CompileTeam(tr, namespaceLabel) })
	c.entries[key] = cached{generation: o.Generation, index: index, namespaceLabel: namespaceLabel, backends: allowed, rule: r, err: err}
	return r, err
}

// CompileTimeout is how long one MetricRule may take to compile. Its
// templates are text with placeholders (rules.CompileTeam checks them
// before they run), its regular expressions are linear-time and its PromQL
// is at most 8 KiB, so compiling takes microseconds; the deadline keeps
// one rule from stalling the others should any of that ever change.
const CompileTimeout = time.Second

// compileWithin runs compile, a rule object of namespace's compilation,
// off the caller's goroutine: past timeout the rule is refused, and the
// compilation left behind ends on its own (its result is dropped).
func compileWithin(timeout time.Duration, namespace string, compile func() (*rules.Rule, error)) (*rules.Rule, error) {
	type result struct {
		rule *rules.Rule
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := compile()
		done <- result{r, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case res := <-done:
		return res.rule, res.err
	case <-t.C:
		metrics.ObserveCompileTimeout(namespace)
		return nil, fmt.Errorf("compiling took longer than %s: simplify spec.metricsQuery, spec.name and spec.seriesFilters", timeout)
	}
}

// cacheKey names an object in the Cache: a deleted and recreated object
// (a new UID) is compiled again.
func cacheKey(o *v1alpha1.MetricRule) string {
	return string(o.UID) + "/" + o.Namespace + "/" + o.Name
}

// Retain forgets the objects not in objs.
func (c *Cache) Retain(objs []*v1alpha1.MetricRule) {
	keep := make(map[string]bool, len(objs))
	for _, o := range objs {
		keep[cacheKey(o)] = true
	}
	for k := range c.entries {
		if !keep[k] {
			delete(c.entries, k)
		}
	}
}

// FromUnstructured converts an object the API server returned.
func FromUnstructured(u *unstructured.Unstructured) (*v1alpha1.MetricRule, error) {
	var mr v1alpha1.MetricRule
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &mr); err != nil {
		return nil, fmt.Errorf("MetricRule %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return &mr, nil
}
