// Package integration runs the metrics provider against a real Prometheus
// server scraping real load-app processes on 127.0.0.1. Kubernetes objects
// come from client-go's fake clientsets: this suite proves the Prometheus
// side; test/e2e proves the whole path with a real API server and HPA.
package integration

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	kubefake "k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/custommetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resourcemetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// tolerance is how far a served rate may be from the rate the apps
// delivered (deliveredLoad, by their own counters): scrape timing inside a
// 10s window.
const tolerance = 0.15

var (
	ingresses   = schema.GroupResource{Group: "networking.k8s.io", Resource: "ingresses"}
	deployments = schema.GroupResource{Group: "apps", Resource: "deployments"}
)

func podMeta(name string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"app": "app"}},
	}
}

// processGroup skips (or fails, under LOCALSTACK_REQUIRED) without
// bin/prometheus, and returns a process group that is stopped when the
// test ends, its logs printed if it failed, and a folder for its files.
func processGroup(t *testing.T) (*localstack.Group, string) {
	t.Helper()
	return serversGroup(t, "prometheus")
}

// serversGroup is processGroup for tests that run other servers than
// Prometheus (bin/<name>).
func serversGroup(t *testing.T, servers ...string) (*localstack.Group, string) {
	t.Helper()
	if why := localstack.MissingServers(servers...); why != "" {
		if os.Getenv(localstack.RequireEnv) != "" {
			t.Fatal(why)
		}
		t.Skipf("%s; run 'make integration', which builds the servers first", why)
	}
	g := &localstack.Group{}
	t.Cleanup(func() {
		if t.Failed() {
			g.DumpLogs(os.Stderr, 40)
		}
		if err := g.StopAll(10 * time.Second); err != nil {
			t.Error(err)
		}
	})
	return g, t.TempDir()
}

func TestProviderAgainstRealPrometheus(t *testing.T) {
	g, dir := processGroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	appBin, err := localstack.Build(ctx, dir, "./app", "app")
	if err != nil {
		t.Fatal(err)
	}
	pods := []string{"app-a", "app-b", "app-c"}
	apps := map[string]*localstack.App{}
	var targets strings.Builder
	for _, name := range pods {
		a, err := localstack.StartApp(ctx, g, dir, name, appBin, "127.0.0.1", "--default-cpu=1ms")
		if err != nil {
			t.Fatal(err)
		}
		apps[name] = a
		fmt.Fprintf(&targets, "  - targets: [%q]\n    labels: {namespace: default, pod: %s, container: app, node: node-1}\n", strings.TrimPrefix(a.URL, "http://"), name)
	}
	prom, err := localstack.StartPrometheus(ctx, g, dir, fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: app
  static_configs:
%s`, targets.String()))
	if err != nil {
		t.Fatal(err)
	}

	// The built-in rules with the local stack's resourceRules (process
	// metrics), with a 10s window so the test need not wait a minute.
	set := compileRules(t, "[10s]")
	client, err := promclient.New(promclient.Config{URL: prom.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}

	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	metaClient := metadatafake.NewSimpleMetadataClient(scheme, podMeta("app-a"), podMeta("app-b"), podMeta("app-c"))
	kube := kubefake.NewClientset(
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app"},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "app"}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "app"}}},
		&networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "main-route"},
			Spec: networkingv1.IngressSpec{DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "app"}}}},
	)
	res := resolver.New(kube, metaClient, rules.BuiltinMapper())
	res.Start(ctx)
	if !res.WaitForPods(ctx) {
		t.Fatal("pod cache did not sync")
	}
	p := custommetrics.New(custommetrics.Config{Rules: set.Custom, Mapper: rules.BuiltinMapper(), Querier: client, Resolver: res})
	ep := externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: client})
	rp := resourcemetrics.New(resourcemetrics.Config{Rules: set.Resource, Querier: client, Objects: res})
	disc := discovery.New(discovery.Config{Queries: discovery.QueriesOf(append(slices.Clone(set.Custom), set.External...)).File, Lister: client, Interval: time.Second})
	disc.Subscribe(p.Update)
	disc.Subscribe(ep.Update)
	dctx, stopDiscovery := context.WithCancel(ctx)
	defer stopDiscovery()
	go disc.Run(dctx)

	// Offer 20 req/s to app-a and 10 req/s to app-b; app-c stays idle.
	// Served values are judged against what each app delivered.
	offered := map[string]float64{"app-a": 20, "app-b": 10, "app-c": 0}
	urls := map[string]string{}
	for name, a := range apps {
		urls[name] = a.URL
	}
	load := newDeliveredLoad(urls, offered, 10*time.Second)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var stats [2]loadgen.Stats
	for i, name := range []string{"app-a", "app-b"} {
		url := apps[name].URL
		go func() {
			_ = loadgen.Run(loadCtx, loadgen.Config{
				Targets:  func() []string { return []string{url} },
				Path:     "/",
				Rate:     loadgen.Constant(offered[name]),
				Duration: 3 * time.Minute,
			}, &stats[i])
		}()
	}

	sel := labels.SelectorFromSet(labels.Set{"app": "app"})
	podsInfo := provider.CustomMetricInfo{GroupResource: rules.Pods, Namespaced: true, Metric: "requests-per-second"}
	var list *custom_metrics.MetricValueList
	var reading *loadReading
	var lastErr, problem error
	err = wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, false, func(ctx context.Context) (bool, error) {
		if reading, lastErr = load.measure(ctx); lastErr != nil {
			return false, nil
		}
		list, lastErr = p.GetMetricBySelector(ctx, "default", sel, podsInfo, labels.Everything())
		if lastErr != nil {
			return false, nil
		}
		problem = ratesMatch(list, reading)
		return problem == nil, nil
	})
	if err != nil {
		t.Fatalf("pods metric never matched the delivered load: last error %v, last problem %v (load %s / %s)",
			lastErr, problem, stats[0].String(), stats[1].String())
	}
	t.Logf("pods/requests-per-second: %s", describe(list))
	for _, v := range list.Items {
		if v.WindowSeconds == nil || *v.WindowSeconds != 10 {
			t.Errorf("%s: window = %v, want 10s (the query's range)", v.DescribedObject.Name, v.WindowSeconds)
		}
		if age := time.Since(v.Timestamp.Time); age < 0 || age > 30*time.Second {
			t.Errorf("%s: timestamp %v is not the sample's recent time", v.DescribedObject.Name, v.Timestamp)
		}
	}

	// The objects' and the namespace's values: the load all the pods
	// delivered together.
	if reading, err = load.measure(ctx); err != nil {
		t.Fatal(err)
	}
	objects := []struct {
		info provider.CustomMetricInfo
		name types.NamespacedName
	}{
		{provider.CustomMetricInfo{GroupResource: deployments, Namespaced: true, Metric: "packets-per-second"}, types.NamespacedName{Namespace: "default", Name: "app"}},
		{provider.CustomMetricInfo{GroupResource: schema.GroupResource{Resource: "services"}, Namespaced: true, Metric: "requests-per-second"}, types.NamespacedName{Namespace: "default", Name: "app"}},
		{provider.CustomMetricInfo{GroupResource: rules.Namespaces, Metric: "requests-per-second"}, types.NamespacedName{Name: "default"}},
	}
	for _, o := range objects {
		v, err := p.GetMetricByName(ctx, o.name, o.info, labels.Everything())
		if err != nil {
			t.Errorf("%s %s: %v", o.info.GroupResource, o.name, err)
			continue
		}
		got := v.Value.AsApproximateFloat64()
		t.Logf("%s %s: %s = %.3f (%s)", o.info.GroupResource, o.name, o.info.Metric, got, reading.describe(pods...))
		if err := reading.check(fmt.Sprintf("%s %s: %s", o.info.GroupResource, o.name, o.info.Metric), got, pods...); err != nil {
			t.Error(err)
		}
	}

	// Ingresses are measured in front of the pods, by the ingress
	// controller's counter, and there is none here: the built-in rule
	// answers 0 (emptyIsZero), not the pods' rate.
	mainRoute := types.NamespacedName{Namespace: "default", Name: "main-route"}
	ingressRPS := provider.CustomMetricInfo{GroupResource: ingresses, Namespaced: true, Metric: "requests-per-second"}
	if v, err := p.GetMetricByName(ctx, mainRoute, ingressRPS, labels.Everything()); err != nil || !v.Value.IsZero() {
		t.Errorf("ingress main-route without an ingress controller: %+v, %v; want 0", v, err)
	}

	// External: the namespace's total rate, narrowed by a selector on the
	// series' container label.
	containerApp := labels.SelectorFromSet(labels.Set{"container": "app"})
	ext, err := ep.GetExternalMetric(ctx, "default", containerApp, provider.ExternalMetricInfo{Metric: "app_requests_per_second"})
	if err != nil {
		t.Errorf("external app_requests_per_second: %v", err)
	} else if len(ext.Items) != 1 {
		t.Errorf("external app_requests_per_second = %+v, want one value", ext.Items)
	} else if err := reading.check("external app_requests_per_second{container=app}", ext.Items[0].Value.AsApproximateFloat64(), pods...); err != nil {
		t.Error(err)
	} else {
		t.Logf("external app_requests_per_second{container=app} in default: %s (%s)", ext.Items[0].Value.String(), reading.describe(pods...))
	}
	if ext, err := ep.GetExternalMetric(ctx, "other", labels.Everything(), provider.ExternalMetricInfo{Metric: "app_requests_per_second"}); err != nil || len(ext.Items) != 0 {
		t.Errorf("external metric in a namespace without the app = %+v, %v; want no values", ext, err)
	}

	// Resource metrics: every pod's process, as PodMetrics; the node as
	// the sum of its pods. The loaded pods burn more CPU than the idle one.
	pms, err := rp.PodMetrics(ctx, []*metav1.PartialObjectMetadata{podMeta("app-a"), podMeta("app-b"), podMeta("app-c")})
	if err != nil {
		t.Fatalf("pod metrics: %v", err)
	}
	if len(pms) != 3 {
		t.Fatalf("pod metrics for %d pods, want 3: %+v", len(pms), pms)
	}
	cpuOf := map[string]float64{}
	for _, pm := range pms {
		if len(pm.Containers) != 1 || pm.Containers[0].Name != "app" {
			t.Errorf("%s: containers %+v, want one named app", pm.Name, pm.Containers)
			continue
		}
		cpu, mem := pm.Containers[0].Usage["cpu"], pm.Containers[0].Usage["memory"]
		cpuOf[pm.Name] = cpu.AsApproximateFloat64()
		t.Logf("pod %s: cpu %s, memory %s", pm.Name, cpu.String(), mem.String())
		if mem.Value() < 1<<20 || mem.Value() > 1<<30 {
			t.Errorf("%s: memory %s is not a load app's resident memory", pm.Name, mem.String())
		}
		if pm.Window.Duration != 10*time.Second {
			t.Errorf("%s: window %s, want 10s", pm.Name, pm.Window.Duration)
		}
	}
	if !(cpuOf["app-a"] > cpuOf["app-c"]) {
		t.Errorf("cpu: app-a (20 req/s) %.4f, app-c (idle) %.4f; want the loaded pod busier", cpuOf["app-a"], cpuOf["app-c"])
	}
	nms, err := rp.NodeMetrics(ctx, []*metav1.PartialObjectMetadata{{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}})
	if err != nil || len(nms) != 1 {
		t.Errorf("node metrics = %+v, %v; want node-1", nms, err)
	} else {
		mem := nms[0].Usage["memory"]
		var sum int64
		for _, pm := range pms {
			m := pm.Containers[0].Usage["memory"]
			sum += m.Value()
		}
		if diff := math.Abs(float64(mem.Value()-sum)) / float64(sum); diff > 0.1 {
			t.Errorf("node-1 memory %d, the sum of its pods' %d", mem.Value(), sum)
		}
	}

	// A metric selector reaches Prometheus as a matcher. The app's endpoint
	// label values are "/" and "/mem", so endpoint=mem matches no series:
	// the object has no data and is a 404, not a wrong number.
	memOnly, err := labels.Parse("endpoint in (mem)")
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.GetMetricByName(ctx, objects[1].name, objects[1].info, memOnly)
	if !apierrors.IsNotFound(err) {
		t.Errorf("object with a metric selector matching no series: error = %v, want 404", err)
	}

	// Prometheus gone: the provider says so, it does not return stale or
	// empty success.
	stopLoad()
	g.Remove(prom.Proc)
	if err := prom.Proc.Stop(10 * time.Second); err != nil {
		t.Error(err)
	}
	_, err = p.GetMetricBySelector(ctx, "default", sel, podsInfo, labels.Everything())
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("with Prometheus stopped: error = %v, want 503 naming the cause", err)
	}
}

// ratesMatch checks that every pod of the reading is served with the rate
// it delivered (reading.check: within tolerance, or 0.5 req/s for the idle
// pod).
func ratesMatch(list *custom_metrics.MetricValueList, reading *loadReading) error {
	if list == nil {
		return fmt.Errorf("no list")
	}
	got := map[string]float64{}
	for _, v := range list.Items {
		got[v.DescribedObject.Name] = v.Value.AsApproximateFloat64()
	}
	for _, pod := range slices.Sorted(maps.Keys(reading.offered)) {
		g, ok := got[pod]
		if !ok {
			return fmt.Errorf("%s missing from %s", pod, describe(list))
		}
		if err := reading.check("pod "+pod, g, pod); err != nil {
			return err
		}
	}
	return nil
}

func describe(list *custom_metrics.MetricValueList) string {
	if list == nil {
		return "<nil>"
	}
	var parts []string
	for _, v := range list.Items {
		parts = append(parts, fmt.Sprintf("%s=%s", v.DescribedObject.Name, v.Value.String()))
	}
	return strings.Join(parts, " ")
}

// compileRules compiles the built-in rules with the local stack's
// resourceRules, every range replaced by window.
func compileRules(t *testing.T, window string) *rules.Set {
	t.Helper()
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	local, err := os.ReadFile(filepath.Join(root, localstack.LocalResourceRules))
	if err != nil {
		t.Fatal(err)
	}
	def := string(config.DefaultYAML())
	def = def[:strings.Index(def, "\nresourceRules:")+1]
	text := strings.ReplaceAll(def+string(local), "[1m]", window)
	text = strings.ReplaceAll(text, "window: 1m", "window: "+strings.Trim(window, "[]"))
	cfg, err := config.Parse([]byte(text), "default-with-local-resource-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.CompileSet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return set
}
