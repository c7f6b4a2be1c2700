package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// tenants are the namespaces whose series Prometheus writes to Cortex,
// each as its own tenant (StackOptions.CortexTenants), and the tenant
// label of each namespace, which the adapter's cortex backend reads.
var tenants = map[string]string{"tenant-a": "team-a", "tenant-b": "team-b"}

// tenantRule serves the app's request rate from Cortex, as the tenant of
// the request's namespace.
var tenantRule = map[string]any{
	"seriesQuery": `app_requests_total{namespace!="",pod!=""}`,
	"backend":     localstack.CortexBackend,
	"resources": map[string]any{"overrides": map[string]any{
		"namespace": map[string]any{"resource": "namespace"}, "pod": map[string]any{"resource": "pod"},
	}},
	"name":         map[string]any{"matches": "^app_requests_total$", "as": "tenant-requests-per-second"},
	"metricsQuery": `sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)`,
}

// TestTenantPerNamespaceOnCortex: a real Cortex holds each namespace's
// series in its own tenant (Prometheus writes them there, one
// remote_write per tenant). HPAs in two namespaces scale on a Pods metric
// the adapter reads from Cortex as each namespace's tenant (its label
// tenant), to the replicas their load asks for; the values served equal
// what the same PromQL gives on Prometheus directly; explain names the
// tenant. A namespace without a tenant is refused with the reason, and
// Cortex never receives a request without one.
func TestTenantPerNamespaceOnCortex(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	load := map[string]struct {
		rate    float64
		scaleTo int32
	}{"tenant-a": {30, 3}, "tenant-b": {20, 2}}
	for ns, tenant := range tenants {
		if err := stack.DeployApp(ctx, ns); err != nil {
			t.Fatal(err)
		}
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, localstack.CortexTenantLabel, tenant)
		if _, err := stack.Kubectl(ctx, []byte(patch), "patch", "namespace", ns, "--type=merge", "--patch-file=/dev/stdin"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stack.Kubectl(ctx, nil, "create", "namespace", "tenant-none"); err != nil {
		t.Fatal(err)
	}

	t.Run("scale", func(t *testing.T) {
		for ns, l := range load {
			t.Run(ns, func(t *testing.T) {
				t.Parallel()
				target := resource.MustParse("10")
				one, four := int32(1), int32(4)
				window := int32(20)
				hpa := &autoscalingv2.HorizontalPodAutoscaler{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
					Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
						ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: app},
						MinReplicas:    &one, MaxReplicas: four,
						Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricSource{
							Metric: autoscalingv2.MetricIdentifier{Name: "tenant-requests-per-second"},
							Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: &target},
						}}},
						Behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{
							ScaleDown: &autoscalingv2.HPAScalingRules{StabilizationWindowSeconds: &window},
						},
					},
				}
				runHPA(t, ctx, hpa, localstack.LoadPath, l.rate, l.scaleTo)
			})
		}
	})

	// The values equal Prometheus' own for the same PromQL, each from
	// its namespace's tenant.
	prom, err := promclient.New(promclient.Config{URL: stack.Prometheus.URL, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for ns, l := range load {
		_, stop := startLoad(t, ns, localstack.LoadPath, l.rate/2)
		var served, direct float64
		var lastErr error
		if err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, false, func(ctx context.Context) (bool, error) {
			if served, lastErr = podsSum(ctx, ns, "tenant-requests-per-second"); lastErr != nil {
				return false, nil
			}
			vec, err := prom.Query(ctx, fmt.Sprintf(`sum(rate(app_requests_total{namespace=%q}[1m]))`, ns))
			if lastErr = err; err != nil || len(vec) != 1 {
				return false, nil
			}
			direct = float64(vec[0].Value)
			lastErr = fmt.Errorf("served %.2f from Cortex, Prometheus gives %.2f", served, direct)
			// Once the window holds the load, both agree.
			return direct > 0.4*l.rate/2 && math.Abs(served-direct) <= 0.05*direct, nil
		}); err != nil {
			t.Fatalf("%s: the served values never matched Prometheus' own: %v", ns, lastErr)
		}
		stop()
		t.Logf("%s: served %.2f req/s from Cortex as tenant %s; Prometheus: %.2f", ns, served, tenants[ns], direct)
	}

	// explain names the tenant.
	path := "/debug/explain/apis/custom.metrics.k8s.io/v1beta2/namespaces/tenant-a/pods/*/tenant-requests-per-second?labelSelector=app%3D" + app
	code, body, err := stack.Get(ctx, "admin", stack.AdapterURL+path, nil)
	if err != nil || code != http.StatusOK || !strings.Contains(string(body), "on backend cortex, as tenant team-a") {
		t.Errorf("explain: %d %v\n%s", code, err, body)
	}

	// The attack: a namespace without a tenant label asks. The request is
	// refused, saying why, and Cortex has never been asked anything
	// without a tenant (it answers those 401).
	refusedBefore := adapterCounter(ctx, t, "custom_metrics_adapter_prometheus_tenant_refused_total")
	code, msg := rawGet(ctx, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/tenant-none/pods/*/tenant-requests-per-second", "app="+app)
	if code != http.StatusForbidden || !strings.Contains(msg, "namespace tenant-none has no tenant on backend cortex") {
		t.Errorf("tenant-none: %d %s, want 403 saying it has no tenant", code, msg)
	}
	if after := adapterCounter(ctx, t, "custom_metrics_adapter_prometheus_tenant_refused_total"); after <= refusedBefore {
		t.Errorf("custom_metrics_adapter_prometheus_tenant_refused_total went from %v to %v, want a refusal counted", refusedBefore, after)
	}
	cortex, err := stack.Metrics(ctx, stack.Cortex.URL)
	if err != nil {
		t.Fatal(err)
	}
	var ok, unauthorized float64
	for _, m := range cortex["cortex_request_duration_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "status_code" && l.GetValue() == "401" {
				unauthorized += float64(m.GetHistogram().GetSampleCount())
			}
			if l.GetName() == "status_code" && l.GetValue() == "200" {
				ok += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	if ok == 0 || unauthorized != 0 {
		t.Errorf("Cortex answered %v requests 200 and %v 401 (no tenant): want many and none", ok, unauthorized)
	}
}

// adapterCounter is the sum of a counter of the adapter's metrics.
func adapterCounter(ctx context.Context, t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := adapterMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, m := range mfs[name].GetMetric() {
		sum += m.GetCounter().GetValue()
	}
	return sum
}
