package rules

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// BuiltinMapper returns a fixed REST mapping of the Kubernetes resources
// rules most often name: the core and apps resources, Ingresses, Nodes
// and ConfigMaps. It does no discovery: `adapter check-config` uses it when
// no cluster is at hand, and tests use it.
func BuiltinMapper() apimeta.RESTMapper {
	m := apimeta.NewDefaultRESTMapper(nil)
	for _, k := range []string{"Pod", "Service", "ConfigMap"} {
		m.Add(corev1.SchemeGroupVersion.WithKind(k), apimeta.RESTScopeNamespace)
	}
	for _, k := range []string{"Namespace", "Node"} {
		m.Add(corev1.SchemeGroupVersion.WithKind(k), apimeta.RESTScopeRoot)
	}
	for _, k := range []string{"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"} {
		m.Add(appsv1.SchemeGroupVersion.WithKind(k), apimeta.RESTScopeNamespace)
	}
	m.Add(networkingv1.SchemeGroupVersion.WithKind("Ingress"), apimeta.RESTScopeNamespace)
	return m
}

// Scope says whether the mapper knows gr, and whether it is namespaced.
func Scope(mapper apimeta.RESTMapper, gr schema.GroupResource) (namespaced, known bool) {
	gvk, err := mapper.KindFor(gr.WithVersion(""))
	if err != nil {
		return false, false
	}
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return false, false
	}
	return m.Scope.Name() == apimeta.RESTScopeNameNamespace, true
}
