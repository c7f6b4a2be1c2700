// Package resolver answers "which objects does this request name?" from
// informer caches (a Resolver, with a Watch per resource and field
// selector; a cache it could not fill is a NotSyncedError): the pods matching a label selector, the objects of any
// resource matching a selector, the pods behind a Deployment, ReplicaSet,
// StatefulSet, DaemonSet, Service or Ingress (package podowners), and the
// running pods and the nodes whose usage the resource metrics API serves.
//
// Pods are watched from the start, as metadata only and stripped to names
// and labels, so memory stays small on large clusters. Other resources are
// watched from the first request that needs them (watches.go), and stop
// being watched when no rule serves them any more, or when the adapter may
// not list them. No request ever LISTs the API server. The package does not
// talk to Prometheus.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
)

// The resources the resolver watches as metadata, with their versions.
var (
	PodsGVR       = corev1.SchemeGroupVersion.WithResource("pods")
	NodesGVR      = corev1.SchemeGroupVersion.WithResource("nodes")
	NamespacesGVR = corev1.SchemeGroupVersion.WithResource("namespaces")
)

// Watch names what a cache holds: a resource, and a field selector on it.
type Watch struct {
	GVR schema.GroupVersionResource
	// FieldSelector narrows the objects watched, e.g. status.phase=Running.
	FieldSelector string
}

func (w Watch) String() string {
	if w.FieldSelector == "" {
		return w.GVR.GroupResource().String()
	}
	return w.GVR.GroupResource().String() + " (" + w.FieldSelector + ")"
}

// Watches of the resource metrics API: the pods that are running (as
// metrics-server and prometheus-adapter serve), and the nodes.
var (
	RunningPods = Watch{GVR: PodsGVR, FieldSelector: "status.phase=" + string(corev1.PodRunning)}
	Nodes       = Watch{GVR: NodesGVR}
	// Namespaces keeps each namespace's labels and annotations, which a
	// store's tenant template reads.
	Namespaces = Watch{GVR: NamespacesGVR}
	allPods    = Watch{GVR: PodsGVR}
)

// ErrMapping wraps failures of the REST mapper other than "no such
// resource": the cluster's API could not be read.
var ErrMapping error = unavailableError("resolving resource")

// unavailableError is a lookup the resolver cannot complete for now. It
// says so to whoever maps errors to statuses (package apistatus: 503)
// through its Unavailable method, without their importing this package.
type unavailableError string

func (e unavailableError) Error() string { return string(e) }

// Unavailable marks the error as a 503.
func (unavailableError) Unavailable() bool { return true }

// PodsMatching returns the names of the pods in namespace that sel
// matches, sorted. The slice may be shared with other callers: do not
// modify it.
func (r *Resolver) PodsMatching(ctx context.Context, namespace string, sel labels.Selector) ([]string, error) {
	w, err := r.watch(ctx, allPods, false)
	if err != nil {
		return nil, err
	}
	return w.matching(namespace, sel)
}

// ObjectsMatching returns the names of the objects of gr in namespace
// (empty for cluster-scoped resources) that sel matches, sorted.
func (r *Resolver) ObjectsMatching(ctx context.Context, gr schema.GroupResource, namespace string, sel labels.Selector) ([]string, error) {
	gvr, err := r.versionOf(gr)
	if err != nil {
		return nil, err
	}
	w, err := r.watch(ctx, Watch{GVR: gvr}, false)
	if err != nil {
		return nil, err
	}
	return w.matching(namespace, sel)
}

// versionOf is the version of gr to watch.
func (r *Resolver) versionOf(gr schema.GroupResource) (schema.GroupVersionResource, error) {
	if gr == PodsGVR.GroupResource() {
		return PodsGVR, nil
	}
	if o, ok := podowners.For(gr); ok {
		return o.GVR, nil
	}
	gvr, err := r.mapper.ResourceFor(gr.WithVersion(""))
	if err == nil {
		return gvr, nil
	}
	if apimeta.IsNoMatchError(err) {
		return gvr, err
	}
	return gvr, fmt.Errorf("%w %s: %w", ErrMapping, gr, err)
}

// Metadata returns the cached metadata (name, namespace, labels) of the
// objects a metadata watch holds, such as RunningPods or Nodes, in
// namespace ("" for all namespaces or a cluster-scoped resource) that sel
// matches, sorted by namespace and name. The objects are shared with the
// cache: do not modify them. The watch is kept for as long as the adapter
// runs.
func (r *Resolver) Metadata(ctx context.Context, watch Watch, namespace string, sel labels.Selector) ([]*metav1.PartialObjectMetadata, error) {
	if _, typed := podowners.For(watch.GVR.GroupResource()); typed {
		return nil, fmt.Errorf("%s is watched with its spec, not as metadata", watch)
	}
	w, err := r.watch(ctx, watch, true)
	if err != nil {
		return nil, err
	}
	objs, err := candidates(w.inf.GetIndexer(), namespace, sel)
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

// GetMetadata returns the cached metadata of one object of a metadata
// watch, or a NotFound error.
func (r *Resolver) GetMetadata(ctx context.Context, watch Watch, namespace, name string) (*metav1.PartialObjectMetadata, error) {
	if _, typed := podowners.For(watch.GVR.GroupResource()); typed {
		return nil, fmt.Errorf("%s is watched with its spec, not as metadata", watch)
	}
	w, err := r.watch(ctx, watch, true)
	if err != nil {
		return nil, err
	}
	obj, err := w.get(namespace, name)
	if err != nil {
		return nil, err
	}
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in the %s cache", obj, watch)
	}
	return m, nil
}

// PodsFor returns the names of the pods behind one object, sorted: the
// pods a workload's selector matches, the pods a Service selects, the pods
// of every Service an Ingress routes to. A missing object is a NotFound
// error; an object that selects no pods gives an empty list.
func (r *Resolver) PodsFor(ctx context.Context, gr schema.GroupResource, namespace, name string) ([]string, error) {
	owner, ok := podowners.For(gr)
	if !ok {
		return nil, fmt.Errorf("%s cannot be resolved to pods", gr)
	}
	obj, err := r.object(ctx, owner, namespace, name)
	if err != nil {
		return nil, err
	}
	if ing, ok := obj.(*networkingv1.Ingress); ok {
		return r.podsForIngress(ctx, ing)
	}
	sel, err := owner.PodSelector(obj)
	if err != nil {
		return nil, fmt.Errorf("selector of %s %s/%s: %w", gr, namespace, name, err)
	}
	if sel == nil {
		return nil, nil
	}
	return r.PodsMatching(ctx, namespace, sel)
}

// object returns one cached object of a pod owner, or a NotFound error.
func (r *Resolver) object(ctx context.Context, owner podowners.Owner, namespace, name string) (runtime.Object, error) {
	w, err := r.watch(ctx, Watch{GVR: owner.GVR}, false)
	if err != nil {
		return nil, err
	}
	obj, err := w.get(namespace, name)
	if err != nil {
		return nil, err
	}
	ro, ok := obj.(runtime.Object)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in the %s cache", obj, owner.Name())
	}
	return ro, nil
}

func (r *Resolver) podsForIngress(ctx context.Context, ing *networkingv1.Ingress) ([]string, error) {
	var pods []string
	for _, name := range podowners.BackendServices(ing) {
		svc, err := r.object(ctx, podowners.Services, ing.Namespace, name)
		if apierrors.IsNotFound(err) {
			klog.V(2).InfoS("Ingress backend Service not found", "ingress", klog.KObj(ing), "service", name)
			continue
		}
		if err != nil {
			return nil, err
		}
		sel, err := podowners.Services.PodSelector(svc)
		if err != nil || sel == nil {
			continue
		}
		p, err := r.PodsMatching(ctx, ing.Namespace, sel)
		if err != nil {
			return nil, err
		}
		pods = append(pods, p...)
	}
	slices.Sort(pods)
	return slices.Compact(pods), nil
}

// PodCacheError explains why the pod cache is not filled, or is nil once
// it is: the adapter is not ready before.
func (r *Resolver) PodCacheError() error {
	if r.pods.inf.HasSynced() {
		return nil
	}
	if err := r.pods.lastError(); err != nil {
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

// NotSyncedError means a cache was not filled within the resolver's sync
// timeout, typically because the adapter may not list or watch the
// resource.
type NotSyncedError struct {
	Resource schema.GroupResource
	Waited   time.Duration
	// LastError is the last error listing or watching met, if any.
	LastError error
	// RetryAfter is set when the resource is not watched again before
	// then: its watch failed and was stopped.
	RetryAfter time.Time
}

// Unavailable marks the error as a 503: a cache the adapter could not
// fill, whatever the listing met.
func (e *NotSyncedError) Unavailable() bool { return true }

func (e *NotSyncedError) Error() string {
	msg := fmt.Sprintf("the cache of %s is not filled after %s", e.Resource, e.Waited.Round(time.Millisecond))
	if !e.RetryAfter.IsZero() {
		msg = fmt.Sprintf("%s is not watched: its watch failed and is tried again at %s", e.Resource, e.RetryAfter.UTC().Format(time.RFC3339))
	}
	if e.LastError == nil {
		return msg + ": check that the adapter may get, list and watch them (RBAC) and that the API server is reachable"
	}
	return fmt.Sprintf("%s: %v%s", msg, e.LastError, rbacHint(e.LastError, e.Resource))
}

// NotSyncedError does not unwrap to LastError: a list's error is often a
// StatusError (Forbidden, NotFound) about the adapter's own access, which
// must not pass for the request's answer.
