package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// The requests a client of the API server keeps making during a fault:
// what the Pods HPA asks, what an External HPA asks, what kubectl top
// (and a Resource HPA) asks.
var (
	podsPath     = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + namespace + "/pods/*/packets-per-second?labelSelector=app%3D" + app
	externalPath = "/apis/external.metrics.k8s.io/v1beta1/namespaces/" + namespace + "/app_requests_per_second?labelSelector=container%3Dapp"
	resourcePath = "/apis/metrics.k8s.io/v1beta1/namespaces/" + namespace + "/pods?labelSelector=app%3D" + app
	clientPaths  = []string{podsPath, externalPath, resourcePath}
)

// state is what the HPA controller made of the HPA and the Deployment.
type state struct {
	replicas, ready, desired int32
	// active is the ScalingActive condition; reason and message say why
	// it is false.
	active          bool
	reason, message string
}

func hpaState(ctx context.Context) (state, error) {
	var s state
	d, err := stack.Client.AppsV1().Deployments(namespace).Get(ctx, app, metav1.GetOptions{})
	if err != nil {
		return s, err
	}
	h, err := stack.Client.AutoscalingV2().HorizontalPodAutoscalers(namespace).Get(ctx, app, metav1.GetOptions{})
	if err != nil {
		return s, err
	}
	s.replicas, s.ready, s.desired = *d.Spec.Replicas, d.Status.ReadyReplicas, h.Status.DesiredReplicas
	for _, c := range h.Status.Conditions {
		if c.Type == autoscalingv2.ScalingActive {
			s.active = c.Status == corev1.ConditionTrue
			s.reason, s.message = c.Reason, c.Message
		}
	}
	return s, nil
}

// watcher polls the HPA and its Deployment four times a second and keeps
// what it saw.
type watcher struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// minReplicas and maxReplicas are the Deployment's extremes.
	minReplicas, maxReplicas int32
	// inactive are the distinct "reason: message" of ScalingActive=False.
	inactive []string
	// polls and failedPolls count reads, and reads the API server did not
	// answer.
	polls, failedPolls int
}

func watch(t *testing.T) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{cancel: cancel, done: make(chan struct{}), minReplicas: 1 << 30}
	go func() {
		defer close(w.done)
		wait.NonSlidingUntilWithContext(ctx, w.read, 250*time.Millisecond)
	}()
	t.Cleanup(w.stop)
	return w
}

// read reads the HPA and its Deployment once and keeps what it saw.
func (w *watcher) read(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	s, err := hpaState(ctx)
	cancel()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.polls++
	if err != nil {
		w.failedPolls++
		return
	}
	w.minReplicas = min(w.minReplicas, s.replicas)
	w.maxReplicas = max(w.maxReplicas, s.replicas)
	if why := s.reason + ": " + s.message; !s.active && !slices.Contains(w.inactive, why) {
		w.inactive = append(w.inactive, why)
	}
}

// seen returns the Deployment's fewest replicas and the ScalingActive=False
// reasons so far; it may be called while the watcher runs.
func (w *watcher) seen() (minReplicas int32, inactive []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.minReplicas, slices.Clone(w.inactive)
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("replicas %d..%d over %d reads (%d unanswered), ScalingActive=False seen %d ways: %q",
		w.minReplicas, w.maxReplicas, w.polls, w.failedPolls, len(w.inactive), w.inactive)
}

// outcome is one answer a client got.
type outcome struct {
	path    string
	started time.Time
	code    int
	took    time.Duration
	message string
	body    []byte
}

func (o outcome) String() string {
	return fmt.Sprintf("%d after %s for %s: %s", o.code, o.took.Round(time.Millisecond), short(o.path), o.message)
}

func short(s string) string {
	if len(s) > 160 {
		return fmt.Sprintf("%s... (%d bytes)", s[:160], len(s))
	}
	return s
}

// get asks base+path with the admin's client certificate and returns the
// code (0 when no answer came), the body, and the Status message of an
// error.
func get(ctx context.Context, base, path string) outcome {
	o := outcome{path: path, started: time.Now()}
	code, body, err := stack.Get(ctx, "admin", base+path, nil)
	o.took = time.Since(o.started)
	if err != nil {
		o.message = err.Error()
		return o
	}
	o.code, o.body = code, body
	if o.code != http.StatusOK {
		var st metav1.Status
		if json.Unmarshal(o.body, &st) == nil && st.Message != "" {
			o.message = st.Message
		} else {
			o.message = short(string(o.body))
		}
	}
	return o
}

// prober asks each of its paths through the API server every interval,
// each request on its own, so a slow answer does not hold back the next.
type prober struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	out    []outcome
}

func startProber(t *testing.T, every time.Duration, paths ...string) *prober {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		wait.NonSlidingUntilWithContext(ctx, func(context.Context) {
			for _, path := range paths {
				wg.Go(func() {
					// Not ctx: stopping the prober stops new requests,
					// the ones in flight finish.
					o := get(context.Background(), stack.ServerURL, path)
					p.mu.Lock()
					p.out = append(p.out, o)
					p.mu.Unlock()
				})
			}
		}, every)
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

// outcomes returns the answers so far, not those still in flight; it may
// be called while the prober runs.
func (p *prober) outcomes() []outcome {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.out)
}

// stop stops sending, waits for the answers in flight and returns every
// answer.
func (p *prober) stop() []outcome {
	p.cancel()
	<-p.done
	return p.outcomes()
}

// summary counts answers by code and finds the slowest.
func summary(outs []outcome) (byCode map[int]int, worst time.Duration) {
	byCode = map[int]int{}
	for _, o := range outs {
		byCode[o.code]++
		worst = max(worst, o.took)
	}
	return byCode, worst
}

func codes(byCode map[int]int) string {
	keys := make([]int, 0, len(byCode))
	for k := range byCode {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%dx%d", byCode[k], k))
	}
	return strings.Join(parts, " ")
}

// report prints one line of figures for the suite's summary.
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	fmt.Printf("FAULT-REPORT %s: %s\n", t.Name(), line)
}

// adapterMetric sums the samples of a metric family on an adapter's
// /metrics whose labels include match.
func adapterMetric(ctx context.Context, adapterURL, family string, match map[string]string) (float64, error) {
	mfs, err := stack.Metrics(ctx, adapterURL)
	if err != nil {
		return 0, err
	}
	v, ok := localstack.Sum(mfs, family, match)
	if !ok {
		return 0, fmt.Errorf("%s/metrics has no %s", adapterURL, family)
	}
	return v, nil
}

// goroutines reads the adapter's go_goroutines.
func goroutines(t *testing.T, adapterURL string) int {
	t.Helper()
	g, err := adapterMetric(context.Background(), adapterURL, "go_goroutines", nil)
	if err != nil {
		t.Fatal(err)
	}
	return int(g)
}

// waitFor polls cond every 250ms until it holds or timeout passes, and
// returns how long that took. cond's ctx ends with the timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) bool) time.Duration {
	t.Helper()
	start := time.Now()
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		return cond(ctx), nil
	})
	if err != nil {
		t.Fatalf("%s: not within %s", what, timeout)
	}
	return time.Since(start)
}

// checkEvery is how often holdsFor checks: as often as the watcher reads.
const checkEvery = 250 * time.Millisecond

// holdsFor checks every interval, over window, that check holds
// (localstack.HoldsFor), and returns how long it watched. A failure of
// check only ends the window early and is logged; check must judge by the
// same rules as the caller's assertions after the window, which see
// everything and report it. ctx ending first is an error.
func holdsFor(ctx context.Context, t *testing.T, window, interval time.Duration, check func(ctx context.Context) error) time.Duration {
	t.Helper()
	watched, err := localstack.HoldsFor(ctx, window, interval, check)
	switch {
	case err != nil && ctx.Err() != nil:
		t.Errorf("%v", err)
	case err != nil:
		t.Logf("stopped watching %s into a %s window: %v", watched.Round(100*time.Millisecond), window, err)
	}
	return watched
}
