// Package version holds the build's version, stamped at link time with
//
//	-ldflags "-X github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/version.version=v1.2.3"
//
// It has no other logic.
package version

import "runtime/debug"

// version is set by the linker; see the package comment.
var version = ""

// Get returns the stamped version, else the module version Go recorded,
// else "devel".
func Get() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
