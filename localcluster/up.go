package localcluster

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/localcluster/build"
	"github.com/mlscale/mlscale/localcluster/controlplane"
	"github.com/mlscale/mlscale/localcluster/gateway"
	"github.com/mlscale/mlscale/localcluster/node"
	"github.com/mlscale/mlscale/localcluster/proxy"
)

//go:embed manifests/metrics-server.yaml
var metricsServerManifest []byte

// UpOptions configure a whole local cluster.
type UpOptions struct {
	controlplane.Options
	CacheDir string
	// GatewayAddr is where the gateway listens (default 127.0.0.1:8080).
	GatewayAddr string
	// Images map container images to local programs, on top of the
	// defaults (mlscale's image -> RepoBin, metrics-server -> its build).
	Images node.ImageMap
	// RepoDir is the working directory of every pod; RepoBin holds `make
	// build`'s binaries.
	RepoDir, RepoBin string
	KubeletPort      int
	NodeCPUs         int
	// SkipMetricsServer leaves metrics-server out (a faster start).
	SkipMetricsServer bool
	// KEDA installs KEDA's operator and metrics API server (built on first
	// use) with its CRDs, registered for external.metrics.k8s.io.
	KEDA bool
	// Ready is called once everything is up, with the cluster.
	Ready func(*Cluster)
}

// Cluster is a running local cluster.
type Cluster struct {
	CP         *controlplane.ControlPlane
	Kubeconfig string
	Kubectl    string
	Gateway    string
}

// ReadyFile is written into the state directory once the cluster is up: the
// path of the admin kubeconfig, for scripts and tests waiting on it.
const ReadyFile = "ready"

// Up builds what is missing, starts everything and blocks until ctx ends or
// a component fails; then it tears everything down.
func Up(ctx context.Context, o UpOptions) (err error) {
	b := &build.Builder{CacheDir: o.CacheDir, Nice: 10, Log: o.Log}
	buildAll := b.Build
	if o.SkipMetricsServer {
		buildAll = b.BuildControlPlane
	}
	bins, err := buildAll(ctx)
	if err != nil {
		return err
	}
	cp, err := controlplane.StartControlPlane(ctx, bins, o.Options)
	if err != nil {
		return err
	}
	defer cp.Stop()
	failed := cp.Failed()

	nodeClient, err := clientFor(cp.PKI.NodeKubeconfig)
	if err != nil {
		return err
	}
	podIPs, nodeIP, err := node.PodIPs(o.PodCIDR)
	if err != nil {
		return err
	}
	if nodeIP != o.NodeIP {
		return fmt.Errorf("the node address %s must be the first host of the pod CIDR %s (%s)", o.NodeIP, o.PodCIDR, nodeIP)
	}
	extras := b.ExtraPaths()
	if o.KEDA {
		if extras, err = b.BuildKEDA(ctx); err != nil {
			return err
		}
	}
	images := append(node.ImageMap{
		{Prefix: "ghcr.io/mlscale/", Dir: o.RepoBin},
		{Prefix: "registry.k8s.io/metrics-server/metrics-server", Binary: bins.MetricsServer},
		{Prefix: "ghcr.io/kedacore/keda-metrics-apiserver", Binary: extras.KEDAAdapter},
		{Prefix: "ghcr.io/kedacore/keda:", Binary: extras.KEDAOperator},
		// For `make bench-scaling`: prometheus-adapter as built, and
		// Debian's Prometheus (apt-get install prometheus).
		{Prefix: "registry.k8s.io/prometheus-adapter/prometheus-adapter", Binary: extras.PrometheusAdapter},
		{Prefix: "quay.io/prometheus/prometheus", Binary: "/usr/bin/prometheus"},
	}, o.Images...)
	agent, err := node.New(node.Config{
		NodeName: o.NodeName, NodeIP: o.NodeIP, KubeletPort: o.KubeletPort, PodIPs: podIPs,
		Client: nodeClient, Images: images, WorkDir: o.RepoDir,
		StateDir:    filepath.Join(o.StateDir, "node"),
		ServingCert: cp.PKI.NodeServingCert, ServingKey: cp.PKI.NodeServingKey,
		APIServerHost: o.NodeIP, APIServerPort: o.APIServerPort,
		CPUs: o.NodeCPUs, Log: o.Log,
	})
	if err != nil {
		return err
	}
	agentCtx, stopAgent := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(agentCtx) }()
	// The pods go before the control plane, so their deletion is seen.
	defer func() {
		stopAgent()
		<-agentDone
	}()
	if err := waitNodeReady(ctx, cp.Client, o.NodeName, agentDone); err != nil {
		return err
	}
	o.Logf("node %s registered and Ready", o.NodeName)

	kubectl := bins.Kubectl
	if !o.SkipMetricsServer {
		manifest := filepath.Join(o.StateDir, "metrics-server.yaml")
		if err := os.WriteFile(manifest, metricsServerManifest, 0o644); err != nil {
			return err
		}
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", cp.PKI.AdminKubeconfig, "apply", "-f", manifest).CombinedOutput()
		if err != nil {
			return fmt.Errorf("deploying metrics-server: %w: %s", err, out)
		}
		o.Logf("metrics-server deployed (kube-system/metrics-server)")
	}
	if o.KEDA {
		if err := InstallKEDA(ctx, kubectl, cp.PKI.AdminKubeconfig, extras, filepath.Join(o.StateDir, "keda")); err != nil {
			return err
		}
		o.Logf("KEDA %s deployed (namespace keda: keda-operator, keda-metrics-apiserver; APIService v1beta1.external.metrics.k8s.io)", build.KEDAVersion)
	}

	// Services' cluster IPs (local on lo, see controlplane.DefaultServiceCIDR) work as
	// kube-proxy makes them work: KEDA dials keda-operator.keda.svc and the
	// scaler's Service by name; the pods' /etc/hosts resolves them.
	proxyCtx, stopProxy := context.WithCancel(ctx)
	defer stopProxy()
	pfactory := informers.NewSharedInformerFactory(cp.Client, 0)
	px := proxy.New(pfactory, o.Log)
	pfactory.Start(proxyCtx.Done())
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- px.Run(proxyCtx) }()
	defer func() { stopProxy(); <-proxyDone }()

	reg := prometheus.NewRegistry()
	gwCtx, stopGW := context.WithCancel(ctx)
	defer stopGW()
	// The ingress: everything to the activator's Service (applied with the
	// overlays), as Istio's ingress gateway sends it on EKS.
	gw, err := gateway.NewForClient(gwCtx, cp.Client, reg, gateway.ActivatorService, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return err
	}
	addr := o.GatewayAddr
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("gateway cannot listen on %s, something else is using it: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", gw)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC (h2c) to the activator
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, Protocols: &protocols}
	go func() { _ = srv.Serve(l) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	c := &Cluster{CP: cp, Kubeconfig: cp.PKI.AdminKubeconfig, Kubectl: kubectl, Gateway: "http://" + l.Addr().String()}
	if err := os.WriteFile(filepath.Join(o.StateDir, ReadyFile), []byte(c.Kubeconfig+"\n"), 0o644); err != nil {
		return err
	}
	o.Logf("\nlocal cluster up:\n  export KUBECONFIG=%s\n  %s get pods -A\n  gateway (to the activator): %s/seldon/{namespace}/{service}/...\n  logs: %s\nCtrl-C stops everything.",
		c.Kubeconfig, kubectl, c.Gateway, filepath.Join(o.StateDir, "logs"))
	if o.Ready != nil {
		o.Ready(c)
	}
	select {
	case <-ctx.Done():
		o.Logf("stopping the local cluster")
		return nil
	case p := <-failed:
		return fmt.Errorf("a control-plane component stopped: %w", p.ExitError())
	case err := <-agentDone:
		agentDone <- err
		return fmt.Errorf("the node agent stopped: %v", err)
	}
}

func clientFor(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

func waitNodeReady(ctx context.Context, c kubernetes.Interface, name string, agentDone chan error) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		select {
		case err := <-agentDone:
			agentDone <- err
			return fmt.Errorf("the node agent stopped before its node was Ready: %v", err)
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("node %s not Ready after 60s (last error: %v)", name, err)
			}
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
