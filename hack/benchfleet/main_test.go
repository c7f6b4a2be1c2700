package main

import (
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Failed computations are the counters' series whose error label is not
// "none", summed, and nothing of the histograms.
func TestCounterDeltaCountsFailuresFromTheCounterAlone(t *testing.T) {
	parse := func(text string) map[string]*dto.MetricFamily {
		t.Helper()
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(strings.NewReader("# TYPE c counter\n" + text))
		if err != nil {
			t.Fatal(err)
		}
		return mfs
	}
	before := parse(`c{error="none",metric_type="Pods"} 100
c{error="internal",metric_type="Pods"} 1
c{error="spec",metric_type="Object"} 2
`)
	after := parse(`c{error="none",metric_type="Pods"} 190
c{error="internal",metric_type="Pods"} 4
c{error="spec",metric_type="Object"} 3
`)
	if got := counterDelta(before, after, "c", map[string]string{"error": "!none"}); got != 4 {
		t.Errorf("failures: got %g, want 4", got)
	}
	if got := counterDelta(before, after, "c", map[string]string{"error": "none"}); got != 90 {
		t.Errorf("successes: got %g, want 90", got)
	}
	if got := counterDelta(before, after, "c", map[string]string{"error": "!none", "metric_type": "Pods"}); got != 3 {
		t.Errorf("Pods failures: got %g, want 3", got)
	}
}

// The CPU per request beyond idle: the floor's over the empty answers it
// served, the row's over its metric computations (one request each).
func TestPerRequestIsBeyondIdle(t *testing.T) {
	fl := floorResult{served: 8000, window: 60 * time.Second, adapterCPU: 0.19, idleCPU: 0.03, idleWindow: 60 * time.Second}
	// (0.19 - 0.03) of a core over 133.3 requests a second.
	if got, want := fl.perRequest(), 1.2; math.Abs(got-want) > 1e-9 {
		t.Errorf("floor: got %g ms, want %g", got, want)
	}
	r := row{floor: fl, adapterCPU: 0.21, computations: 6000, window: 60 * time.Second}
	if got, want := r.perRequest(), 1.8; math.Abs(got-want) > 1e-9 {
		t.Errorf("row: got %g ms, want %g", got, want)
	}
	if got, want := r.perRequestCell(), "1.80 ms (1.20 ms)"; got != want {
		t.Errorf("cell: got %q, want %q", got, want)
	}
	if got, want := r.adapterCell(), "21.0 % (19.0 %; idle 3.0 %)"; got != want {
		t.Errorf("adapter cell: got %q, want %q", got, want)
	}
	// Without the floor's idle there is no per-request figure.
	if got := (row{adapterCPU: 0.21, computations: 6000, window: time.Minute}).perRequestCell(); got != "-" {
		t.Errorf("no floor: got %q, want -", got)
	}
}

// Every pod's rate stays within ±5 % of podRate (inside the HPA's 10 %
// tolerance: nothing scales) and averages podRate over the swing.
func TestCounterSwingsInsideTheTolerance(t *testing.T) {
	for s := 0.0; s < 600; s++ {
		rate := counterAt(s+1) - counterAt(s)
		if rate < 0.95*podRate-1e-9 || rate > 1.05*podRate+1e-9 {
			t.Fatalf("rate over [%g, %g]: %g, outside %g ±5 %%", s, s+1, rate, float64(podRate))
		}
	}
	if got := counterAt(300) / 300; math.Abs(got-podRate) > 1e-9 {
		t.Errorf("mean rate over one swing: %g, want %d", got, podRate)
	}
}
