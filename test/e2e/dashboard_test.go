package e2e

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// dashboardQueries are the PromQL of every panel of the shipped dashboard
// (manifests/monitoring/dashboard.json), by panel title.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(stack.Root, "manifests/monitoring/dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []panel `json:"panels"`
	}
	var d struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	out := map[string][]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				out[p.Title] = append(out[p.Title], tg.Expr)
			}
		}
	}
	walk(d.Panels)
	if len(out) < 10 {
		t.Fatalf("%d panels in dashboard.json", len(out))
	}
	return out
}

// TestDashboardQueriesReturnSeries runs every panel's PromQL, as Grafana
// would with the dashboard's job variable on this stack's adapter, against
// the stack's Prometheus, which scrapes the real adapter (the job of
// manifests/prometheus/prometheus.yml): each must parse and return at least
// one series. The series come from what the suite's other tests do beside
// it (HPAs, a forwarded request, MetricRules, apps at zero), so it waits
// for them, up to a bound.
func TestDashboardQueriesReturnSeries(t *testing.T) {
	t.Parallel()
	queries := dashboardQueries(t)
	client, err := promapi.NewClient(promapi.Config{Address: stack.Prometheus.URL})
	if err != nil {
		t.Fatal(err)
	}
	api := promv1.NewAPI(client)
	grafana := strings.NewReplacer(`$job`, localstack.AdapterScrapeJob, `$__rate_interval`, "1m")
	type result struct {
		series int
		err    error
	}
	results := map[string]result{}
	check := func(ctx context.Context) bool {
		all := true
		for title, exprs := range queries {
			for _, e := range exprs {
				expr := grafana.Replace(e)
				if err := promql.Parse(expr); err != nil {
					t.Fatalf("panel %q: %s does not parse: %v", title, expr, err)
				}
				if r := results[expr]; r.err == nil && r.series > 0 {
					continue
				}
				qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				v, _, _, err := api.Query(qctx, expr, time.Now())
				cancel()
				r := result{err: err}
				if vec, ok := v.(model.Vector); ok {
					r.series = len(vec)
				}
				results[expr] = r
				if r.err != nil || r.series == 0 {
					all = false
				}
			}
		}
		return all
	}
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	if err := wait.PollUntilContextCancel(ctx, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		return check(ctx), nil
	}); err == nil {
		n := 0
		for _, exprs := range queries {
			n += len(exprs)
		}
		t.Logf("every query of the %d panels (%d queries) returned series", len(queries), n)
		for expr, r := range results {
			t.Logf("%d series: %s", r.series, expr)
		}
		return
	}
	for _, title := range slices.Sorted(maps.Keys(queries)) {
		for _, e := range queries[title] {
			expr := grafana.Replace(e)
			if r := results[expr]; r.err != nil || r.series == 0 {
				t.Errorf("panel %q: %s: %d series, error %v", title, expr, r.series, r.err)
			}
		}
	}
}
