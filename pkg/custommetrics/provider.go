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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

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

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
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
	// mu guards rules and serialises index builds.
	mu            sync.Mutex
	rules         []*rules.Rule
	mapper        apimeta.RESTMapper
	prom          promclient.Querier
	resolver      ObjectResolver
	objectQueries int

	index atomic.Pointer[index]
	// selections collapses identical selector requests in flight.
	selections singleflight.Group
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

// resourceInfo is what the REST mapper says of a group-resource as a
// request names it: its normalised form, and the kind and API version its
// values describe.
type resourceInfo struct {
	gr               schema.GroupResource
	kind, apiVersion string
}

// resource maps a requested group-resource once per discovery round: the
// REST mapper's lookups walk every resource the cluster serves, too slow
// to repeat on every request.
func (p *Provider) resource(idx *index, gr schema.GroupResource) resourceInfo {
	if ri, ok := idx.resources.Load(gr); ok {
		return ri.(resourceInfo)
	}
	ri := resourceInfo{gr: gr}
	if gvr, err := p.mapper.ResourceFor(gr.WithVersion("")); err == nil {
		ri.gr = gvr.GroupResource()
	} else {
		klog.V(4).InfoS("Unknown resource in request", "resource", gr.String(), "err", err)
	}
	if gvk, err := p.mapper.KindFor(ri.gr.WithVersion("")); err == nil {
		ri.kind, ri.apiVersion = gvk.Kind, gvk.GroupVersion().String()
	}
	idx.resources.Store(gr, ri)
	return ri
}

// lookup normalises the request's group-resource and finds how to serve it.
func (p *Provider) lookup(info provider.CustomMetricInfo) (entry, provider.CustomMetricInfo, resourceInfo, error) {
	idx := p.index.Load()
	if idx == nil {
		return entry{}, info, resourceInfo{}, apierrors.NewServiceUnavailable("metric discovery has not completed yet")
	}
	ri := p.resource(idx, info.GroupResource)
	info.GroupResource = ri.gr
	e, ok := idx.entries[metricKey{info.GroupResource, info.Metric}]
	if !ok || e.namespaced != info.Namespaced {
		if idx.pending != nil {
			return entry{}, info, ri, apierrors.NewServiceUnavailable(fmt.Sprintf(
				"metric %s for %s is not known, and some rules could not list their series yet: %v", info.Metric, info.GroupResource, idx.pending))
		}
		return entry{}, info, ri, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	return e, info, ri, nil
}

// request is one API request, resolved: how its metric is served, the
// PromQL matchers of its metric selector, and what every value it answers
// with echoes. It is built once per request, so a list of 10,000 values
// shares one selector and one window.
type request struct {
	entry
	info provider.CustomMetricInfo
	// matchers are the metric selector's requirements as PromQL.
	matchers []promql.Matcher
	// selector is the metric selector echoed in each value; nil for none.
	selector         *metav1.LabelSelector
	kind, apiVersion string
}

// prepare finds how to serve the request and turns its metric selector
// into PromQL matchers.
func (p *Provider) prepare(ctx context.Context, info provider.CustomMetricInfo, metricSelector labels.Selector) (*request, error) {
	e, info, ri, err := p.lookup(info)
	if err != nil {
		return nil, err
	}
	ms, err := promql.FromSelector(metricSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	if t := explain.From(ctx); t != nil {
		t.Rule(e.rule.String(), e.series)
	}
	r := &request{entry: e, info: info, matchers: ms, kind: ri.kind, apiVersion: ri.apiVersion}
	if r.selector, err = echo(metricSelector); err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("metric label selector %q: %v", metricSelector, err))
	}
	return r, nil
}

// GetMetricByName implements provider.CustomMetricsProvider: the metric of
// one object.
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	r, err := p.prepare(ctx, info, metricSelector)
	if err != nil {
		return nil, err
	}
	metrics.ObserveResolved(r.info.GroupResource.String(), 1)
	if r.viaPods {
		return p.objectViaPods(ctx, r, name.Namespace, name.Name)
	}
	values, err := p.queryObjects(ctx, r, name.Namespace, []string{name.Name})
	if err != nil {
		return nil, err
	}
	if len(values) == 0 {
		return nil, provider.NewMetricNotFoundForError(r.info.GroupResource, r.info.Metric, name.Name)
	}
	return &values[0], nil
}

// GetMetricBySelector implements provider.CustomMetricsProvider: the metric
// of every object of a resource that selector matches.
//
// Identical requests in flight at the same time (the same namespace,
// selector, metric and metric selector: HPAs of several replicas, or of
// one workload, asking together) share one answer: one resolution, one
// query, one list of values, which every caller gets in a list of its own.
// Each caller still waits no longer than its own context allows.
func (p *Provider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	if explain.From(ctx) != nil {
		// Explained alone: a shared answer would record into another
		// caller's trace.
		items, err := p.bySelector(ctx, namespace, selector, info, metricSelector)
		if err != nil {
			return nil, err
		}
		return &custom_metrics.MetricValueList{Items: items}, nil
	}
	key := strings.Join([]string{namespace, selector.String(), info.String(), metricSelector.String()}, "\x00")
	ch := p.selections.DoChan(key, func() (any, error) {
		// The shared call must not die with the caller that started it:
		// it has a bound of its own, the API server's request timeout.
		shared, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedRequestTimeout)
		defer cancel()
		return p.bySelector(shared, namespace, selector, info, metricSelector)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return &custom_metrics.MetricValueList{Items: res.Val.([]custom_metrics.MetricValue)}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// sharedRequestTimeout bounds an answer shared by identical requests:
// the generic API server's default request timeout.
const sharedRequestTimeout = time.Minute

// bySelector answers GetMetricBySelector. The items it returns are shared
// by every caller of the same request: nobody may modify them.
func (p *Provider) bySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) ([]custom_metrics.MetricValue, error) {
	r, err := p.prepare(ctx, info, metricSelector)
	if err != nil {
		return nil, err
	}
	var names []string
	if r.info.GroupResource == rules.Pods {
		names, err = p.resolver.PodsMatching(ctx, namespace, selector)
	} else {
		names, err = p.resolver.ObjectsMatching(ctx, r.info.GroupResource, namespace, selector)
	}
	if err != nil {
		return nil, values.ResolveError(err, r.info.GroupResource.String())
	}
	metrics.ObserveResolved(r.info.GroupResource.String(), len(names))
	if t := explain.From(ctx); t != nil {
		t.Resolved(fmt.Sprintf("%s matching %q in namespace %s", r.info.GroupResource, selector.String(), namespace), names)
	}
	if len(names) == 0 {
		return []custom_metrics.MetricValue{}, nil
	}
	if !r.viaPods {
		return p.queryObjects(ctx, r, namespace, names)
	}

	// One query per object: each object's value is the rule's query over
	// that object's pods. The first hard error stops launching more.
	results := make([]*custom_metrics.MetricValue, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.objectQueries)
	for i, name := range names {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			v, err := p.objectViaPods(gctx, r, namespace, name)
			if apierrors.IsNotFound(err) {
				return nil // no pods, no data, or deleted meanwhile
			}
			results[i] = v
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	items := []custom_metrics.MetricValue{}
	for _, v := range results {
		if v != nil {
			items = append(items, *v)
		}
	}
	return items, nil
}

// queryObjects serves objects whose series carry a label with their name.
// It returns values for the requested objects that have data, in the order
// of names. A sample is mapped back to an object by the label values of
// the names asked for (labelValueReplacements are not undone: that could
// name an object that was never asked for). Several series for one object
// (a query that keeps labels it does not group by) are added up, as the
// rule's own sum would.
func (p *Provider) queryObjects(ctx context.Context, r *request, namespace string, names []string) ([]custom_metrics.MetricValue, error) {
	labelValues, byValue := r.rule.LabelValues(names)
	var matchers []promql.Matcher
	if r.namespaced {
		matchers = append(matchers, promql.Equals(r.namespaceLabel, r.rule.ToLabelValue(namespace)))
	}
	matchers = append(matchers, promql.OneOf(r.label, labelValues))
	matchers = append(matchers, r.matchers...)

	expr, vec, err := p.run(ctx, r, matchers, []string{r.label})
	if err != nil {
		return nil, err
	}
	type total struct {
		sum    float64
		ts     model.Time
		series int
	}
	totals := make([]total, len(names))
	for _, s := range vec {
		v, ok := s.Metric[model.LabelName(r.label)]
		if !ok {
			continue
		}
		i, asked := byValue[string(v)]
		switch {
		case !asked:
			continue // a series of an object nobody asked for
		case i < 0:
			klog.V(2).InfoS("Dropping a sample whose label value several requested objects share (labelValueReplacements)",
				"rule", r.rule.String(), "label", r.label, "value", string(v))
			continue
		}
		t := &totals[i]
		t.sum += float64(s.Value)
		t.ts = max(t.ts, s.Timestamp)
		t.series++
	}
	window := values.WindowSeconds(expr)
	out := make([]custom_metrics.MetricValue, 0, len(names))
	for i, n := range names {
		t := totals[i]
		if t.series == 0 {
			continue
		}
		if t.series > 1 {
			klog.V(2).InfoS("Query returned several series for an object; serving their sum", "rule", r.rule.String(), "object", n, "series", t.series)
		}
		q, ok := values.Quantity(t.sum)
		if !ok {
			klog.V(2).InfoS("Dropping a value that is not a finite number", "rule", r.rule.String(), "object", n, "value", t.sum)
			continue
		}
		out = append(out, r.value(namespace, n, t.ts, window, q))
	}
	return out, nil
}

// objectViaPods serves one object by querying its pods' series, grouped by
// namespace, so the rule's own aggregation (sum, avg, max...) applies
// across the object's pods. Series the query leaves apart are added up.
func (p *Provider) objectViaPods(ctx context.Context, r *request, namespace, name string) (*custom_metrics.MetricValue, error) {
	pods, err := p.resolver.PodsFor(ctx, r.info.GroupResource, namespace, name)
	if err != nil {
		return nil, values.ResolveError(err, r.info.GroupResource.String())
	}
	if t := explain.From(ctx); t != nil {
		t.Resolved(fmt.Sprintf("pods of %s %s", r.info.GroupResource, klog.KRef(namespace, name)), pods)
	}
	if len(pods) == 0 {
		klog.V(2).InfoS("Object has no pods", "resource", r.info.GroupResource.String(), "object", klog.KRef(namespace, name), "metric", r.info.Metric)
		return nil, notFoundBecause(r.info, name, "it selects no pods")
	}
	matchers := []promql.Matcher{
		promql.Equals(r.namespaceLabel, r.rule.ToLabelValue(namespace)),
		promql.OneOf(r.podLabel, podValues(r.rule, pods)),
	}
	matchers = append(matchers, r.matchers...)
	expr, vec, err := p.run(ctx, r, matchers, []string{r.namespaceLabel})
	if err != nil {
		return nil, err
	}
	var sum float64
	var ts model.Time
	n := 0
	nsValue := model.LabelValue(r.rule.ToLabelValue(namespace))
	for _, s := range vec {
		if v, ok := s.Metric[model.LabelName(r.namespaceLabel)]; ok && v != nsValue {
			// A pod of the same name in another namespace, from a
			// metricsQuery that does not match on the namespace.
			continue
		}
		v := float64(s.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			// One series left out would make the sum smaller, not
			// wrong-looking: no value rather than a partial one.
			klog.V(2).InfoS("A series of the object's pods is not a finite number", "rule", r.rule.String(), "object", klog.KRef(namespace, name), "series", s.Metric.String(), "value", s.Value)
			return nil, notFoundBecause(r.info, name, fmt.Sprintf("a series of its pods is %v", s.Value))
		}
		sum += v
		ts = max(ts, s.Timestamp)
		n++
	}
	if n == 0 {
		return nil, notFoundBecause(r.info, name, fmt.Sprintf("Prometheus has no data for its %d pods", len(pods)))
	}
	q, ok := values.Quantity(sum)
	if !ok {
		return nil, notFoundBecause(r.info, name, "the sum of its pods' values is not a finite number")
	}
	v := r.value(namespace, name, ts, values.WindowSeconds(expr), q)
	return &v, nil
}

// run renders the rule's query and runs it.
func (p *Provider) run(ctx context.Context, r *request, matchers []promql.Matcher, groupBy []string) (string, model.Vector, error) {
	expr, err := r.rule.Render(r.series, matchers, groupBy)
	if err != nil {
		return "", nil, apierrors.NewInternalError(err)
	}
	start := time.Now()
	vec, err := p.prom.Query(ctx, expr)
	metrics.ObserveQuery(metrics.CustomAPI, r.rule.String(), start, len(vec), err)
	if t := explain.From(ctx); t != nil {
		t.Queried(explain.Query{Rule: r.rule.String(), Expr: expr, Duration: time.Since(start), Vector: vec, Err: err})
	}
	if err != nil {
		return expr, nil, values.QueryError(err, fmt.Sprintf("metric %s for %s", r.info.Metric, r.info.GroupResource), r.rule.String())
	}
	klog.V(4).InfoS("Query done", "metric", r.info.Metric, "resource", r.info.GroupResource.String(),
		"series", len(vec), "duration", time.Since(start), "expr", expr)
	return expr, vec, nil
}

// value is the answer for one object.
func (r *request) value(namespace, name string, ts model.Time, window *int64, q resource.Quantity) custom_metrics.MetricValue {
	if r.info.GroupResource == rules.Namespaces {
		namespace = ""
	}
	return custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{
			Kind:       r.kind,
			APIVersion: r.apiVersion,
			Namespace:  namespace,
			Name:       name,
		},
		Metric:        custom_metrics.MetricIdentifier{Name: r.info.Metric, Selector: r.selector},
		Timestamp:     metav1.NewTime(ts.Time()),
		WindowSeconds: window,
		Value:         q,
	}
}

// echo turns the request's metric selector back into the API form each
// value carries (nil for none), with metav1.ParseToLabelSelector, which has
// no "!=": a != requirement is echoed as the notin of its one value, which
// selects the same.
func echo(sel labels.Selector) (*metav1.LabelSelector, error) {
	if sel == nil || sel.Empty() {
		return nil, nil
	}
	reqs, _ := sel.Requirements()
	out := labels.NewSelector()
	for _, r := range reqs {
		if r.Operator() == selection.NotEquals {
			notIn, err := labels.NewRequirement(r.Key(), selection.NotIn, r.ValuesUnsorted())
			if err != nil {
				return nil, err
			}
			r = *notIn
		}
		out = out.Add(r)
	}
	return metav1.ParseToLabelSelector(out.String())
}

// podValues applies the rule's labelValueReplacements to pod names.
func podValues(r *rules.Rule, pods []string) []string {
	out := make([]string, len(pods))
	for i, n := range pods {
		out[i] = r.ToLabelValue(n)
	}
	return out
}

// notFoundBecause is a 404 naming the metric, the object and why.
func notFoundBecause(info provider.CustomMetricInfo, name, why string) error {
	err := provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name)
	err.ErrStatus.Message += ": " + why
	return err
}
