package e2e

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// extraRule is the rule the reload test adds: a new metric from the
// app's series.
var extraRule = map[string]any{
	"seriesQuery": `app_requests_total{namespace!="",pod!=""}`,
	"resources": map[string]any{"overrides": map[string]any{
		"namespace": map[string]any{"resource": "namespace"},
		"pod":       map[string]any{"resource": "pod"},
	}},
	"name":         map[string]any{"matches": "^app_requests_total$", "as": "requests-per-minute"},
	"metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]) * 60) by (<<.GroupBy>>)",
}

// listsMetric reports whether the custom metrics API lists resource/metric.
func listsMetric(name string) (bool, error) {
	dc := discovery.NewDiscoveryClientForConfigOrDie(stack.Admin)
	rl, err := dc.ServerResourcesForGroupVersion("custom.metrics.k8s.io/v1beta2")
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Name == name }), nil
}

// adapterMetrics scrapes the adapter behind the APIServices.
func adapterMetrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	return stack.Metrics(ctx, stack.AdapterURL)
}

// TestRulesReloadLive changes the rules of the running adapter the way a
// ConfigMap update does: the new metric is listed and served without a
// restart; a broken file keeps every metric served and is reported; the
// original file is served again at the end. It runs before the parallel
// tests, so none of them meets a broken file.
func TestRulesReloadLive(t *testing.T) {
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	orig, err := os.ReadFile(stack.AdapterRules())
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(orig, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["rules"] = append(cfg["rules"].([]any), extraRule)
	withExtra, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			_ = stack.UpdateAdapterRules(orig)
		}
	})
	reloads := func(result string) float64 {
		mfs, err := adapterMetrics(ctx)
		if err != nil {
			return -1
		}
		v, _ := localstack.Sum(mfs, "custom_metrics_adapter_config_reloads_total", map[string]string{"result": result})
		return v
	}
	okBefore, failedBefore := reloads("success"), reloads("failure")

	// Throughout, a client asks for the original metric, as an HPA would:
	// no request may fail during the reloads.
	polled := make(chan [2]int)
	pollCtx, stopPolling := context.WithCancel(ctx)
	go func() {
		mc := stack.MetricsClient().NamespacedMetrics(ns)
		sel := labels.SelectorFromSet(labels.Set{"app": app})
		var n, failed int
		for pollCtx.Err() == nil {
			n++
			if _, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests-per-second", labels.Everything()); err != nil && pollCtx.Err() == nil {
				failed++
				t.Logf("request %d during the reloads failed: %v", n, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		polled <- [2]int{n, failed}
	}()
	defer func() {
		stopPolling()
		r := <-polled
		t.Logf("E2E-TIMING reload: %d requests for the original metric during the reloads, %d failed", r[0], r[1])
		if r[1] > 0 {
			t.Errorf("%d of %d requests failed during the reloads", r[1], r[0])
		}
	}()

	// 1. A new rule: listed and served, no restart.
	start := time.Now()
	if err := stack.UpdateAdapterRules(withExtra); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		ok, err := listsMetric("pods/requests-per-minute")
		lastErr = err
		return ok, nil
	}); err != nil {
		t.Fatalf("the new rule's metric was never listed (%v); adapter log:\n%s", lastErr, stack.Adapter.Tail(30))
	}
	listed := time.Since(start)
	mc := stack.MetricsClient().NamespacedMetrics(ns)
	sel := labels.SelectorFromSet(labels.Set{"app": app})
	list, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests-per-minute", labels.Everything())
	if err != nil || len(list.Items) == 0 {
		t.Fatalf("the new metric is listed but not served: %v %v", list, err)
	}
	t.Logf("E2E-TIMING reload: new rule listed %s after the ConfigMap-style update; served %s=%s", listed.Round(time.Millisecond),
		list.Items[0].DescribedObject.Name, list.Items[0].Value.String())
	if exited, err := stack.Adapter.Exited(); exited {
		t.Errorf("the adapter exited: %v", err)
	}

	// 2. A broken file: everything still served, the failure reported.
	broken := append(append([]byte{}, withExtra...), []byte("  metricQuery: typo\n")...)
	if err := stack.UpdateAdapterRules(broken); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return reloads("failure") > failedBefore, nil
	}); err != nil {
		t.Fatalf("the broken file's reload was never counted as failed; adapter log:\n%s", stack.Adapter.Tail(30))
	}
	mfs, err := adapterMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := localstack.Sum(mfs, "custom_metrics_adapter_config_last_reload_successful", nil); !ok || v != 0 {
		t.Errorf("custom_metrics_adapter_config_last_reload_successful = %v (present %v), want 0 after a broken file", v, ok)
	}
	if !strings.Contains(stack.Adapter.Tail(50), "Rules file rejected") {
		t.Errorf("the adapter's log does not say why the file was rejected:\n%s", stack.Adapter.Tail(50))
	}
	for _, metric := range []string{"requests-per-second", "requests-per-minute"} {
		if ok, err := listsMetric("pods/" + metric); !ok || err != nil {
			t.Errorf("after the broken file, pods/%s is not listed (%v)", metric, err)
		}
		if _, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, metric, labels.Everything()); err != nil {
			t.Errorf("after the broken file, pods/%s is not served: %v", metric, err)
		}
	}

	// 3. Back to the original rules.
	if err := stack.UpdateAdapterRules(orig); err != nil {
		t.Fatal(err)
	}
	restored = true
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		ok, err := listsMetric("pods/requests-per-minute")
		return err == nil && !ok, nil
	}); err != nil {
		t.Fatal("the original rules were never served again")
	}
	if got := reloads("success"); got < okBefore+2 {
		t.Errorf("custom_metrics_adapter_config_reloads_total{result=success} = %v, want at least %v", got, okBefore+2)
	}
}

// adapterCommand runs bin/adapter with args and returns its output and
// exit code.
func adapterCommand(ctx context.Context, args ...string) (string, int, error) {
	cmd := exec.CommandContext(ctx, stack.AdapterBinary, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return out.String() + errOut.String(), exit.ExitCode(), nil
	}
	return out.String() + errOut.String(), 0, err
}

// TestExplain explains a 200, a 404 and a 503 with `adapter explain` run
// with the adapter's own flags, and asks a running adapter's debug path.
func TestExplain(t *testing.T) {
	t.Parallel()
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pods, err := stack.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("listing the app's pods: %v", err)
	}
	pod := pods.Items[0].Name
	closed, err := localstack.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	down := "--prometheus-url=http://127.0.0.1:" + strconv.Itoa(closed)
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"200", []string{"pods/requests-per-second", "-n", ns, "-l", "app=" + app}, 0,
			[]string{"Rule:     rules[0] (series app_requests_total)", "pods matching \"app=app\" in namespace default", pod,
				`app_requests_total{namespace="default",pod=`, "Prometheus answered: ", "HTTP 200 OK", "requests-per-second = "}},
		{"404 no data", []string{"pods/" + pod + "/requests-per-second", "-n", ns, "--metric-selector", "endpoint=nothing"}, 3,
			[]string{"Rule:     rules[0]", `endpoint="nothing"`, "Prometheus answered: no series", "HTTP 404 Not Found"}},
		{"200 through pods", []string{"deployments.apps/" + app + "/requests-per-second", "-n", ns}, 0,
			[]string{"Rule:     rules[0]", "pods of deployments.apps default/" + app, pod, "by (namespace)", "HTTP 200 OK"}},
		{"200 external", []string{"external/app_requests_per_second", "-n", ns}, 0,
			[]string{"Rule:     externalRules[0]", `namespace="default"`, "HTTP 200 OK", "app_requests_per_second{"}},
		{"503 Prometheus down", []string{"pods/requests-per-second", "-n", ns, "-l", "app=" + app, down}, 3,
			[]string{"HTTP 503 Service Unavailable", "connection refused"}},
	} {
		args := append(append([]string{"explain"}, stack.AdapterConnectionArgs()...), tc.args...)
		out, code, err := adapterCommand(ctx, args...)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		t.Logf("adapter %s\n%s", strings.Join(tc.args, " "), out)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d", tc.name, code, tc.code)
		}
		for _, want := range tc.wants {
			if !strings.Contains(out, want) {
				t.Errorf("%s: the report lacks %q", tc.name, want)
			}
		}
	}

	// The debug path of the running adapter: the same report, to an
	// authorized caller only.
	path := "/debug/explain/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + ns + "/pods/*/requests-per-second?labelSelector=app%3D" + app
	for _, user := range []string{"admin", ""} {
		code, body, err := stack.Get(ctx, user, stack.AdapterURL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case user == "" && code != http.StatusUnauthorized && code != http.StatusForbidden:
			t.Errorf("anonymous GET %s: %d, want 401 or 403", path, code)
		case user == "admin" && (code != http.StatusOK || !strings.Contains(string(body), "HTTP 200 OK") ||
			!strings.Contains(string(body), "Rule:     rules[0]")):
			t.Errorf("GET %s as admin: %d\n%s", path, code, body)
		}
	}
}

// explainViewerRBAC lets the user explain-viewer reach /debug/explain,
// and nothing else.
const explainViewerRBAC = `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-explain-viewer}
rules:
- nonResourceURLs: ["/debug/explain/*"]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-explain-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-explain-viewer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: explain-viewer}]
`

// explainViewerMetricsRBAC lets explain-viewer read the namespace's custom
// metrics, as an HPA's controller may.
const explainViewerMetricsRBAC = `
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: e2e-explain-viewer-metrics, namespace: default}
rules:
- apiGroups: [custom.metrics.k8s.io]
  resources: ["*"]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: e2e-explain-viewer-metrics, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: e2e-explain-viewer-metrics}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: explain-viewer}]
`

// TestExplainIsAuthorizedAsTheRequestItExplains: a caller allowed on
// /debug/explain but not on a namespace's metrics gets 403 for their
// report (it holds the values and Prometheus' raw series), and the report
// once it may read them.
func TestExplainIsAuthorizedAsTheRequestItExplains(t *testing.T) {
	t.Parallel()
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := stack.Kubectl(ctx, []byte(explainViewerRBAC), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	path := "/debug/explain/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + ns + "/pods/*/requests-per-second?labelSelector=app%3D" + app
	// The admin impersonates the viewer: the adapter's filter chain
	// authenticates the request as explain-viewer.
	get := func(ctx context.Context) (int, string, error) {
		code, body, err := stack.Get(ctx, "admin", stack.AdapterURL+path, http.Header{"Impersonate-User": {"explain-viewer"}})
		return code, string(body), err
	}
	var code int
	var body string
	var getErr error
	// RBAC reaches the API server's authorizer, then the adapter's cache
	// of its answers: poll (each GET on the test's context, not the
	// poll's deadline; a failed GET is tried again).
	err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(context.Context) (bool, error) {
		code, body, getErr = get(ctx)
		return getErr == nil && code == http.StatusForbidden && strings.Contains(body, "explaining GET /apis/custom.metrics.k8s.io"), nil
	})
	if err != nil {
		t.Fatalf("without RBAC on the namespace's metrics: %d %s, want 403 naming the metrics API (%v)", code, body, getErr)
	}
	if strings.Contains(body, "Prometheus answered") {
		t.Fatalf("the refusal carries the report:\n%s", body)
	}
	if _, err := stack.Kubectl(ctx, []byte(explainViewerMetricsRBAC), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(context.Context) (bool, error) {
		code, body, getErr = get(ctx)
		return getErr == nil && code == http.StatusOK, nil
	})
	if err != nil || !strings.Contains(body, "Rule:     rules[0]") || !strings.Contains(body, "HTTP 200 OK") {
		t.Fatalf("with RBAC on the namespace's metrics: %d %s (%v, %v), want the report", code, body, err, getErr)
	}
}

// TestAdapterMetricsAreScraped reads the adapter's own metrics from the
// live adapter, after requests were served, and lints them.
func TestAdapterMetricsAreScraped(t *testing.T) {
	t.Parallel()
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mc := stack.MetricsClient().NamespacedMetrics(ns)
	if _, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, labels.SelectorFromSet(labels.Set{"app": app}), "requests-per-second", labels.Everything()); err != nil {
		t.Fatal(err)
	}
	mfs, err := adapterMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ours []*dto.MetricFamily
	for name, mf := range mfs {
		if strings.HasPrefix(name, "custom_metrics_adapter_") {
			ours = append(ours, mf)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(ours).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	now := float64(time.Now().UnixNano())/1e9 + 1
	for _, c := range []struct {
		name  string
		lbls  map[string]string
		check func(float64) bool
		want  string
	}{
		{"custom_metrics_adapter_prometheus_query_duration_seconds", map[string]string{"api": "custom", "rule": "rules[0]", "outcome": "ok"}, func(v float64) bool { return v >= 1 }, "at least one query"},
		{"custom_metrics_adapter_discovery_duration_seconds", nil, func(v float64) bool { return v >= 1 }, "at least one round"},
		{"custom_metrics_adapter_discovery_metrics", map[string]string{"api": "custom", "rule": "rules[0]"}, func(v float64) bool { return v >= 2 }, "the app's metrics"},
		{"custom_metrics_adapter_discovery_metrics", map[string]string{"api": "external", "rule": "externalRules[0]"}, func(v float64) bool { return v >= 1 }, "the external metric"},
		{"custom_metrics_adapter_discovery_last_success_timestamp_seconds", map[string]string{"api": "custom", "rule": "rules[0]"}, func(v float64) bool { return now-v < 120 }, "within the last 2 minutes"},
		{"custom_metrics_adapter_request_resolved_objects", map[string]string{"resource": "pods"}, func(v float64) bool { return v >= 1 }, "at least one request"},
		{"custom_metrics_adapter_informer_cached_objects", map[string]string{"resource": "pods"}, func(v float64) bool { return v >= 1 }, "the app's pods"},
		{"custom_metrics_adapter_config_last_reload_success_timestamp_seconds", nil, func(v float64) bool { return v > 0 && v <= now }, "the time the rules were loaded"},
	} {
		v, ok := localstack.Sum(mfs, c.name, c.lbls)
		if !ok || !c.check(v) {
			t.Errorf("%s%v = %v (present %v), want %s", c.name, c.lbls, v, ok, c.want)
		}
	}
}
