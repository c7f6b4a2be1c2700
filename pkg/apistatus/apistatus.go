// Package apistatus is the one table from a failure to what the metrics
// APIs answer: every error a provider returns goes through it, so the same
// failure gets the same HTTP status whichever API (custom, external or
// resource metrics) served the request. What reaches the API server is an
// apimachinery StatusError; a raw error would become a 500.
//
//	Prometheus did not answer in time, or the request ended   504
//	Prometheus unreachable or failing, a cache not filled     503
//	a rule renders a query Prometheus rejects or cannot run   500, naming the rule
//	a resource the cluster does not serve                     404
//	a StatusError (NotFound, BadRequest, ...)                 passed through
//	anything else                                             500
//
// It knows the errors of promclient and resolver; it does not produce
// values.
package apistatus

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
)

// Query turns a failed Prometheus query into a StatusError:
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
func Query(err error, what, rule string) error {
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

// Resolve turns a failure to resolve the objects of a request into a
// StatusError: StatusErrors (NotFound) pass through; a resource the
// cluster does not serve (the REST mapper has no match) is 404; a cache
// that is not filled, a REST mapper that cannot tell, and a resource the
// adapter stopped watching for a while are 503; a request that ended is
// 504; anything else 500.
func Resolve(err error, what string) error {
	var status apierrors.APIStatus
	switch {
	case isUnavailable(err):
		// Before StatusErrors: the cache's own error, 503, whatever the
		// error listing met.
		return apierrors.NewServiceUnavailable(err.Error())
	case errors.As(err, &status):
		return err
	case apimeta.IsNoMatchError(err):
		nf := apierrors.NewNotFound(schema.GroupResource{Resource: what}, "")
		nf.ErrStatus.Message = fmt.Sprintf("%s: the cluster serves no such resource: %v", what, err)
		return nf
	case isContext(err):
		return Ended(err, "resolving "+what)
	case isAmbiguous(err):
		return apierrors.NewServiceUnavailable(fmt.Sprintf("resolving %s: %v", what, err))
	default:
		return apierrors.NewInternalError(fmt.Errorf("resolving %s: %w", what, err))
	}
}

// Ended is the answer to a request whose context ended (its deadline, or
// the caller went away) while the adapter was still working on it: 504,
// as the API server answers a request that runs out of time, never a 500.
// doing says what was under way ("waiting for the answer shared with an
// identical request").
func Ended(err error, doing string) error {
	why := "reached its deadline"
	if errors.Is(err, context.Canceled) {
		why = "was cancelled"
	}
	return apierrors.NewTimeoutError(fmt.Sprintf("the request %s while %s", why, doing), 0)
}

// Of is the last step of every provider method: a StatusError passes
// through, a cache the adapter could not fill is a 503 (Resolve), a
// context's end is Ended, and anything else is a 500 that says what
// failed. what names the request ("metric requests-per-second for
// pods").
func Of(err error, what string) error {
	var status apierrors.APIStatus
	switch {
	case err == nil:
		return nil
	case isUnavailable(err):
		return Resolve(err, what)
	case errors.As(err, &status):
		return err
	case isContext(err):
		return Ended(err, "serving "+what)
	default:
		return apierrors.NewInternalError(fmt.Errorf("serving %s: %w", what, err))
	}
}

// NotFound is the one way a 404 says why there is no value: err (the
// API's own 404: apierrors.NewNotFound, custom-metrics-apiserver's
// NewMetricNotFoundError and NewMetricNotFoundForError) with ": why"
// after its message; err unchanged when why is empty.
func NotFound(err *apierrors.StatusError, why string) *apierrors.StatusError {
	if why != "" {
		err.ErrStatus.Message += ": " + why
	}
	return err
}

// statusCodecs encode metav1.Status.
var statusCodecs = func() serializer.CodecFactory {
	scheme := runtime.NewScheme()
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	return serializer.NewCodecFactory(scheme)
}()

// Write answers req with err as the API server would: a metav1.Status in
// the encoding the client accepts, with the StatusError's code (a raw
// error is a 500). For handlers outside the API's routes, such as filters
// and /debug paths.
func Write(w http.ResponseWriter, req *http.Request, err error) {
	responsewriters.ErrorNegotiated(err, statusCodecs, metav1.SchemeGroupVersion, w, req)
}

func isContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// isAmbiguous reports a REST mapper that cannot tell which resource a
// name is: the cluster's API is unclear for now.
func isAmbiguous(err error) bool {
	var ambiguous *apimeta.AmbiguousResourceError
	return errors.As(err, &ambiguous)
}

// isUnavailable reports an error that says it is a 503: a cache the
// adapter could not fill, too many resources watched, a REST mapper that
// could not read the cluster's API (package resolver's errors).
func isUnavailable(err error) bool {
	var u interface{ Unavailable() bool }
	return errors.As(err, &u) && u.Unavailable()
}
