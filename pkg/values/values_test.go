package values

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/promclient"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/resolver"
)

func TestQuantity(t *testing.T) {
	tests := []struct {
		in   float64
		want string
		ok   bool
	}{
		{in: 0, want: "0", ok: true},
		{in: 1.5, want: "1500m", ok: true},
		{in: 0.0005, want: "500u", ok: true},
		{in: 1e-9, want: "1n", ok: true},
		{in: 0.123456789, want: "123456789n", ok: true},
		{in: 8.982068966, want: "8982m", ok: true},
		{in: 1e15, want: "1P", ok: true},
		{in: -2.25, want: "-2250m", ok: true},
		{in: 123456789.5, want: "123456789500m", ok: true},
		{in: 1e12, want: "1T", ok: true},
		{in: math.NaN(), ok: false},
		{in: math.Inf(1), ok: false},
		{in: math.Inf(-1), ok: false},
		{in: 1e300, ok: false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.in), func(t *testing.T) {
			q, ok := Quantity(tc.in)
			if ok != tc.ok {
				t.Fatalf("Quantity(%v) ok = %v", tc.in, ok)
			}
			if ok && q.String() != tc.want {
				t.Errorf("Quantity(%v) = %s, want %s", tc.in, q.String(), tc.want)
			}
		})
	}
}

func TestWindowSeconds(t *testing.T) {
	if got := WindowSeconds(`sum(rate(x{a="[5m]"}[2m])) by (pod)`); got == nil || *got != 120 {
		t.Errorf("WindowSeconds of a [2m] rate = %v, want 120", got)
	}
	if got := WindowSeconds(`sum(x) by (pod)`); got != nil {
		t.Errorf("WindowSeconds of a query without a range = %d, want nil", *got)
	}
}

func TestQueryError(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	tests := []struct {
		name string
		err  error
		code int32 // 0: the error is returned as is
		want string
	}{
		{"a timeout is 504", &promclient.QueryError{Expr: "q", Err: context.DeadlineExceeded}, 504, "unable to fetch metric m"},
		{"Prometheus' own timeout is 504", &promclient.QueryError{Expr: "q", Err: &v1.Error{Type: v1.ErrTimeout, Msg: "query timed out"}}, 504, "query timed out"},
		{"an unreachable Prometheus is 503", &promclient.QueryError{Expr: "q", Err: refused}, 503, "connection refused"},
		{"a query Prometheus rejects is 500 naming the rule", &promclient.QueryError{Expr: "q", Err: &v1.Error{Type: v1.ErrBadData, Msg: "parse error"}}, 500, "rules[3] renders a query Prometheus rejects"},
		{"a cancelled request is returned as is", &promclient.QueryError{Expr: "q", Err: context.Canceled}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := QueryError(tc.err, "metric m", "rules[3]")
			if tc.code == 0 {
				if !errors.Is(err, context.Canceled) {
					t.Errorf("QueryError = %v, want the cancellation", err)
				}
				return
			}
			var status apierrors.APIStatus
			if !errors.As(err, &status) || status.Status().Code != tc.code {
				t.Fatalf("QueryError = %v, want a %d StatusError", err, tc.code)
			}
			if msg := status.Status().Message; !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not say %q", msg, tc.want)
			}
		})
	}
}

func TestResolveError(t *testing.T) {
	nf := apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p")
	if got := ResolveError(nf, "pods"); !apierrors.IsNotFound(got) {
		t.Errorf("NotFound became %v", got)
	}
	ns := &resolver.NotSyncedError{Resource: schema.GroupResource{Resource: "nodes"}, Waited: time.Second}
	if got := ResolveError(ns, "nodes"); !apierrors.IsServiceUnavailable(got) {
		t.Errorf("a cache that is not filled became %v, want 503", got)
	}
	if got := ResolveError(errors.New("boom"), "pods"); !apierrors.IsInternalError(got) {
		t.Errorf("an unexpected error became %v, want 500", got)
	}
}
