package repo

// The Helm chart (manifests/helm/custom-metrics-adapter) against the
// kustomizations: with the same settings it renders the same objects, so the
// two ways to install cannot drift apart. Its rules are a copy of
// manifests/adapter/config.yaml (Helm reads only files inside the chart),
// which TestChartRulesAreTheManifestsRules keeps equal.

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/adapter"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/config"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// helmLabels are the labels only the chart sets (Helm's bookkeeping).
var helmLabels = []string{
	"helm.sh/chart",
	"app.kubernetes.io/managed-by",
	"app.kubernetes.io/instance",
	"app.kubernetes.io/version",
}

func requireHelm(t *testing.T) {
	t.Helper()
	if _, err := localstack.HelmBinary(); err != nil {
		requireOrSkip(t, err.Error())
	}
}

func helmCmd(t *testing.T, args ...string) []byte {
	t.Helper()
	requireHelm(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := localstack.Helm(ctx, root(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// renderChart renders the chart with extra helm template arguments.
func renderChart(t *testing.T, args ...string) []*unstructured.Unstructured {
	t.Helper()
	requireHelm(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := localstack.HelmTemplate(ctx, root(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := localstack.SplitYAML(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) == 0 {
		t.Fatal("the chart renders nothing")
	}
	return objs
}

// renderChartError renders the chart and returns helm's error.
func renderChartError(t *testing.T, args ...string) error {
	t.Helper()
	requireHelm(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := localstack.HelmTemplate(ctx, root(t), args...)
	return err
}

func kustomize(t *testing.T, dirs ...string) []*unstructured.Unstructured {
	t.Helper()
	kubectl, err := localstack.KubectlBinary()
	if err != nil {
		requireOrSkip(t, err.Error())
	}
	var objs []*unstructured.Unstructured
	for _, dir := range dirs {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, kubectl, "kustomize", dir)
		cmd.Dir = root(t)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
		}
		o, err := localstack.SplitYAML(out)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	return objs
}

func objKey(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", o.GetKind(), ns, o.GetName())
	}
	return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func mustFind(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		var have []string
		for _, o := range objs {
			have = append(have, objKey(o))
		}
		t.Fatalf("no %s %s among %v", kind, name, have)
	}
	return o
}

// generatedName matches the hash suffix kustomize's configMapGenerator
// appends to a ConfigMap's name.
var generatedName = regexp.MustCompile(`^(.+)-[a-z0-9]{10}$`)

// normalizeKustomize drops the hash suffix of generated ConfigMaps, here
// and where the Deployments mount them: the chart's ConfigMap keeps its
// name, and the adapter reloads it in place.
func normalizeKustomize(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	renamed := map[string]string{}
	for _, o := range objs {
		if o.GetKind() != "ConfigMap" {
			continue
		}
		if m := generatedName.FindStringSubmatch(o.GetName()); m != nil {
			renamed[o.GetName()] = m[1]
			o.SetName(m[1])
		}
	}
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		vols, _, err := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "volumes")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vols {
			cm, ok := v.(map[string]any)["configMap"].(map[string]any)
			if !ok {
				continue
			}
			if base, ok := renamed[cm["name"].(string)]; ok {
				cm["name"] = base
			}
		}
		if err := unstructured.SetNestedSlice(o.Object, vols, "spec", "template", "spec", "volumes"); err != nil {
			t.Fatal(err)
		}
	}
}

// normalizeChart removes what only the chart adds: Helm's labels.
func normalizeChart(objs []*unstructured.Unstructured) {
	for _, o := range objs {
		if labels := o.GetLabels(); labels != nil {
			for _, l := range helmLabels {
				delete(labels, l)
			}
			if len(labels) == 0 {
				unstructured.RemoveNestedField(o.Object, "metadata", "labels")
			} else {
				o.SetLabels(labels)
			}
		}
	}
}

// diffValues lists where a (the chart) and b (the manifests) differ, by
// field path.
func diffValues(path string, a, b any) []string {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range av {
			keys[k] = true
		}
		for k := range bv {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		var out []string
		for _, k := range sorted {
			p := k
			if path != "" {
				p = path + "." + k
			}
			x, inA := av[k]
			y, inB := bv[k]
			switch {
			case !inA:
				out = append(out, fmt.Sprintf("%s: only in the manifests (%s)", p, brief(y)))
			case !inB:
				out = append(out, fmt.Sprintf("%s: only in the chart (%s)", p, brief(x)))
			default:
				out = append(out, diffValues(p, x, y)...)
			}
		}
		return out
	case []any:
		bv, ok := b.([]any)
		if !ok {
			break
		}
		var out []string
		if len(av) != len(bv) {
			out = append(out, fmt.Sprintf("%s: %d items in the chart, %d in the manifests", path, len(av), len(bv)))
		}
		for i := range min(len(av), len(bv)) {
			out = append(out, diffValues(fmt.Sprintf("%s[%d]", path, i), av[i], bv[i])...)
		}
		for i := len(bv); i < len(av); i++ {
			out = append(out, fmt.Sprintf("%s[%d]: only in the chart (%s)", path, i, brief(av[i])))
		}
		for i := len(av); i < len(bv); i++ {
			out = append(out, fmt.Sprintf("%s[%d]: only in the manifests (%s)", path, i, brief(bv[i])))
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	if as, ok := a.(string); ok {
		if bs, ok := b.(string); ok && strings.Contains(as+bs, "\n") {
			al, bl := strings.SplitAfter(as, "\n"), strings.SplitAfter(bs, "\n")
			for i := range max(len(al), len(bl)) {
				var x, y string
				if i < len(al) {
					x = al[i]
				}
				if i < len(bl) {
					y = bl[i]
				}
				if x != y {
					return []string{fmt.Sprintf("%s: line %d: chart %q, manifests %q", path, i+1, x, y)}
				}
			}
		}
	}
	return []string{fmt.Sprintf("%s: chart %s, manifests %s", path, brief(a), brief(b))}
}

func brief(v any) string {
	b, err := yaml.Marshal(v)
	s := strings.TrimSpace(string(b))
	if err != nil {
		s = fmt.Sprint(v)
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// compareObjects reports every object only one side has and every field
// where the two renderings of an object differ.
func compareObjects(t *testing.T, chart, manifests []*unstructured.Unstructured) {
	t.Helper()
	byKey := func(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
		m := map[string]*unstructured.Unstructured{}
		for _, o := range objs {
			k := objKey(o)
			if _, dup := m[k]; dup {
				t.Errorf("%s is rendered twice", k)
			}
			m[k] = o
		}
		return m
	}
	c, m := byKey(chart), byKey(manifests)
	keys := make([]string, 0, len(c)+len(m))
	for k := range c {
		keys = append(keys, k)
	}
	for k := range m {
		if _, ok := c[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		co, inChart := c[k]
		mo, inManifests := m[k]
		switch {
		case !inChart:
			t.Errorf("%s: in the manifests, not rendered by the chart", k)
		case !inManifests:
			t.Errorf("%s: rendered by the chart, not in the manifests", k)
		default:
			for _, d := range diffValues("", co.Object, mo.Object) {
				t.Errorf("%s: %s", k, d)
			}
		}
	}
	if len(chart) < 10 {
		t.Errorf("compared only %d objects", len(chart))
	}
}

// withoutNamespaces drops the Namespace objects: the chart installs into
// the release namespace (helm install --namespace) and creates none.
func withoutNamespaces(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	return slices.DeleteFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == "Namespace" })
}

func containerArgs(t *testing.T, dep *unstructured.Unstructured) []string {
	t.Helper()
	containers, _, err := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if err != nil || len(containers) != 1 {
		t.Fatalf("Deployment %s: want one container, got %d (%v)", dep.GetName(), len(containers), err)
	}
	args, _, err := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	if err != nil {
		t.Fatal(err)
	}
	return args
}

func setContainerArgs(t *testing.T, dep *unstructured.Unstructured, args []string) {
	t.Helper()
	containers, _, err := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	if err != nil {
		t.Fatal(err)
	}
	c := containers[0].(map[string]any)
	list := make([]any, len(args))
	for i, a := range args {
		list[i] = a
	}
	c["args"] = list
	if err := unstructured.SetNestedSlice(dep.Object, containers, "spec", "template", "spec", "containers"); err != nil {
		t.Fatal(err)
	}
}

func TestChartLints(t *testing.T) {
	lints := [][]string{
		{"lint", localstack.ChartDir},
		{"lint", "--strict", localstack.ChartDir},
	}
	ci, err := filepath.Glob(filepath.Join(root(t), localstack.ChartDir, "ci", "*.yaml"))
	if err != nil || len(ci) < 2 {
		t.Fatalf("values files under %s/ci: %v (%v)", localstack.ChartDir, ci, err)
	}
	for _, f := range ci {
		lints = append(lints, []string{"lint", "--strict", localstack.ChartDir, "--values", f})
	}
	for _, args := range lints {
		out := helmCmd(t, args...)
		if !bytes.Contains(out, []byte("1 chart(s) linted, 0 chart(s) failed")) {
			t.Errorf("helm %s:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestChartRulesAreTheManifestsRules: the chart's built-in rules are
// manifests/adapter/config.yaml (which TestShippedRulesAreTheBuiltInRules
// keeps equal to pkg/config/default.yaml).
func TestChartRulesAreTheManifestsRules(t *testing.T) {
	r := root(t)
	manifests, err := os.ReadFile(filepath.Join(r, "manifests/adapter/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	chart, err := os.ReadFile(filepath.Join(r, localstack.ChartDir, "files/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(chart, manifests) {
		t.Errorf("%s/files/config.yaml differs from manifests/adapter/config.yaml: copy one onto the other", localstack.ChartDir)
	}
}

// TestChartDefaultsRenderManifestsAdapter: the chart's defaults are
// manifests/adapter. Two differences are by design: the chart creates no
// Namespace, and as external.metrics.k8s.io and metrics.k8s.io are not
// routed to the adapter by default, it also turns them off in the adapter
// (manifests/adapter leaves them on for manifests/external-metrics and
// manifests/resource-metrics to be added later).
func TestChartDefaultsRenderManifestsAdapter(t *testing.T) {
	chart := renderChart(t)
	want := withoutNamespaces(kustomize(t, "manifests/adapter"))
	normalizeKustomize(t, want)
	normalizeChart(chart)
	dep := mustFind(t, want, "Deployment", "custom-metrics-apiserver")
	setContainerArgs(t, dep, append(containerArgs(t, dep), "--enable-external-metrics=false", "--enable-resource-metrics=false"))
	compareObjects(t, chart, want)
}

// TestChartWithEveryAPIRendersTheManifests: with all three APIs,
// cert-manager and MetricRules, the chart is manifests/adapter-cert-manager
// plus manifests/external-metrics, manifests/resource-metrics and
// manifests/metric-rules, exactly, the adapter running with --metric-rules
// and the limits' defaults.
func TestChartWithEveryAPIRendersTheManifests(t *testing.T) {
	chart := renderChart(t, "--values", localstack.ChartEveryAPIValues)
	want := withoutNamespaces(kustomize(t, "manifests/adapter-cert-manager", "manifests/external-metrics", "manifests/resource-metrics", "manifests/metric-rules"))
	normalizeKustomize(t, want)
	normalizeChart(chart)
	dep := mustFind(t, want, "Deployment", "custom-metrics-apiserver")
	defaults := adapter.NewOptions()
	setContainerArgs(t, dep, append(containerArgs(t, dep), "--metric-rules",
		"--metric-rules-namespace-label="+defaults.MetricRulesNamespaceLabel,
		fmt.Sprintf("--metric-rules-per-namespace=%d", defaults.MetricRulesPerNamespace),
		fmt.Sprintf("--metric-rules-max-concurrent-queries=%d", defaults.MetricRulesMaxConcurrentQueries),
		"--metric-rules-query-timeout="+defaults.MetricRulesQueryTimeout.String()))
	compareObjects(t, chart, want)
}

// valuesFile reads a values file into a generic map.
func valuesFile(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root(t), path))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

func apiServiceNames(objs []*unstructured.Unstructured) []string {
	var names []string
	for _, o := range objs {
		if o.GetKind() == "APIService" {
			names = append(names, o.GetName())
		}
	}
	sort.Strings(names)
	return names
}

// renderedConfig returns the ConfigMap's config.yaml, checked by the
// adapter's own parser and rule compiler.
func renderedConfig(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	cm := mustFind(t, objs, "ConfigMap", "custom-metrics-adapter-config")
	text, ok, err := unstructured.NestedString(cm.Object, "data", "config.yaml")
	if err != nil || !ok {
		t.Fatalf("ConfigMap %s has no config.yaml (%v)", cm.GetName(), err)
	}
	cfg, err := config.Parse([]byte(text), "the chart's config.yaml")
	if err != nil {
		t.Fatalf("the adapter refuses the rendered rules: %v\n%s", err, text)
	}
	if _, err := rules.CompileSet(cfg); err != nil {
		t.Fatalf("the rendered rules do not compile: %v\n%s", err, text)
	}
	var parsed map[string]any
	if err := yaml.Unmarshal([]byte(text), &parsed); err != nil {
		t.Fatal(err)
	}
	return parsed
}

// TestChartPrometheusAdapterValues renders a values file written for
// prometheus-adapter's chart and checks each setting lands where that
// chart's user expects it.
func TestChartPrometheusAdapterValues(t *testing.T) {
	objs := renderChart(t, "--values", localstack.ChartPrometheusAdapterValues)
	values := valuesFile(t, localstack.ChartPrometheusAdapterValues)
	vr := values["rules"].(map[string]any)

	cfg := renderedConfig(t, objs)
	for section, want := range map[string]any{
		"rules":         vr["custom"],
		"externalRules": vr["external"],
		"resourceRules": vr["resource"],
	} {
		for _, d := range diffValues(section, cfg[section], want) {
			t.Errorf("rendered config.yaml against the values file: %s", d)
		}
	}
	if len(cfg) != 3 {
		t.Errorf("config.yaml has %d sections, want rules, externalRules, resourceRules only (rules.default is false)", len(cfg))
	}

	dep := mustFind(t, objs, "Deployment", "custom-metrics-apiserver")
	if n, _, _ := unstructured.NestedFieldNoCopy(dep.Object, "spec", "replicas"); fmt.Sprint(n) != "3" {
		t.Errorf("replicas = %v, want 3", n)
	}
	args := containerArgs(t, dep)
	for _, want := range []string{
		"--prometheus-url=http://prometheus-operated.monitoring.svc:9090",
		"--config=/etc/adapter/config.yaml",
		"--v=4",
		"--metrics-relist-interval=30s",
		"--prometheus-header=X-Scope-OrgID=team-a",
	} {
		if !slices.Contains(args, want) {
			t.Errorf("args %v lack %s", args, want)
		}
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--enable-") {
			t.Errorf("args have %s: rules.external and rules.resource should turn on every API", a)
		}
	}
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	c := containers[0].(map[string]any)
	for _, d := range diffValues("resources", c["resources"], values["resources"]) {
		t.Errorf("container: %s", d)
	}
	if env := fmt.Sprint(c["env"]); !strings.Contains(env, "GOMEMLIMIT") || !strings.Contains(env, "400MiB") {
		t.Errorf("env %s lacks GOMEMLIMIT=400MiB", env)
	}
	podSpec, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec")
	for _, k := range []string{"tolerations", "nodeSelector"} {
		for _, d := range diffValues(k, podSpec[k], values[k]) {
			t.Errorf("pod spec: %s", d)
		}
	}

	if got, want := apiServiceNames(objs), []string{
		"v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io",
		"v1beta1.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io",
	}; !slices.Equal(got, want) {
		t.Errorf("APIServices %v, want %v", got, want)
	}
	for _, role := range []string{"custom-metrics-reader", "external-metrics-reader", "custom-metrics-adapter:nodes", "custom-metrics-adapter:aggregated-metrics-reader"} {
		mustFind(t, objs, "ClusterRole", role)
	}
	pdb := mustFind(t, objs, "PodDisruptionBudget", "custom-metrics-apiserver")
	spec, _, _ := unstructured.NestedMap(pdb.Object, "spec")
	if fmt.Sprint(spec["maxUnavailable"]) != "1" {
		t.Errorf("PodDisruptionBudget maxUnavailable = %v, want 1", spec["maxUnavailable"])
	}
	if _, ok := spec["minAvailable"]; ok {
		t.Errorf("PodDisruptionBudget has both minAvailable and maxUnavailable: %v", spec)
	}
}

// TestChartRulesMerge: rules.custom and rules.external are appended to the
// built-in rules and rules.resource replaces their resourceRules.
func TestChartRulesMerge(t *testing.T) {
	objs := renderChart(t, "--values", localstack.ChartPrometheusAdapterValues, "--set", "rules.default=true")
	cfg := renderedConfig(t, objs)
	builtIn, err := config.Parse(config.DefaultYAML(), config.DefaultSource)
	if err != nil {
		t.Fatal(err)
	}
	vr := valuesFile(t, localstack.ChartPrometheusAdapterValues)["rules"].(map[string]any)
	for section, n := range map[string]int{
		"rules":         len(builtIn.Rules) + len(vr["custom"].([]any)),
		"externalRules": len(builtIn.ExternalRules) + len(vr["external"].([]any)),
	} {
		if got := len(cfg[section].([]any)); got != n {
			t.Errorf("%s: %d rules, want %d (built-in and the values')", section, got, n)
		}
	}
	for _, d := range diffValues("resourceRules", cfg["resourceRules"], vr["resource"]) {
		t.Error(d)
	}
}

// TestChartAPISwitches: an API turned off has no APIService and no reader
// role, and the adapter gets --enable-<api>-metrics=false.
func TestChartAPISwitches(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		services []string
		flags    []string
		absent   []string // ClusterRoles
	}{
		{
			name:     "defaults",
			services: []string{"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"},
			flags:    []string{"--enable-external-metrics=false", "--enable-resource-metrics=false"},
			absent:   []string{"external-metrics-reader", "custom-metrics-adapter:nodes", "custom-metrics-adapter:aggregated-metrics-reader"},
		},
		{
			name:     "resource metrics only",
			args:     []string{"--set", "apiServices.custom.enabled=false", "--set", "apiServices.resource.enabled=true"},
			services: []string{"v1beta1.metrics.k8s.io"},
			flags:    []string{"--enable-custom-metrics=false", "--enable-external-metrics=false"},
			absent:   []string{"custom-metrics-reader", "external-metrics-reader"},
		},
		{
			name:     "prometheus-adapter values, external and resource off",
			args:     []string{"--values", localstack.ChartPrometheusAdapterValues, "--set", "apiServices.external.enabled=false", "--set", "apiServices.resource.enabled=false"},
			services: []string{"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"},
			flags:    []string{"--enable-external-metrics=false", "--enable-resource-metrics=false"},
			absent:   []string{"external-metrics-reader", "custom-metrics-adapter:nodes"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := renderChart(t, tc.args...)
			if got := apiServiceNames(objs); !slices.Equal(got, tc.services) {
				t.Errorf("APIServices %v, want %v", got, tc.services)
			}
			var flags []string
			for _, a := range containerArgs(t, mustFind(t, objs, "Deployment", "custom-metrics-apiserver")) {
				if strings.HasPrefix(a, "--enable-") {
					flags = append(flags, a)
				}
			}
			if !slices.Equal(flags, tc.flags) {
				t.Errorf("--enable-* flags %v, want %v", flags, tc.flags)
			}
			for _, role := range tc.absent {
				if find(objs, "ClusterRole", role) != nil {
					t.Errorf("ClusterRole %s is rendered with its API off", role)
				}
			}
		})
	}
	err := renderChartError(t, "--set", "apiServices.custom.enabled=false")
	if err == nil || !strings.Contains(err.Error(), "would serve nothing") {
		t.Errorf("every API off: err = %v, want a failure saying the adapter would serve nothing", err)
	}
}

// TestChartTLS: tls.enable stores the certificate in the Secret the pods
// mount and the CA in every APIService; conflicting settings fail.
func TestChartTLS(t *testing.T) {
	const ca, cert, key = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n",
		"-----BEGIN CERTIFICATE-----\nserving\n-----END CERTIFICATE-----\n",
		"-----BEGIN EC PRIVATE KEY-----\nkey\n-----END EC PRIVATE KEY-----\n"
	dir := t.TempDir()
	values := filepath.Join(dir, "tls.yaml")
	b, err := yaml.Marshal(map[string]any{
		"tls":         map[string]any{"enable": true, "ca": ca, "certificate": cert, "key": key},
		"apiServices": map[string]any{"external": map[string]any{"enabled": true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(values, b, 0o644); err != nil {
		t.Fatal(err)
	}
	objs := renderChart(t, "--values", values)
	secret := mustFind(t, objs, "Secret", "custom-metrics-apiserver-tls")
	if secret.GetNamespace() != localstack.ChartNamespace {
		t.Errorf("Secret in namespace %q", secret.GetNamespace())
	}
	for k, want := range map[string]string{"tls.crt": cert, "tls.key": key} {
		got, _, _ := unstructured.NestedString(secret.Object, "data", k)
		if dec, err := base64.StdEncoding.DecodeString(got); err != nil || string(dec) != want {
			t.Errorf("Secret data %s = %q (%v), want %q", k, dec, err, want)
		}
	}
	dep := mustFind(t, objs, "Deployment", "custom-metrics-apiserver")
	if !strings.Contains(fmt.Sprint(dep.Object["spec"]), "secretName:custom-metrics-apiserver-tls") {
		t.Error("the Deployment does not mount the Secret custom-metrics-apiserver-tls")
	}
	services := 0
	for _, o := range objs {
		if o.GetKind() != "APIService" {
			continue
		}
		services++
		got, _, _ := unstructured.NestedString(o.Object, "spec", "caBundle")
		if dec, err := base64.StdEncoding.DecodeString(got); err != nil || string(dec) != ca {
			t.Errorf("APIService %s caBundle = %q (%v), want tls.ca", o.GetName(), dec, err)
		}
		if skip, _, _ := unstructured.NestedBool(o.Object, "spec", "insecureSkipTLSVerify"); skip {
			t.Errorf("APIService %s skips TLS verification", o.GetName())
		}
	}
	if services != 3 {
		t.Errorf("%d APIServices, want 3", services)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--set", "tls.enable=true", "--set-string", "tls.certificate=x", "--set-string", "tls.key=y"}, "tls.enable needs tls.ca"},
		{[]string{"--values", values, "--set", "certManager.enabled=true"}, "exclude each other"},
		{[]string{"--set", "rules.default=false"}, "no rules at all"},
		{[]string{"--set", "rules.defaults=false"}, "additional properties 'defaults' not allowed"},
	} {
		err := renderChartError(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("helm template %v: err = %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}

// TestChartExistingRules: rules.existing mounts the user's ConfigMap and
// renders none.
func TestChartExistingRules(t *testing.T) {
	objs := renderChart(t, "--set", "rules.existing=my-rules")
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" {
			t.Errorf("ConfigMap %s rendered with rules.existing", o.GetName())
		}
	}
	dep := mustFind(t, objs, "Deployment", "custom-metrics-apiserver")
	vols, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "volumes")
	if got := fmt.Sprint(vols[0]); !strings.Contains(got, "name:my-rules") {
		t.Errorf("config volume %s does not mount my-rules", got)
	}
}

// TestChartBackends: rules.backends becomes the rules file's backends
// section as given, beside the built-in rules, and a rule naming one of
// them compiles (the adapter's own parser and compiler); a backend without
// a url is refused by the chart's schema.
func TestChartBackends(t *testing.T) {
	const text = `rules:
  backends:
  - name: mimir
    url: http://mimir-query-frontend.mimir:8080/prometheus
    tenant: {header: X-Scope-OrgID, template: '<<index .Labels "tenant">>'}
    onWarning: refuse
  - name: victoria
    url: http://victoria-metrics.monitoring:8428
    maxQueryLength: 16384
  external:
  - seriesQuery: 'queue_depth{namespace!=""}'
    backend: mimir
    resources: {overrides: {namespace: {resource: namespace}}}
    metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
`
	values := filepath.Join(t.TempDir(), "backends.yaml")
	if err := os.WriteFile(values, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var given map[string]any
	if err := yaml.Unmarshal([]byte(text), &given); err != nil {
		t.Fatal(err)
	}
	cfg := renderedConfig(t, renderChart(t, "--values", values))
	backends, _ := cfg["backends"].([]any)
	if len(backends) != 2 {
		t.Fatalf("backends: %v, want the two of the values", cfg["backends"])
	}
	for _, d := range diffValues("backends", cfg["backends"], given["rules"].(map[string]any)["backends"]) {
		t.Error(d)
	}
	if _, ok := cfg["rules"]; !ok {
		t.Error("the built-in rules are gone with rules.backends set")
	}
	if err := renderChartError(t, "--set", "rules.backends[0].name=nowhere"); err == nil || !strings.Contains(err.Error(), "url") {
		t.Errorf("a backend without url: %v, want the schema to refuse it", err)
	}
}
