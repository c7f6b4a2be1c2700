// Command benchfleet is `make bench-fleet`: what a fleet of HPAs asking
// every 15 seconds costs the adapter, Prometheus and the HPA controller.
//
// For each fleet size it starts the local stack without a kubelet: a real
// kube-apiserver, the real HPA controller of kube-controller-manager (its
// default sync period, 15 s, and worker count, 5), a real Prometheus and
// the real adapter with its defaults (series listed every minute). In namespaces of -per-namespace HPAs it creates, per
// HPA, a Deployment and its pods as objects (never scheduled; their status
// says Running and Ready, as a kubelet would write it, so that the HPA
// counts them) and the HPA that scales the Deployment on a metric of its
// own: by turns a Pods metric over its pods, an Object metric of the
// Deployment (served from its pods' series) and an External metric
// selected by the Deployment's label. One synthetic target gives every pod
// app_requests_total at a rate (100 req/s) that swings by ±5 % over five minutes
// (inside the HPA's 10 % tolerance: nothing scales), so every sync reads a
// new value and writes it into the HPA's status.
//
// After a warm-up of two sync periods it measures for -window: the HPA
// controller's reconciliations and metric computations (count, mean
// duration and errors, from kube-controller-manager's own metrics), the
// FailedGet* events, the age of each HPA's status.currentMetrics at the end
// (the time since its value last changed, from a watch), the adapter's and
// Prometheus' CPU and the adapter's RSS, and Prometheus' queries per
// second. Before it creates the HPAs (-floor, on by default), it measures
// the floor at the fleet's rate: the adapter answering as many requests a
// second as the HPAs will send, each an empty answer through the API
// server with no Prometheus query, for -window, after a window of no
// request at all (the adapter idle with the fleet's objects in place), so
// that each row also says what a request costs the adapter beyond idle,
// in the fleet and in the floor. Everything listens on 127.0.0.1 and is
// stopped by PID at the end of each row.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	cmv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	cmscheme "k8s.io/metrics/pkg/client/custom_metrics/scheme"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/adapter"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

func main() {
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "bench-fleet:", err)
		os.Exit(1)
	}
}

// syncPeriod is the HPA controller's default
// --horizontal-pod-autoscaler-sync-period.
const syncPeriod = 15 * time.Second

type options struct {
	sizes []int
	// modes are the shared-query settings each size runs with: "off", or
	// a --shared-query-max-age.
	modes        []string
	perNamespace int
	podsPerHPA   int
	window       time.Duration
	kcmQPS       float64
	adapterArgs  []string
	adapterEnv   []string
	dir          string
	// profiles is where each row's adapter CPU profile goes ("": none).
	profiles string
	// floor measures, before the HPAs, the adapter answering empty
	// answers at the fleet's request rate.
	floor bool
}

func run() error {
	sizes := flag.String("hpas", "100,1000,2000", "Fleet sizes, comma-separated: one row (a fresh stack) each.")
	perNamespace := flag.Int("per-namespace", 100, "HPAs (and Deployments) per namespace.")
	podsPerHPA := flag.Int("pods-per-hpa", 5, "Pods of each Deployment.")
	window := flag.Duration("window", 2*time.Minute, "How long each row is measured, after a warm-up of two sync periods.")
	kcmQPS := flag.Float64("kcm-qps", 0, "kube-controller-manager's --kube-api-qps (its burst 1.5 times that); 0 keeps its default (20 QPS, burst 30), which each of the HPA controller's clients is limited to.")
	shared := flag.String("shared", "off,30s", "Shared queries, comma-separated: off, or a --shared-query-max-age (30s); each size runs once per setting.")
	var args, env stringList
	flag.Var(&args, "adapter-arg", "An extra adapter flag (repeatable).")
	flag.Var(&env, "adapter-env", "An environment variable of the adapter, NAME=value (repeatable), e.g. GOMAXPROCS=1.")
	dirFlag := flag.String("dir", "", "Run folder (default run/bench-fleet in the repository).")
	profiles := flag.String("profiles", "", "Folder for the adapter's CPU profile over each row's window (go tool pprof reads them).")
	floorFlag := flag.Bool("floor", true, "Before the HPAs, measure the adapter answering as many requests a second as the fleet will send (one per HPA per sync period), each an empty answer "+
		"(a selector of no pod: no Prometheus query) through the API server, for -window: what the serving stack costs at that rate; before it, -window with no request, the adapter idle.")
	flag.Parse()
	o := options{perNamespace: *perNamespace, podsPerHPA: *podsPerHPA, window: *window, kcmQPS: *kcmQPS, adapterArgs: args, adapterEnv: env, profiles: *profiles, floor: *floorFlag}
	if o.profiles != "" {
		if err := os.MkdirAll(o.profiles, 0o755); err != nil {
			return err
		}
	}
	for _, m := range strings.Split(*shared, ",") {
		m = strings.TrimSpace(m)
		if d, err := time.ParseDuration(m); m != "off" && (err != nil || d < time.Second) {
			return fmt.Errorf("-shared: %q is neither off nor a duration of at least 1s", m)
		}
		o.modes = append(o.modes, m)
	}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 3 {
			return fmt.Errorf("-hpas: %q must be a number of at least 3 (one of each metric type)", s)
		}
		o.sizes = append(o.sizes, n)
	}
	if o.perNamespace < 1 || o.podsPerHPA < 1 || o.window < syncPeriod || o.kcmQPS < 0 {
		return errors.New("-per-namespace and -pods-per-hpa must be positive, -window at least one sync period (15s), -kcm-qps not negative")
	}
	root, err := localstack.RepoRoot()
	if err != nil {
		return err
	}
	o.dir = *dirFlag
	if o.dir == "" {
		o.dir = filepath.Join(root, "run", "bench-fleet")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var rows []row
	for _, n := range o.sizes {
		for _, mode := range o.modes {
			r, err := measure(ctx, o, n, mode)
			if err != nil {
				return fmt.Errorf("%d HPAs, shared queries %s: %w", n, mode, err)
			}
			fmt.Println(r.line())
			rows = append(rows, r)
		}
	}
	fmt.Printf("\n%s", table(rows))
	files, err := writePlots(rows, o.dir)
	if err != nil {
		return err
	}
	fmt.Printf("plots: %s\n", strings.Join(files, ", "))
	return nil
}

// fleet is the objects of one row.
type fleet struct {
	namespaces []string
	hpas       []hpaRef
}

type hpaRef struct {
	namespace, name string
	kind            autoscalingv2.MetricSourceType
}

// plan lays out n HPAs, perNamespace to a namespace; HPA i reads a Pods,
// an Object or an External metric by turns.
func plan(n, perNamespace int) fleet {
	var f fleet
	kinds := []autoscalingv2.MetricSourceType{autoscalingv2.PodsMetricSourceType, autoscalingv2.ObjectMetricSourceType, autoscalingv2.ExternalMetricSourceType}
	for i := range n {
		ns := fmt.Sprintf("fleet-%03d", i/perNamespace)
		if len(f.namespaces) == 0 || f.namespaces[len(f.namespaces)-1] != ns {
			f.namespaces = append(f.namespaces, ns)
		}
		f.hpas = append(f.hpas, hpaRef{namespace: ns, name: fmt.Sprintf("d-%04d", i), kind: kinds[i%3]})
	}
	return f
}

// podRate is every pod's mean request rate, and each HPA's target per
// pod. At 100 req/s the value moves by about 1.6 (1,600 milli-units, the
// HPA status' resolution) between two syncs, at 1 by under 0.02: near
// the swing's turning points an HPA could then read the same value at two
// syncs, which the metric age would count as a stale one.
const podRate = 100

// counterAt is every pod's app_requests_total t seconds after start: its
// rate is podRate (1 + 0.05 sin(2πt/300)), ±5 % over five minutes.
func counterAt(t float64) float64 {
	return podRate * (t + 0.05*300/(2*math.Pi)*(1-math.Cos(2*math.Pi*t/300)))
}

// exporter serves app_requests_total for every pod of the fleet.
type exporter struct {
	f          fleet
	podsPerHPA int
	start      time.Time
}

func (e exporter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	v := counterAt(time.Since(e.start).Seconds())
	bw := bufio.NewWriterSize(w, 64<<10)
	_, _ = bw.WriteString("# TYPE app_requests_total counter\n")
	for _, h := range e.f.hpas {
		for j := range e.podsPerHPA {
			_, _ = fmt.Fprintf(bw, "app_requests_total{namespace=%q,pod=\"%s-%d\",app=%q,endpoint=\"/\"} %.4f\n", h.namespace, h.name, j, h.name, v)
		}
	}
	_ = bw.Flush()
}

// row is what one fleet size measured.
type row struct {
	hpas int
	// shared is the shared-query setting: off, or its maximum age.
	shared string
	// checked values the adapter served against Prometheus evaluated at
	// their timestamps, and how many differed.
	checked, differed int
	// reconciliations and metric computations in the window, their mean
	// durations, and how many failed.
	syncs, syncErrors       float64
	syncMean                time.Duration
	computations, compFails float64
	computeMean             time.Duration
	computeMeanByType       map[string]time.Duration
	failedGetEvents         int
	// ages of the HPAs' status.currentMetrics at the end.
	ageP50, ageP99, ageMax time.Duration
	neverRead              int
	adapterCPU, promCPU    float64 // share of one core
	adapterRSS             int64
	promQPS                float64
	// promBound is the most queries per second shared queries should
	// send: one per rule and namespace per refresh.
	promBound float64
	window    time.Duration
	setup     time.Duration
	// floor is the adapter's CPU for empty answers at the fleet's rate
	// (zero when not measured).
	floor floorResult
}

func measure(ctx context.Context, o options, n int, mode string) (row, error) {
	f := plan(n, o.perNamespace)
	dir := filepath.Join(o.dir, strconv.Itoa(n)+"-shared-"+mode)
	args := o.adapterArgs
	if mode != "off" {
		args = append(slices.Clone(args), "--shared-query-max-age="+mode)
	}
	if err := os.RemoveAll(dir); err != nil {
		return row{}, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return row{}, err
	}
	exp := &http.Server{Handler: exporter{f: f, podsPerHPA: o.podsPerHPA, start: time.Now()}, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = exp.Serve(ln) }()
	defer func() { _ = exp.Close() }()

	var kcmArgs []string
	if o.kcmQPS > 0 {
		kcmArgs = []string{fmt.Sprintf("--kube-api-qps=%g", o.kcmQPS), fmt.Sprintf("--kube-api-burst=%d", int(1.5*o.kcmQPS))}
	}
	fmt.Printf("== %d HPAs in %d namespaces, %d pods each, shared queries %s: starting the stack (logs in %s)\n", n, len(f.namespaces), o.podsPerHPA, mode, dir)
	s, err := localstack.StartStack(ctx, localstack.StackOptions{
		ClusterOptions: localstack.ClusterOptions{
			Dir: dir, HPASyncPeriod: syncPeriod, DownscaleStabilization: 5 * time.Minute,
			Controllers:           []string{"horizontal-pod-autoscaler-controller", "serviceaccount-controller", "serviceaccount-token-controller"},
			ControllerManagerArgs: kcmArgs,
		},
		NoKubelet: true,
		// The adapter's own default, as a cluster runs it: the local
		// stack lists series every 10 s for its tests, which at 10,000
		// pods would count six listings a minute in the adapter's CPU.
		RelistInterval: adapter.NewOptions().MetricsRelistInterval,
		// Prometheus scraping the adapter would count in its CPU.
		NoAdapterScrape: true,
		AdapterArgs:     args,
		AdapterEnv:      o.adapterEnv,
		ExtraScrapeConfigs: []map[string]any{{
			"job_name": "fleet-pods", "honor_labels": true,
			"static_configs": []any{map[string]any{"targets": []any{ln.Addr().String()}}},
		}},
	})
	if err != nil {
		return row{}, err
	}
	defer func() {
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	cfg := rest.CopyConfig(s.Admin)
	cfg.QPS, cfg.Burst = 2000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return row{}, err
	}
	start := time.Now()
	if err := create(ctx, client, f, o.podsPerHPA); err != nil {
		return row{}, err
	}
	fmt.Printf("   %d Deployments and %d pods created in %s\n", n, n*o.podsPerHPA, time.Since(start).Round(time.Second))
	var fl floorResult
	if o.floor {
		if fl, err = floor(ctx, s, f, o, n, mode); err != nil {
			return row{}, fmt.Errorf("the floor: %w", err)
		}
		fmt.Println("   " + fl.line())
	}
	start = time.Now()
	if err := each(f, func(h hpaRef) error { return createHPA(ctx, client, h, o.podsPerHPA) }); err != nil {
		return row{}, err
	}
	setup := time.Since(start)
	fmt.Printf("   %d HPAs created in %s\n", n, setup.Round(time.Second))

	w := watchHPAs(ctx, client)
	defer w.stop()
	// Every HPA has read its metric once, then two more sync periods.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 10*time.Minute, true, func(context.Context) (bool, error) {
		return w.read() >= n, nil
	}); err != nil {
		return row{}, fmt.Errorf("only %d of %d HPAs read their metric within 10 minutes: %w", w.read(), n, err)
	}
	fmt.Printf("   every HPA read its metric %s after the first was created; warming up for %s\n", time.Since(start).Round(time.Second), 2*syncPeriod)
	select {
	case <-time.After(2 * syncPeriod):
	case <-ctx.Done():
		return row{}, ctx.Err()
	}

	kcm0, err := scrape(ctx, s.Admin, s.ControllerManagerURL+"/metrics")
	if err != nil {
		return row{}, fmt.Errorf("kube-controller-manager's metrics: %w", err)
	}
	prom0, err := scrape(ctx, nil, s.Prometheus.URL+"/metrics")
	if err != nil {
		return row{}, fmt.Errorf("the metrics of Prometheus: %w", err)
	}
	adapterPID, promPID := s.Adapter.PID(), s.Prometheus.Proc.PID()
	adapterCPU0, promCPU0 := localstack.CPUSeconds(adapterPID), localstack.CPUSeconds(promPID)
	t0 := time.Now()
	profiled := profile(ctx, s, o, fmt.Sprintf("%d-shared-%s.cpu.pprof", n, mode))
	select {
	case <-time.After(o.window):
	case <-ctx.Done():
		return row{}, ctx.Err()
	}
	elapsed := time.Since(t0)
	if err := <-profiled; err != nil {
		return row{}, fmt.Errorf("the adapter's CPU profile: %w", err)
	}
	adapterCPU, promCPU := localstack.CPUSeconds(adapterPID)-adapterCPU0, localstack.CPUSeconds(promPID)-promCPU0
	end := time.Now()
	ages := w.ages(end, f)
	kcm1, err := scrape(ctx, s.Admin, s.ControllerManagerURL+"/metrics")
	if err != nil {
		return row{}, fmt.Errorf("kube-controller-manager's metrics: %w", err)
	}
	prom1, err := scrape(ctx, nil, s.Prometheus.URL+"/metrics")
	if err != nil {
		return row{}, fmt.Errorf("the metrics of Prometheus: %w", err)
	}
	events, err := failedGets(ctx, client, f.namespaces, t0)
	if err != nil {
		return row{}, err
	}
	rss, _ := localstack.Memory(adapterPID)
	checked, differed, err := checkValues(ctx, s, f, o.podsPerHPA)
	if err != nil {
		return row{}, err
	}

	r := row{hpas: n, shared: mode, floor: fl, checked: checked, differed: differed, window: elapsed, setup: setup, failedGetEvents: events, adapterRSS: rss,
		adapterCPU: adapterCPU / elapsed.Seconds(), promCPU: promCPU / elapsed.Seconds(), computeMeanByType: map[string]time.Duration{}}
	const hpaMetric = "horizontal_pod_autoscaler_controller_"
	r.syncs, r.syncMean = histogramDelta(kcm0, kcm1, hpaMetric+"reconciliation_duration_seconds", nil)
	// Failures are counted from the counters alone (error other than
	// none): the counters and the histograms are read in one scrape but
	// moved one after the other, so that the histogram's count less the
	// counter's successes can count a sync in flight as failed.
	r.syncErrors = counterDelta(kcm0, kcm1, hpaMetric+"reconciliations_total", map[string]string{"error": "!none"})
	r.computations, r.computeMean = histogramDelta(kcm0, kcm1, hpaMetric+"metric_computation_duration_seconds", nil)
	r.compFails = counterDelta(kcm0, kcm1, hpaMetric+"metric_computation_total", map[string]string{"error": "!none"})
	for _, kind := range []string{"Pods", "Object", "External"} {
		_, r.computeMeanByType[kind] = histogramDelta(kcm0, kcm1, hpaMetric+"metric_computation_duration_seconds", map[string]string{"metric_type": kind})
	}
	r.promQPS = counterDelta(prom0, prom1, "prometheus_http_requests_total", map[string]string{"handler": "/api/v1/query"}) / elapsed.Seconds()
	r.neverRead = n - len(ages)
	if mode != "off" {
		// One query per rule (Pods, Deployments through their pods,
		// external) and namespace every third of the bound.
		d, _ := time.ParseDuration(mode)
		r.promBound = float64(3*len(f.namespaces)) / (d / 3).Seconds()
	}
	slices.Sort(ages)
	if len(ages) > 0 {
		r.ageP50, r.ageP99, r.ageMax = ages[len(ages)/2], ages[min(len(ages)-1, len(ages)*99/100)], ages[len(ages)-1]
	}
	return r, nil
}

// create makes the namespaces, and per HPA its Deployment, its pods (their
// status Running and Ready) and the HPA.
func create(ctx context.Context, client kubernetes.Interface, f fleet, podsPerHPA int) error {
	for _, ns := range f.namespaces {
		if err := localstack.CreateNamespace(ctx, client, ns); err != nil {
			return err
		}
	}
	return each(f, func(h hpaRef) error { return createApp(ctx, client, h, podsPerHPA) })
}

// each runs do for every HPA of f, 32 at a time, and returns an error of
// one that failed.
func each(f fleet, do func(hpaRef) error) error {
	work := make(chan hpaRef)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for h := range work {
				if err := do(h); err != nil {
					select {
					case errs <- fmt.Errorf("%s/%s: %w", h.namespace, h.name, err):
					default:
					}
				}
			}
		})
	}
	for _, h := range f.hpas {
		work <- h
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// createApp creates h's Deployment and its pods, their status Running
// and Ready.
func createApp(ctx context.Context, client kubernetes.Interface, h hpaRef, podsPerHPA int) error {
	labels := map[string]string{"app": h.name}
	replicas := int32(podsPerHPA)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.namespace, Name: h.name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "fleet.invalid/app:never-pulled"}}},
			},
		},
	}
	if _, err := client.AppsV1().Deployments(h.namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	now := metav1.Now()
	for j := range podsPerHPA {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: h.namespace, Name: fmt.Sprintf("%s-%d", h.name, j), Labels: labels},
			Spec:       d.Spec.Template.Spec,
		}
		created, err := client.CoreV1().Pods(h.namespace).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		// What a kubelet would report: running and ready.
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
		if _, err := client.CoreV1().Pods(h.namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// createHPA creates h's HPA, which scales its Deployment.
func createHPA(ctx context.Context, client kubernetes.Interface, h hpaRef, podsPerHPA int) error {
	labels := map[string]string{"app": h.name}
	one, maxReplicas := int32(1), int32(4*podsPerHPA)
	metric := autoscalingv2.MetricSpec{Type: h.kind}
	perPod := *resource.NewQuantity(podRate, resource.DecimalSI)
	total := *resource.NewQuantity(int64(podRate*podsPerHPA), resource.DecimalSI)
	switch h.kind {
	case autoscalingv2.PodsMetricSourceType:
		metric.Pods = &autoscalingv2.PodsMetricSource{Metric: autoscalingv2.MetricIdentifier{Name: "requests-per-second"},
			Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: &perPod}}
	case autoscalingv2.ObjectMetricSourceType:
		metric.Object = &autoscalingv2.ObjectMetricSource{Metric: autoscalingv2.MetricIdentifier{Name: "requests-per-second"},
			DescribedObject: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: h.name},
			Target:          autoscalingv2.MetricTarget{Type: autoscalingv2.ValueMetricType, Value: &total}}
	case autoscalingv2.ExternalMetricSourceType:
		metric.External = &autoscalingv2.ExternalMetricSource{Metric: autoscalingv2.MetricIdentifier{Name: "app_requests_per_second",
			Selector: &metav1.LabelSelector{MatchLabels: labels}},
			Target: autoscalingv2.MetricTarget{Type: autoscalingv2.ValueMetricType, Value: &total}}
	}
	hpa := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.namespace, Name: h.name},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: h.name},
			MinReplicas:    &one, MaxReplicas: maxReplicas, Metrics: []autoscalingv2.MetricSpec{metric},
		},
	}
	if _, err := client.AutoscalingV2().HorizontalPodAutoscalers(h.namespace).Create(ctx, hpa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// hpaWatch records, per HPA, when the value in its status.currentMetrics
// last changed.
type hpaWatch struct {
	mu      sync.Mutex
	value   map[string]string
	changed map[string]time.Time
	stop    context.CancelFunc
}

func watchHPAs(ctx context.Context, client kubernetes.Interface) *hpaWatch {
	ctx, stop := context.WithCancel(ctx)
	w := &hpaWatch{value: map[string]string{}, changed: map[string]time.Time{}, stop: stop}
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Autoscaling().V2().HorizontalPodAutoscalers().Informer()
	record := func(obj any) {
		h, ok := obj.(*autoscalingv2.HorizontalPodAutoscaler)
		if !ok || len(h.Status.CurrentMetrics) == 0 {
			return
		}
		v := currentValue(h.Status.CurrentMetrics[0])
		if v == "" {
			return
		}
		key := h.Namespace + "/" + h.Name
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.value[key] != v {
			w.value[key], w.changed[key] = v, time.Now()
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: record, UpdateFunc: func(_, obj any) { record(obj) }})
	factory.Start(ctx.Done())
	return w
}

// currentValue is the value an HPA's status holds for its metric.
func currentValue(m autoscalingv2.MetricStatus) string {
	var cur autoscalingv2.MetricValueStatus
	switch {
	case m.Pods != nil:
		cur = m.Pods.Current
	case m.Object != nil:
		cur = m.Object.Current
	case m.External != nil:
		cur = m.External.Current
	default:
		return ""
	}
	for _, q := range []*resource.Quantity{cur.AverageValue, cur.Value} {
		if q != nil {
			return q.String()
		}
	}
	return ""
}

// read is how many HPAs have a value in their status.
func (w *hpaWatch) read() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.changed)
}

// ages are, for the fleet's HPAs that have a value, how long before end it
// last changed.
func (w *hpaWatch) ages(end time.Time, f fleet) []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ages []time.Duration
	for _, h := range f.hpas {
		if t, ok := w.changed[h.namespace+"/"+h.name]; ok {
			ages = append(ages, end.Sub(t))
		}
	}
	return ages
}

// failedGets counts the HPA controller's FailedGet* warnings
// (FailedGetPodsMetric, FailedGetObjectMetric, ...) seen since since.
func failedGets(ctx context.Context, client kubernetes.Interface, namespaces []string, since time.Time) (int, error) {
	n := 0
	for _, ns := range namespaces {
		list, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "type=Warning"})
		if err != nil {
			return 0, err
		}
		for _, e := range list.Items {
			if strings.HasPrefix(e.Reason, "FailedGet") && !e.LastTimestamp.Time.Before(since.Truncate(time.Second)) {
				n += int(max(e.Count, 1))
			}
		}
	}
	return n, nil
}

// scrape reads a /metrics page, with cfg's credentials when not nil.
func scrape(ctx context.Context, cfg *rest.Config, url string) (map[string]*dto.MetricFamily, error) {
	hc := http.DefaultClient
	if cfg != nil {
		c := rest.CopyConfig(cfg)
		c.Insecure, c.CAData, c.CAFile = true, nil, ""
		var err error
		if hc, err = rest.HTTPClientFor(c); err != nil {
			return nil, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// matches reports whether m has every label of want, with its value or,
// for a value "!v", with any value but v.
func matches(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		v, ok := want[l.GetName()]
		if !ok {
			continue
		}
		if not, neg := strings.CutPrefix(v, "!"); neg && not != l.GetValue() || !neg && v == l.GetValue() {
			n++
		}
	}
	return n == len(want)
}

// counterDelta is how much the counter name (its series with labels want,
// summed) grew from a to b.
func counterDelta(a, b map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	sum := func(mfs map[string]*dto.MetricFamily) float64 {
		var s float64
		for _, m := range mfs[name].GetMetric() {
			if matches(m, want) {
				s += m.GetCounter().GetValue()
			}
		}
		return s
	}
	return sum(b) - sum(a)
}

// histogramDelta is how many observations the histogram name (its series
// with labels want) took from a to b, and their mean.
func histogramDelta(a, b map[string]*dto.MetricFamily, name string, want map[string]string) (float64, time.Duration) {
	sum := func(mfs map[string]*dto.MetricFamily) (count, total float64) {
		for _, m := range mfs[name].GetMetric() {
			if matches(m, want) {
				count += float64(m.GetHistogram().GetSampleCount())
				total += m.GetHistogram().GetSampleSum()
			}
		}
		return count, total
	}
	c0, s0 := sum(a)
	c1, s1 := sum(b)
	if c1 <= c0 {
		return 0, 0
	}
	return c1 - c0, time.Duration((s1 - s0) / (c1 - c0) * float64(time.Second))
}

func (r row) line() string {
	per := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf("%5d HPAs, shared %s: %.1f syncs/s (%.0f errors), mean %s; metric computations %.0f (%.0f failed, %d FailedGet* events), mean %s (Pods %s, Object %s, External %s); "+
		"metric age at the end p50 %s p99 %s max %s (%d never read); adapter %.1f %% of a core, RSS %.0f MiB; Prometheus %.1f queries/s, %.1f %% of a core; "+
		"%d served values checked against Prometheus at their timestamps, %d differed; the metric computation is %.0f %% of a sync%s",
		r.hpas, r.shared, r.syncs/r.window.Seconds(), r.syncErrors, per(r.syncMean), r.computations, r.compFails, r.failedGetEvents, per(r.computeMean),
		per(r.computeMeanByType["Pods"]), per(r.computeMeanByType["Object"]), per(r.computeMeanByType["External"]),
		r.ageP50.Round(time.Second), r.ageP99.Round(time.Second), r.ageMax.Round(time.Second), r.neverRead,
		100*r.adapterCPU, float64(r.adapterRSS)/(1<<20), r.promQPS, 100*r.promCPU, r.checked, r.differed, 100*r.share(), r.bound()) + r.floorNote()
}

// floorNote compares the adapter's CPU with the floor's, when measured.
func (r row) floorNote() string {
	if r.floor.window == 0 {
		return ""
	}
	return fmt.Sprintf("; the floor at the same rate (%s): the adapter %.1f %% of a core, %.2f of the row's; the row's adapter CPU per request beyond idle: %.2f ms",
		r.floor.line(), 100*r.floor.adapterCPU, r.floor.adapterCPU/r.adapterCPU, r.perRequest())
}

// perRequest is the adapter's CPU per metric computation (one request to
// the adapter each) beyond the idle measured before the floor, in
// milliseconds; 0 without the floor's idle or without computations.
func (r row) perRequest() float64 {
	if r.floor.idleWindow == 0 || r.computations == 0 {
		return 0
	}
	return 1000 * (r.adapterCPU - r.floor.idleCPU) / (r.computations / r.window.Seconds())
}

// adapterCell is the table's adapter CPU, and the floor's beside it.
func (r row) adapterCell() string {
	if r.floor.window == 0 {
		return fmt.Sprintf("%.1f %%", 100*r.adapterCPU)
	}
	return fmt.Sprintf("%.1f %% (%.1f %%; idle %.1f %%)", 100*r.adapterCPU, 100*r.floor.adapterCPU, 100*r.floor.idleCPU)
}

// perRequestCell is the adapter's CPU per request beyond idle, the
// floor's beside it.
func (r row) perRequestCell() string {
	if r.floor.idleWindow == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f ms (%.2f ms)", r.perRequest(), r.floor.perRequest())
}

// share is the part of the HPA controller's mean sync its metric
// computation takes (the API server's and the adapter's part).
func (r row) share() float64 {
	if r.syncMean == 0 {
		return 0
	}
	return float64(r.computeMean) / float64(r.syncMean)
}

// bound says the most Prometheus queries per second shared queries allow.
func (r row) bound() string {
	if r.promBound == 0 {
		return ""
	}
	return fmt.Sprintf("; shared queries allow at most %.1f queries/s", r.promBound)
}

func table(rows []row) string {
	var b strings.Builder
	b.WriteString("| HPAs | shared queries | syncs/s | sync mean | metric mean (share of sync) | failed computations | FailedGet* events | metric age p50 / p99 / max | adapter CPU of one core (floor at the same rate; idle) | adapter CPU per request beyond idle (floor) | adapter RSS | Prometheus queries/s | Prometheus CPU | values differing |\n")
	b.WriteString("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %s | %.1f | %.1f ms | %.1f ms (%.0f %%) | %.0f of %.0f | %d | %s / %s / %s | %s | %s | %.0f MiB | %.1f | %.1f %% | %d of %d |\n",
			r.hpas, r.shared, r.syncs/r.window.Seconds(), float64(r.syncMean)/float64(time.Millisecond), float64(r.computeMean)/float64(time.Millisecond), 100*r.share(),
			r.compFails, r.computations, r.failedGetEvents, r.ageP50.Round(time.Second), r.ageP99.Round(time.Second), r.ageMax.Round(time.Second),
			r.adapterCell(), r.perRequestCell(), float64(r.adapterRSS)/(1<<20), r.promQPS, 100*r.promCPU, r.differed, r.checked)
	}
	return b.String()
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// served is one value the adapter served: the object's (or the external
// metric's) name, the value and its timestamp.
type served struct {
	name  string
	value float64
	at    time.Time
}

// checkValues asks the adapter, through the API server as the HPA
// controller does, for the metric of up to ten HPAs of each kind, and
// checks each value against the query the adapter would send for that
// request alone, evaluated by Prometheus at the value's timestamp: shared
// or not, the value must be that query's. The timestamp has whole seconds,
// so the query is evaluated at it and a second later, and the value must
// lie between the two (within the answer's resolution, 0.001).
func checkValues(ctx context.Context, s *localstack.Stack, f fleet, podsPerHPA int) (checked, differed int, err error) {
	per := map[autoscalingv2.MetricSourceType]int{}
	for _, h := range f.hpas {
		if per[h.kind] == 10 {
			continue
		}
		per[h.kind]++
		pods := make([]string, podsPerHPA)
		for j := range pods {
			pods[j] = fmt.Sprintf("%s-%d", h.name, j)
		}
		podRegex := strings.Join(pods, "|")
		var path, expr string
		switch h.kind {
		case autoscalingv2.PodsMetricSourceType:
			path = fmt.Sprintf("/apis/custom.metrics.k8s.io/v1beta2/namespaces/%s/pods/*/requests-per-second?labelSelector=app%%3D%s", h.namespace, h.name)
			expr = fmt.Sprintf(`sum(rate(app_requests_total{namespace=%q,pod=~%q}[1m])) by (pod)`, h.namespace, podRegex)
		case autoscalingv2.ObjectMetricSourceType:
			path = fmt.Sprintf("/apis/custom.metrics.k8s.io/v1beta2/namespaces/%s/deployments.apps/%s/requests-per-second", h.namespace, h.name)
			expr = fmt.Sprintf(`sum(rate(app_requests_total{namespace=%q,pod=~%q}[1m])) by (namespace)`, h.namespace, podRegex)
		case autoscalingv2.ExternalMetricSourceType:
			path = fmt.Sprintf("/apis/external.metrics.k8s.io/v1beta1/namespaces/%s/app_requests_per_second?labelSelector=app%%3D%s", h.namespace, h.name)
			expr = fmt.Sprintf(`sum(rate(app_requests_total{namespace=%q,app=%q}[1m]))`, h.namespace, h.name)
		}
		values, err := servedValues(ctx, s, path)
		if err != nil {
			return 0, 0, err
		}
		if len(values) == 0 {
			return 0, 0, fmt.Errorf("%s: no value", path)
		}
		for _, v := range values {
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, at := range []time.Time{v.at, v.at.Add(time.Second)} {
				byName, err := promAt(ctx, s.Prometheus.URL, expr, at)
				if err != nil {
					return 0, 0, err
				}
				want, ok := byName[v.name]
				if !ok && len(byName) == 1 {
					for _, w := range byName {
						want, ok = w, true
					}
				}
				if !ok {
					return 0, 0, fmt.Errorf("%s: Prometheus has no value for %s at %s: %v", expr, v.name, at, byName)
				}
				lo, hi = min(lo, want), max(hi, want)
			}
			checked++
			if v.value < lo-0.001 || v.value > hi+0.001 {
				differed++
				fmt.Printf("   %s: %s served %g at %s, Prometheus gives %g..%g for %s\n", path, v.name, v.value, v.at.Format(time.RFC3339), lo, hi, expr)
			}
		}
	}
	return checked, differed, nil
}

// servedValues GETs path from the API server as the admin and returns the
// values of the custom or external metrics answer.
func servedValues(ctx context.Context, s *localstack.Stack, path string) ([]served, error) {
	code, body, err := s.Get(ctx, "admin", s.ServerURL+path, nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %s", path, code, body)
	}
	var list struct {
		Items []struct {
			DescribedObject struct{ Name string } `json:"describedObject"`
			MetricName      string                `json:"metricName"`
			Value           resource.Quantity     `json:"value"`
			Timestamp       time.Time             `json:"timestamp"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	var out []served
	for _, it := range list.Items {
		name := it.DescribedObject.Name
		if name == "" {
			name = it.MetricName
		}
		out = append(out, served{name: name, value: it.Value.AsApproximateFloat64(), at: it.Timestamp})
	}
	return out, nil
}

// promAt evaluates expr on Prometheus at time at, and returns its values
// by the pod label (or "" for a series without one).
func promAt(ctx context.Context, base, expr string, at time.Time) (map[string]float64, error) {
	u := base + "/api/v1/query?" + url.Values{"query": {expr}, "time": {strconv.FormatInt(at.Unix(), 10)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	var answer struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return nil, fmt.Errorf("%s at %s: %w", expr, at, err)
	}
	if answer.Status != "success" {
		return nil, fmt.Errorf("%s at %s: status %q", expr, at, answer.Status)
	}
	out := map[string]float64{}
	for _, r := range answer.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, err
		}
		out[r.Metric["pod"]] = v
	}
	return out, nil
}

// profile saves the adapter's CPU profile over the window (less a second)
// as file in the profiles folder, when that folder is set; the channel
// reports the outcome once the profile is written.
func profile(ctx context.Context, s *localstack.Stack, o options, file string) <-chan error {
	done := make(chan error, 1)
	if o.profiles == "" {
		done <- nil
		return done
	}
	seconds := max(1, int((o.window-time.Second)/time.Second))
	go func() {
		done <- s.SaveAdapterDebug(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), filepath.Join(o.profiles, file), time.Duration(seconds)*time.Second+30*time.Second)
	}()
	return done
}

// floorResult is what the adapter spent answering empty answers at a
// fleet's request rate.
type floorResult struct {
	rate       float64 // requests a second asked for
	served     int     // requests answered, empty, in the window
	failed     int     // requests that failed or were not empty
	adapterCPU float64 // share of one core
	window     time.Duration
	// idleCPU is the adapter's share of one core over a window with no
	// request at all, before the floor's: its informers, series
	// listings and timers with the fleet's objects in place.
	idleCPU    float64
	idleWindow time.Duration
}

func (f floorResult) line() string {
	return fmt.Sprintf("floor: %.1f empty answers/s asked, %.1f/s served (%d failed): adapter %.1f %% of a core; idle (no request for %s): %.1f %%, so %.2f ms of the adapter's CPU per empty answer beyond idle",
		f.rate, float64(f.served)/f.window.Seconds(), f.failed, 100*f.adapterCPU, f.idleWindow.Round(time.Second), 100*f.idleCPU, f.perRequest())
}

// perRequest is the floor's CPU per request beyond idle, in milliseconds.
func (f floorResult) perRequest() float64 {
	served := float64(f.served) / f.window.Seconds()
	if served == 0 {
		return 0
	}
	return 1000 * (f.adapterCPU - f.idleCPU) / served
}

// floorSelector selects none of the fleet's pods: the adapter answers
// empty without a Prometheus query.
const floorSelector = "app=none"

// floor sends, through the API server, as many requests a second as n HPAs
// send (one per sync period each) for a Pods metric of no pod, from five
// clients (the HPA controller's workers), for the window, and measures
// the adapter's CPU: the serving stack at the fleet's rate, with the same
// objects cached and series listed.
func floor(ctx context.Context, s *localstack.Stack, f fleet, o options, n int, mode string) (floorResult, error) {
	rt, err := rest.TransportFor(s.Admin)
	if err != nil {
		return floorResult{}, err
	}
	hc := &http.Client{Transport: rt, Timeout: 30 * time.Second}
	decoder := cmscheme.Codecs.UniversalDeserializer()
	ask := func(ctx context.Context, ns string) error {
		u := s.Admin.Host + "/apis/custom.metrics.k8s.io/v1beta2/namespaces/" + ns + "/pods/*/requests-per-second?labelSelector=" + url.QueryEscape(floorSelector)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		// As the HPA controller asks.
		req.Header.Set("Accept", "application/vnd.kubernetes.protobuf, */*")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		obj, _, err := decoder.Decode(body, nil, nil)
		if err != nil {
			return err
		}
		list, ok := obj.(*cmv1beta2.MetricValueList)
		if !ok {
			return fmt.Errorf("want a MetricValueList, got %T", obj)
		}
		if len(list.Items) != 0 {
			return fmt.Errorf("want no value for selector %s, got %d", floorSelector, len(list.Items))
		}
		return nil
	}
	// Until the adapter serves the metric in every namespace.
	var last error
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, ns := range f.namespaces {
			if last = ask(ctx, ns); last != nil {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		if last == nil {
			last = err
		}
		return floorResult{}, fmt.Errorf("the adapter did not serve every namespace within 3 minutes: %w", last)
	}
	res := floorResult{rate: float64(n) / syncPeriod.Seconds()}
	// Idle first: the same stack and objects, no request at all.
	pid := s.Adapter.PID()
	cpu0, t0 := localstack.CPUSeconds(pid), time.Now()
	profiled := profile(ctx, s, o, fmt.Sprintf("%d-shared-%s-idle.cpu.pprof", n, mode))
	select {
	case <-time.After(o.window):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.idleWindow = time.Since(t0)
	res.idleCPU = (localstack.CPUSeconds(pid) - cpu0) / res.idleWindow.Seconds()
	if err := <-profiled; err != nil {
		return res, fmt.Errorf("the adapter's CPU profile: %w", err)
	}
	work := make(chan string, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			for ns := range work {
				err := ask(ctx, ns)
				mu.Lock()
				if err != nil {
					res.failed++
				} else {
					res.served++
				}
				mu.Unlock()
			}
		})
	}
	cpu0, t0 = localstack.CPUSeconds(pid), time.Now()
	profiled = profile(ctx, s, o, fmt.Sprintf("%d-shared-%s-floor.cpu.pprof", n, mode))
	tick := time.NewTicker(time.Duration(float64(time.Second) / res.rate))
	end := time.After(o.window)
	for i, done := 0, false; !done; i++ {
		select {
		case <-tick.C:
			select {
			case work <- f.namespaces[i%len(f.namespaces)]:
			default: // the clients are behind: a request not sent is not served
			}
		case <-end:
			done = true
		case <-ctx.Done():
			done = true
		}
	}
	tick.Stop()
	close(work)
	wg.Wait()
	res.window = time.Since(t0)
	res.adapterCPU = (localstack.CPUSeconds(pid) - cpu0) / res.window.Seconds()
	if err := <-profiled; err != nil {
		return res, fmt.Errorf("the adapter's CPU profile: %w", err)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if res.failed > 0 {
		return res, fmt.Errorf("%d of %d floor requests failed", res.failed, res.failed+res.served)
	}
	return res, nil
}
