package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Limits bound what one request may ask for.
type Limits struct {
	// DefaultCPU is how long GET / burns CPU without ?cpu=.
	DefaultCPU time.Duration
	// MaxCPU caps ?cpu=.
	MaxCPU time.Duration
	// DefaultMemMiB and DefaultHold apply to GET /mem without ?mib= or ?hold=.
	DefaultMemMiB int
	DefaultHold   time.Duration
	// MaxMemMiB caps ?mib= for one request.
	MaxMemMiB int
	// MaxTotalMemMiB caps the memory all /mem requests hold together; a
	// request beyond it gets 503.
	MaxTotalMemMiB int
	// MaxHold caps ?hold=.
	MaxHold time.Duration
}

// DefaultLimits are the flags' defaults.
func DefaultLimits() Limits {
	return Limits{
		DefaultCPU:     20 * time.Millisecond,
		MaxCPU:         2 * time.Second,
		DefaultMemMiB:  16,
		DefaultHold:    10 * time.Second,
		MaxMemMiB:      256,
		MaxTotalMemMiB: 512,
		MaxHold:        5 * time.Minute,
	}
}

// Handler serves the load app's endpoints.
type Handler struct {
	mux     *http.ServeMux
	limits  Limits
	metrics *Metrics
	ready   atomic.Bool

	mu      sync.Mutex
	heldMiB int
	ctx     context.Context // ends held memory early on shutdown
}

// NewHandler returns the app's handler: / and /mem (load), /metrics
// (exposition of reg), /healthz and /readyz. It starts ready.
func NewHandler(ctx context.Context, m *Metrics, reg *prometheus.Registry, limits Limits) *Handler {
	h := &Handler{mux: http.NewServeMux(), limits: limits, metrics: m, ctx: ctx}
	h.ready.Store(true)
	h.mux.Handle("/{$}", h.instrument("/", http.HandlerFunc(h.cpu)))
	h.mux.Handle("/mem", h.instrument("/mem", http.HandlerFunc(h.mem)))
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	h.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !h.ready.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	return h
}

// SetReady sets what /readyz answers.
func (h *Handler) SetReady(ready bool) { h.ready.Store(ready) }

// HeldMiB returns the memory /mem requests hold now.
func (h *Handler) HeldMiB() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.heldMiB
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) instrument(endpoint string, next http.Handler) http.Handler {
	labels := prometheus.Labels{"endpoint": endpoint}
	return promhttp.InstrumentHandlerCounter(h.metrics.Requests.MustCurryWith(labels),
		promhttp.InstrumentHandlerDuration(h.metrics.Duration.MustCurryWith(labels), next))
}

type loadReply struct {
	Endpoint string `json:"endpoint"`
	CPU      string `json:"cpu,omitempty"`
	MiB      int    `json:"mib,omitempty"`
	Hold     string `json:"hold,omitempty"`
	HeldMiB  int    `json:"heldMiB"`
}

// cpu burns CPU for ?cpu= (a Go duration, default Limits.DefaultCPU).
func (h *Handler) cpu(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	d, err := durationParam(r, "cpu", h.limits.DefaultCPU, h.limits.MaxCPU)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	burn(r.Context(), d)
	writeJSON(w, loadReply{Endpoint: "/", CPU: d.String(), HeldMiB: h.HeldMiB()})
}

// burnSink keeps the compiler from removing the busy loop.
var burnSink atomic.Uint64

// burn keeps one CPU busy for d, or until ctx ends.
func burn(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	x := uint64(1)
	for i := 0; ; i++ {
		for range 2048 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
		if time.Now().After(deadline) || (i%64 == 0 && ctx.Err() != nil) {
			break
		}
	}
	burnSink.Add(x)
}

// mem allocates ?mib= MiB, touches every page, and holds them for ?hold=.
// It answers at once; the memory is released later.
func (h *Handler) mem(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	mib, err := intParam(r, "mib", h.limits.DefaultMemMiB, h.limits.MaxMemMiB)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	hold, err := durationParam(r, "hold", h.limits.DefaultHold, h.limits.MaxHold)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}

	h.mu.Lock()
	if h.heldMiB+mib > h.limits.MaxTotalMemMiB {
		held := h.heldMiB
		h.mu.Unlock()
		w.Header().Set("Retry-After", strconv.Itoa(int(h.limits.DefaultHold.Seconds())+1))
		http.Error(w, fmt.Sprintf("holding %d MiB already; %d more would pass the %d MiB cap (--max-total-mem-mib)", held, mib, h.limits.MaxTotalMemMiB), http.StatusServiceUnavailable)
		return
	}
	h.heldMiB += mib
	held := h.heldMiB
	h.mu.Unlock()

	buf := make([]byte, mib<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	h.metrics.MemoryHeld.Add(float64(len(buf)))
	go h.release(buf, mib, hold)
	writeJSON(w, loadReply{Endpoint: "/mem", MiB: mib, Hold: hold.String(), HeldMiB: held})
}

func (h *Handler) release(buf []byte, mib int, hold time.Duration) {
	t := time.NewTimer(hold)
	select {
	case <-t.C:
	case <-h.ctx.Done():
		t.Stop()
	}
	h.metrics.MemoryHeld.Sub(float64(len(buf)))
	runtime.KeepAlive(buf) // held until here, free after
	h.mu.Lock()
	h.heldMiB -= mib
	h.mu.Unlock()
	// Give the memory back to the OS at once, so the process' resident
	// memory (what a memory HPA sees) follows what /mem holds rather than
	// the heap's high-water mark.
	debug.FreeOSMemory()
}

func durationParam(r *http.Request, name string, def, limit time.Duration) (time.Duration, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return def, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		return 0, fmt.Errorf("?%s=%q is not a duration (examples: 50ms, 2s)", name, raw)
	}
	if d < 0 || d > limit {
		return 0, fmt.Errorf("?%s=%s is outside [0, %s]", name, d, limit)
	}
	return d, nil
}

func intParam(r *http.Request, name string, def, limit int) (int, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil {
		return 0, fmt.Errorf("?%s=%q is not an integer", name, raw)
	}
	if n < 1 || n > limit {
		return 0, fmt.Errorf("?%s=%d is outside [1, %d]", name, n, limit)
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
