package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the load app's Prometheus collectors.
type Metrics struct {
	// Requests counts load requests by endpoint ("/" or "/mem"). The
	// adapter's default rules serve its rate as requests-per-second.
	Requests *prometheus.CounterVec
	// Duration observes load request latency by endpoint.
	Duration *prometheus.HistogramVec
	// MemoryHeld is the memory /mem currently holds.
	MemoryHeld prometheus.Gauge
}

// Endpoints are the load endpoints, the values of the endpoint label.
var Endpoints = []string{"/", "/mem"}

// NewMetrics creates the collectors and registers them, with the Go and
// process collectors, on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "app_requests_total",
			Help: "Total load requests served, by endpoint.",
		}, []string{"endpoint"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "app_request_duration_seconds",
			Help:    "Time taken to serve load requests, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}, []string{"endpoint"}),
		MemoryHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "app_memory_held_bytes",
			Help: "Memory currently held by /mem requests.",
		}),
	}
	// Export every endpoint from the start, so rate() sees the counter
	// begin at zero rather than at its first increment.
	for _, e := range Endpoints {
		m.Requests.WithLabelValues(e)
		m.Duration.WithLabelValues(e)
	}
	reg.MustRegister(m.Requests, m.Duration, m.MemoryHeld,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
