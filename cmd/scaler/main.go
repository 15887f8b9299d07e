// Command scaler is mlscale's KEDA external scaler: KEDA's `external` and
// `external-push` triggers call it over gRPC (port 6000) and it answers from
// its collector's per-pod window, which scrapes the model servers directly.
//
//	scaler --config=/etc/mlscale/adapter.yaml \
//	  --tls-cert-file=tls.crt --tls-key-file=tls.key --client-ca-file=ca.crt
//
// The collector config is the adapter's (scrape, discovery, rules), so both
// serve the same metric names. /metrics, /healthz and /readyz are on
// --metrics-address (6001). --activator-service watches the activator's
// demand stream, so requests held there for a trigger's wakeServiceName
// wake a workload scaled to zero at once. The composition lives in
// scaler/app; this is wiring only.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/mlscale/mlscale/internal/cli"
	"github.com/mlscale/mlscale/scaler/app"
)

func main() { cli.Main("scaler", run) }

func run(args []string) error {
	fs := cli.FlagSet("scaler", "")
	s := app.New()
	s.AddFlags(fs)
	klog.InitFlags(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return s.Run(ctx)
}
