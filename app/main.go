// Command app is the load app for the custom metrics adapter's demos and
// tests. GET / burns CPU, GET /mem holds memory, and /metrics exports
// app_requests_total{endpoint}, which the adapter serves as
// requests-per-second. /healthz and /readyz are for probes. The Handler
// serves them within its Limits, and counts what it served in its Metrics.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is the app's command line.
type Config struct {
	Addr            string
	Limits          Limits
	ShutdownTimeout time.Duration
	// DrainDelay is how long /readyz fails before the server stops
	// accepting requests, so load balancers can stop sending them.
	DrainDelay time.Duration
}

// parseFlags parses args into a Config.
func parseFlags(args []string, stderr io.Writer) (Config, error) {
	c := Config{Limits: DefaultLimits()}
	fs := flag.NewFlagSet("app", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Addr, "listen-address", ":8080", "Address to serve on (host:port).")
	fs.DurationVar(&c.Limits.DefaultCPU, "default-cpu", c.Limits.DefaultCPU, "CPU time GET / burns when the request has no ?cpu=.")
	fs.DurationVar(&c.Limits.MaxCPU, "max-cpu", c.Limits.MaxCPU, "Largest ?cpu= a request may ask for.")
	fs.IntVar(&c.Limits.DefaultMemMiB, "default-mem-mib", c.Limits.DefaultMemMiB, "MiB GET /mem holds when the request has no ?mib=.")
	fs.DurationVar(&c.Limits.DefaultHold, "default-hold", c.Limits.DefaultHold, "How long GET /mem holds memory when the request has no ?hold=.")
	fs.IntVar(&c.Limits.MaxMemMiB, "max-mem-mib", c.Limits.MaxMemMiB, "Largest ?mib= one request may ask for.")
	fs.IntVar(&c.Limits.MaxTotalMemMiB, "max-total-mem-mib", c.Limits.MaxTotalMemMiB, "Memory all /mem requests may hold together; beyond it /mem answers 503.")
	fs.DurationVar(&c.Limits.MaxHold, "max-hold", c.Limits.MaxHold, "Longest ?hold= a request may ask for.")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "How long to wait for requests in flight on SIGTERM.")
	fs.DurationVar(&c.DrainDelay, "drain-delay", 0, "How long /readyz fails on SIGTERM before the server stops accepting requests.")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: app [flags]\n\nLoad app: GET / burns CPU (?cpu=50ms), GET /mem holds memory (?mib=64&hold=30s),\n/metrics exports app_requests_total{endpoint}, /healthz and /readyz answer probes.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return c, c.validate()
}

func (c Config) validate() error {
	l := c.Limits
	var errs []error
	if l.DefaultCPU < 0 || l.DefaultCPU > l.MaxCPU {
		errs = append(errs, fmt.Errorf("--default-cpu %s must be within [0, --max-cpu %s]", l.DefaultCPU, l.MaxCPU))
	}
	if l.DefaultMemMiB < 1 || l.DefaultMemMiB > l.MaxMemMiB {
		errs = append(errs, fmt.Errorf("--default-mem-mib %d must be within [1, --max-mem-mib %d]", l.DefaultMemMiB, l.MaxMemMiB))
	}
	if l.MaxMemMiB > l.MaxTotalMemMiB {
		errs = append(errs, fmt.Errorf("--max-mem-mib %d must not exceed --max-total-mem-mib %d", l.MaxMemMiB, l.MaxTotalMemMiB))
	}
	if l.DefaultHold < 0 || l.DefaultHold > l.MaxHold {
		errs = append(errs, fmt.Errorf("--default-hold %s must be within [0, --max-hold %s]", l.DefaultHold, l.MaxHold))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout must be positive, got %s", c.ShutdownTimeout))
	}
	if c.DrainDelay < 0 {
		errs = append(errs, fmt.Errorf("--drain-delay must not be negative, got %s", c.DrainDelay))
	}
	return errors.Join(errs...)
}

// Run serves until ctx is done, then drains and shuts down gracefully.
// ready, if not nil, receives the bound address once the server listens.
func Run(ctx context.Context, c Config, log *slog.Logger, ready chan<- string) error {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	holdCtx, stopHolding := context.WithCancel(context.Background())
	defer stopHolding()
	h := NewHandler(holdCtx, m, reg, c.Limits)

	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", c.Addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("Serving", "address", ln.Addr().String())
	if ready != nil {
		ready <- ln.Addr().String()
	}

	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("Shutting down", "drainDelay", c.DrainDelay, "timeout", c.ShutdownTimeout)
	h.SetReady(false)
	if c.DrainDelay > 0 {
		time.Sleep(c.DrainDelay)
	}
	// ctx is already done: shut down under a fresh deadline.
	sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	log.Info("Stopped")
	return nil
}

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		log.Error("Invalid flags", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, c, log, nil); err != nil {
		log.Error("App exited", "err", err)
		stop()
		os.Exit(1)
	}
}
