package integration

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestPromLabelProxyPinsEachNamespace: a real prom-label-proxy enforcing
// namespace in front of a real Prometheus that scrapes an app in shop and
// one in other is a backend whose tenant is the request's namespace, sent
// as prom-label-proxy's query parameter. A rule whose PromQL reads every
// namespace (it leaves out <<.LabelMatchers>>) gets, for shop, shop's rate
// only, and for other, other's; a rule whose PromQL names another
// namespace is refused by the proxy and served as an error, never as the
// other namespace's number; discovery lists each namespace's series as
// that namespace, so a namespace with no series has no metric.
func TestPromLabelProxyPinsEachNamespace(t *testing.T) {
	g, dir := serversGroup(t, "prometheus", "prom-label-proxy")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	offered := map[string]float64{"shop": 20, "other": 5}
	targets, load := loadedApps(ctx, t, g, dir, offered)
	prom, err := localstack.StartPrometheus(ctx, g, filepath.Join(dir, "prometheus"), scrapeConfig(targets["shop"], targets["other"]))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := localstack.StartPromLabelProxy(ctx, g, dir, "prom-label-proxy", prom.URL, "namespace")
	if err != nil {
		t.Fatal(err)
	}

	// The cluster's namespaces: empty has no series anywhere.
	namespaces := []backends.Namespace{{Name: "shop"}, {Name: "other"}, {Name: "empty"}}
	tenants := &backends.Tenants{
		Namespace: func(_ context.Context, name string) (backends.Namespace, error) {
			if i := slices.IndexFunc(namespaces, func(ns backends.Namespace) bool { return ns.Name == name }); i >= 0 {
				return namespaces[i], nil
			}
			return backends.Namespace{}, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
		},
		List: func(context.Context) ([]backends.Namespace, error) { return namespaces, nil },
	}
	p := serveExternal(ctx, t, fmt.Sprintf(`backends:
- name: pinned
  url: %s
  tenant: {queryParam: namespace}
externalRules:
- seriesQuery: 'app_requests_total{namespace!=""}'
  backend: pinned
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: every_namespace_rps}
  metricsQuery: sum(rate(<<.Series>>{endpoint="/"}[10s]))
- seriesQuery: 'app_requests_total{namespace!=""}'
  backend: pinned
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: others_rps}
  metricsQuery: sum(rate(<<.Series>>{namespace="other",endpoint="/"}[10s]))
`, proxy.URL), tenants)

	direct, err := promclient.New(promclient.Config{URL: prom.URL})
	if err != nil {
		t.Fatal(err)
	}
	var shop, other, all float64
	var lastErr error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, false, func(context.Context) (bool, error) {
		r, err := load.measure(ctx)
		if lastErr = err; err != nil {
			return false, nil
		}
		if shop, _, lastErr = p.get(ctx, "shop", "every_namespace_rps"); lastErr != nil {
			return false, nil
		}
		if other, _, lastErr = p.get(ctx, "other", "every_namespace_rps"); lastErr != nil {
			return false, nil
		}
		v, err := direct.Query(ctx, `sum(rate(app_requests_total{endpoint="/"}[10s]))`)
		if lastErr = err; err != nil {
			return false, nil
		}
		if len(v) != 1 {
			lastErr = fmt.Errorf("the same PromQL on Prometheus itself: %d values", len(v))
			return false, nil
		}
		all = float64(v[0].Value)
		lastErr = errors.Join(r.check("every_namespace_rps as shop", shop, "shop"), r.check("every_namespace_rps as other", other, "other"),
			r.check("the same PromQL on Prometheus itself", all, "shop", "other"))
		return lastErr == nil, nil
	}); err != nil {
		t.Fatalf("every_namespace_rps: shop %.1f, other %.1f; the same PromQL on Prometheus itself %.1f; against the load each namespace's app delivered: %v",
			shop, other, all, lastErr)
	}
	t.Logf("one PromQL over every namespace: %.1f req/s on Prometheus itself; through prom-label-proxy as shop %.1f, as other %.1f", all, shop, other)

	// The rule naming another namespace: the proxy refuses it (it would
	// not replace a matcher the query gives), and the adapter serves the
	// error, not other's rate.
	if v, _, err := p.get(ctx, "shop", "others_rps"); err == nil || !strings.Contains(err.Error(), "namespace") {
		t.Errorf("others_rps as shop: %.1f, %v; want an error from the proxy, not another namespace's number", v, err)
	} else {
		t.Logf("others_rps as shop: %v", err)
	}
	r, err := load.measure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, _, err := p.get(ctx, "other", "others_rps"); err != nil {
		t.Errorf("others_rps as other (its own namespace): %v; want the load other's app delivered", err)
	} else if err := r.check("others_rps as other (its own namespace)", v, "other"); err != nil {
		t.Error(err)
	}
	// empty's listing (as empty) has no series: no metric there. A
	// namespace the cluster does not have is a 404 before anything is sent.
	if _, _, err := p.get(ctx, "empty", "every_namespace_rps"); !apierrors.IsNotFound(err) {
		t.Errorf("every_namespace_rps in empty, whose tenant has no series: %v, want 404", err)
	}
	if _, _, err := p.get(ctx, "ghost", "every_namespace_rps"); !apierrors.IsNotFound(err) {
		t.Errorf("every_namespace_rps in a namespace that does not exist: %v, want 404", err)
	}
}
