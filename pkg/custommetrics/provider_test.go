package custommetrics

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakeprom"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
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

var appSeries = []map[string]string{
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-a", "endpoint": "/"},
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-b", "endpoint": "/"},
	{"__name__": "app_requests_total", "namespace": "default", "pod": "app-b", "endpoint": "/mem"},
}

type fixture struct {
	p     *Provider
	prom  *fakeprom.Server
	res   *fakeResolver
	disc  *discovery.Discoverer
	clock *clocktesting.FakeClock
}

// compileRules parses a rules file and compiles its rules section. ""
// is the built-in rules with Ingresses served through their pods too
// (the built-in rules read Ingresses from the ingress controller's
// counter, which these tests' Prometheus has no series of), so that every
// pod owner is served through its pods.
func compileRules(t *testing.T, cfgYAML string) []*rules.Rule {
	t.Helper()
	if cfgYAML == "" {
		cfgYAML = strings.Replace(string(config.DefaultYAML()), "    - services\n", "    - services\n    - ingresses.networking.k8s.io\n", 1)
	}
	set, err := rules.Parse([]byte(cfgYAML), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return set.Custom
}

func newFixture(t *testing.T, cfgYAML string, timeout time.Duration) *fixture {
	t.Helper()
	rs := compileRules(t, cfgYAML)
	fp := fakeprom.NewInMemory(t, appSeries)
	client, err := promclient.New(promclient.Config{URL: fp.URL, RoundTripper: fp.Transport(), Timeout: timeout})
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
	// Discovery's listings read this clock for their range; nothing here
	// compares a timestamp with the real clock.
	// fixed date: discovery's fake clock, not the provider's.
	clock := clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0))
	p := New(Config{Rules: rs, Mapper: rules.BuiltinMapper(), Querier: client, Resolver: res})
	var queries []string
	for _, r := range rs {
		queries = append(queries, r.SeriesQuery())
	}
	d := discovery.New(discovery.Config{Queries: queries, Lister: client, Clock: clock})
	d.Subscribe(p.Update)
	return &fixture{p: p, prom: fp, res: res, disc: d, clock: clock}
}

func (f *fixture) discover(t *testing.T) {
	t.Helper()
	if r := f.disc.Relist(context.Background()); len(r.Failed) > 0 {
		t.Fatalf("discovery failed: %v", r.Failed)
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
	f.prom.Series = []map[string]string{
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
	_, err := f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("requests-per-second"), labels.Everything())
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "metric discovery has not completed") {
		t.Fatalf("error before any discovery = %v, want 503 saying discovery has not completed", err)
	}

	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "down for maintenance", http.StatusBadGateway)
		return true
	})
	if r := f.disc.Relist(context.Background()); len(r.Failed) == 0 {
		t.Fatal("discovery succeeded against a failing Prometheus")
	}
	_, err = f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("requests-per-second"), labels.Everything())
	if !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("error = %v, want 503", err)
	}
	for _, want := range []string{"some rules could not list their series", "rules[0]", "rules[1]", "502"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	f.prom.SetFail(nil)
	f.discover(t)
	if _, err := f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("requests-per-second"), labels.Everything()); err != nil {
		t.Errorf("after a successful discovery: %v", err)
	}
	_, err = f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("no-such-metric"), labels.Everything())
	if !apierrors.IsNotFound(err) {
		t.Errorf("unknown metric once every rule listed: %v, want 404", err)
	}
}

func podsInfo(metric string) provider.CustomMetricInfo {
	return provider.CustomMetricInfo{GroupResource: rules.Pods, Namespaced: true, Metric: metric}
}

func TestGetMetricBySelectorForPods(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	const want = `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (pod)`
	f.prom.Vecs[want] = []fakeprom.Sample{
		{Labels: map[string]string{"pod": "app-a"}, Value: "1.5", TS: 1700000000.5},
		{Labels: map[string]string{"pod": "app-b"}, Value: "0.0005", TS: 1700000000.5},
		{Labels: map[string]string{"pod": "app-c"}, Value: "NaN", TS: 1700000000.5},
		{Labels: map[string]string{"pod": "stranger"}, Value: "7", TS: 1700000000.5},
	}
	sel := labels.SelectorFromSet(labels.Set{"app": "app"})
	list, err := f.p.GetMetricBySelector(context.Background(), "default", sel, podsInfo("requests-per-second"), labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	if d := cmp.Diff([]string{want}, f.prom.Received()); d != "" {
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
	if q := f.prom.Received(); len(q) != 0 {
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
	f.prom.Vecs[want] = []fakeprom.Sample{{Labels: map[string]string{"pod": "other-1"}, Value: "2", TS: 1}}
	list, err := f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "other"}), podsInfo("requests-per-second"), metricSel)
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	if d := cmp.Diff([]string{want}, f.prom.Received()); d != "" {
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
	f.prom.Vecs[want] = []fakeprom.Sample{{Labels: map[string]string{"pod": "app-a"}, Value: "12.25", TS: 1700000001}}
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

// A rule that does not aggregate leaves one series per endpoint: the
// object's value is their sum, by name and by selector alike.
func TestSeveralSeriesForOneObjectAreSummed(t *testing.T) {
	f := newFixture(t, `rules:
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^app_requests_total$", as: "raw-rate"}
  metricsQuery: rate(<<.Series>>{<<.LabelMatchers>>}[1m])
`, time.Second)
	f.discover(t)
	perEndpoint := func(pod string) []fakeprom.Sample {
		return []fakeprom.Sample{
			{Labels: map[string]string{"pod": pod, "endpoint": "/"}, Value: "1.5", TS: 1},
			{Labels: map[string]string{"pod": pod, "endpoint": "/mem"}, Value: "2.25", TS: 1},
		}
	}
	f.prom.Vecs[`rate(app_requests_total{namespace="default",pod="app-b"}[1m])`] = perEndpoint("app-b")
	v, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "default", Name: "app-b"}, podsInfo("raw-rate"), labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricByName: %v (queries %q)", err, f.prom.Received())
	}
	if v.Value.String() != "3750m" {
		t.Errorf("by name: value %s, want the sum 3750m", v.Value.String())
	}

	f.prom.Vecs[`rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])`] = append(perEndpoint("app-a"), perEndpoint("app-b")...)
	list, err := f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("raw-rate"), labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v (queries %q)", err, f.prom.Received())
	}
	got := map[string]string{}
	for _, it := range list.Items {
		got[it.DescribedObject.Name] = it.Value.String()
	}
	if d := cmp.Diff(map[string]string{"app-a": "3750m", "app-b": "3750m"}, got); d != "" {
		t.Errorf("by selector (-want +got):\n%s", d)
	}
}

func TestGetMetricByNameForNamespace(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	const want = `sum(rate(app_requests_total{namespace="default"}[1m])) by (namespace)`
	f.prom.Vecs[want] = []fakeprom.Sample{{Labels: map[string]string{"namespace": "default"}, Value: "40", TS: 1}}
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
		samples  []fakeprom.Sample
		want     string
		kind     string
		version  string
		wantErr  string
	}{
		{
			name:     "sums an Ingress's backend pods",
			resource: ingresses, object: "main-route",
			query:   `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b"}[1m])) by (namespace)`,
			samples: []fakeprom.Sample{{Labels: map[string]string{"namespace": "default"}, Value: "2500.5", TS: 5}},
			want:    "2500500m", kind: "Ingress", version: "networking.k8s.io/v1",
		},
		{
			name:     "serves a Deployment from its pods",
			resource: deployments, object: "app",
			query:   `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`,
			samples: []fakeprom.Sample{{Labels: map[string]string{"namespace": "default"}, Value: "3", TS: 5}},
			want:    "3", kind: "Deployment", version: "apps/v1",
		},
		{
			name:     "adds up series a query leaves apart",
			resource: services, object: "app",
			query: `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`,
			samples: []fakeprom.Sample{
				{Labels: map[string]string{"namespace": "default", "endpoint": "/"}, Value: "1", TS: 5},
				{Labels: map[string]string{"namespace": "default", "endpoint": "/mem"}, Value: "0.5", TS: 6},
			},
			want: "1500m", kind: "Service", version: "v1",
		},
		{
			name:     "leaves out series of another namespace's pods of the same names",
			resource: deployments, object: "app",
			query: `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`,
			samples: []fakeprom.Sample{
				{Labels: map[string]string{"namespace": "default"}, Value: "3", TS: 5},
				{Labels: map[string]string{"namespace": "staging"}, Value: "100", TS: 5},
			},
			want: "3", kind: "Deployment", version: "apps/v1",
		},
		{
			name:     "is 404, not a smaller sum, when a series is not a finite number",
			resource: services, object: "app",
			query: `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`,
			samples: []fakeprom.Sample{
				{Labels: map[string]string{"namespace": "default", "endpoint": "/"}, Value: "1", TS: 5},
				{Labels: map[string]string{"namespace": "default", "endpoint": "/x"}, Value: "+Inf", TS: 6},
			},
			wantErr: "a series of its pods is +Inf",
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
			samples: []fakeprom.Sample{{Labels: map[string]string{"namespace": "default"}, Value: "NaN", TS: 5}},
			wantErr: "a series of its pods is NaN",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "", time.Second)
			f.discover(t)
			if tc.query != "" {
				f.prom.Vecs[tc.query] = tc.samples
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
			if d := cmp.Diff([]string{tc.query}, f.prom.Received()); d != "" {
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
	f.prom.Vecs[`sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace)`] =
		[]fakeprom.Sample{{Labels: map[string]string{"namespace": "default"}, Value: "9", TS: 5}}
	info := provider.CustomMetricInfo{GroupResource: deployments, Namespaced: true, Metric: "requests-per-second"}
	list, err := f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), info, labels.Everything())
	if err != nil {
		t.Fatalf("GetMetricBySelector: %v", err)
	}
	// "empty" has no pods and "other" no data: only "app" is listed.
	if len(list.Items) != 1 || list.Items[0].DescribedObject.Name != "app" || list.Items[0].Value.String() != "9" {
		t.Errorf("items = %+v, want app=9 only", list.Items)
	}
	if got := len(f.prom.Received()); got != 2 {
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
	f.prom.Vecs[`sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b"}[1m])) by (namespace)`] =
		[]fakeprom.Sample{{Labels: map[string]string{"namespace": "default"}, Value: "1", TS: 5}}
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
			// In a synctest bubble the 2 s delay and the 200 ms deadline
			// pass without waiting.
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t, "", 200*time.Millisecond)
				f.discover(t)
				f.prom.SetFail(tc.fail)
				f.prom.SetDelay(tc.delay)
				start := time.Now()
				_, err := f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("requests-per-second"), labels.Everything())
				if err == nil || !tc.check(err) {
					t.Fatalf("error = %v (%T)", err, err)
				}
				if took := time.Since(start); took > 200*time.Millisecond {
					t.Errorf("answered after %v, later than the 200ms deadline", took)
				}
				for _, w := range tc.wantMsg {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			})
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
	f.p.stores.Default = client
	_, err = f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("requests-per-second"), labels.Everything())
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error = %v, want 503 saying connection refused", err)
	}
}

func TestFailedRelistKeepsTheMetrics(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	before := len(f.p.ListAllMetrics())
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "boom", http.StatusInternalServerError)
		return true
	})
	if r := f.disc.Relist(context.Background()); len(r.Failed) == 0 {
		t.Fatal("relist succeeded against a failing Prometheus")
	}
	if after := len(f.p.ListAllMetrics()); after != before || before == 0 {
		t.Errorf("metrics after a failed relist = %d, before = %d", after, before)
	}
}

// TestIdenticalSelectorRequestsShareOneAnswer sends the same request from
// many callers while Prometheus is slow: they share one query and one list
// of values, and a caller that gives up does not fail the others.
func TestIdenticalSelectorRequestsShareOneAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, "", 5*time.Second)
		f.discover(t)
		const want = `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (pod)`
		f.prom.Vecs[want] = []fakeprom.Sample{{Labels: map[string]string{"pod": "app-a"}, Value: "2", TS: 1700000000}}
		f.prom.SetDelay(300 * time.Millisecond)
		sel := labels.SelectorFromSet(labels.Set{"app": "app"})

		impatient, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		var wg sync.WaitGroup
		errs := make([]error, 8)
		lists := make([]*custom_metrics.MetricValueList, 8)
		for i := range 8 {
			wg.Go(func() {
				ctx := context.Background()
				if i == 0 {
					ctx = impatient
				}
				lists[i], errs[i] = f.p.GetMetricBySelector(ctx, "default", sel, podsInfo("requests-per-second"), labels.Everything())
			})
			if i == 0 {
				synctest.Wait() // the impatient caller starts the shared call
			}
		}
		wg.Wait()
		// Its deadline is a 504 through the status table, as every other
		// deadline is: a raw context error would reach the API server and
		// be answered 500.
		if !apierrors.IsTimeout(errs[0]) || !strings.Contains(errs[0].Error(), "reached its deadline") {
			t.Errorf("the impatient caller got %v, want a 504 saying it reached its deadline", errs[0])
		}
		for i := 1; i < 8; i++ {
			if errs[i] != nil || len(lists[i].Items) != 1 || lists[i].Items[0].Value.String() != "2" {
				t.Errorf("caller %d: %v, %+v", i, errs[i], lists[i])
			}
		}
		if got := f.prom.Received(); len(got) != 1 {
			t.Errorf("%d queries for 8 identical requests, want 1", len(got))
		}
		if lists[1] == lists[2] {
			t.Error("callers share one list object; each must get its own")
		}
	})
}

// Two labels of a series that map to namespaces (a template's namespace
// and an override's exported_namespace): every discovery round picks the
// same one, the first by name, whatever the order Go's maps give.
func TestDiscoveryPicksTheSameNamespaceLabelEveryRound(t *testing.T) {
	rs := compileRules(t, `rules:
- seriesQuery: 'http_requests_total'
  resources:
    template: <<.Resource>>
    overrides: {exported_namespace: {resource: namespace}}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
`)
	series := map[string][]model.LabelSet{rs[0].SeriesQuery(): {{
		"__name__": "http_requests_total", "namespace": "monitoring", "exported_namespace": "shop", "pod": "web-1",
	}}}
	for round := range 50 {
		p := New(Config{Rules: rs, Mapper: rules.BuiltinMapper()})
		p.Update(discovery.Result{Series: series})
		e, ok := p.catalog.Index().Get(metricKey{rules.Pods, "http_requests_per_second"}, "")
		if !ok {
			t.Fatalf("round %d: the pods metric was not discovered: %v", round, p.ListAllMetrics())
		}
		if e.Value.namespaceLabel != "exported_namespace" {
			t.Fatalf("round %d: namespace label %q, want exported_namespace (the first by name)", round, e.Value.namespaceLabel)
		}
	}
}
