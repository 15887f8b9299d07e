// Command localcluster builds and runs mlscale's local Kubernetes cluster:
// the real control plane on this machine's loopback, a node agent that runs
// pods as local processes, metrics-server, and a gateway that sends every
// request to the activator's Service, as Istio's ingress does on EKS.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mlscale/mlscale/localcluster"
	"github.com/mlscale/mlscale/localcluster/build"
	"github.com/mlscale/mlscale/localcluster/controlplane"
	"github.com/mlscale/mlscale/localcluster/node"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage: localcluster <command> [flags]

commands:
  build     build the pinned Kubernetes components into the cache (once)
  up        start the local cluster in the foreground (Ctrl-C stops it)
  kubectl   run the cached kubectl against the running cluster

Run "localcluster <command> -h" for a command's flags.
`)
}

func main() {
	// A container's mount-namespace helper is this binary re-executed.
	node.MaybeRunHelper()
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "build":
		err = runBuild(ctx, os.Args[2:])
	case "up":
		err = runUp(ctx, os.Args[2:])
	case "kubectl":
		err = runKubectl(ctx, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func runBuild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	cache := fs.String("cache", build.DefaultCacheDir(), "cache directory for the built components ($MLSCALE_CACHE)")
	nice := fs.Int("nice", 10, "nice level of the compiler (0: none)")
	with := fs.String("with", "", "extra components, comma-separated: keda (operator + metrics API server), prometheus-adapter")
	fs.Parse(args)
	start := time.Now()
	b := &build.Builder{CacheDir: *cache, Nice: *nice, Log: os.Stderr}
	bins, err := b.Build(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("kube-apiserver          %s\nkube-controller-manager %s\nkube-scheduler          %s\nkubectl                 %s\netcd                    %s\nmetrics-server          %s\n",
		bins.APIServer, bins.ControllerManager, bins.Scheduler, bins.Kubectl, bins.Etcd, bins.MetricsServer)
	for _, x := range strings.Split(*with, ",") {
		switch strings.TrimSpace(x) {
		case "":
		case "keda":
			ex, err := b.BuildKEDA(ctx)
			if err != nil {
				return err
			}
			fmt.Printf("keda-operator           %s\nkeda-adapter            %s\n", ex.KEDAOperator, ex.KEDAAdapter)
		case "prometheus-adapter":
			ex, err := b.BuildPrometheusAdapter(ctx)
			if err != nil {
				return err
			}
			fmt.Printf("prometheus-adapter      %s\n", ex.PrometheusAdapter)
		default:
			return fmt.Errorf("build --with: unknown component %q (known: keda, prometheus-adapter)", x)
		}
	}
	fmt.Printf("(%s)\n", time.Since(start).Round(time.Second))
	return nil
}

type imageFlags node.ImageMap

func (f *imageFlags) String() string { return fmt.Sprint(*f) }
func (f *imageFlags) Set(s string) error {
	r, err := node.ParseImageRule(s)
	if err != nil {
		return err
	}
	*f = append(*f, r)
	return nil
}

func runUp(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	cache := fs.String("cache", build.DefaultCacheDir(), "cache directory for the built components ($MLSCALE_CACHE)")
	def := controlplane.DefaultOptions(*cache)
	state := fs.String("state-dir", "", "state directory: certificates, kubeconfigs, etcd data, logs (default CACHE/run; wiped at start)")
	gw := fs.String("gateway", "127.0.0.1:8080", "gateway listen address")
	repo := fs.String("repo", ".", "repository root: every pod's working directory")
	bin := fs.String("bin", "bin", "directory of `make build`'s binaries (image ghcr.io/mlscale/*)")
	cpus := fs.Int("node-cpus", 16, "CPU capacity the node advertises to the scheduler")
	hpaSync := fs.Duration("hpa-sync-period", 0, "kube-controller-manager --horizontal-pod-autoscaler-sync-period (0: Kubernetes' default, 15s)")
	noMS := fs.Bool("no-metrics-server", false, "do not deploy metrics-server")
	keda := fs.Bool("keda", false, "also install KEDA "+build.KEDAVersion+" (operator + metrics API server, built on first use)")
	var images imageFlags
	fs.Var(&images, "image", "map an image prefix to a local program: PREFIX=PATH, PATH ending in / for a directory (repeatable)")
	fs.Parse(args)
	if *state == "" {
		*state = filepath.Join(*cache, "run")
	}
	repoAbs, err := filepath.Abs(*repo)
	if err != nil {
		return err
	}
	binAbs, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	o := def
	o.StateDir, o.Log, o.HPASyncPeriod = *state, os.Stderr, *hpaSync
	return localcluster.Up(ctx, localcluster.UpOptions{
		Options: o, CacheDir: *cache, GatewayAddr: *gw, Images: node.ImageMap(images),
		RepoDir: repoAbs, RepoBin: binAbs, KubeletPort: 10250, NodeCPUs: *cpus,
		SkipMetricsServer: *noMS, KEDA: *keda,
	})
}

// runKubectl runs the cached kubectl with the running cluster's admin
// kubeconfig.
func runKubectl(ctx context.Context, args []string) error {
	cache := build.DefaultCacheDir()
	b := &build.Builder{CacheDir: cache}
	bins, ok := b.Cached()
	if !ok {
		return fmt.Errorf("kubectl is not built yet: run `make cluster-build`")
	}
	kc := filepath.Join(cache, "run", "pki", "admin.kubeconfig")
	if data, err := os.ReadFile(filepath.Join(cache, "run", localcluster.ReadyFile)); err == nil {
		kc = strings.TrimSpace(string(data))
	}
	cmd := exec.CommandContext(ctx, bins.Kubectl, append([]string{"--kubeconfig", kc}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}
