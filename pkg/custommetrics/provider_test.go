package custommetrics

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakemapper"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

var (
	deployments = schema.GroupResource{Group: "apps", Resource: "deployments"}
	ingresses   = schema.GroupResource{Group: "networking.k8s.io", Resource: "ingresses"}
	services    = schema.GroupResource{Resource: "services"}
)

// fakeResolver plays the informer caches.
type fakeResolver struct {
	pods    map[string]map[string]labels.Set // namespace -> pod -> labels
	objects map[schema.GroupResource]map[string][]string
	owners  map[string][]string // "resource/namespace/name" -> pods
	err     error
}

func (f *fakeResolver) PodsMatching(_ context.Context, namespace string, sel labels.Selector) ([]string, error) {
	if f.err != nil {
		return nil, f.err
	}
	var out []string
	for name, ls := range f.pods[namespace] {
		if sel.Matches(ls) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (f *fakeResolver) ObjectsMatching(_ context.Context, gr schema.GroupResource, namespace string, _ labels.Selector) ([]string, error) {
	return f.objects[gr][namespace], nil
}

func (f *fakeResolver) PodsFor(_ context.Context, gr schema.GroupResource, namespace, name string) ([]string, error) {
	pods, ok := f.owners[gr.String()+"/"+namespace+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(gr, name)
	}
	return pods, nil
}

type sample struct {
	labels map[string]string
	value  string
	ts     float64
}

// fakeProm plays Prometheus' HTTP API: /api/v1/series answers with series,
// /api/v1/query with the vector for the query text, or with an error.
type fakeProm struct {
	t      *testing.T
	mu     sync.Mutex
	series []map[string]string
	vecs   map[string][]sample
	fail   func(w http.ResponseWriter) bool
	delay  time.Duration
	// queries records every query text received.
	queries []string
}

func (f *fakeProm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		f.t.Errorf("fake Prometheus: %v", err)
	}
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil && f.fail(w) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/api/v1/series":
		writeJSON(f.t, w, map[string]any{"status": "success", "data": f.series})
	case "/api/v1/query":
		q := r.Form.Get("query")
		f.queries = append(f.queries, q)
		vec, ok := f.vecs[q]
		if !ok {
			vec = []sample{}
		}
		result := make([]map[string]any, 0, len(vec))
		for _, s := range vec {
			result = append(result, map[string]any{"metric": s.labels, "value": []any{s.ts, s.value}})
		}
		writeJSON(f.t, w, map[string]any{"status": "success", "data": map[string]any{"resultType": "vector", "result": result}})
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeProm) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries)
}

func writeJSON(t *testing.T, w http.ResponseWriter, v any) {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Errorf("fake Prometheus: %v", err)
	}
}

var appSeries = []map[string]string{
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-a", "endpoint": "/"},
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-b", "endpoint": "/"},
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-b", "endpoint": "/mem"},
}

type fixture struct {
	p     *Provider
	prom  *fakeProm
	res   *fakeResolver
	clock *clocktesting.FakeClock
}

func newFixture(t *testing.T, cfgYAML string, timeout time.Duration) *fixture {
	t.Helper()
	var cfg *config.Config
	var err error
	if cfgYAML == "" {
		cfg, _, err = config.Default()
	} else {
		cfg, _, err = config.Parse([]byte(cfgYAML), "test.yaml")
	}
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rules.Compile(cfg.Rules)
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakeProm{t: t, series: appSeries, vecs: map[string][]sample{}}
	srv := httptest.NewServer(fp)
	t.Cleanup(srv.Close)
	client, err := promclient.New(promclient.Config{URL: srv.URL, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	res := &fakeResolver{
		pods: map[string]map[string]labels.Set{"default": {
			"app-a":   {"app": "app"},
			"app-b":   {"app": "app"},
			"app-c":   {"app": "app"},
			"other-1": {"app": "other"},
		}},
		objects: map[schema.GroupResource]map[string][]string{
			rules.Namespaces: {"": {"default", "kube-system"}},
			deployments:      {"default": {"app", "empty", "other"}},
		},
		owners: map[string][]string{
			"ingresses.networking.k8s.io/default/main-route": {"app-a", "app-b"},
			"deployments.apps/default/app":                   {"app-a", "app-b", "app-c"},
			"deployments.apps/default/other":                 {"other-1"},
			"deployments.apps/default/empty":                 {},
			"services/default/app":                           {"app-a", "app-b", "app-c"},
		},
	}
	clock := clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0))
	p := New(Config{Rules: rs, Mapper: fakemapper.New(), Querier: client, Series: client, Resolver: res, Clock: clock})
	return &fixture{p: p, prom: fp, res: res, clock: clock}
}

func (f *fixture) discover(t *testing.T) {
	t.Helper()
	if err := f.p.relist(context.Background()); err != nil {
		t.Fatalf("relist: %v", err)
	}
}

func TestListAllMetrics(t *testing.T) {
	f := newFixture(t, "", time.Second)
	if got := f.p.ListAllMetrics(); len(got) != 0 {
		t.Errorf("ListAllMetrics() before discovery = %v, want empty", got)
	}
	f.discover(t)
	var got []string
	for _, m := range f.p.ListAllMetrics() {
		got = append(got, fmt.Sprintf("%s %s namespaced=%v", m.GroupResource.String(), m.Metric, m.Namespaced))
	}
	var want []string
	for _, metric := range []string{"packets-per-second", "requests-per-second"} {
		want = append(want,
			"daemonsets.apps "+metric+" namespaced=true",
			"deployments.apps "+metric+" namespaced=true",
			"ingresses.networking.k8s.io "+metric+" namespaced=true",
			"namespaces "+metric+" namespaced=false",
			"pods "+metric+" namespaced=true",
			"replicasets.apps "+metric+" namespaced=true",
			"services "+metric+" namespaced=true",
			"statefulsets.apps "+metric+" namespaced=true",
		)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ListAllMetrics() (-want +got):\n%s", d)
	}
}

func TestListAllMetricsWithTemplateAndSeriesFilters(t *testing.T) {
	f := newFixture(t, `
rules:
- seriesQuery: '{__name__=~"^http_.*"}'
  seriesFilters: [{isNot: "_bucket$"}]
  resources:
    template: "<<.Resource>>"
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
`, time.Second)
	f.prom.series = []map[string]string{
		{"__name__": "http_requests_total", "namespace": "shop", "service": "cart", "node": "n1", "code": "200"},
		{"__name__": "http_request_duration_seconds_bucket", "namespace": "shop", "service": "cart"},
		{"__name__": "http_inflight", "namespace": "shop", "service": "cart"},
	}
	f.discover(t)
	var got []string
	for _, m := range f.p.ListAllMetrics() {
		got = append(got, fmt.Sprintf("%s %s namespaced=%v", m.GroupResource.String(), m.Metric, m.Namespaced))
	}
	want := []string{
		"namespaces http_requests_per_second namespaced=false",
		"nodes http_requests_per_second namespaced=false",
		"services http_requests_per_second namespaced=true",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ListAllMetrics() (-want +got):\n%s", d)
	}
}

func TestRequestsBeforeDiscoveryAreUnavailable(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.prom.fail = func(w http.ResponseWriter) bool {
		http.Error(w, "down for maintenance", http.StatusBadGateway)
		return true
	}
	err := f.p.relist(context.Background())
	if err == nil {
		t.Fatal("relist succeeded against a failing Prometheus")
	}
	f.p.lastErr.Store(&err)
	_, err = f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("requests-per-second"), labels.Everything())
	if !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("error = %v, want 503", err)
	}
	for _, want := range []string{"metric discovery has not completed", "502"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func podsInfo(metric string) provider.CustomMetricInfo {
	return provider.CustomMetricInfo{GroupResource: rules.Pods, Namespaced: true, Metric: metric}
}

func TestGetMetricBySelectorForPods(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	const want = `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (pod)`
	f.prom.vecs[want] = []sample{
		{labels: map[string]string{"pod": "app-a"}, value: "1.5", ts: 1700000000.5},
		{labels: map[string]string{"pod": "app-b"}, value: "0.0005", ts: 1700000000.5},
		{labels: map[string]string{"pod": "app-c"}, value: "NaN", ts: 1700000000.5},
		{labels: map[string]string{"pod": "stranger"}, value: "7", ts: 1700000000.5},
	}
	sel := labels.SelectorFromSet(labels.Set{"app": "app"})
	list, err := f.p.GetMetricBySelector(context.Background(), "default", sel, podsInfo("requests-per-second"), labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	if d := cmp.Diff([]string{want}, f.prom.received()); d != "" {
		t.Errorf("queries (-want +got):\n%s", d)
	}
	type item struct {
		Kind, APIVersion, Namespace, Name, Value, Time string
		Window                                         int64
	}
	var got []item
	for _, v := range list.Items {
		got = append(got, item{v.DescribedObject.Kind, v.DescribedObject.APIVersion, v.DescribedObject.Namespace, v.DescribedObject.Name,
			v.Value.String(), v.Timestamp.UTC().Format(time.RFC3339Nano), *v.WindowSeconds})
		if v.Metric.Name != "requests-per-second" || v.Metric.Selector != nil {
			t.Errorf("metric = %+v", v.Metric)
		}
	}
	ts := "2023-11-14T22:13:20.5Z"
	wantItems := []item{
		{"Pod", "v1", "default", "app-a", "1500m", ts, 60},
		{"Pod", "v1", "default", "app-b", "500u", ts, 60},
	}
	if d := cmp.Diff(wantItems, got); d != "" {
		t.Errorf("items (-want +got):\n%s", d)
	}
}

func TestGetMetricBySelectorWithNoMatchingPodsIsEmpty(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	sel := labels.SelectorFromSet(labels.Set{"app": "nothing"})
	list, err := f.p.GetMetricBySelector(context.Background(), "default", sel, podsInfo("requests-per-second"), labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	if len(list.Items) != 0 {
		t.Errorf("items = %v, want none", list.Items)
	}
	if q := f.prom.received(); len(q) != 0 {
		t.Errorf("queried Prometheus without pods: %q", q)
	}
}

func TestMetricSelectorBecomesMatchers(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	metricSel, err := labels.Parse("endpoint in (cpu,mem),code!=500")
	if err != nil {
		t.Fatal(err)
	}
	const want = `sum(rate(app_requests_total{namespace="default",pod="other-1",code!="500",endpoint=~"cpu|mem"}[1m])) by (pod)`
	f.prom.vecs[want] = []sample{{labels: map[string]string{"pod": "other-1"}, value: "2", ts: 1}}
	list, err := f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "other"}), podsInfo("requests-per-second"), metricSel)
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	if d := cmp.Diff([]string{want}, f.prom.received()); d != "" {
		t.Errorf("queries (-want +got):\n%s", d)
	}
	if len(list.Items) != 1 || list.Items[0].Metric.Selector == nil || len(list.Items[0].Metric.Selector.MatchExpressions) != 2 {
		t.Errorf("items = %+v, want one echoing the metric selector", list.Items)
	}
}

func TestMetricSelectorWithoutPromQLEquivalentIsBadRequest(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	metricSel, err := labels.Parse("code>200")
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("requests-per-second"), metricSel)
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "code>200") {
		t.Errorf("error = %v, want 400 naming the requirement", err)
	}
}

func TestGetMetricByNameForPod(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	const want = `sum(rate(app_requests_total{namespace="default",pod="app-a"}[1m])) by (pod)`
	f.prom.vecs[want] = []sample{{labels: map[string]string{"pod": "app-a"}, value: "12.25", ts: 1700000001}}
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "default", Name: "app-a"}, podsInfo("packets-per-second"), labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricByName: %v", err)
	}
	if v.Value.String() != "12250m" || v.DescribedObject.Name != "app-a" || v.Metric.Name != "packets-per-second" {
		t.Errorf("value = %+v", v)
	}

	_, err = f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "default", Name: "app-b"}, podsInfo("packets-per-second"), labels.Everything())
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "packets-per-second") || !strings.Contains(err.Error(), "app-b") {
		t.Errorf("error for a pod without data = %v, want 404 naming metric and pod", err)
	}
}

func TestGetMetricByNameForNamespace(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	const want = `sum(rate(app_requests_total{namespace="default"}[1m])) by (namespace)`
	f.prom.vecs[want] = []sample{{labels: map[string]string{"namespace": "default"}, value: "40", ts: 1}}
	info := provider.CustomMetricInfo{GroupResource: rules.Namespaces, Metric: "requests-per-second"}
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Name: "default"}, info, labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricByName: %v", err)
	}
	if v.Value.String() != "40" || v.DescribedObject.Kind != "Namespace" || v.DescribedObject.Namespace != "" || v.DescribedObject.Name != "default" {
		t.Errorf("value = %+v", v)
	}
}

func TestGetMetricByNameThroughPods(t *testing.T) {
	tests := []struct {
		name     string
		resource schema.GroupResource
		object   string
		query    string
		samples  []sample
		want     string
		kind     string
		version  string
		wantErr  string
	}{
		{
			name:     "sums an Ingress's backend pods",
			resource: ingresses, object: "main-route",
			query:   `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b"}[1m])) by (namespace)`,
			samples: []sample{{labels: map[string]string{"namespace": "default"}, value: "2500.5", ts: 5}},
			want:    "2500500m", kind: "Ingress", version: "networking.k8s.io/v1",
		},
		{
			name:     "serves a Deployment from its pods",
			resource: deployments, object: "app",
			query:   `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`,
			samples: []sample{{labels: map[string]string{"namespace": "default"}, value: "3", ts: 5}},
			want:    "3", kind: "Deployment", version: "apps/v1",
		},
		{
			name:     "adds up series a query leaves apart",
			resource: services, object: "app",
			query: `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`,
			samples: []sample{
				{labels: map[string]string{"namespace": "default", "endpoint": "/"}, value: "1", ts: 5},
				{labels: map[string]string{"namespace": "default", "endpoint": "/mem"}, value: "0.5", ts: 6},
				{labels: map[string]string{"namespace": "default", "endpoint": "/x"}, value: "+Inf", ts: 6},
			},
			want: "1500m", kind: "Service", version: "v1",
		},
		{
			name:     "is 404 for an object that selects no pods",
			resource: deployments, object: "empty",
			wantErr: "selects no pods",
		},
		{
			name:     "is 404 for an object that does not exist",
			resource: ingresses, object: "missing",
			wantErr: `"missing" not found`,
		},
		{
			name:     "is 404 for an object whose pods have no data",
			resource: deployments, object: "other",
			query:   `sum(rate(app_requests_total{namespace="default",pod="other-1"}[1m])) by (namespace)`,
			wantErr: "no data for its 1 pods",
		},
		{
			name:     "is 404 when every value is NaN",
			resource: deployments, object: "other",
			query:   `sum(rate(app_requests_total{namespace="default",pod="other-1"}[1m])) by (namespace)`,
			samples: []sample{{labels: map[string]string{"namespace": "default"}, value: "NaN", ts: 5}},
			wantErr: "no data",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "", time.Second)
			f.discover(t)
			if tc.query != "" {
				f.prom.vecs[tc.query] = tc.samples
			}
			info := provider.CustomMetricInfo{GroupResource: tc.resource, Namespaced: true, Metric: "requests-per-second"}
			v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "default", Name: tc.object}, info, labels.Everything())
			if tc.wantErr != "" {
				if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want 404 saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("GetMetricByName: %v", err)
			}
			if d := cmp.Diff([]string{tc.query}, f.prom.received()); d != "" {
				t.Errorf("queries (-want +got):\n%s", d)
			}
			if v.Value.String() != tc.want {
				t.Errorf("value = %s, want %s", v.Value.String(), tc.want)
			}
			if v.DescribedObject.Kind != tc.kind || v.DescribedObject.APIVersion != tc.version || v.DescribedObject.Name != tc.object {
				t.Errorf("described object = %+v", v.DescribedObject)
			}
			if v.WindowSeconds == nil || *v.WindowSeconds != 60 {
				t.Errorf("window = %v, want 60", v.WindowSeconds)
			}
		})
	}
}

func TestGetMetricBySelectorThroughPods(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	f.prom.vecs[`sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`] =
		[]sample{{labels: map[string]string{"namespace": "default"}, value: "9", ts: 5}}
	info := provider.CustomMetricInfo{GroupResource: deployments, Namespaced: true, Metric: "requests-per-second"}
	list, err := f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), info, labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	// "empty" has no pods and "other" no data: only "app" is listed.
	if len(list.Items) != 1 || list.Items[0].DescribedObject.Name != "app" || list.Items[0].Value.String() != "9" {
		t.Errorf("items = %+v, want app=9 only", list.Items)
	}
	if got := len(f.prom.received()); got != 2 {
		t.Errorf("sent %d queries, want 2 (one per object with pods)", got)
	}
}

func TestUnknownMetricIsNotFound(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	tests := []struct {
		name string
		info provider.CustomMetricInfo
	}{
		{name: "an unknown metric name", info: podsInfo("bytes-per-second")},
		{name: "a known metric on a resource it is not served for", info: provider.CustomMetricInfo{GroupResource: schema.GroupResource{Resource: "configmaps"}, Namespaced: true, Metric: "requests-per-second"}},
		{name: "a namespaced metric asked for cluster-wide", info: provider.CustomMetricInfo{GroupResource: rules.Pods, Namespaced: false, Metric: "requests-per-second"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), tc.info, labels.Everything())
			if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), tc.info.Metric) {
				t.Errorf("error = %v, want 404 naming %q", err, tc.info.Metric)
			}
		})
	}
}

func TestSingularResourceInRequestIsNormalised(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	f.prom.vecs[`sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b"}[1m])) by (namespace)`] =
		[]sample{{labels: map[string]string{"namespace": "default"}, value: "1", ts: 5}}
	info := provider.CustomMetricInfo{GroupResource: schema.GroupResource{Group: "networking.k8s.io", Resource: "ingress"}, Namespaced: true, Metric: "requests-per-second"}
	if _, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "default", Name: "main-route"}, info, labels.Everything()); err != nil {
		t.Errorf("GetMetricByName(ingress.networking.k8s.io): %v", err)
	}
}

func TestPrometheusFailures(t *testing.T) {
	tests := []struct {
		name    string
		fail    func(w http.ResponseWriter) bool
		delay   time.Duration
		check   func(error) bool
		wantMsg []string
	}{
		{
			name: "is 503 naming the cause when Prometheus errors",
			fail: func(w http.ResponseWriter) bool {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprint(w, `{"status":"error","errorType":"unavailable","error":"TSDB not ready"}`)
				return true
			},
			check:   apierrors.IsServiceUnavailable,
			wantMsg: []string{"requests-per-second", "TSDB not ready"},
		},
		{
			name: "is 503 when a proxy in front of Prometheus fails",
			fail: func(w http.ResponseWriter) bool {
				http.Error(w, "upstream connect error", http.StatusBadGateway)
				return true
			},
			check:   apierrors.IsServiceUnavailable,
			wantMsg: []string{"502"},
		},
		{
			name: "is 500 naming the rule when Prometheus rejects the query",
			fail: func(w http.ResponseWriter) bool {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprint(w, `{"status":"error","errorType":"bad_data","error":"parse error: unexpected }"}`)
				return true
			},
			check:   apierrors.IsInternalError,
			wantMsg: []string{"rules[0]", "parse error"},
		},
		{
			name:    "is 504 when Prometheus is slower than the deadline",
			delay:   2 * time.Second,
			check:   apierrors.IsTimeout,
			wantMsg: []string{"deadline"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "", 200*time.Millisecond)
			f.discover(t)
			f.prom.fail, f.prom.delay = tc.fail, tc.delay
			_, err := f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("requests-per-second"), labels.Everything())
			if err == nil || !tc.check(err) {
				t.Fatalf("error = %v (%T)", err, err)
			}
			for _, w := range tc.wantMsg {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestPrometheusUnreachableIsUnavailable(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	client, err := promclient.New(promclient.Config{URL: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.p.prom = client
	_, err = f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("requests-per-second"), labels.Everything())
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error = %v, want 503 saying connection refused", err)
	}
}

func TestRelistKeepsPreviousIndexOnFailure(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	before := len(f.p.ListAllMetrics())
	f.prom.fail = func(w http.ResponseWriter) bool {
		http.Error(w, "boom", http.StatusInternalServerError)
		return true
	}
	if err := f.p.relist(context.Background()); err == nil {
		t.Fatal("relist succeeded against a failing Prometheus")
	}
	if after := len(f.p.ListAllMetrics()); after != before || before == 0 {
		t.Errorf("metrics after a failed relist = %d, before = %d", after, before)
	}
}

func TestRelistAsksForRecentSeriesOnly(t *testing.T) {
	f := newFixture(t, "", time.Second)
	var gotStart, gotEnd, gotMatch string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		gotStart, gotEnd, gotMatch = r.Form.Get("start"), r.Form.Get("end"), r.Form.Get("match[]")
		fmt.Fprint(w, `{"status":"success","data":[]}`)
	}))
	defer srv.Close()
	client, err := promclient.New(promclient.Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	f.p.series = client
	if err := f.p.relist(context.Background()); err != nil {
		t.Fatal(err)
	}
	if gotMatch != `app_requests_total{namespace!="",pod!=""}` || gotEnd != "1700000000" || gotStart != "1699999940" {
		t.Errorf("series request match=%q start=%q end=%q", gotMatch, gotStart, gotEnd)
	}
}

func TestQuantity(t *testing.T) {
	tests := []struct {
		in   float64
		want string
		ok   bool
	}{
		{in: 0, want: "0", ok: true},
		{in: 1.5, want: "1500m", ok: true},
		{in: 0.0005, want: "500u", ok: true},
		{in: 1e-9, want: "1n", ok: true},
		{in: 0.123456789, want: "123456789n", ok: true},
		{in: 8.982068966, want: "8982m", ok: true},
		{in: 1e15, want: "1P", ok: true},
		{in: -2.25, want: "-2250m", ok: true},
		{in: 123456789.5, want: "123456789500m", ok: true},
		{in: 1e12, want: "1T", ok: true},
		{in: math.NaN(), ok: false},
		{in: math.Inf(1), ok: false},
		{in: math.Inf(-1), ok: false},
		{in: 1e300, ok: false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.in), func(t *testing.T) {
			q, ok := quantity(tc.in)
			if ok != tc.ok {
				t.Fatalf("quantity(%v) ok = %v", tc.in, ok)
			}
			if ok && q.String() != tc.want {
				t.Errorf("quantity(%v) = %s, want %s", tc.in, q.String(), tc.want)
			}
		})
	}
}
