// Package values turns what Prometheus answers into what the metrics APIs
// serve: a sample's value as a resource.Quantity, a query's range as the
// value's window, and a failed query or lookup as an apimachinery
// StatusError with the right code. The custom, external and resource
// metrics providers share it, so the same answer gets the same number and
// the same code whichever API serves it.
package values

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime/schema"

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

// QueryError turns a failed Prometheus query into a StatusError:
//
//   - 504 for a timeout, and for a request cancelled while it waited (the
//     API server's own answer to a request whose context ended);
//   - 500 naming the rule when Prometheus rejects the query the rule
//     rendered (bad_data) or cannot evaluate it (execution: too many
//     samples, many-to-many matching): the rule or the request's size is
//     at fault, and retrying will not help;
//   - 503 when Prometheus cannot be reached or fails.
//
// what names what was asked for ("metric requests-per-second for pods"),
// rule the rule that rendered the query. The message quotes the query cut
// short (promclient.ShortQuery).
func QueryError(err error, what, rule string) error {
	msg := fmt.Sprintf("unable to fetch %s: %v", what, err)
	switch promclient.Classify(err) {
	case promclient.Timeout:
		return apierrors.NewTimeoutError(msg, 0)
	case promclient.Canceled:
		return apierrors.NewTimeoutError(fmt.Sprintf("the request for %s ended before Prometheus answered", what), 0)
	case promclient.BadQuery:
		return apierrors.NewInternalError(fmt.Errorf("%s renders a query Prometheus rejects: %w", rule, err))
	case promclient.Execution:
		return apierrors.NewInternalError(fmt.Errorf("%s renders a query Prometheus cannot evaluate (the rule, or the size of the request): %w", rule, err))
	default:
		return apierrors.NewServiceUnavailable(msg)
	}
}

// ResolveError turns a failure to resolve the objects of a request into a
// StatusError: StatusErrors (NotFound) pass through; a resource the
// cluster does not serve (the REST mapper has no match) is 404; a cache
// that is not filled, a REST mapper that cannot tell, and a request that
// ended are 503 or 504; anything else 500.
func ResolveError(err error, what string) error {
	var status apierrors.APIStatus
	var notSynced *resolver.NotSyncedError
	switch {
	case errors.As(err, &status):
		return err
	case apimeta.IsNoMatchError(err):
		nf := apierrors.NewNotFound(schema.GroupResource{Resource: what}, "")
		nf.ErrStatus.Message = fmt.Sprintf("%s: the cluster serves no such resource: %v", what, err)
		return nf
	case errors.As(err, &notSynced):
		return apierrors.NewServiceUnavailable(err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return apierrors.NewTimeoutError(fmt.Sprintf("the request ended while resolving %s", what), 0)
	case isMapperError(err):
		return apierrors.NewServiceUnavailable(fmt.Sprintf("resolving %s: %v", what, err))
	default:
		return apierrors.NewInternalError(fmt.Errorf("resolving %s: %w", what, err))
	}
}

// isMapperError reports errors of the REST mapper other than no-match
// (discovery failing): the cluster's API is unknown for now.
func isMapperError(err error) bool {
	var ambiguous *apimeta.AmbiguousResourceError
	return errors.As(err, &ambiguous) || errors.Is(err, resolver.ErrMapping)
}
