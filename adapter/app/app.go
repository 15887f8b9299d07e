// Package app is the adapter command's composition, as prometheus-adapter's
// cmd/adapter/adapter.go: a command struct embedding custom-metrics-apiserver's
// AdapterBase, with one maker per concern (the metrics source, burst, the
// activator's demand, the embedded KEDA scaler, the APIService owner watch)
// that returns nil when that concern is not configured. cmd/adapter only
// parses flags and calls Run. It is a package of its own because burst and
// the scaler import the adapter package.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
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

// OwnerCheckInterval is how often the adapter checks who owns
// external.metrics.k8s.io.
const OwnerCheckInterval = 60 * time.Second

// Adapter is the adapter command: its flags and what they compose.
type Adapter struct {
	basecmd.AdapterBase

	ConfigPath     string
	EnableExternal bool
	// PrometheusURL, when set, reads the metrics with PromQL (over
	// PrometheusClient's authentication) instead of scraping pods.
	PrometheusURL    string
	PrometheusWindow time.Duration
	PrometheusClient promql.ClientConfig
	// KEDAScaler runs the KEDA external scaler in this process, reading the
	// same collector: one scrape loop for both front doors.
	KEDAScaler bool
	ScalerCfg  scaler.Config
	// ServiceNamespace/ServiceName is this adapter's own Service, the one
	// the external metrics APIService should point at.
	ServiceNamespace, ServiceName string
	// Burst scales opted-in HPAs' workloads at once on a demand step
	// (burst/), serving the HPA the demand it acted on.
	Burst    bool
	BurstCfg burst.Config
	// ActivatorService ("namespace/name") is the activator whose
	// per-Service demand is served as Object metrics on Services
	// (adapter.DemandMetrics), and read by the embedded scaler.
	ActivatorService string
}

// New returns the command with its defaults.
func New() *Adapter {
	a := &Adapter{EnableExternal: true, PrometheusWindow: promql.NewOptions().Window, PrometheusClient: promql.NewClientConfig(),
		ScalerCfg: scaler.NewConfig(), BurstCfg: burst.NewConfig(), ServiceNamespace: defaultNamespace(), ServiceName: "mlscale-adapter"}
	a.Name = "mlscale-adapter"
	// Its own flag set, not pflag's global one, so the command can be built
	// more than once in a process (tests).
	a.FlagSet = pflag.NewFlagSet(a.Name, pflag.ContinueOnError)
	a.ScalerCfg.MetricsAddress = "" // the adapter's /metrics serves the scaler's series
	return a
}

// defaultNamespace is POD_NAMESPACE (the downward API), else mlscale.
func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "mlscale"
}

// AddFlags registers the command's flags beside AdapterBase's.
func (a *Adapter) AddFlags() *pflag.FlagSet {
	fs := a.Flags()
	fs.StringVar(&a.ConfigPath, "config", a.ConfigPath, "YAML config: scrape, discovery and rules (empty: the default metrics of pods annotated prometheus.io/scrape=true)")
	fs.BoolVar(&a.EnableExternal, "enable-external-metrics", a.EnableExternal, "serve external.metrics.k8s.io too; turn off where another provider (KEDA) owns that API group")
	fs.StringVar(&a.ServiceNamespace, "service-namespace", a.ServiceNamespace, "namespace of this adapter's Service, which the external.metrics.k8s.io APIService should point at ($POD_NAMESPACE when set)")
	fs.StringVar(&a.ServiceName, "service-name", a.ServiceName, "name of this adapter's Service; with external metrics on, the adapter warns when the APIService points elsewhere (KEDA)")
	fs.StringVar(&a.ActivatorService, "activator-service", a.ActivatorService, "the activator's Service, namespace/name (e.g. mlscale/mlscale-activator): serve its per-Service demand as activator_* Object metrics on Services, present while a workload has no pod (empty: off)")
	fs.StringVar(&a.PrometheusURL, "prometheus-url", a.PrometheusURL, "read the metrics from this Prometheus with PromQL instead of scraping pods (the config's rules still apply; discovery and scrape settings do not); Amazon Managed Prometheus: https://aps-workspaces.REGION.amazonaws.com/workspaces/ID with --prometheus-sigv4")
	fs.DurationVar(&a.PrometheusWindow, "prometheus-window", a.PrometheusWindow, "rate window of the PromQL queries (at least four of that Prometheus' scrape intervals)")
	fs.BoolVar(&a.KEDAScaler, "keda-scaler", a.KEDAScaler, "also serve the KEDA external scaler (gRPC, --scaler-address) from this process's collector instead of running cmd/scaler")
	gofs := flag.NewFlagSet("adapter", flag.ContinueOnError)
	a.PrometheusClient.AddFlags(gofs, "prometheus-")
	a.ScalerCfg.AddFlags(gofs, "scaler-")
	gofs.BoolVar(&a.Burst, "burst", a.Burst, "run the burst controller for HPAs annotated "+burst.Annotation+" (needs RBAC on HPAs, /scale and events)")
	a.BurstCfg.AddFlags(gofs, "burst-")
	fs.AddGoFlagSet(gofs)
	return fs
}

// alwaysUp is the loop state of the PromQL source: it has no loop; a failing
// Prometheus shows in the answers (and the log), not in the probes.
type alwaysUp struct{}

func (alwaysUp) Healthy() error { return nil }
func (alwaysUp) Ready() error   { return nil }

// MakeSource returns the metrics source: PromQL over --prometheus-url (with
// its authentication), else the scraping collector, with its loop state and
// the function that starts it.
func (a *Adapter) MakeSource(cfg *collector.Config, client kubernetes.Interface, inf informers.SharedInformerFactory, reg prometheus.Registerer) (collector.Reader, adapter.LoopState, func(context.Context), error) {
	if a.PrometheusURL == "" && a.PrometheusClient.URL == "" {
		col, start, err := collector.NewScraping(client, cfg, reg)
		if err != nil {
			return nil, nil, nil, err
		}
		return col, col, start, nil
	}
	if err := a.PrometheusClient.Complete(a.PrometheusURL); err != nil {
		return nil, nil, nil, err
	}
	pc, err := promql.NewClient(a.PrometheusClient)
	if err != nil {
		return nil, nil, nil, err
	}
	o := promql.NewOptions()
	o.Window = a.PrometheusWindow
	ps, err := promql.New(pc, cfg.Rules, inf.Core().V1().Pods().Lister(), o)
	if err != nil {
		return nil, nil, nil, err
	}
	return ps, alwaysUp{}, func(context.Context) {}, nil
}

// MakeDemand returns the watcher of the activator's demand, nil without
// --activator-service.
func (a *Adapter) MakeDemand() (*api.Watcher, string, string, error) {
	if a.ActivatorService == "" {
		return nil, "", "", nil
	}
	ns, name, ok := strings.Cut(a.ActivatorService, "/")
	if !ok || ns == "" || name == "" {
		return nil, "", "", fmt.Errorf("--activator-service %q: want namespace/name", a.ActivatorService)
	}
	return api.NewWatcher(slog.Default()), ns, name, nil
}

// MakeScaler returns the embedded KEDA scaler over src, nil without
// --keda-scaler. It shares the informers' pod lister and the loop's probes.
func (a *Adapter) MakeScaler(client kubernetes.Interface, src collector.Reader, resolver collector.SelectorResolver, inf informers.SharedInformerFactory, loop adapter.LoopState, reg prometheus.Registerer, pending *api.Watcher) (*scaler.Server, error) {
	if !a.KEDAScaler {
		return nil, nil
	}
	cfg := a.ScalerCfg
	cfg.Registerer = reg
	cfg.Pods = scaler.ListerPodCounter{Pods: inf.Core().V1().Pods().Lister()}
	cfg.Logger = slog.Default()
	cfg.Kube = client
	cfg.Healthy, cfg.Ready = loop.Healthy, loop.Ready
	if cfg.Pending == nil && cfg.ActivatorService == "" && pending != nil {
		cfg.Pending = pending // one watcher for both front doors
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("--keda-scaler: %w", errors.Join(errs...))
	}
	return scaler.New(src, resolver, cfg), nil
}

// MakeBurst wraps src with the burst controller's floors and returns its
// start function, with --burst; without it, src unchanged and a start that
// does nothing.
func (a *Adapter) MakeBurst(restCfg *rest.Config, inf informers.SharedInformerFactory, src collector.Reader, resolver collector.SelectorResolver, reg prometheus.Registerer, demand *api.Watcher) (collector.Reader, func(context.Context), error) {
	if !a.Burst {
		return src, func(context.Context) {}, nil
	}
	var opts []burst.Option
	if demand != nil {
		// The activator's arrivals are demand before the pods catch up.
		opts = append(opts, burst.WithArrivals(demand))
	}
	return burst.Setup(a.BurstCfg, restCfg, inf, src, resolver, reg, opts...)
}

// MakeOwnerWatch returns the check of who owns external.metrics.k8s.io, nil
// when external metrics are off.
func (a *Adapter) MakeOwnerWatch(dc dynamic.Interface, reg prometheus.Registerer) *adapter.OwnerWatch {
	if !a.EnableExternal {
		return nil
	}
	return adapter.NewOwnerWatch(dc, adapter.ExternalMetricsAPIService, a.ServiceNamespace, a.ServiceName, reg)
}

// Run composes and serves until ctx ends.
func (a *Adapter) Run(ctx context.Context) error {
	cfg, err := collector.LoadConfig(a.ConfigPath)
	if err != nil {
		return err
	}
	restCfg, err := a.ClientConfig()
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
	inf, err := a.Informers()
	if err != nil {
		return err
	}
	resolver := collector.NewListerResolver(inf)
	src, loop, start, err := a.MakeSource(cfg, client, inf, reg)
	if err != nil {
		return err
	}
	demand, demandNS, demandName, err := a.MakeDemand()
	if err != nil {
		return err
	}
	src, startBurst, err := a.MakeBurst(restCfg, inf, src, resolver, reg, demand)
	if err != nil {
		return err
	}
	prov := adapter.NewProvider(src, resolver, reg)
	if demand != nil {
		prov.WithDemand(demand)
	}
	a.WithCustomMetrics(prov)
	if a.EnableExternal {
		a.WithExternalMetrics(prov)
	}
	if err := cmmetrics.RegisterMetrics(legacyregistry.Register); err != nil {
		return fmt.Errorf("registering API metrics: %w", err)
	}
	srv, err := a.Server()
	if err != nil {
		return err
	}
	if err := adapter.AddChecks(srv.GenericAPIServer, loop); err != nil {
		return err
	}
	sc, err := a.MakeScaler(client, src, resolver, inf, loop, reg, demand)
	if err != nil {
		return err
	}
	start(ctx)
	startBurst(ctx)
	if demand != nil {
		if err := demand.Discover(ctx, client, demandNS, demandName); err != nil {
			return err
		}
	}
	if sc != nil {
		go func() {
			// A scaler failure ends the process, so a half-working adapter
			// is never left running.
			if err := sc.ListenAndServe(ctx); err != nil {
				klog.ErrorS(err, "KEDA scaler failed")
				klog.FlushAndExit(klog.ExitFlushTimeout, 1)
			}
		}()
		klog.InfoS("Serving the KEDA external scaler", "address", a.ScalerCfg.Address, "tls", a.ScalerCfg.TLSCertFile != "", "mutualTLS", a.ScalerCfg.ClientCAFile != "")
	}
	// The library builds the factory but leaves starting it to us; start it
	// after every lister (resolver, scaler) has been asked for.
	inf.Start(ctx.Done())
	dc, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("building dynamic client for the APIService check: %w", err)
	}
	if w := a.MakeOwnerWatch(dc, reg); w != nil {
		t := time.NewTicker(OwnerCheckInterval)
		go func() {
			defer t.Stop()
			w.Run(ctx, t.C, LogOwnerEvent)
		}()
	}
	klog.InfoS("Serving", "metrics", src.Metrics(), "externalMetrics", a.EnableExternal, "prometheus", a.PrometheusClient.URL, "prometheusAuth", a.PrometheusClient.Auth())
	if err := srv.GenericAPIServer.PrepareRun().RunWithContext(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// LogOwnerEvent logs an owner check: a warning when another Service owns
// the API, information otherwise.
func LogOwnerEvent(ev adapter.OwnerEvent) {
	o := ev.Owner
	if ev.Warn {
		klog.Warning(ev.Msg)
		return
	}
	klog.InfoS(ev.Msg, "apiService", o.APIService, "server", o.Server(), "ours", o.Ours, "available", o.Available)
}

// Explain prints what a config would serve (`adapter explain`).
func Explain(args []string, w io.Writer) error {
	fs := pflag.NewFlagSet("explain", pflag.ContinueOnError)
	path := fs.String("config", "", "YAML config to explain (empty: defaults)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := collector.LoadConfig(*path)
	if err != nil {
		return err
	}
	if err := cfg.Explain(w); err != nil {
		return err
	}
	_, err = fmt.Fprint(w, `
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
