package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestPrometheusWarningsAndInfos: a real Prometheus annotates answers
// (a PromQL warning for a quantile outside [0, 1], an info for rate() over
// a gauge). On a backend with the default onWarning (refuse) the warned
// answer is a 503 naming Prometheus' warning, and the answer with only an
// info is served; on a backend with onWarning: serve the warned answer is
// served too; the request's trace (what explain prints) carries the
// annotations either way.
func TestPrometheusWarningsAndInfos(t *testing.T) {
	g, dir := processGroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const offered = 10
	targets, load := loadedApps(ctx, t, g, dir, map[string]float64{"shop": offered})
	prom, err := localstack.StartPrometheus(ctx, g, filepath.Join(dir, "prometheus"), scrapeConfig(targets["shop"]))
	if err != nil {
		t.Fatal(err)
	}

	// The warned query: the request rate, "or" a quantile of 1.5, whose
	// series (no labels, as the sum's) the "or" drops, but whose warning
	// stays with the answer.
	warned := `sum(rate(<<.Series>>{<<.LabelMatchers>>,endpoint="/"}[10s])) or quantile(1.5, <<.Series>>{<<.LabelMatchers>>})`
	p := serveExternal(ctx, t, fmt.Sprintf(`backends:
- name: strict
  url: %[1]s
- name: lenient
  url: %[1]s
  onWarning: serve
externalRules:
- seriesQuery: 'app_requests_total{namespace!=""}'
  backend: strict
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: strict_rps}
  metricsQuery: '%[2]s'
- seriesQuery: 'app_requests_total{namespace!=""}'
  backend: lenient
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: lenient_rps}
  metricsQuery: '%[2]s'
- seriesQuery: 'go_goroutines{namespace!=""}'
  backend: strict
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^go_goroutines$, as: goroutine_churn}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[10s]))
`, prom.URL, warned), nil)

	var lenient float64
	var ann string
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, false, func(context.Context) (bool, error) {
		r, err := load.measure(ctx)
		if lastErr = err; err != nil {
			return false, nil
		}
		if lenient, ann, lastErr = p.get(ctx, "shop", "lenient_rps"); lastErr != nil {
			return false, nil
		}
		lastErr = r.check("lenient_rps (onWarning: serve)", lenient, "shop")
		return lastErr == nil, nil
	}); err != nil {
		t.Fatalf("lenient_rps (onWarning: serve) = %.1f, against the load shop's app delivered: %v", lenient, lastErr)
	}
	const warning = "quantile value should be between 0 and 1"
	if !strings.Contains(ann, warning) {
		t.Errorf("lenient_rps served without its warning in the trace: %q", ann)
	}
	t.Logf("lenient_rps %.1f served with %s", lenient, ann)

	v, ann, err := p.get(ctx, "shop", "strict_rps")
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), warning) {
		t.Errorf("strict_rps (onWarning: refuse, the default) = %.1f, %v; want a 503 naming Prometheus' warning", v, err)
	} else {
		t.Logf("strict_rps: %v", err)
	}
	if !strings.Contains(ann, warning) {
		t.Errorf("strict_rps refused without its warning in the trace: %q", ann)
	}

	v, ann, err = p.get(ctx, "shop", "goroutine_churn")
	if err != nil || !strings.Contains(ann, "might not be a counter") {
		t.Errorf("goroutine_churn (an info only, on the strict backend) = %.2f, %v, annotations %q; want served with Prometheus' info", v, err, ann)
	}
}
