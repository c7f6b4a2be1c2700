// Command localdemo is `make demo`: it starts the local stack (a real
// control plane, the process kubelet, Prometheus and the adapter serving
// the custom, external and resource metrics APIs on 127.0.0.1, and a local
// ingress in front of the apps), deploys the load app seven times, each
// with one of the seed's HPAs from manifests/hpa (CPU, memory, Pods,
// Object, External) or one of the two that scale from zero (Object and
// External with minReplicas: 0), plays a load pattern through the ingress
// on all of them at once and prints what each HPA sees and does, then
// leaves the stack up until Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
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
	quick := flag.Bool("quick", false, "Shorter load pattern, and exit when every app is back to its minimum (one replica, or zero) instead of waiting for Ctrl-C.")
	only := flag.String("only", "", "Run only these HPAs, comma-separated namespaces ("+strings.Join(namespaces(), ",")+"); default all.")
	dirFlag := flag.String("dir", "", "Run folder for logs, certificates and kubeconfigs (default run/demo in the repository).")
	flag.Parse()

	hpas, err := selectHPAs(*only)
	if err != nil {
		return err
	}
	root, err := localstack.RepoRoot()
	if err != nil {
		return err
	}
	dir := *dirFlag
	if dir == "" {
		dir = filepath.Join(root, "run", "demo")
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("== starting the local stack (logs in " + dir + ")")
	s, err := localstack.StartStack(ctx, localstack.StackOptions{ClusterOptions: localstack.ClusterOptions{
		Dir: dir, HPASyncPeriod: 5 * time.Second, DownscaleStabilization: 15 * time.Second, Progress: os.Stdout,
	}})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("== stopping everything")
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()

	// Informers and load below stop before the stack does: an API server
	// with open watches takes long to shut down.
	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()

	fmt.Println("== deploying manifests/app and one HPA from manifests/hpa in a namespace each")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  namespace\tHPA\ttarget\tload at full\t")
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
	for _, h := range hpas {
		hpa, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers(h.Namespace).Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, target := localstack.CurrentMetric(hpa)
		fmt.Fprintf(tw, "  %s\t%s (%s)\t%s\t%.0f req/s GET %s\t\n", h.Namespace, h.Metric, h.Dir, target, h.Rate, h.Path)
	}
	tw.Flush()

	hold := 2*time.Minute + 30*time.Second
	ramp := 30 * time.Second
	idle := 15 * time.Second
	if *quick {
		hold, ramp, idle = 100*time.Second, 15*time.Second, 5*time.Second
	}
	phases := []phase{
		{"idle", idle, func(time.Duration) float64 { return 0 }},
		{"ramp", ramp, func(t time.Duration) float64 { return t.Seconds() / ramp.Seconds() }},
		{"hold", hold, func(time.Duration) float64 { return 1 }},
		{"stop", 0, func(time.Duration) float64 { return 0 }},
	}
	var total time.Duration
	for _, ph := range phases {
		total += ph.duration
	}
	at := func(t time.Duration) (string, float64) {
		for _, ph := range phases {
			if t < ph.duration || ph.duration == 0 {
				return ph.name, ph.share(t)
			}
			t -= ph.duration
		}
		return "stop", 0
	}

	fmt.Printf("\n== load on every app at once, through its Ingress main-route: idle %s, ramp to full over %s, hold %s, stop\n", idle, ramp, hold)
	stats := make([]loadgen.Stats, len(hpas))
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	for i, h := range hpas {
		ingress, err := localstack.IngressURL(loadCtx, s.Client, h.Namespace, "main-route", time.Minute)
		if err != nil {
			return err
		}
		targets := func() []string { return []string{ingress} }
		go func() {
			_ = loadgen.Run(loadCtx, loadgen.Config{
				Targets: targets, Path: h.Path, Duration: total,
				Rate: func(t time.Duration) float64 { _, share := at(t); return share * h.Rate },
			}, &stats[i])
		}()
	}
	start := time.Now()

	backToOne := time.Time{}
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Println()
			return nil
		case <-ticker.C:
		}
		elapsed := time.Since(start)
		name, share := at(elapsed)
		fmt.Printf("\n[%s] %s, load at %.0f%%\n", elapsed.Round(time.Second), name, share*100)
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "namespace\tmetric\tcurrent\ttarget\treplicas\tScaledToZero\toffered\t")
		allAtMin := true
		for _, h := range hpas {
			r := snapshot(ctx, s, h)
			if low := minimum(h); r.ready != low || r.desired != low {
				allAtMin = false
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.0f req/s\t\n", h.Namespace, h.Metric, r.current, r.target, r.replicas, r.scaledToZero, share*h.Rate)
		}
		tw.Flush()
		if name == "stop" && allAtMin && backToOne.IsZero() {
			backToOne = time.Now()
			var sent []string
			for i, h := range hpas {
				sent = append(sent, fmt.Sprintf("%s: %s", h.Namespace, stats[i].String()))
			}
			fmt.Printf("\n== every app back to its minimum (1 replica; 0 for those from zero) %s after the load stopped\n   %s\n",
				time.Since(start.Add(total)).Round(time.Second), strings.Join(sent, "\n   "))
			if *quick {
				return nil
			}
			explore(s)
		}
	}
}

// allHPAs are the seed's five HPAs and the two from zero.
func allHPAs() []localstack.SeedHPA {
	return append(append([]localstack.SeedHPA{}, localstack.SeedHPAs...), localstack.ScaleToZeroHPAs...)
}

func namespaces() []string {
	var out []string
	for _, h := range allHPAs() {
		out = append(out, h.Namespace)
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

func selectHPAs(only string) ([]localstack.SeedHPA, error) {
	if only == "" {
		return allHPAs(), nil
	}
	var out []localstack.SeedHPA
	for _, name := range strings.Split(only, ",") {
		found := false
		for _, h := range allHPAs() {
			if h.Namespace == strings.TrimSpace(name) {
				out, found = append(out, h), true
			}
		}
		if !found {
			return nil, fmt.Errorf("--only: no HPA %q (have %s)", name, strings.Join(namespaces(), ", "))
		}
	}
	return out, nil
}

// deploy applies the app and the HPA in the HPA's namespace, and waits
// until the HPA reads its metric.
func deploy(ctx context.Context, s *localstack.Stack, h localstack.SeedHPA) error {
	if err := s.DeployApp(ctx, h.Namespace); err != nil {
		return err
	}
	hpa, err := s.HPA(ctx, h, 20*time.Second)
	if err != nil {
		return err
	}
	if _, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers(h.Namespace).Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		return err
	}
	// The CPU HPA counts a new pod's usage one window (1m) after it is
	// ready; the others read their metric within seconds.
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers(h.Namespace).Get(ctx, hpa.Name, metav1.GetOptions{})
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
}

func snapshot(ctx context.Context, s *localstack.Stack, h localstack.SeedHPA) row {
	r := row{current: "-", target: "-", replicas: "-", scaledToZero: "-"}
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
