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

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/external_metrics"
	"k8s.io/utils/clock"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/catalog"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/values"
)

// Config holds a Provider's dependencies.
type Config struct {
	// Rules are the compiled externalRules.
	Rules   []*rules.Rule
	Querier promclient.Querier
	// Backends returns the querier of a store a rule names (nil: no
	// rule names one); Querier is the default store's.
	Backends func(name string) promclient.Querier
	// Tenant is the tenant of a namespace on a store with a tenant per
	// namespace (backends.Tenants.Of); nil when no store has tenants.
	Tenant func(ctx context.Context, backend, ns string) (tenant string, has bool, err error)
	// Upstream lists what other metrics servers of the group serve
	// (package upstream), for discovery: listed after this adapter's own.
	Upstream func() []metav1.APIResource
	// Budgets bound the queries of each namespace's rule objects.
	Budgets *query.Budgets
	// Clock stamps the values emptyIsZero makes; the real clock if nil.
	Clock clock.PassiveClock
	// Sharing, when not nil, shares the queries of the rules file's rules
	// across the requests about one rule and namespace whose metric
	// selectors name one object each (app=NAME).
	Sharing *query.Sharing
}

// Provider serves external metrics from Prometheus.
type Provider struct {
	*catalog.Catalog[string, entry]
	stores   query.Stores
	upstream func() []metav1.APIResource
	budgets  *query.Budgets
	clock    clock.PassiveClock
	sharing  *query.Sharing
}

var _ provider.ExternalMetricsProvider = (*Provider)(nil)

// New returns a Provider. It serves nothing until Update hands it the
// first discovery round.
func New(cfg Config) *Provider {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Provider{
		stores:   query.Stores{Default: cfg.Querier, Named: cfg.Backends, Tenant: cfg.Tenant},
		upstream: cfg.Upstream,
		budgets:  cfg.Budgets,
		clock:    cfg.Clock,
		sharing:  cfg.Sharing,
		Catalog: catalog.New(catalog.Config[string, entry]{
			API:     metrics.ExternalAPI,
			Section: "externalRules",
			Name:    func(name string) string { return "external metric " + name },
			Rules:   cfg.Rules,
			Build:   build,
			Compare: strings.Compare,
			Describe: func(name string, e catalog.Entry[entry]) catalog.Served {
				return catalog.Served{Source: e.Source, Metric: name}
			},
			NotFound: notFound,
			TenantOf: cfg.Tenant,
		}),
	}
}

// entry is how one external metric is queried: the label the request's
// namespace is matched on, empty for rules with namespaced: false.
type entry struct {
	namespaceLabel string
}

// build maps the series each rule discovered to external metric names.
func build(rs []*rules.Rule, round discovery.Result, idx *catalog.Index[string, entry]) {
	for _, rule := range rs {
		sets, listed := round.Series[rule.Listing()]
		if ls, ok := rule.Unlisted(); ok {
			// emptyIsZero: served before its first series.
			sets, listed = append(slices.Clone(sets), ls), true
		}
		if !listed {
			continue
		}
		var e entry
		leftOut := rule.LeftOut()
		if leftOut == nil && rule.Namespaced() {
			// Compilation leaves out a namespaced rule without this label
			// (LeftOut); should one get here, it serves nothing rather
			// than every namespace's series.
			var ok bool
			if e.namespaceLabel, ok = rule.LabelFor("namespace"); !ok {
				leftOut = fmt.Errorf("%s is left out: it is namespaced and no label maps to namespaces", rule)
			}
		}
		for _, ls := range sets {
			series := rules.SeriesName(ls)
			name, ok := rule.MetricName(series)
			if series == "" || !ok {
				continue
			}
			if leftOut != nil {
				idx.Refuse(name, leftOut)
				continue
			}
			idx.Add(name, catalog.Entry[entry]{Source: catalog.Source{Rule: rule, Series: series}, Value: e})
		}
	}
}

// ListAllExternalMetrics implements provider.ExternalMetricsProvider from
// the last discovery round, then what upstreams serve that this adapter
// does not; it never waits for Prometheus or an upstream.
func (p *Provider) ListAllExternalMetrics() []provider.ExternalMetricInfo {
	var out []provider.ExternalMetricInfo
	if idx := p.Index(); idx != nil {
		out = make([]provider.ExternalMetricInfo, 0, idx.Len())
		for name := range idx.All() {
			out = append(out, provider.ExternalMetricInfo{Metric: name})
		}
	}
	if p.upstream == nil {
		return out
	}
	for _, r := range p.Upstreams(p.upstream(), func(name string) (string, bool) { return name, true }) {
		out = append(out, provider.ExternalMetricInfo{Metric: r.Name})
	}
	return out
}

// externalMetrics names the API in errors.
var externalMetrics = schema.GroupResource{Group: external_metrics.GroupName, Resource: "externalmetrics"}

func notFound(name, why string) error {
	if why == "" {
		why = "no externalRules series is named so"
	}
	return apistatus.NotFound(apierrors.NewNotFound(externalMetrics, name), why)
}

// GetExternalMetric implements provider.ExternalMetricsProvider.
func (p *Provider) GetExternalMetric(ctx context.Context, namespace string, metricSelector labels.Selector, info provider.ExternalMetricInfo) (*external_metrics.ExternalMetricValueList, error) {
	list, err := p.get(ctx, namespace, metricSelector, info.Metric)
	if err != nil {
		return nil, apistatus.Of(err, "external metric "+info.Metric)
	}
	return list, nil
}

func (p *Provider) get(ctx context.Context, namespace string, metricSelector labels.Selector, name string) (*external_metrics.ExternalMetricValueList, error) {
	e, err := p.Lookup(ctx, name, namespace, nil)
	if err != nil {
		return nil, err
	}
	selMatchers, err := promql.FromSelector(metricSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	var matchers []promql.Matcher
	if e.Value.namespaceLabel != "" {
		matchers = append(matchers, promql.Equals(e.Value.namespaceLabel, e.Rule.ToLabelValue(namespace)))
	}
	matchers = append(matchers, selMatchers...)
	q := query.Of(metrics.ExternalAPI, e.Rule, e.Series, matchers, nil, p.budgets, func() string { return "external metric " + name }).In(namespace)
	res, err := p.run(ctx, e, namespace, name, selMatchers, q)
	if err != nil {
		return nil, err
	}
	if len(res.Vector) == 0 && q.EmptyIsZero {
		// No series: the rule says that means 0 (an idle queue, no
		// traffic at zero replicas). An empty list would fail the HPA.
		query.Zeroed(ctx, q, 1)
		return &external_metrics.ExternalMetricValueList{Items: []external_metrics.ExternalMetricValue{{
			MetricName: name, MetricLabels: map[string]string{}, Timestamp: metav1.NewTime(p.clock.Now()), WindowSeconds: e.Rule.WindowSeconds(),
		}}}, nil
	}
	return externalValues(name, res, e.Rule.WindowSeconds())
}

// run runs q, the query of rule e for a metric selector of matchers sel
// in namespace: shared with the requests about the same rule and
// namespace whose selectors name another object by the same label, when
// queries are shared, the selector is one label=value and the rule can
// share (its query, grouped by that label, answers each object as its own
// query does: promql.GroupByObjects, promql.PerObject), else alone.
func (p *Provider) run(ctx context.Context, e catalog.Entry[entry], namespace, name string, sel []promql.Matcher, q query.Query) (query.Result, error) {
	if p.sharing == nil || e.Rule.Namespace() != "" || len(sel) != 1 || sel[0].Op != promql.Equal {
		return query.Run(ctx, p.stores, q)
	}
	label, value := sel[0].Name, sel[0].Value
	if label == e.Value.namespaceLabel {
		return query.Run(ctx, p.stores, q)
	}
	shape := query.Shape{
		Key:   fmt.Sprintf("%p\x00%s\x00%s\x00%s", e.Rule, e.Series, namespace, label),
		Rule:  e.Rule.String(),
		Label: label,
		Query: func(values []string) query.Many {
			return query.Many{N: len(values), Query: func(ids []int) query.Query {
				var ms []promql.Matcher
				if e.Value.namespaceLabel != "" {
					ms = append(ms, promql.Equals(e.Value.namespaceLabel, e.Rule.ToLabelValue(namespace)))
				}
				ms = append(ms, promql.OneOf(label, query.Pick(values, ids)))
				sq := query.Of(metrics.ExternalAPI, e.Rule, e.Series, ms, nil, p.budgets, func() string { return "external metric " + name }).In(namespace)
				render := sq.Render
				sq.Render = func() (string, error) {
					expr, err := render()
					if err != nil {
						return "", err
					}
					expr, _, err = promql.GroupByObjects(expr, label)
					return expr, err
				}
				return sq
			}}
		},
	}
	s, ok, err := p.sharing.Answer(ctx, shape, []string{value})
	if err != nil || !ok {
		if err == nil {
			return query.Run(ctx, p.stores, q)
		}
		return query.Result{}, err
	}
	// The shared query groups by label; where the request's own query
	// does not, its answer has no such label.
	expr, err := q.Render()
	if err != nil {
		return query.Result{}, err
	}
	if _, keeps, err := promql.GroupByObjects(expr, label); err == nil && !keeps {
		vec := make(model.Vector, 0, len(s.Vector))
		for _, smp := range s.Vector {
			m := smp.Metric.Clone()
			delete(m, model.LabelName(label))
			vec = append(vec, &model.Sample{Metric: m, Value: smp.Value, Timestamp: smp.Timestamp})
		}
		s.Vector = vec
	}
	return s.Result, nil
}

// externalValues is one value per series, with its labels, sorted by
// them, each over the rule's window.
func externalValues(name string, res query.Result, window *int64) (*external_metrics.ExternalMetricValueList, error) {
	list := &external_metrics.ExternalMetricValueList{Items: make([]external_metrics.ExternalMetricValue, 0, len(res.Vector))}
	for _, s := range res.Vector {
		q, ok := values.Quantity(float64(s.Value))
		if !ok {
			// The HPA adds up every item: one left out would make its
			// total smaller, so the answer is no value at all.
			klog.V(2).InfoS("A series of an external metric is not a finite number", "externalMetric", name, "series", s.Metric.String(), "value", s.Value)
			return nil, apistatus.NotFound(apierrors.NewNotFound(externalMetrics, name),
				fmt.Sprintf("series %s is %v, which the API cannot carry; no value is served rather than a total without it", s.Metric, s.Value))
		}
		lbls := make(map[string]string, len(s.Metric))
		for k, v := range s.Metric {
			if k != model.MetricNameLabel {
				lbls[string(k)] = string(v)
			}
		}
		list.Items = append(list.Items, external_metrics.ExternalMetricValue{
			MetricName:    name,
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
