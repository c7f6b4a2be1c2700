package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func newTestHandler(t *testing.T, limits Limits) (*Handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return NewHandler(ctx, NewMetrics(reg), reg, limits), reg
}

func testLimits() Limits {
	l := DefaultLimits()
	l.DefaultCPU = time.Millisecond
	l.DefaultHold = 50 * time.Millisecond
	l.DefaultMemMiB = 1
	l.MaxMemMiB = 4
	l.MaxTotalMemMiB = 6
	return l
}

func serve(h http.Handler, method, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

func TestLoadEndpoints(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		target   string
		wantCode int
		wantBody string
	}{
		{name: "burns CPU for the default time", method: http.MethodGet, target: "/", wantCode: 200, wantBody: `"cpu":"1ms"`},
		{name: "burns CPU for the requested time", method: http.MethodGet, target: "/?cpu=3ms", wantCode: 200, wantBody: `"cpu":"3ms"`},
		{name: "rejects a cpu value that is no duration", method: http.MethodGet, target: "/?cpu=lots", wantCode: 400, wantBody: "not a duration"},
		{name: "rejects a cpu value over the cap", method: http.MethodGet, target: "/?cpu=1h", wantCode: 400, wantBody: "outside [0, 2s]"},
		{name: "rejects a negative cpu value", method: http.MethodGet, target: "/?cpu=-1s", wantCode: 400, wantBody: "outside"},
		{name: "rejects POST on /", method: http.MethodPost, target: "/", wantCode: 405, wantBody: "method not allowed"},
		{name: "holds memory", method: http.MethodGet, target: "/mem?mib=2&hold=10ms", wantCode: 200, wantBody: `"mib":2`},
		{name: "rejects a mib value over the cap", method: http.MethodGet, target: "/mem?mib=5", wantCode: 400, wantBody: "outside [1, 4]"},
		{name: "rejects a mib value that is no integer", method: http.MethodGet, target: "/mem?mib=1.5", wantCode: 400, wantBody: "not an integer"},
		{name: "rejects zero mib", method: http.MethodGet, target: "/mem?mib=0", wantCode: 400, wantBody: "outside"},
		{name: "rejects a hold over the cap", method: http.MethodGet, target: "/mem?hold=1h", wantCode: 400, wantBody: "outside"},
		{name: "answers 404 for unknown paths", method: http.MethodGet, target: "/nope", wantCode: 404, wantBody: "not found"},
		{name: "answers health", method: http.MethodGet, target: "/healthz", wantCode: 200, wantBody: "ok"},
		{name: "answers readiness", method: http.MethodGet, target: "/readyz", wantCode: 200, wantBody: "ok"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newTestHandler(t, testLimits())
			rec := serve(h, tc.method, tc.target)
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tc.method, tc.target, rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestCPUBurnTakesTheRequestedTime(t *testing.T) {
	h, _ := newTestHandler(t, testLimits())
	start := time.Now()
	rec := serve(h, http.MethodGet, "/?cpu=20ms")
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	// A lower bound only: the burn must not return early.
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Errorf("request took %v, want at least 20ms", took)
	}
}

func TestRequestsAreCounted(t *testing.T) {
	h, reg := newTestHandler(t, testLimits())
	for range 3 {
		serve(h, http.MethodGet, "/")
	}
	serve(h, http.MethodGet, "/?cpu=bad")
	serve(h, http.MethodGet, "/mem?hold=1ms")
	serve(h, http.MethodGet, "/healthz")
	serve(h, http.MethodGet, "/metrics")
	serve(h, http.MethodGet, "/nope")

	want := `
# HELP app_requests_total Total load requests served, by endpoint.
# TYPE app_requests_total counter
app_requests_total{endpoint="/"} 4
app_requests_total{endpoint="/mem"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "app_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestCounterIsExportedBeforeFirstRequest(t *testing.T) {
	_, reg := newTestHandler(t, testLimits())
	want := `
# HELP app_requests_total Total load requests served, by endpoint.
# TYPE app_requests_total counter
app_requests_total{endpoint="/"} 0
app_requests_total{endpoint="/mem"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "app_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsEndpointExposesTextFormat(t *testing.T) {
	h, reg := newTestHandler(t, testLimits())
	serve(h, http.MethodGet, "/")
	rec := serve(h, http.MethodGet, "/metrics")
	body := rec.Body.String()
	for _, want := range []string{`app_requests_total{endpoint="/"} 1`, "go_goroutines", "process_resident_memory_bytes", "app_request_duration_seconds_bucket"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	linted := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "app_") {
			linted++
		}
	}
	if linted != 3 {
		t.Errorf("linted %d app_ families, want 3", linted)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "app_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestMemoryIsCappedAndReleased runs in a synctest bubble: the hold
// passes in virtual time, and the memory is held until exactly then.
func TestMemoryIsCappedAndReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHandler(t, testLimits())
		if rec := serve(h, http.MethodGet, "/mem?mib=4&hold=200ms"); rec.Code != 200 {
			t.Fatalf("first /mem = %d %s", rec.Code, rec.Body)
		}
		rec := serve(h, http.MethodGet, "/mem?mib=4&hold=200ms")
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "6 MiB cap") || rec.Header().Get("Retry-After") == "" {
			t.Errorf("second /mem = %d %q, want 503 naming the cap with Retry-After", rec.Code, rec.Body)
		}
		if got := testutil.ToFloat64(h.metrics.MemoryHeld); got != 4<<20 {
			t.Errorf("app_memory_held_bytes = %v, want %d", got, 4<<20)
		}
		time.Sleep(199 * time.Millisecond)
		synctest.Wait()
		if got := h.HeldMiB(); got != 4 {
			t.Errorf("held %d MiB just before the hold ends, want 4", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := h.HeldMiB(); got != 0 {
			t.Fatalf("memory not released when the hold ended: held %d MiB", got)
		}
		if got := testutil.ToFloat64(h.metrics.MemoryHeld); got != 0 {
			t.Errorf("app_memory_held_bytes after release = %v", got)
		}
	})
}

func TestMemoryIsReleasedOnShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		ctx, cancel := context.WithCancel(context.Background())
		h := NewHandler(ctx, NewMetrics(reg), reg, testLimits())
		if rec := serve(h, http.MethodGet, "/mem?mib=1&hold=5m"); rec.Code != 200 {
			t.Fatalf("/mem = %d", rec.Code)
		}
		cancel()
		synctest.Wait()
		if got := h.HeldMiB(); got != 0 {
			t.Fatalf("memory held after shutdown: %d MiB", got)
		}
	})
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "accepts the defaults", args: nil},
		{name: "accepts a listen address", args: []string{"--listen-address=127.0.0.2:8080"}},
		{name: "rejects a default CPU time over the cap", args: []string{"--default-cpu=5s", "--max-cpu=1s"}, wantErr: "--default-cpu"},
		{name: "rejects a per-request memory cap over the total", args: []string{"--max-mem-mib=100", "--max-total-mem-mib=50", "--default-mem-mib=10"}, wantErr: "--max-mem-mib"},
		{name: "rejects a default hold over the cap", args: []string{"--default-hold=1h"}, wantErr: "--default-hold"},
		{name: "rejects a zero shutdown timeout", args: []string{"--shutdown-timeout=0"}, wantErr: "--shutdown-timeout"},
		{name: "rejects stray arguments", args: []string{"serve"}, wantErr: "unexpected arguments"},
		{name: "rejects unknown flags", args: []string{"--port=1"}, wantErr: "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFlags(tc.args, io.Discard)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("parseFlags(%q): %v", tc.args, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseFlags(%q) error = %v, want %q", tc.args, err, tc.wantErr)
			}
		})
	}
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "--max-total-mem-mib") && !strings.Contains(out.String(), "-max-total-mem-mib") {
		t.Errorf("--help: err=%v output=%q", err, out.String())
	}
}

func TestRunServesAndShutsDownGracefully(t *testing.T) {
	c, err := parseFlags([]string{"--listen-address=127.0.0.1:0", "--default-cpu=1ms", "--drain-delay=50ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, c, slog.New(slog.NewTextHandler(io.Discard, nil)), ready) }()
	addr := <-ready

	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	var reply loadReply
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if reply.Endpoint != "/" || reply.CPU != "1ms" {
		t.Errorf("reply = %+v", reply)
	}
	resp, err = http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !strings.Contains(string(body), `app_requests_total{endpoint="/"} 1`) {
		t.Errorf("/metrics after one request lacks the count:\n%s", body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("server still answers after shutdown")
	}
}
