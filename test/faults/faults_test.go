package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	cmv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
)

// goroutineSlack is how far above its count before a fault the adapter's
// goroutine count may stay after it: HTTP/2 streams and pooled
// connections to Prometheus come and go with the HPA's own requests.
const goroutineSlack = 10

// recovered waits until the client's requests are answered again (every
// clientPath 200, the pods answer naming the Deployment's ready pods) and
// the HPA controller's next sync succeeded, and returns how long that took.
func recovered(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	return waitFor(t, timeout, "answers and the HPA back after the fault", func(ctx context.Context) bool {
		for _, p := range clientPaths {
			if o := get(ctx, stack.ServerURL, p); o.code != http.StatusOK {
				return false
			}
		}
		names, err := podsAnswer(ctx)
		if err != nil {
			return false
		}
		want, err := readyPods(ctx, namespace)
		if err != nil || !slices.Equal(names, want) {
			return false
		}
		s, err := hpaState(ctx)
		return err == nil && s.active
	})
}

// podsAnswer asks the Pods HPA's question and returns the pods named in
// the answer, sorted; every value must be a number >= 0.
func podsAnswer(ctx context.Context) ([]string, error) {
	o := get(ctx, stack.ServerURL, podsPath)
	if o.code != http.StatusOK {
		return nil, &answerError{o}
	}
	var list cmv1beta2.MetricValueList
	if err := json.Unmarshal(o.body, &list); err != nil {
		return nil, err
	}
	var names []string
	for _, v := range list.Items {
		if v.Value.Sign() < 0 {
			return nil, &answerError{o}
		}
		names = append(names, v.DescribedObject.Name)
	}
	slices.Sort(names)
	return names, nil
}

type answerError struct{ o outcome }

func (e *answerError) Error() string { return e.o.String() }

// readyPods lists the ready pods of the app in namespace, sorted.
func readyPods(ctx context.Context, namespace string) ([]string, error) {
	return stack.ReadyPods(ctx, namespace, labels.Set{"app": app}.String())
}

// settleGoroutines waits until the adapter's goroutine count is back within
// goroutineSlack of idle, and returns the count it settled at.
func settleGoroutines(t *testing.T, adapterURL string, idle int) int {
	t.Helper()
	var last int
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 30*time.Second, true, func(context.Context) (bool, error) {
		last = goroutines(t, adapterURL)
		return last <= idle+goroutineSlack, nil
	})
	if err == nil {
		return last
	}
	t.Errorf("the adapter's goroutines did not return to %d (+%d) within 30s of the fault's end: %d", idle, goroutineSlack, last)
	return last
}

// TestAdapterReplicaStoppedMidRun runs a second adapter replica behind the
// APIServices, lets the API server spread requests over both, and stops
// one (SIGTERM, as a pod deletion does) while the HPA and a client keep
// asking: no request and no HPA sync may fail.
func TestAdapterReplicaStoppedMidRun(t *testing.T) {
	steady(t)
	ctx := context.Background()
	second, err := stack.AddAdapterReplica(ctx, "adapter-2")
	if err != nil {
		t.Fatal(err)
	}
	custom := map[string]string{"group": "custom.metrics.k8s.io"}
	served := func(url string) float64 {
		// The second replica loads the client CA that lets it tell the
		// admin's certificate (not the API server's front proxy) a moment
		// after it is ready: until then it answers -1.
		n, err := adapterMetric(ctx, url, "apiserver_request_total", custom)
		if err != nil {
			return -1
		}
		return n
	}
	firstBefore := served(stack.AdapterURL)
	waitFor(t, 30*time.Second, "the API server routing requests to the second replica", func(ctx context.Context) bool {
		_ = get(ctx, stack.ServerURL, podsPath)
		return served(second.URL) > 0
	})

	w := watch(t)
	p := startProber(t, 100*time.Millisecond, clientPaths...)
	// failures says what failed while the replicas served and one stopped:
	// nothing may, for two HPA syncs on each side of the SIGTERM.
	failures := func(outs []outcome) error {
		var errs []error
		for _, o := range outs {
			if o.code != http.StatusOK {
				errs = append(errs, fmt.Errorf("a request failed while a replica stopped: %s", o))
			}
		}
		if minReplicas, inactive := w.seen(); len(inactive) > 0 || minReplicas < replicas {
			errs = append(errs, fmt.Errorf("an HPA sync failed while a replica stopped: %s", w))
		}
		return errors.Join(errs...)
	}
	nothingFailed := func(context.Context) error { return failures(p.outcomes()) }
	withBoth := holdsFor(ctx, t, 2*hpaSyncEvery, checkEvery, nothingFailed)
	secondServed := served(second.URL)
	stopping := time.Now()
	stopErr := second.Stop(30 * time.Second)
	stopTook := time.Since(stopping)
	_, exitErr := second.Exited()
	withOne := holdsFor(ctx, t, 2*hpaSyncEvery, checkEvery, nothingFailed)
	outs := p.stop()
	w.stop()
	firstServed := served(stack.AdapterURL) - firstBefore

	if stopErr != nil || exitErr != nil {
		t.Errorf("the second replica did not stop cleanly on SIGTERM: %v %v", stopErr, exitErr)
	}
	if stopTook < shutdownDelay {
		t.Errorf("the second replica stopped %s after SIGTERM, before its --shutdown-delay-duration of %s", stopTook, shutdownDelay)
	}
	if firstServed <= 0 || secondServed <= 0 {
		t.Errorf("the API server did not spread requests over both replicas: %.0f and %.0f", firstServed, secondServed)
	}
	byCode, worst := summary(outs)
	if err := failures(outs); err != nil {
		t.Error(err)
	}
	report(t, "%d requests over %s: %s; slowest %s; custom metrics requests served: first replica %.0f, second %.0f before its SIGTERM; it stopped %s after SIGTERM; %s",
		len(outs), (withBoth + stopTook + withOne).Round(100*time.Millisecond), codes(byCode), worst.Round(time.Millisecond), firstServed, secondServed, stopTook.Round(100*time.Millisecond), w)
}

// TestAPIServerRestarted kills and restarts kube-apiserver under the
// adapter: its informers must resync, so that pods created after the
// restart are served, and the HPA's answers stay those of its own pods.
func TestAPIServerRestarted(t *testing.T) {
	steady(t)
	ctx := context.Background()
	w := watch(t)
	down, err := stack.RestartAPIServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitAPIServicesAvailable(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	// A namespace and a pod the adapter's informers only learn of after
	// the restart.
	const fresh = "after-restart"
	if err := stack.DeployApp(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	want, err := readyPods(ctx, fresh)
	if err != nil || len(want) != 1 {
		t.Fatalf("pods of %s: %v %v", fresh, want, err)
	}
	path := "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + fresh + "/pods/" + want[0] + "/packets-per-second"
	newPod := waitFor(t, 90*time.Second, "a pod created after the restart served", func(ctx context.Context) bool {
		return get(ctx, stack.ServerURL, path).code == http.StatusOK
	})
	back := recovered(t, time.Minute)
	w.stop()
	if w.minReplicas < replicas {
		t.Errorf("the HPA scaled in across the API server's restart: %s", w)
	}
	report(t, "API server down %s; a pod created after it served %s later; answers and the HPA right again %s after that; %s",
		down.Round(100*time.Millisecond), newPod.Round(100*time.Millisecond), back.Round(100*time.Millisecond), w)
}

// TestPrometheusPausedUnderARunningHPA stops Prometheus (SIGSTOP): it
// accepts connections and never answers, the worst kind of slow. Every
// request must fail within --prometheus-timeout with a 504 naming
// Prometheus, the HPA must keep its replicas and say why it cannot scale,
// and after SIGCONT answers, the HPA and the adapter's goroutine count
// come back.
//
// The HPA is judged while Prometheus is paused. Right after it resumes,
// before its first scrapes, rate() over a window with a hole reads low,
// and this HPA, with no scale-down stabilization, may scale in: that is
// Prometheus' answer, faithfully served (docs/config.md#troubleshooting).
func TestPrometheusPausedUnderARunningHPA(t *testing.T) {
	steady(t)
	ctx := context.Background()
	idle := goroutines(t, stack.AdapterURL)
	w := watch(t)
	p := startProber(t, 500*time.Millisecond, clientPaths...)
	// failures says how the answers and the HPA broke what must hold while
	// Prometheus is paused.
	failures := func(outs []outcome) error {
		var errs []error
		_, worst := summary(outs)
		for _, o := range outs {
			if (o.code != http.StatusGatewayTimeout && o.code != http.StatusServiceUnavailable) || !strings.Contains(o.message, "Prometheus") {
				errs = append(errs, fmt.Errorf("paused Prometheus: want 504 or 503 naming Prometheus, got %s", o))
			}
		}
		if limit := promTimeout + 2*time.Second; worst > limit {
			errs = append(errs, fmt.Errorf("paused Prometheus: the slowest answer took %s, over --prometheus-timeout (%s) + 2s", worst, promTimeout))
		}
		if minReplicas, _ := w.seen(); minReplicas < replicas {
			errs = append(errs, fmt.Errorf("the HPA scaled in while Prometheus was paused: %s", w))
		}
		return errors.Join(errs...)
	}
	prom := stack.Prometheus.Proc
	if err := prom.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := prom.Signal(syscall.SIGCONT); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(resume)

	// Four HPA syncs without Prometheus.
	paused := holdsFor(ctx, t, 4*hpaSyncEvery, checkEvery, func(context.Context) error { return failures(p.outcomes()) })
	peak := goroutines(t, stack.AdapterURL)
	outs := p.stop()
	w.stop()
	resume()

	byCode, worst := summary(outs)
	if err := failures(outs); err != nil {
		t.Error(err)
	}
	if !slices.ContainsFunc(w.inactive, func(s string) bool {
		return strings.HasPrefix(s, "FailedGetPodsMetric") && strings.Contains(s, "Prometheus")
	}) {
		t.Errorf("the HPA's ScalingActive condition never named Prometheus as the cause: %s", w)
	}
	back := recovered(t, time.Minute)
	after := settleGoroutines(t, stack.AdapterURL, idle)
	report(t, "%d requests in %s paused: %s; slowest %s (timeout %s); answers and the HPA back %s after SIGCONT; goroutines %d idle, %d paused, %d after; paused: %s",
		len(outs), paused.Round(100*time.Millisecond), codes(byCode), worst.Round(time.Millisecond), promTimeout, back.Round(100*time.Millisecond), idle, peak, after, w)
}

// TestPrometheusKilledAndRestarted kills Prometheus (SIGKILL) and starts it
// again on the same port with the same data: meanwhile every request gets
// 503, "connection refused" once the connections the adapter held are
// gone; after, values again.
func TestPrometheusKilledAndRestarted(t *testing.T) {
	steady(t)
	ctx := context.Background()
	idle := goroutines(t, stack.AdapterURL)
	w := watch(t)
	p := startProber(t, 500*time.Millisecond, clientPaths...)
	var killed time.Time
	// failures says how the answers and the HPA broke what must hold while
	// Prometheus is down.
	failures := func(outs []outcome) error {
		var errs []error
		_, worst := summary(outs)
		for _, o := range outs {
			// A request on a kept-alive connection at the moment of the kill
			// sees it reset or closed (EOF); every later one is refused.
			atTheKill := o.started.Sub(killed) <= time.Second &&
				(strings.Contains(o.message, "connection reset") || strings.HasSuffix(o.message, ": EOF"))
			if o.code != http.StatusServiceUnavailable ||
				(!strings.Contains(o.message, "connection refused") && !atTheKill) {
				errs = append(errs, fmt.Errorf("Prometheus down: want 503 saying connection refused, got %s", o))
			}
		}
		if worst > time.Second {
			errs = append(errs, fmt.Errorf("Prometheus down: the slowest answer took %s; a refused connection should fail at once", worst))
		}
		if minReplicas, _ := w.seen(); minReplicas < replicas {
			errs = append(errs, fmt.Errorf("the HPA scaled in while Prometheus was down: %s", w))
		}
		return errors.Join(errs...)
	}
	killed = time.Now()
	stack.Prometheus.Proc.Kill()
	down := holdsFor(ctx, t, 2*hpaSyncEvery, checkEvery, func(context.Context) error { return failures(p.outcomes()) })
	outs := p.stop()
	w.stop()
	restart := time.Now()
	if err := stack.Prometheus.Restart(ctx, stack.Procs); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(restart)

	byCode, worst := summary(outs)
	if err := failures(outs); err != nil {
		t.Error(err)
	}
	if !slices.ContainsFunc(w.inactive, func(s string) bool { return strings.Contains(s, "connection refused") }) {
		t.Errorf("the HPA's ScalingActive condition never said connection refused: %s", w)
	}
	back := recovered(t, 90*time.Second)
	after := settleGoroutines(t, stack.AdapterURL, idle)
	report(t, "%d requests in %s down: %s; slowest %s; Prometheus ready %s after the restart, answers and the HPA back %s after that; goroutines %d before, %d after; down: %s",
		len(outs), down.Round(100*time.Millisecond), codes(byCode), worst.Round(time.Millisecond), ready.Round(100*time.Millisecond), back.Round(100*time.Millisecond), idle, after, w)
}
