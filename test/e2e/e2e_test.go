package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

const (
	ns       = "default"
	app      = "app"
	loadPath = localstack.LoadPath
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
		if appErr = waitReady(ctx, ns, 1, 2*time.Minute); appErr != nil {
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

// waitReady waits until the app Deployment of namespace has exactly n
// ready replicas.
func waitReady(ctx context.Context, namespace string, n int32, timeout time.Duration) error {
	return stack.WaitReady(ctx, namespace, app, n, timeout)
}

// startLoad requests path at rate req/s through the namespace's Ingress
// main-route (the local ingress spreads it over the Ready pods of the app
// Service), until the returned stop is called (or a bound passes).
func startLoad(t *testing.T, namespace, path string, rate float64) (stats *loadgen.Stats, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ingressURL, err := localstack.IngressURL(ctx, stack.Client, namespace, "main-route", time.Minute)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	targets := func() []string { return []string{ingressURL} }
	stats = &loadgen.Stats{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = loadgen.Run(ctx, loadgen.Config{Targets: targets, Path: path, Rate: loadgen.Constant(rate), Duration: 10 * time.Minute}, stats)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			t.Logf("load on %s%s at %.1f req/s: %s", namespace, path, rate, stats.String())
		})
	}
	t.Cleanup(stop)
	return stats, stop
}

func TestDiscoveryListsTheMetrics(t *testing.T) {
	ensureApp(t)
	dc := discovery.NewDiscoveryClientForConfigOrDie(stack.Admin)
	custom := []string{
		"pods/requests-per-second", "pods/packets-per-second",
		"ingresses.networking.k8s.io/requests-per-second", "deployments.apps/requests-per-second",
		"services/packets-per-second", "namespaces/requests-per-second",
	}
	for gv, wants := range map[string][]string{
		"custom.metrics.k8s.io/v1beta2":   custom,
		"custom.metrics.k8s.io/v1beta1":   custom,
		"external.metrics.k8s.io/v1beta1": {"app_requests_per_second"},
		"metrics.k8s.io/v1beta1":          {"pods", "nodes"},
	} {
		rl, err := dc.ServerResourcesForGroupVersion(gv)
		if err != nil {
			t.Errorf("%s: %v", gv, err)
			continue
		}
		var names []string
		for _, r := range rl.APIResources {
			names = append(names, r.Name)
		}
		for _, want := range wants {
			if !slices.Contains(names, want) {
				t.Errorf("%s does not list %s; it lists %v", gv, want, names)
			}
		}
	}
}

// TestKubectlTop runs kubectl top against the local stack: the resource
// metrics API serves the app's pods and the node, without metrics-server.
func TestKubectlTop(t *testing.T) {
	ensureApp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pods, err := stack.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("listing the app's pods: %v (%d)", err, len(pods.Items))
	}
	for _, args := range [][]string{{"top", "pods", "-n", ns}, {"top", "nodes"}} {
		var out []byte
		var lastErr error
		err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			out, lastErr = stack.Kubectl(ctx, nil, args...)
			return lastErr == nil, nil
		})
		if err != nil {
			t.Errorf("kubectl %s: %v", strings.Join(args, " "), lastErr)
			continue
		}
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if !strings.Contains(lines[0], "CPU(cores)") || !strings.Contains(lines[0], "MEMORY(bytes)") {
			t.Errorf("kubectl %s: header %q", strings.Join(args, " "), lines[0])
		}
		want := "local-node"
		if args[1] == "pods" {
			want = pods.Items[0].Name
		}
		// pods: NAME CPU MEMORY; nodes: NAME CPU CPU% MEMORY MEMORY%.
		row := regexp.MustCompile(`^` + regexp.QuoteMeta(want) + `\s+\d+m\s+(\d+%\s+)?\d+(Ki|Mi|Gi)\b`)
		if !slices.ContainsFunc(lines[1:], row.MatchString) {
			t.Errorf("kubectl %s does not show %s with its CPU (m) and memory (Mi):\n%s", strings.Join(args, " "), want, out)
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
		_ = waitReady(context.Background(), ns, 1, time.Minute)
	})
	if err := waitReady(ctx, ns, 2, 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	const rate = 20.0
	_, stop := startLoad(t, ns, loadPath, rate)
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
	// dryRun validates objs with kubectl apply --dry-run=server, leaving out
	// the kinds the local API server does not serve.
	dryRun := func(t *testing.T, ctx context.Context, what string, objs []*unstructured.Unstructured) {
		t.Helper()
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
			t.Fatalf("%s: %v", what, err)
		}
		if n := strings.Count(string(out), "(server dry run)"); n != len(keep) {
			t.Errorf("%s: %d objects validated, want %d:\n%s", what, n, len(keep), out)
		}
		checked += len(keep)
	}
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
			dryRun(t, ctx, dir, objs)
		})
	}
	// The Helm chart, with its defaults and with each values file under
	// its ci/ (prometheus-adapter's style; every API with cert-manager).
	for _, values := range [][]string{nil, {localstack.ChartPrometheusAdapterValues}, {localstack.ChartEveryAPIValues}} {
		name := "helm/defaults"
		if len(values) > 0 {
			name = "helm/" + strings.TrimSuffix(filepath.Base(values[0]), ".yaml")
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := localstack.RenderChart(root, values...)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := localstack.SplitYAML(out)
			if err != nil {
				t.Fatal(err)
			}
			dryRun(t, ctx, name, objs)
		})
	}
	if checked < 75 {
		t.Errorf("validated only %d objects", checked)
	}
}
