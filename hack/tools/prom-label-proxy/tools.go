//go:build tools

// Package tools records the prom-label-proxy command this module builds.
package tools

import _ "github.com/prometheus-community/prom-label-proxy"
