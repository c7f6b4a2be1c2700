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
	"os"
	"testing"
	"time"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

var stack *localstack.Stack

func TestMain(m *testing.M) {
	os.Exit(localstack.Suite{
		Name: "e2e",
		// As make e2e runs it: the tests run side by side.
		Parallel: 12, TestTimeout: 40 * time.Minute,
		Options: localstack.StackOptions{
			ClusterOptions: localstack.ClusterOptions{
				HPASyncPeriod:          5 * time.Second,
				DownscaleStabilization: 15 * time.Second,
			},
			// A real prometheus-adapter behind the adapter, which forwards
			// to it what its rules do not serve (TestUpstreamForwarding).
			Upstream:    true,
			MetricRules: true,
			// Cortex, each of two namespaces its own tenant
			// (TestTenantPerNamespaceOnCortex).
			CortexTenants: map[string]string{"team-a": "tenant-a", "team-b": "tenant-b"},
			ExtraRules:    []map[string]any{tenantRule},
		},
		Setup: func(_ context.Context, s *localstack.Stack) (func(), error) {
			stack = s
			return nil, nil
		},
	}.Run(m))
}
