// Package custommetrics implements the custom metrics API provider
// (sigs.k8s.io/custom-metrics-apiserver's CustomMetricsProvider) over
// Prometheus: Provider, which resolves the objects a request names through
// an ObjectResolver (package resolver's informer caches).
//
// Discovery lists the series of each rule in the background and keeps an
// index of the metrics it can serve; ListAllMetrics reads that index and
// never waits for Prometheus. A request for a metric renders the rule's
// metricsQuery for the objects it names, resolved from informer caches,
// runs it as one instant query and maps the resulting samples back to
// objects. Objects whose series carry no label of their own (an Ingress, a
// Deployment) can be served through their pods (resources.aggregateFromPods).
//
// Errors reaching API callers are apimachinery StatusErrors (package
// apistatus): 404 for an unknown metric or an object without data, 400 for
// a metric selector with no PromQL equivalent, 503/504 when Prometheus
// fails or is too slow, or the request ends first.
package custommetrics

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"k8s.io/utils/clock"
	"k8s.io/utils/lru"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/catalog"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
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
	Rules   []*rules.Rule
	Mapper  apimeta.RESTMapper
	Querier promclient.Querier
	// Backends returns the querier of a store a rule names (nil: no
	// rule names one); Querier is the default store's.
	Backends func(name string) promclient.Querier
	// Tenant is the tenant of a namespace on a store with a tenant per
	// namespace (backends.Tenants.Of); nil when no store has tenants.
	Tenant   func(ctx context.Context, backend, ns string) (tenant string, has bool, err error)
	Resolver ObjectResolver
	// MaxConcurrentObjectQueries bounds the queries one selector request
	// over pod-resolved objects runs at once.
	MaxConcurrentObjectQueries int
	// Upstream lists what other metrics servers of the group serve
	// (package upstream), for discovery: listed after this adapter's own.
	Upstream func() []metav1.APIResource
	// Budgets bound the queries of each namespace's rule objects.
	Budgets *query.Budgets
	// Clock stamps the values emptyIsZero makes; the real clock if nil.
	Clock clock.PassiveClock
	// Sharing, when not nil, shares the queries of the rules file's rules
	// that compute each object's value from its own series across the
	// requests about one rule and namespace (its owner resets it when the
	// rules change).
	Sharing *query.Sharing
}

// Provider serves custom metrics from Prometheus.
type Provider struct {
	catalog       *catalog.Catalog[metricKey, entry]
	mapper        apimeta.RESTMapper
	stores        query.Stores
	resolver      ObjectResolver
	objectQueries int
	resources     *resourceMemo
	// selections collapses identical selector requests in flight.
	selections singleflight.Group
	upstream   func() []metav1.APIResource
	budgets    *query.Budgets
	clock      clock.PassiveClock
	// sharing shares queries across requests; nil when off.
	sharing *query.Sharing
}

var _ provider.CustomMetricsProvider = (*Provider)(nil)

// New returns a Provider. It serves nothing until Update hands it the
// first discovery round.
func New(cfg Config) *Provider {
	p := &Provider{
		mapper:        cfg.Mapper,
		stores:        query.Stores{Default: cfg.Querier, Named: cfg.Backends, Tenant: cfg.Tenant},
		resolver:      cfg.Resolver,
		objectQueries: cfg.MaxConcurrentObjectQueries,
		resources:     newResourceMemo(),
		upstream:      cfg.Upstream,
		budgets:       cfg.Budgets,
		clock:         cfg.Clock,
	}
	if p.clock == nil {
		p.clock = clock.RealClock{}
	}
	p.sharing = cfg.Sharing
	if p.objectQueries <= 0 {
		p.objectQueries = 8
	}
	p.catalog = catalog.New(catalog.Config[metricKey, entry]{
		API:      metrics.CustomAPI,
		Section:  "rules",
		Name:     func(k metricKey) string { return fmt.Sprintf("metric %s for %s", k.metric, k.resource) },
		Rules:    cfg.Rules,
		Build:    indexer{mapper: cfg.Mapper}.build,
		Compare:  compareKeys,
		Describe: describe,
		NotFound: func(k metricKey, why string) error {
			return apistatus.NotFound(provider.NewMetricNotFoundError(k.resource, k.metric), why)
		},
		TenantOf: cfg.Tenant,
	})
	return p
}

// Update builds the index of served metrics from a discovery round.
func (p *Provider) Update(r discovery.Result) {
	p.catalog.Update(r)
	p.resources.reset()
}

// SetRules switches the provider to new rules (a reloaded config) with the
// discovery round of their series. Requests in flight finish with the
// rules they started with.
func (p *Provider) SetRules(rs []*rules.Rule, r discovery.Result) {
	p.catalog.SetRules(rs, r)
	p.resources.reset()
}

// Discovered reports whether a discovery round has been received.
func (p *Provider) Discovered() bool { return p.catalog.Index() != nil }

// Served lists the metrics of the last discovery round and the
// definitions earlier rules won over (nil before the first round).
func (p *Provider) Served() ([]catalog.Served, []catalog.Overlap) { return p.catalog.Served() }

// Dropped is how many metrics each team's rule would serve past
// catalog.MaxTeamRuleMetrics.
func (p *Provider) Dropped() map[*rules.Rule]int { return p.catalog.Dropped() }

// Resources lists the group-resources the last discovery round serves.
func (p *Provider) Resources() []schema.GroupResource {
	idx := p.catalog.Index()
	if idx == nil {
		return nil
	}
	var out []schema.GroupResource
	seen := map[schema.GroupResource]bool{}
	for k := range idx.All() {
		if !seen[k.resource] {
			seen[k.resource] = true
			out = append(out, k.resource)
		}
	}
	return out
}

// ListAllMetrics implements provider.CustomMetricsProvider. It returns the
// last discovered list, then what upstreams serve that this adapter does
// not, and never blocks on Prometheus or an upstream.
func (p *Provider) ListAllMetrics() []provider.CustomMetricInfo {
	var out []provider.CustomMetricInfo
	if idx := p.catalog.Index(); idx != nil {
		out = make([]provider.CustomMetricInfo, 0, idx.Len())
		for k, e := range idx.All() {
			out = append(out, provider.CustomMetricInfo{GroupResource: k.resource, Namespaced: e.Value.namespaced, Metric: k.metric})
		}
	}
	if p.upstream == nil {
		return out
	}
	for _, r := range p.catalog.Upstreams(p.upstream(), parseKey) {
		k, _ := parseKey(r.Name)
		out = append(out, provider.CustomMetricInfo{GroupResource: k.resource, Namespaced: r.Namespaced, Metric: k.metric})
	}
	return out
}

// parseKey reads a metric as discovery names it: "pods/requests-per-second".
func parseKey(name string) (metricKey, bool) {
	resource, metric, ok := strings.Cut(name, "/")
	return metricKey{schema.ParseGroupResource(resource), metric}, ok
}

// Normalize is the group-resource a request's names, as the REST mapper
// writes it ("pod" is "pods").
func (p *Provider) Normalize(gr schema.GroupResource) schema.GroupResource {
	return p.resources.lookup(p.mapper, gr).gr
}

// Serves reports whether a request for metric on gr (normalised) in
// namespace ns is this adapter's to answer (catalog.Index.ServesIn): ns is
// the request's namespace, the named namespace for a namespace's own
// metric, "" for cluster-scoped objects.
func (p *Provider) Serves(gr schema.GroupResource, metric, ns string) bool {
	return p.catalog.Serves(metricKey{gr, metric}, ns)
}

// request is one API request, resolved: how its metric is served, the
// PromQL matchers of its metric selector, and what every value it answers
// with echoes. It is built once per request, so a list of 10,000 values
// shares one selector and one window.
type request struct {
	catalog.Entry[entry]
	info provider.CustomMetricInfo
	// matchers are the metric selector's requirements as PromQL.
	matchers []promql.Matcher
	// selector is the metric selector echoed in each value; nil for none.
	selector *metav1.LabelSelector
	resourceInfo
	// budgets bound the queries of rule objects (a team's rules).
	budgets *query.Budgets
}

// what names the request's metric in errors.
func what(info provider.CustomMetricInfo) string {
	return fmt.Sprintf("metric %s for %s", info.Metric, info.GroupResource)
}

// prepare finds how to serve the request, whose objects are in namespace
// ns ("" for none), and turns its metric selector into PromQL matchers.
func (p *Provider) prepare(ctx context.Context, ns string, info provider.CustomMetricInfo, metricSelector labels.Selector) (*request, error) {
	ri := p.resources.lookup(p.mapper, info.GroupResource)
	info.GroupResource = ri.gr
	e, err := p.catalog.Lookup(ctx, metricKey{info.GroupResource, info.Metric}, ns, func(e catalog.Entry[entry]) error {
		if e.Value.namespaced != info.Namespaced {
			return provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ms, err := promql.FromSelector(metricSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	r := &request{Entry: e, info: info, matchers: ms, resourceInfo: ri, budgets: p.budgets}
	if r.selector, err = echo(metricSelector); err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("metric label selector %q: %v", metricSelector, err))
	}
	return r, nil
}

// GetMetricByName implements provider.CustomMetricsProvider: the metric of
// one object.
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	v, err := p.byName(ctx, name, info, metricSelector)
	if err != nil {
		return nil, apistatus.Of(err, what(info))
	}
	return v, nil
}

func (p *Provider) byName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	ns := name.Namespace
	if p.Normalize(info.GroupResource) == rules.Namespaces {
		if name.Namespace != "" {
			// namespaces/NAME asked inside another namespace: no such
			// object, and nothing of NAME's rules is looked at.
			return nil, provider.NewMetricNotFoundForError(rules.Namespaces, info.Metric, name.Name)
		}
		ns = name.Name // a namespace's own metric: its team's rules serve it
	}
	r, err := p.prepare(ctx, ns, info, metricSelector)
	if err != nil {
		return nil, err
	}
	metrics.ObserveResolved(r.info.GroupResource.String(), 1)
	if r.Value.viaPods {
		return p.objectViaPods(ctx, r, name.Namespace, name.Name)
	}
	if r.Rule.EmptyIsZero() {
		// A 0 for want of series must be for an object that exists: a
		// typo in an HPA's object name is a 404, not a 0.
		if err := p.mustExist(ctx, r.info, name); err != nil {
			return nil, err
		}
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

// mustExist is a 404 for an object the caches do not hold.
func (p *Provider) mustExist(ctx context.Context, info provider.CustomMetricInfo, name types.NamespacedName) error {
	names, err := p.resolver.ObjectsMatching(ctx, info.GroupResource, name.Namespace, labels.Everything())
	if err != nil {
		return apistatus.Resolve(err, info.GroupResource.String())
	}
	if !slices.Contains(names, name.Name) {
		return notFoundBecause(info, name.Name, "no such object")
	}
	return nil
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
	items, err := p.shared(ctx, namespace, selector, info, metricSelector)
	if err != nil {
		return nil, apistatus.Of(err, what(info))
	}
	return &custom_metrics.MetricValueList{Items: items}, nil
}

// shared answers a selector request, sharing the answer with identical
// requests in flight.
func (p *Provider) shared(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) ([]custom_metrics.MetricValue, error) {
	if trace.From(ctx) != nil {
		// Explained alone: a shared answer would record into another
		// caller's trace.
		return p.bySelector(ctx, namespace, selector, info, metricSelector)
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
		return res.Val.([]custom_metrics.MetricValue), nil
	case <-ctx.Done():
		return nil, apistatus.Ended(ctx.Err(), "waiting for the answer it shares with identical requests")
	}
}

// sharedRequestTimeout bounds an answer shared by identical requests:
// the generic API server's default request timeout.
const sharedRequestTimeout = time.Minute

// bySelector answers GetMetricBySelector. The items it returns are shared
// by every caller of the same request: nobody may modify them.
func (p *Provider) bySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) ([]custom_metrics.MetricValue, error) {
	r, err := p.prepare(ctx, namespace, info, metricSelector)
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
		return nil, apistatus.Resolve(err, r.info.GroupResource.String())
	}
	metrics.ObserveResolved(r.info.GroupResource.String(), len(names))
	trace.From(ctx).Resolved(fmt.Sprintf("%s matching %q in namespace %s", r.info.GroupResource, selector.String(), namespace), names)
	switch {
	case len(names) == 0:
		return []custom_metrics.MetricValue{}, nil
	case !r.Value.viaPods:
		return p.queryObjects(ctx, r, namespace, names)
	default:
		return p.eachViaPods(ctx, r, namespace, names)
	}
}

// eachViaPods serves objects through their pods, one query per object:
// each object's value is the rule's query over that object's pods. The
// first hard error stops launching more.
func (p *Provider) eachViaPods(ctx context.Context, r *request, namespace string, names []string) ([]custom_metrics.MetricValue, error) {
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
		return nil, apistatus.Ended(err, "querying the objects' pods")
	}
	items := []custom_metrics.MetricValue{}
	for _, v := range results {
		if v != nil {
			items = append(items, *v)
		}
	}
	return items, nil
}

// resourceInfo is what the REST mapper says of a group-resource as a
// request names it: its normalised form, and the kind and API version its
// values describe.
type resourceInfo struct {
	gr               schema.GroupResource
	kind, apiVersion string
}

// resourceMemo remembers the REST mapper's answers for requested
// group-resources until the next discovery round: its lookups walk every
// resource the cluster serves, too slow to repeat on every request. Only
// resources the mapper knows are remembered, the maxRemembered most
// recently asked (an LRU), so a client naming made-up resources cannot
// grow it.
type resourceMemo struct {
	lru *lru.Cache // schema.GroupResource -> resourceInfo
}

// maxRemembered bounds the memo: a cluster's resources, each under a few
// spellings (singular, plural), fit many times over.
const maxRemembered = 1024

func newResourceMemo() *resourceMemo { return &resourceMemo{lru: lru.New(maxRemembered)} }

func (m *resourceMemo) reset() { m.lru.Clear() }

func (m *resourceMemo) lookup(mapper apimeta.RESTMapper, gr schema.GroupResource) resourceInfo {
	if ri, ok := m.lru.Get(gr); ok {
		return ri.(resourceInfo)
	}
	ri := resourceInfo{gr: gr}
	gvr, err := mapper.ResourceFor(gr.WithVersion(""))
	if err != nil {
		klog.V(4).InfoS("Unknown resource in request", "resource", gr.String(), "err", err)
		return ri
	}
	ri.gr = gvr.GroupResource()
	if gvk, err := mapper.KindFor(ri.gr.WithVersion("")); err == nil {
		ri.kind, ri.apiVersion = gvk.Kind, gvk.GroupVersion().String()
	}
	m.lru.Add(gr, ri)
	return ri
}
