// Command localdemo is `make demo`: it starts the local stack (a real
// control plane, the process kubelet, Prometheus and the adapter on
// 127.0.0.1), deploys the load app and a Pods-metric HPA from manifests/,
// plays a load pattern and prints what the adapter serves and what the HPA
// does, then leaves the stack up until Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	cmclient "k8s.io/metrics/pkg/client/custom_metrics"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/loadgen"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// phase is one step of the load pattern.
type phase struct {
	name     string
	duration time.Duration
	// rate returns the offered req/s at t into the phase.
	rate func(t time.Duration) float64
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
	quick := flag.Bool("quick", false, "Shorter load pattern, and exit when the app is back to one replica instead of waiting for Ctrl-C.")
	peak := flag.Float64("peak", 40, "Peak offered load, requests per second.")
	target := flag.Int64("target", 10, "The HPA's target per pod, requests per second (manifests/hpa/pods says 1k; this machine drives tens).")
	dirFlag := flag.String("dir", "", "Run folder for logs, certificates and kubeconfigs (default run/demo in the repository).")
	flag.Parse()

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

	fmt.Println("== deploying manifests/app (Deployment app, Service app, Ingress main-route)")
	if _, err := s.Kubectl(ctx, nil, "apply", "-k", "manifests/app"); err != nil {
		return err
	}
	hpa, err := demoHPA(ctx, s, *target)
	if err != nil {
		return err
	}
	if _, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers("default").Create(ctx, hpa, metav1.CreateOptions{}); err != nil {
		return err
	}
	fmt.Printf("== HPA app from manifests/hpa/pods: packets-per-second, target %d per pod (the example says 1k), 1..%d replicas\n",
		*target, hpa.Spec.MaxReplicas)

	mc := s.MetricsClient()
	fmt.Println("== waiting for the app's first pod and its metrics")
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := mc.NamespacedMetrics("default").GetForObject(schema.GroupKind{Group: "networking.k8s.io", Kind: "Ingress"}, "main-route", "requests-per-second", labels.Everything())
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("the adapter never served requests-per-second for Ingress main-route: %w", err)
	}

	hold := 2 * time.Minute
	ramp := 40 * time.Second
	idle := 15 * time.Second
	if *quick {
		hold, ramp, idle = 75*time.Second, 20*time.Second, 5*time.Second
	}
	p := *peak
	phases := []phase{
		{"idle", idle, func(time.Duration) float64 { return 0 }},
		{"ramp", ramp, func(t time.Duration) float64 { return p * t.Seconds() / ramp.Seconds() }},
		{"hold", hold, func(time.Duration) float64 { return p }},
		{"stop", 0, func(time.Duration) float64 { return 0 }},
	}
	var total time.Duration
	for _, ph := range phases {
		total += ph.duration
	}
	rate := func(t time.Duration) (string, float64) {
		for _, ph := range phases {
			if t < ph.duration || ph.duration == 0 {
				return ph.name, ph.rate(t)
			}
			t -= ph.duration
		}
		return "stop", 0
	}
	targets, err := localstack.ServiceTargets(ctx, s.Client, "default", "app")
	if err != nil {
		return err
	}
	fmt.Printf("== load: idle %s, ramp to %.0f req/s over %s, hold %s, stop; the load generator plays the Service app\n\n", idle, p, ramp, hold)
	var stats loadgen.Stats
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	start := time.Now()
	go func() {
		_ = loadgen.Run(loadCtx, loadgen.Config{
			Targets: targets, Path: "/?cpu=1ms", Duration: total,
			Rate: func(t time.Duration) float64 { _, r := rate(t); return r },
		}, &stats)
	}()

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "time\tphase\toffered\tper-pod rps (adapter)\ttotal\tingress main-route\treplicas\tHPA current/target\t")
	tw.Flush()
	backToOne := time.Time{}
	ticker := time.NewTicker(5 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Println()
			return nil
		case <-ticker.C:
		}
		elapsed := time.Since(start)
		name, offered := rate(elapsed)
		row := snapshot(ctx, s, mc)
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", elapsed.Round(time.Second), name, offered, row.perPod, row.total, row.ingress, row.replicas, row.hpa)
		tw.Flush()
		if name == "stop" && row.ready == 1 && row.desired == 1 {
			if backToOne.IsZero() {
				backToOne = time.Now()
				fmt.Printf("\n== back to 1 replica %s after the load stopped (%s)\n", time.Since(start.Add(total)).Round(time.Second), stats.String())
				if *quick {
					return nil
				}
				explore(s)
			}
		}
	}
}

func explore(s *localstack.Stack) {
	fmt.Printf(`
The stack stays up until Ctrl-C. Explore it:

  export KUBECONFIG=%s
  kubectl get hpa,deploy,pods -o wide
  kubectl get hpa app -w
  kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests-per-second?labelSelector=app%%3Dapp"
  kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/ingresses.networking.k8s.io/main-route/requests-per-second
  kubectl apply -k manifests/hpa/object     # switch the HPA to the Object metric (target 2k: scale it down first)
  %s/bin/loadgen --target=http://<pod IP>:8080 --rate=30 --duration=2m   # pod IPs: kubectl get pods -o wide

Prometheus: %s   Logs: %s
`, s.AdminKubeconfig, s.Root, s.Prometheus.URL, s.Dir)
}

func demoHPA(ctx context.Context, s *localstack.Stack, target int64) (*autoscalingv2.HorizontalPodAutoscaler, error) {
	hpa, err := s.RenderHPA(ctx, "manifests/hpa/pods")
	if err != nil {
		return nil, err
	}
	if len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Pods == nil {
		return nil, errors.New("manifests/hpa/pods is not a Pods-metric HPA")
	}
	hpa.Spec.Metrics[0].Pods.Target.AverageValue = resource.NewQuantity(target, resource.DecimalSI)
	hpa.Spec.MaxReplicas = 5
	return hpa, nil
}

type row struct {
	perPod, total, ingress, replicas, hpa string
	ready, desired                        int32
}

func snapshot(ctx context.Context, s *localstack.Stack, mc cmclient.CustomMetricsClient) row {
	r := row{perPod: "-", total: "-", ingress: "-", replicas: "-", hpa: "-"}
	if list, err := mc.NamespacedMetrics("default").GetForObjects(schema.GroupKind{Kind: "Pod"},
		labels.SelectorFromSet(labels.Set{"app": "app"}), "requests-per-second", labels.Everything()); err == nil {
		items := list.Items
		sort.Slice(items, func(i, j int) bool { return items[i].DescribedObject.Name < items[j].DescribedObject.Name })
		var parts []string
		sum := 0.0
		for _, v := range items {
			f := v.Value.AsApproximateFloat64()
			sum += f
			parts = append(parts, fmt.Sprintf("%.1f", f))
		}
		r.perPod = strings.Join(parts, " ")
		r.total = fmt.Sprintf("%.1f", sum)
	}
	if v, err := mc.NamespacedMetrics("default").GetForObject(schema.GroupKind{Group: "networking.k8s.io", Kind: "Ingress"},
		"main-route", "requests-per-second", labels.Everything()); err == nil {
		r.ingress = fmt.Sprintf("%.1f", v.Value.AsApproximateFloat64())
	}
	if d, err := s.Client.AppsV1().Deployments("default").Get(ctx, "app", metav1.GetOptions{}); err == nil {
		r.ready, r.desired = d.Status.ReadyReplicas, *d.Spec.Replicas
		r.replicas = fmt.Sprintf("%d/%d", d.Status.ReadyReplicas, *d.Spec.Replicas)
	}
	if h, err := s.Client.AutoscalingV2().HorizontalPodAutoscalers("default").Get(ctx, "app", metav1.GetOptions{}); err == nil {
		cur := "?"
		if len(h.Status.CurrentMetrics) > 0 && h.Status.CurrentMetrics[0].Pods != nil {
			cur = h.Status.CurrentMetrics[0].Pods.Current.AverageValue.String()
		}
		r.hpa = fmt.Sprintf("%s/%s", cur, h.Spec.Metrics[0].Pods.Target.AverageValue.String())
	}
	return r
}
