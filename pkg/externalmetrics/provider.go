// Package externalmetrics implements the external metrics API provider
// (sigs.k8s.io/custom-metrics-apiserver's ExternalMetricsProvider) over
// Prometheus, from the config's externalRules.
//
// An external metric names no Kubernetes object: a request is a metric name,
// the namespace of the HPA asking, and the HPA's metric.selector. The
// selector becomes label matchers (every value escaped; operators PromQL has
// no matcher for are a 400), the namespace becomes a matcher on the rule's
// namespace label unless the rule says resources.namespaced: false, and the
// rule's metricsQuery, rendered with them, runs as one instant query. Every
// series of the answer is one value, with its labels. .GroupBy is empty for
// external rules: the query's own by-clause decides which series come back.
//
// Discovery (package discovery) lists each rule's seriesQuery; the metric
// names come from the rule's name mapping, as for custom metrics.
package externalmetrics

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/external_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/values"
)

// Config holds a Provider's dependencies.
type Config struct {
	// Rules are the compiled externalRules.
	Rules   []*rules.Rule
	Querier promclient.Querier
}

// Provider serves external metrics from Prometheus.
type Provider struct {
	// mu guards rules and serialises index builds.
	mu    sync.Mutex
	rules []*rules.Rule
	prom  promclient.Querier
	index atomic.Pointer[index]
}

var _ provider.ExternalMetricsProvider = (*Provider)(nil)

// New returns a Provider. It serves nothing until Update hands it the
// first discovery round.
func New(cfg Config) *Provider {
	return &Provider{rules: cfg.Rules, prom: cfg.Querier}
}

// entry is how one external metric is queried.
type entry struct {
	rule   *rules.Rule
	series string
	// namespaceLabel is the label the request's namespace is matched on;
	// empty for rules with namespaced: false.
	namespaceLabel string
}

// index is one discovery result; immutable once built.
type index struct {
	metrics map[string]entry
	list    []provider.ExternalMetricInfo
	// pending names the rules whose series were never listed, and why.
	pending error
	// shadowed lists, for metrics two rules define, the ignored rule's
	// definition after the kept one's.
	shadowed [][2]string
}

// Update builds the list of external metrics from a discovery round.
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
	idx := &index{metrics: map[string]entry{}, pending: r.Pending(p.rules)}
	for _, rule := range p.rules {
		sets, listed := r.Series[rule.SeriesQuery()]
		if !listed {
			continue
		}
		var nsLabel string
		if rule.Namespaced() {
			// Validation refuses a namespaced rule without this label;
			// should one get here, it serves nothing rather than every
			// namespace's series.
			var ok bool
			if nsLabel, ok = rule.LabelFor("namespace"); !ok {
				klog.ErrorS(nil, "Not serving a namespaced external rule that names no namespace label", "rule", rule.String())
				continue
			}
		}
		for _, ls := range sets {
			series := rules.SeriesName(ls)
			if series == "" {
				continue
			}
			name, ok := rule.MetricName(series)
			if !ok {
				continue
			}
			if prev, dup := idx.metrics[name]; dup {
				ov := [2]string{fmt.Sprintf("%s series %s", prev.rule, prev.series), fmt.Sprintf("%s series %s", rule, series)}
				if prev.rule != rule && !slices.Contains(idx.shadowed, ov) {
					idx.shadowed = append(idx.shadowed, ov)
				}
				if prev.rule != rule || prev.series != series {
					klog.V(2).InfoS("External metric defined twice; keeping the first definition", "metric", name,
						"kept", fmt.Sprintf("%s series %s", prev.rule, prev.series),
						"ignored", fmt.Sprintf("%s series %s", rule, series))
				}
				continue
			}
			idx.metrics[name] = entry{rule: rule, series: series, namespaceLabel: nsLabel}
		}
	}
	for name := range idx.metrics {
		idx.list = append(idx.list, provider.ExternalMetricInfo{Metric: name})
	}
	sort.Slice(idx.list, func(i, j int) bool { return idx.list[i].Metric < idx.list[j].Metric })
	old := p.index.Swap(idx)
	if old == nil || len(old.list) != len(idx.list) {
		names := make([]string, 0, len(idx.list))
		for _, m := range idx.list {
			names = append(names, m.Metric)
		}
		klog.InfoS("Discovered external metrics", "count", len(idx.list), "metrics", strings.Join(names, ", "))
	}
	perRule := map[*rules.Rule]int{}
	for _, e := range idx.metrics {
		perRule[e.rule]++
	}
	metrics.SetDiscoveredRules(metrics.ExternalAPI, p.rules, r.Listed, perRule)
}

// Served maps each external metric of the last discovery round to the
// rule and series serving it ("externalRules[0] series x"), and lists the
// definitions earlier rules won over, each as kept and ignored.
func (p *Provider) Served() (map[string]string, [][2]string) {
	idx := p.index.Load()
	if idx == nil {
		return nil, nil
	}
	out := make(map[string]string, len(idx.metrics))
	for name, e := range idx.metrics {
		out[name] = fmt.Sprintf("%s series %s", e.rule, e.series)
	}
	return out, slices.Clone(idx.shadowed)
}

// ListAllExternalMetrics implements provider.ExternalMetricsProvider from
// the last discovery round; it never waits for Prometheus.
func (p *Provider) ListAllExternalMetrics() []provider.ExternalMetricInfo {
	idx := p.index.Load()
	if idx == nil {
		return nil
	}
	return slices.Clone(idx.list)
}

// externalMetrics names the API in errors.
var externalMetrics = schema.GroupResource{Group: external_metrics.GroupName, Resource: "externalmetrics"}

// GetExternalMetric implements provider.ExternalMetricsProvider.
func (p *Provider) GetExternalMetric(ctx context.Context, namespace string, metricSelector labels.Selector, info provider.ExternalMetricInfo) (*external_metrics.ExternalMetricValueList, error) {
	idx := p.index.Load()
	if idx == nil {
		return nil, apierrors.NewServiceUnavailable("metric discovery has not completed yet")
	}
	e, ok := idx.metrics[info.Metric]
	if !ok {
		if idx.pending != nil {
			return nil, apierrors.NewServiceUnavailable(fmt.Sprintf(
				"external metric %s is not known, and some externalRules could not list their series yet: %v", info.Metric, idx.pending))
		}
		err := apierrors.NewNotFound(externalMetrics, info.Metric)
		err.ErrStatus.Message = fmt.Sprintf("external metric %q is not served: no externalRules series is named so", info.Metric)
		return nil, err
	}
	trace := explain.From(ctx)
	trace.Rule(e.rule.String(), e.series)
	selMatchers, err := promql.FromSelector(metricSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	var matchers []promql.Matcher
	if e.namespaceLabel != "" {
		matchers = append(matchers, promql.Equals(e.namespaceLabel, e.rule.ToLabelValue(namespace)))
	}
	matchers = append(matchers, selMatchers...)
	expr, err := e.rule.Render(e.series, matchers, nil)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	start := time.Now()
	vec, err := p.prom.Query(ctx, expr)
	metrics.ObserveQuery(metrics.ExternalAPI, e.rule.String(), start, len(vec), err)
	trace.Queried(explain.Query{Rule: e.rule.String(), Expr: expr, Duration: time.Since(start), Vector: vec, Err: err})
	if err != nil {
		return nil, values.QueryError(err, "external metric "+info.Metric, e.rule.String())
	}
	klog.V(4).InfoS("Query done", "externalMetric", info.Metric, "namespace", namespace,
		"series", len(vec), "duration", time.Since(start), "expr", expr)

	window := values.WindowSeconds(expr)
	list := &external_metrics.ExternalMetricValueList{Items: make([]external_metrics.ExternalMetricValue, 0, len(vec))}
	for _, s := range vec {
		q, ok := values.Quantity(float64(s.Value))
		if !ok {
			// The HPA adds up every item: one left out would make its
			// total smaller, so the answer is no value at all.
			klog.V(2).InfoS("A series of an external metric is not a finite number", "externalMetric", info.Metric, "series", s.Metric.String(), "value", s.Value)
			err := apierrors.NewNotFound(externalMetrics, info.Metric)
			err.ErrStatus.Message = fmt.Sprintf("external metric %q: series %s is %v, which the API cannot carry; no value is served rather than a total without it", info.Metric, s.Metric, s.Value)
			return nil, err
		}
		lbls := make(map[string]string, len(s.Metric))
		for k, v := range s.Metric {
			if k != model.MetricNameLabel {
				lbls[string(k)] = string(v)
			}
		}
		list.Items = append(list.Items, external_metrics.ExternalMetricValue{
			MetricName:    info.Metric,
			MetricLabels:  lbls,
			Timestamp:     metav1.NewTime(s.Timestamp.Time()),
			WindowSeconds: window,
			Value:         q,
		})
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return labels.Set(list.Items[i].MetricLabels).String() < labels.Set(list.Items[j].MetricLabels).String()
	})
	return list, nil
}
