// Package loadgen sends HTTP GET requests at a steady rate for a bounded
// time, spread round-robin over a changing set of targets, and counts what
// became of them in Stats. The demo and the
// tests use it to drive the load app; cmd/loadgen runs it against a real
// cluster.
//
// It paces by schedule, not by responses: a slow target does not lower the
// offered rate, but requests in flight are capped so a dead target cannot
// pile up goroutines.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one load run.
type Config struct {
	// Targets returns the base URLs (http://host:port) to spread requests
	// over. It is called for every request, so the set can follow pods as
	// they come and go. An empty set skips the request (counted as
	// Skipped).
	Targets func() []string
	// Path is requested on each target, e.g. "/?cpu=10ms".
	Path string
	// Rate is the number of requests per second over all targets. A
	// function lets the rate change during the run (ramps).
	Rate func(elapsed time.Duration) float64
	// Duration bounds the run.
	Duration time.Duration
	// MaxInFlight caps concurrent requests; further requests are dropped
	// and counted as Dropped. Zero means 256.
	MaxInFlight int
	// Timeout bounds each request. Zero means 5s.
	Timeout time.Duration
	// Client sends the requests; nil means a client made for the run.
	Client *http.Client
	// Host, when set, is every request's Host header: it picks the
	// Ingress of that host behind an ingress controller that serves many.
	Host string
}

// Stats counts what a run did. The fields are updated atomically while
// the run goes on.
type Stats struct {
	Sent    atomic.Int64
	OK      atomic.Int64
	Failed  atomic.Int64
	Dropped atomic.Int64
	Skipped atomic.Int64
}

func (s *Stats) String() string {
	return fmt.Sprintf("sent=%d ok=%d failed=%d dropped=%d skipped=%d",
		s.Sent.Load(), s.OK.Load(), s.Failed.Load(), s.Dropped.Load(), s.Skipped.Load())
}

// Constant returns a Rate function with a fixed rate.
func Constant(perSecond float64) func(time.Duration) float64 {
	return func(time.Duration) float64 { return perSecond }
}

// Ramp returns a Rate function that sends nothing for delay, then rises
// linearly from 0 to perSecond over ramp, and holds it.
func Ramp(delay, ramp time.Duration, perSecond float64) func(time.Duration) float64 {
	return func(t time.Duration) float64 {
		switch {
		case t < delay:
			return 0
		case t < delay+ramp:
			return perSecond * float64(t-delay) / float64(ramp)
		}
		return perSecond
	}
}

// Run sends load until cfg.Duration has passed or ctx is done, waits for
// requests in flight, and returns what it did.
func Run(ctx context.Context, cfg Config, stats *Stats) error {
	if cfg.Targets == nil || cfg.Rate == nil {
		return errors.New("loadgen: Targets and Rate are required")
	}
	if cfg.Duration <= 0 {
		return fmt.Errorf("loadgen: Duration must be positive, got %v", cfg.Duration)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: cfg.MaxInFlight,
			IdleConnTimeout:     30 * time.Second,
		}}
		defer client.CloseIdleConnections()
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	sem := make(chan struct{}, cfg.MaxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()

	// Requests are paced by credit: the rate accrues credit as time
	// passes, and each request spends one. A rate that changes (a ramp) is
	// followed within 100ms, however low it starts, and after a stall at
	// most one second's worth of requests is sent at once.
	start := time.Now()
	last := start
	credit := 0.0
	var n uint64
	for {
		now := time.Now()
		rate := cfg.Rate(now.Sub(start))
		credit = min(credit+max(rate, 0)*now.Sub(last).Seconds(), max(1, rate))
		last = now
		if credit < 1 {
			wait := 100 * time.Millisecond
			if rate > 0 {
				wait = min(wait, time.Duration((1-credit)/rate*float64(time.Second))+time.Millisecond)
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		credit--
		targets := cfg.Targets()
		if len(targets) == 0 {
			stats.Skipped.Add(1)
			continue
		}
		url := targets[n%uint64(len(targets))] + cfg.Path
		n++
		select {
		case sem <- struct{}{}:
		default:
			stats.Dropped.Add(1)
			continue
		}
		stats.Sent.Add(1)
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if get(ctx, client, url, cfg.Host, cfg.Timeout) {
				stats.OK.Add(1)
			} else {
				stats.Failed.Add(1)
			}
		}()
	}
}

func get(ctx context.Context, client *http.Client, url, host string, timeout time.Duration) bool {
	// The run's end must not cut requests already sent short of their own
	// timeout, or the last second's requests would count as failures.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	if host != "" {
		req.Host = host
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode < 400
}
