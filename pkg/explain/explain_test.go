package explain

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/metrics/pkg/apis/metrics"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
)

// TestParseArgsAndPathAgree: each command line form becomes the API path
// an HPA sends, and that path parses back to the same request.
func TestParseArgsAndPathAgree(t *testing.T) {
	for _, tc := range []struct {
		arg, ns, sel, msel string
		path               string
	}{
		{"pods/requests-per-second", "default", "app=app", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second?labelSelector=app%3Dapp"},
		{"pod/app-1/requests-per-second", "shop", "", "endpoint=mem",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/app-1/requests-per-second?metricLabelSelector=endpoint%3Dmem"},
		{"Deployment/web/requests-per-second", "default", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/deployments.apps/web/requests-per-second"},
		{"ingresses.networking.k8s.io/main-route/requests-per-second", "default", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/ingresses.networking.k8s.io/main-route/requests-per-second"},
		{"namespaces/default/requests-per-second", "ignored", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/metrics/requests-per-second"},
		{"nodes/n1/cpu-rate", "ignored", "", "",
			"/apis/custom.metrics.k8s.io/v1beta2/nodes/n1/cpu-rate"},
		{"external/app_requests_per_second", "default", "", "endpoint=mem",
			"/apis/external.metrics.k8s.io/v1beta1/namespaces/default/app_requests_per_second?labelSelector=endpoint%3Dmem"},
	} {
		req, err := ParseArgs(tc.arg, tc.ns, tc.sel, tc.msel)
		if err != nil {
			t.Errorf("ParseArgs(%q): %v", tc.arg, err)
			continue
		}
		if got := req.Path(); got != tc.path {
			t.Errorf("ParseArgs(%q).Path() = %s, want %s", tc.arg, got, tc.path)
		}
		u, err := url.Parse(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePath(u.Path, u.Query())
		if err != nil {
			t.Errorf("ParsePath(%s): %v", tc.path, err)
			continue
		}
		if back.Path() != tc.path {
			t.Errorf("ParsePath(%s) comes back as %s", tc.path, back.Path())
		}
	}
}

func TestParseRejectsWhatIsNotARequest(t *testing.T) {
	for _, tc := range []struct{ arg, sel, msel, want string }{
		{"requests-per-second", "", "", "want RESOURCE/METRIC"},
		{"pods//requests-per-second", "", "", "want RESOURCE/METRIC"},
		{"a/b/c/d", "", "", "want RESOURCE/METRIC"},
		{"pods/app-1/requests-per-second", "app=app", "", "names one object"},
		{"external/x", "app=app", "", "--metric-selector"},
		{"namespaces/requests-per-second", "", "", "name the namespace"},
		{"pods/requests-per-second", "app in (", "", "--selector"},
		{"pods/requests-per-second", "", "endpoint=~x", "--metric-selector"},
	} {
		_, err := ParseArgs(tc.arg, "default", tc.sel, tc.msel)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseArgs(%q, %q, %q) = %v, want an error saying %q", tc.arg, tc.sel, tc.msel, err, tc.want)
		}
	}
	for _, p := range []string{"/", "/api/v1/pods", "/apis/apps/v1/deployments", "/apis/custom.metrics.k8s.io/v1beta2/a/b/c/d/e/f",
		"/apis/external.metrics.k8s.io/v1beta1/x", "/apis/custom.metrics.k8s.io/bogus/pods/p/m",
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/requests-per-second", "/apis/external.metrics.k8s.io/v1beta2/namespaces/default/m",
		"/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/external/*/m", "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods.metrics.k8s.io/*/m"} {
		if _, err := ParsePath(p, url.Values{}); err == nil {
			t.Errorf("ParsePath(%q) accepted it", p)
		}
	}
}

// TestParsePathKeepsTheVersion: a v1beta1 request is echoed as v1beta1.
func TestParsePathKeepsTheVersion(t *testing.T) {
	const p = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/requests-per-second"
	req, err := ParsePath(p, url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	if got := req.Path(); got != p {
		t.Errorf("Path() = %s, want %s", got, p)
	}
}

// The resource metrics API's forms, as kubectl top asks.
func TestResourceMetricsRequests(t *testing.T) {
	for _, tc := range []struct {
		arg, ns, sel string
		path         string
	}{
		{"pods.metrics.k8s.io", "default", "app=app", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dapp"},
		{"pod.metrics.k8s.io/web-1", "shop", "", "/apis/metrics.k8s.io/v1beta1/namespaces/shop/pods/web-1"},
		{"pods.metrics.k8s.io", "", "", "/apis/metrics.k8s.io/v1beta1/pods"},
		{"nodes.metrics.k8s.io", "ignored", "", "/apis/metrics.k8s.io/v1beta1/nodes"},
		{"nodes.metrics.k8s.io/node-1", "ignored", "", "/apis/metrics.k8s.io/v1beta1/nodes/node-1"},
	} {
		req, err := ParseArgs(tc.arg, tc.ns, tc.sel, "")
		if err != nil {
			t.Errorf("ParseArgs(%q): %v", tc.arg, err)
			continue
		}
		if got := req.Path(); got != tc.path {
			t.Errorf("ParseArgs(%q).Path() = %s, want %s", tc.arg, got, tc.path)
		}
		u, _ := url.Parse(tc.path)
		back, err := ParsePath(u.Path, u.Query())
		if err != nil || back.Path() != tc.path {
			t.Errorf("ParsePath(%s) = %s, %v", tc.path, back.Path(), err)
		}
	}
	for _, arg := range []string{"deployments.metrics.k8s.io", "pods.metrics.k8s.io/a/b"} {
		if _, err := ParseArgs(arg, "default", "", ""); err == nil {
			t.Errorf("ParseArgs(%q) accepted it", arg)
		}
	}
	if _, err := ParseArgs("pods.metrics.k8s.io", "default", "", "a=b"); err == nil {
		t.Error("a metric selector on the resource metrics API was accepted")
	}
}

// fakeResource serves one pod and one node.
type fakeResource struct{}

func (fakeResource) ListPods(ctx context.Context, namespace string, _ labels.Selector) ([]metrics.PodMetrics, error) {
	trace.From(ctx).Resolved("running pods in "+namespace, []string{"web-1"})
	trace.From(ctx).Queried(trace.Query{Rule: "resourceRules.cpu", Expr: `sum by (namespace,pod,container) (rate(x[1m]))`})
	return []metrics.PodMetrics{{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "web-1"},
		Containers: []metrics.ContainerMetrics{{Name: "app", Usage: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("64Mi")}}},
	}}, nil
}

func (fakeResource) GetPod(context.Context, string, string) (*metrics.PodMetrics, error) {
	return nil, apierrors.NewNotFound(schema.GroupResource{Group: "metrics.k8s.io", Resource: "pods"}, "x")
}

func (fakeResource) ListNodes(context.Context, labels.Selector) ([]metrics.NodeMetrics, error) {
	return nil, nil
}

func (fakeResource) GetNode(context.Context, string) (*metrics.NodeMetrics, error) {
	return &metrics.NodeMetrics{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Usage: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")}}, nil
}

func TestRunExplainsResourceMetrics(t *testing.T) {
	for _, tc := range []struct {
		arg   string
		code  int
		wants []string
	}{
		{"pods.metrics.k8s.io", 200, []string{"Resolved: 1 running pods in shop", "resourceRules.cpu", "shop/web-1 container app: cpu 250m, memory 64Mi"}},
		{"pods.metrics.k8s.io/x", 404, []string{"HTTP 404"}},
		{"nodes.metrics.k8s.io/node-1", 200, []string{"node node-1: cpu 2, memory 1Gi"}},
	} {
		req, err := ParseArgs(tc.arg, "shop", "", "")
		if err != nil {
			t.Fatal(err)
		}
		rep := Run(context.Background(), Providers{Resource: fakeResource{}}, req)
		var b strings.Builder
		if err := rep.Write(&b); err != nil {
			t.Fatal(err)
		}
		if rep.Code != tc.code {
			t.Errorf("%s: code %d, want %d\n%s", tc.arg, rep.Code, tc.code, b.String())
		}
		for _, want := range tc.wants {
			if !strings.Contains(b.String(), want) {
				t.Errorf("%s: the report lacks %q:\n%s", tc.arg, want, b.String())
			}
		}
	}
	rep := Run(context.Background(), Providers{}, Request{API: Resource, Resource: schema.GroupResource{Resource: "nodes"}, Name: "*"})
	if rep.Code != 404 {
		t.Errorf("without the resource metrics API: code %d, want 404", rep.Code)
	}
}

// A report holds a metric's values and Prometheus' raw series: it is
// served to a caller only if the caller may make the request it explains,
// authorized with the attributes the API server would use for it.
func TestHandlerAuthorizesTheRequestItExplains(t *testing.T) {
	var asked []authorizer.Attributes
	authz := authorizer.AuthorizerFunc(func(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
		asked = append(asked, a)
		if a.GetNamespace() == "team-a" {
			return authorizer.DecisionAllow, "", nil
		}
		return authorizer.DecisionNoOpinion, "no RBAC rule allows it", nil
	})
	h := Handler(Providers{Custom: nil, Resource: fakeResource{}}, authz)
	serve := func(path string, u user.Info) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if u != nil {
			req = req.WithContext(request.WithUser(req.Context(), u))
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	alice := &user.DefaultInfo{Name: "alice", Groups: []string{"team-a"}}
	const custom = "/debug/explain/apis/custom.metrics.k8s.io/v1beta2/namespaces/%s/pods/*/requests-per-second?labelSelector=app%%3Dapp"
	if rec := serve(fmt.Sprintf(custom, "team-b"), alice); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "no RBAC rule allows it") {
		t.Errorf("another team's metric: %d %s, want 403 with the reason", rec.Code, rec.Body)
	}
	if rec := serve(fmt.Sprintf(custom, "team-a"), alice); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "Request:  GET /apis/custom.metrics.k8s.io") {
		t.Errorf("its own team's metric: %d %s, want the report", rec.Code, rec.Body)
	}
	if rec := serve(fmt.Sprintf(custom, "team-a"), nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("no user: %d, want 401", rec.Code)
	}
	want := authorizer.AttributesRecord{User: alice, Verb: "get", Namespace: "team-b", APIGroup: "custom.metrics.k8s.io", APIVersion: "v1beta2",
		Resource: "pods", Subresource: "requests-per-second", Name: "*", ResourceRequest: true,
		Path: "/apis/custom.metrics.k8s.io/v1beta2/namespaces/team-b/pods/*/requests-per-second"}
	if d := cmp.Diff(want, asked[0]); d != "" {
		t.Errorf("attributes (-want +got):\n%s", d)
	}
	// External and resource metrics are authorized as their API paths too.
	serve("/debug/explain/apis/external.metrics.k8s.io/v1beta1/namespaces/team-b/queue_depth", alice)
	serve("/debug/explain/apis/metrics.k8s.io/v1beta1/namespaces/team-a/pods", alice)
	got := asked[len(asked)-2:]
	if a := got[0]; a.GetVerb() != "list" || a.GetAPIGroup() != "external.metrics.k8s.io" || a.GetResource() != "queue_depth" || a.GetNamespace() != "team-b" {
		t.Errorf("external: %+v", a)
	}
	if a := got[1]; a.GetVerb() != "list" || a.GetAPIGroup() != "metrics.k8s.io" || a.GetResource() != "pods" || a.GetNamespace() != "team-a" {
		t.Errorf("resource: %+v", a)
	}
}

type fakeForwarder struct{}

func (fakeForwarder) Forward(_ context.Context, req Request) *Forwarded {
	if req.Metric != "upstream-rps" {
		return nil
	}
	return &Forwarded{Upstream: "prometheus-adapter (10.0.0.9:443)", Code: 200, Body: []byte(`{"kind":"MetricValueList"}`)}
}

// A request the adapter's rules do not serve is reported as forwarded,
// with where to and the upstream's answer.
func TestRunReportsForwarding(t *testing.T) {
	req, err := ParseArgs("pods/upstream-rps", "shop", "app=web", "")
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(context.Background(), Providers{Upstreams: fakeForwarder{}}, req)
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Forwarded: to upstream prometheus-adapter (10.0.0.9:443)", "HTTP 200 OK (the upstream's", `"kind":"MetricValueList"`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, b.String())
		}
	}
	if rep := Run(context.Background(), Providers{Upstreams: fakeForwarder{}}, Request{API: Custom, Resource: schema.GroupResource{Resource: "pods"}, Name: "*", Metric: "ours"}); rep.Forwarded != nil || rep.Code != 404 {
		t.Errorf("a request not forwarded: %+v", rep)
	}
}
