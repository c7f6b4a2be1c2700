// Command demo is `make demo`, and what hack/kind-demo.sh runs on kind:
// one driver for the local stack and for any cluster.
//
// Without -kubeconfig it starts the local stack (a real control plane, the
// process kubelet, Prometheus and the adapter serving the custom, external
// and resource metrics APIs and MetricRules on 127.0.0.1, and a local
// ingress in front of the apps). With -kubeconfig it drives the cluster it
// names, where the adapter, Prometheus, an ingress controller and the
// MetricRule CRD are installed already (hack/kind-demo.sh does that on
// kind).
//
// Either way it deploys the load app eight times, each in a namespace of its
// own with one HPA from manifests/hpa: the seed's CPU, memory, Pods,
// Object and External HPAs, the two that scale from zero (Object and
// External with minReplicas: 0) and the team-owned rule (a MetricRule and
// an HPA on its metric). Load comes from a pod per app, the app image's
// /loadgen, through the app's Ingress main-route: an idle time, a ramp, a
// hold, then nothing. The driver prints what each HPA sees and does every
// 10 s until every app is back to its minimum.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// phase is one step of the load pattern.
type phase struct {
	name     string
	duration time.Duration
	// share returns the fraction of each HPA's full load at t into the
	// phase.
	share func(t time.Duration) float64
}

// teamRule is the team-owned rule: a MetricRule in the app's namespace and
// an HPA on the metric it serves there (manifests/hpa/team-rule).
var teamRule = localstack.SeedHPA{
	Namespace: "hpa-team-rule", Dir: "manifests/hpa/team-rule", Metric: "Pods team-requests-per-second (a MetricRule)",
	Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
		// 1k per pod in the example; 10 per pod here.
		h.Spec.Metrics[0].Pods.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
		h.Spec.MaxReplicas = 4
	},
	Path: localstack.LoadPath, Rate: 30, ScaleTo: 3,
}

// options are the driver's flags.
type options struct {
	quick bool
	// kubeconfig names the cluster to drive; empty: the local stack.
	kubeconfig string
	// ingressURL is where the load pods send their requests, each with
	// its app's Ingress host; empty: each Ingress' own address in its
	// status (the local stack's ingress gives each one a port).
	ingressURL string
	// image is the load pods' image: the app image, which has /loadgen.
	image  string
	prefix string
}

func main() {
	if err := run(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "Shorter load pattern, and exit when every app is back to its minimum (one replica, or zero) instead of waiting for Ctrl-C.")
	only := flag.String("only", "", "Run only these HPAs, comma-separated namespaces ("+strings.Join(namespaces(""), ",")+"); default all.")
	dirFlag := flag.String("dir", "", "Run folder of the local stack: logs, certificates and kubeconfigs (default run/demo in the repository).")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "Drive the cluster of this kubeconfig instead of starting the local stack: the adapter (all three APIs and --metric-rules), "+
		"Prometheus, an ingress controller and the MetricRule CRD must be installed (hack/kind-demo.sh installs them on kind). Exits when every app is back to its minimum.")
	flag.StringVar(&o.ingressURL, "ingress-url", "", "With -kubeconfig: the ingress controller's URL inside the cluster, which the load pods send their requests to, "+
		"each with its app's Ingress host (e.g. http://ingress-nginx-controller.ingress-nginx.svc). Default: each Ingress' address in its status.")
	flag.StringVar(&o.image, "image", "custom-metrics-adapter/app:dev", "Image of the load pods: the app image, which has /loadgen.")
	flag.StringVar(&o.prefix, "namespace-prefix", "", "Prefix of the demo's namespaces (hpa-pods, ...), to run beside other workloads.")
	flag.Parse()

	hpas, err := selectHPAs(*only, o.prefix)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var s *localstack.Stack
	if o.kubeconfig != "" {
		if s, err = localstack.Attach(o.kubeconfig); err != nil {
			return err
		}
		fmt.Println("== driving the cluster of " + o.kubeconfig)
	} else {
		dir, err := localstack.FreshRunDir(*dirFlag, "demo")
		if err != nil {
			return err
		}
		fmt.Println("== starting the local stack (logs in " + dir + ")")
		s, err = localstack.StartStack(ctx, localstack.StackOptions{
			ClusterOptions: localstack.ClusterOptions{
				Dir: dir, HPASyncPeriod: 5 * time.Second, DownscaleStabilization: 15 * time.Second, Progress: os.Stdout,
			},
			MetricRules: true,
		})
		if err != nil {
			return err
		}
		defer func() {
			fmt.Println("== stopping everything")
			if err := s.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}()
	}
	// Watches and polls below stop before the stack does: an API server
	// with open watches takes long to shut down.
	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	if err := drive(ctx, s, hpas, o); err != nil {
		return err
	}
	if o.quick || o.kubeconfig != "" {
		return nil
	}
	explore(s)
	<-ctx.Done()
	fmt.Println()
	return nil
}

// drive deploys the apps and HPAs, plays the load through load pods and
// prints the table until every app is back to its minimum.
func drive(ctx context.Context, s *localstack.Stack, hpas []localstack.SeedHPA, o options) error {
	fmt.Println("== deploying manifests/app and one HPA from manifests/hpa in a namespace each")
	var deployErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hpas {
		wg.Go(func() {
			err := deploy(ctx, s, h)
			mu.Lock()
			defer mu.Unlock()
			deployErr = errors.Join(deployErr, err)
		})
	}
	wg.Wait()
	if deployErr != nil {
		return deployErr
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  namespace\tHPA\ttarget\tload at full\t")
	for _, h := range hpas {
		hpa, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers(h.Namespace).Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, target := localstack.CurrentMetric(hpa)
		fmt.Fprintf(tw, "  %s\t%s (%s)\t%s\t%.0f req/s GET %s\t\n", h.Namespace, h.Metric, h.Dir, target, h.Rate, h.Path)
	}
	_ = tw.Flush()

	hold := 2*time.Minute + 30*time.Second
	ramp := 30 * time.Second
	idle := 15 * time.Second
	if o.quick {
		hold, ramp, idle = 100*time.Second, 15*time.Second, 5*time.Second
	}
	phases := []phase{
		{"idle", idle, func(time.Duration) float64 { return 0 }},
		{"ramp", ramp, func(t time.Duration) float64 { return t.Seconds() / ramp.Seconds() }},
		{"hold", hold, func(time.Duration) float64 { return 1 }},
		{"stop", 0, func(time.Duration) float64 { return 0 }},
	}
	total := idle + ramp + hold
	at := func(t time.Duration) (string, float64) {
		for _, ph := range phases {
			if t < ph.duration || ph.duration == 0 {
				return ph.name, ph.share(t)
			}
			t -= ph.duration
		}
		return "stop", 0
	}

	fmt.Printf("\n== load on every app at once, from a load pod each (%s /loadgen) through its Ingress main-route: idle %s, ramp to full over %s, hold %s, stop\n",
		o.image, idle, ramp, hold)
	for _, h := range hpas {
		if err := startLoadPod(ctx, s, h, o, idle, ramp, total); err != nil {
			return err
		}
	}
	start := time.Now()
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		elapsed := time.Since(start)
		name, share := at(elapsed)
		fmt.Printf("\n[%s] %s, load at %.0f%%\n", elapsed.Round(time.Second), name, share*100)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "namespace\tmetric\tcurrent\ttarget\treplicas\tScaledToZero\toffered\tload pod\t")
		allAtMin, loadEnded := true, true
		for _, h := range hpas {
			r := snapshot(ctx, s, h)
			if low := minimum(h); r.ready != low || r.desired != low {
				allAtMin = false
			}
			if r.load != string(corev1.PodSucceeded) && r.load != string(corev1.PodFailed) {
				loadEnded = false
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f req/s\t%s\t\n", h.Namespace, h.Metric, r.current, r.target, r.replicas, r.scaledToZero, share*h.Rate, r.load)
		}
		_ = tw.Flush()
		if name == "stop" && loadEnded && allAtMin {
			fmt.Printf("\n== every app back to its minimum (1 replica; 0 for those from zero) %s after the load stopped\n",
				time.Since(start.Add(total)).Round(time.Second))
			return failedLoad(ctx, s, hpas)
		}
		if elapsed > total+10*time.Minute {
			return fmt.Errorf("not every app was back to its minimum 10 minutes after the load stopped")
		}
	}
}

// failedLoad reports the load pods that did not succeed.
func failedLoad(ctx context.Context, s *localstack.Stack, hpas []localstack.SeedHPA) error {
	var errs []error
	for _, h := range hpas {
		p, err := s.Client.CoreV1().Pods(h.Namespace).Get(ctx, loadPod, metav1.GetOptions{})
		if err != nil {
			errs = append(errs, err)
		} else if p.Status.Phase != corev1.PodSucceeded {
			errs = append(errs, fmt.Errorf("the load pod of %s ended %s", h.Namespace, p.Status.Phase))
		}
	}
	return errors.Join(errs...)
}

// loadPod names each app's load pod.
const loadPod = "load"

// startLoadPod starts h's load pod (replacing one of an earlier run): the
// app image's /loadgen, sending h's load through the app's Ingress.
func startLoadPod(ctx context.Context, s *localstack.Stack, h localstack.SeedHPA, o options, idle, ramp, total time.Duration) error {
	pods := s.Client.CoreV1().Pods(h.Namespace)
	if err := pods.Delete(ctx, loadPod, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, loadPod, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return fmt.Errorf("the load pod of an earlier run in %s is still there: %w", h.Namespace, err)
	}
	target := o.ingressURL
	if target == "" {
		u, err := localstack.IngressURL(ctx, s.Client, h.Namespace, "main-route", time.Minute)
		if err != nil {
			return err
		}
		target = u
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: h.Namespace, Name: loadPod, Labels: map[string]string{"app.kubernetes.io/name": "loadgen"}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "loadgen", Image: o.image, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/loadgen"},
				Args: []string{"--target=" + target, "--host=" + ingressHost(h.Namespace), "--path=" + h.Path,
					fmt.Sprintf("--rate=%g", h.Rate), "--delay=" + idle.String(), "--ramp=" + ramp.String(), "--duration=" + total.String(), "--report=30s"},
			}},
		},
	}
	_, err := pods.Create(ctx, p, metav1.CreateOptions{})
	return err
}

// ingressHost is the host of the Ingress main-route in namespace: an
// ingress controller that serves every namespace's main-route picks it by
// this host.
func ingressHost(namespace string) string { return namespace + ".demo.local" }

// allHPAs are the seed's five HPAs, the two from zero and the team rule.
func allHPAs() []localstack.SeedHPA {
	return append(append(append([]localstack.SeedHPA{}, localstack.SeedHPAs...), localstack.ScaleToZeroHPAs...), teamRule)
}

func namespaces(prefix string) []string {
	var out []string
	for _, h := range allHPAs() {
		out = append(out, prefix+h.Namespace)
	}
	return out
}

// minimum is the replica count an idle app goes to.
func minimum(h localstack.SeedHPA) int32 {
	if h.FromZero {
		return 0
	}
	return 1
}

func selectHPAs(only, prefix string) ([]localstack.SeedHPA, error) {
	var out []localstack.SeedHPA
	for _, h := range allHPAs() {
		h.Namespace = prefix + h.Namespace
		out = append(out, h)
	}
	if only == "" {
		return out, nil
	}
	var picked []localstack.SeedHPA
	for _, name := range strings.Split(only, ",") {
		found := false
		for _, h := range out {
			if h.Namespace == prefix+strings.TrimSpace(name) || h.Namespace == strings.TrimSpace(name) {
				picked, found = append(picked, h), true
			}
		}
		if !found {
			return nil, fmt.Errorf("-only: no HPA %q (have %s)", name, strings.Join(namespaces(prefix), ", "))
		}
	}
	return picked, nil
}

// deploy applies the app (its Ingress with the namespace's host), the
// HPA example's other objects (the team rule's MetricRule) and the HPA in
// the HPA's namespace, and waits until the HPA reads its metric.
func deploy(ctx context.Context, s *localstack.Stack, h localstack.SeedHPA) error {
	if err := s.DeployAppWith(ctx, h.Namespace, func(o *unstructured.Unstructured) error {
		if o.GetKind() != "Ingress" {
			return nil
		}
		rules, _, err := unstructured.NestedSlice(o.Object, "spec", "rules")
		if err != nil {
			return fmt.Errorf("manifests/app's Ingress: %w", err)
		}
		if len(rules) == 0 {
			return errors.New("manifests/app's Ingress has no rules")
		}
		for _, r := range rules {
			r.(map[string]any)["host"] = ingressHost(h.Namespace)
		}
		return unstructured.SetNestedSlice(o.Object, rules, "spec", "rules")
	}); err != nil {
		return err
	}
	objs, err := s.Render(ctx, h.Dir)
	if err != nil {
		return err
	}
	var others []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() != "HorizontalPodAutoscaler" {
			o.SetNamespace(h.Namespace)
			others = append(others, o)
		}
	}
	if len(others) > 0 {
		if err := s.Apply(ctx, others); err != nil {
			return err
		}
	}
	hpa, err := s.HPA(ctx, h, 20*time.Second)
	if err != nil {
		return err
	}
	hpas := s.Client.AutoscalingV2().HorizontalPodAutoscalers(h.Namespace)
	if err := hpas.Delete(ctx, hpa.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if _, err := hpas.Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		return err
	}
	// The CPU HPA counts a new pod's usage one window (1m) after it is
	// ready; the others read their metric within seconds.
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := hpas.Get(ctx, hpa.Name, metav1.GetOptions{})
		return err == nil && len(got.Status.CurrentMetrics) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("the HPA in %s never read its metric: %w", h.Namespace, err)
	}
	if !h.FromZero {
		return nil
	}
	// Idle, an HPA from zero takes its app there before the load starts.
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		r := snapshot(ctx, s, h)
		return r.desired == 0 && r.ready == 0 && r.scaledToZero == "True", nil
	})
	if err != nil {
		return fmt.Errorf("idle, the HPA in %s did not take its app to zero replicas: %w", h.Namespace, err)
	}
	return nil
}

func explore(s *localstack.Stack) {
	fmt.Printf(`
The stack stays up until Ctrl-C. Explore it:

  export KUBECONFIG=%s
  kubectl get hpa -A
  kubectl top pods -A; kubectl top nodes
  kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta2/namespaces/hpa-pods/pods/*/packets-per-second?labelSelector=app%%3Dapp"
  kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2/namespaces/hpa-object/ingresses.networking.k8s.io/main-route/requests-per-second
  kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/hpa-zero-external/ingress_requests_per_second?labelSelector=ingress%%3Dmain-route"
  kubectl get hpa -n hpa-zero-object -o jsonpath='{.items[0].status.conditions}'   # ScaledToZero
  kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/hpa-external/app_requests_per_second?labelSelector=container%%3Dapp"
  kubectl get --raw /apis/metrics.k8s.io/v1beta1/namespaces/hpa-cpu/pods
  kubectl get metricrules -n hpa-team-rule -o yaml   # the team's rule, and its status
  %s/bin/loadgen --target=http://127.0.0.1:<port> --rate=30 --duration=2m   # each Ingress' address: kubectl get ingress -A

Why a value is what it is (the rule, the pods, the PromQL, Prometheus' answer):
  %s/bin/adapter explain %s pods/packets-per-second -n hpa-pods -l app=app
  The rules file is reloaded when it changes: edit %s

Prometheus: %s   Logs: %s
`, s.AdminKubeconfig, s.Root, s.Root, strings.Join(s.AdapterConnectionArgs(), " "), s.AdapterRules(), s.Prometheus.URL, s.Dir)
}

type row struct {
	current, target, replicas string
	// scaledToZero is the HPA's ScaledToZero condition, as the controller
	// reports it.
	scaledToZero   string
	ready, desired int32
	// load is the phase of the app's load pod.
	load string
}

func snapshot(ctx context.Context, s *localstack.Stack, h localstack.SeedHPA) row {
	r := row{current: "-", target: "-", replicas: "-", scaledToZero: "-", load: "-"}
	if p, err := s.Client.CoreV1().Pods(h.Namespace).Get(ctx, loadPod, metav1.GetOptions{}); err == nil {
		r.load = string(p.Status.Phase)
	}
	if hpa, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers(h.Namespace).Get(ctx, "app", metav1.GetOptions{}); err == nil {
		r.current, r.target = localstack.CurrentMetric(hpa)
		for _, c := range hpa.Status.Conditions {
			if c.Type == autoscalingv2.ScaledToZero {
				r.scaledToZero = string(c.Status)
			}
		}
	}
	if d, err := s.Client.AppsV1().Deployments(h.Namespace).Get(ctx, "app", metav1.GetOptions{}); err == nil {
		r.ready, r.desired = d.Status.ReadyReplicas, *d.Spec.Replicas
		r.replicas = fmt.Sprintf("%d/%d", d.Status.ReadyReplicas, *d.Spec.Replicas)
	}
	return r
}
