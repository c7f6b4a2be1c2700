// Command adapter serves the Kubernetes custom metrics API from Prometheus.
package main

import (
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/adapter"
)

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	ctx := genericapiserver.SetupSignalContext()
	if err := adapter.NewCommand(ctx).Execute(); err != nil {
		klog.ErrorS(err, "Adapter exited")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
}
