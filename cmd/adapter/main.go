// Command adapter serves custom.metrics.k8s.io and external.metrics.k8s.io
// from the model servers' own metrics, scraped directly by the collector.
//
//	adapter --config=/etc/mlscale/adapter.yaml --secure-port=6443 ...
//	adapter explain --config=/etc/mlscale/adapter.yaml
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
	cmmetrics "sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver/metrics"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"

	"github.com/mlscale/mlscale/activator/api"
	"github.com/mlscale/mlscale/adapter"
	"github.com/mlscale/mlscale/burst"
	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/collector/promql"
	"github.com/mlscale/mlscale/scaler"
)

// alwaysUp is the loop state of the PromQL source: it has no loop; a failing
// Prometheus shows in the answers (and the log), not in the probes.
type alwaysUp struct{}

func (alwaysUp) Healthy() error { return nil }
func (alwaysUp) Ready() error   { return nil }

type adapterCmd struct {
	basecmd.AdapterBase
	configPath     string
	enableExternal bool
	prometheusURL  string
	promWindow     time.Duration
	// kedaScaler runs the KEDA external scaler in this process, reading the
	// same collector: one scrape loop for both front doors.
	kedaScaler bool
	scalerCfg  scaler.Config
	// serviceNamespace/serviceName is this adapter's own Service, the one
	// the external metrics APIService should point at.
	serviceNamespace string
	serviceName      string
	// burst scales opted-in HPAs' workloads at once on a demand step
	// (burst/), serving the HPA the demand it acted on.
	burst    bool
	burstCfg burst.Config
	// activatorService ("namespace/name") is the activator whose
	// per-Service demand is served as Object metrics on Services
	// (adapter.DemandMetrics), and read by the embedded scaler.
	activatorService string
}

// ownerCheckInterval is how often the adapter checks who owns
// external.metrics.k8s.io.
const ownerCheckInterval = 60 * time.Second

// defaultNamespace is POD_NAMESPACE (the downward API), else mlscale.
func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "mlscale"
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()
	if len(os.Args) > 1 && os.Args[1] == "explain" {
		if err := explain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "adapter explain:", err)
			os.Exit(2)
		}
		return
	}
	cmd := &adapterCmd{}
	cmd.Name = "mlscale-adapter"
	fs := cmd.Flags()
	fs.StringVar(&cmd.configPath, "config", "", "YAML config: scrape, discovery and rules (empty: the default metrics of pods annotated prometheus.io/scrape=true)")
	fs.BoolVar(&cmd.enableExternal, "enable-external-metrics", true, "serve external.metrics.k8s.io too; turn off where another provider (KEDA) owns that API group")
	fs.StringVar(&cmd.serviceNamespace, "service-namespace", defaultNamespace(), "namespace of this adapter's Service, which the external.metrics.k8s.io APIService should point at ($POD_NAMESPACE when set)")
	fs.StringVar(&cmd.serviceName, "service-name", "mlscale-adapter", "name of this adapter's Service; with external metrics on, the adapter warns when the APIService points elsewhere (KEDA)")
	fs.StringVar(&cmd.activatorService, "activator-service", "", "the activator's Service, namespace/name (e.g. mlscale/mlscale-activator): serve its per-Service demand as activator_* Object metrics on Services, present while a workload has no pod (empty: off)")
	fs.StringVar(&cmd.prometheusURL, "prometheus-url", "", "read the metrics from this Prometheus with PromQL instead of scraping pods (the config's rules still apply; discovery and scrape settings do not)")
	fs.DurationVar(&cmd.promWindow, "prometheus-window", promql.NewOptions().Window, "rate window of the PromQL queries (at least four of that Prometheus' scrape intervals)")
	fs.BoolVar(&cmd.kedaScaler, "keda-scaler", false, "also serve the KEDA external scaler (gRPC, --scaler-address) from this process's collector instead of running cmd/scaler")
	cmd.scalerCfg = scaler.NewConfig()
	cmd.scalerCfg.MetricsAddress = "" // the adapter's /metrics serves the scaler's series
	gofs := flag.NewFlagSet("scaler", flag.ContinueOnError)
	cmd.scalerCfg.AddFlags(gofs, "scaler-")
	gofs.BoolVar(&cmd.burst, "burst", false, "run the burst controller for HPAs annotated "+burst.Annotation+" (needs RBAC on HPAs, /scale and events)")
	cmd.burstCfg = burst.NewConfig()
	cmd.burstCfg.AddFlags(gofs, "burst-")
	fs.AddGoFlagSet(gofs)
	logs.AddFlags(fs)
	if err := fs.Parse(os.Args); err != nil {
		klog.ErrorS(err, "Parsing flags")
		os.Exit(2)
	}
	if err := run(cmd); err != nil {
		klog.ErrorS(err, "Adapter failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
}

func explain(args []string) error {
	fs := pflag.NewFlagSet("explain", pflag.ContinueOnError)
	path := fs.String("config", "", "YAML config to explain (empty: defaults)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := collector.LoadConfig(*path)
	if err != nil {
		return err
	}
	if err := cfg.Explain(os.Stdout); err != nil {
		return err
	}
	_, err = fmt.Fprint(os.Stdout, `
APIs:
  custom.metrics.k8s.io/v1beta2, v1beta1:
    pods                                          by label selector and by name: each pod's value
    deployments.apps, services,
    seldondeployments.machinelearning.seldon.io   by name: the aggregate over the workload's ready pods
  external.metrics.k8s.io/v1beta1 (unless --enable-external-metrics=false):
    any served name                               the aggregate over the pods the label selector picks
`)
	return err
}

func run(cmd *adapterCmd) error {
	cfg, err := collector.LoadConfig(cmd.configPath)
	if err != nil {
		return err
	}
	restCfg, err := cmd.ClientConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("building Kubernetes client: %w", err)
	}
	// Everything registers on the API server's registry, so /metrics shows
	// the collector's and the provider's series beside the server's own.
	reg := legacyregistry.Registerer()
	inf, err := cmd.Informers()
	if err != nil {
		return err
	}
	resolver := collector.NewListerResolver(inf)
	var (
		src   adapter.Source
		loop  adapter.LoopState
		start func(context.Context)
	)
	if cmd.prometheusURL != "" {
		pc, err := promapi.NewClient(promapi.Config{Address: cmd.prometheusURL})
		if err != nil {
			return fmt.Errorf("prometheus client: %w", err)
		}
		o := promql.NewOptions()
		o.Window = cmd.promWindow
		ps, err := promql.New(pc, cfg.Rules, inf.Core().V1().Pods().Lister(), o)
		if err != nil {
			return err
		}
		src, loop, start = ps, alwaysUp{}, func(context.Context) {}
	} else {
		col, startCol, err := collector.NewScraping(client, cfg, reg)
		if err != nil {
			return err
		}
		src, loop, start = col, col, startCol
	}
	startBurst := func(context.Context) {}
	if cmd.burst {
		if src, startBurst, err = burst.Setup(cmd.burstCfg, restCfg, inf, src, resolver, reg); err != nil {
			return err
		}
	}
	prov := adapter.NewProvider(src, resolver, reg)
	var demand *api.Watcher
	if cmd.activatorService != "" {
		demand = api.NewWatcher(slog.Default())
		prov.WithDemand(demand)
		if cmd.scalerCfg.Pending == nil && cmd.scalerCfg.ActivatorService == "" {
			cmd.scalerCfg.Pending = demand // one watcher for both front doors
		}
	}
	cmd.WithCustomMetrics(prov)
	if cmd.enableExternal {
		cmd.WithExternalMetrics(prov)
	}
	if err := cmmetrics.RegisterMetrics(legacyregistry.Register); err != nil {
		return fmt.Errorf("registering API metrics: %w", err)
	}
	srv, err := cmd.Server()
	if err != nil {
		return err
	}
	if err := adapter.AddChecks(srv.GenericAPIServer, loop); err != nil {
		return err
	}
	ctx := genericapiserver.SetupSignalContext()
	start(ctx)
	startBurst(ctx)
	if demand != nil {
		ns, name, ok := strings.Cut(cmd.activatorService, "/")
		if !ok || ns == "" || name == "" {
			return fmt.Errorf("--activator-service %q: want namespace/name", cmd.activatorService)
		}
		if err := demand.Discover(ctx, client, ns, name); err != nil {
			return err
		}
	}
	if cmd.kedaScaler {
		if err := startScaler(ctx, cmd, client, src, resolver, inf, loop); err != nil {
			return err
		}
	}
	// The library builds the factory but leaves starting it to us; start it
	// after every lister (resolver, scaler) has been asked for.
	inf.Start(ctx.Done())
	if cmd.enableExternal {
		if err := watchExternalOwner(ctx, cmd, restCfg, reg); err != nil {
			return err
		}
	}
	klog.InfoS("Serving", "metrics", src.Metrics(), "externalMetrics", cmd.enableExternal, "prometheus", cmd.prometheusURL)
	if err := srv.GenericAPIServer.PrepareRun().RunWithContext(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// watchExternalOwner checks at start and every minute whether the
// external.metrics.k8s.io APIService routes to this adapter, warning once per
// change when another Service (KEDA's metrics server) owns it. Failing to
// read it is logged, never fatal.
func watchExternalOwner(ctx context.Context, cmd *adapterCmd, restCfg *rest.Config, reg prometheus.Registerer) error {
	dc, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("building dynamic client for the APIService check: %w", err)
	}
	w := adapter.NewOwnerWatch(dc, adapter.ExternalMetricsAPIService, cmd.serviceNamespace, cmd.serviceName, reg)
	t := time.NewTicker(ownerCheckInterval)
	go func() {
		defer t.Stop()
		w.Run(ctx, t.C, logOwnerEvent)
	}()
	return nil
}

func logOwnerEvent(ev adapter.OwnerEvent) {
	o := ev.Owner
	if ev.Warn {
		klog.Warning(ev.Msg)
		return
	}
	klog.InfoS(ev.Msg, "apiService", o.APIService, "server", o.Server(), "ours", o.Ours, "available", o.Available)
}

// startScaler serves the KEDA external scaler next to the metrics APIs,
// sharing the collector and the informer caches. A scaler failure ends the
// process, so a half-working adapter is never left running.
func startScaler(ctx context.Context, cmd *adapterCmd, client kubernetes.Interface, src adapter.Source, resolver collector.SelectorResolver, inf informers.SharedInformerFactory, loop adapter.LoopState) error {
	cfg := cmd.scalerCfg
	cfg.Registerer = legacyregistry.Registerer()
	cfg.Pods = scaler.ListerPodCounter{Pods: inf.Core().V1().Pods().Lister()}
	cfg.Logger = slog.Default()
	cfg.Kube = client
	cfg.Healthy, cfg.Ready = loop.Healthy, loop.Ready
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("--keda-scaler: %w", errors.Join(errs...))
	}
	srv := scaler.New(src, resolver, cfg)
	go func() {
		if err := srv.ListenAndServe(ctx); err != nil {
			klog.ErrorS(err, "KEDA scaler failed")
			klog.FlushAndExit(klog.ExitFlushTimeout, 1)
		}
	}()
	klog.InfoS("Serving the KEDA external scaler", "address", cfg.Address, "tls", cfg.TLSCertFile != "", "mutualTLS", cfg.ClientCAFile != "")
	return nil
}
