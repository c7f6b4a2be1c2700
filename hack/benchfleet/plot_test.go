package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// The plots are SVG files with a line per shared-query setting.
func TestWritePlots(t *testing.T) {
	rows := []row{
		{hpas: 100, shared: "off", adapterCPU: 0.02, promQPS: 6.7, floor: floorResult{window: time.Minute, adapterCPU: 0.015}},
		{hpas: 1000, shared: "off", adapterCPU: 0.15, promQPS: 66, floor: floorResult{window: time.Minute, adapterCPU: 0.12}},
		{hpas: 100, shared: "30s", adapterCPU: 0.01, promQPS: 0.2},
		{hpas: 1000, shared: "30s", adapterCPU: 0.05, promQPS: 2},
	}
	files, err := writePlots(rows, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("files %v, want 2", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if s := string(b); !strings.Contains(s, "<svg") || !strings.Contains(s, "shared queries off") || !strings.Contains(s, "at most 30s old") {
			t.Errorf("%s is not an SVG with both settings' lines (%d bytes)", f, len(b))
		}
		if floor := strings.Contains(string(b), "floor:"); floor != strings.Contains(f, "adapter-cpu") {
			t.Errorf("%s: floor line %v, want it in the adapter's CPU plot only", f, floor)
		}
	}
}
