package main

import (
	"strings"
	"testing"

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
