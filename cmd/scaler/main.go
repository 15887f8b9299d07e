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
// wake a workload scaled to zero at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/scaler"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "scaler:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("scaler", flag.ContinueOnError)
	cfg := scaler.NewConfig()
	cfg.AddFlags(fs, "")
	configPath := fs.String("config", "", "collector YAML config, the adapter's: scrape, discovery, rules (empty: defaults)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (empty: in-cluster)")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	ccfg, err := collector.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	rest, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("building the Kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return fmt.Errorf("building the Kubernetes client: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	col, startCol, err := collector.NewScraping(client, ccfg, reg)
	if err != nil {
		return err
	}

	// Workload names resolve, and pods are counted (zero pods is a real
	// zero), from informer caches: no API call per request.
	var fopts []informers.SharedInformerOption
	if ns := ccfg.Discovery.Namespaces; len(ns) == 1 {
		fopts = append(fopts, informers.WithNamespace(ns[0]))
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, fopts...)
	resolver := collector.NewListerResolver(factory)
	cfg.Pods = scaler.ListerPodCounter{Pods: factory.Core().V1().Pods().Lister()}
	synced := []cache.InformerSynced{
		factory.Core().V1().Pods().Informer().HasSynced,
		factory.Apps().V1().Deployments().Informer().HasSynced,
		factory.Core().V1().Services().Informer().HasSynced,
	}
	cfg.Registerer, cfg.Gatherer = reg, reg
	cfg.Kube = client
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.Healthy = col.Healthy
	cfg.Ready = func() error {
		for _, s := range synced {
			if !s() {
				return errors.New("workload and pod caches not synced yet")
			}
		}
		return col.Ready()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCol(ctx)
	factory.Start(ctx.Done())
	return scaler.New(col, resolver, cfg).ListenAndServe(ctx)
}
