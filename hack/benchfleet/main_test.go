package main

import (
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Failed computations are the counters' series whose error label is not
// "none", summed, and nothing of the histograms.
func TestCounterDeltaCountsFailuresFromTheCounterAlone(t *testing.T) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	before, err := p.TextToMetricFamilies(strings.NewReader(`# TYPE c counter
c{error="none",metric_type="Pods"} 100
c{error="internal",metric_type="Pods"} 1
c{error="spec",metric_type="Object"} 2
`))
	if err != nil {
		t.Fatal(err)
	}
	after, err := p.TextToMetricFamilies(strings.NewReader(`# TYPE c counter
c{error="none",metric_type="Pods"} 190
c{error="internal",metric_type="Pods"} 4
c{error="spec",metric_type="Object"} 3
`))
	if err != nil {
		t.Fatal(err)
	}
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
