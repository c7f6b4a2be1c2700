// Package faults breaks the real stack while an HPA runs on it, and checks
// that the adapter answers fast and right through each fault: Prometheus
// paused and killed, an adapter replica stopped mid-run, the API server
// restarted, hostile requests and bad rules files.
//
// It runs its own local stack (test/localstack): etcd, kube-apiserver with
// the aggregation layer, kube-controller-manager's HPA controller, the
// process kubelet running the load app, Prometheus and the adapter. One
// HPA (manifests/hpa/pods, scaled to this machine) holds the app at three
// replicas under a steady load for the whole suite; every fault is judged
// by what the HPA controller and a client of the API server saw.
//
// Run it with `make faults` (part of `make test`).
package faults

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

const (
	// namespace holds the app and its HPA.
	namespace = "faults"
	app       = "app"
	// promTimeout is the adapter's --prometheus-timeout here.
	promTimeout = 3 * time.Second
	// shutdownDelay is the adapter's --shutdown-delay-duration here.
	shutdownDelay = 3 * time.Second
	// loadRate against a target of 10 per pod holds three replicas:
	// 25/10 rounds up to 3, and 3 replicas at 8.3 each stay at 3.
	loadRate     = 25
	replicas     = 3
	hpaSyncEvery = 5 * time.Second
)

var stack *localstack.Stack

func TestMain(m *testing.M) {
	os.Exit(localstack.Suite{
		TestTimeout: 20 * time.Minute, // as make faults runs it
		Name:        "faults",
		Options: localstack.StackOptions{
			ClusterOptions: localstack.ClusterOptions{HPASyncPeriod: hpaSyncEvery},
			AdapterArgs: []string{
				"--prometheus-timeout=" + promTimeout.String(),
				"--shutdown-delay-duration=" + shutdownDelay.String(),
			},
		},
		Setup: func(ctx context.Context, s *localstack.Stack) (func(), error) {
			stack = s
			return steadyHPA(ctx)
		},
		Timeout: 8 * time.Minute,
	}.Run(m))
}

// steadyHPA deploys the app, puts the Pods HPA on it, offers loadRate and
// waits until the HPA holds the app at replicas.
func steadyHPA(ctx context.Context) (stop func(), err error) {
	if err := stack.DeployApp(ctx, namespace); err != nil {
		return nil, err
	}
	hpa, err := stack.HPA(ctx, localstack.SeedHPA{
		Namespace: namespace, Dir: "manifests/hpa/pods",
		Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
			h.Spec.Metrics[0].Pods.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
			h.Spec.MaxReplicas = replicas + 1
		},
	}, 0) // no scale-down stabilization: a wrong low reading would show at once
	if err != nil {
		return nil, err
	}
	if _, err := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(namespace).Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	// The load and its informer stop with the suite: a watch left open
	// would hold the API server's shutdown for a minute.
	lctx, cancel := context.WithCancel(context.Background())
	targets, err := localstack.ServiceTargets(lctx, stack.Client, namespace, app)
	if err != nil {
		cancel()
		return nil, err
	}
	stats := &loadgen.Stats{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = loadgen.Run(lctx, loadgen.Config{Targets: targets, Path: localstack.LoadPath, Rate: loadgen.Constant(loadRate), Duration: 30 * time.Minute}, stats)
	}()
	stop = func() {
		cancel()
		<-done
		fmt.Fprintf(os.Stderr, "load at %d req/s: %s\n", loadRate, stats.String())
	}
	if err := waitSteady(ctx, 4*time.Minute); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// waitSteady waits until the HPA is active and holds the Deployment at
// replicas ready pods for three syncs in a row.
func waitSteady(ctx context.Context, timeout time.Duration) error {
	// since is when the HPA was last seen becoming steady.
	var since time.Time
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		s, err := hpaState(ctx)
		if err != nil || !s.active || s.replicas != replicas || s.ready != replicas || s.desired != replicas {
			since = time.Time{}
			return false, nil
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= 3*hpaSyncEvery, nil
	})
	if err == nil {
		return nil
	}
	s, err := hpaState(ctx)
	if err != nil {
		return fmt.Errorf("the HPA not steady at %d replicas within %s: %w", replicas, timeout, err)
	}
	return fmt.Errorf("the HPA not steady at %d replicas within %s: %+v", replicas, timeout, s)
}

// steady starts a fault test from the steady state.
func steady(t *testing.T) {
	t.Helper()
	start := time.Now()
	if err := waitSteady(context.Background(), 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*hpaSyncEvery+time.Second {
		t.Logf("waited %s for the HPA to settle at %d replicas", d.Round(time.Second), replicas)
	}
}
