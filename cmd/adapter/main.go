// Command adapter serves custom.metrics.k8s.io and external.metrics.k8s.io
// from the model servers' own metrics, scraped directly by the collector (or
// read from Prometheus with --prometheus-url), and with --keda-scaler the
// KEDA external scaler from the same collector. The composition lives in
// adapter/app; this is wiring only.
//
//	adapter --config=/etc/mlscale/adapter.yaml --secure-port=6443 ...
//	adapter explain --config=/etc/mlscale/adapter.yaml
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"

	"github.com/mlscale/mlscale/adapter/app"
)

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()
	if len(os.Args) > 1 && os.Args[1] == "explain" {
		if err := app.Explain(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "adapter explain:", err)
			os.Exit(2)
		}
		return
	}
	a := app.New()
	fs := a.AddFlags()
	logs.AddFlags(fs)
	if err := fs.Parse(os.Args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		klog.ErrorS(err, "Parsing flags")
		os.Exit(2)
	}
	if err := a.Run(genericapiserver.SetupSignalContext()); err != nil {
		klog.ErrorS(err, "Adapter failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
}
