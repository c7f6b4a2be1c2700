// Package values turns the numbers Prometheus answers into the quantities
// the metrics APIs serve (Quantity): the custom and external metrics
// providers share it, so the same sample gets the same number whichever
// API serves it. It knows nothing of rules, requests or errors.
package values

import (
	"math"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Quantity converts a sample value to a Quantity, and reports false for
// NaN, infinities and values too large to represent. Values of 1 and more
// keep milli precision (what the HPA computes with: 8.98207 is "8982m");
// smaller values keep nano precision, so a slow rate is not rounded to zero
// (0.0005 is "500u").
func Quantity(v float64) (resource.Quantity, bool) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return resource.Quantity{}, false
	}
	switch a := math.Abs(v); {
	case a < 1:
		return *resource.NewScaledQuantity(int64(math.Round(v*1e9)), resource.Nano), true
	case a < 9e15:
		return *resource.NewMilliQuantity(int64(math.Round(v*1e3)), resource.DecimalSI), true
	case a < 9e18:
		return *resource.NewQuantity(int64(math.Round(v)), resource.DecimalSI), true
	default:
		return resource.Quantity{}, false
	}
}
