package adapter

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	basemetrics "k8s.io/component-base/metrics"
	cbtestutil "k8s.io/component-base/metrics/testutil"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

const ruleTemplate = `rules:
- seriesQuery: 'app_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^app_(.*)_total$", as: "%s"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
`

// configMapDir lays out a rules file the way a ConfigMap volume does:
// config.yaml -> ..data/config.yaml, ..data -> ..<version>.
type configMapDir struct {
	t   *testing.T
	dir string
	n   int
}

func (c *configMapDir) write(content string) {
	c.t.Helper()
	c.n++
	version := fmt.Sprintf("..v%d", c.n)
	if err := os.Mkdir(filepath.Join(c.dir, version), 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, version, "config.yaml"), []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	// The kubelet's atomic writer: a new symlink renamed over ..data.
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	if c.n == 1 {
		if err := os.Symlink(filepath.Join("..data", "config.yaml"), filepath.Join(c.dir, "config.yaml")); err != nil {
			c.t.Fatal(err)
		}
	} else if err := os.RemoveAll(filepath.Join(c.dir, fmt.Sprintf("..v%d", c.n-1))); err != nil {
		c.t.Fatal(err)
	}
}

func metricName(set *rules.Set) string {
	name, _ := set.Custom[0].MetricName("app_requests_total")
	return name
}

// TestReloaderFollowsAConfigMapUpdate: a ConfigMap update (the ..data
// symlink swapped) is applied; a broken file keeps the rules serving and
// says so in the metrics; SIGHUP reloads.
func TestReloaderFollowsAConfigMapUpdate(t *testing.T) {
	reg := basemetrics.NewKubeRegistry()
	metrics.RegisterOn(reg, nil)

	cm := &configMapDir{t: t, dir: t.TempDir()}
	cm.write(fmt.Sprintf(ruleTemplate, "first"))
	o := NewOptions()
	o.ConfigFile = filepath.Join(cm.dir, "config.yaml")
	applied := make(chan *rules.Set, 10)
	current, err := o.readRules()
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	r := newReloader(o.ConfigFile, current, o.compileRules, func(_ context.Context, s *rules.Set) { applied <- s }, hup)
	if r.watcher == nil {
		t.Fatal("the rules file's directory is not watched")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	next := func(what string) *rules.Set {
		t.Helper()
		select {
		case s := <-applied:
			return s
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no reload", what)
			return nil
		}
	}

	cm.write(fmt.Sprintf(ruleTemplate, "second"))
	if got := metricName(next("ConfigMap update")); got != "second" {
		t.Errorf("after the update the rules name %q, want second", got)
	}

	cm.write("rules:\n- seriesQuery: x\n  metricQuery: y\n")
	// The broken file is not applied: wait until the failure is counted.
	deadline := time.Now().Add(10 * time.Second)
	for value(t, reg, "custom_metrics_adapter_config_reloads_total", map[string]string{"result": "failure"}) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the broken file's reload was never counted as a failure")
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case s := <-applied:
		t.Fatalf("a broken file was applied: %q", metricName(s))
	default:
	}
	want := `
# HELP custom_metrics_adapter_config_last_reload_successful [ALPHA] Whether the last attempt to reload the rules file succeeded (1) or kept the previous rules (0).
# TYPE custom_metrics_adapter_config_last_reload_successful gauge
custom_metrics_adapter_config_last_reload_successful 0
`
	if err := cbtestutil.GatherAndCompare(reg, strings.NewReader(want), "custom_metrics_adapter_config_last_reload_successful"); err != nil {
		t.Error(err)
	}

	cm.write(fmt.Sprintf(ruleTemplate, "third"))
	if got := metricName(next("fix")); got != "third" {
		t.Errorf("after the fix the rules name %q, want third", got)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if got := metricName(next("SIGHUP")); got != "third" {
		t.Errorf("SIGHUP reloaded %q, want third", got)
	}
}

// value reads one sample of a gathered metric, or -1 when there is none.
func value(t *testing.T, reg basemetrics.KubeRegistry, name string, lbls map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := lbls[lp.GetName()]; ok && want != lp.GetValue() {
					continue sample
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// TestReloaderCatchesAChangeMadeWhileStarting: the file changed after the
// adapter compiled it and before the watch began; the reloader applies it
// without waiting for another change.
func TestReloaderCatchesAChangeMadeWhileStarting(t *testing.T) {
	cm := &configMapDir{t: t, dir: t.TempDir()}
	cm.write(fmt.Sprintf(ruleTemplate, "first"))
	o := NewOptions()
	o.ConfigFile = filepath.Join(cm.dir, "config.yaml")
	current, err := o.readRules()
	if err != nil {
		t.Fatal(err)
	}
	cm.write(fmt.Sprintf(ruleTemplate, "second"))
	applied := make(chan *rules.Set, 1)
	r := newReloader(o.ConfigFile, current, o.compileRules, func(_ context.Context, s *rules.Set) { applied <- s }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case s := <-applied:
		if got := metricName(s); got != "second" {
			t.Errorf("applied %q, want second", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the change made while starting was never applied")
	}
}
