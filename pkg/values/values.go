// Package values turns what Prometheus answers into what the metrics APIs
// serve: a sample's value as a resource.Quantity, a query's range as the
// value's window, and a failed query or lookup as an apimachinery
// StatusError with the right code. The custom, external and resource
// metrics providers share it, so the same answer gets the same number and
// the same code whichever API serves it.
package values

import (
	"errors"
	"fmt"
	"math"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promql"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
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

// WindowSeconds is the longest range in a rendered query ("[1m]" is 60), the
// window a value was computed over, or nil for a query without a range.
func WindowSeconds(expr string) *int64 {
	d, ok := promql.Window(expr)
	if !ok {
		return nil
	}
	s := int64(d / time.Second)
	return &s
}

// QueryError turns a failed Prometheus query into a StatusError: 504 for a
// timeout, 503 when Prometheus cannot be reached or fails, 500 naming the
// rule when Prometheus rejects the query the rule rendered. A cancelled
// request is returned as is. what names what was asked for ("metric
// requests-per-second for pods"), rule the rule that rendered the query.
func QueryError(err error, what, rule string) error {
	msg := fmt.Sprintf("unable to fetch %s: %v", what, err)
	switch promclient.Classify(err) {
	case promclient.Timeout:
		return apierrors.NewTimeoutError(msg, 0)
	case promclient.BadQuery:
		return apierrors.NewInternalError(fmt.Errorf("%s renders a query Prometheus rejects: %w", rule, err))
	case promclient.Canceled:
		return err
	default:
		return apierrors.NewServiceUnavailable(msg)
	}
}

// ResolveError turns a failure to resolve the objects of a request into a
// StatusError: StatusErrors (NotFound) pass through, a cache that is not
// filled is 503, anything else 500.
func ResolveError(err error, what string) error {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return err
	}
	var notSynced *resolver.NotSyncedError
	if errors.As(err, &notSynced) {
		return apierrors.NewServiceUnavailable(err.Error())
	}
	return apierrors.NewInternalError(fmt.Errorf("resolving %s: %w", what, err))
}
