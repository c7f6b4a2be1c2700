package localstack

import (
	"encoding/json"
	"math"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The demo's table shows what an HPA's status means: at zero replicas the
// HPA controller writes an External AverageValue of
// -9223372036854775808m (a total divided by 0 pods), which is no value.
func TestCurrentMetricSaysWhatTheStatusMeans(t *testing.T) {
	// Through JSON, as the status comes from the API server.
	external := func(avg *resource.Quantity) *autoscalingv2.HorizontalPodAutoscaler {
		h := &autoscalingv2.HorizontalPodAutoscaler{
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ExternalMetricSourceType,
				External: &autoscalingv2.ExternalMetricSource{Target: autoscalingv2.MetricTarget{
					Type: autoscalingv2.AverageValueMetricType, AverageValue: resource.NewQuantity(10, resource.DecimalSI)}},
			}}},
			Status: autoscalingv2.HorizontalPodAutoscalerStatus{CurrentMetrics: []autoscalingv2.MetricStatus{{
				Type:     autoscalingv2.ExternalMetricSourceType,
				External: &autoscalingv2.ExternalMetricStatus{Current: autoscalingv2.MetricValueStatus{AverageValue: avg}},
			}}},
		}
		raw, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		back := &autoscalingv2.HorizontalPodAutoscaler{}
		if err := json.Unmarshal(raw, back); err != nil {
			t.Fatal(err)
		}
		return back
	}
	for _, c := range []struct {
		avg           *resource.Quantity
		current, want string
	}{
		{resource.NewMilliQuantity(math.MinInt64, resource.DecimalSI), "none: 0 pods to average over", "10 avg"},
		{resource.NewMilliQuantity(math.MaxInt64, resource.DecimalSI), "none: 0 pods to average over", "10 avg"},
		{resource.NewMilliQuantity(12500, resource.DecimalSI), "12.5 avg", "10 avg"},
		{resource.NewMilliQuantity(-2000, resource.DecimalSI), "-2.0 avg", "10 avg"},
	} {
		current, target := CurrentMetric(external(c.avg))
		if current != c.current || target != c.want {
			t.Errorf("AverageValue %s: current %q target %q, want %q and %q", c.avg, current, target, c.current, c.want)
		}
	}
	if current, target := CurrentMetric(&autoscalingv2.HorizontalPodAutoscaler{}); current != "-" || target != "-" {
		t.Errorf("no metrics: %q %q, want - and -", current, target)
	}
}
