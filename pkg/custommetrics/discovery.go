package custommetrics

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// metricKey identifies a served metric: a metric name on a group-resource.
type metricKey struct {
	resource schema.GroupResource
	metric   string
}

// entry is how one served metric is queried.
type entry struct {
	rule       *rules.Rule
	series     string
	namespaced bool
	// label is the series label holding the object's name. Empty when the
	// object is resolved through its pods.
	label string
	// namespaceLabel is the series label holding the namespace, if any.
	namespaceLabel string
	// podLabel is the series label holding the pod name, for entries
	// resolved through pods.
	podLabel string
	viaPods  bool
}

// index is one discovery result. It is immutable once built.
type index struct {
	entries map[metricKey]entry
	list    []provider.CustomMetricInfo
	built   time.Time
	// pending names the rules whose series were never listed, and why.
	pending error
	// shadowed lists the definitions an earlier rule's won over.
	shadowed []Overlap
	// resources memoises the REST mapper for requested group-resources
	// (schema.GroupResource -> resourceInfo) until the next round.
	resources sync.Map
}

// buildIndex maps the series each rule discovered to served metrics.
// seriesByQuery holds the result of each distinct seriesQuery.
func buildIndex(rs []*rules.Rule, seriesByQuery map[string][]model.LabelSet, mapper apimeta.RESTMapper, now time.Time) *index {
	idx := &index{entries: map[metricKey]entry{}, built: now}
	for _, r := range rs {
		labelCache := map[string]labelRes{}
		resolve := func(label string) labelRes {
			if lr, ok := labelCache[label]; ok {
				return lr
			}
			gr, ok := r.LabelResource(label, mapper)
			lr := labelRes{gr: gr, ok: ok, namespaced: ok && isNamespaced(gr, mapper)}
			labelCache[label] = lr
			return lr
		}
		// Series that differ only in label values add nothing: keep one
		// per name and label-name set.
		seen := map[string]bool{}
		for _, ls := range seriesByQuery[r.SeriesQuery()] {
			name := rules.SeriesName(ls)
			if name == "" {
				continue
			}
			shape := seriesShape(name, ls)
			if seen[shape] {
				continue
			}
			seen[shape] = true
			metric, ok := r.MetricName(name)
			if !ok {
				continue
			}
			var nsLabel, podLabel string
			resources := map[schema.GroupResource]string{}
			scoped := map[schema.GroupResource]bool{}
			// In the order of their names, so that when two labels map to
			// the same resource (namespace and exported_namespace through
			// a template), every discovery round picks the same one.
			for _, ln := range slices.Sorted(maps.Keys(ls)) {
				if ln == model.MetricNameLabel {
					continue
				}
				lr := resolve(string(ln))
				if !lr.ok {
					continue
				}
				if _, dup := resources[lr.gr]; dup {
					continue
				}
				resources[lr.gr] = string(ln)
				scoped[lr.gr] = lr.namespaced
				switch lr.gr {
				case rules.Namespaces:
					nsLabel = string(ln)
				case rules.Pods:
					podLabel = string(ln)
				}
			}
			for gr, label := range resources {
				e := entry{rule: r, series: name, label: label, namespaceLabel: nsLabel}
				e.namespaced = nsLabel != "" && scoped[gr]
				idx.add(metricKey{gr, metric}, e)
			}
			if podLabel != "" && nsLabel != "" {
				for _, gr := range r.AggregateFromPods() {
					if _, direct := resources[gr]; direct {
						continue
					}
					idx.add(metricKey{gr, metric}, entry{rule: r, series: name, namespaced: true, namespaceLabel: nsLabel, podLabel: podLabel, viaPods: true})
				}
			}
		}
	}
	slices.SortFunc(idx.shadowed, func(a, b Overlap) int {
		return strings.Compare(a.Metric+" "+a.Resource+" "+a.Ignored, b.Metric+" "+b.Resource+" "+b.Ignored)
	})
	for k, e := range idx.entries {
		idx.list = append(idx.list, provider.CustomMetricInfo{GroupResource: k.resource, Namespaced: e.namespaced, Metric: k.metric})
	}
	sort.Slice(idx.list, func(i, j int) bool {
		a, b := idx.list[i], idx.list[j]
		if a.Metric != b.Metric {
			return a.Metric < b.Metric
		}
		return a.GroupResource.String() < b.GroupResource.String()
	})
	return idx
}

type labelRes struct {
	gr         schema.GroupResource
	ok         bool
	namespaced bool
}

// isNamespaced reports whether gr is a namespaced resource the mapper
// knows.
func isNamespaced(gr schema.GroupResource, mapper apimeta.RESTMapper) bool {
	namespaced, known := rules.Scope(mapper, gr)
	return known && namespaced
}

func seriesShape(name string, ls model.LabelSet) string {
	names := make([]string, 0, len(ls))
	for ln := range ls {
		names = append(names, string(ln))
	}
	slices.Sort(names)
	return name + "{" + strings.Join(names, ",") + "}"
}

// add keeps the first entry for a key. Rules are processed in file order,
// so an earlier rule wins over a later one, as the config documents.
func (idx *index) add(k metricKey, e entry) {
	if prev, ok := idx.entries[k]; ok {
		if prev.rule != e.rule {
			ov := Overlap{Metric: k.metric, Resource: k.resource.String(),
				Kept: fmt.Sprintf("%s series %s", prev.rule, prev.series), Ignored: fmt.Sprintf("%s series %s", e.rule, e.series)}
			if !slices.Contains(idx.shadowed, ov) {
				idx.shadowed = append(idx.shadowed, ov)
			}
		}
		if prev.rule != e.rule || prev.series != e.series {
			klog.V(2).InfoS("Metric defined twice; keeping the first definition",
				"metric", k.metric, "resource", k.resource.String(),
				"kept", fmt.Sprintf("%s series %s", prev.rule, prev.series),
				"ignored", fmt.Sprintf("%s series %s", e.rule, e.series))
		}
		return
	}
	idx.entries[k] = e
}

// Update builds the index of served metrics from a discovery round. Rules
// whose seriesQuery has never been listed serve nothing yet; lookups of
// unknown metrics say so (503) instead of answering 404.
func (p *Provider) Update(r discovery.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.update(r)
}

// SetRules switches the provider to new rules (a reloaded config) with the
// discovery round of their series. Requests in flight finish with the
// rules they started with.
func (p *Provider) SetRules(rs []*rules.Rule, r discovery.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = rs
	p.update(r)
}

// update builds and swaps in the index; call it with p.mu held.
func (p *Provider) update(r discovery.Result) {
	idx := buildIndex(p.rules, r.Series, p.mapper, r.Time)
	idx.pending = r.Pending(p.rules)
	old := p.index.Swap(idx)
	if old == nil || len(old.list) != len(idx.list) {
		klog.InfoS("Discovered custom metrics", "count", len(idx.list), "metrics", summarize(idx.list))
	} else {
		klog.V(4).InfoS("Discovered custom metrics", "count", len(idx.list))
	}
	perRule := map[*rules.Rule]int{}
	for _, e := range idx.entries {
		perRule[e.rule]++
	}
	metrics.SetDiscoveredRules(metrics.CustomAPI, p.rules, r.Listed, perRule)
}

// Served is one metric the provider serves, and how.
type Served struct {
	Rule     string
	Series   string
	Metric   string
	Resource string
	// Namespaced is false for metrics of root-scoped objects.
	Namespaced bool
	// ViaPods is true for objects served through their pods
	// (resources.aggregateFromPods).
	ViaPods bool
}

// Overlap is a metric two rules define: the first in the file serves it.
type Overlap struct {
	Metric, Resource string
	Kept, Ignored    string
}

// Served lists the metrics of the last discovery round, by rule order,
// then metric and resource, and the definitions earlier rules won over.
func (p *Provider) Served() ([]Served, []Overlap) {
	idx := p.index.Load()
	if idx == nil {
		return nil, nil
	}
	order := map[*rules.Rule]int{}
	p.mu.Lock()
	for i, r := range p.rules {
		order[r] = i
	}
	p.mu.Unlock()
	out := make([]Served, 0, len(idx.entries))
	ranks := make(map[string]int, len(idx.entries))
	for k, e := range idx.entries {
		s := Served{Rule: e.rule.String(), Series: e.series, Metric: k.metric, Resource: k.resource.String(), Namespaced: e.namespaced, ViaPods: e.viaPods}
		ranks[s.Rule] = order[e.rule]
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Served) int {
		if c := ranks[a.Rule] - ranks[b.Rule]; c != 0 {
			return c
		}
		if c := strings.Compare(a.Metric, b.Metric); c != 0 {
			return c
		}
		return strings.Compare(a.Resource, b.Resource)
	})
	return out, slices.Clone(idx.shadowed)
}

func summarize(list []provider.CustomMetricInfo) string {
	const max = 20
	var b strings.Builder
	for i, m := range list {
		if i == max {
			fmt.Fprintf(&b, " and %d more", len(list)-max)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(m.GroupResource.String() + "/" + m.Metric)
	}
	return b.String()
}
