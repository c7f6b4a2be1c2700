package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	cmv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestUpstreamForwarding: one APIService points at this adapter, and a real
// prometheus-adapter (bin/prometheus-adapter, localstack.UpstreamRules)
// stands behind it. Discovery lists both servers' metrics, this adapter's
// first; an HPA on a metric only prometheus-adapter serves scales out and
// back in through this adapter (the seed HPAs scale on this adapter's own
// metrics meanwhile); a caller without RBAC for the metric is refused here
// and never reaches the upstream; with the upstream stopped, only its
// metrics fail, 503 naming it.
func TestUpstreamForwarding(t *testing.T) {
	t.Parallel()
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	if stack.Upstream == nil {
		t.Fatal("the stack runs no upstream")
	}

	// Discovery: both sets, through the aggregator.
	dc := discovery.NewDiscoveryClientForConfigOrDie(stack.Admin)
	for gv, wants := range map[string][]string{
		"custom.metrics.k8s.io/v1beta2":   {"pods/upstream-requests-per-second", "pods/requests-per-second", "pods/packets-per-second"},
		"external.metrics.k8s.io/v1beta1": {"upstream_requests_per_second", "app_requests_per_second"},
	} {
		err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(context.Context) (bool, error) {
			rl, err := dc.ServerResourcesForGroupVersion(gv)
			if err != nil {
				return false, nil
			}
			for _, want := range wants {
				if !slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Name == want }) {
					return false, nil
				}
			}
			// A name on both is listed once.
			n := 0
			for _, r := range rl.APIResources {
				if r.Name == "pods/requests-per-second" {
					n++
				}
			}
			return n <= 1, nil
		})
		if err != nil {
			t.Fatalf("%s does not list %v once each", gv, wants)
		}
	}

	// Values: the upstream's metric comes from prometheus-adapter; a
	// metric both serve comes from this adapter (prometheus-adapter's rule
	// doubles it). Both are judged against the load the pods delivered
	// (the bound, 3/4, is that of the offered 20).
	const offered = 20.0
	_, stop := startLoad(t, ns, loadPath, offered)
	load := &deliveredLoad{namespace: ns}
	mc := stack.MetricsClient().NamespacedMetrics(ns)
	sel := labels.SelectorFromSet(labels.Set{"app": app})
	var ours, theirs, delivered float64
	var lastErr error
	served := func() bool { return ours > 0.75*delivered && theirs > 0.75*delivered }
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if delivered, lastErr = load.measure(ctx); lastErr != nil {
			return false, nil
		}
		o, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests-per-second", labels.Everything())
		if err == nil && len(o.Items) == 0 {
			err = fmt.Errorf("requests-per-second: no values")
		}
		if lastErr = err; err != nil {
			return false, nil
		}
		u, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "upstream-requests-per-second", labels.Everything())
		if err == nil && len(u.Items) == 0 {
			err = fmt.Errorf("upstream-requests-per-second: no values")
		}
		if lastErr = err; err != nil {
			return false, nil
		}
		ours, theirs = sumValues(o.Items), sumValues(u.Items)
		return served() && shortfall(ns, delivered, offered) == "", nil
	})
	stop()
	if err != nil {
		short := shortfall(ns, delivered, offered)
		switch {
		case lastErr != nil:
			t.Fatalf("through one APIService: requests-per-second %.1f, upstream-requests-per-second %.1f, delivered %.1f req/s; last error: %v", ours, theirs, delivered, lastErr)
		case served():
			t.Fatalf("through one APIService: %s: requests-per-second %.1f and upstream-requests-per-second %.1f are the load delivered, a shortfall of the load, not a wrong value", short, ours, theirs)
		default:
			if short != "" {
				short = " (" + short + ")"
			}
			t.Fatalf("served value wrong: through one APIService: requests-per-second %.1f, upstream-requests-per-second %.1f; want both above 3/4 of the %.1f req/s the pods delivered over the last minute%s", ours, theirs, delivered, short)
		}
	}
	t.Logf("through one APIService: requests-per-second %.1f, upstream-requests-per-second %.1f; the pods delivered %.1f req/s (offered %.0f)", ours, theirs, delivered, offered)
	if ratio := ours / theirs; ratio < 0.7 || ratio > 1.4 {
		t.Errorf("requests-per-second %.1f against prometheus-adapter's own rate %.1f: want this adapter's value, not the upstream's double", ours, theirs)
	}

	// An HPA on a metric only the upstream serves.
	const upstreamNS = "hpa-upstream"
	if err := stack.DeployApp(ctx, upstreamNS); err != nil {
		t.Fatal(err)
	}
	window := int32(20)
	hpa := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Namespace: upstreamNS, Name: app},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: app},
			MaxReplicas:    3,
			Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricSource{
				Metric: autoscalingv2.MetricIdentifier{Name: "upstream-requests-per-second"},
				Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: resource.NewQuantity(10, resource.DecimalSI)},
			}}},
			Behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleDown: &autoscalingv2.HPAScalingRules{StabilizationWindowSeconds: &window}},
		},
	}
	runHPA(t, ctx, hpa, loadPath, 30, 3)
	// Nothing else asks the upstream from here on.
	if err := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(upstreamNS).Delete(ctx, app, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// A caller without RBAC for the metric is refused by this adapter,
	// and nothing reaches the upstream.
	var before float64
	if err := wait.PollUntilContextTimeout(ctx, 6*time.Second, time.Minute, false, func(context.Context) (bool, error) {
		n := forwarded(ctx, t) // on the test's context, not the poll's deadline
		quiet := n == before
		before = n
		return quiet, nil
	}); err != nil {
		t.Fatalf("requests to the upstream did not stop after its HPA was deleted: %v", err)
	}
	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + ns + "/pods/*/upstream-requests-per-second?labelSelector=app%3D" + app
	code, body, err := stack.Get(ctx, "admin", stack.AdapterURL+path, http.Header{"Impersonate-User": {"no-metrics-rbac"}})
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusForbidden {
		t.Errorf("a caller without RBAC: %d %s, want 403", code, body)
	}
	if after := forwarded(ctx, t); after != before {
		t.Errorf("the refused request was forwarded: %v requests before, %v after", before, after)
	}

	// The upstream stopped: its metrics fail, 503 naming it; this
	// adapter's own are served.
	if err := stack.StopUpstream(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := stack.StartUpstream(context.Background()); err != nil {
			t.Errorf("restarting the upstream: %v", err)
		}
	}()
	code, out := rawGet(ctx, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/"+ns+"/pods/*/upstream-requests-per-second")
	if code != http.StatusServiceUnavailable || !strings.Contains(out, "upstream "+localstack.UpstreamName) {
		t.Errorf("the upstream's metric with the upstream stopped: %d %s, want 503 naming it", code, out)
	}
	if code, out := rawGet(ctx, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/"+ns+"/pods/*/requests-per-second"); code != http.StatusOK {
		t.Errorf("this adapter's metric with the upstream stopped: %d %s, want 200", code, out)
	}
	if _, err := dc.ServerResourcesForGroupVersion("custom.metrics.k8s.io/v1beta2"); err != nil {
		t.Errorf("discovery with the upstream stopped: %v", err)
	}
}

// forwarded is the adapter's count of requests forwarded to the upstream.
func forwarded(ctx context.Context, t *testing.T) float64 {
	t.Helper()
	mfs, err := adapterMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	if mf, ok := mfs["custom_metrics_adapter_upstream_requests_total"]; ok {
		for _, m := range mf.GetMetric() {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func sumValues(items []cmv1beta2.MetricValue) float64 {
	total := 0.0
	for _, v := range items {
		total += v.Value.AsApproximateFloat64()
	}
	return total
}
