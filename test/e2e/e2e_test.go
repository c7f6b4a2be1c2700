package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
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
	// tolerance for served rates against delivered ones: scrape timing
	// inside the rules' 1m window.
	tolerance = 0.2
	// farShort: a delivered load below this share of the offered one is a
	// shortfall of the load (the machine too busy to deliver it), reported
	// as such by the checks that need the load they offer.
	farShort = 0.5
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
			// packets-per-second: the upstream prometheus-adapter serves
			// pods/requests-per-second too, and lists it before this
			// adapter's discovery has seen the app's series.
			return slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Name == "pods/packets-per-second" }), nil
		})
		if appErr != nil {
			appErr = fmt.Errorf("the adapter never listed pods/packets-per-second: %w", appErr)
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

// runAdapter starts one more adapter (stack.RunAdapter) for the test, and
// stops it when the test ends.
func runAdapter(ctx context.Context, t *testing.T, name, config string, extra ...string) *localstack.AdapterProcess {
	t.Helper()
	a, err := stack.RunAdapter(ctx, name, config, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stack.Procs.Remove(a.Process)
		if err := a.Stop(10 * time.Second); err != nil {
			t.Error(err)
		}
	})
	return a
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

// TestServedValuesMatchTheDeliveredLoad: the values the adapter serves
// for each pod and for the Ingress are the load the pods actually served
// over the rule's window, counted by each pod's own app_requests_total read
// straight from the pod (not through Prometheus). On a busy machine the
// load generator may deliver less than it offers: that shortfall is
// reported as such, and the served values are judged against what was
// delivered.
func TestServedValuesMatchTheDeliveredLoad(t *testing.T) {
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
	// Each pod's own count of the requests it served, every poll: the
	// delivered rate over the rule's window is the difference across it.
	type reading struct {
		at     time.Time
		served map[string]float64
	}
	var history []reading
	const window = time.Minute
	var problem string
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 4*time.Minute, false, func(ctx context.Context) (bool, error) {
		counts, err := podRequestCounts(ctx, ns)
		if err != nil {
			problem = err.Error()
			return false, nil
		}
		now := reading{at: time.Now(), served: counts}
		history = append(history, now)
		// The reading a window ago: the delivered rate is measured over the
		// same minute the rules' [1m] rate covers.
		var then *reading
		for i := range history {
			if now.at.Sub(history[i].at) >= window {
				then = &history[i]
			}
		}
		if then == nil {
			problem = "less than a minute of load yet"
			return false, nil
		}
		elapsed := now.at.Sub(then.at).Seconds()
		delivered := map[string]float64{}
		total := 0.0
		for pod, n := range now.served {
			delivered[pod] = (n - then.served[pod]) / elapsed
			total += delivered[pod]
		}
		list, err := mc.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests-per-second", labels.Everything())
		if err != nil {
			problem = err.Error()
			return false, nil
		}
		if len(list.Items) != 2 {
			problem = fmt.Sprintf("%d pods listed, want 2", len(list.Items))
			return false, nil
		}
		shortfall := ""
		if total < (1-tolerance)*rate {
			shortfall = fmt.Sprintf(" (the machine delivered %.1f of the %.0f req/s offered: a shortfall of the load, not of the adapter)", total, rate)
		}
		for _, v := range list.Items {
			want, ok := delivered[v.DescribedObject.Name]
			if got := v.Value.AsApproximateFloat64(); !ok || math.Abs(got-want) > tolerance*max(want, 1) {
				problem = fmt.Sprintf("pod %s: served %.2f req/s, delivered %.2f over the last minute%s", v.DescribedObject.Name, got, want, shortfall)
				return false, nil
			}
		}
		obj, err := mc.GetForObject(ingress, "main-route", "requests-per-second", labels.Everything())
		if err != nil {
			problem = err.Error()
			return false, nil
		}
		if got := obj.Value.AsApproximateFloat64(); math.Abs(got-total) > tolerance*max(total, 1) {
			problem = fmt.Sprintf("ingress main-route: served %.2f req/s, its pods delivered %.2f over the last minute%s", got, total, shortfall)
			return false, nil
		}
		t.Logf("after %s of load: pods %s=%s %s=%s, ingress main-route=%s; delivered %.2f req/s over the last minute (offered %.0f)%s",
			time.Since(start).Round(time.Second), list.Items[0].DescribedObject.Name, list.Items[0].Value.String(),
			list.Items[1].DescribedObject.Name, list.Items[1].Value.String(), obj.Value.String(), total, rate, shortfall)
		if obj.WindowSeconds == nil || *obj.WindowSeconds != 60 {
			t.Errorf("window = %v, want 60 (the rules' [1m])", obj.WindowSeconds)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("served values never matched the delivered load: %s", problem)
	}
}

// podRequestCounts reads app_requests_total{endpoint="/"} from each ready
// app pod of namespace, straight from the pod.
func podRequestCounts(ctx context.Context, namespace string) (map[string]float64, error) {
	pods, err := stack.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		mfs, err := stack.Metrics(ctx, "http://"+net.JoinHostPort(p.Status.PodIP, "8080"))
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.Name, err)
		}
		n, ok := localstack.Sum(mfs, "app_requests_total", map[string]string{"endpoint": "/"})
		if !ok {
			return nil, fmt.Errorf("pod %s exports no app_requests_total{endpoint=\"/\"}", p.Name)
		}
		out[p.Name] = n
	}
	return out, nil
}

// deliveredLoad measures the load the app pods of a namespace actually
// served, as TestServedValuesMatchTheDeliveredLoad does: each pod's own
// count (podRequestCounts), read at every call, the delivered rate being
// the difference across the rules' minute.
type deliveredLoad struct {
	namespace string
	history   []podCounts
}

// podCounts is one reading of every pod's count.
type podCounts struct {
	at     time.Time
	served map[string]float64
}

// measure reads the pods' counts now and returns the rate the namespace's
// pods served together since the latest earlier reading at least a minute
// old: called at each poll, its readings cover the rules' [1m]. Until it
// has been called over a minute, it returns an error saying so.
func (d *deliveredLoad) measure(ctx context.Context) (float64, error) {
	counts, err := podRequestCounts(ctx, d.namespace)
	if err != nil {
		return 0, err
	}
	now := podCounts{at: time.Now(), served: counts}
	d.history = append(d.history, now)
	then := -1
	for i := range d.history {
		if now.at.Sub(d.history[i].at) >= time.Minute {
			then = i
		}
	}
	if then < 0 {
		return 0, fmt.Errorf("less than a minute of load measured in %s yet", d.namespace)
	}
	d.history = d.history[then:]
	total := 0.0
	for pod, n := range now.served {
		total += n - d.history[0].served[pod]
	}
	return total / now.at.Sub(d.history[0].at).Seconds(), nil
}

// shortfall says, when delivered is far below offered (under farShort of
// it), that the namespace's load fell short: "" otherwise.
func shortfall(namespace string, delivered, offered float64) string {
	if delivered >= farShort*offered {
		return ""
	}
	return fmt.Sprintf("delivered load %.1f short of offered %.0f req/s in %s over the last minute", delivered, offered, namespace)
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
