package metrics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"

	basemetrics "k8s.io/component-base/metrics"
	cbtestutil "k8s.io/component-base/metrics/testutil"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
)

type sizes map[string]int

func (s sizes) CacheSizes() map[string]int { return s }

// TestMetricsFollowPrometheusConventions records one of everything and
// lints the result with client_golang's promlint.
func TestMetricsFollowPrometheusConventions(t *testing.T) {
	reg := basemetrics.NewKubeRegistry()
	RegisterOn(reg, sizes{"pods": 3, "deployments.apps": 1})

	ObserveQuery(CustomAPI, "rules[0]", "", time.Now(), 2, nil)
	ObserveQuery(ExternalAPI, "externalRules[0]", "thanos", time.Now(), 0, context.DeadlineExceeded)
	ObserveDiscovery(20 * time.Millisecond)
	// fixed date: timestamps the gauges export as they are.
	SetDiscovered(CustomAPI, []RuleDiscovery{{Rule: "rules[0]", Listed: time.Unix(100, 0), Metrics: 4}})
	ObserveReload(true, time.Unix(200, 0)) // fixed date: as above.
	ObserveResolved("pods", 12)

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{
		"custom_metrics_adapter_prometheus_query_duration_seconds",
		"custom_metrics_adapter_discovery_duration_seconds",
		"custom_metrics_adapter_discovery_last_success_timestamp_seconds",
		"custom_metrics_adapter_discovery_metrics",
		"custom_metrics_adapter_config_last_reload_successful",
		"custom_metrics_adapter_config_last_reload_success_timestamp_seconds",
		"custom_metrics_adapter_config_reloads_total",
		"custom_metrics_adapter_request_resolved_objects",
		"custom_metrics_adapter_informer_cached_objects",
	} {
		if !names[want] {
			t.Errorf("%s is not exported; got %v", want, names)
		}
	}

	want := `
# HELP custom_metrics_adapter_informer_cached_objects [ALPHA] Objects held by each informer cache of the adapter, by resource.
# TYPE custom_metrics_adapter_informer_cached_objects gauge
custom_metrics_adapter_informer_cached_objects{resource="deployments.apps"} 1
custom_metrics_adapter_informer_cached_objects{resource="pods"} 3
`
	if err := cbtestutil.GatherAndCompare(reg, strings.NewReader(want), "custom_metrics_adapter_informer_cached_objects"); err != nil {
		t.Error(err)
	}
}

func TestSetDiscoveredForgetsRemovedRules(t *testing.T) {
	reg := basemetrics.NewKubeRegistry()
	RegisterOn(reg, nil)
	SetDiscovered(ExternalAPI, []RuleDiscovery{{Rule: "externalRules[0]", Metrics: 1}, {Rule: "externalRules[1]", Metrics: 2}})
	SetDiscovered(CustomAPI, []RuleDiscovery{{Rule: "rules[0]", Metrics: 5}})
	SetDiscovered(ExternalAPI, []RuleDiscovery{{Rule: "externalRules[0]", Metrics: 3}})
	want := `
# HELP custom_metrics_adapter_discovery_metrics [ALPHA] Metrics each rule serves after the last discovery round (metric name and resource pairs for custom metrics, metric names for external ones).
# TYPE custom_metrics_adapter_discovery_metrics gauge
custom_metrics_adapter_discovery_metrics{api="custom",rule="rules[0]"} 5
custom_metrics_adapter_discovery_metrics{api="external",rule="externalRules[0]"} 3
`
	if err := cbtestutil.GatherAndCompare(reg, strings.NewReader(want), "custom_metrics_adapter_discovery_metrics"); err != nil {
		t.Error(err)
	}
}

// TestSetDiscoveredForgetsQueriesOfRemovedRules: after a reload drops
// rules[1], its query series go; rules[0]'s stay. (The metrics are
// process-wide: other tests' external series are left out.)
func TestSetDiscoveredForgetsQueriesOfRemovedRules(t *testing.T) {
	reg := basemetrics.NewKubeRegistry()
	RegisterOn(reg, nil)
	SetDiscovered(CustomAPI, []RuleDiscovery{{Rule: "rules[0]"}, {Rule: "rules[1]"}})
	ObserveQuery(CustomAPI, "rules[0]", "", time.Now(), 1, nil)
	ObserveQuery(CustomAPI, "rules[1]", "", time.Now(), 0, nil)
	SetDiscovered(CustomAPI, []RuleDiscovery{{Rule: "rules[0]"}})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var rulesSeen []string
	for _, mf := range mfs {
		if mf.GetName() != "custom_metrics_adapter_prometheus_query_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			lbls := map[string]string{}
			for _, lp := range m.GetLabel() {
				lbls[lp.GetName()] = lp.GetValue()
			}
			if lbls["api"] == CustomAPI {
				rulesSeen = append(rulesSeen, lbls["rule"])
			}
		}
	}
	if len(rulesSeen) != 1 || rulesSeen[0] != "rules[0]" {
		t.Errorf("query series for rules %v, want only rules[0]", rulesSeen)
	}
}

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		samples int
		err     error
		want    string
	}{
		{3, nil, OutcomeOK},
		{0, nil, OutcomeNoData},
		{0, context.DeadlineExceeded, OutcomeTimeout},
		{0, fmt.Errorf("query: %w", context.Canceled), OutcomeCanceled},
		{0, &v1.Error{Type: v1.ErrBadData, Msg: "parse error"}, OutcomeBadQuery},
		{0, &v1.Error{Type: v1.ErrExec, Msg: "too many samples"}, OutcomeBadQuery},
		{0, &v1.Error{Type: v1.ErrTimeout, Msg: "query timed out"}, OutcomeTimeout},
		{0, errors.New("dial tcp: connection refused"), OutcomeUnavailable},
	} {
		if got := Outcome(tc.samples, tc.err); got != tc.want {
			t.Errorf("Outcome(%d, %v) = %s, want %s", tc.samples, tc.err, got, tc.want)
		}
	}
}

// An answer's annotations are counted by kind and by whether the answer
// was served or refused for them; a refused one is the warnings outcome of
// its query, not "unavailable".
func TestObserveAnnotations(t *testing.T) {
	reg := basemetrics.NewKubeRegistry()
	RegisterOn(reg, nil)
	doubtful := promclient.Annotations{Warnings: []string{"No StoreAPIs matched for this query"}, Partial: true}
	refused := &promclient.QueryError{Expr: "sum(x)", Err: &promclient.WarningsError{Annotations: doubtful}}
	ObserveAnnotations("thanos", doubtful, refused)
	ObserveAnnotations("thanos", doubtful, nil)
	ObserveAnnotations("", promclient.Annotations{Infos: []string{"PromQL info: metric might not be a counter"}}, nil)
	ObserveAnnotations("", promclient.Annotations{}, nil)
	want := `
# HELP custom_metrics_adapter_prometheus_answer_annotations_total [ALPHA] Answers that carried warnings, a partial flag or infos, by backend, kind (warning, partial, info) and outcome (served, refused: a backend's onWarning refuses answers with warnings or flagged partial).
# TYPE custom_metrics_adapter_prometheus_answer_annotations_total counter
custom_metrics_adapter_prometheus_answer_annotations_total{backend="default",kind="info",outcome="served"} 1
custom_metrics_adapter_prometheus_answer_annotations_total{backend="thanos",kind="partial",outcome="refused"} 1
custom_metrics_adapter_prometheus_answer_annotations_total{backend="thanos",kind="partial",outcome="served"} 1
custom_metrics_adapter_prometheus_answer_annotations_total{backend="thanos",kind="warning",outcome="refused"} 1
custom_metrics_adapter_prometheus_answer_annotations_total{backend="thanos",kind="warning",outcome="served"} 1
`
	if err := cbtestutil.GatherAndCompare(reg, strings.NewReader(want), "custom_metrics_adapter_prometheus_answer_annotations_total"); err != nil {
		t.Error(err)
	}
	if got := Outcome(0, refused); got != OutcomeWarnings {
		t.Errorf("outcome of a refused answer: %s, want %s", got, OutcomeWarnings)
	}
}
