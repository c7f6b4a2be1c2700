package externalmetrics

import (
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// appStore answers sum(rate(...{app...})) with app a's value 1 and b's 2:
// one unlabelled series for a query of one app, one series per app for a
// query grouped by app; it counts the queries.
type appStore struct {
	mu   sync.Mutex
	sent []string
}

var appsOf = regexp.MustCompile(`app=~?"([^"]*)"`)

func (s *appStore) Query(_ context.Context, expr string) (model.Vector, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, expr)
	value := map[string]model.SampleValue{"a": 1, "b": 2}
	var out model.Vector
	for app := range strings.SplitSeq(appsOf.FindStringSubmatch(expr)[1], "|") {
		m := model.Metric{}
		if strings.Contains(expr, "by (app)") {
			m["app"] = model.LabelValue(app)
		}
		out = append(out, &model.Sample{Metric: m, Value: value[app]})
	}
	return out, nil
}

func (s *appStore) Series(context.Context, []string, time.Time, time.Time) ([]model.LabelSet, error) {
	return []model.LabelSet{{"__name__": "app_requests_total", "namespace": "shop", "app": "a"}}, nil
}

// External HPAs of one namespace, each selecting its app (app=NAME), share
// one query grouped by app; each gets its own app's value with the labels
// its own query gives (none); a selector of two labels queries alone.
func TestSharedExternalQueries(t *testing.T) {
	set, err := rules.Parse([]byte(`externalRules:
- seriesQuery: 'app_requests_total{namespace!=""}'
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: ^app_requests_total$, as: app_requests_per_second}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]))
`), "shared.yaml")
	if err != nil {
		t.Fatal(err)
	}
	store := &appStore{}
	sharing := query.NewSharing(query.Stores{Default: store}, 30*time.Second)
	p := New(Config{Rules: set.External, Querier: store, Sharing: sharing})
	d := discovery.New(discovery.Config{Queries: discovery.QueriesOf(set.External).File, Lister: store})
	d.Subscribe(p.Update)
	if r := d.Relist(context.Background()); len(r.Failed) > 0 {
		t.Fatal(r.Failed)
	}
	get := func(sel string) (float64, map[string]string) {
		t.Helper()
		s, err := labels.Parse(sel)
		if err != nil {
			t.Fatal(err)
		}
		list, err := p.GetExternalMetric(context.Background(), "shop", s, info("app_requests_per_second"))
		if err != nil || len(list.Items) != 1 {
			t.Fatalf("%s: %v %v", sel, list, err)
		}
		return list.Items[0].Value.AsApproximateFloat64(), list.Items[0].MetricLabels
	}
	for range 3 {
		for sel, want := range map[string]float64{"app=a": 1, "app=b": 2} {
			if v, lbls := get(sel); v != want || len(lbls) != 0 {
				t.Errorf("%s = %v %v, want %v without labels", sel, v, lbls, want)
			}
		}
	}
	if len(store.sent) > 2 || !strings.Contains(store.sent[len(store.sent)-1], `sum by (app)`) {
		t.Errorf("sent %q: want at most one query per new app, grouped by app", store.sent)
	}
	n := len(store.sent)
	get("app=a,tier=web")
	get("app=a,tier=web")
	if len(store.sent) != n+2 {
		t.Errorf("a selector of two labels sent %d queries for 2 requests, want 2 (not shared)", len(store.sent)-n)
	}
}
