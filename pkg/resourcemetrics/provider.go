// Package resourcemetrics serves the resource metrics API
// (metrics.k8s.io/v1beta1: PodMetrics and NodeMetrics) from Prometheus, so
// `kubectl top` and HPAs with Resource metrics (CPU utilization, memory
// average value) work without metrics-server: a Provider, which lists the
// running pods and the nodes through an ObjectLister (package resolver).
//
// The config's resourceRules say how: for a request the pods (or nodes) are
// resolved from informer caches, each resource's containerQuery (or
// nodeQuery) is rendered for them and run as one instant query, and the
// samples are mapped back to containers by the rule's pod, namespace and
// container labels. A pod is served only when every container Prometheus
// reports for it has both a CPU and a memory value, so a half-scraped pod is
// missing rather than reported low.
//
// The API types are k8s.io/metrics', served with this package's own REST
// storage (metrics-server's pkg/api has no context on its getters, so a
// request could neither be cancelled nor bounded, and every error became a
// 500).
package resourcemetrics

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync/atomic"

	"github.com/prometheus/common/model"
	"golang.org/x/sync/errgroup"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/metrics"
	"k8s.io/utils/clock"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/apistatus"
	adaptermetrics "github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
)

// ObjectLister finds pods and nodes; *resolver.Resolver implements it from
// informer caches.
type ObjectLister interface {
	// Metadata returns the objects a watch holds in namespace that sel
	// matches, sorted by namespace and name.
	Metadata(ctx context.Context, w resolver.Watch, namespace string, sel labels.Selector) ([]*metav1.PartialObjectMetadata, error)
	// GetMetadata returns one object, or a NotFound error.
	GetMetadata(ctx context.Context, w resolver.Watch, namespace, name string) (*metav1.PartialObjectMetadata, error)
}

// Config holds a Provider's dependencies.
type Config struct {
	// Rules are the compiled resourceRules; nil answers every request 503
	// naming the missing section.
	Rules   *rules.ResourceRules
	Querier promclient.Querier
	// Backends returns the querier of a store a rule names (nil: no
	// rule names one); Querier is the default store's.
	Backends func(name string) promclient.Querier
	// Tenant is the tenant of a namespace on a store with a tenant per
	// namespace (backends.Tenants.Of); nil when no store has tenants.
	Tenant  func(ctx context.Context, backend, ns string) (tenant string, has bool, err error)
	Objects ObjectLister
	Clock   clock.PassiveClock
}

// Provider reads pod and node usage from Prometheus.
type Provider struct {
	rules   atomic.Pointer[rules.ResourceRules]
	stores  query.Stores
	objects ObjectLister
	clock   clock.PassiveClock
}

// New returns a Provider.
func New(cfg Config) *Provider {
	p := &Provider{stores: query.Stores{Default: cfg.Querier, Named: cfg.Backends, Tenant: cfg.Tenant}, objects: cfg.Objects, clock: cfg.Clock}
	p.rules.Store(cfg.Rules)
	if p.clock == nil {
		p.clock = clock.RealClock{}
	}
	return p
}

// SetRules switches to new resourceRules (a reloaded config); nil answers
// every request 503. Requests in flight finish with the rules they
// started with.
func (p *Provider) SetRules(rs *rules.ResourceRules) { p.rules.Store(rs) }

// ListPods is the usage of the running pods of namespace ("" for all) that
// sel matches, as GET pods.metrics.k8s.io answers it.
func (p *Provider) ListPods(ctx context.Context, namespace string, sel labels.Selector) ([]metrics.PodMetrics, error) {
	return p.listPods(ctx, namespace, sel, fields.Everything())
}

func (p *Provider) listPods(ctx context.Context, namespace string, sel labels.Selector, fieldSel fields.Selector) ([]metrics.PodMetrics, error) {
	pods, err := p.objects.Metadata(ctx, resolver.RunningPods, namespace, sel)
	if err != nil {
		return nil, apistatus.Resolve(err, "pods")
	}
	pods = filterFields(pods, fieldSel)
	trace.From(ctx).Resolved(fmt.Sprintf("running pods matching %q in namespace %q", sel.String(), namespace), names(pods))
	items, err := p.PodMetrics(ctx, pods)
	return items, apistatus.Of(err, "the usage of pods")
}

// GetPod is the usage of one running pod; NotFound when it is not running
// or Prometheus has no complete data for it.
func (p *Provider) GetPod(ctx context.Context, namespace, name string) (*metrics.PodMetrics, error) {
	gr := metrics.Resource("pods")
	pod, err := p.objects.GetMetadata(ctx, resolver.RunningPods, namespace, name)
	if apierrors.IsNotFound(err) {
		return nil, apistatus.NotFound(apierrors.NewNotFound(gr, name), "no running pod has that name")
	}
	if err != nil {
		return nil, apistatus.Resolve(err, "pods")
	}
	trace.From(ctx).Resolved("running pod "+namespace+"/"+name, []string{name})
	items, err := p.PodMetrics(ctx, []*metav1.PartialObjectMetadata{pod})
	if err != nil {
		return nil, apistatus.Of(err, "the usage of pod "+name)
	}
	if len(items) == 0 {
		return nil, apistatus.NotFound(apierrors.NewNotFound(gr, name), "Prometheus has no complete CPU and memory data for it")
	}
	return &items[0], nil
}

// ListNodes is the usage of the nodes sel matches.
func (p *Provider) ListNodes(ctx context.Context, sel labels.Selector) ([]metrics.NodeMetrics, error) {
	return p.listNodes(ctx, sel, fields.Everything())
}

func (p *Provider) listNodes(ctx context.Context, sel labels.Selector, fieldSel fields.Selector) ([]metrics.NodeMetrics, error) {
	nodes, err := p.objects.Metadata(ctx, resolver.Nodes, "", sel)
	if err != nil {
		return nil, apistatus.Resolve(err, "nodes")
	}
	nodes = filterFields(nodes, fieldSel)
	trace.From(ctx).Resolved(fmt.Sprintf("nodes matching %q", sel.String()), names(nodes))
	items, err := p.NodeMetrics(ctx, nodes)
	return items, apistatus.Of(err, "the usage of nodes")
}

// GetNode is the usage of one node.
func (p *Provider) GetNode(ctx context.Context, name string) (*metrics.NodeMetrics, error) {
	gr := metrics.Resource("nodes")
	node, err := p.objects.GetMetadata(ctx, resolver.Nodes, "", name)
	if apierrors.IsNotFound(err) {
		return nil, apierrors.NewNotFound(gr, name)
	}
	if err != nil {
		return nil, apistatus.Resolve(err, "nodes")
	}
	trace.From(ctx).Resolved("node "+name, []string{name})
	items, err := p.NodeMetrics(ctx, []*metav1.PartialObjectMetadata{node})
	if err != nil {
		return nil, apistatus.Of(err, "the usage of node "+name)
	}
	if len(items) == 0 {
		return nil, apistatus.NotFound(apierrors.NewNotFound(gr, name), "Prometheus has no CPU and memory data for it")
	}
	return &items[0], nil
}

func names(objs []*metav1.PartialObjectMetadata) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.Name
	}
	return out
}

var errNoRules = apierrors.NewServiceUnavailable("the adapter's config has no resourceRules, so it serves no resource metrics: add them (see docs/config.md) or remove the v1beta1.metrics.k8s.io APIService")

// usage is one resource's value for a container or a node.
type usage struct {
	value float64
	ts    model.Time
}

// containerKey identifies a container in query results.
type containerKey struct{ namespace, pod, container string }

// PodMetrics returns the usage of the given pods. Pods without complete
// data are left out.
func (p *Provider) PodMetrics(ctx context.Context, pods []*metav1.PartialObjectMetadata) ([]metrics.PodMetrics, error) {
	rs := p.rules.Load()
	if rs == nil {
		return nil, errNoRules
	}
	if len(pods) == 0 {
		return nil, nil
	}
	trace.From(ctx).Rule("resourceRules (cpu and memory)", "")
	cpu, mem, err := both(ctx, rs, func(ctx context.Context, q *rules.ResourceQuery) (map[containerKey]usage, error) {
		return p.containers(ctx, q, pods)
	})
	if err != nil {
		return nil, err
	}
	byPod := map[podKey][]string{}
	for k := range cpu {
		byPod[podKey{k.namespace, k.pod}] = append(byPod[podKey{k.namespace, k.pod}], k.container)
	}
	for k := range mem {
		if _, ok := cpu[k]; !ok {
			byPod[podKey{k.namespace, k.pod}] = append(byPod[podKey{k.namespace, k.pod}], k.container)
		}
	}
	now := metav1.NewTime(p.clock.Now())
	out := make([]metrics.PodMetrics, 0, len(pods))
	for _, pod := range pods {
		if pm, ok := podMetrics(pod, byPod[podKey{pod.Namespace, pod.Name}], cpu, mem); ok {
			pm.CreationTimestamp, pm.Window = now, metav1.Duration{Duration: rs.Window}
			out = append(out, pm)
		}
	}
	return out, nil
}

type podKey struct{ namespace, name string }

// both runs the CPU and the memory query side by side.
func both[K comparable](ctx context.Context, rs *rules.ResourceRules, run func(context.Context, *rules.ResourceQuery) (map[K]usage, error)) (cpu, mem map[K]usage, err error) {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		cpu, err = run(gctx, rs.CPU)
		return err
	})
	g.Go(func() (err error) {
		mem, err = run(gctx, rs.Memory)
		return err
	})
	err = g.Wait()
	return cpu, mem, err
}

// podMetrics is one pod's usage, from the usage of its containers; false
// when a container lacks a CPU or memory value, or has one the API cannot
// carry: a half-scraped pod is left out rather than reported low.
func podMetrics(pod *metav1.PartialObjectMetadata, containers []string, cpu, mem map[containerKey]usage) (metrics.PodMetrics, bool) {
	if len(containers) == 0 {
		return metrics.PodMetrics{}, false
	}
	slices.Sort(containers)
	pm := metrics.PodMetrics{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, Labels: pod.Labels}}
	var earliest model.Time
	for _, c := range containers {
		k := containerKey{pod.Namespace, pod.Name, c}
		cu, cok := cpu[k]
		mu, mok := mem[k]
		if !cok || !mok {
			klog.V(2).InfoS("Leaving out a pod with incomplete resource metrics", "pod", klog.KObj(pod), "container", c, "cpu", cok, "memory", mok)
			return pm, false
		}
		cq, cok := cpuQuantity(cu.value)
		mq, mok := memoryQuantity(mu.value)
		if !cok || !mok {
			klog.V(2).InfoS("Leaving out a pod with a resource value that is not a finite, non-negative number", "pod", klog.KObj(pod), "container", c, "cpu", cu.value, "memory", mu.value)
			return pm, false
		}
		pm.Containers = append(pm.Containers, metrics.ContainerMetrics{
			Name:  c,
			Usage: corev1.ResourceList{corev1.ResourceCPU: cq, corev1.ResourceMemory: mq},
		})
		for _, ts := range []model.Time{cu.ts, mu.ts} {
			if earliest == 0 || ts.Before(earliest) {
				earliest = ts
			}
		}
	}
	pm.Timestamp = metav1.NewTime(earliest.Time())
	return pm, true
}

// containers runs one resource's container query for pods of the given
// namespaces and names, and returns the usage per container of the pods
// asked for.
func (p *Provider) containers(ctx context.Context, q *rules.ResourceQuery, pods []*metav1.PartialObjectMetadata) (map[containerKey]usage, error) {
	groupBy := compactLabels(q.NamespaceLabel, q.PodLabel, q.ContainerLabel)
	// Grouped by pod and container, the answer for many pods is that of
	// their parts: a store with a tenant per namespace gets one query per
	// tenant, one with a query length limit queries that fit.
	namespaces, names := make([]string, len(pods)), make([]string, len(pods))
	for i, pod := range pods {
		namespaces[i], names[i] = pod.Namespace, pod.Name
	}
	distinct := func(nss []string) []string {
		nss = slices.Clone(nss)
		slices.Sort(nss)
		return slices.Compact(nss)
	}
	all := distinct(namespaces)
	res, err := query.RunMany(ctx, p.stores, query.Many{
		N:           len(pods),
		NamespaceOf: func(i int) string { return pods[i].Namespace },
		Query: func(ids []int) query.Query {
			nss := all
			if ids != nil {
				nss = distinct(query.Pick(namespaces, ids))
			}
			matchers := []promql.Matcher{
				promql.OneOf(q.NamespaceLabel, nss),
				promql.OneOf(q.PodLabel, query.Pick(names, ids)),
			}
			return p.queryOf(q, "pods", func() (string, error) { return q.RenderContainers(matchers, groupBy) })
		},
	})
	if err != nil {
		return nil, err
	}
	out := make(map[containerKey]usage, len(res.Vector))
	for _, s := range res.Vector {
		k := containerKey{
			namespace: string(s.Metric[model.LabelName(q.NamespaceLabel)]),
			pod:       string(s.Metric[model.LabelName(q.PodLabel)]),
			container: string(s.Metric[model.LabelName(q.ContainerLabel)]),
		}
		if k.namespace == "" || k.pod == "" || k.container == "" {
			// Pod-level cgroups (cAdvisor's container="") and series the
			// query did not group by the container are not containers.
			continue
		}
		prev := out[k]
		// Several series for one container (a query that keeps more
		// labels than it groups by) add up, as the query's sum would.
		out[k] = usage{value: prev.value + float64(s.Value), ts: max(prev.ts, s.Timestamp)}
	}
	return out, nil
}

// NodeMetrics returns the usage of the given nodes. Nodes without both a
// CPU and a memory value are left out.
func (p *Provider) NodeMetrics(ctx context.Context, nodes []*metav1.PartialObjectMetadata) ([]metrics.NodeMetrics, error) {
	rs := p.rules.Load()
	if rs == nil {
		return nil, errNoRules
	}
	if len(nodes) == 0 {
		return nil, nil
	}
	trace.From(ctx).Rule("resourceRules (cpu and memory)", "")
	cpu, mem, err := both(ctx, rs, func(ctx context.Context, q *rules.ResourceQuery) (map[string]usage, error) {
		return p.nodes(ctx, q, names(nodes))
	})
	if err != nil {
		return nil, err
	}
	now := metav1.NewTime(p.clock.Now())
	out := make([]metrics.NodeMetrics, 0, len(nodes))
	for _, n := range nodes {
		cu, cok := cpu[n.Name]
		mu, mok := mem[n.Name]
		if !cok || !mok {
			klog.V(2).InfoS("Leaving out a node with incomplete resource metrics", "node", n.Name, "cpu", cok, "memory", mok)
			continue
		}
		cq, cok := cpuQuantity(cu.value)
		mq, mok := memoryQuantity(mu.value)
		if !cok || !mok {
			klog.V(2).InfoS("Leaving out a node with a resource value that is not a finite, non-negative number", "node", n.Name, "cpu", cu.value, "memory", mu.value)
			continue
		}
		out = append(out, metrics.NodeMetrics{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels, CreationTimestamp: now},
			Timestamp:  metav1.NewTime(min(cu.ts, mu.ts).Time()),
			Window:     metav1.Duration{Duration: rs.Window},
			Usage:      corev1.ResourceList{corev1.ResourceCPU: cq, corev1.ResourceMemory: mq},
		})
	}
	return out, nil
}

func (p *Provider) nodes(ctx context.Context, q *rules.ResourceQuery, names []string) (map[string]usage, error) {
	// Nodes are in no namespace: on a store with a tenant per namespace,
	// they are read as the tenant its template gives without one.
	res, err := query.RunMany(ctx, p.stores, query.Many{N: len(names), Query: func(ids []int) query.Query {
		return p.queryOf(q, "nodes", func() (string, error) {
			return q.RenderNodes([]promql.Matcher{promql.OneOf(q.NodeLabel, query.Pick(names, ids))}, []string{q.NodeLabel})
		})
	}})
	if err != nil {
		return nil, err
	}
	out := make(map[string]usage, len(res.Vector))
	for _, s := range res.Vector {
		name := string(s.Metric[model.LabelName(q.NodeLabel)])
		if name == "" {
			continue
		}
		prev := out[name]
		out[name] = usage{value: prev.value + float64(s.Value), ts: max(prev.ts, s.Timestamp)}
	}
	return out, nil
}

// queryOf is one resource's query of pods or nodes, grouped by each, so
// that it runs in parts on a store with a query length limit.
func (p *Provider) queryOf(q *rules.ResourceQuery, of string, render func() (string, error)) query.Query {
	return query.Query{
		API: adaptermetrics.ResourceAPI, Rule: "resourceRules." + q.Name, What: func() string { return fmt.Sprintf("the %s of %s", q.Name, of) }, Render: render,
		Backend: q.Backend,
	}
}

// cpuQuantity is CPU cores as a Quantity in nanocores, what metrics-server
// serves.
func cpuQuantity(cores float64) (resource.Quantity, bool) {
	if math.IsNaN(cores) || math.IsInf(cores, 0) || cores < 0 || cores > 9e9 {
		return resource.Quantity{}, false
	}
	return *resource.NewScaledQuantity(int64(math.Round(cores*1e9)), resource.Nano), true
}

// memoryQuantity is bytes as a binary Quantity.
func memoryQuantity(bytes float64) (resource.Quantity, bool) {
	if math.IsNaN(bytes) || math.IsInf(bytes, 0) || bytes < 0 || bytes > 9e18 {
		return resource.Quantity{}, false
	}
	return *resource.NewQuantity(int64(math.Round(bytes)), resource.BinarySI), true
}

func compactLabels(labels ...string) []string {
	var out []string
	for _, l := range labels {
		if !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out
}
