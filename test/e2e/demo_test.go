package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestDemoDriverOnAnyCluster runs the demo's driver (hack/demo) as
// hack/kind-demo.sh runs it on kind: with -kubeconfig, against a cluster
// it did not start (this suite's stack), deploying the apps, their HPAs
// and the team's MetricRule with kubectl, and loading each app from a load
// pod (the app image's /loadgen, which the process kubelet runs) through
// its Ingress, by the Ingress' host. Three of its eight HPAs, in namespaces
// of their own beside the suite's other tests: a Pods metric, an Object
// metric from zero and the team rule. It must take each app out and back to
// its minimum, and every load pod must succeed.
func TestDemoDriverOnAnyCluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	bin, err := localstack.Build(ctx, filepath.Join(t.TempDir(), "bin"), "./hack/demo", "demo")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "-kubeconfig="+stack.AdminKubeconfig, "-quick",
		"-namespace-prefix=demo-", "-only=hpa-pods,hpa-zero-object,hpa-team-rule")
	cmd.Dir = stack.Root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("the driver's output:\n%s", out.String())
	if err != nil {
		t.Fatalf("the driver: %v", err)
	}
	text := out.String()
	for _, want := range []string{
		"== driving the cluster of " + stack.AdminKubeconfig,
		"== every app back to its minimum",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the driver's output lacks %q", want)
		}
	}
	// Each HPA scaled its app out at some point: a row with more than one
	// ready replica, for each namespace.
	for _, ns := range []string{"demo-hpa-pods", "demo-hpa-zero-object", "demo-hpa-team-rule"} {
		scaled := false
		for _, line := range strings.Split(text, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == ns && hasReplicasAbove(line, 1) {
				scaled = true
			}
		}
		if !scaled {
			t.Errorf("%s: no row of the table with more than one ready replica", ns)
		}
	}
}

// hasReplicasAbove says whether a table row shows more than n ready
// replicas ("3/3").
func hasReplicasAbove(line string, n int) bool {
	for _, f := range strings.Fields(line) {
		ready, _, ok := strings.Cut(f, "/")
		if !ok {
			continue
		}
		if r, err := strconv.Atoi(ready); err == nil && r > n {
			return true
		}
	}
	return false
}
