// Command loadgen sends a steady, bounded rate of HTTP GET requests to one
// or more URLs, for example the load app's Service inside a cluster:
//
//	loadgen --target=http://app.default.svc --rate=50 --duration=2m
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/internal/loadgen"
)

type targets []string

func (t *targets) String() string     { return strings.Join(*t, ",") }
func (t *targets) Set(v string) error { *t = append(*t, strings.TrimRight(v, "/")); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var ts targets
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.Var(&ts, "target", "Base URL to send requests to (repeatable; requests are spread round-robin).")
	path := fs.String("path", "/", "Path and query requested on each target, e.g. '/?cpu=20ms'.")
	rate := fs.Float64("rate", 10, "Requests per second over all targets.")
	duration := fs.Duration("duration", time.Minute, "How long to send load. The run always ends.")
	inflight := fs.Int("max-in-flight", 256, "Most requests outstanding at once; beyond it requests are dropped and counted.")
	timeout := fs.Duration("timeout", 5*time.Second, "Timeout of each request.")
	report := fs.Duration("report", 5*time.Second, "How often to print progress (0: only at the end).")
	host := fs.String("host", "", "Host header of every request: picks the Ingress of that host behind an ingress controller (default: the target's host).")
	delay := fs.Duration("delay", 0, "Send nothing for this long first; it counts in --duration.")
	ramp := fs.Duration("ramp", 0, "After --delay, raise the rate linearly from 0 to --rate over this long, then hold it; it counts in --duration.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case len(ts) == 0:
		return errors.New("--target is required")
	case *rate <= 0 || *rate > 100000:
		return fmt.Errorf("--rate must be in (0, 100000], got %v", *rate)
	case *duration <= 0 || *duration > 24*time.Hour:
		return fmt.Errorf("--duration must be in (0, 24h], got %v", *duration)
	case !strings.HasPrefix(*path, "/"):
		return fmt.Errorf("--path must start with /, got %q", *path)
	case *delay < 0 || *ramp < 0 || *delay+*ramp > *duration:
		return fmt.Errorf("--delay (%v) and --ramp (%v) must not be negative, and fit in --duration (%v)", *delay, *ramp, *duration)
	case strings.ContainsAny(*host, "/ \t\r\n"):
		return fmt.Errorf("--host must be a host name, got %q", *host)
	}
	for _, t := range ts {
		if !strings.HasPrefix(t, "http://") && !strings.HasPrefix(t, "https://") {
			return fmt.Errorf("--target %q must be an http(s) URL", t)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var stats loadgen.Stats
	if *report > 0 {
		go func() {
			t := time.NewTicker(*report)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					fmt.Println(time.Now().Format(time.TimeOnly), stats.String())
				}
			}
		}()
	}
	fmt.Printf("sending %.1f req/s to %s%s for %s (idle %s, ramp %s)\n", *rate, ts.String(), *path, *duration, *delay, *ramp)
	err := loadgen.Run(ctx, loadgen.Config{
		Targets:     func() []string { return ts },
		Path:        *path,
		Host:        *host,
		Rate:        loadgen.Ramp(*delay, *ramp, *rate),
		Duration:    *duration,
		MaxInFlight: *inflight,
		Timeout:     *timeout,
	}, &stats)
	fmt.Println("done:", stats.String())
	return err
}
