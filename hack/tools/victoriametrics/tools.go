//go:build tools

// Package tools records the VictoriaMetrics command this module builds.
package tools

import _ "github.com/VictoriaMetrics/VictoriaMetrics/app/victoria-metrics"
