package main

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// stackLimitGoal is the ratio to the limit of the stack every row should
// reach (docs/performance.md).
const stackLimitGoal = 0.85

// writePlot draws, per row, the adapter's throughput as a share of raw
// Prometheus' and its CPU per request against the limit of the stack, as
// two bars, with the goal as a line, into bench-ratios.svg in dir, and
// returns its path.
func writePlot(rows []row, fl floor, dir string) (string, error) {
	p := plot.New()
	p.Title.Text = "The adapter against raw Prometheus, per answer size"
	p.Y.Label.Text = "ratio (higher is better)"
	p.Y.Min = 0
	var names []string
	var throughput, limit plotter.Values
	for _, r := range rows {
		names = append(names, fmt.Sprintf("%s pods\n%s", thousands(r.want), thousands(r.pods)))
		throughput = append(throughput, r.adapter.rate()/r.raw.rate())
		limit = append(limit, r.stackLimit(fl))
	}
	p.X.Label.Text = "pods in the answer / in the namespace"
	w := vg.Points(9)
	for i, s := range []struct {
		name   string
		values plotter.Values
	}{{"requests/s, as a share of raw Prometheus'", throughput}, {"of the stack's limit (CPU per request)", limit}} {
		bars, err := plotter.NewBarChart(s.values, w)
		if err != nil {
			return "", err
		}
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		bars.Offset = vg.Length(2*i-1) * w / 2
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	goal := plotter.NewFunction(func(float64) float64 { return stackLimitGoal })
	goal.Color = color.Gray{Y: 96}
	goal.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(goal)
	p.Legend.Add(fmt.Sprintf("goal against the stack's limit (%.2f)", stackLimitGoal), goal)
	p.Legend.Top, p.Legend.Left = true, true
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(rows))-0.5
	file := filepath.Join(dir, "bench-ratios.svg")
	if err := p.Save(20*vg.Centimeter, 11*vg.Centimeter, file); err != nil {
		return "", fmt.Errorf("writing %s: %w", file, err)
	}
	return file, nil
}
