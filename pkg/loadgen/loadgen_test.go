package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func counter(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RequestURI() != "/?cpu=1ms" {
			http.Error(w, "unexpected "+r.URL.RequestURI(), http.StatusBadRequest)
			return
		}
		n.Add(1)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestRunSpreadsRequestsRoundRobinAndStops(t *testing.T) {
	a, na := counter(t)
	b, nb := counter(t)
	var stats Stats
	start := time.Now()
	err := Run(context.Background(), Config{
		Targets:  func() []string { return []string{a.URL, b.URL} },
		Path:     "/?cpu=1ms",
		Rate:     Constant(200),
		Duration: 500 * time.Millisecond,
	}, &stats)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run took %v for a 500ms run", took)
	}
	sent, ok := stats.Sent.Load(), stats.OK.Load()
	if sent == 0 || ok != sent || stats.Failed.Load() != 0 {
		t.Fatalf("stats %s: want every request sent to succeed", stats.String())
	}
	if got := na.Load() + nb.Load(); got != ok {
		t.Errorf("servers saw %d requests, stats say %d ok", got, ok)
	}
	if d := na.Load() - nb.Load(); d < -1 || d > 1 {
		t.Errorf("round robin uneven: %d vs %d", na.Load(), nb.Load())
	}
}

func TestRunCountsFailuresAndSkips(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	var stats Stats
	if err := Run(context.Background(), Config{Targets: func() []string { return []string{srv.URL} }, Rate: Constant(100), Duration: 200 * time.Millisecond}, &stats); err != nil {
		t.Fatal(err)
	}
	if stats.Failed.Load() == 0 || stats.OK.Load() != 0 {
		t.Errorf("stats %s: want only failures", stats.String())
	}

	var none Stats
	if err := Run(context.Background(), Config{Targets: func() []string { return nil }, Rate: Constant(100), Duration: 200 * time.Millisecond}, &none); err != nil {
		t.Fatal(err)
	}
	if none.Skipped.Load() == 0 || none.Sent.Load() != 0 {
		t.Errorf("stats %s: want skips without targets", none.String())
	}
}

func TestRunDropsBeyondMaxInFlight(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	var stats Stats
	err := Run(context.Background(), Config{
		Targets: func() []string { return []string{srv.URL} }, Rate: Constant(200), Duration: 300 * time.Millisecond,
		MaxInFlight: 2, Timeout: 500 * time.Millisecond,
	}, &stats)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Sent.Load() != 2 || stats.Dropped.Load() == 0 {
		t.Errorf("stats %s: want 2 sent and the rest dropped", stats.String())
	}
}

func TestRunIdlesAtZeroRate(t *testing.T) {
	srv, n := counter(t)
	var stats Stats
	err := Run(context.Background(), Config{Targets: func() []string { return []string{srv.URL} }, Path: "/?cpu=1ms", Rate: Constant(0), Duration: 300 * time.Millisecond}, &stats)
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != 0 || stats.Sent.Load() != 0 {
		t.Errorf("sent %d requests at rate 0", n.Load())
	}
}

func TestRunValidates(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{cfg: Config{Rate: Constant(1), Duration: time.Second}, want: "Targets and Rate are required"},
		{cfg: Config{Targets: func() []string { return nil }, Rate: Constant(1)}, want: "Duration must be positive"},
	} {
		err := Run(context.Background(), tc.cfg, &Stats{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v) error = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// roundTripFunc answers requests in memory, so a synctest bubble (where
// real network I/O would never count as idle) can run the generator.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestRunFollowsARampFromZero ramps from 0 to 2 req/s over 10 s, then
// holds 2 req/s for 10 s, in a synctest bubble: the requests follow the
// ramp (a low start does not schedule the next request far away) and add
// up to the rate's integral, 10 + 20.
func TestRunFollowsARampFromZero(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sent []time.Duration
		start := time.Now()
		client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			sent = append(sent, time.Since(start))
			return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
		})}
		rate := func(t time.Duration) float64 { return min(2, 2*t.Seconds()/10) }
		var stats Stats
		err := Run(context.Background(), Config{
			Targets: func() []string { return []string{"http://app"} }, Rate: rate, Duration: 20 * time.Second,
			Client: client, MaxInFlight: 1,
		}, &stats)
		if err != nil {
			t.Fatal(err)
		}
		if n := stats.OK.Load(); n < 29 || n > 30 {
			t.Errorf("%d requests, want 30 (the rate's integral): %s", n, stats.String())
		}
		firstHalf := 0
		for _, d := range sent {
			if d < 10*time.Second {
				firstHalf++
			}
		}
		if firstHalf < 9 || firstHalf > 10 {
			t.Errorf("%d requests during the ramp, want 10; sent at %v", firstHalf, sent)
		}
		if len(sent) > 0 && sent[0] > 4*time.Second {
			t.Errorf("first request at %v; the ramp reaches one request's worth at 3.2s", sent[0])
		}
	})
}
