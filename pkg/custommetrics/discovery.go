package custommetrics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

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
			for ln := range ls {
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

// isNamespaced reports whether gr is a namespaced resource.
func isNamespaced(gr schema.GroupResource, mapper apimeta.RESTMapper) bool {
	gvk, err := mapper.KindFor(gr.WithVersion(""))
	if err != nil {
		return false
	}
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return false
	}
	return m.Scope.Name() == apimeta.RESTScopeNameNamespace
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
		if prev.rule != e.rule || prev.series != e.series {
			klog.V(2).InfoS("Metric defined twice; keeping the first definition",
				"metric", k.metric, "resource", k.resource.String(),
				"kept", fmt.Sprintf("rules[%d] series %s", prev.rule.Index, prev.series),
				"ignored", fmt.Sprintf("rules[%d] series %s", e.rule.Index, e.series))
		}
		return
	}
	idx.entries[k] = e
}

// errNotDiscovered is returned for requests before the first discovery.
var errNotDiscovered = errors.New("metric discovery has not completed yet")

// relist lists the series of every distinct seriesQuery and swaps in the
// new index. On failure the previous index stays in use.
func (p *Provider) relist(ctx context.Context) error {
	now := p.clock.Now()
	start := now.Add(-p.maxAge)
	byQuery := map[string][]model.LabelSet{}
	var errs []error
	for _, r := range p.rules {
		q := r.SeriesQuery()
		if _, done := byQuery[q]; done {
			continue
		}
		sets, err := p.series.Series(ctx, []string{q}, start, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules[%d]: %w", r.Index, err))
			continue
		}
		byQuery[q] = sets
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	idx := buildIndex(p.rules, byQuery, p.mapper, now)
	old := p.index.Swap(idx)
	if old == nil || len(old.list) != len(idx.list) {
		klog.InfoS("Discovered metrics", "count", len(idx.list), "metrics", summarize(idx.list))
	} else {
		klog.V(4).InfoS("Discovered metrics", "count", len(idx.list))
	}
	return nil
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

// RunDiscovery lists metrics every relist interval until ctx is done.
// Until the first listing succeeds it retries sooner, backing off from one
// second up to the relist interval.
func (p *Provider) RunDiscovery(ctx context.Context) {
	backoff := time.Second
	for {
		delay := p.relistInterval
		if err := p.relist(ctx); err != nil {
			p.lastErr.Store(&err)
			klog.ErrorS(err, "Failed to discover metrics; keeping the previous list")
			if p.index.Load() == nil {
				delay = min(backoff, p.relistInterval)
				backoff *= 2
			}
		} else {
			p.lastErr.Store(nil)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// discoveryError explains why no index exists yet.
func (p *Provider) discoveryError() error {
	if e := p.lastErr.Load(); e != nil {
		return fmt.Errorf("%w: last attempt: %w", errNotDiscovered, *e)
	}
	return errNotDiscovered
}
