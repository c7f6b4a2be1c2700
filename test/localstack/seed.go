package localstack

import (
	"context"
	"fmt"
	"math"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
)

// SeedHPA is one of the seed's five HPAs as the local stack runs it: the
// example under manifests/hpa, on its own copy of manifests/app in a
// namespace of its own, so that all of them run side by side.
type SeedHPA struct {
	// Namespace holds the app and the HPA.
	Namespace string
	// Dir is the HPA example.
	Dir string
	// Metric says in words what the HPA scales on.
	Metric string
	// Scale sets the example's target to what this machine drives; nil
	// keeps the seed's target.
	Scale func(*autoscalingv2.HorizontalPodAutoscaler)
	// Path and Rate are the load that drives it out: Rate requests per
	// second of GET Path on the app Service.
	Path string
	Rate float64
	// ScaleTo is the replica count that load reaches.
	ScaleTo int32
	// FromZero is set for the HPAs with minReplicas: 0: idle they scale the
	// app to zero, and back from zero under load.
	FromZero bool
}

// LoadPath keeps each request cheap where the load is about request
// counts: the machine has two cores.
const LoadPath = "/?cpu=1ms"

// SeedHPAs are the seed's CPU, memory, Pods, Object and External HPAs. The
// CPU and memory ones keep the seed's targets (50 % of the 100m request,
// 500Mi average); the Pods, Object and External targets are scaled from
// thousands of requests per second to tens, what two cores drive next to
// the whole control plane.
var SeedHPAs = []SeedHPA{
	{
		Namespace: "hpa-cpu", Dir: "manifests/hpa/cpu", Metric: "Resource cpu, averageUtilization",
		// 10 req/s burning 20ms each: 200m of CPU, 4x the 50m target.
		Path: "/?cpu=20ms", Rate: 10, ScaleTo: 3,
	},
	{
		Namespace: "hpa-memory", Dir: "manifests/hpa/memory", Metric: "Resource memory, averageValue",
		// 2 req/s holding 48 MiB for 8 s each: about 770 MiB held in all,
		// half as much again as the 500Mi target on one pod.
		Path: "/mem?mib=48&hold=8s", Rate: 2, ScaleTo: 2,
	},
	{
		Namespace: "hpa-pods", Dir: "manifests/hpa/pods", Metric: "Pods packets-per-second",
		Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
			// 1k per pod in the example; 10 per pod here.
			h.Spec.Metrics[0].Pods.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
			h.Spec.MaxReplicas = 4
		},
		Path: LoadPath, Rate: 30, ScaleTo: 3,
	},
	{
		Namespace: "hpa-object", Dir: "manifests/hpa/object", Metric: "Object Ingress main-route requests-per-second",
		Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
			// 2k in the example; 20 here. 40 req/s through main-route
			// against 20: the HPA doubles the replicas up to the maximum.
			h.Spec.Metrics[0].Object.Target.Value = resource.NewQuantity(20, resource.DecimalSI)
			h.Spec.MaxReplicas = 3
		},
		Path: LoadPath, Rate: 40, ScaleTo: 3,
	},
	{
		Namespace: "hpa-external", Dir: "manifests/hpa/external", Metric: "External app_requests_per_second",
		Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
			// 1k per replica in the example; 10 here.
			h.Spec.Metrics[0].External.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
			h.Spec.MaxReplicas = 4
		},
		Path: LoadPath, Rate: 30, ScaleTo: 3,
	},
}

// ScaleToZeroHPAs are the seed's Object HPA and an External HPA on the same
// traffic, with minReplicas: 0 (manifests/hpa/*-from-zero), each on its own
// app: the ingress controller's request rate through main-route, 0 while
// nothing comes, so the HPA takes the app to zero and back.
var ScaleToZeroHPAs = []SeedHPA{
	{
		Namespace: "hpa-zero-object", Dir: "manifests/hpa/object-from-zero", Metric: "Object Ingress main-route requests-per-second, from 0",
		Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
			// 2k in the example; 10 here: 20 req/s asks for 2 replicas.
			h.Spec.Metrics[0].Object.Target.Value = resource.NewQuantity(10, resource.DecimalSI)
			h.Spec.MaxReplicas = 3
		},
		Path: LoadPath, Rate: 20, ScaleTo: 2, FromZero: true,
	},
	{
		Namespace: "hpa-zero-external", Dir: "manifests/hpa/external-from-zero", Metric: "External ingress_requests_per_second, from 0",
		Scale: func(h *autoscalingv2.HorizontalPodAutoscaler) {
			// 1k per replica in the example; 10 here.
			h.Spec.Metrics[0].External.Target.AverageValue = resource.NewQuantity(10, resource.DecimalSI)
			h.Spec.MaxReplicas = 3
		},
		Path: LoadPath, Rate: 20, ScaleTo: 2, FromZero: true,
	},
}

// DeployApp applies manifests/app in namespace, creating the namespace
// first, and waits for the app's one ready pod.
func (s *Stack) DeployApp(ctx context.Context, namespace string) error {
	return s.DeployAppWith(ctx, namespace, nil)
}

// DeployAppWith is DeployApp with each object of manifests/app changed by
// edit (when not nil) before it is applied.
func (s *Stack) DeployAppWith(ctx context.Context, namespace string, edit func(*unstructured.Unstructured) error) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	objs, err := s.Render(ctx, "manifests/app")
	if err != nil {
		return err
	}
	for _, o := range objs {
		o.SetNamespace(namespace)
		if edit != nil {
			if err := edit(o); err != nil {
				return err
			}
		}
	}
	if err := s.Apply(ctx, objs); err != nil {
		return err
	}
	return s.WaitReady(ctx, namespace, "app", 1, 2*time.Minute)
}

// WaitReady waits until the Deployment namespace/name has exactly n ready
// replicas.
func (s *Stack) WaitReady(ctx context.Context, namespace, name string, n int32, timeout time.Duration) error {
	var last int32
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := s.Client.AppsV1().Deployments(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = d.Status.ReadyReplicas
		return d.Status.ReadyReplicas == n && d.Status.Replicas == n, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %d ready replicas of %s/%s (last %d): %w", n, namespace, name, last, err)
	}
	return nil
}

// HPA renders the seed HPA for its namespace, with its target scaled and
// a scale-down stabilization of downscale instead of the examples' minute.
func (s *Stack) HPA(ctx context.Context, h SeedHPA, downscale time.Duration) (*autoscalingv2.HorizontalPodAutoscaler, error) {
	hpa, err := s.RenderHPA(ctx, h.Dir)
	if err != nil {
		return nil, err
	}
	if len(hpa.Spec.Metrics) != 1 {
		return nil, fmt.Errorf("%s has %d metrics, want 1", h.Dir, len(hpa.Spec.Metrics))
	}
	if h.Scale != nil {
		h.Scale(hpa)
	}
	hpa.Namespace = h.Namespace
	window := int32(downscale / time.Second)
	if hpa.Spec.Behavior == nil {
		hpa.Spec.Behavior = &autoscalingv2.HorizontalPodAutoscalerBehavior{}
	}
	if hpa.Spec.Behavior.ScaleDown == nil {
		hpa.Spec.Behavior.ScaleDown = &autoscalingv2.HPAScalingRules{}
	}
	hpa.Spec.Behavior.ScaleDown.StabilizationWindowSeconds = &window
	return hpa, nil
}

// CurrentMetric renders an HPA's current value of its first metric and
// its target, as "203% / 50%".
func CurrentMetric(h *autoscalingv2.HorizontalPodAutoscaler) (current, target string) {
	current, target = "-", "-"
	if len(h.Spec.Metrics) > 0 {
		target = targetOf(h.Spec.Metrics[0])
	}
	if len(h.Status.CurrentMetrics) > 0 {
		current = currentOf(h.Status.CurrentMetrics[0])
	}
	return current, target
}

func targetOf(m autoscalingv2.MetricSpec) string {
	var t autoscalingv2.MetricTarget
	switch m.Type {
	case autoscalingv2.ResourceMetricSourceType:
		t = m.Resource.Target
	case autoscalingv2.PodsMetricSourceType:
		t = m.Pods.Target
	case autoscalingv2.ObjectMetricSourceType:
		t = m.Object.Target
	case autoscalingv2.ExternalMetricSourceType:
		t = m.External.Target
	}
	switch {
	case t.AverageUtilization != nil:
		return fmt.Sprintf("%d%%", *t.AverageUtilization)
	case t.AverageValue != nil:
		return t.AverageValue.String() + " avg"
	case t.Value != nil:
		return t.Value.String()
	}
	return "-"
}

func currentOf(m autoscalingv2.MetricStatus) string {
	var c autoscalingv2.MetricValueStatus
	switch m.Type {
	case autoscalingv2.ResourceMetricSourceType:
		c = m.Resource.Current
	case autoscalingv2.PodsMetricSourceType:
		c = m.Pods.Current
	case autoscalingv2.ObjectMetricSourceType:
		c = m.Object.Current
	case autoscalingv2.ExternalMetricSourceType:
		c = m.External.Current
	}
	switch {
	case c.AverageUtilization != nil:
		return fmt.Sprintf("%d%%", *c.AverageUtilization)
	case c.AverageValue != nil && math.Abs(c.AverageValue.AsApproximateFloat64()) >= 0.999*math.MaxInt64/1000:
		// At zero replicas the HPA controller divides an External or
		// Object metric's total by 0 pods for an AverageValue target, and
		// writes what the float-to-int conversion leaves: on amd64
		// -9223372036854775808m, shown as -9223372036854776 (read back
		// from the API, its MilliValue is 0: only its float says it).
		return "none: 0 pods to average over"
	case c.AverageValue != nil:
		return humanQuantity(c.AverageValue) + " avg"
	case c.Value != nil:
		return humanQuantity(c.Value)
	}
	return "-"
}

// humanQuantity prints memory in Mi and other values with one decimal.
func humanQuantity(q *resource.Quantity) string {
	if q.Format == resource.BinarySI || q.Value() > 1<<20 {
		return fmt.Sprintf("%.0fMi", q.AsApproximateFloat64()/(1<<20))
	}
	return fmt.Sprintf("%.1f", q.AsApproximateFloat64())
}
