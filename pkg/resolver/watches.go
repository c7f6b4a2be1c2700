package resolver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
)

// Resolver implements the lookups over informer caches, one per Watch.
//
// A watch starts on the first request that needs it, and stops:
//   - when its cache does not fill within the sync timeout because listing
//     or watching fails (the adapter may not list the resource): requests
//     for it are then answered 503 at once, naming the error, until
//     RetryAfter, when the next request tries again;
//   - when Retain is told that no rule serves its resource any more (a
//     reload, or series that are gone).
//
// At most MaxWatches resources are watched on requests' behalf. The pods
// are watched from Start for as long as the adapter runs, and so are the
// watches of the resource metrics API once asked for.
type Resolver struct {
	kube   kubernetes.Interface
	meta   metadata.Interface
	mapper apimeta.RESTMapper
	clock  clock.Clock
	pods   *watch

	mu sync.Mutex
	// ctx is set by Start: every watch stops with it.
	ctx     context.Context
	watches map[Watch]*watch
	// failed holds the watches stopped because they failed, until when
	// they are not tried again.
	failed map[Watch]failure
	// syncTimeout bounds a request's wait for a cache to fill.
	syncTimeout time.Duration
	// maxWatches is MaxWatches; tests lower it.
	maxWatches int
}

type failure struct {
	err   error
	until time.Time
}

// Bounds of the watches requests start.
const (
	// DefaultSyncTimeout is how long a request waits for a cache to fill
	// (the first request for a resource starts watching it).
	DefaultSyncTimeout = 10 * time.Second
	// MaxWatches bounds the resources watched on requests' behalf: every
	// one is a watch on the API server and a cache in memory.
	MaxWatches = 64
	// RetryFailedAfter is how long a watch that failed is not tried
	// again: requests for its resource are answered at once meanwhile.
	RetryFailedAfter = time.Minute
)

// New returns a Resolver. mapper resolves resources other than the pod
// owners to the version to watch. Nothing is watched until Start.
func New(kube kubernetes.Interface, meta metadata.Interface, mapper apimeta.RESTMapper) *Resolver {
	r := &Resolver{
		kube:        kube,
		meta:        meta,
		mapper:      mapper,
		clock:       clock.RealClock{},
		watches:     map[Watch]*watch{},
		failed:      map[Watch]failure{},
		syncTimeout: DefaultSyncTimeout,
		maxWatches:  MaxWatches,
	}
	// A new informer that has not started: adding the index and the
	// handlers cannot fail.
	r.pods, _ = r.newWatch(allPods)
	r.pods.kept = true
	r.watches[allPods] = r.pods
	return r
}

// Start starts the pod watch and remembers ctx for watches started later.
// Everything stops when ctx is done.
func (r *Resolver) Start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctx = ctx
	r.pods.start(ctx)
}

// HasSynced reports whether the pod cache is filled; the adapter is not
// ready before.
func (r *Resolver) HasSynced() bool { return r.pods.inf.HasSynced() }

// WaitForPods blocks until the pod cache is filled or ctx is done.
func (r *Resolver) WaitForPods(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), r.pods.inf.HasSynced)
}

// watch is one informer, with the label index and selection cache of its
// objects, and its own lifetime.
type watch struct {
	key        Watch
	inf        cache.SharedIndexInformer
	selections *selectionCache
	// kept watches are never stopped by Retain: the pods, and those of the
	// resource metrics API.
	kept bool

	mu      sync.Mutex
	lastErr error
	stop    context.CancelFunc
	stopped chan struct{}
}

// newWatch builds the informer of key: typed for the pod owners (their
// pod selectors are in their spec), metadata only for anything else. It
// does not start it.
func (r *Resolver) newWatch(key Watch) (*watch, error) {
	w := &watch{key: key, selections: newSelectionCache(), stopped: make(chan struct{})}
	byNamespace := cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}
	if o, ok := podowners.For(key.GVR.GroupResource()); ok {
		w.inf = o.NewInformer(r.kube, metav1.NamespaceAll, 0, byNamespace)
		if err := w.inf.SetTransform(o.Strip); err != nil {
			return nil, err
		}
	} else {
		tweak := func(o *metav1.ListOptions) { o.FieldSelector = key.FieldSelector }
		w.inf = metadatainformer.NewFilteredMetadataInformer(r.meta, key.GVR, metav1.NamespaceAll, 0, byNamespace, tweak).Informer()
		strip := stripMetadata
		if key.GVR == NamespacesGVR {
			strip = stripNamespace
		}
		if err := w.inf.SetTransform(strip); err != nil {
			return nil, err
		}
	}
	if err := addLabelIndex(w.inf, w.selections); err != nil {
		return nil, err
	}
	// A relist replaces the store and its indices at once: a namespace
	// whose every object went away meanwhile is not seen by the index
	// function, only by the deletions the informer hands out after it.
	if _, err := w.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: w.selections.deleted}); err != nil {
		return nil, err
	}
	if err := w.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, reflector *cache.Reflector, err error) {
		w.mu.Lock()
		w.lastErr = err
		w.mu.Unlock()
		cache.DefaultWatchErrorHandler(ctx, reflector, err)
	}); err != nil {
		return nil, fmt.Errorf("watching for list errors: %w", err)
	}
	return w, nil
}

// start runs the informer until parent is done or stop is called.
func (w *watch) start(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	w.mu.Lock()
	w.stop = cancel
	w.mu.Unlock()
	go func() {
		defer close(w.stopped)
		w.inf.RunWithContext(ctx)
	}()
}

// end stops the informer.
func (w *watch) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stop != nil {
		w.stop()
	}
}

func (w *watch) lastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// matching returns the names the selector matches, from the selection
// cache.
func (w *watch) matching(namespace string, sel labels.Selector) ([]string, error) {
	indexer := w.inf.GetIndexer()
	return w.selections.names(namespace, sel, func() ([]string, error) { return matchingNames(indexer, namespace, sel) })
}

// get returns one cached object, or a NotFound error.
func (w *watch) get(namespace, name string) (any, error) {
	key := name
	if namespace != "" {
		key = namespace + "/" + name
	}
	obj, exists, err := w.inf.GetIndexer().GetByKey(key)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, apierrors.NewNotFound(w.key.GVR.GroupResource(), name)
	}
	return obj, nil
}

// watch returns a synced watch for key, starting it on first use. keep
// marks it as one Retain never stops.
func (r *Resolver) watch(ctx context.Context, key Watch, keep bool) (*watch, error) {
	w, err := r.watchFor(key, keep)
	if err != nil {
		return nil, err
	}
	if w.inf.HasSynced() {
		return w, nil
	}
	// A cache that does not fill (the adapter may not list the resource)
	// must not hold the request until the API server gives up on it.
	start := r.clock.Now()
	wctx, cancel := context.WithTimeout(ctx, r.syncTimeout)
	defer cancel()
	go func() {
		select {
		case <-w.stopped: // stopped meanwhile: stop waiting
			cancel()
		case <-wctx.Done():
		}
	}()
	if cache.WaitForCacheSync(wctx.Done(), w.inf.HasSynced) || w.inf.HasSynced() {
		return w, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lastErr := w.lastError()
	ns := &NotSyncedError{Resource: key.GVR.GroupResource(), Waited: r.clock.Since(start), LastError: lastErr}
	if lastErr != nil {
		// Listing fails (RBAC, a resource that went away): a reflector
		// left running would retry for the life of the process.
		ns.RetryAfter = r.stopFailed(w, lastErr)
	}
	return nil, ns
}

// watchFor returns the watch of key, started.
func (r *Resolver) watchFor(key Watch, keep bool) (*watch, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.watches[key]; ok {
		if keep {
			w.kept = true
		}
		return w, nil
	}
	if r.ctx == nil {
		return nil, errors.New("resolver not started")
	}
	if f, ok := r.failed[key]; ok {
		if r.clock.Now().Before(f.until) {
			return nil, &NotSyncedError{Resource: key.GVR.GroupResource(), LastError: f.err, RetryAfter: f.until}
		}
		delete(r.failed, key)
	}
	if !keep && r.requested() >= r.maxWatches {
		return nil, fmt.Errorf("%w: %s would be resource number %d watched for requests, past the bound of %d", ErrTooManyWatched, key, r.maxWatches+1, r.maxWatches)
	}
	w, err := r.newWatch(key)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", key, err)
	}
	w.kept = keep
	w.start(r.ctx)
	r.watches[key] = w
	klog.InfoS("Started watching", "resource", key.String())
	return w, nil
}

// requested counts the watches Retain may stop. Call it with r.mu held.
func (r *Resolver) requested() int {
	n := 0
	for _, w := range r.watches {
		if !w.kept {
			n++
		}
	}
	return n
}

// stopFailed stops a watch that cannot fill its cache and returns until
// when it is not tried again; zero when it is not stopped here: a kept
// watch (the pods, the resource metrics API's) goes on retrying, and one
// already gone (Retain) has nothing to record.
func (r *Resolver) stopFailed(w *watch, err error) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w.kept || r.watches[w.key] != w {
		return time.Time{}
	}
	until := r.clock.Now().Add(RetryFailedAfter)
	delete(r.watches, w.key)
	r.failed[w.key] = failure{err: err, until: until}
	klog.ErrorS(err, "Stopped watching a resource whose cache does not fill; requests for it fail until it is tried again",
		"resource", w.key.String(), "retryAfter", until)
	w.end()
	return until
}

// ErrTooManyWatched refuses to watch a resource past MaxWatches.
var ErrTooManyWatched error = unavailableError("watching too many resources")

// Retain stops the watches started for requests whose resource is not in
// served: the resources the rules serve after a discovery round or a
// reload. The Services an Ingress routes to are kept with Ingresses; the
// pods, and the watches of the resource metrics API, always.
func (r *Resolver) Retain(served []schema.GroupResource) {
	keep := map[schema.GroupResource]bool{}
	for _, gr := range served {
		keep[gr] = true
		if gr == podowners.Ingresses.GVR.GroupResource() {
			keep[podowners.Services.GVR.GroupResource()] = true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, w := range r.watches {
		if w.kept || keep[key.GVR.GroupResource()] {
			continue
		}
		delete(r.watches, key)
		w.end()
		klog.InfoS("Stopped watching: no rule serves it any more", "resource", key.String())
	}
}

// CacheSizes reports how many objects each informer cache holds, by
// watch (e.g. "pods", "deployments.apps", "pods (status.phase=Running)"),
// for the adapter's metrics.
func (r *Resolver) CacheSizes() map[string]int {
	r.mu.Lock()
	watches := make(map[string]cache.SharedIndexInformer, len(r.watches))
	for key, w := range r.watches {
		watches[key.String()] = w.inf
	}
	r.mu.Unlock()
	out := make(map[string]int, len(watches))
	for name, inf := range watches {
		out[name] = len(inf.GetStore().ListKeys())
	}
	return out
}

// stripNamespace is stripMetadata keeping a namespace's annotations too,
// which a store's tenant template may read (kubectl's copy of the last
// applied object left out).
func stripNamespace(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	out, _ := stripMetadata(obj)
	if len(m.Annotations) > 0 {
		a := make(map[string]string, len(m.Annotations))
		for k, v := range m.Annotations {
			if k != corev1.LastAppliedConfigAnnotation {
				a[k] = v
			}
		}
		out.(*metav1.PartialObjectMetadata).Annotations = a
	}
	return out, nil
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
