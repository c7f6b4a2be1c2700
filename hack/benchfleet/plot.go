package main

import (
	"fmt"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writePlots draws, against the fleet size, one line per shared-query
// setting of the adapter's CPU (and one of the floor's, where measured)
// and of Prometheus' queries per second, into
// fleet-adapter-cpu.svg and fleet-prometheus-queries.svg in dir, and
// returns their paths.
func writePlots(rows []row, dir string) ([]string, error) {
	var modes []string
	for _, r := range rows {
		if !slices.Contains(modes, r.shared) {
			modes = append(modes, r.shared)
		}
	}
	charts := []struct {
		file, title, y string
		value          func(row) float64
		// floor draws the floor's line too, where rows measured it.
		floor bool
	}{
		{"fleet-adapter-cpu.svg", "The adapter's CPU under a fleet of HPAs", "adapter CPU (% of one core)", func(r row) float64 { return 100 * r.adapterCPU }, true},
		{"fleet-prometheus-queries.svg", "Queries the adapter sends Prometheus", "queries per second", func(r row) float64 { return r.promQPS }, false},
	}
	var files []string
	for _, c := range charts {
		p := plot.New()
		p.Title.Text = c.title
		p.X.Label.Text = "HPAs (each synced every 15 s)"
		p.Y.Label.Text = c.y
		p.Y.Min = 0
		var lines []any
		for _, m := range modes {
			var xys plotter.XYs
			for _, r := range rows {
				if r.shared == m {
					xys = append(xys, plotter.XY{X: float64(r.hpas), Y: c.value(r)})
				}
			}
			name := "shared queries off"
			if m != "off" {
				name = "shared queries, at most " + m + " old"
			}
			lines = append(lines, name, xys)
		}
		if c.floor {
			// One point per size: the first row of that size that
			// measured it.
			var xys plotter.XYs
			for _, r := range rows {
				if r.floor.window > 0 && !slices.ContainsFunc(xys, func(xy plotter.XY) bool { return xy.X == float64(r.hpas) }) {
					xys = append(xys, plotter.XY{X: float64(r.hpas), Y: 100 * r.floor.adapterCPU})
				}
			}
			if len(xys) > 0 {
				lines = append(lines, "floor: as many empty answers a second", xys)
			}
		}
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return nil, err
		}
		p.Legend.Top, p.Legend.Left = true, true
		file := filepath.Join(dir, c.file)
		if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, file); err != nil {
			return nil, fmt.Errorf("writing %s: %w", file, err)
		}
		files = append(files, file)
	}
	return files, nil
}
