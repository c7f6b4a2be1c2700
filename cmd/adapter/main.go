// Command adapter serves the Kubernetes metrics APIs from Prometheus:
// custom.metrics.k8s.io, external.metrics.k8s.io and metrics.k8s.io.
package main

import (
	"errors"
	"fmt"
	"os"

	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/adapter"
)

func main() {
	logs.InitLogs()

	ctx := genericapiserver.SetupSignalContext()
	if err := adapter.NewCommand(ctx).Execute(); err != nil {
		logs.FlushLogs()
		code := adapter.ExitFailed
		var exit *adapter.ExitError
		if errors.As(err, &exit) {
			code, err = exit.Code, exit.Err
		}
		if err != nil {
			// Plain text, one problem per line: a rules file with three
			// mistakes names all three, each with its file and line.
			fmt.Fprintf(os.Stderr, "%s: %v\n", adapter.Name, err)
		}
		os.Exit(code)
	}
	klog.Flush()
}
