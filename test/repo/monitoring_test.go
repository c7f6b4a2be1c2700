package repo

// The adapter's alerts (manifests/monitoring): the plain rules file, the
// PrometheusRule and the chart's copy are the same groups; promtool checks
// and unit-tests them; every alert has its runbook in docs/operations.md.
// The chart's ServiceMonitor and PrometheusRule are the kustomization's, and
// its upstreams are manifests/upstreams'.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/upstream"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

const (
	alertRules     = "manifests/monitoring/rules.yaml"
	alertRuleTests = "manifests/monitoring/rules_test.yaml"
)

// alertGroups reads a rules file's groups.
func alertGroups(t *testing.T, raw []byte) []any {
	t.Helper()
	var f map[string]any
	if err := sigsyaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	groups, _ := f["groups"].([]any)
	if len(groups) == 0 {
		t.Fatalf("no groups in %q", raw)
	}
	return groups
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestAlertRulesAreThePrometheusRule(t *testing.T) {
	rules := readFile(t, alertRules)
	groups := alertGroups(t, rules)
	objs, err := localstack.SplitYAML(readFile(t, "manifests/monitoring/prometheusrule.yaml"))
	if err != nil || len(objs) != 1 {
		t.Fatalf("prometheusrule.yaml: %d objects, %v", len(objs), err)
	}
	spec, _, _ := unstructured.NestedSlice(objs[0].Object, "spec", "groups")
	for _, d := range diffValues("groups", spec, groups) {
		t.Errorf("manifests/monitoring/prometheusrule.yaml differs from %s: %s", alertRules, d)
	}
	if chart := readFile(t, filepath.Join(localstack.ChartDir, "files/alerts.yaml")); !bytes.Equal(chart, rules) {
		t.Errorf("%s/files/alerts.yaml differs from %s: copy one onto the other", localstack.ChartDir, alertRules)
	}
}

// TestAlertRulesPassPromtool: promtool (of the pinned Prometheus module)
// checks the rules file and runs its unit tests, each alert firing on what
// it is for and quiet on what it is not.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool, err := localstack.Binary("promtool")
	if err != nil {
		requireOrSkip(t, err.Error())
	}
	for _, args := range [][]string{{"check", "rules", alertRules}, {"test", "rules", alertRuleTests}} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = root(t)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Every alert is tested.
	tests := string(readFile(t, alertRuleTests))
	for _, name := range alertNames(t) {
		if !strings.Contains(tests, "alertname: "+name+"\n") {
			t.Errorf("%s: no test of alert %s", alertRuleTests, name)
		}
	}
}

func alertNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, g := range alertGroups(t, readFile(t, alertRules)) {
		rules, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rules {
			if name, ok := r.(map[string]any)["alert"].(string); ok {
				names = append(names, name)
			}
		}
	}
	if len(names) < 8 {
		t.Fatalf("%d alerts in %s", len(names), alertRules)
	}
	return names
}

// TestEveryAlertHasARunbook: each alert's runbook_url is a section of
// docs/operations.md named after it.
func TestEveryAlertHasARunbook(t *testing.T) {
	doc := string(readFile(t, "docs/operations.md"))
	urls := map[string]string{}
	for _, g := range alertGroups(t, readFile(t, alertRules)) {
		rules, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rules {
			m := r.(map[string]any)
			ann, _ := m["annotations"].(map[string]any)
			url, _ := ann["runbook_url"].(string)
			urls[m["alert"].(string)] = url
		}
	}
	for _, name := range alertNames(t) {
		want := "docs/operations.md#" + strings.ToLower(name)
		if !strings.HasSuffix(urls[name], want) {
			t.Errorf("%s: runbook_url %q, want one ending in %s", name, urls[name], want)
		}
		section := regexp.MustCompile(`(?m)^### ` + name + `\n\n(\S.*)`).FindStringSubmatch(doc)
		if section == nil {
			t.Errorf("docs/operations.md has no section \"### %s\" with a paragraph under it", name)
		}
	}
}

// TestChartMonitoringRendersTheManifests: the chart's ServiceMonitor,
// PrometheusRule and dashboard ConfigMap are manifests/monitoring's.
func TestChartMonitoringRendersTheManifests(t *testing.T) {
	monitoring := func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "ServiceMonitor" || o.GetKind() == "PrometheusRule" || strings.HasSuffix(o.GetName(), "-dashboard")
	}
	chart := renderChart(t, "--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true")
	// The defaults are manifests/adapter (TestChartDefaultsRenderManifestsAdapter,
	// with its two differences by design); with monitoring on, and
	// manifests/monitoring beside it.
	want := withoutNamespaces(kustomize(t, "manifests/adapter", "manifests/monitoring"))
	normalizeKustomize(t, want)
	normalizeChart(chart)
	dep := mustFind(t, want, "Deployment", "custom-metrics-apiserver")
	setContainerArgs(t, dep, append(containerArgs(t, dep), "--enable-external-metrics=false", "--enable-resource-metrics=false"))
	n := 0
	for _, o := range chart {
		if monitoring(o) {
			n++
		}
	}
	if n != 3 {
		t.Errorf("the chart renders %d monitoring objects, want a ServiceMonitor, a PrometheusRule and the dashboard's ConfigMap", n)
	}
	compareObjects(t, chart, want)
	for _, o := range renderChart(t) {
		if monitoring(o) {
			t.Errorf("the chart's defaults render %s: monitoring is off by default (it needs Prometheus Operator's CRDs, or a Grafana sidecar)", objKey(o))
		}
	}
	err := renderChartError(t, "--set", "monitoring.serviceMonitor.enable=true")
	if err == nil || !strings.Contains(err.Error(), "enable") {
		t.Errorf("monitoring.serviceMonitor.enable (a typo): %v, want the schema to refuse it", err)
	}
}

// TestChartUpstreams: the chart's upstreams are manifests/upstreams' file,
// mounted where it says, with the CA given in the values; a typo or an
// upstream without a CA fails the render.
func TestChartUpstreams(t *testing.T) {
	const values = `upstreams:
  servers:
  - name: prometheus-adapter
    groups: [custom.metrics.k8s.io, external.metrics.k8s.io]
    service: {namespace: monitoring, name: prometheus-adapter, port: 443}
    ca: |
      -----BEGIN CERTIFICATE-----
      not checked here
      -----END CERTIFICATE-----
  timeout: 5s
`
	file := filepath.Join(t.TempDir(), "upstreams.yaml")
	if err := os.WriteFile(file, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	objs := renderChart(t, "--values", file)
	cm := mustFind(t, objs, "ConfigMap", "custom-metrics-adapter-upstreams")
	want := mustFind(t, kustomize(t, "manifests/upstreams"), "ConfigMap", "custom-metrics-adapter-upstreams")
	decode := func(o *unstructured.Unstructured) upstream.File {
		text, _, _ := unstructured.NestedString(o.Object, "data", "upstreams.yaml")
		dec := yaml.NewDecoder(strings.NewReader(text))
		dec.KnownFields(true)
		var f upstream.File
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("%s: the adapter's upstreams file does not decode: %v\n%s", o.GetName(), err, text)
		}
		return f
	}
	got, exp := decode(cm), decode(want)
	gotText, _ := yaml.Marshal(got)
	expText, _ := yaml.Marshal(exp)
	if !bytes.Equal(gotText, expText) {
		t.Errorf("the chart's upstreams.yaml:\n%s\nmanifests/upstreams':\n%s", gotText, expText)
	}
	if ca, _, _ := unstructured.NestedString(cm.Object, "data", "prometheus-adapter-ca.crt"); !strings.Contains(ca, "BEGIN CERTIFICATE") {
		t.Errorf("the upstream's CA is not in the ConfigMap as prometheus-adapter-ca.crt: %q", ca)
	}
	dep := mustFind(t, objs, "Deployment", "custom-metrics-apiserver")
	args := strings.Join(containerArgs(t, dep), " ")
	for _, a := range []string{"--upstreams=/etc/adapter/upstreams/upstreams.yaml", "--upstream-timeout=5s"} {
		if !strings.Contains(args, a) {
			t.Errorf("the adapter's args lack %s: %s", a, args)
		}
	}
	mounts, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	text, _ := sigsyaml.Marshal(mounts)
	for _, m := range []string{"mountPath: /etc/adapter/upstreams", "mountPath: /etc/adapter/forwarding"} {
		if !strings.Contains(string(text), m) {
			t.Errorf("no volume mounted at %s", strings.TrimPrefix(m, "mountPath: "))
		}
	}
	vols, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "volumes")
	text, _ = sigsyaml.Marshal(vols)
	if !strings.Contains(string(text), "secretName: custom-metrics-adapter-forwarding") {
		t.Errorf("the forwarding Secret is not a volume: %s", text)
	}
	// Without upstreams, nothing of them.
	for _, o := range renderChart(t) {
		if o.GetName() == "custom-metrics-adapter-upstreams" {
			t.Error("the defaults render the upstreams ConfigMap")
		}
	}
	for _, c := range []struct{ set, want string }{
		{"upstreams.servers[0].name=x,upstreams.servers[0].grups[0]=custom.metrics.k8s.io,upstreams.servers[0].url=https://x", "grups"},
		{"upstreams.servers[0].name=x,upstreams.servers[0].groups[0]=custom.metrics.k8s.io,upstreams.servers[0].url=https://x", "ca (PEM) or caFile"},
		{"upstreams.servers[0].name=x,upstreams.servers[0].groups[0]=custom.metrics.k8s.io,upstreams.servers[0].url=http://x,upstreams.servers[0].caFile=/ca", "url"},
		{"upstreams.servers[0].name=x,upstreams.servers[0].groups[0]=metrics.example.com,upstreams.servers[0].url=https://x,upstreams.servers[0].caFile=/ca", "groups"},
	} {
		if err := renderChartError(t, "--set", c.set); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--set %s: %v, want a refusal naming %q", c.set, err, c.want)
		}
	}
}
