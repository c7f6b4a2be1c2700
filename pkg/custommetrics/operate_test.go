package custommetrics

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/model"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakeprom"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/discovery"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/explain"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// TestExplainFollowsOneRequest runs requests through explain.Run against
// the real provider: the report names the rule, the pods resolved, the
// PromQL and Prometheus' samples, and the code the API answers with.
func TestExplainFollowsOneRequest(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	const expr = `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[1m])) by (pod)`
	f.prom.Vecs[expr] = []fakeprom.Sample{{Labels: map[string]string{"pod": "app-a"}, Value: "1.5", TS: 1700000000.5}}

	req, err := explain.ParseArgs("pods/requests-per-second", "default", "app=app", "")
	if err != nil {
		t.Fatal(err)
	}
	rep := explain.Run(context.Background(), explain.Providers{Custom: f.p}, req)
	if rep.Code != http.StatusOK || rep.Err != nil {
		t.Fatalf("code %d, err %v; want 200", rep.Code, rep.Err)
	}
	if rep.Rule != "rules[0]" || rep.Series != "app_requests_total" {
		t.Errorf("rule %q series %q, want rules[0] app_requests_total", rep.Rule, rep.Series)
	}
	if len(rep.Resolved) != 1 || !cmp.Equal(rep.Resolved[0].Names, []string{"app-a", "app-b", "app-c"}) {
		t.Errorf("resolved %+v, want the three app pods", rep.Resolved)
	}
	if len(rep.Queries) != 1 || rep.Queries[0].Expr != expr || len(rep.Queries[0].Vector) != 1 {
		t.Fatalf("queries %+v, want the one rendered query and its sample", rep.Queries)
	}
	if len(rep.Custom) != 1 || rep.Custom[0].Value.String() != "1500m" {
		t.Errorf("values %+v, want app-a 1500m", rep.Custom)
	}
	var out bytes.Buffer
	if err := rep.Write(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rules[0]", expr, `{pod="app-a"} 1.5`, "HTTP 200", "default/pod/app-a requests-per-second = 1500m",
		"GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second?labelSelector=app%3Dapp"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}

	// An object without pods: 404, and the report says why.
	req, _ = explain.ParseArgs("deployments.apps/empty/requests-per-second", "default", "", "")
	rep = explain.Run(context.Background(), explain.Providers{Custom: f.p}, req)
	if rep.Code != http.StatusNotFound || !strings.Contains(rep.Err.Error(), "selects no pods") {
		t.Errorf("empty deployment: code %d err %v, want 404 naming why", rep.Code, rep.Err)
	}
	// Prometheus failing: 503, and the failed query is in the report.
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "down", http.StatusBadGateway)
		return true
	})
	req, _ = explain.ParseArgs("pods/requests-per-second", "default", "app=app", "")
	rep = explain.Run(context.Background(), explain.Providers{Custom: f.p}, req)
	if rep.Code != http.StatusServiceUnavailable || len(rep.Queries) != 1 || rep.Queries[0].Err == nil {
		t.Errorf("Prometheus down: code %d queries %+v, want 503 with the failed query", rep.Code, rep.Queries)
	}
	// The external API is not served here: an error, not a panic.
	req, _ = explain.ParseArgs("external/x", "default", "", "")
	if rep = explain.Run(context.Background(), explain.Providers{Custom: f.p}, req); rep.Code != http.StatusNotFound {
		t.Errorf("external request without an external provider: code %d", rep.Code)
	}
}

// TestSetRulesSwitchesTheServedMetrics: a reloaded rules set serves its
// metrics from the next discovery round it is given, and forgets the old
// rules' metrics.
func TestSetRulesSwitchesTheServedMetrics(t *testing.T) {
	f := newFixture(t, "", time.Second)
	f.discover(t)
	rs := compileRules(t, `
rules:
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^app_(.*)_total$", as: "app-${1}-rate"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^app_(.*)_total$", as: "app-${1}-rate"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[5m])) by (<<.GroupBy>>)
`)
	r := f.disc.Reconfigure(context.Background(), discovery.Queries{File: []string{rs[0].SeriesQuery()}}, func(r discovery.Result) { f.p.SetRules(rs, r) })
	if len(r.Failed) > 0 {
		t.Fatal(r.Failed)
	}
	var got []string
	for _, m := range f.p.ListAllMetrics() {
		got = append(got, m.GroupResource.String()+"/"+m.Metric)
	}
	if d := cmp.Diff([]string{"namespaces/app-requests-rate", "pods/app-requests-rate"}, got); d != "" {
		t.Errorf("metrics after the reload (-want +got):\n%s", d)
	}
	const expr = `sum(rate(app_requests_total{namespace="default",pod=~"app-a|app-b|app-c"}[2m])) by (pod)`
	f.prom.Vecs[expr] = []fakeprom.Sample{{Labels: map[string]string{"pod": "app-a"}, Value: "2", TS: 1700000000}}
	list, err := f.p.GetMetricBySelector(context.Background(), "default", labels.SelectorFromSet(labels.Set{"app": "app"}), podsInfo("app-requests-rate"), labels.Everything())
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("new metric: %v %v", list, err)
	}
	if _, err := f.p.GetMetricBySelector(context.Background(), "default", labels.Everything(), podsInfo("requests-per-second"), labels.Everything()); err == nil {
		t.Error("the old rules' metric is still served after the reload")
	}

	served, overlaps := f.p.Served()
	if len(served) != 2 || served[0].Rule.String() != "rules[0]" {
		t.Errorf("Served() = %+v", served)
	}
	if len(overlaps) != 2 || overlaps[0].Metric != "app-requests-rate" || overlaps[0].Kept.Rule.String() != "rules[0]" || overlaps[0].Ignored.Rule.String() != "rules[1]" {
		t.Errorf("overlaps = %+v, want rules[1] shadowed by rules[0] on pods and namespaces", overlaps)
	}
}

// The REST mapper's answers are remembered for resources the cluster
// serves only, and at most maxRemembered of them: a client naming made-up
// resources cannot grow the adapter's memory.
func TestTheResourceMemoIsBounded(t *testing.T) {
	m := newResourceMemo()
	mapper := rules.BuiltinMapper()
	for i := range 10_000 {
		m.lookup(mapper, schema.GroupResource{Group: "made.up", Resource: fmt.Sprintf("widgets%d", i)})
	}
	if n := m.lru.Len(); n != 0 {
		t.Errorf("%d unknown resources remembered, want none", n)
	}
	for range 3 {
		for _, gr := range []schema.GroupResource{{Resource: "pods"}, {Resource: "pod"}, {Group: "apps", Resource: "deployments"}} {
			if ri := m.lookup(mapper, gr); ri.kind == "" {
				t.Errorf("%s: no kind", gr)
			}
		}
	}
	if n := m.lru.Len(); n != 3 {
		t.Errorf("%d remembered after three known spellings, want 3", n)
	}
	// At the bound the least recently asked goes: pods, asked again, stays.
	for i := m.lru.Len(); i < maxRemembered; i++ {
		m.lru.Add(schema.GroupResource{Resource: fmt.Sprint(i)}, resourceInfo{})
	}
	m.lookup(mapper, schema.GroupResource{Resource: "pods"})
	m.lookup(mapper, schema.GroupResource{Resource: "services"})
	if _, ok := m.lru.Get(schema.GroupResource{Resource: "pods"}); !ok || m.lru.Len() != maxRemembered {
		t.Errorf("past the bound of %d: %d remembered, pods kept %v; want the bound, and pods", maxRemembered, m.lru.Len(), ok)
	}
	if _, ok := m.lru.Get(schema.GroupResource{Resource: "pod"}); ok {
		t.Error("the least recently asked spelling was kept past the bound")
	}
}

// An Object metric on an Ingress, from the ingress controller's counter,
// with emptyIsZero: an Ingress with no series (its app at zero replicas,
// nothing sent) is 0, so an HPA with minReplicas: 0 can sit there; an
// Ingress that does not exist is still a 404, and a failing Prometheus
// still an error. The report says when 0 came from emptyIsZero.
func TestEmptyIsZeroForAnObject(t *testing.T) {
	const ingressRule = `
rules:
- seriesQuery: 'ingress_requests_total{namespace!="",ingress!=""}'
  resources: {overrides: {namespace: {resource: namespace}, ingress: {group: networking.k8s.io, resource: ingress}}}
  name: {as: requests-per-second}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
  emptyIsZero: true
`
	f := newFixture(t, ingressRule, time.Second)
	f.res.objects[ingresses] = map[string][]string{"default": {"main-route", "other"}}
	info := provider.CustomMetricInfo{GroupResource: ingresses, Namespaced: true, Metric: "requests-per-second"}
	name := types.NamespacedName{Namespace: "default", Name: "main-route"}
	// Before any Ingress has had a request, Prometheus has no series of
	// the counter at all: the metric is served, and 0.
	f.discover(t)
	if v, err := f.p.GetMetricByName(context.Background(), name, info, labels.Everything()); err != nil || !v.Value.IsZero() {
		t.Fatalf("no series of the counter yet: %+v, %v; want 0", v, err)
	}
	f.prom.Series = append(f.prom.Series, map[string]string{"__name__": "ingress_requests_total", "namespace": "default", "ingress": "other"})
	f.discover(t)

	v, err := f.p.GetMetricByName(context.Background(), name, info, labels.Everything())
	if err != nil || !v.Value.IsZero() || v.Timestamp.IsZero() || v.DescribedObject.Name != "main-route" {
		t.Fatalf("an Ingress without series: %+v, %v; want 0", v, err)
	}
	const expr = `sum(rate(ingress_requests_total{namespace="default",ingress="main-route"}[1m])) by (ingress)`
	f.prom.Vecs[expr] = []fakeprom.Sample{{Labels: map[string]string{"ingress": "main-route"}, Value: "12", TS: 1700000000}}
	if v, err := f.p.GetMetricByName(context.Background(), name, info, labels.Everything()); err != nil || v.Value.String() != "12" {
		t.Errorf("with series: %+v, %v", v, err)
	}
	if _, err := f.p.GetMetricByName(context.Background(), types.NamespacedName{Namespace: "default", Name: "typo"}, info, labels.Everything()); !apierrors.IsNotFound(err) {
		t.Errorf("an Ingress that does not exist: %v, want 404, not 0", err)
	}
	delete(f.prom.Vecs, expr)
	req, err := explain.ParseArgs("ingresses.networking.k8s.io/main-route/requests-per-second", "default", "", "")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := explain.Run(context.Background(), explain.Providers{Custom: f.p}, req).Write(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Prometheus answered: no series", "emptyIsZero: 1 values without series answered 0", "requests-per-second = 0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, out.String())
		}
	}
	f.prom.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "unavailable", http.StatusBadGateway)
		return true
	})
	if _, err := f.p.GetMetricByName(context.Background(), name, info, labels.Everything()); !apierrors.IsServiceUnavailable(err) {
		t.Errorf("Prometheus failing: %v, want 503, not 0", err)
	}
}

// What explain reports of a request is what the request may see: a
// namespace's metric asked inside another namespace (namespaces/team-a
// in default, however the resource is spelled) is a 404, and the report
// names none of team-a's rules or series.
func TestExplainNamesNoOtherNamespacesRule(t *testing.T) {
	team, err := rules.CompileTeam(rules.TeamRule{Namespace: "team-a", Name: "secret-rule", Rule: config.Rule{
		SeriesQuery: `team_a_secret_total`, Name: config.NameMapping{As: "team-m"},
		MetricsQuery: `sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)`,
	}}, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{Rules: []*rules.Rule{team}, Mapper: rules.BuiltinMapper(), Resolver: &fakeResolver{}})
	p.Update(discovery.Result{Series: map[string][]model.LabelSet{team.SeriesQuery(): {{"__name__": "team_a_secret_total", "namespace": "team-a"}}}})
	for _, arg := range []string{"NAMESPACES/team-a/team-m", "Namespace/team-a/team-m", "ns/team-a/team-m"} {
		req, err := explain.ParseArgs(arg, "default", "", "")
		if err != nil {
			t.Fatal(err)
		}
		// Explain authorizes the request as Path writes it: in team-a.
		if want := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/team-a/metrics/team-m"; req.Path() != want {
			t.Errorf("%s: explained as %s, want %s", arg, req.Path(), want)
		}
		// Asked as a namespaced object of default, straight at the
		// provider (as a request of another shape would be).
		req.Namespace = "default"
		rep := explain.Run(context.Background(), explain.Providers{Custom: p}, req)
		var out bytes.Buffer
		_ = rep.Write(&out)
		if rep.Code != http.StatusNotFound || rep.Rule != "" || strings.Contains(out.String(), "secret") {
			t.Errorf("%s asked in default: %d, rule %q:\n%s", arg, rep.Code, rep.Rule, out.String())
		}
	}
}
