// Package app is the scaler command's composition, as adapter/app is the
// adapter's: a command struct with its flags and one maker per concern (the
// Kubernetes client, the collector, the informer caches the workloads
// resolve from), and Run. cmd/scaler only parses flags and calls Run.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/scaler"
)

// Scaler is the scaler command: its flags and what they compose.
type Scaler struct {
	Config scaler.Config
	// ConfigPath is the collector's YAML config, the adapter's (scrape,
	// discovery, rules), so both serve the same metric names.
	ConfigPath string
	// Kubeconfig; empty means in-cluster.
	Kubeconfig string
}

// New returns the command with its defaults.
func New() *Scaler { return &Scaler{Config: scaler.NewConfig()} }

// AddFlags registers the command's flags on fs.
func (s *Scaler) AddFlags(fs *flag.FlagSet) {
	s.Config.AddFlags(fs, "")
	fs.StringVar(&s.ConfigPath, "config", s.ConfigPath, "collector YAML config, the adapter's: scrape, discovery, rules (empty: defaults)")
	fs.StringVar(&s.Kubeconfig, "kubeconfig", s.Kubeconfig, "kubeconfig (empty: in-cluster)")
}

// MakeClient returns the Kubernetes client of --kubeconfig, or in-cluster.
func (s *Scaler) MakeClient() (kubernetes.Interface, error) {
	rest, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("building the Kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return nil, fmt.Errorf("building the Kubernetes client: %w", err)
	}
	return client, nil
}

// MakeCaches returns the informers workload names resolve from and pods are
// counted with (zero pods is a real zero), from caches: no API call per
// request. ready fails until they have synced.
func (s *Scaler) MakeCaches(client kubernetes.Interface, cfg *collector.Config) (factory informers.SharedInformerFactory, resolver collector.SelectorResolver, pods scaler.PodCounter, ready func() error) {
	var fopts []informers.SharedInformerOption
	if ns := cfg.Discovery.Namespaces; len(ns) == 1 {
		fopts = append(fopts, informers.WithNamespace(ns[0]))
	}
	factory = informers.NewSharedInformerFactoryWithOptions(client, 0, fopts...)
	resolver = collector.NewListerResolver(factory)
	pods = scaler.ListerPodCounter{Pods: factory.Core().V1().Pods().Lister()}
	synced := []cache.InformerSynced{
		factory.Core().V1().Pods().Informer().HasSynced,
		factory.Apps().V1().Deployments().Informer().HasSynced,
		factory.Core().V1().Services().Informer().HasSynced,
	}
	return factory, resolver, pods, func() error {
		for _, s := range synced {
			if !s() {
				return errors.New("workload and pod caches not synced yet")
			}
		}
		return nil
	}
}

// Run composes and serves until ctx ends. Bad flags and configs fail before
// anything touches the cluster.
func (s *Scaler) Run(ctx context.Context) error {
	cfg := s.Config
	if errs := cfg.Validate(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	ccfg, err := collector.LoadConfig(s.ConfigPath)
	if err != nil {
		return err
	}
	client, err := s.MakeClient()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	col, startCol, err := collector.NewScraping(client, ccfg, reg)
	if err != nil {
		return err
	}
	factory, resolver, pods, cachesReady := s.MakeCaches(client, ccfg)
	cfg.Pods = pods
	cfg.Registerer, cfg.Gatherer = reg, reg
	cfg.Kube = client
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.Healthy = col.Healthy
	cfg.Ready = func() error {
		if err := cachesReady(); err != nil {
			return err
		}
		return col.Ready()
	}
	startCol(ctx)
	factory.Start(ctx.Done())
	return scaler.New(col, resolver, cfg).ListenAndServe(ctx)
}
