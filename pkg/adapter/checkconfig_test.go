package adapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/fakeprom"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

const checkRules = `rules:
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^app_(.*)_total$", as: "${1}-per-second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^app_(.*)_total$", as: "${1}-per-second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[5m])) by (<<.GroupBy>>)
- seriesQuery: 'nothing_here_total{namespace!=""}'
  resources: {overrides: {namespace: {resource: namespace}}}
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
externalRules:
- seriesQuery: 'app_requests_total{namespace!=""}'
  resources: {overrides: {namespace: {resource: namespace}}}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]))
`

func runCheckConfig(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := NewCommand(context.Background())
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"check-config"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(checkRules), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("rules:\n- seriesQuery: x\n  metricQuery: y\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Offline.
	out, err := runCheckConfig(t, "--config="+good)
	if err != nil || !strings.Contains(out, good+": valid: 3 rules, 1 externalRules, resourceRules: none") {
		t.Errorf("valid file: err %v, output %q", err, out)
	}
	_, err = runCheckConfig(t, "--config="+bad)
	var exit *ExitError
	if err == nil || errors.As(err, &exit) || !strings.Contains(err.Error(), bad+":3") || !strings.Contains(err.Error(), "metricQuery") {
		t.Errorf("invalid file: err %v, want a plain error (exit 1) naming file, line and field", err)
	}

	// Against a Prometheus.
	fp := fakeprom.NewInMemory(t, []map[string]string{
		{"__name__": "app_requests_total", "namespace": "default", "pod": "app-a", "endpoint": "/"},
		{"__name__": "app_requests_total", "namespace": "default", "pod": "app-a", "endpoint": "/", "extra": "x"},
	})
	srv := httptest.NewServer(fp)
	defer srv.Close()
	out, err = runCheckConfig(t, "--config="+good, "--prometheus-url="+srv.URL)
	if err != nil {
		t.Fatalf("check-config with Prometheus: %v\n%s", err, out)
	}
	if n := strings.Count(out, "requests-per-second on pods:"); n != 1 {
		t.Errorf("the pods overlap is printed %d times, want once:\n%s", n, out)
	}
	for _, want := range []string{
		"rules[0] (seriesQuery app_requests_total{namespace!=\"\",pod!=\"\"}, backend default)\n  requests-per-second: namespaces (cluster-scoped), pods\n",
		"rules[2] (seriesQuery nothing_here_total{namespace!=\"\"}, backend default)\n  serves nothing: 0 series match",
		"externalRules[0] (seriesQuery app_requests_total{namespace!=\"\"}, backend default)\n  external metrics: app_requests_per_second\n",
		"requests-per-second on pods: rules[0] series app_requests_total serves it, rules[1] series app_requests_total is ignored",
		"rules[1] (seriesQuery app_requests_total{namespace!=\"\",pod!=\"\"}, backend default)\n  serves nothing: an earlier rule serves all its metrics (see Overlaps)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	fp.SetFail(func(w http.ResponseWriter) bool {
		http.Error(w, "forbidden", http.StatusForbidden)
		return true
	})
	out, err = runCheckConfig(t, "--config="+good, "--prometheus-url="+srv.URL)
	if !errors.As(err, &exit) || exit.Code != ExitAnswerError || !strings.Contains(out, "listing failed") || !strings.Contains(out, "403") {
		t.Errorf("Prometheus refusing: err %v, output:\n%s\nwant exit 3 and each rule's listing failure naming 403", err, out)
	}
}

func TestNamespacedFollowsTheMapper(t *testing.T) {
	m := rules.BuiltinMapper()
	for gr, want := range map[schema.GroupResource]bool{
		{Resource: "pods"}:                          true,
		{Group: "apps", Resource: "deployments"}:    true,
		{Resource: "nodes"}:                         false,
		{Resource: "namespaces"}:                    false,
		{Group: "example.com", Resource: "widgets"}: true,
	} {
		if got := namespaced(m, gr); got != want {
			t.Errorf("namespaced(%s) = %v, want %v", gr, got, want)
		}
	}
}

// A rule the adapter leaves out is printed with why, and check-config
// exits 4: the file loads, but not everything in it serves.
func TestCheckConfigNamesRulesLeftOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "left-out.yaml")
	text := checkRules + "- seriesQuery: 'queue_depth{queue!=\"\"}'\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCheckConfig(t, "--config="+path)
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != ExitRulesLeftOut {
		t.Errorf("err %v, want exit %d", err, ExitRulesLeftOut)
	}
	for _, want := range []string{"valid: 3 rules, 2 externalRules", "1 rules are left out", "externalRules[1]: " + path + ":18: externalRules[1].resources: a namespaced external rule needs the label"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// An API is served when it is enabled and the rules file has its section:
// a file without resourceRules does not serve metrics.k8s.io (which would
// answer nothing but errors), and a file whose sections are all turned off
// serves nothing and is refused.
func TestAnAPIIsServedWhenItsSectionIsThere(t *testing.T) {
	set, err := rules.Parse([]byte(checkRules), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	o := NewOptions()
	if got := o.servedAPIs(set); got != (apis{custom: true, external: true}) {
		t.Errorf("without resourceRules: %+v, want custom and external only", got)
	}
	o.EnableExternalMetrics = false
	if got := o.servedAPIs(set); got != (apis{custom: true}) {
		t.Errorf("--enable-external-metrics=false: %+v, want custom only", got)
	}
	o.EnableCustomMetrics = false
	if got := o.servedAPIs(set); got != (apis{}) {
		t.Errorf("both off: %+v, want nothing", got)
	}
}

// check-config checks MetricRule objects as the adapter serves them: each
// confined to its namespace, one that cannot be confined refused (exit 1),
// one over the namespace's limit reported (exit 4 when nothing is refused).
func TestCheckConfigMetricRules(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(checkRules), 0o600); err != nil {
		t.Fatal(err)
	}
	const rule = `apiVersion: rules.custom-metrics-adapter.io/v1alpha1
kind: MetricRule
metadata: {name: %s, namespace: team-a}
spec:
  seriesQuery: '{__name__="app_requests_total",namespace="team-b"}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {as: %s}
  metricsQuery: %s
`
	ok := fmt.Sprintf(rule, "a", "a", "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)")
	second := fmt.Sprintf(rule, "b", "b", "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)")
	info := fmt.Sprintf(rule, "c", "c", "'info(sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>))'")
	okFile, infoFile := filepath.Join(dir, "ok.yaml"), filepath.Join(dir, "info.yaml")
	if err := os.WriteFile(okFile, []byte(ok+"---\n"+second), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(infoFile, []byte(info), 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := runCheckConfig(t, "--config="+good, "--metric-rule-file="+okFile, "--metric-rules-per-namespace=1")
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != ExitRulesLeftOut {
		t.Fatalf("a rule over the limit: %v, want exit %d\n%s", err, ExitRulesLeftOut, out)
	}
	for _, want := range []string{
		`MetricRule team-a/a: accepted (Custom), seriesQuery as listed: {__name__="app_requests_total",namespace="team-a"}`,
		"MetricRule team-a/b: over the limit",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = runCheckConfig(t, "--config="+good, "--metric-rule-file="+okFile, "--metric-rule-file="+infoFile)
	if !errors.As(err, &exit) || exit.Code != ExitFailed || !strings.Contains(out, "MetricRule team-a/c: refused: spec.metricsQuery") {
		t.Errorf("a rule with info(): %v, want exit %d naming spec.metricsQuery\n%s", err, ExitFailed, out)
	}
	notARule := filepath.Join(dir, "cm.yaml")
	if err := os.WriteFile(notARule, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: y}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCheckConfig(t, "--config="+good, "--metric-rule-file="+notARule); err == nil || !strings.Contains(err.Error(), "not a MetricRule") {
		t.Errorf("a ConfigMap: %v", err)
	}
}
