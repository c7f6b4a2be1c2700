package apistatus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
)

// TestStatusCodes is the whole mapping from a failure to what the API
// answers.
func TestStatusCodes(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	q := func(err error) error { return &promclient.QueryError{Expr: "q", Err: err} }
	long := &promclient.QueryError{Expr: strings.Repeat("pod=~\"a|b\",", 10000), Err: &v1.Error{Type: v1.ErrBadData, Msg: "parse error"}}
	tests := []struct {
		name string
		err  error
		code int32
		want string
	}{
		{"a timeout is 504", q(context.DeadlineExceeded), 504, "unable to fetch metric m"},
		{"Prometheus' own timeout is 504", q(&v1.Error{Type: v1.ErrTimeout, Msg: "query timed out"}), 504, "query timed out"},
		{"a request cancelled while waiting is 504, not 500", q(context.Canceled), 504, "ended before Prometheus answered"},
		{"an unreachable Prometheus is 503", q(refused), 503, "connection refused"},
		{"a failing Prometheus is 503", q(&v1.Error{Type: v1.ErrServer, Msg: "server error: 502"}), 503, "502"},
		{"Prometheus unavailable is 503", q(&v1.Error{Type: v1.ErrorType("unavailable"), Msg: "TSDB not ready"}), 503, "TSDB not ready"},
		{"a malformed answer is 503", q(&v1.Error{Type: v1.ErrBadResponse, Msg: "truncated"}), 503, "truncated"},
		{"a query Prometheus rejects is 500 naming the rule", q(&v1.Error{Type: v1.ErrBadData, Msg: "parse error"}), 500, "rules[3] renders a query Prometheus rejects"},
		{"an execution error is a rule or size problem, 500 naming the rule", q(&v1.Error{Type: v1.ErrExec, Msg: "query processing would load too many samples"}), 500, "rules[3] renders a query Prometheus cannot evaluate"},
		{"a 100 KB query is cut short in the message", long, 500, "... (110000 bytes)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Query(tc.err, "metric m", "rules[3]")
			checkStatus(t, err, tc.code, tc.want)
			if len(err.Error()) > 1000 {
				t.Errorf("message of %d bytes", len(err.Error()))
			}
		})
	}

	noMatch := &apimeta.NoResourceMatchError{PartialResource: schema.GroupVersionResource{Resource: "widgets"}}
	resolveTests := []struct {
		name string
		err  error
		code int32
		want string
	}{
		{"a NotFound passes through", apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"), 404, `"p" not found`},
		{"a resource the cluster does not serve is 404, not 500", noMatch, 404, "the cluster serves no such resource"},
		{"a REST mapper that cannot read discovery is 503", fmt.Errorf("%w widgets: %w", resolver.ErrMapping, errors.New("discovery failed")), 503, "discovery failed"},
		{"a cache that is not filled is 503", &resolver.NotSyncedError{Resource: schema.GroupResource{Resource: "nodes"}, Waited: time.Second}, 503, "nodes"},
		{"a cache the adapter may not list is 503, not the listing's own 403", &resolver.NotSyncedError{Resource: schema.GroupResource{Resource: "widgets"},
			LastError: fmt.Errorf("failed to list: %w", apierrors.NewForbidden(schema.GroupResource{Resource: "widgets"}, "", errors.New("RBAC")))}, 503, "grant the adapter's ServiceAccount"},
		{"a cache whose resource went away is 503, not the listing's own 404", &resolver.NotSyncedError{Resource: schema.GroupResource{Resource: "widgets"},
			LastError: apierrors.NewNotFound(schema.GroupResource{Resource: "widgets"}, "")}, 503, "widgets"},
		{"a request that ended is 504", context.Canceled, 504, "was cancelled while resolving widgets"},
		{"a request past its deadline is 504", fmt.Errorf("waiting: %w", context.DeadlineExceeded), 504, "reached its deadline while resolving widgets"},
		{"too many resources watched is 503", fmt.Errorf("%w: 64", resolver.ErrTooManyWatched), 503, "64"},
		{"anything else is 500", errors.New("boom"), 500, "boom"},
	}
	for _, tc := range resolveTests {
		t.Run(tc.name, func(t *testing.T) {
			checkStatus(t, Resolve(tc.err, "widgets"), tc.code, tc.want)
		})
	}
}

// Of is the last step of every provider: nothing raw reaches the API
// server, which would answer it with a 500.
func TestOf(t *testing.T) {
	if Of(nil, "x") != nil {
		t.Fatal("no error must stay no error")
	}
	nf := apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p")
	if got := Of(nf, "x"); !errors.Is(got, nf) || got.Error() != nf.Error() {
		t.Errorf("a StatusError must pass through unchanged, got %v", got)
	}
	checkStatus(t, Of(context.Canceled, "metric m for pods"), 504, "was cancelled while serving metric m for pods")
	checkStatus(t, Of(fmt.Errorf("shared answer: %w", context.DeadlineExceeded), "metric m for pods"), 504, "reached its deadline")
	checkStatus(t, Of(errors.New("boom"), "metric m for pods"), 500, "serving metric m for pods: boom")
	checkStatus(t, NotFound(apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"), "it has no data"), 404, `"p" not found: it has no data`)
	if err := NotFound(apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"), ""); strings.HasSuffix(err.Error(), ": ") {
		t.Errorf("a 404 without a reason: %q", err)
	}
}

func checkStatus(t *testing.T, err error, code int32, want string) {
	t.Helper()
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Code != code {
		t.Fatalf("got %v, want a %d StatusError", err, code)
	}
	if msg := status.Status().Message; !strings.Contains(msg, want) {
		t.Errorf("message %q does not say %q", msg, want)
	}
}
