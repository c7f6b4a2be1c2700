package custommetrics

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	"github.com/prometheus/common/model"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/catalog"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// metricKey identifies a served metric: a metric name on a group-resource.
type metricKey struct {
	resource schema.GroupResource
	metric   string
}

func compareKeys(a, b metricKey) int {
	return cmp.Or(strings.Compare(a.metric, b.metric), strings.Compare(a.resource.String(), b.resource.String()))
}

// entry is how one served metric is queried.
type entry struct {
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

func describe(k metricKey, e catalog.Entry[entry]) catalog.Served {
	s := catalog.Served{Source: e.Source, Metric: k.metric, Resource: k.resource.String()}
	switch {
	case e.Value.viaPods:
		s.Note = "through its pods"
	case !e.Value.namespaced:
		s.Note = "cluster-scoped"
	}
	return s
}

// indexer maps the series each rule discovered to served metrics, with the
// REST mapper for labels that name resources.
type indexer struct{ mapper apimeta.RESTMapper }

func (x indexer) build(rs []*rules.Rule, round discovery.Result, idx *catalog.Index[metricKey, entry]) {
	for _, r := range rs {
		sets := round.Series[r.Listing()]
		if ls, ok := r.Unlisted(); ok {
			// emptyIsZero: served before its first series.
			sets = append(slices.Clone(sets), ls)
		}
		x.buildRule(r, sets, idx)
	}
}

// buildRule adds the metrics of one rule's series.
func (x indexer) buildRule(r *rules.Rule, sets []model.LabelSet, idx *catalog.Index[metricKey, entry]) {
	labels := map[string]labelRes{}
	resolve := func(label string) labelRes {
		if lr, ok := labels[label]; ok {
			return lr
		}
		gr, ok := r.LabelResource(label, x.mapper)
		lr := labelRes{gr: gr, ok: ok, namespaced: ok && isNamespaced(gr, x.mapper)}
		labels[label] = lr
		return lr
	}
	// Series that differ only in label values add nothing: keep one per
	// name and label-name set.
	seen := map[string]bool{}
	for _, ls := range sets {
		name := rules.SeriesName(ls)
		if name == "" || seen[seriesShape(name, ls)] {
			continue
		}
		seen[seriesShape(name, ls)] = true
		metric, ok := r.MetricName(name)
		if !ok {
			continue
		}
		src := catalog.Source{Rule: r, Series: name}
		for gr, e := range seriesEntries(r, ls, resolve) {
			if !r.ServesIn(gr, e.namespaced) {
				continue // a team's rule serves its namespace's objects only
			}
			k := metricKey{gr, metric}
			if why := r.LeftOut(); why != nil {
				idx.Refuse(k, why)
				continue
			}
			idx.Add(k, catalog.Entry[entry]{Source: src, Value: e})
		}
	}
}

// seriesEntries maps the resources one series' labels name to how each is
// served: directly by its label, or through its pods.
func seriesEntries(r *rules.Rule, ls model.LabelSet, resolve func(string) labelRes) map[schema.GroupResource]entry {
	var nsLabel, podLabel string
	resources := map[schema.GroupResource]string{}
	scoped := map[schema.GroupResource]bool{}
	// In the order of their names, so that when two labels map to the
	// same resource (namespace and exported_namespace through a template),
	// every discovery round picks the same one.
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
	out := make(map[schema.GroupResource]entry, len(resources))
	for gr, label := range resources {
		out[gr] = entry{label: label, namespaceLabel: nsLabel, namespaced: nsLabel != "" && scoped[gr]}
	}
	if podLabel != "" && nsLabel != "" {
		for _, gr := range r.AggregateFromPods() {
			if _, direct := resources[gr]; !direct {
				out[gr] = entry{namespaced: true, namespaceLabel: nsLabel, podLabel: podLabel, viaPods: true}
			}
		}
	}
	return out
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
