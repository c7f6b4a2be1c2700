package custommetrics

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakeprom"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/query"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/trace"
)

// With queries shared, the HPAs of one namespace on one metric cost one
// query: two Pods requests for different pods, then each again, send one
// query of every pod asked for (by pod), and two Deployments served from
// their pods one query of their pods (by namespace and pod), whose series
// each Deployment sums as the rule's sum does. The values are those the
// requests' own queries give; explain shows a shared answer and its age.
func TestSharedQueries(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.p.sharing = query.NewSharing(f.p.stores, 30*time.Second)
	f.discover(t)
	ctx := context.Background()
	byPod := `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c|other-1"}[1m])) by (pod)`
	viaPods := `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c|other-1"}[1m])) by (namespace,pod)`
	first := []string{
		`sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (pod)`,
		`sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (namespace,pod)`,
	}
	for _, q := range append([]string{byPod, viaPods}, first...) {
		f.prom.Vecs[q] = []fakeprom.Sample{
			{Labels: map[string]string{"namespace": "default", "pod": "app-a"}, Value: "1", TS: 5},
			{Labels: map[string]string{"namespace": "default", "pod": "app-b"}, Value: "2", TS: 5},
			{Labels: map[string]string{"namespace": "default", "pod": "app-c"}, Value: "3", TS: 5},
			{Labels: map[string]string{"namespace": "default", "pod": "other-1"}, Value: "10", TS: 6},
		}
	}
	pods := func(app string) map[string]string {
		list, err := f.p.GetMetricBySelector(ctx, "default", labels.SelectorFromSet(labels.Set{"app": app}), podsInfo("requests-per-second"), labels.Everything())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, v := range list.Items {
			out[v.DescribedObject.Name] = v.Value.String()
		}
		return out
	}
	deployment := func(name string) string {
		v, err := f.p.GetMetricByName(ctx, types.NamespacedName{Namespace: "default", Name: name},
			provider.CustomMetricInfo{GroupResource: deployments, Namespaced: true, Metric: "requests-per-second"}, labels.Everything())
		if err != nil {
			t.Fatal(err)
		}
		return v.Value.String()
	}
	for range 2 {
		if d := cmp.Diff(map[string]string{"app-a": "1", "app-b": "2", "app-c": "3"}, pods("app")); d != "" {
			t.Errorf("app's pods (-want +got):\n%s", d)
		}
		if d := cmp.Diff(map[string]string{"other-1": "10"}, pods("other")); d != "" {
			t.Errorf("other's pods (-want +got):\n%s", d)
		}
		if v := deployment("app"); v != "6" {
			t.Errorf("deployment app = %s, want 6, the sum of its pods", v)
		}
		if v := deployment("other"); v != "10" {
			t.Errorf("deployment other = %s, want 10", v)
		}
	}
	received := f.prom.Received()
	counts := map[string]int{}
	for _, q := range received {
		counts[q]++
	}
	// The first request of each shape queries its pods, the second the
	// union; every later one is answered from the union's answer.
	if counts[byPod] != 1 || counts[viaPods] != 1 || len(received) != 4 {
		t.Errorf("sent %q: want the union of each shape once, after one query each for the first objects", received)
	}

	tr := &trace.Trace{}
	if _, err := f.p.GetMetricBySelector(trace.WithTrace(ctx, tr), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("requests-per-second"), labels.Everything()); err != nil {
		t.Fatal(err)
	}
	_, _, _, qs := tr.Snapshot()
	if len(qs) != 1 || !qs[0].Shared || qs[0].Expr != byPod || len(qs[0].Vector) != 3 {
		t.Errorf("trace %+v: want one shared answer of the union query, with app's 3 pods", qs)
	}
	if len(f.prom.Received()) != 4 {
		t.Errorf("an explained request sent a query: %q", f.prom.Received()[4:])
	}
}

// A rule whose value for a pod depends on other pods' series is not
// shared: each request queries, and explain says why.
func TestSharedQueriesLeaveOutRulesThatMixObjects(t *testing.T) {
	f := newFixture(t, `rules:
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: ^app_requests_total$, as: share-of-traffic}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>) / scalar(sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])))
`, time.Second)
	f.p.sharing = query.NewSharing(f.p.stores, 30*time.Second)
	f.discover(t)
	tr := &trace.Trace{}
	for range 2 {
		if _, err := f.p.GetMetricBySelector(trace.WithTrace(context.Background(), tr), "default", labels.SelectorFromSet(labels.Set{"app": "app"}),
			podsInfo("share-of-traffic"), labels.Everything()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(f.prom.Received()); n != 2 {
		t.Errorf("sent %d queries for 2 requests, want 2", n)
	}
	if why := tr.WhyNotShared(); why == "" {
		t.Error("explain does not say why the query was not shared")
	}
}
