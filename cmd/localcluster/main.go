// Command localcluster builds and runs mlscale's local Kubernetes cluster:
// the real control plane on loopback, a node agent that runs pods as local
// processes, and a gateway that routes /seldon/{ns}/{name}/ like Istio does.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mlscale/mlscale/test/cluster"
)

func usage() {
	fmt.Fprintf(os.Stderr, `usage: localcluster <command> [flags]

commands:
  build   build the pinned Kubernetes components into the cache (once)
`)
}

func main() {
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
	cache := fs.String("cache", cluster.DefaultCacheDir(), "cache directory for the built components ($MLSCALE_CACHE)")
	nice := fs.Int("nice", 10, "nice level of the compiler (0: none)")
	fs.Parse(args)
	b := &cluster.Builder{CacheDir: *cache, Nice: *nice, Log: os.Stderr}
	bins, err := b.Build(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("kube-apiserver          %s\nkube-controller-manager %s\nkube-scheduler          %s\nkubectl                 %s\netcd                    %s\nmetrics-server          %s\n",
		bins.APIServer, bins.ControllerManager, bins.Scheduler, bins.Kubectl, bins.Etcd, bins.MetricsServer)
	return nil
}
