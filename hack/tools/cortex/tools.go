//go:build tools

// Package tools records the Cortex command this module builds.
package tools

import _ "github.com/cortexproject/cortex/cmd/cortex"
