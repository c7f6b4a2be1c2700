package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

const (
	ns  = "default"
	app = "app"
	// loadPath keeps each request cheap: the load here is about request
	// counts, and the machine has two cores.
	loadPath = "/?cpu=1ms"
	// tolerance for served rates against offered ones: scrape timing inside
	// the rules' 1m window.
	tolerance = 0.2
)

var (
	appOnce sync.Once
	appErr  error
	ingress = schema.GroupKind{Group: "networking.k8s.io", Kind: "Ingress"}
)

// ensureApp applies manifests/app once and waits for its first pod and for
// the adapter to have discovered the app's metrics.
func ensureApp(t *testing.T) {
	t.Helper()
	appOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, appErr = stack.Kubectl(ctx, nil, "apply", "-k", "manifests/app"); appErr != nil {
			return
		}
		if appErr = waitReady(ctx, 1, 2*time.Minute); appErr != nil {
			return
		}
		dc := discovery.NewDiscoveryClientForConfigOrDie(stack.Admin)
		appErr = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			rl, err := dc.ServerResourcesForGroupVersion("custom.metrics.k8s.io/v1beta2")
			if err != nil {
				return false, nil
			}
			return slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Name == "pods/requests-per-second" }), nil
		})
		if appErr != nil {
			appErr = fmt.Errorf("the adapter never listed pods/requests-per-second: %w", appErr)
		}
	})
	if appErr != nil {
		t.Fatalf("deploying the app: %v", appErr)
	}
}

// waitReady waits until the app Deployment has exactly n ready replicas.
func waitReady(ctx context.Context, n int32, timeout time.Duration) error {
	var last int32
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := stack.Client.AppsV1().Deployments(ns).Get(ctx, app, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = d.Status.ReadyReplicas
		return d.Status.ReadyReplicas == n && d.Status.Replicas == n, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %d ready replicas of %s (last %d): %w", n, app, last, err)
	}
	return nil
}

// startLoad offers rate req/s spread over the app's Ready pods until the
// returned stop is called (or a bound passes).
func startLoad(t *testing.T, rate float64) (stats *loadgen.Stats, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	targets, err := localstack.ServiceTargets(ctx, stack.Client, ns, app)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	stats = &loadgen.Stats{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = loadgen.Run(ctx, loadgen.Config{Targets: targets, Path: loadPath, Rate: loadgen.Constant(rate), Duration: 10 * time.Minute}, stats)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			t.Logf("load at %.0f req/s: %s", rate, stats.String())
		})
	}
	t.Cleanup(stop)
	return stats, stop
}

func TestDiscoveryListsTheMetrics(t *testing.T) {
	ensureApp(t)
	dc := discovery.NewDiscoveryClientForConfigOrDie(stack.Admin)
	for _, gv := range []string{"custom.metrics.k8s.io/v1beta2", "custom.metrics.k8s.io/v1beta1"} {
		rl, err := dc.ServerResourcesForGroupVersion(gv)
		if err != nil {
			t.Fatalf("%s: %v", gv, err)
		}
		var names []string
		for _, r := range rl.APIResources {
			names = append(names, r.Name)
		}
		for _, want := range []string{
			"pods/requests-per-second", "pods/packets-per-second",
			"ingresses.networking.k8s.io/requests-per-second", "deployments.apps/requests-per-second",
			"services/packets-per-second", "namespaces/requests-per-second",
		} {
			if !slices.Contains(names, want) {
				t.Errorf("%s does not list %s; it lists %v", gv, want, names)
			}
		}
	}
}

func TestRequestsWithoutCredentialsAreRefused(t *testing.T) {
	ensureApp(t)
	anonymous, err := stack.HTTPClient("")
	if err != nil {
		t.Fatal(err)
	}
	const path = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second"
	for name, url := range map[string]string{
		"through the aggregator": stack.ServerURL + path,
		"straight to the adapter, without the aggregator's front-proxy certificate": stack.AdapterURL + path,
	} {
		resp, err := anonymous.Get(url)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 401 or 403; body %s", name, resp.StatusCode, body)
		}
		if strings.Contains(string(body), "MetricValueList") {
			t.Errorf("%s: metric values served without credentials: %s", name, body)
		}
	}
}

func TestServedValuesMatchTheOfferedLoad(t *testing.T) {
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := stack.Kubectl(ctx, nil, "scale", "deployment/"+app, "--replicas=2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = stack.Kubectl(context.Background(), nil, "scale", "deployment/"+app, "--replicas=1")
		_ = waitReady(context.Background(), 1, time.Minute)
	})
	if err := waitReady(ctx, 2, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	const rate = 20.0
	_, stop := startLoad(t, rate)
	defer stop()
	mc := stack.MetricsClient().NamespacedMetrics(ns)
	sel := labels.SelectorFromSet(labels.Set{"app": app})
	var problem string
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 3*time.Minute, false, func(ctx context.Context) (bool, error) {
		list, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests-per-second", labels.Everything())
		if err != nil {
			problem = err.Error()
			return false, nil
		}
		if len(list.Items) != 2 {
			problem = fmt.Sprintf("%d pods listed, want 2", len(list.Items))
			return false, nil
		}
		for _, v := range list.Items {
			if got := v.Value.AsApproximateFloat64(); math.Abs(got-rate/2) > tolerance*rate/2 {
				problem = fmt.Sprintf("pod %s: %.2f req/s, want %.0f", v.DescribedObject.Name, got, rate/2)
				return false, nil
			}
		}
		obj, err := mc.GetForObject(ingress, "main-route", "requests-per-second", labels.Everything())
		if err != nil {
			problem = err.Error()
			return false, nil
		}
		if got := obj.Value.AsApproximateFloat64(); math.Abs(got-rate) > tolerance*rate {
			problem = fmt.Sprintf("ingress main-route: %.2f req/s, want %.0f", got, rate)
			return false, nil
		}
		t.Logf("after %s of load: pods %s=%s %s=%s, ingress main-route=%s (offered %.0f req/s)",
			time.Since(start).Round(time.Second), list.Items[0].DescribedObject.Name, list.Items[0].Value.String(),
			list.Items[1].DescribedObject.Name, list.Items[1].Value.String(), obj.Value.String(), rate)
		if obj.WindowSeconds == nil || *obj.WindowSeconds != 60 {
			t.Errorf("window = %v, want 60 (the rules' [1m])", obj.WindowSeconds)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("served values never matched the offered load: %s", problem)
	}
}

// hpaFrom renders an HPA example from manifests/ and scales its target to
// what this machine can drive.
func hpaFrom(t *testing.T, dir string, edit func(*autoscalingv2.HorizontalPodAutoscaler)) *autoscalingv2.HorizontalPodAutoscaler {
	t.Helper()
	hpa, err := stack.RenderHPA(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	edit(hpa)
	// Shorter scale-down stabilization than the example's minute, so the
	// test sees the scale-in sooner; the rules' 1m window still applies.
	window := int32(20)
	hpa.Spec.Behavior.ScaleDown.StabilizationWindowSeconds = &window
	return hpa
}

// runHPA creates hpa, offers load, waits for a scale-out to at least
// scaleTo replicas, stops the load and waits for the scale-in to 1.
func runHPA(t *testing.T, hpa *autoscalingv2.HorizontalPodAutoscaler, rate float64, scaleTo int32) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	hpas := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(ns)
	_ = hpas.Delete(ctx, hpa.Name, metav1.DeleteOptions{})
	if _, err := hpas.Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hpas.Delete(context.Background(), hpa.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
	if err := waitReady(ctx, 1, time.Minute); err != nil {
		t.Fatal(err)
	}

	describe := func() string {
		h, err := hpas.Get(ctx, hpa.Name, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		var parts []string
		for _, m := range h.Status.CurrentMetrics {
			switch m.Type {
			case autoscalingv2.PodsMetricSourceType:
				parts = append(parts, fmt.Sprintf("%s=%s/pod", m.Pods.Metric.Name, m.Pods.Current.AverageValue.String()))
			case autoscalingv2.ObjectMetricSourceType:
				parts = append(parts, fmt.Sprintf("%s=%s", m.Object.Metric.Name, m.Object.Current.Value.String()))
			}
		}
		for _, c := range h.Status.Conditions {
			if c.Status != corev1.ConditionTrue || c.Type == autoscalingv2.ScalingLimited {
				parts = append(parts, fmt.Sprintf("%s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message))
			}
		}
		return fmt.Sprintf("replicas %d->%d %s", h.Status.CurrentReplicas, h.Status.DesiredReplicas, strings.Join(parts, " "))
	}

	_, stop := startLoad(t, rate)
	start := time.Now()
	var firstScaleUp time.Duration
	err := wait.PollUntilContextTimeout(ctx, time.Second, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := stack.Client.AppsV1().Deployments(ns).Get(ctx, app, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if firstScaleUp == 0 && *d.Spec.Replicas > 1 {
			firstScaleUp = time.Since(start)
			t.Logf("first scale-up %s after the load started: %s", firstScaleUp.Round(100*time.Millisecond), describe())
		}
		return d.Status.ReadyReplicas >= scaleTo, nil
	})
	if err != nil {
		t.Fatalf("no scale-out to %d replicas under %.0f req/s: %s", scaleTo, rate, describe())
	}
	t.Logf("scaled out to >= %d ready replicas %s after the load started: %s", scaleTo, time.Since(start).Round(time.Second), describe())
	fmt.Printf("E2E-TIMING %s: first scale-up %s after load start\n", t.Name(), firstScaleUp.Round(100*time.Millisecond))

	stop()
	start = time.Now()
	err = wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := stack.Client.AppsV1().Deployments(ns).Get(ctx, app, metav1.GetOptions{})
		return err == nil && *d.Spec.Replicas == 1 && d.Status.ReadyReplicas == 1, nil
	})
	if err != nil {
		t.Fatalf("no scale-in to 1 replica after the load stopped: %s", describe())
	}
	t.Logf("scaled back to 1 replica %s after the load stopped", time.Since(start).Round(time.Second))
}

func TestPodsMetricHPAScalesOutAndIn(t *testing.T) {
	ensureApp(t)
	hpa := hpaFrom(t, "manifests/hpa/pods", func(h *autoscalingv2.HorizontalPodAutoscaler) {
		m := &h.Spec.Metrics[0]
		if m.Type != autoscalingv2.PodsMetricSourceType || m.Pods.Metric.Name != "packets-per-second" || m.Pods.Target.Type != autoscalingv2.AverageValueMetricType {
			t.Fatalf("manifests/hpa/pods is not a Pods packets-per-second AverageValue HPA: %+v", m)
		}
		// 1k per pod in the example; 10 per pod here.
		m.Pods.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
		h.Spec.MaxReplicas = 4
	})
	// 30 req/s at 10 per pod: 3 pods.
	runHPA(t, hpa, 30, 3)
}

func TestObjectMetricHPAScalesOutAndIn(t *testing.T) {
	ensureApp(t)
	hpa := hpaFrom(t, "manifests/hpa/object", func(h *autoscalingv2.HorizontalPodAutoscaler) {
		m := &h.Spec.Metrics[0]
		if m.Type != autoscalingv2.ObjectMetricSourceType || m.Object.DescribedObject.Kind != "Ingress" ||
			m.Object.DescribedObject.Name != "main-route" || m.Object.Target.Type != autoscalingv2.ValueMetricType {
			t.Fatalf("manifests/hpa/object is not an Object Value HPA on Ingress main-route: %+v", m)
		}
		// 2k in the example; 20 here.
		m.Object.Target.Value = resource.NewQuantity(20, resource.DecimalSI)
		h.Spec.MaxReplicas = 3
	})
	// 40 req/s through main-route against a target of 20: the HPA doubles
	// the replicas until the maximum.
	runHPA(t, hpa, 40, 3)
}

// TestManifestsPassServerSideDryRun applies every kustomization under
// manifests/ with --dry-run=server, so the real API server validates every
// object (schemas, admission). Kinds the local server does not serve
// (cert-manager's) are listed and left out.
func TestManifestsPassServerSideDryRun(t *testing.T) {
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := filepath.Glob(filepath.Join(root, "manifests", "*", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	more, err := filepath.Glob(filepath.Join(root, "manifests", "*", "*", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dirs = append(dirs, more...)
	dc := discovery.NewDiscoveryClientForConfigOrDie(stack.Admin)
	served := map[string]bool{}
	isServed := func(apiVersion, kind string) bool {
		key := apiVersion + "/" + kind
		if v, ok := served[key]; ok {
			return v
		}
		rl, err := dc.ServerResourcesForGroupVersion(apiVersion)
		served[key] = err == nil && slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Kind == kind })
		return served[key]
	}
	checked := 0
	for _, k := range dirs {
		dir, err := filepath.Rel(root, filepath.Dir(k))
		if err != nil {
			t.Fatal(err)
		}
		t.Run(dir, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			objs, err := stack.Render(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			var keep []*unstructured.Unstructured
			for _, o := range objs {
				if !isServed(o.GetAPIVersion(), o.GetKind()) {
					t.Logf("%s %s: %s is not served by the local API server (no CRD); not validated", o.GetKind(), o.GetName(), o.GetAPIVersion())
					continue
				}
				keep = append(keep, o)
			}
			var buf strings.Builder
			for _, o := range keep {
				b, err := yaml.Marshal(o.Object)
				if err != nil {
					t.Fatal(err)
				}
				buf.WriteString("---\n")
				buf.Write(b)
			}
			out, err := stack.Kubectl(ctx, []byte(buf.String()), "apply", "--dry-run=server", "-f", "-")
			if err != nil {
				t.Fatalf("%s: %v", dir, err)
			}
			if n := strings.Count(string(out), "(server dry run)"); n != len(keep) {
				t.Errorf("%s: %d objects validated, want %d:\n%s", dir, n, len(keep), out)
			}
			checked += len(keep)
		})
	}
	if checked < 30 {
		t.Errorf("validated only %d objects", checked)
	}
}
