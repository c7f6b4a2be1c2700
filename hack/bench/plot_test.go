package main

import (
	"os"
	"strings"
	"testing"
)

// The plot is an SVG with both ratios' bars, the goal and a label per row.
func TestWritePlot(t *testing.T) {
	fl := floor{side: side{result: result{n: 1000, seconds: 1}, adapterCPU: 0.2, clientCPU: 0.1}}
	rows := []row{
		{pods: 100, want: 2, adapter: side{result: result{n: 1000, seconds: 1}, adapterCPU: 0.3, promCPU: 0.25, clientCPU: 0.1},
			raw: side{result: result{n: 2000, seconds: 1}, promCPU: 0.4}},
		{pods: 10000, want: 10000, adapter: side{result: result{n: 10, seconds: 1}, adapterCPU: 0.5, promCPU: 0.5, clientCPU: 0.1},
			raw: side{result: result{n: 5, seconds: 1}, promCPU: 0.5}},
	}
	if got := rows[0].stackLimit(fl); got < 0.76 || got > 0.77 {
		t.Fatalf("stack limit %v, want (0.2+0.1+0.2)/(0.3+0.25+0.1) = 0.769", got)
	}
	// Idle CPU (0.05 s/s of the adapter, 0.1 of Prometheus) is taken from
	// every side over its seconds: (0.15+0.1+0.15)/(0.25+0.15+0.1).
	idle := fl
	idle.idleAdapter, idle.idleProm = 0.05, 0.1
	if got := rows[0].stackLimit(idle); got < 0.79 || got > 0.81 {
		t.Fatalf("stack limit net of idle CPU %v, want 0.4/0.5 = 0.8", got)
	}
	file, err := writePlot(rows, fl, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"<svg", "share of raw Prometheus", "of the stack", "goal against", "10,000 pods"} {
		if !strings.Contains(s, want) {
			t.Errorf("%s lacks %q (%d bytes)", file, want, len(b))
		}
	}
}
