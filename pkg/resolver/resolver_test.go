package resolver

import (
	"context"
	"errors"
	"strings"
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
	kubefake "k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakemapper"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
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
	r := New(kube, metaClient, fakemapper.New())
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
	obj, exists, err := r.pods.Informer().GetStore().GetByKey("shop/web-1")
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
	inf, err := r.informer(context.Background(), DeploymentsGVR)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := inf.Lister().ByNamespace("shop").Get("web")
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
	r.SetSyncTimeout(500 * time.Millisecond)
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
	r := New(kubefake.NewClientset(), metadatafake.NewSimpleMetadataClient(runtime.NewScheme()), fakemapper.New())
	if _, err := r.PodsFor(context.Background(), DeploymentsGVR.GroupResource(), "shop", "web"); err == nil {
		t.Error("PodsFor before Start succeeded")
	}
}

// The rules file accepts in aggregateFromPods exactly what this package
// can resolve to pods.
func TestResolvesEveryPodOwnerTheConfigAccepts(t *testing.T) {
	if len(config.PodOwnerResources) != len(podOwners) {
		t.Errorf("config accepts %d pod owners, the resolver knows %d", len(config.PodOwnerResources), len(podOwners))
	}
	for _, name := range config.PodOwnerResources {
		if !CanResolve(schema.ParseGroupResource(name)) {
			t.Errorf("config accepts %s in aggregateFromPods, but the resolver cannot resolve it to pods", name)
		}
	}
}
