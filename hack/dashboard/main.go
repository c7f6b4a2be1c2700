// Command dashboard generates the adapter's Grafana dashboard,
// manifests/monitoring/dashboard.json, and the Helm chart's copy of it, from
// the panels below with the Grafana Foundation SDK (make generate; make
// verify-generated checks that the files are what it writes). The e2e suite
// runs every panel's PromQL against a real Prometheus scraping the real
// adapter and requires each to return a series.
//
// The panels read the adapter's own metrics (docs/operations.md, "The
// adapter's own metrics") and those of the API server library it is built
// on (apiserver_request_*), filtered by the job variable.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Files are where the dashboard is written, relative to the repository.
var Files = []string{
	"manifests/monitoring/dashboard.json",
	"manifests/helm/custom-metrics-adapter/files/dashboard.json",
}

// query is one line of a panel: its PromQL and legend.
type query struct{ expr, legend string }

// panel is one time series panel.
type panel struct {
	title, description, unit string
	queries                  []query
}

// sel is the selector of the adapter's series: the job variable.
const sel = `job=~"$job"`

// metricsAPIs selects the API server library's series of the three metrics
// APIs (not its discovery or health endpoints).
const metricsAPIs = sel + `, group=~"custom.metrics.k8s.io|external.metrics.k8s.io|metrics.k8s.io"`

// rows are the dashboard's rows and their panels.
var rows = []struct {
	title  string
	panels []panel
}{
	{"Requests", []panel{
		{"Requests by API", "Requests the adapter answered, per second, by API group and status code (HPA syncs, kubectl top, kubectl get --raw).", "reqps",
			[]query{{`sum by (group, code) (rate(apiserver_request_total{` + metricsAPIs + `}[$__rate_interval]))`, "{{group}} {{code}}"}}},
		{"Request latency (p99)", "How long the adapter took to answer, 99th percentile, by API group.", "s",
			[]query{{`histogram_quantile(0.99, sum by (group, le) (rate(apiserver_request_duration_seconds_bucket{` + metricsAPIs + `}[$__rate_interval])))`, "{{group}}"}}},
	}},
	{"Rules and Prometheus", []panel{
		{"Queries by rule and outcome", "Queries the adapter sent its stores for each rule, per second, by outcome: ok, no-data (an empty answer), timeout, unavailable, bad-query, warnings, canceled.", "reqps",
			[]query{{`sum by (api, rule, outcome) (rate(custom_metrics_adapter_prometheus_query_duration_seconds_count{` + sel + `}[$__rate_interval]))`, "{{api}} {{rule}} {{outcome}}"}}},
		{"Query latency by rule (p99)", "How long each rule's queries took, 99th percentile.", "s",
			[]query{{`histogram_quantile(0.99, sum by (api, rule, le) (rate(custom_metrics_adapter_prometheus_query_duration_seconds_bucket{` + sel + `}[$__rate_interval])))`, "{{api}} {{rule}}"}}},
		{"Answers served empty or as zero", "Queries that found no series (the HPA gets no value), and values answered 0 for rules with emptyIsZero, per second.", "reqps",
			[]query{
				{`sum by (api, rule) (rate(custom_metrics_adapter_prometheus_query_duration_seconds_count{` + sel + `, outcome="no-data"}[$__rate_interval]))`, "empty: {{api}} {{rule}}"},
				{`sum by (api, rule) (rate(custom_metrics_adapter_prometheus_empty_answers_as_zero_total{` + sel + `}[$__rate_interval]))`, "as zero: {{api}} {{rule}}"},
			}},
		{"Metrics served by rule", "Metric and resource pairs each rule serves, from its last series listing.", "short",
			[]query{{`max by (api, rule) (custom_metrics_adapter_discovery_metrics{` + sel + `})`, "{{api}} {{rule}}"}}},
		{"Time since each rule's series were listed", "Seconds since the last successful listing of each rule's series (every --metrics-relist-interval).", "s",
			[]query{{`time() - max by (api, rule) (custom_metrics_adapter_discovery_last_success_timestamp_seconds{` + sel + `})`, "{{api}} {{rule}}"}}},
	}},
	{"Upstreams and MetricRules", []panel{
		{"Forwarded requests by upstream", "Requests forwarded to the upstreams (--upstreams) per second, by the status they answered (none: no answer).", "reqps",
			[]query{{`sum by (upstream, api, code) (rate(custom_metrics_adapter_upstream_requests_total{` + sel + `}[$__rate_interval]))`, "{{upstream}} {{api}} {{code}}"}}},
		{"Forwarded latency (p99)", "How long the upstreams took to answer, 99th percentile.", "s",
			[]query{{`histogram_quantile(0.99, sum by (upstream, le) (rate(custom_metrics_adapter_upstream_request_duration_seconds_bucket{` + sel + `}[$__rate_interval])))`, "{{upstream}}"}}},
		{"MetricRules by state", "The teams' MetricRules: accepted (served), invalid, or over the per-namespace limit; each one's status says why.", "short",
			[]query{{`max by (state) (custom_metrics_adapter_metric_rules_rules{` + sel + `})`, "{{state}}"}}},
	}},
	{"Process", []panel{
		{"Memory", "Resident memory and Go heap in use, per replica.", "bytes",
			[]query{
				{`process_resident_memory_bytes{` + sel + `}`, "RSS {{instance}}"},
				{`go_memstats_heap_inuse_bytes{` + sel + `}`, "heap {{instance}}"},
			}},
		{"CPU", "CPU used per replica, in cores.", "short",
			[]query{{`rate(process_cpu_seconds_total{` + sel + `}[$__rate_interval])`, "{{instance}}"}}},
	}},
}

// Build builds the dashboard in the classic JSON model, which Grafana's
// import, its file provisioning and kube-prometheus-stack's dashboard
// sidecar read. The SDK marks it deprecated in favour of dashboardv2, the
// schema of Grafana 12's dashboard resources, which those do not read.
//
//nolint:staticcheck // the classic model on purpose (above)
func Build() (dashboard.Dashboard, error) {
	ds := common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
	b := dashboard.NewDashboardBuilder("custom-metrics-adapter").
		Uid("custom-metrics-adapter").
		Description("The adapter's own metrics: requests per metrics API, queries and their outcomes per rule, answers served empty or as zero, forwarded requests per upstream, MetricRules, memory and CPU. Generated by hack/dashboard.").
		Tags([]string{"custom-metrics-adapter", "kubernetes", "autoscaling"}).
		Refresh("30s").
		Time("now-1h", "now").
		Timezone(common.TimeZoneBrowser).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("job").Label("Job").
			Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(custom_metrics_adapter_discovery_metrics, job)")}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Multi(true).IncludeAll(true).AllValue(".+"))
	// Every row and panel has an id of its own: Grafana addresses panels
	// by id (links, editing).
	id := uint32(0)
	next := func() uint32 { id++; return id }
	for _, r := range rows {
		b = b.WithRow(dashboard.NewRowBuilder(r.title).Id(next()))
		for _, p := range r.panels {
			tp := timeseries.NewPanelBuilder().Id(next()).
				Title(p.title).Description(p.description).Unit(p.unit).Min(0).
				Datasource(ds).
				Height(8).Span(12)
			for j, q := range p.queries {
				tp = tp.WithTarget(prometheus.NewDataqueryBuilder().
					Expr(q.expr).LegendFormat(q.legend).RefId(string(rune('A' + j))))
			}
			b = b.WithPanel(tp)
		}
	}
	return b.Build()
}

// Render is the dashboard as the files hold it: indented JSON and a final
// newline.
func Render() ([]byte, error) {
	d, err := Build()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func main() {
	out := flag.String("out", ".", "The repository root the files are written under.")
	flag.Parse()
	data, err := Render()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
	for _, f := range Files {
		path := filepath.Join(*out, f)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "dashboard:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "dashboard:", err)
			os.Exit(1)
		}
	}
}
