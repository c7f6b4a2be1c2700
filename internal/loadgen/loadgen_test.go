package loadgen

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// counter answers in memory (no network, so a synctest bubble can run the
// generator) and counts the requests for /?cpu=1ms by target host.
type counter struct {
	mu     sync.Mutex
	hosts  map[string]int
	status int
	// block, when set, holds every request until it is closed or the
	// request ends.
	block chan struct{}
}

func (c *counter) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.block != nil {
		select {
		case <-c.block:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	status := c.status
	if status == 0 {
		status = http.StatusOK
	}
	if r.URL.RequestURI() != "/?cpu=1ms" {
		status = http.StatusBadRequest
	} else if status == http.StatusOK {
		if c.hosts == nil {
			c.hosts = map[string]int{}
		}
		c.hosts[r.URL.Host]++
	}
	return &http.Response{StatusCode: status, Body: http.NoBody, Request: r}, nil
}

func (c *counter) count(host string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[host]
}

func TestRunSpreadsRequestsRoundRobinAndStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &counter{}
		var stats Stats
		start := time.Now()
		err := Run(context.Background(), Config{
			Targets:  func() []string { return []string{"http://a", "http://b"} },
			Path:     "/?cpu=1ms",
			Rate:     Constant(200),
			Duration: 500 * time.Millisecond,
			Client:   &http.Client{Transport: c},
		}, &stats)
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != 500*time.Millisecond {
			t.Errorf("Run took %v for a 500ms run", took)
		}
		sent, ok := stats.Sent.Load(), stats.OK.Load()
		if sent < 99 || sent > 100 || ok != sent || stats.Failed.Load() != 0 {
			t.Fatalf("stats %s: want 100 requests (200/s for 0.5s), all ok", stats.String())
		}
		na, nb := int64(c.count("a")), int64(c.count("b"))
		if na+nb != ok {
			t.Errorf("targets saw %d requests, stats say %d ok", na+nb, ok)
		}
		if d := na - nb; d < -1 || d > 1 {
			t.Errorf("round robin uneven: %d vs %d", na, nb)
		}
	})
}

func TestRunCountsFailuresAndSkips(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var stats Stats
		failing := &http.Client{Transport: &counter{status: http.StatusServiceUnavailable}}
		if err := Run(context.Background(), Config{Targets: func() []string { return []string{"http://a"} }, Path: "/?cpu=1ms", Rate: Constant(100), Duration: 200 * time.Millisecond, Client: failing}, &stats); err != nil {
			t.Fatal(err)
		}
		// Pacing sends the first request once a whole credit has accrued,
		// so 100/s for 0.2s is 19 or 20 requests.
		if f := stats.Failed.Load(); f < 19 || f > 20 || stats.OK.Load() != 0 {
			t.Errorf("stats %s: want 19-20 failures", stats.String())
		}

		var none Stats
		if err := Run(context.Background(), Config{Targets: func() []string { return nil }, Rate: Constant(100), Duration: 200 * time.Millisecond, Client: failing}, &none); err != nil {
			t.Fatal(err)
		}
		if s := none.Skipped.Load(); s < 19 || s > 20 || none.Sent.Load() != 0 {
			t.Errorf("stats %s: want 19-20 skips without targets", none.String())
		}
	})
}

func TestRunDropsBeyondMaxInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &counter{block: make(chan struct{})}
		defer close(c.block)
		var stats Stats
		err := Run(context.Background(), Config{
			Targets: func() []string { return []string{"http://a"} }, Path: "/?cpu=1ms", Rate: Constant(200), Duration: 300 * time.Millisecond,
			MaxInFlight: 2, Timeout: 500 * time.Millisecond, Client: &http.Client{Transport: c},
		}, &stats)
		if err != nil {
			t.Fatal(err)
		}
		if d := stats.Dropped.Load(); stats.Sent.Load() != 2 || d < 57 || d > 58 {
			t.Errorf("stats %s: want 2 sent and the other 57-58 (of 200/s for 0.3s) dropped", stats.String())
		}
	})
}

func TestRunIdlesAtZeroRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &counter{}
		var stats Stats
		err := Run(context.Background(), Config{Targets: func() []string { return []string{"http://a"} }, Path: "/?cpu=1ms", Rate: Constant(0), Duration: 300 * time.Millisecond, Client: &http.Client{Transport: c}}, &stats)
		if err != nil {
			t.Fatal(err)
		}
		if c.count("a") != 0 || stats.Sent.Load() != 0 {
			t.Errorf("sent %d requests at rate 0", c.count("a"))
		}
	})
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

// Ramp sends nothing for its delay, rises linearly, then holds; with Host
// set, every request carries it (an ingress controller picks the Ingress
// by it), whatever the target's address.
func TestRampAndHost(t *testing.T) {
	r := Ramp(5*time.Second, 10*time.Second, 4)
	for _, c := range []struct {
		at   time.Duration
		want float64
	}{{0, 0}, {4 * time.Second, 0}, {5 * time.Second, 0}, {10 * time.Second, 2}, {15 * time.Second, 4}, {time.Hour, 4}} {
		if got := r(c.at); got != c.want {
			t.Errorf("Ramp at %v: %v, want %v", c.at, got, c.want)
		}
	}
	if got := Ramp(0, 0, 3)(0); got != 3 {
		t.Errorf("no delay, no ramp: %v, want the rate at once", got)
	}
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		hosts := map[string]int{}
		client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			hosts[r.Host+" via "+r.URL.Host]++
			mu.Unlock()
			return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
		})}
		var stats Stats
		err := Run(context.Background(), Config{
			Targets: func() []string { return []string{"http://ingress-nginx-controller.ingress-nginx.svc"} }, Rate: Constant(5), Duration: 2 * time.Second,
			Client: client, Host: "team-a.demo",
		}, &stats)
		if err != nil {
			t.Fatal(err)
		}
		if n := hosts["team-a.demo via ingress-nginx-controller.ingress-nginx.svc"]; n < 9 || len(hosts) != 1 {
			t.Errorf("requests by Host and address: %v, want about 10, all with Host team-a.demo", hosts)
		}
	})
}
