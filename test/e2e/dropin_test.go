package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	"k8s.io/metrics/pkg/apis/external_metrics/v1beta1"
	metricsv1beta1 "k8s.io/metrics/pkg/apis/metrics/v1beta1"
)

// TestPrometheusAdapterConfigIsServedInFull runs a second adapter with an
// unchanged prometheus-adapter config that uses all three sections
// (testdata/prometheus-adapter-config.yaml) and prometheus-adapter's own
// flags, and checks that it lists exactly the metrics the config describes
// and serves a value for each.
func TestPrometheusAdapterConfigIsServedInFull(t *testing.T) {
	const namespace = "pa-config"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := stack.DeployApp(ctx, namespace); err != nil {
		t.Fatal(err)
	}

	cfg, err := filepath.Abs("testdata/prometheus-adapter-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := runAdapter(ctx, t, "adapter-pa-config", cfg,
		"--metrics-relist-interval=5s", "--metrics-max-age=30s", "--prometheus-verb=GET",
		"--prometheus-header=X-Scope-OrgID=e2e", "--disable-http2")
	get := func(ctx context.Context, path string, into any) error {
		code, body, err := stack.Get(ctx, "admin", a.URL+path, nil)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", path, code, body)
		}
		return json.Unmarshal(body, into)
	}
	resources := func(ctx context.Context, gv string) []string {
		var rl metav1.APIResourceList
		if err := get(ctx, "/apis/"+gv, &rl); err != nil {
			return []string{err.Error()}
		}
		var names []string
		for _, r := range rl.APIResources {
			names = append(names, r.Name)
		}
		slices.Sort(names)
		return names
	}

	// The first rule matches app_requests_total only: the app's other
	// counter is a histogram's _count, not a _total.
	wantCustom := []string{
		"namespaces/app_requests_per_second", "namespaces/go_goroutines",
		"nodes/node_process_memory_bytes",
		"pods/app_requests_per_second", "pods/go_goroutines",
	}
	wantExternal := []string{"app_requests_rate", "process_open_fds"}
	var gotCustom, gotExternal []string
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		gotCustom, gotExternal = resources(ctx, "custom.metrics.k8s.io/v1beta2"), resources(ctx, "external.metrics.k8s.io/v1beta1")
		return slices.Equal(gotCustom, wantCustom) && slices.Equal(gotExternal, wantExternal), nil
	}); err != nil {
		t.Fatalf("discovery lists\n  custom %v\n  external %v\nwant\n  custom %v\n  external %v", gotCustom, gotExternal, wantCustom, wantExternal)
	}
	if got := resources(ctx, "metrics.k8s.io/v1beta1"); !slices.Equal(got, []string{"nodes", "pods"}) {
		t.Errorf("metrics.k8s.io/v1beta1 lists %v, want nodes and pods", got)
	}

	// A value for every metric: the pod metrics of the app's pod, its
	// namespace's, the node's; both external metrics; the pod's and the
	// node's resource usage. Rates need two scrapes inside their window.
	paths := map[string]func() (int, error){}
	for _, m := range wantCustom {
		resource, metric, _ := strings.Cut(m, "/")
		var path string
		switch resource {
		case "pods":
			path = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/pods/*/" + metric + "?labelSelector=" + url.QueryEscape("app=app")
		case "namespaces":
			path = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/metrics/" + metric
		case "nodes":
			path = "/apis/custom.metrics.k8s.io/v1beta2/nodes/local-node/" + metric
		}
		paths[path] = func() (int, error) {
			if resource == "pods" {
				var list v1beta2.MetricValueList
				err := get(ctx, path, &list)
				return len(list.Items), err
			}
			var v v1beta2.MetricValue
			err := get(ctx, path, &v)
			return 1, err
		}
	}
	for _, m := range wantExternal {
		path := "/apis/external.metrics.k8s.io/v1beta1/namespaces/" + namespace + "/" + m
		paths[path] = func() (int, error) {
			var list v1beta1.ExternalMetricValueList
			err := get(ctx, path, &list)
			return len(list.Items), err
		}
	}
	paths["/apis/metrics.k8s.io/v1beta1/namespaces/"+namespace+"/pods"] = func() (int, error) {
		var list metricsv1beta1.PodMetricsList
		err := get(ctx, "/apis/metrics.k8s.io/v1beta1/namespaces/"+namespace+"/pods", &list)
		return len(list.Items), err
	}
	paths["/apis/metrics.k8s.io/v1beta1/nodes"] = func() (int, error) {
		var list metricsv1beta1.NodeMetricsList
		err := get(ctx, "/apis/metrics.k8s.io/v1beta1/nodes", &list)
		return len(list.Items), err
	}
	for path, fetch := range paths {
		var n int
		var lastErr error
		if err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
			n, lastErr = fetch()
			return lastErr == nil && n > 0, nil
		}); err != nil {
			t.Errorf("%s: %d values, last error %v", path, n, lastErr)
			continue
		}
		t.Logf("%s: %d value(s)", path, n)
	}
	if t.Failed() {
		t.Logf("adapter-pa-config log, last lines:\n%s", a.Tail(40))
	}
}
