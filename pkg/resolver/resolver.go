// Package resolver answers "which objects does this request name?" from
// informer caches: the pods matching a label selector, the objects of any
// resource matching a selector, and the pods behind a Deployment,
// ReplicaSet, StatefulSet, DaemonSet, Service or Ingress.
//
// Pods are watched from the start, as metadata only and stripped to names
// and labels, so memory stays small on large clusters. Other resources are
// watched from the first request that needs them. No request ever LISTs the
// API server. The package does not talk to Prometheus.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Resources this package resolves to pods, with the versions it watches.
var (
	PodsGVR         = corev1.SchemeGroupVersion.WithResource("pods")
	NodesGVR        = corev1.SchemeGroupVersion.WithResource("nodes")
	ServicesGVR     = corev1.SchemeGroupVersion.WithResource("services")
	DeploymentsGVR  = appsv1.SchemeGroupVersion.WithResource("deployments")
	ReplicaSetsGVR  = appsv1.SchemeGroupVersion.WithResource("replicasets")
	StatefulSetsGVR = appsv1.SchemeGroupVersion.WithResource("statefulsets")
	DaemonSetsGVR   = appsv1.SchemeGroupVersion.WithResource("daemonsets")
	IngressesGVR    = networkingv1.SchemeGroupVersion.WithResource("ingresses")
)

var podOwners = map[schema.GroupResource]schema.GroupVersionResource{
	ServicesGVR.GroupResource():     ServicesGVR,
	DeploymentsGVR.GroupResource():  DeploymentsGVR,
	ReplicaSetsGVR.GroupResource():  ReplicaSetsGVR,
	StatefulSetsGVR.GroupResource(): StatefulSetsGVR,
	DaemonSetsGVR.GroupResource():   DaemonSetsGVR,
	IngressesGVR.GroupResource():    IngressesGVR,
}

// CanResolve reports whether PodsFor supports gr.
func CanResolve(gr schema.GroupResource) bool {
	_, ok := podOwners[gr]
	return ok
}

// Resolver implements the lookups over shared informers.
type Resolver struct {
	mapper apimeta.RESTMapper
	meta   metadatainformer.SharedInformerFactory
	typed  informers.SharedInformerFactory
	pods   informers.GenericInformer

	mu      sync.Mutex
	ctx     context.Context // set by Start; lazily started informers stop with it
	watched map[schema.GroupVersionResource]informers.GenericInformer
	// selections caches label selections per watched resource.
	selections map[cache.SharedIndexInformer]*selectionCache
	// watchErrors holds each informer's last list or watch error.
	watchErrors map[cache.SharedIndexInformer]*watchError
	// syncTimeout bounds a request's wait for a cache to fill.
	syncTimeout time.Duration
}

type watchError struct{ err error }

// DefaultSyncTimeout is how long a request waits for a cache to fill
// (the first request for a resource starts watching it).
const DefaultSyncTimeout = 10 * time.Second

// New returns a Resolver. mapper resolves resources other than the
// pod owners to the version to watch. Nothing is watched until Start.
func New(kube kubernetes.Interface, meta metadata.Interface, mapper apimeta.RESTMapper) *Resolver {
	r := &Resolver{
		mapper:      mapper,
		meta:        metadatainformer.NewSharedInformerFactoryWithOptions(meta, 0, metadatainformer.WithTransform(stripMetadata)),
		typed:       informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(stripTyped)),
		watched:     map[schema.GroupVersionResource]informers.GenericInformer{},
		selections:  map[cache.SharedIndexInformer]*selectionCache{},
		watchErrors: map[cache.SharedIndexInformer]*watchError{},
		syncTimeout: DefaultSyncTimeout,
	}
	r.pods = r.meta.ForResource(PodsGVR)
	// A new informer that has not started: adding the index and the event
	// handler cannot fail.
	_ = r.prepareInformer(r.pods.Informer())
	r.watched[PodsGVR] = r.pods
	return r
}

// prepareInformer adds the label index and the selection cache to a new
// informer. Call it with r.mu held, or before the resolver is shared.
func (r *Resolver) prepareInformer(inf cache.SharedIndexInformer) error {
	c := newSelectionCache()
	if err := addLabelIndex(inf, c); err != nil {
		return err
	}
	we := &watchError{}
	r.watchErrors[inf] = we
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, reflector *cache.Reflector, err error) {
		r.mu.Lock()
		we.err = err
		r.mu.Unlock()
		cache.DefaultWatchErrorHandler(ctx, reflector, err)
	}); err != nil {
		return fmt.Errorf("watching for list errors: %w", err)
	}
	r.selections[inf] = c
	return nil
}

// SetSyncTimeout sets how long a request waits for a cache to fill
// (DefaultSyncTimeout). Call it before Start.
func (r *Resolver) SetSyncTimeout(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncTimeout = d
}

// Start starts the pod informer and remembers ctx for informers started
// later. Everything stops when ctx is done.
func (r *Resolver) Start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctx = ctx
	r.meta.Start(ctx.Done())
	r.typed.Start(ctx.Done())
}

// HasSynced reports whether the pod cache is filled; the adapter is not
// ready before.
func (r *Resolver) HasSynced() bool { return r.pods.Informer().HasSynced() }

// WaitForPods blocks until the pod cache is filled or ctx is done.
func (r *Resolver) WaitForPods(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), r.pods.Informer().HasSynced)
}

// informer returns a synced informer for gvr, starting it on first use.
func (r *Resolver) informer(ctx context.Context, gvr schema.GroupVersionResource) (informers.GenericInformer, error) {
	r.mu.Lock()
	inf, ok := r.watched[gvr]
	if !ok {
		if r.ctx == nil {
			r.mu.Unlock()
			return nil, fmt.Errorf("resolver not started")
		}
		_, typed := podOwners[gvr.GroupResource()]
		if typed {
			var err error
			if inf, err = r.typed.ForResource(gvr); err != nil {
				r.mu.Unlock()
				return nil, fmt.Errorf("watching %s: %w", gvr.GroupResource(), err)
			}
		} else {
			inf = r.meta.ForResource(gvr)
		}
		if err := r.prepareInformer(inf.Informer()); err != nil {
			r.mu.Unlock()
			return nil, fmt.Errorf("watching %s: %w", gvr.GroupResource(), err)
		}
		if typed {
			r.typed.Start(r.ctx.Done())
		} else {
			r.meta.Start(r.ctx.Done())
		}
		r.watched[gvr] = inf
		klog.InfoS("Started watching", "resource", gvr.String())
	}
	r.mu.Unlock()

	if inf.Informer().HasSynced() {
		return inf, nil
	}
	// A cache that does not fill (the adapter may not list the resource)
	// must not hold the request until the API server gives up on it.
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, r.syncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(wctx.Done(), inf.Informer().HasSynced) {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &NotSyncedError{Resource: gvr.GroupResource(), Waited: time.Since(start), LastError: r.watchError(inf.Informer())}
	}
	return inf, nil
}

// watchError is the last error the informer's list or watch met, or nil.
func (r *Resolver) watchError(inf cache.SharedIndexInformer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.watchErrors[inf]; e != nil {
		return e.err
	}
	return nil
}

// PodCacheError explains why the pod cache is not filled, or is nil once
// it is: the adapter is not ready before.
func (r *Resolver) PodCacheError() error {
	if r.pods.Informer().HasSynced() {
		return nil
	}
	if err := r.watchError(r.pods.Informer()); err != nil {
		return fmt.Errorf("the pod cache is not filled: %w%s", err, rbacHint(err, PodsGVR.GroupResource()))
	}
	return errors.New("the pod cache is not filled yet")
}

func rbacHint(err error, gr schema.GroupResource) string {
	if apierrors.IsForbidden(err) {
		return fmt.Sprintf(" (grant the adapter's ServiceAccount get, list and watch on %s)", gr)
	}
	return ""
}

// ErrMapping wraps failures of the REST mapper other than "no such
// resource": the cluster's API could not be read.
var ErrMapping = errors.New("resolving resource")

// ErrTooManyWatched refuses to watch a resource past the resolver's
// bound.
var ErrTooManyWatched = errors.New("watching too many resources")

// NotSyncedError means a cache was not filled within the resolver's sync
// timeout, typically because the adapter may not list or watch the
// resource.
type NotSyncedError struct {
	Resource schema.GroupResource
	Waited   time.Duration
	// LastError is the last error listing or watching met, if any.
	LastError error
}

func (e *NotSyncedError) Error() string {
	msg := fmt.Sprintf("the cache of %s is not filled after %s", e.Resource, e.Waited.Round(time.Millisecond))
	if e.LastError == nil {
		return msg + ": check that the adapter may get, list and watch them (RBAC) and that the API server is reachable"
	}
	return fmt.Sprintf("%s: %v%s", msg, e.LastError, rbacHint(e.LastError, e.Resource))
}

func (e *NotSyncedError) Unwrap() error { return e.LastError }

// PodsMatching returns the names of the pods in namespace that sel
// matches, sorted. The slice may be shared with other callers: do not
// modify it.
func (r *Resolver) PodsMatching(ctx context.Context, namespace string, sel labels.Selector) ([]string, error) {
	if _, err := r.informer(ctx, PodsGVR); err != nil {
		return nil, err
	}
	return r.matching(r.pods, namespace, sel)
}

// ObjectsMatching returns the names of the objects of gr in namespace
// (empty for cluster-scoped resources) that sel matches, sorted.
func (r *Resolver) ObjectsMatching(ctx context.Context, gr schema.GroupResource, namespace string, sel labels.Selector) ([]string, error) {
	gvr, ok := podOwners[gr]
	if gr == PodsGVR.GroupResource() {
		gvr, ok = PodsGVR, true
	}
	if !ok {
		var err error
		if gvr, err = r.mapper.ResourceFor(gr.WithVersion("")); err != nil {
			if apimeta.IsNoMatchError(err) {
				return nil, err
			}
			return nil, fmt.Errorf("%w %s: %w", ErrMapping, gr, err)
		}
	}
	inf, err := r.informer(ctx, gvr)
	if err != nil {
		return nil, err
	}
	return r.matching(inf, namespace, sel)
}

// Metadata returns the cached metadata (name, namespace, labels) of the
// objects of a metadata-watched resource, such as PodsGVR or NodesGVR, in
// namespace ("" for all namespaces or a cluster-scoped resource) that sel
// matches, sorted by namespace and name. The objects are shared with the
// cache: do not modify them.
func (r *Resolver) Metadata(ctx context.Context, gvr schema.GroupVersionResource, namespace string, sel labels.Selector) ([]*metav1.PartialObjectMetadata, error) {
	if _, typed := podOwners[gvr.GroupResource()]; typed {
		return nil, fmt.Errorf("%s is watched with its spec, not as metadata", gvr.GroupResource())
	}
	inf, err := r.informer(ctx, gvr)
	if err != nil {
		return nil, err
	}
	objs, err := candidates(inf.Informer().GetIndexer(), namespace, sel)
	if err != nil {
		return nil, fmt.Errorf("reading cache: %w", err)
	}
	out := make([]*metav1.PartialObjectMetadata, 0, len(objs))
	for _, o := range objs {
		if m, ok := o.(*metav1.PartialObjectMetadata); ok && sel.Matches(labels.Set(m.Labels)) {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b *metav1.PartialObjectMetadata) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}

// GetMetadata returns the cached metadata of one object of a
// metadata-watched resource, or a NotFound error.
func (r *Resolver) GetMetadata(ctx context.Context, gvr schema.GroupVersionResource, namespace, name string) (*metav1.PartialObjectMetadata, error) {
	if _, typed := podOwners[gvr.GroupResource()]; typed {
		return nil, fmt.Errorf("%s is watched with its spec, not as metadata", gvr.GroupResource())
	}
	inf, err := r.informer(ctx, gvr)
	if err != nil {
		return nil, err
	}
	var obj runtime.Object
	if namespace == "" {
		obj, err = inf.Lister().Get(name)
	} else {
		obj, err = inf.Lister().ByNamespace(namespace).Get(name)
	}
	if err != nil {
		return nil, err
	}
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in the %s cache", obj, gvr.GroupResource())
	}
	return m, nil
}

func (r *Resolver) matching(inf informers.GenericInformer, namespace string, sel labels.Selector) ([]string, error) {
	indexer := inf.Informer().GetIndexer()
	compute := func() ([]string, error) { return matchingNames(indexer, namespace, sel) }
	r.mu.Lock()
	c := r.selections[inf.Informer()]
	r.mu.Unlock()
	if c == nil {
		return compute()
	}
	return c.names(namespace, sel, compute)
}

// PodsFor returns the names of the pods behind one object, sorted:
// the pods a workload's selector matches, the pods a Service selects, the
// pods of every Service an Ingress routes to. A missing object is a
// NotFound error; an object that selects no pods gives an empty list.
func (r *Resolver) PodsFor(ctx context.Context, gr schema.GroupResource, namespace, name string) ([]string, error) {
	gvr, ok := podOwners[gr]
	if !ok {
		return nil, fmt.Errorf("%s cannot be resolved to pods", gr)
	}
	inf, err := r.informer(ctx, gvr)
	if err != nil {
		return nil, err
	}
	obj, err := inf.Lister().ByNamespace(namespace).Get(name)
	if err != nil {
		return nil, err
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return r.podsForLabelSelector(ctx, namespace, o.Spec.Selector, gr, name)
	case *appsv1.ReplicaSet:
		return r.podsForLabelSelector(ctx, namespace, o.Spec.Selector, gr, name)
	case *appsv1.StatefulSet:
		return r.podsForLabelSelector(ctx, namespace, o.Spec.Selector, gr, name)
	case *appsv1.DaemonSet:
		return r.podsForLabelSelector(ctx, namespace, o.Spec.Selector, gr, name)
	case *corev1.Service:
		return r.podsForService(ctx, o)
	case *networkingv1.Ingress:
		return r.podsForIngress(ctx, o)
	default:
		return nil, fmt.Errorf("unexpected %T in the %s cache", obj, gr)
	}
}

func (r *Resolver) podsForLabelSelector(ctx context.Context, namespace string, ls *metav1.LabelSelector, gr schema.GroupResource, name string) ([]string, error) {
	if ls == nil {
		return nil, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, fmt.Errorf("selector of %s %s/%s: %w", gr, namespace, name, err)
	}
	if sel.Empty() {
		// An empty workload selector is invalid in the API; never let it
		// mean "every pod in the namespace".
		return nil, nil
	}
	return r.PodsMatching(ctx, namespace, sel)
}

func (r *Resolver) podsForService(ctx context.Context, svc *corev1.Service) ([]string, error) {
	if len(svc.Spec.Selector) == 0 {
		// A Service without selector has manually managed endpoints, not
		// pods we can find.
		return nil, nil
	}
	return r.PodsMatching(ctx, svc.Namespace, labels.SelectorFromSet(svc.Spec.Selector))
}

func (r *Resolver) podsForIngress(ctx context.Context, ing *networkingv1.Ingress) ([]string, error) {
	services := IngressServices(ing)
	if len(services) == 0 {
		return nil, nil
	}
	inf, err := r.informer(ctx, ServicesGVR)
	if err != nil {
		return nil, err
	}
	var pods []string
	for _, name := range services {
		obj, err := inf.Lister().ByNamespace(ing.Namespace).Get(name)
		if apierrors.IsNotFound(err) {
			klog.V(2).InfoS("Ingress backend Service not found", "ingress", klog.KObj(ing), "service", name)
			continue
		}
		if err != nil {
			return nil, err
		}
		svc, ok := obj.(*corev1.Service)
		if !ok {
			continue
		}
		p, err := r.podsForService(ctx, svc)
		if err != nil {
			return nil, err
		}
		pods = append(pods, p...)
	}
	slices.Sort(pods)
	return slices.Compact(pods), nil
}

// IngressServices returns the names of the Services an Ingress routes to
// (rules and default backend), sorted and without duplicates.
func IngressServices(ing *networkingv1.Ingress) []string {
	var names []string
	if b := ing.Spec.DefaultBackend; b != nil && b.Service != nil {
		names = append(names, b.Service.Name)
	}
	for _, rule := range ing.Spec.Rules {
		if rule.HTTP == nil {
			continue
		}
		for _, p := range rule.HTTP.Paths {
			if p.Backend.Service != nil {
				names = append(names, p.Backend.Service.Name)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// stripMetadata keeps what lookups need of a cached object's metadata:
// name, namespace, labels, UID and resource version.
func stripMetadata(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	return &metav1.PartialObjectMetadata{
		TypeMeta: m.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:            m.Name,
			Namespace:       m.Namespace,
			UID:             m.UID,
			ResourceVersion: m.ResourceVersion,
			Labels:          m.Labels,
		},
	}, nil
}

// stripTyped keeps a pod owner's metadata and the fields that select its
// pods, dropping pod templates, status and managed fields.
func stripTyped(obj any) (any, error) {
	meta := func(m metav1.ObjectMeta) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Labels: m.Labels}
	}
	var out runtime.Object
	switch o := obj.(type) {
	case *appsv1.Deployment:
		out = &appsv1.Deployment{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.DeploymentSpec{Selector: o.Spec.Selector}}
	case *appsv1.ReplicaSet:
		out = &appsv1.ReplicaSet{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.ReplicaSetSpec{Selector: o.Spec.Selector}}
	case *appsv1.StatefulSet:
		out = &appsv1.StatefulSet{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.StatefulSetSpec{Selector: o.Spec.Selector}}
	case *appsv1.DaemonSet:
		out = &appsv1.DaemonSet{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.DaemonSetSpec{Selector: o.Spec.Selector}}
	case *corev1.Service:
		out = &corev1.Service{ObjectMeta: meta(o.ObjectMeta), Spec: corev1.ServiceSpec{Selector: o.Spec.Selector}}
	case *networkingv1.Ingress:
		out = &networkingv1.Ingress{ObjectMeta: meta(o.ObjectMeta), Spec: networkingv1.IngressSpec{DefaultBackend: o.Spec.DefaultBackend, Rules: o.Spec.Rules}}
	default:
		return obj, nil
	}
	return out, nil
}

// CacheSizes reports how many objects each informer cache holds, by
// resource (e.g. "pods", "deployments.apps"), for the adapter's metrics.
func (r *Resolver) CacheSizes() map[string]int {
	r.mu.Lock()
	watched := make(map[string]cache.SharedIndexInformer, len(r.watched))
	for gvr, inf := range r.watched {
		watched[gvr.GroupResource().String()] = inf.Informer()
	}
	r.mu.Unlock()
	out := make(map[string]int, len(watched))
	for resource, inf := range watched {
		out[resource] = len(inf.GetStore().ListKeys())
	}
	return out
}
