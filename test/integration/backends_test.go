package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestTwoNamedBackends: two real Prometheus servers, each scraping its own
// app, are two backends of one rules file; a rule reading each gets the
// rate of its own server's app, through the adapter's own path (the rules
// file's backends section, backends.New, discovery per store, the
// external provider); with one server stopped only its rule fails, 503
// naming it, and the other keeps serving.
func TestTwoNamedBackends(t *testing.T) {
	g, dir := processGroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	appBin, err := localstack.Build(ctx, dir, "./app", "app")
	if err != nil {
		t.Fatal(err)
	}
	offered := map[string]float64{"east": 20, "west": 5}
	urls := map[string]string{}
	proms := map[string]*localstack.Prometheus{}
	for name := range offered {
		app, err := localstack.StartApp(ctx, g, dir, "app-"+name, appBin, "127.0.0.1", "--default-cpu=1ms")
		if err != nil {
			t.Fatal(err)
		}
		prom, err := localstack.StartPrometheus(ctx, g, filepath.Join(dir, name), fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
- job_name: app
  static_configs:
  - targets: [%q]
    labels: {namespace: shop, pod: app-%s}
`, strings.TrimPrefix(app.URL, "http://"), name))
		if err != nil {
			t.Fatal(err)
		}
		urls[name], proms[name] = prom.URL, prom
		go func() {
			_ = loadgen.Run(ctx, loadgen.Config{Targets: func() []string { return []string{app.URL} }, Path: "/",
				Rate: loadgen.Constant(offered[name]), Duration: 3 * time.Minute}, &loadgen.Stats{})
		}()
	}

	file := fmt.Sprintf(`backends:
- name: east
  url: %s
- name: west
  url: %s
  verb: GET
externalRules:
- seriesQuery: 'app_requests_total{namespace!=""}'
  backend: east
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: east_rps}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>,endpoint="/"}[10s]))
- seriesQuery: 'app_requests_total{namespace!=""}'
  backend: west
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: west_rps}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>,endpoint="/"}[10s]))
`, urls["east"], urls["west"])
	set, err := rules.Parse([]byte(file), "backends.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The default store is a third one nobody reads.
	stores, err := backends.New(config.Backend{URL: "http://127.0.0.1:1", Timeout: 5e9}, set.Backends, set.BackendWhere)
	if err != nil {
		t.Fatal(err)
	}
	named := func(name string) promclient.Querier { return stores.Querier(name) }
	ep := externalmetrics.New(externalmetrics.Config{Rules: set.External, Querier: stores.Querier(""), Backends: named})
	q := discovery.QueriesOf(set.External)
	if len(q.File) != 2 {
		t.Fatalf("the two rules' listings: %v, want one per store", q.File)
	}
	disc := discovery.New(discovery.Config{Queries: q.File, Lister: stores.Store("").Client, Interval: time.Second,
		Backends: func(name string) discovery.SeriesLister { return stores.Store(name).Client }})
	disc.Subscribe(ep.Update)
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	go disc.Run(dctx)

	get := func(metric string) (float64, error) {
		list, err := ep.GetExternalMetric(ctx, "shop", labels.Everything(), provider.ExternalMetricInfo{Metric: metric})
		if err != nil {
			return 0, err
		}
		if len(list.Items) != 1 {
			return 0, fmt.Errorf("%d values", len(list.Items))
		}
		return list.Items[0].Value.AsApproximateFloat64(), nil
	}
	var east, west float64
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, false, func(context.Context) (bool, error) {
		if east, lastErr = get("east_rps"); lastErr != nil {
			return false, nil
		}
		if west, lastErr = get("west_rps"); lastErr != nil {
			return false, nil
		}
		return within(east, offered["east"]) && within(west, offered["west"]), nil
	}); err != nil {
		t.Fatalf("east_rps %.1f (want %v, from the east store), west_rps %.1f (want %v, from the west store): %v", east, offered["east"], west, offered["west"], lastErr)
	}
	t.Logf("east_rps %.1f from %s, west_rps %.1f from %s", east, urls["east"], west, urls["west"])

	// The west store stopped: its rule fails, naming it; the east one's
	// serves.
	g.Remove(proms["west"].Proc)
	if err := proms["west"].Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := get("west_rps"); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), strings.TrimPrefix(urls["west"], "http://")) {
		t.Errorf("west_rps with its store stopped: %v, want 503 naming %s", err, urls["west"])
	}
	if v, err := get("east_rps"); err != nil || !within(v, offered["east"]) {
		t.Errorf("east_rps with the west store stopped: %.1f, %v; want about %v", v, err, offered["east"])
	}
}

// within reports whether got is within tolerance of want.
func within(got, want float64) bool { return got >= want*(1-tolerance) && got <= want*(1+tolerance) }
