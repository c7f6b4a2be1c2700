package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
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
	// Each server's app is in namespace shop.
	offered := map[string]float64{"east": 20, "west": 5}
	targets, load := loadedApps(ctx, t, g, dir, offered)
	urls := map[string]string{}
	proms := map[string]*localstack.Prometheus{}
	for name := range offered {
		prom, err := localstack.StartPrometheus(ctx, g, filepath.Join(dir, name),
			scrapeConfig(strings.Replace(targets[name], "namespace: "+name, "namespace: shop", 1)))
		if err != nil {
			t.Fatal(err)
		}
		urls[name], proms[name] = prom.URL, prom
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
	if q := discovery.QueriesOf(set.External); len(q.File) != 2 {
		t.Fatalf("the two rules' listings: %v, want one per store", q.File)
	}
	p := serveExternal(ctx, t, file, nil)

	var east, west float64
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, false, func(context.Context) (bool, error) {
		r, err := load.measure(ctx)
		if lastErr = err; err != nil {
			return false, nil
		}
		if east, _, lastErr = p.get(ctx, "shop", "east_rps"); lastErr != nil {
			return false, nil
		}
		if west, _, lastErr = p.get(ctx, "shop", "west_rps"); lastErr != nil {
			return false, nil
		}
		lastErr = errors.Join(r.check("east_rps (from the east store)", east, "east"), r.check("west_rps (from the west store)", west, "west"))
		return lastErr == nil, nil
	}); err != nil {
		t.Fatalf("east_rps %.1f from the east store, west_rps %.1f from the west store, against the load each store's app delivered: %v", east, west, lastErr)
	}
	t.Logf("east_rps %.1f from %s, west_rps %.1f from %s", east, urls["east"], west, urls["west"])

	// The west store stopped: its rule fails, naming it; the east one's
	// serves.
	g.Remove(proms["west"].Proc)
	if err := proms["west"].Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.get(ctx, "shop", "west_rps"); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), strings.TrimPrefix(urls["west"], "http://")) {
		t.Errorf("west_rps with its store stopped: %v, want 503 naming %s", err, urls["west"])
	}
	r, err := load.measure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, _, err := p.get(ctx, "shop", "east_rps"); err != nil {
		t.Errorf("east_rps with the west store stopped: %v; want the load east's app delivered", err)
	} else if err := r.check("east_rps with the west store stopped", v, "east"); err != nil {
		t.Error(err)
	}
}
