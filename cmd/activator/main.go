// Command activator is the request path in front of the model servers:
// it forwards /seldon/{namespace}/{name}/... (and gRPC with Seldon's
// `seldon`/`namespace` metadata) to the ready endpoints of annotated
// Services, holds requests while a Service has none, scales its workload
// from zero, and streams per-Service demand on the admin port (see package
// activator).
//
//	activator --listen=:8080 --admin-listen=:8081
//
// It prints "listening on HOST:PORT" (proxy) and "admin on HOST:PORT" on
// stdout once the sockets are open; SIGTERM or SIGINT starts the drain.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/activator"
	"github.com/mlscale/mlscale/internal/cli"
)

func main() { cli.Main("activator", run) }

func run(args []string) error {
	fs := cli.FlagSet("activator", "")
	cfg := activator.NewConfig()
	var (
		listen      = fs.String("listen", ":8080", "proxy listen address (HTTP/1.1 and h2c)")
		adminListen = fs.String("admin-listen", ":8081", "admin listen address: /metrics, /ready, /live, /demand")
		kubeconfig  = fs.String("kubeconfig", "", "kubeconfig (empty: in-cluster)")
		namespace   = fs.String("namespace", "", "front only Services in this namespace (empty: every namespace)")
		drainDelay  = fs.Duration("drain-delay", 5*time.Second, "after SIGTERM, keep serving this long with readiness false")
		shutdownTO  = fs.Duration("shutdown-timeout", 25*time.Second, "after the drain delay, wait this long for requests in flight and held")
		noWake      = fs.Bool("no-wake", false, "never scale workloads from zero (hold only; KEDA wakes them)")
	)
	fs.StringVar(&cfg.Replica, "replica", os.Getenv("POD_NAME"), "this replica's name in demand snapshots (default $POD_NAME)")
	fs.IntVar(&cfg.Hold.QueueLength, "queue-length", cfg.Hold.QueueLength, "default hold queue length per Service in this replica (annotation "+activator.AnnotationQueueLength+"; R replicas hold up to R times this)")
	fs.DurationVar(&cfg.Hold.QueueTimeout, "queue-timeout", cfg.Hold.QueueTimeout, "default longest hold per request (annotation "+activator.AnnotationQueueTimeout+")")
	fs.DurationVar(&cfg.RetryAfter, "retry-after", cfg.RetryAfter, "Retry-After of the activator's own 503s")
	fs.IntVar(&cfg.Retries, "retries", cfg.Retries, "more endpoints offered a request that provably never reached one (connect failure); 0: off")
	fs.Int64Var(&cfg.MaxRetryBody, "max-retry-body", cfg.MaxRetryBody, "largest request body kept for a retry; larger ones are streamed and not retried")
	fs.DurationVar(&cfg.DemandWindow, "demand-window", cfg.DemandWindow, "window of the per-Service arrival rate")
	fixed := fs.String("front", "", "front exactly this namespace/name Service and route every request to it, whatever its annotations (an ingress in front of the activator)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *fixed != "" {
		cfg.Fixed = strings.Split(*fixed, ",")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rest, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("building the Kubernetes client config: %w", err)
	}
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return fmt.Errorf("building the Kubernetes client: %w", err)
	}
	if !*noWake {
		dc, err := dynamic.NewForConfig(rest)
		if err != nil {
			return fmt.Errorf("building the dynamic client: %w", err)
		}
		cfg.Scaler = activator.DynamicScaler{Client: dc}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registerer, cfg.Logger = reg, log

	var fopts []informers.SharedInformerOption
	if *namespace != "" {
		fopts = append(fopts, informers.WithNamespace(*namespace))
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, fopts...)
	a, err := activator.New(factory, cfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	admin, err := net.Listen("tcp", *adminListen)
	if err != nil {
		lis.Close()
		return fmt.Errorf("listening on %s: %w", *adminListen, err)
	}
	fmt.Printf("listening on %s\nadmin on %s\n", lis.Addr(), admin.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The informers outlive ctx: held and in-flight requests still follow
	// endpoint changes during the drain.
	informersDone := make(chan struct{})
	defer close(informersDone)
	factory.Start(informersDone)
	return a.Serve(ctx, lis, admin, activator.ServeOptions{DrainDelay: *drainDelay, ShutdownTimeout: *shutdownTO, Gatherer: reg})
}
