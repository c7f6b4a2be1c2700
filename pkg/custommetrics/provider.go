// Package custommetrics implements the custom metrics API provider
// (sigs.k8s.io/custom-metrics-apiserver's CustomMetricsProvider) over
// Prometheus.
//
// Discovery lists the series of each rule in the background and keeps an
// index of the metrics it can serve; ListAllMetrics reads that index and
// never waits for Prometheus. A request for a metric renders the rule's
// metricsQuery for the objects it names, resolved from informer caches,
// runs it as one instant query and maps the resulting samples back to
// objects. Objects whose series carry no label of their own (an Ingress, a
// Deployment) can be served through their pods (resources.aggregateFromPods).
//
// Errors reaching API callers are apimachinery StatusErrors: 404 for an
// unknown metric or an object without data, 400 for a metric selector with
// no PromQL equivalent, 503/504 when Prometheus fails or is too slow.
package custommetrics

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/values"
)

// ObjectResolver finds the objects a request names. *resolver.Resolver
// implements it from informer caches.
type ObjectResolver interface {
	// PodsMatching returns the sorted names of the pods in namespace that
	// sel matches.
	PodsMatching(ctx context.Context, namespace string, sel labels.Selector) ([]string, error)
	// ObjectsMatching returns the sorted names of the objects of gr in
	// namespace that sel matches.
	ObjectsMatching(ctx context.Context, gr schema.GroupResource, namespace string, sel labels.Selector) ([]string, error)
	// PodsFor returns the sorted names of the pods behind one object, or a
	// NotFound error when the object does not exist.
	PodsFor(ctx context.Context, gr schema.GroupResource, namespace, name string) ([]string, error)
}

// Config holds a Provider's dependencies.
type Config struct {
	Rules    []*rules.Rule
	Mapper   apimeta.RESTMapper
	Querier  promclient.Querier
	Resolver ObjectResolver
	// MaxConcurrentObjectQueries bounds the queries one selector request
	// over pod-resolved objects runs at once.
	MaxConcurrentObjectQueries int
}

// Provider serves custom metrics from Prometheus.
type Provider struct {
	rules         []*rules.Rule
	mapper        apimeta.RESTMapper
	prom          promclient.Querier
	resolver      ObjectResolver
	objectQueries int

	index atomic.Pointer[index]
}

var _ provider.CustomMetricsProvider = (*Provider)(nil)

// New returns a Provider. It serves nothing until Update hands it the
// first discovery round.
func New(cfg Config) *Provider {
	p := &Provider{
		rules:         cfg.Rules,
		mapper:        cfg.Mapper,
		prom:          cfg.Querier,
		resolver:      cfg.Resolver,
		objectQueries: cfg.MaxConcurrentObjectQueries,
	}
	if p.objectQueries <= 0 {
		p.objectQueries = 8
	}
	return p
}

// Discovered reports whether a discovery round has been received.
func (p *Provider) Discovered() bool { return p.index.Load() != nil }

// ListAllMetrics implements provider.CustomMetricsProvider. It returns the
// last discovered list and never blocks on Prometheus.
func (p *Provider) ListAllMetrics() []provider.CustomMetricInfo {
	idx := p.index.Load()
	if idx == nil {
		return nil
	}
	return slices.Clone(idx.list)
}

// lookup normalises the request's group-resource and finds how to serve it.
func (p *Provider) lookup(info provider.CustomMetricInfo) (entry, provider.CustomMetricInfo, error) {
	idx := p.index.Load()
	if idx == nil {
		return entry{}, info, apierrors.NewServiceUnavailable("metric discovery has not completed yet")
	}
	if normalized, _, err := info.Normalized(p.mapper); err == nil {
		info = normalized
	} else {
		klog.V(4).InfoS("Unknown resource in request", "resource", info.GroupResource.String(), "err", err)
	}
	e, ok := idx.entries[metricKey{info.GroupResource, info.Metric}]
	if !ok || e.namespaced != info.Namespaced {
		if idx.pending != nil {
			return entry{}, info, apierrors.NewServiceUnavailable(fmt.Sprintf(
				"metric %s for %s is not known, and some rules could not list their series yet: %v", info.Metric, info.GroupResource, idx.pending))
		}
		return entry{}, info, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	return e, info, nil
}

// prepare finds how to serve the request and turns its metric selector
// into PromQL matchers.
func (p *Provider) prepare(info provider.CustomMetricInfo, metricSelector labels.Selector) (entry, provider.CustomMetricInfo, []promql.Matcher, error) {
	e, info, err := p.lookup(info)
	if err != nil {
		return entry{}, info, nil, err
	}
	ms, err := promql.FromSelector(metricSelector)
	if err != nil {
		return entry{}, info, nil, apierrors.NewBadRequest(err.Error())
	}
	return e, info, ms, nil
}

// GetMetricByName implements provider.CustomMetricsProvider: the metric of
// one object.
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	e, info, metricMatchers, err := p.prepare(info, metricSelector)
	if err != nil {
		return nil, err
	}
	if e.viaPods {
		return p.objectViaPods(ctx, e, info, name.Namespace, name.Name, metricMatchers, metricSelector)
	}
	values, err := p.queryObjects(ctx, e, info, name.Namespace, []string{name.Name}, metricMatchers, metricSelector)
	if err != nil {
		return nil, err
	}
	if len(values) == 0 {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	return &values[0], nil
}

// GetMetricBySelector implements provider.CustomMetricsProvider: the metric
// of every object of a resource that selector matches.
func (p *Provider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	e, info, metricMatchers, err := p.prepare(info, metricSelector)
	if err != nil {
		return nil, err
	}
	var names []string
	if info.GroupResource == rules.Pods {
		names, err = p.resolver.PodsMatching(ctx, namespace, selector)
	} else {
		names, err = p.resolver.ObjectsMatching(ctx, info.GroupResource, namespace, selector)
	}
	if err != nil {
		return nil, values.ResolveError(err, info.GroupResource.String())
	}
	list := &custom_metrics.MetricValueList{Items: []custom_metrics.MetricValue{}}
	if len(names) == 0 {
		return list, nil
	}
	if !e.viaPods {
		list.Items, err = p.queryObjects(ctx, e, info, namespace, names, metricMatchers, metricSelector)
		if err != nil {
			return nil, err
		}
		return list, nil
	}

	// One query per object: each object's value is the rule's query over
	// that object's pods.
	results := make([]*custom_metrics.MetricValue, len(names))
	errs := make([]error, len(names))
	sem := make(chan struct{}, p.objectQueries)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i], errs[i] = p.objectViaPods(ctx, e, info, namespace, name, metricMatchers, metricSelector)
		}()
	}
	wg.Wait()
	for i, v := range results {
		if errs[i] != nil {
			if apierrors.IsNotFound(errs[i]) {
				continue // no pods, no data, or deleted meanwhile
			}
			return nil, errs[i]
		}
		list.Items = append(list.Items, *v)
	}
	return list, nil
}

// queryObjects serves objects whose series carry a label with their name.
// It returns values for the requested objects that have data, in the order
// of names.
func (p *Provider) queryObjects(ctx context.Context, e entry, info provider.CustomMetricInfo, namespace string, names []string, metricMatchers []promql.Matcher, metricSelector labels.Selector) ([]custom_metrics.MetricValue, error) {
	var matchers []promql.Matcher
	if e.namespaced {
		matchers = append(matchers, promql.Equals(e.namespaceLabel, e.rule.ToLabelValue(namespace)))
	}
	matchers = append(matchers, promql.OneOf(e.label, labelValues(e, names)))
	matchers = append(matchers, metricMatchers...)

	expr, vec, err := p.run(ctx, e, info, matchers, []string{e.label})
	if err != nil {
		return nil, err
	}
	byName := make(map[string]*model.Sample, len(vec))
	for _, s := range vec {
		v, ok := s.Metric[model.LabelName(e.label)]
		if !ok {
			continue
		}
		name := e.rule.FromLabelValue(string(v))
		if prev, dup := byName[name]; dup {
			klog.V(2).InfoS("Query returned more than one series for an object; using the first",
				"expr", expr, "object", name, "kept", prev.Metric.String(), "ignored", s.Metric.String())
			continue
		}
		byName[name] = s
	}
	window := values.WindowSeconds(expr)
	kind, apiVersion := p.kindFor(info.GroupResource)
	out := make([]custom_metrics.MetricValue, 0, len(names))
	for _, n := range names {
		s, ok := byName[n]
		if !ok {
			continue
		}
		q, ok := values.Quantity(float64(s.Value))
		if !ok {
			klog.V(2).InfoS("Dropping a sample that is not a finite number", "expr", expr, "object", n, "value", s.Value)
			continue
		}
		out = append(out, p.value(info, kind, apiVersion, namespace, n, s.Timestamp, window, q, metricSelector))
	}
	return out, nil
}

// objectViaPods serves one object by querying its pods' series, grouped by
// namespace, so the rule's own aggregation (sum, avg, max...) applies
// across the object's pods. Series the query leaves apart are added up.
func (p *Provider) objectViaPods(ctx context.Context, e entry, info provider.CustomMetricInfo, namespace, name string, metricMatchers []promql.Matcher, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	pods, err := p.resolver.PodsFor(ctx, info.GroupResource, namespace, name)
	if err != nil {
		return nil, values.ResolveError(err, info.GroupResource.String())
	}
	if len(pods) == 0 {
		klog.V(2).InfoS("Object has no pods", "resource", info.GroupResource.String(), "object", klog.KRef(namespace, name), "metric", info.Metric)
		return nil, notFoundBecause(info, name, "it selects no pods")
	}
	matchers := []promql.Matcher{
		promql.Equals(e.namespaceLabel, e.rule.ToLabelValue(namespace)),
		promql.OneOf(e.podLabel, labelValues(e, pods)),
	}
	matchers = append(matchers, metricMatchers...)
	expr, vec, err := p.run(ctx, e, info, matchers, []string{e.namespaceLabel})
	if err != nil {
		return nil, err
	}
	var sum float64
	var ts model.Time
	n := 0
	for _, s := range vec {
		v := float64(s.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			klog.V(2).InfoS("Dropping a sample that is not a finite number", "expr", expr, "object", klog.KRef(namespace, name), "value", s.Value)
			continue
		}
		sum += v
		ts = max(ts, s.Timestamp)
		n++
	}
	if n == 0 {
		return nil, notFoundBecause(info, name, fmt.Sprintf("Prometheus has no data for its %d pods", len(pods)))
	}
	q, ok := values.Quantity(sum)
	if !ok {
		return nil, notFoundBecause(info, name, "the sum of its pods' values is not a finite number")
	}
	kind, apiVersion := p.kindFor(info.GroupResource)
	v := p.value(info, kind, apiVersion, namespace, name, ts, values.WindowSeconds(expr), q, metricSelector)
	return &v, nil
}

// run renders the rule's query and runs it.
func (p *Provider) run(ctx context.Context, e entry, info provider.CustomMetricInfo, matchers []promql.Matcher, groupBy []string) (string, model.Vector, error) {
	expr, err := e.rule.Render(e.series, matchers, groupBy)
	if err != nil {
		return "", nil, apierrors.NewInternalError(err)
	}
	start := time.Now()
	vec, err := p.prom.Query(ctx, expr)
	if err != nil {
		return expr, nil, values.QueryError(err, fmt.Sprintf("metric %s for %s", info.Metric, info.GroupResource), e.rule.String())
	}
	klog.V(4).InfoS("Query done", "metric", info.Metric, "resource", info.GroupResource.String(),
		"series", len(vec), "duration", time.Since(start), "expr", expr)
	return expr, vec, nil
}

func (p *Provider) value(info provider.CustomMetricInfo, kind, apiVersion, namespace, name string, ts model.Time, window *int64, q resource.Quantity, metricSelector labels.Selector) custom_metrics.MetricValue {
	if info.GroupResource == rules.Namespaces {
		namespace = ""
	}
	return custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{
			Kind:       kind,
			APIVersion: apiVersion,
			Namespace:  namespace,
			Name:       name,
		},
		Metric:        custom_metrics.MetricIdentifier{Name: info.Metric, Selector: labelSelector(metricSelector)},
		Timestamp:     metav1.NewTime(ts.Time()),
		WindowSeconds: window,
		Value:         q,
	}
}

func (p *Provider) kindFor(gr schema.GroupResource) (kind, apiVersion string) {
	gvk, err := p.mapper.KindFor(gr.WithVersion(""))
	if err != nil {
		return "", ""
	}
	return gvk.Kind, gvk.GroupVersion().String()
}

// labelSelector turns the request's metric selector back into the API
// form echoed in each value. Operators without an API form (gt, lt) were
// already rejected by selectorMatchers.
func labelSelector(sel labels.Selector) *metav1.LabelSelector {
	if sel == nil || sel.Empty() {
		return nil
	}
	reqs, _ := sel.Requirements()
	ls := &metav1.LabelSelector{}
	for _, r := range reqs {
		values := r.ValuesUnsorted()
		slices.Sort(values)
		var op metav1.LabelSelectorOperator
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals:
			if ls.MatchLabels == nil {
				ls.MatchLabels = map[string]string{}
			}
			ls.MatchLabels[r.Key()] = values[0]
			continue
		case selection.NotEquals, selection.NotIn:
			op = metav1.LabelSelectorOpNotIn
		case selection.In:
			op = metav1.LabelSelectorOpIn
		case selection.Exists:
			op, values = metav1.LabelSelectorOpExists, nil
		case selection.DoesNotExist:
			op, values = metav1.LabelSelectorOpDoesNotExist, nil
		default:
			continue
		}
		ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{Key: r.Key(), Operator: op, Values: values})
	}
	return ls
}

// labelValues applies the rule's labelValueReplacements to object names.
func labelValues(e entry, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = e.rule.ToLabelValue(n)
	}
	return out
}

// notFoundBecause is a 404 naming the metric, the object and why.
func notFoundBecause(info provider.CustomMetricInfo, name, why string) error {
	err := provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name)
	err.ErrStatus.Message += ": " + why
	return err
}
