package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// checks fail a test if a seed HPA example is not what the seed describes,
// by namespace of localstack.SeedHPAs.
var checks = map[string]func(t *testing.T, m *autoscalingv2.MetricSpec){
	"hpa-cpu": func(t *testing.T, m *autoscalingv2.MetricSpec) {
		if m.Type != autoscalingv2.ResourceMetricSourceType || m.Resource.Name != corev1.ResourceCPU ||
			m.Resource.Target.AverageUtilization == nil || *m.Resource.Target.AverageUtilization != 50 {
			t.Fatalf("manifests/hpa/cpu is not the seed's cpu 50%% HPA: %+v", m)
		}
	},
	"hpa-memory": func(t *testing.T, m *autoscalingv2.MetricSpec) {
		if m.Type != autoscalingv2.ResourceMetricSourceType || m.Resource.Name != corev1.ResourceMemory ||
			m.Resource.Target.AverageValue == nil || m.Resource.Target.AverageValue.Cmp(resource.MustParse("500Mi")) != 0 {
			t.Fatalf("manifests/hpa/memory is not the seed's memory 500Mi HPA: %+v", m)
		}
	},
	"hpa-pods": func(t *testing.T, m *autoscalingv2.MetricSpec) {
		if m.Type != autoscalingv2.PodsMetricSourceType || m.Pods.Metric.Name != "packets-per-second" || m.Pods.Target.Type != autoscalingv2.AverageValueMetricType {
			t.Fatalf("manifests/hpa/pods is not a Pods packets-per-second AverageValue HPA: %+v", m)
		}
	},
	"hpa-object": func(t *testing.T, m *autoscalingv2.MetricSpec) {
		if m.Type != autoscalingv2.ObjectMetricSourceType || m.Object.DescribedObject.Kind != "Ingress" ||
			m.Object.DescribedObject.Name != "main-route" || m.Object.Target.Type != autoscalingv2.ValueMetricType {
			t.Fatalf("manifests/hpa/object is not an Object Value HPA on Ingress main-route: %+v", m)
		}
	},
	"hpa-external": func(t *testing.T, m *autoscalingv2.MetricSpec) {
		if m.Type != autoscalingv2.ExternalMetricSourceType || m.External.Metric.Name != "app_requests_per_second" ||
			m.External.Metric.Selector == nil || m.External.Target.Type != autoscalingv2.AverageValueMetricType {
			t.Fatalf("manifests/hpa/external is not an External app_requests_per_second AverageValue HPA with a selector: %+v", m)
		}
	},
}

// TestSeedHPAsScaleOutAndIn runs the seed's CPU, memory, Pods, Object and
// External HPAs (localstack.SeedHPAs) side by side on the real HPA
// controller: each scales its own copy of the app out under load and back
// to one replica after it.
func TestSeedHPAsScaleOutAndIn(t *testing.T) {
	t.Parallel()
	for _, h := range localstack.SeedHPAs {
		t.Run(h.Namespace, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
			defer cancel()
			if err := stack.DeployApp(ctx, h.Namespace); err != nil {
				t.Fatal(err)
			}
			unscaled, err := stack.RenderHPA(ctx, h.Dir)
			if err != nil {
				t.Fatal(err)
			}
			check, ok := checks[h.Namespace]
			if !ok || len(unscaled.Spec.Metrics) != 1 {
				t.Fatalf("no check for %s, or it has %d metrics", h.Dir, len(unscaled.Spec.Metrics))
			}
			check(t, &unscaled.Spec.Metrics[0])
			// A shorter scale-down stabilization than the examples' minute,
			// so the scale-in comes sooner; the rules' 1m window still
			// applies.
			hpa, err := stack.HPA(ctx, h, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			runHPA(t, ctx, hpa, h.Path, h.Rate, h.ScaleTo)
		})
	}
}

// runHPA creates hpa, offers load, waits for a scale-out to at least
// scaleTo ready replicas, stops the load and waits for the scale-in to 1.
func runHPA(t *testing.T, ctx context.Context, hpa *autoscalingv2.HorizontalPodAutoscaler, path string, rate float64, scaleTo int32) {
	t.Helper()
	namespace := hpa.Namespace
	describe := createHPA(ctx, t, hpa)
	_, stop := startLoad(t, namespace, path, rate)
	start := time.Now()
	firstScaleUp, err := scaleOut(ctx, t, namespace, scaleTo, time.Second, 6*time.Minute, "first scale-up",
		func(d *appsv1.Deployment) bool { return *d.Spec.Replicas > 1 }, describe)
	if err != nil {
		t.Fatalf("no scale-out to %d replicas under %.1f req/s of %s: %s", scaleTo, rate, path, describe())
	}
	t.Logf("scaled out to >= %d ready replicas %s after the load started: %s", scaleTo, time.Since(start).Round(time.Second), describe())
	fmt.Printf("E2E-TIMING %s: first scale-up %s, %d replicas %s after load start\n",
		t.Name(), firstScaleUp.Round(100*time.Millisecond), scaleTo, time.Since(start).Round(time.Second))

	stop()
	start = time.Now()
	err = wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := stack.Client.AppsV1().Deployments(namespace).Get(ctx, app, metav1.GetOptions{})
		return err == nil && *d.Spec.Replicas == 1 && d.Status.ReadyReplicas == 1, nil
	})
	if err != nil {
		t.Fatalf("no scale-in to 1 replica after the load stopped: %s", describe())
	}
	t.Logf("scaled back to 1 replica %s after the load stopped", time.Since(start).Round(time.Second))
}

// createHPA creates hpa, deletes it when the test ends, and returns what
// describes it for messages.
func createHPA(ctx context.Context, t *testing.T, hpa *autoscalingv2.HorizontalPodAutoscaler) (describe func() string) {
	t.Helper()
	hpas := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(hpa.Namespace)
	if _, err := hpas.Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hpas.Delete(context.Background(), hpa.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
	return func() string { return describeHPA(ctx, hpa.Namespace, hpa.Name) }
}

// scaleOut waits, every interval up to timeout, until the app of namespace
// has scaleTo ready replicas, and logs the first time first held of its
// Deployment (what): it returns how long after the call that was.
func scaleOut(ctx context.Context, t *testing.T, namespace string, scaleTo int32, interval, timeout time.Duration, what string,
	first func(*appsv1.Deployment) bool, describe func() string) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	var took time.Duration
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := stack.Client.AppsV1().Deployments(namespace).Get(ctx, app, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if took == 0 && first(d) {
			took = time.Since(start)
			t.Logf("%s %s after the load started: %s", what, took.Round(100*time.Millisecond), describe())
		}
		return d.Status.ReadyReplicas >= scaleTo, nil
	})
	return took, err
}

// describeHPA renders an HPA's replicas, current metric and the
// conditions that are not plainly true, for failure messages and logs.
func describeHPA(ctx context.Context, namespace, name string) string {
	h, err := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	current, target := localstack.CurrentMetric(h)
	parts := []string{current + "/" + target}
	for _, c := range h.Status.Conditions {
		if c.Status != corev1.ConditionTrue || c.Type == autoscalingv2.ScalingLimited {
			parts = append(parts, fmt.Sprintf("%s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message))
		}
	}
	return fmt.Sprintf("replicas %d->%d %s", h.Status.CurrentReplicas, h.Status.DesiredReplicas, strings.Join(parts, " "))
}
