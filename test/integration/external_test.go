package integration

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

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

// ruleWindow is the range of this package's rules ([10s]): served rates
// and delivered ones are measured over it.
const ruleWindow = 10 * time.Second

// loadedApps starts one load-app process per entry of rate (each its own
// namespace and pod app-NAME), each loaded on / at its rate for three
// minutes (or until ctx ends), and returns the static_configs entries
// that scrape them with those labels, and the load they deliver (measured
// over ruleWindow).
func loadedApps(ctx context.Context, t *testing.T, g *localstack.Group, dir string, rate map[string]float64) (map[string]string, *deliveredLoad) {
	t.Helper()
	appBin, err := localstack.Build(ctx, dir, "./app", "app")
	if err != nil {
		t.Fatal(err)
	}
	targets, urls := map[string]string{}, map[string]string{}
	for ns, r := range rate {
		app, err := localstack.StartApp(ctx, g, dir, "app-"+ns, appBin, "127.0.0.1", "--default-cpu=1ms")
		if err != nil {
			t.Fatal(err)
		}
		targets[ns] = fmt.Sprintf("  - targets: [%q]\n    labels: {namespace: %s, pod: app-%s}\n", strings.TrimPrefix(app.URL, "http://"), ns, ns)
		urls[ns] = app.URL
		go func() {
			_ = loadgen.Run(ctx, loadgen.Config{Targets: func() []string { return []string{app.URL} }, Path: "/",
				Rate: loadgen.Constant(r), Duration: 3 * time.Minute}, &loadgen.Stats{})
		}()
	}
	return targets, newDeliveredLoad(urls, rate, ruleWindow)
}

// farShort: a delivered load below this share of the offered one is a
// shortfall of the load (the machine too busy to deliver it), not of the
// adapter. The checks report it as such, and fail on it: at a fraction of
// their load they cannot tell the apps apart as they mean to.
const farShort = 0.5

// deliveredLoad measures the load each app actually served, by the app's
// own app_requests_total{endpoint="/"} read straight from its /metrics
// (not through the test's Prometheus). Served values are judged against
// it, not against the generator's target, which a busy machine may not
// deliver.
type deliveredLoad struct {
	urls    map[string]string  // by app name: the app's URL
	offered map[string]float64 // by app name: the generator's rate, req/s
	window  time.Duration
	client  *http.Client
	history []appCounts
}

// appCounts is one reading of every app's counter.
type appCounts struct {
	at     time.Time
	counts map[string]float64
}

// newDeliveredLoad measures the apps at urls (by name), offered the rates
// of offered (by the same names), over window.
func newDeliveredLoad(urls map[string]string, offered map[string]float64, window time.Duration) *deliveredLoad {
	return &deliveredLoad{urls: urls, offered: offered, window: window, client: &http.Client{Timeout: 5 * time.Second}}
}

// measure reads every app's counter now and returns, as rates, what each
// delivered since the latest earlier reading at least a window old: called
// at each poll, its readings cover the rules' window. Until it has been
// called over a window, it returns an error saying so.
func (d *deliveredLoad) measure(ctx context.Context) (*loadReading, error) {
	now := appCounts{at: time.Now(), counts: map[string]float64{}}
	for name, url := range d.urls {
		n, err := d.count(ctx, url)
		if err != nil {
			return nil, fmt.Errorf("app %s (%s): %w", name, url, err)
		}
		now.counts[name] = n
	}
	d.history = append(d.history, now)
	then := -1
	for i := range d.history {
		if now.at.Sub(d.history[i].at) >= d.window {
			then = i
		}
	}
	if then < 0 {
		return nil, fmt.Errorf("less than %s of delivered load measured yet", d.window)
	}
	d.history = d.history[then:]
	r := &loadReading{delivered: map[string]float64{}, offered: d.offered, over: now.at.Sub(d.history[0].at)}
	for name, n := range now.counts {
		r.delivered[name] = (n - d.history[0].counts[name]) / r.over.Seconds()
	}
	return r, nil
}

// count reads the app's app_requests_total{endpoint="/"} from its /metrics.
func (d *deliveredLoad) count(ctx context.Context, url string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %d", resp.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	n, ok := localstack.Sum(mfs, "app_requests_total", map[string]string{"endpoint": "/"})
	if !ok {
		return 0, fmt.Errorf(`no app_requests_total{endpoint="/"}`)
	}
	return n, nil
}

// loadReading is the load the apps delivered over the last window (by
// app name, req/s), and what the generator offered them.
type loadReading struct {
	delivered, offered map[string]float64
	over               time.Duration
}

// check judges served, a rate served for the load of apps (one app's, or
// several's together), against what those apps delivered over the window:
// within tolerance, or 0.5 req/s for an idle app. Its error tells the two
// failures apart: "served value wrong" when served is not what the apps
// delivered (noting a shortfall of the load, if any), "delivered load X
// short of offered Y" when served is what they delivered but that is far
// below what the generator offered.
func (r *loadReading) check(what string, served float64, apps ...string) error {
	var delivered, offered float64
	for _, a := range apps {
		d, ok := r.delivered[a]
		if !ok {
			return fmt.Errorf("%s: no app %s measured", what, a)
		}
		delivered += d
		offered += r.offered[a]
	}
	short := ""
	if delivered < (1-tolerance)*offered {
		short = fmt.Sprintf(" (delivered load %.2f short of offered %.0f req/s)", delivered, offered)
	}
	if math.Abs(served-delivered) > max(tolerance*delivered, 0.5) {
		return fmt.Errorf("served value wrong: %s = %.2f, want the %.2f req/s delivered over the last %s ±%.0f%%%s",
			what, served, delivered, r.over.Round(100*time.Millisecond), tolerance*100, short)
	}
	if delivered < farShort*offered {
		return fmt.Errorf("delivered load %.2f short of offered %.0f req/s over the last %s: %s = %.2f is the load delivered, a shortfall of the load, not a wrong value",
			delivered, offered, r.over.Round(100*time.Millisecond), what, served)
	}
	return nil
}

// describe is what apps delivered and were offered, for logs.
func (r *loadReading) describe(apps ...string) string {
	var delivered, offered float64
	for _, a := range apps {
		delivered += r.delivered[a]
		offered += r.offered[a]
	}
	return fmt.Sprintf("delivered %.2f req/s over the last %s, offered %.0f", delivered, r.over.Round(100*time.Millisecond), offered)
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
