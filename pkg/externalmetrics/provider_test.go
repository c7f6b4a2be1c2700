package externalmetrics

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakeprom"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// A config in prometheus-adapter's format: a namespaced rule (the default),
// a rule with namespaced: false, and the built-in external rule.
const cfgYAML = `
externalRules:
- seriesQuery: 'queue_depth{namespace!="",queue!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (queue)
- seriesQuery: 'kafka_lag{topic!=""}'
  resources:
    namespaced: false
  name: {matches: "^kafka_(.*)$", as: "kafka_consumer_$1"}
  metricsQuery: max(<<.Series>>{<<.LabelMatchers>>}) by (topic)
- seriesQuery: 'app_requests_total{namespace!=""}'
  resources:
    template: <<.Resource>>
  name: {matches: ^app_requests_total$, as: app_requests_per_second}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]))
`

var series = []map[string]string{
	{"__name__": "queue_depth", "namespace": "jobs", "queue": "a"},
	{"__name__": "queue_depth", "namespace": "jobs", "queue": "b"},
	{"__name__": "kafka_lag", "topic": "orders"},
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-1", "endpoint": "/"},
}

type fixture struct {
	p    *Provider
	prom *fakeprom.Server
	disc *discovery.Discoverer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureFor(t, cfgYAML, series)
}

func newFixtureFor(t *testing.T, cfgYAML string, series []map[string]string) *fixture {
	t.Helper()
	cfg, err := config.Parse([]byte(cfgYAML), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.CompileSet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rs := set.External
	fp := fakeprom.NewInMemory(t, series)
	client, err := promclient.New(promclient.Config{URL: fp.URL, RoundTripper: fp.Transport(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{Rules: rs, Querier: client, Clock: clocktesting.NewFakePassiveClock(now)})
	var queries []string
	for _, r := range rs {
		queries = append(queries, r.SeriesQuery())
	}
	d := discovery.New(discovery.Config{Queries: queries, Lister: client})
	d.Subscribe(p.Update)
	return &fixture{p: p, prom: fp, disc: d}
}

// now is the providers' clock: what emptyIsZero stamps its values with.
var now = time.Unix(1_700_000_100, 0) // fixed date: the fake clock of the provider, compared with itself only

func (f *fixture) discover(t *testing.T) {
	t.Helper()
	if r := f.disc.Relist(context.Background()); len(r.Failed) > 0 {
		t.Fatalf("discovery failed: %v", r.Failed)
	}
}

func info(name string) provider.ExternalMetricInfo { return provider.ExternalMetricInfo{Metric: name} }

func TestListAllExternalMetrics(t *testing.T) {
	f := newFixture(t)
	if got := f.p.ListAllExternalMetrics(); got != nil {
		t.Errorf("before discovery: %v, want nothing", got)
	}
	f.discover(t)
	want := []provider.ExternalMetricInfo{{Metric: "app_requests_per_second"}, {Metric: "kafka_consumer_lag"}, {Metric: "queue_depth"}}
	if d := cmp.Diff(want, f.p.ListAllExternalMetrics()); d != "" {
		t.Errorf("ListAllExternalMetrics (-want +got):\n%s", d)
	}
}

func TestGetExternalMetric(t *testing.T) {
	tests := []struct {
		name      string
		namespace string
		metric    string
		selector  string
		query     string
		samples   []fakeprom.Sample
		want      []string // name{labels}=value@timestamp
	}{
		{
			name:      "matches the HPA's namespace on a namespaced rule, one value per series with its labels",
			namespace: "jobs", metric: "queue_depth",
			query: `sum(queue_depth{namespace="jobs"}) by (queue)`,
			samples: []fakeprom.Sample{
				{Labels: map[string]string{"queue": "b"}, Value: "7", TS: 1700000000},
				{Labels: map[string]string{"queue": "a"}, Value: "0.5", TS: 1700000000},
			},
			want: []string{`queue_depth{queue=a}=500m@1700000000`, `queue_depth{queue=b}=7@1700000000`},
		},
		{
			name:      "turns the metric selector into escaped matchers after the namespace",
			namespace: "jobs", metric: "queue_depth", selector: `queue in (a.b,c-d),tier!=gold`,
			query:   `sum(queue_depth{namespace="jobs",queue=~"a\\.b|c-d",tier!="gold"}) by (queue)`,
			samples: []fakeprom.Sample{{Labels: map[string]string{"queue": "a.b"}, Value: "3", TS: 1700000000}},
			want:    []string{`queue_depth{queue=a.b}=3@1700000000`},
		},
		{
			name:      "ignores the namespace on a rule with namespaced: false, and queries the series' own name",
			namespace: "default", metric: "kafka_consumer_lag", selector: "topic=orders",
			query:   `max(kafka_lag{topic="orders"}) by (topic)`,
			samples: []fakeprom.Sample{{Labels: map[string]string{"topic": "orders"}, Value: "1200", TS: 1700000001}},
			want:    []string{`kafka_consumer_lag{topic=orders}=1200@1700000001`},
		},
		{
			name:      "finds the namespace label through a template, and keeps the window of the rate",
			namespace: "default", metric: "app_requests_per_second", selector: "container=app",
			query:   `sum(rate(app_requests_total{namespace="default",container="app"}[1m]))`,
			samples: []fakeprom.Sample{{Labels: map[string]string{}, Value: "12.5", TS: 1700000002}},
			want:    []string{`app_requests_per_second{}=12500m@1700000002/60s`},
		},
		{
			name:      "answers an empty list for no data",
			namespace: "jobs", metric: "queue_depth",
			query: `sum(queue_depth{namespace="jobs"}) by (queue)`,
			want:  nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.discover(t)
			f.prom.Vecs[tc.query] = tc.samples
			sel, err := labels.Parse(tc.selector)
			if err != nil {
				t.Fatal(err)
			}
			list, err := f.p.GetExternalMetric(context.Background(), tc.namespace, sel, info(tc.metric))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff([]string{tc.query}, f.prom.Received()); d != "" {
				t.Errorf("queries (-want +got):\n%s", d)
			}
			var got []string
			for _, v := range list.Items {
				s := fmt.Sprintf("%s{%s}=%s@%d", v.MetricName, labels.Set(v.MetricLabels), v.Value.String(), v.Timestamp.Unix())
				if v.WindowSeconds != nil {
					s += fmt.Sprintf("/%ds", *v.WindowSeconds)
				}
				got = append(got, s)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("values (-want +got):\n%s", d)
			}
		})
	}
}

func TestGetExternalMetricErrors(t *testing.T) {
	f := newFixture(t)
	_, err := f.p.GetExternalMetric(context.Background(), "jobs", labels.Everything(), info("queue_depth"))
	if !apierrors.IsServiceUnavailable(err) {
		t.Errorf("before discovery: %v, want 503", err)
	}
	f.discover(t)

	_, err = f.p.GetExternalMetric(context.Background(), "jobs", labels.Everything(), info("no_such_metric"))
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `"no_such_metric"`) {
		t.Errorf("unknown metric: %v, want 404 naming it", err)
	}

	sel, err := labels.Parse("queue>3")
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.p.GetExternalMetric(context.Background(), "jobs", sel, info("queue_depth"))
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "queue>3") {
		t.Errorf("selector without a PromQL matcher: %v, want 400 naming it", err)
	}
	if q := f.prom.Received(); len(q) != 0 {
		t.Errorf("queries sent for rejected requests: %v", q)
	}

	// One series that is not a number: no answer, rather than a list the
	// HPA would add up without it.
	f.prom.Vecs[`sum(queue_depth{namespace="jobs"}) by (queue)`] = []fakeprom.Sample{
		{Labels: map[string]string{"queue": "a"}, Value: "NaN", TS: 1700000000},
		{Labels: map[string]string{"queue": "b"}, Value: "7", TS: 1700000000},
	}
	_, err = f.p.GetExternalMetric(context.Background(), "jobs", labels.Everything(), info("queue_depth"))
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `series {queue="a"} is NaN`) {
		t.Errorf("a NaN series: %v, want 404 naming it", err)
	}

	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, `{"status":"error","errorType":"bad_data","error":"parse error"}`, http.StatusBadRequest)
		return true
	})
	_, err = f.p.GetExternalMetric(context.Background(), "jobs", labels.Everything(), info("queue_depth"))
	if !apierrors.IsInternalError(err) || !strings.Contains(err.Error(), "externalRules[0]") {
		t.Errorf("a query Prometheus rejects: %v, want 500 naming the rule", err)
	}
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "unavailable", http.StatusBadGateway)
		return true
	})
	_, err = f.p.GetExternalMetric(context.Background(), "jobs", labels.Everything(), info("queue_depth"))
	if !apierrors.IsServiceUnavailable(err) {
		t.Errorf("Prometheus failing: %v, want 503", err)
	}
}

func TestUnknownMetricWhileSomeRulesNeverListedIsUnavailable(t *testing.T) {
	f := newFixture(t)
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "unavailable", http.StatusBadGateway)
		return true
	})
	f.disc.Relist(context.Background())
	_, err := f.p.GetExternalMetric(context.Background(), "jobs", labels.Everything(), info("queue_depth"))
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "externalRules[0]") {
		t.Errorf("error = %v, want 503 naming the rules that could not list", err)
	}
}

// A file in the shape of prometheus-adapter's sample configuration: a
// namespaced external rule whose series have no namespace label is left
// out (prometheus-adapter would serve it across every namespace), its
// metric answers 404 saying why, and every other rule serves.
const sampleShaped = `
rules:
- seriesQuery: '{__name__=~"^container_.*",container!="POD",namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^container_(.*)_seconds_total$"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
- seriesQuery: 'cheddar{sharp="true"}'
  name: {as: cheesy_goodness}
  resources: {overrides: {brand: {group: cheese.io, resource: brand}}}
  metricsQuery: count(cheddar{sharp="true"})
externalRules:
- seriesQuery: 'queue_consumer_lag{name!=""}'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (name)
- seriesQuery: 'queue_depth{topic!=""}'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (name)
  resources:
    namespaced: false
`

func TestALeftOutRuleIsAnswered404WithWhyAndTheOthersServe(t *testing.T) {
	f := newFixtureFor(t, sampleShaped, []map[string]string{
		{"__name__": "queue_consumer_lag", "name": "orders"},
		{"__name__": "queue_depth", "topic": "t", "name": "orders"},
	})
	f.discover(t)
	f.prom.Vecs[`sum(queue_depth{}) by (name)`] = []fakeprom.Sample{{Labels: map[string]string{"name": "orders"}, Value: "4", TS: 1700000000}}
	list, err := f.p.GetExternalMetric(context.Background(), "default", labels.Everything(), info("queue_depth"))
	if err != nil || len(list.Items) != 1 {
		t.Errorf("the other rule: %v, %v; want its value", list, err)
	}
	_, err = f.p.GetExternalMetric(context.Background(), "default", labels.Everything(), info("queue_consumer_lag"))
	for _, want := range []string{"the rule that would serve it is left out", "test.yaml:12: externalRules[0]", "namespaced: false"} {
		if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("the left-out rule's metric: %v, want a 404 saying %q", err, want)
		}
	}
	if got := f.prom.Received(); len(got) != 1 {
		t.Errorf("queries sent: %v, want only the served rule's", got)
	}
	if d := cmp.Diff([]provider.ExternalMetricInfo{{Metric: "queue_depth"}}, f.p.ListAllExternalMetrics()); d != "" {
		t.Errorf("ListAllExternalMetrics (-want +got):\n%s", d)
	}
}

// With emptyIsZero, no series is one value of 0 (an HPA fails on an empty
// list, and at zero replicas there is no traffic to have series for);
// Prometheus failing is still an error, and a NaN still no value.
func TestEmptyIsZero(t *testing.T) {
	const zeroRule = `
externalRules:
- seriesQuery: 'ingress_requests_total{namespace!=""}'
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {as: ingress_requests_per_second}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]))
  emptyIsZero: true
`
	// No series of the counter yet: the metric is served, and 0.
	f := newFixtureFor(t, zeroRule, nil)
	f.discover(t)
	const expr = `sum(rate(ingress_requests_total{namespace="shop"}[1m]))`
	list, err := f.p.GetExternalMetric(context.Background(), "shop", labels.Everything(), info("ingress_requests_per_second"))
	if err != nil || len(list.Items) != 1 || !list.Items[0].Value.IsZero() || !list.Items[0].Timestamp.Time.Equal(now) ||
		list.Items[0].WindowSeconds == nil || *list.Items[0].WindowSeconds != 60 {
		t.Fatalf("no series: %+v, %v; want one value of 0, now, over the query's 60s window", list, err)
	}
	f.prom.Vecs[expr] = []fakeprom.Sample{{Labels: map[string]string{}, Value: "4", TS: 1700000000}}
	if list, err := f.p.GetExternalMetric(context.Background(), "shop", labels.Everything(), info("ingress_requests_per_second")); err != nil || list.Items[0].Value.String() != "4" {
		t.Errorf("with series: %+v, %v", list, err)
	}
	f.prom.Vecs[expr] = []fakeprom.Sample{{Labels: map[string]string{}, Value: "NaN", TS: 1700000000}}
	if _, err := f.p.GetExternalMetric(context.Background(), "shop", labels.Everything(), info("ingress_requests_per_second")); !apierrors.IsNotFound(err) {
		t.Errorf("NaN: %v, want 404, not 0", err)
	}
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "unavailable", http.StatusBadGateway)
		return true
	})
	if _, err := f.p.GetExternalMetric(context.Background(), "shop", labels.Everything(), info("ingress_requests_per_second")); !apierrors.IsServiceUnavailable(err) {
		t.Errorf("Prometheus failing: %v, want 503, not 0", err)
	}
}
