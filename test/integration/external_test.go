package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/externalmetrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// loadedApps starts one load-app process per entry of rate (each its own
// namespace and pod app-NAME), each loaded on / at its rate for three
// minutes (or until ctx ends), and returns the static_configs entries
// that scrape them with those labels.
func loadedApps(ctx context.Context, t *testing.T, g *localstack.Group, dir string, rate map[string]float64) map[string]string {
	t.Helper()
	appBin, err := localstack.Build(ctx, dir, "./app", "app")
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{}
	for ns, r := range rate {
		app, err := localstack.StartApp(ctx, g, dir, "app-"+ns, appBin, "127.0.0.1", "--default-cpu=1ms")
		if err != nil {
			t.Fatal(err)
		}
		targets[ns] = fmt.Sprintf("  - targets: [%q]\n    labels: {namespace: %s, pod: app-%s}\n", strings.TrimPrefix(app.URL, "http://"), ns, ns)
		go func() {
			_ = loadgen.Run(ctx, loadgen.Config{Targets: func() []string { return []string{app.URL} }, Path: "/",
				Rate: loadgen.Constant(r), Duration: 3 * time.Minute}, &loadgen.Stats{})
		}()
	}
	return targets
}

// scrapeConfig is a Prometheus configuration that scrapes targets (static
// config entries) every second.
func scrapeConfig(targets ...string) string {
	return "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: app\n  static_configs:\n" + strings.Join(targets, "")
}

// externalPath is the adapter's external metrics path for one rules file,
// as the adapter wires it: the file's stores (backends.New; the default
// store is one nobody reads), the provider, and discovery listing each
// rule's series on its store every second until the test ends.
type externalPath struct {
	stores *backends.Set
	ep     *externalmetrics.Provider
}

// serveExternal builds the path for file. tenants, when not nil, maps
// namespaces to their tenants on the stores that have them.
func serveExternal(ctx context.Context, t *testing.T, file string, tenants *backends.Tenants) *externalPath {
	t.Helper()
	set, err := rules.Parse([]byte(file), t.Name()+".yaml")
	if err != nil {
		t.Fatal(err)
	}
	stores, err := backends.New(config.Backend{URL: "http://127.0.0.1:1", Timeout: 5e9}, set.Backends, set.BackendWhere)
	if err != nil {
		t.Fatal(err)
	}
	cfg := externalmetrics.Config{Rules: set.External, Querier: stores.Querier(""),
		Backends: func(name string) promclient.Querier { return stores.Querier(name) }}
	dcfg := discovery.Config{Queries: discovery.QueriesOf(set.External).File, Lister: stores.Store("").Client, Interval: time.Second,
		Backends: func(name string) discovery.SeriesLister { return stores.Store(name).Client }}
	if tenants != nil {
		tenants.Stores = func() *backends.Set { return stores }
		cfg.Tenant, dcfg.Tenants, dcfg.TenantOf = tenants.Of, tenants.All, tenants.Of
	}
	p := &externalPath{stores: stores, ep: externalmetrics.New(cfg)}
	disc := discovery.New(dcfg)
	disc.Subscribe(p.ep.Update)
	dctx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	go disc.Run(dctx)
	return p
}

// get asks for metric in namespace ns and returns its one value, and the
// annotations the store gave its last query (as explain shows them).
func (p *externalPath) get(ctx context.Context, ns, metric string) (float64, string, error) {
	tr := &trace.Trace{}
	list, err := p.ep.GetExternalMetric(trace.WithTrace(ctx, tr), ns, labels.Everything(), provider.ExternalMetricInfo{Metric: metric})
	_, _, _, queries := tr.Snapshot()
	ann := ""
	if len(queries) > 0 {
		ann = queries[len(queries)-1].Annotations
	}
	if err != nil {
		return 0, ann, err
	}
	if len(list.Items) != 1 {
		return 0, ann, fmt.Errorf("%d values", len(list.Items))
	}
	return list.Items[0].Value.AsApproximateFloat64(), ann, nil
}
