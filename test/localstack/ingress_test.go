package localstack

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	kubefake "k8s.io/client-go/kubernetes/fake"
)

// The local ingress proxies to a ready pod behind the Ingress' Service,
// answers 503 with no ready pod, and counts both, as ingress-nginx does.
func TestIngressController(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "app "+r.URL.Path) }))
	defer app.Close()
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	prefix := networkingv1.PathTypePrefix
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(p)}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	client := kubefake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}, Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}},
		&networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "main-route"}, Spec: networkingv1.IngressSpec{
			Rules: []networkingv1.IngressRule{{IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{
				{Path: "/", PathType: &prefix, Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Name: "http"}}}},
			}}}}}}},
		pod,
	)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ic := &IngressController{Client: client}
	if err := ic.Start(ctx); err != nil {
		t.Fatal(err)
	}
	base, err := IngressURL(ctx, client, "shop", "main-route", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(base + "/x"); code != 200 || body != "app /x" {
		t.Errorf("through the ingress: %d %q, want the pod's answer", code, body)
	}
	if err := client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var code int
	var body string
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		code, body = get(base + "/x")
		return code == http.StatusServiceUnavailable, nil
	}); err != nil {
		t.Fatalf("with no pod: %d %q, want 503", code, body)
	}
	_, metrics := get("http://" + ic.MetricsAddr + "/metrics")
	for _, want := range []string{
		`nginx_ingress_controller_requests{ingress="main-route",namespace="shop",service="web",status="200"} 1`,
		`nginx_ingress_controller_requests{ingress="main-route",namespace="shop",service="web",status="503"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, metrics)
		}
	}
	cancel()
	select {
	case <-ic.Done():
	case <-time.After(10 * time.Second):
		t.Error("the listeners did not close")
	}
}

// A named target port is the first container port of that name, as the
// EndpointSlice controller picks it: with two containers naming a port
// "http", the first container's.
func TestTargetPortIsTheFirstOfItsName(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "app", Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}, {Name: "http", ContainerPort: 8080}}},
		{Name: "sidecar", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 15001}}},
	}}}
	for _, tc := range []struct {
		port corev1.ServicePort
		want int
	}{
		{corev1.ServicePort{Port: 80, TargetPort: intstr.FromString("http")}, 8080},
		{corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(9999)}, 9999},
		{corev1.ServicePort{Port: 80}, 80},
	} {
		if got := targetPort(tc.port, pod); got != tc.want {
			t.Errorf("targetPort(%v) = %d, want %d", tc.port.TargetPort, got, tc.want)
		}
	}
}
