package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// failedGets are the events of an HPA that cannot read its metric: at zero
// replicas they mean it never leaves zero.
var failedGets = []string{"FailedGetObjectMetric", "FailedGetExternalMetric", "FailedComputeMetricsReplicas"}

// TestScaleToZeroAndBack runs the Object and the External HPA with
// minReplicas: 0 (localstack.ScaleToZeroHPAs) on the real HPA controller,
// side by side: idle, each takes its app to zero replicas with no
// FailedGet* event; with load through the local ingress, from zero to one
// ready replica and out; when the load stops, back to zero.
func TestScaleToZeroAndBack(t *testing.T) {
	t.Parallel()
	for _, h := range localstack.ScaleToZeroHPAs {
		t.Run(h.Namespace, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
			defer cancel()
			if err := stack.DeployApp(ctx, h.Namespace); err != nil {
				t.Fatal(err)
			}
			hpa, err := stack.HPA(ctx, h, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != 0 || len(hpa.Spec.Metrics) != 1 ||
				(hpa.Spec.Metrics[0].Type != autoscalingv2.ObjectMetricSourceType && hpa.Spec.Metrics[0].Type != autoscalingv2.ExternalMetricSourceType) {
				t.Fatalf("%s is not an Object or External HPA with minReplicas: 0: %+v", h.Dir, hpa.Spec)
			}
			runFromZero(ctx, t, hpa, h)
		})
	}
}

func runFromZero(ctx context.Context, t *testing.T, hpa *autoscalingv2.HorizontalPodAutoscaler, h localstack.SeedHPA) {
	t.Helper()
	describe := createHPA(ctx, t, hpa)

	// Idle: nothing comes through main-route, the metric is 0, and the HPA
	// takes the app from its one replica to zero.
	start := time.Now()
	if err := waitZero(ctx, h.Namespace, hpa.Name, 4*time.Minute); err != nil {
		t.Fatalf("idle, the app did not go to zero replicas (%v): %s", err, describe())
	}
	t.Logf("idle: at zero replicas %s after the HPA was created: %s", time.Since(start).Round(time.Second), describe())
	// It sits there: two more HPA syncs at zero, reading its metric.
	if _, err := localstack.HoldsFor(ctx, 15*time.Second, time.Second, func(ctx context.Context) error {
		d, err := stack.Client.AppsV1().Deployments(h.Namespace).Get(ctx, app, metav1.GetOptions{})
		if err == nil && *d.Spec.Replicas != 0 {
			err = fmt.Errorf("idle at zero, the HPA asked for %d replicas", *d.Spec.Replicas)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// No series must never fail the HPA: an answer without a value (an
	// empty list, a 404) is what keeps an HPA at zero for good.
	if evs := hpaEvents(ctx, t, h.Namespace, hpa.Name, failedGets...); len(evs) > 0 {
		t.Fatalf("idle, the HPA could not read its metric: %v; the adapter counted: %s", evs, adapterCounts(ctx))
	}

	// Load through the ingress: from zero to a ready replica, and out.
	_, stopLoad := startLoad(t, h.Namespace, h.Path, h.Rate)
	start = time.Now()
	firstReady, err := scaleOut(ctx, t, h.Namespace, h.ScaleTo, 500*time.Millisecond, 4*time.Minute, "first ready replica",
		func(d *appsv1.Deployment) bool { return d.Status.ReadyReplicas >= 1 }, describe)
	if err != nil {
		t.Fatalf("no scale from zero to %d ready replicas under %.0f req/s through main-route: %s", h.ScaleTo, h.Rate, describe())
	}
	t.Logf("%d ready replicas %s after the first request: %s", h.ScaleTo, time.Since(start).Round(time.Second), describe())

	// The load stops: back to zero.
	stopLoad()
	stopped := time.Now()
	if err := waitZero(ctx, h.Namespace, hpa.Name, 5*time.Minute); err != nil {
		t.Fatalf("no scale back to zero after the load stopped (%v): %s", err, describe())
	}
	back := time.Since(stopped)
	t.Logf("back at zero replicas %s after the last request: %s", back.Round(time.Second), describe())
	fmt.Printf("E2E-TIMING %s: first ready replica %s after the first request; zero replicas %s after the last request\n",
		t.Name(), firstReady.Round(100*time.Millisecond), back.Round(time.Second))
}

// waitZero waits until the app has no replicas and the HPA says it scaled
// it to zero.
func waitZero(ctx context.Context, namespace, hpa string, timeout time.Duration) error {
	return wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := stack.Client.AppsV1().Deployments(namespace).Get(ctx, app, metav1.GetOptions{})
		if err != nil || *d.Spec.Replicas != 0 || d.Status.Replicas != 0 {
			return false, nil
		}
		h, err := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(namespace).Get(ctx, hpa, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return slices.ContainsFunc(h.Status.Conditions, func(c autoscalingv2.HorizontalPodAutoscalerCondition) bool {
			return c.Type == autoscalingv2.ScaledToZero && c.Status == corev1.ConditionTrue
		}), nil
	})
}

// adapterCounts summarizes what the adapter counted of its external and
// custom metrics answers: queries by rule and outcome, and requests by
// group and code other than 200.
func adapterCounts(ctx context.Context) string {
	mfs, err := adapterMetrics(ctx)
	if err != nil {
		return err.Error()
	}
	var out []string
	for name, mf := range mfs {
		if name != "custom_metrics_adapter_prometheus_query_duration_seconds" && name != "apiserver_request_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			lbls := map[string]string{}
			for _, l := range m.GetLabel() {
				lbls[l.GetName()] = l.GetValue()
			}
			switch {
			case name == "apiserver_request_total" && strings.HasSuffix(lbls["group"], "metrics.k8s.io") && lbls["code"] != "200":
				out = append(out, fmt.Sprintf("%s %s %s: %.0f", lbls["group"], lbls["resource"], lbls["code"], m.GetCounter().GetValue()))
			case name != "apiserver_request_total" && lbls["outcome"] != "ok":
				out = append(out, fmt.Sprintf("%s %s %s: %d", lbls["api"], lbls["rule"], lbls["outcome"], m.GetHistogram().GetSampleCount()))
			}
		}
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// hpaEvents lists the events of an HPA with one of reasons.
func hpaEvents(ctx context.Context, t *testing.T, namespace, name string, reasons ...string) []string {
	t.Helper()
	evs, err := stack.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name=" + name,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs.Items {
		if slices.Contains(reasons, e.Reason) {
			out = append(out, e.Reason+": "+e.Message)
		}
	}
	return out
}
