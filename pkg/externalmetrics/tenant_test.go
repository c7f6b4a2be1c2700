package externalmetrics

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/backends"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// tenantStore is a multi-tenant store: each tenant (the request's
// promclient.WithTenant) sees its own series, as Cortex does.
type tenantStore struct {
	mu      sync.Mutex
	series  map[string][]model.LabelSet // by tenant
	value   map[string]float64          // by tenant and metric: "team-a/queue_depth"
	queries []string                    // "tenant expr"
	lists   []string                    // the tenant of each listing
}

func (s *tenantStore) Series(ctx context.Context, _ []string, _, _ time.Time) ([]model.LabelSet, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tenant := promclient.TenantFrom(ctx)
	s.lists = append(s.lists, tenant)
	return s.series[tenant], nil
}

func (s *tenantStore) Query(ctx context.Context, expr string) (model.Vector, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tenant := promclient.TenantFrom(ctx)
	s.queries = append(s.queries, tenant+" "+expr)
	for _, ls := range s.series[tenant] {
		name := string(ls[model.MetricNameLabel])
		if strings.Contains(expr, name+"{") {
			return model.Vector{{Metric: model.Metric{}, Value: model.SampleValue(s.value[tenant+"/"+name])}}, nil
		}
	}
	return nil, nil
}

// On a store with a tenant per namespace, each tenant's series are listed
// as that tenant, once per round for all of the rules' selectors; a
// metric is served in the namespaces of the tenants that have it, read as
// their tenant; a metric another tenant has is the 404 of a metric nobody
// serves, and a namespace without a tenant is refused: in neither case is
// anything sent.
func TestATenantPerNamespace(t *testing.T) {
	set, err := rules.Parse([]byte(`backends:
- name: cortex
  url: http://cortex.invalid/prometheus
  tenant: {header: X-Scope-OrgID, template: '<<index .Labels "tenant">>'}
externalRules:
- seriesQuery: 'queue_depth{namespace!=""}'
  backend: cortex
  resources: {overrides: {namespace: {resource: namespace}}}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
- seriesQuery: 'orders_pending{namespace!=""}'
  backend: cortex
  resources: {overrides: {namespace: {resource: namespace}}}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
`), "tenants.yaml")
	if err != nil {
		t.Fatal(err)
	}
	store := &tenantStore{
		series: map[string][]model.LabelSet{
			"team-a": {{"__name__": "queue_depth", "namespace": "a1"}},
			"team-b": {{"__name__": "orders_pending", "namespace": "b1"}},
		},
		value: map[string]float64{"team-a/queue_depth": 5, "team-b/orders_pending": 7},
	}
	stores, err := backends.New(config.Backend{URL: "http://default.invalid"}, set.Backends, set.BackendWhere)
	if err != nil {
		t.Fatal(err)
	}
	// a1 is team-a's, b1 team-b's; c1 has no tenant label.
	nss := []backends.Namespace{
		{Name: "a1", Labels: map[string]string{"tenant": "team-a"}},
		{Name: "b1", Labels: map[string]string{"tenant": "team-b"}},
		{Name: "c1"},
	}
	tenants := &backends.Tenants{
		Stores: func() *backends.Set { return stores },
		Namespace: func(_ context.Context, name string) (backends.Namespace, error) {
			if i := slices.IndexFunc(nss, func(ns backends.Namespace) bool { return ns.Name == name }); i >= 0 {
				return nss[i], nil
			}
			return backends.Namespace{}, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
		},
		List: func(context.Context) ([]backends.Namespace, error) { return nss, nil },
	}
	named := func(string) promclient.Querier { return store }
	p := New(Config{Rules: set.External, Querier: store, Backends: named, Tenant: tenants.Of})
	d := discovery.New(discovery.Config{Queries: discovery.QueriesOf(set.External).File, Lister: store,
		Backends: func(string) discovery.SeriesLister { return store },
		Tenants:  tenants.All, TenantOf: tenants.Of})
	d.Subscribe(p.Update)
	if r := d.Relist(context.Background()); len(r.Failed) > 0 {
		t.Fatalf("discovery failed: %v", r.Failed)
	}
	slices.Sort(store.lists)
	if !slices.Equal(store.lists, []string{"team-a", "team-b"}) {
		t.Fatalf("listings as %q, want one per tenant", store.lists)
	}

	get := func(ns, metric string) (float64, error) {
		list, err := p.GetExternalMetric(context.Background(), ns, labels.Everything(), info(metric))
		if err != nil {
			return 0, err
		}
		if len(list.Items) != 1 {
			return 0, fmt.Errorf("%d values", len(list.Items))
		}
		return list.Items[0].Value.AsApproximateFloat64(), nil
	}
	if v, err := get("a1", "queue_depth"); err != nil || v != 5 {
		t.Fatalf("a1 queue_depth = %v, %v; want 5", v, err)
	}
	if v, err := get("b1", "orders_pending"); err != nil || v != 7 {
		t.Fatalf("b1 orders_pending = %v, %v; want 7", v, err)
	}
	if len(store.queries) != 2 || !strings.HasPrefix(store.queries[0], "team-a ") || !strings.HasPrefix(store.queries[1], "team-b ") {
		t.Fatalf("queries %q: want a1's as team-a, b1's as team-b", store.queries)
	}
	store.queries = nil
	if _, err := get("b1", "queue_depth"); !apierrors.IsNotFound(err) {
		t.Fatalf("b1 queue_depth (team-a's metric): err = %v, want 404", err)
	}
	if _, err := get("c1", "orders_pending"); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "c1 has no tenant") {
		t.Fatalf("c1 (no tenant): err = %v, want 403 saying why", err)
	}
	if len(store.queries) != 0 {
		t.Fatalf("sent %q, want nothing", store.queries)
	}
}
