// Package podowners is the one list (each entry an Owner) of the resources
// whose objects the adapter resolves to the pods behind them (a rule's
// resources.aggregateFromPods): the workloads, by their pod selector; a
// Service, by its selector; an Ingress, by the Services it routes to. The
// rules file's validation, the resolver's informers and its walk from an
// object to its pods, and explain all read this table, so a kind is
// accepted exactly where it can be resolved.
//
// It knows the API types and how to watch them; it keeps no state.
package podowners

import (
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	appsinformers "k8s.io/client-go/informers/apps/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Owner is one resource whose objects have pods behind them.
type Owner struct {
	GVR  schema.GroupVersionResource
	Kind string
	// NewInformer watches the resource's objects (typed: their pod
	// selectors are in their spec) in namespace, "" for all.
	NewInformer func(kube kubernetes.Interface, namespace string, resync time.Duration, indexers cache.Indexers) cache.SharedIndexInformer
	// selector is the label selector of an object's pods; nil when it
	// selects none. Nil for an Ingress, whose pods are its Services'.
	selector func(runtime.Object) (labels.Selector, error)
	// strip keeps of an object what finding its pods needs.
	strip func(runtime.Object) runtime.Object
}

// Name is the resource as the rules file writes it: "deployments.apps".
func (o Owner) Name() string { return o.GVR.GroupResource().String() }

// All lists the pod owners, in the order the docs give them.
var All = []Owner{
	workload(appsv1.SchemeGroupVersion.WithResource("deployments"), "Deployment", appsinformers.NewDeploymentInformer,
		func(o *appsv1.Deployment) *metav1.LabelSelector { return o.Spec.Selector },
		func(o *appsv1.Deployment) runtime.Object {
			return &appsv1.Deployment{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.DeploymentSpec{Selector: o.Spec.Selector}}
		}),
	workload(appsv1.SchemeGroupVersion.WithResource("replicasets"), "ReplicaSet", appsinformers.NewReplicaSetInformer,
		func(o *appsv1.ReplicaSet) *metav1.LabelSelector { return o.Spec.Selector },
		func(o *appsv1.ReplicaSet) runtime.Object {
			return &appsv1.ReplicaSet{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.ReplicaSetSpec{Selector: o.Spec.Selector}}
		}),
	workload(appsv1.SchemeGroupVersion.WithResource("statefulsets"), "StatefulSet", appsinformers.NewStatefulSetInformer,
		func(o *appsv1.StatefulSet) *metav1.LabelSelector { return o.Spec.Selector },
		func(o *appsv1.StatefulSet) runtime.Object {
			return &appsv1.StatefulSet{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.StatefulSetSpec{Selector: o.Spec.Selector}}
		}),
	workload(appsv1.SchemeGroupVersion.WithResource("daemonsets"), "DaemonSet", appsinformers.NewDaemonSetInformer,
		func(o *appsv1.DaemonSet) *metav1.LabelSelector { return o.Spec.Selector },
		func(o *appsv1.DaemonSet) runtime.Object {
			return &appsv1.DaemonSet{ObjectMeta: meta(o.ObjectMeta), Spec: appsv1.DaemonSetSpec{Selector: o.Spec.Selector}}
		}),
	Services,
	Ingresses,
}

// Services are resolved to the pods their selector matches; a Service
// without a selector (manually managed endpoints) has none.
var Services = Owner{
	GVR: corev1.SchemeGroupVersion.WithResource("services"), Kind: "Service", NewInformer: coreinformers.NewServiceInformer,
	selector: typed(func(o *corev1.Service) (labels.Selector, error) {
		if len(o.Spec.Selector) == 0 {
			return nil, nil
		}
		return labels.SelectorFromSet(o.Spec.Selector), nil
	}),
	strip: typedStrip(func(o *corev1.Service) runtime.Object {
		return &corev1.Service{ObjectMeta: meta(o.ObjectMeta), Spec: corev1.ServiceSpec{Selector: o.Spec.Selector}}
	}),
}

// Ingresses are resolved to the pods of every Service they route to
// (BackendServices).
var Ingresses = Owner{
	GVR: networkingv1.SchemeGroupVersion.WithResource("ingresses"), Kind: "Ingress", NewInformer: networkinginformers.NewIngressInformer,
	strip: typedStrip(func(o *networkingv1.Ingress) runtime.Object {
		return &networkingv1.Ingress{ObjectMeta: meta(o.ObjectMeta), Spec: networkingv1.IngressSpec{DefaultBackend: o.Spec.DefaultBackend, Rules: o.Spec.Rules}}
	}),
}

// workload is an owner whose pods its spec's label selector matches. An
// empty selector is invalid in the API: it never means every pod.
func workload[T runtime.Object](gvr schema.GroupVersionResource, kind string,
	newInformer func(kubernetes.Interface, string, time.Duration, cache.Indexers) cache.SharedIndexInformer,
	selector func(T) *metav1.LabelSelector, strip func(T) runtime.Object) Owner {
	return Owner{
		GVR: gvr, Kind: kind, NewInformer: newInformer,
		selector: typed(func(o T) (labels.Selector, error) {
			ls := selector(o)
			if ls == nil {
				return nil, nil
			}
			sel, err := metav1.LabelSelectorAsSelector(ls)
			if err != nil || sel.Empty() {
				return nil, err
			}
			return sel, nil
		}),
		strip: typedStrip(strip),
	}
}

func typed[T runtime.Object](f func(T) (labels.Selector, error)) func(runtime.Object) (labels.Selector, error) {
	return func(obj runtime.Object) (labels.Selector, error) {
		o, ok := obj.(T)
		if !ok {
			return nil, fmt.Errorf("unexpected %T", obj)
		}
		return f(o)
	}
}

func typedStrip[T runtime.Object](f func(T) runtime.Object) func(runtime.Object) runtime.Object {
	return func(obj runtime.Object) runtime.Object {
		if o, ok := obj.(T); ok {
			return f(o)
		}
		return obj
	}
}

func meta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Labels: m.Labels}
}

// PodSelector returns the label selector of obj's pods, nil when it
// selects none. It fails for an Ingress (its pods are its Services') and
// for a selector the API would not accept.
func (o Owner) PodSelector(obj runtime.Object) (labels.Selector, error) {
	if o.selector == nil {
		return nil, fmt.Errorf("%s: pods are found through its Services", o.Kind)
	}
	return o.selector(obj)
}

// Strip is the informer's transform: it keeps an object's name,
// namespace, labels, UID and resource version, and what selects its pods,
// dropping pod templates, status and managed fields.
func (o Owner) Strip(obj any) (any, error) {
	if ro, ok := obj.(runtime.Object); ok {
		return o.strip(ro), nil
	}
	return obj, nil
}

// For returns the owner of gr.
func For(gr schema.GroupResource) (Owner, bool) {
	i := slices.IndexFunc(All, func(o Owner) bool { return o.GVR.GroupResource() == gr })
	if i < 0 {
		return Owner{}, false
	}
	return All[i], true
}

// Lookup finds an owner by the names the rules file accepts: the
// resource, plural or singular, or the kind, with or without its group
// ("deployments.apps", "deployment", "Deployment", "ingress").
func Lookup(name string) (Owner, bool) {
	n := strings.ToLower(strings.TrimSpace(name))
	resource, group, _ := strings.Cut(n, ".")
	for _, o := range All {
		if (resource == o.GVR.Resource || resource == strings.ToLower(o.Kind)) && (group == "" || group == o.GVR.Group) {
			return o, true
		}
	}
	return Owner{}, false
}

// Names lists the owners as the rules file writes them.
func Names() []string {
	out := make([]string, len(All))
	for i, o := range All {
		out[i] = o.Name()
	}
	return out
}

// BackendServices returns the names of the Services an Ingress routes to
// (rules and default backend), sorted and without duplicates.
func BackendServices(ing *networkingv1.Ingress) []string {
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
