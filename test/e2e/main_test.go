// Package e2e runs the whole system for real on 127.0.0.1: etcd,
// kube-apiserver with the aggregation layer, kube-controller-manager with
// the HPA controller, a process kubelet that runs each pod as a load-app
// process, Prometheus discovering those pods through the API server, and
// the adapter registered as the custom metrics APIService. The app and the
// HPAs come from manifests/.
//
// Run it with `make e2e` (or `make test`), which builds the servers first.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

var (
	stack *localstack.Stack
	runID = time.Now().Format("20060102-150405")
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := localstack.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir := filepath.Join(root, "_output", "e2e-"+runID)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	stack, err = localstack.StartStack(ctx, localstack.StackOptions{
		ClusterOptions: localstack.ClusterOptions{
			Dir:                    dir,
			HPASyncPeriod:          5 * time.Second,
			DownscaleStabilization: 15 * time.Second,
			Progress:               os.Stderr,
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local stack:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "local stack up in %s; logs in %s\n", time.Since(start).Round(100*time.Millisecond), dir)
	code := m.Run()
	if code != 0 {
		stack.Procs.DumpLogs(os.Stderr, 60)
	}
	if err := stack.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the local stack:", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		// Keep the logs of failed runs only.
		_ = os.RemoveAll(dir)
	}
	return code
}
