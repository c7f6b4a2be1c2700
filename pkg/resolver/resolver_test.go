package resolver

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	kubefake "k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/podowners"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

func meta(apiVersion, kind, namespace, name string, lbls map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: apiVersion, Kind: kind},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: name, Labels: lbls,
			Annotations:   map[string]string{"big": "annotation"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
	}
}

func pod(namespace, name string, lbls map[string]string) *metav1.PartialObjectMetadata {
	return meta("v1", "Pod", namespace, name, lbls)
}

func selectorOf(l map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: l}
}

var (
	DeploymentsGVR  = appsv1.SchemeGroupVersion.WithResource("deployments")
	ReplicaSetsGVR  = appsv1.SchemeGroupVersion.WithResource("replicasets")
	StatefulSetsGVR = appsv1.SchemeGroupVersion.WithResource("statefulsets")
	DaemonSetsGVR   = appsv1.SchemeGroupVersion.WithResource("daemonsets")
	ServicesGVR     = corev1.SchemeGroupVersion.WithResource("services")
	IngressesGVR    = networkingv1.SchemeGroupVersion.WithResource("ingresses")
)

func newTestResolver(t *testing.T, typed []runtime.Object, reactors ...func(*kubefake.Clientset)) *Resolver {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	metaClient := metadatafake.NewSimpleMetadataClient(scheme,
		pod("shop", "web-1", map[string]string{"app": "web", "tier": "front"}),
		pod("shop", "web-2", map[string]string{"app": "web", "tier": "front"}),
		pod("shop", "api-1", map[string]string{"app": "api"}),
		pod("other", "web-9", map[string]string{"app": "web"}),
		meta("v1", "Namespace", "", "shop", map[string]string{"team": "a"}),
		meta("v1", "Namespace", "", "other", map[string]string{"team": "b"}),
	)
	kube := kubefake.NewClientset(typed...)
	for _, r := range reactors {
		r(kube)
	}
	r := New(kube, metaClient, rules.BuiltinMapper())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r.Start(ctx)
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if !r.WaitForPods(wctx) {
		t.Fatal("pod cache did not sync")
	}
	return r
}

func TestPodsMatching(t *testing.T) {
	r := newTestResolver(t, nil)
	tests := []struct {
		name      string
		namespace string
		selector  string
		want      []string
	}{
		{name: "matches by label in one namespace", namespace: "shop", selector: "app=web", want: []string{"web-1", "web-2"}},
		{name: "matches set-based selectors", namespace: "shop", selector: "app in (web,api),tier!=front", want: []string{"api-1"}},
		{name: "matches everything in the namespace", namespace: "shop", selector: "", want: []string{"api-1", "web-1", "web-2"}},
		{name: "matches nothing in an empty namespace", namespace: "none", selector: "", want: []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := labels.Parse(tc.selector)
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.PodsMatching(context.Background(), tc.namespace, sel)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestCachedPodsAreStripped(t *testing.T) {
	r := newTestResolver(t, nil)
	obj, exists, err := r.pods.inf.GetStore().GetByKey("shop/web-1")
	if err != nil || !exists {
		t.Fatalf("web-1 not cached: %v", err)
	}
	m := obj.(*metav1.PartialObjectMetadata)
	if len(m.Annotations) != 0 || len(m.ManagedFields) != 0 || m.Labels["app"] != "web" {
		t.Errorf("cached pod metadata = %+v, want labels only", m.ObjectMeta)
	}
}

func TestObjectsMatchingWatchesOnDemand(t *testing.T) {
	r := newTestResolver(t, nil)
	sel := labels.SelectorFromSet(labels.Set{"team": "a"})
	got, err := r.ObjectsMatching(context.Background(), schema.GroupResource{Resource: "namespaces"}, "", sel)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"shop"}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if _, err := r.ObjectsMatching(context.Background(), schema.GroupResource{Resource: "widgets"}, "", sel); err == nil {
		t.Error("ObjectsMatching(widgets) succeeded for a resource the cluster does not have")
	}
}

func TestPodsFor(t *testing.T) {
	typed := []runtime.Object{
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}, Spec: appsv1.DeploymentSpec{Selector: selectorOf(map[string]string{"app": "web"})}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api"}, Spec: appsv1.StatefulSetSpec{Selector: selectorOf(map[string]string{"app": "api"})}},
		&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-abc"}, Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"front"}}},
		}}},
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "empty"}, Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "api"}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "external"}},
		&networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "main-route"}, Spec: networkingv1.IngressSpec{
			DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "api"}},
			Rules: []networkingv1.IngressRule{{IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{
				{Path: "/", Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web"}}},
				{Path: "/old", Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "deleted"}}},
				{Path: "/web2", Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web"}}},
			}}}}},
		}},
		&networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "resource-only"}},
	}
	r := newTestResolver(t, typed)
	tests := []struct {
		name     string
		resource schema.GroupVersionResource
		object   string
		want     []string
		notFound bool
	}{
		{name: "resolves a Deployment through its selector", resource: DeploymentsGVR, object: "web", want: []string{"web-1", "web-2"}},
		{name: "resolves a StatefulSet", resource: StatefulSetsGVR, object: "api", want: []string{"api-1"}},
		{name: "resolves a ReplicaSet with a set-based selector", resource: ReplicaSetsGVR, object: "web-abc", want: []string{"web-1", "web-2"}},
		{name: "never treats an empty workload selector as every pod", resource: DaemonSetsGVR, object: "empty", want: nil},
		{name: "resolves a Service through its selector", resource: ServicesGVR, object: "web", want: []string{"web-1", "web-2"}},
		{name: "gives no pods for a Service without selector", resource: ServicesGVR, object: "external", want: nil},
		{name: "resolves an Ingress through every backend Service, skipping missing ones", resource: IngressesGVR, object: "main-route", want: []string{"api-1", "web-1", "web-2"}},
		{name: "gives no pods for an Ingress without Service backends", resource: IngressesGVR, object: "resource-only", want: nil},
		{name: "is NotFound for a missing object", resource: DeploymentsGVR, object: "nope", notFound: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.PodsFor(context.Background(), tc.resource.GroupResource(), "shop", tc.object)
			if tc.notFound {
				if !apierrors.IsNotFound(err) {
					t.Fatalf("error = %v, want NotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	if _, err := r.PodsFor(context.Background(), schema.GroupResource{Resource: "configmaps"}, "shop", "x"); err == nil {
		t.Error("PodsFor(configmaps) succeeded")
	}
}

func TestCachedOwnersAreStripped(t *testing.T) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Annotations: map[string]string{"a": "b"}},
		Spec: appsv1.DeploymentSpec{
			Selector: selectorOf(map[string]string{"app": "web"}),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "big", Image: "x"}}}},
		},
	}
	r := newTestResolver(t, []runtime.Object{d})
	if _, err := r.PodsFor(context.Background(), DeploymentsGVR.GroupResource(), "shop", "web"); err != nil {
		t.Fatal(err)
	}
	w, err := r.watch(context.Background(), Watch{GVR: DeploymentsGVR}, false)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := w.get("shop", "web")
	if err != nil {
		t.Fatal(err)
	}
	cached := obj.(*appsv1.Deployment)
	if len(cached.Spec.Template.Spec.Containers) != 0 || len(cached.Annotations) != 0 || cached.Spec.Selector == nil {
		t.Errorf("cached deployment keeps more than its selector: %+v", cached)
	}
}

// TestForbiddenResourceIsNotSynced: a resource the adapter may not list
// answers within the sync timeout, not the request's deadline, with an
// error that names the resource, the cause and the permission to grant.
func TestForbiddenResourceIsNotSynced(t *testing.T) {
	forbid := func(c *kubefake.Clientset) {
		c.PrependReactor("list", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "", errors.New("RBAC says no"))
		})
	}
	r := newTestResolver(t, nil, forbid)
	r.syncTimeout = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err := r.PodsFor(ctx, DeploymentsGVR.GroupResource(), "shop", "web")
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("answered after %v; the sync timeout is 500ms", took)
	}
	var ns *NotSyncedError
	if !errors.As(err, &ns) || ns.Resource != DeploymentsGVR.GroupResource() {
		t.Fatalf("error = %v, want NotSyncedError for deployments.apps", err)
	}
	for _, want := range []string{"deployments.apps", "RBAC says no", "grant the adapter's ServiceAccount get, list and watch on deployments.apps"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestStartIsRequired(t *testing.T) {
	r := New(kubefake.NewClientset(), metadatafake.NewSimpleMetadataClient(runtime.NewScheme()), rules.BuiltinMapper())
	if _, err := r.PodsFor(context.Background(), DeploymentsGVR.GroupResource(), "shop", "web"); err == nil {
		t.Error("PodsFor before Start succeeded")
	}
}

// Every owner of the one table resolves to pods: a missing object is
// NotFound, not a resource the resolver cannot resolve.
func TestResolvesEveryPodOwner(t *testing.T) {
	r := newTestResolver(t, nil)
	for _, o := range podowners.All {
		if _, err := r.PodsFor(context.Background(), o.GVR.GroupResource(), "shop", "missing"); !apierrors.IsNotFound(err) {
			t.Errorf("PodsFor(%s) of a missing object: %v, want NotFound", o.Name(), err)
		}
	}
}

// listCounter counts the LISTs of one resource and refuses them.
type listCounter struct {
	mu    sync.Mutex
	lists int
}

func (l *listCounter) forbid(resource string) func(*kubefake.Clientset) {
	return func(c *kubefake.Clientset) {
		c.PrependReactor("list", resource, func(k8stesting.Action) (bool, runtime.Object, error) {
			l.mu.Lock()
			l.lists++
			l.mu.Unlock()
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: resource}, "", errors.New("RBAC says no"))
		})
	}
}

func (l *listCounter) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lists
}

// A resource the adapter may not list is not watched for the life of the
// process: its watch stops when its cache does not fill, requests for it
// are answered at once until RetryFailedAfter, and then it is tried again.
func TestAWatchThatCannotListStopsAndIsRetriedLater(t *testing.T) {
	var lists listCounter
	r := newTestResolver(t, nil, lists.forbid("deployments"))
	clock := clocktesting.NewFakeClock(time.Now())
	r.clock = clock
	r.syncTimeout = 300 * time.Millisecond
	ctx := context.Background()

	_, err := r.PodsFor(ctx, DeploymentsGVR.GroupResource(), "shop", "web")
	var ns *NotSyncedError
	if !errors.As(err, &ns) || ns.RetryAfter.IsZero() || !strings.Contains(err.Error(), "RBAC says no") {
		t.Fatalf("error = %v, want a NotSyncedError with RetryAfter, naming the cause", err)
	}
	if slices.Contains(watched(r), (Watch{GVR: DeploymentsGVR})) {
		t.Fatal("the failed watch is still running")
	}
	settled := lists.count()
	_, err = r.PodsFor(ctx, DeploymentsGVR.GroupResource(), "shop", "web")
	if !errors.As(err, &ns) || lists.count() != settled || len(watched(r)) != 1 {
		t.Fatalf("within the retry period: %v, %d more lists, watches %v; want the NotSyncedError at once, with no watch started",
			err, lists.count()-settled, watched(r))
	}
	// Nothing lists deployments any more (a reflector left running would
	// retry).
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 500*time.Millisecond, true, func(context.Context) (bool, error) {
		return lists.count() > settled+1, nil
	}); err == nil {
		t.Fatalf("deployments were listed %d times after the watch stopped", lists.count()-settled)
	}
	clock.Step(RetryFailedAfter + time.Second)
	before := lists.count()
	if _, err := r.PodsFor(ctx, DeploymentsGVR.GroupResource(), "shop", "web"); !errors.As(err, &ns) {
		t.Fatalf("after the retry period: %v, want the watch tried again and failing", err)
	}
	if lists.count() == before {
		t.Error("after the retry period, deployments were not listed again")
	}
}

// Retain stops the watches of resources no rule serves any more, and
// keeps the pods, the resource metrics API's watches and the Services of
// Ingresses.
func TestRetainStopsWhatNoRuleServes(t *testing.T) {
	r := newTestResolver(t, nil)
	ctx := context.Background()
	namespaces := schema.GroupResource{Resource: "namespaces"}
	if _, err := r.ObjectsMatching(ctx, namespaces, "", labels.Everything()); err != nil {
		t.Fatal(err)
	}
	for _, gvr := range []schema.GroupVersionResource{IngressesGVR, ServicesGVR} {
		if _, err := r.PodsFor(ctx, gvr.GroupResource(), "shop", "missing"); !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	if _, err := r.Metadata(ctx, Nodes, "", labels.Everything()); err != nil {
		t.Fatal(err)
	}
	stopped := r.watches[Watch{GVR: namespaces.WithVersion("v1")}].stopped
	r.Retain([]schema.GroupResource{IngressesGVR.GroupResource()})
	got := watched(r)
	slices.SortFunc(got, func(a, b Watch) int { return strings.Compare(a.String(), b.String()) })
	want := []Watch{{GVR: IngressesGVR}, Nodes, allPods, {GVR: ServicesGVR}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("watched after Retain (-want +got):\n%s", d)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Error("the namespaces informer did not stop")
	}
	r.Retain(nil)
	if got := watched(r); len(got) != 2 {
		t.Errorf("watched after Retain(nil): %v, want the pods and the nodes", got)
	}
}

// Requests cannot make the adapter watch more than MaxWatches resources.
func TestRequestsWatchABoundedNumberOfResources(t *testing.T) {
	r := newTestResolver(t, nil)
	r.maxWatches = 2
	ctx := context.Background()
	for _, gr := range []schema.GroupResource{{Resource: "namespaces"}, {Resource: "configmaps"}} {
		if _, err := r.ObjectsMatching(ctx, gr, "", labels.Everything()); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.ObjectsMatching(ctx, schema.GroupResource{Resource: "nodes"}, "", labels.Everything())
	if !errors.Is(err, ErrTooManyWatched) {
		t.Fatalf("a third resource: %v, want ErrTooManyWatched", err)
	}
	// The resource metrics API's watches do not count.
	if _, err := r.Metadata(ctx, Nodes, "", labels.Everything()); err != nil {
		t.Errorf("Nodes past the bound: %v", err)
	}
}

// The resource metrics API serves running pods only, as metrics-server and
// prometheus-adapter do: its watch asks the API server for them.
func TestRunningPodsAreWatchedWithTheirPhase(t *testing.T) {
	ctx, r, metaClient := startPodResolver(t, pod("shop", "web-1", nil))
	if _, err := r.Metadata(ctx, RunningPods, "shop", labels.Everything()); err != nil {
		t.Fatal(err)
	}
	var fieldSelectors []string
	for _, a := range metaClient.Actions() {
		if l, ok := a.(k8stesting.ListAction); ok && l.GetResource() == PodsGVR {
			fieldSelectors = append(fieldSelectors, l.GetListRestrictions().Fields.String())
		}
	}
	if !slices.Contains(fieldSelectors, "status.phase=Running") || !slices.Contains(fieldSelectors, "") {
		t.Errorf("pods were listed with field selectors %q, want the custom metrics' watch of every pod and the resource metrics' of running pods", fieldSelectors)
	}
}

// watched lists the resources r watches.
func watched(r *Resolver) []Watch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.watches))
}
