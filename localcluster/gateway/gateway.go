// Package gateway is the local cluster's ingress, in the place of Istio's
// ingress gateway on EKS: it sends every request, unchanged, to the ready
// endpoints of one Service, the activator's (components/activator), which
// routes /seldon/{namespace}/{name}/... to the models, holds requests at
// zero and wakes workloads. It is the activator package itself with a fixed
// route and holding off (an ingress answers 503 when its backend has no
// ready endpoint, as Envoy does), and retries only requests that provably
// never reached an activator replica (the VirtualService's connect-failure
// retry).
package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/mlscale/mlscale/activator"
)

// ActivatorService is where the gateway sends requests by default.
const ActivatorService = "mlscale/mlscale-activator"

// NewForClient returns the ingress handler for service ("namespace/name"),
// its EndpointSlices followed from an informer started on ctx and synced.
// Its metrics (the activator package's, the service label naming the
// backend) go to reg.
func NewForClient(ctx context.Context, c kubernetes.Interface, reg prometheus.Registerer, service string, log *slog.Logger) (http.Handler, error) {
	ns, _, ok := strings.Cut(service, "/")
	if !ok {
		return nil, fmt.Errorf("gateway backend %q: want namespace/name", service)
	}
	cfg := activator.NewConfig()
	cfg.Fixed = []string{service}
	cfg.Hold.QueueLength = 0
	cfg.Registerer, cfg.Logger = reg, log
	factory := informers.NewSharedInformerFactoryWithOptions(c, 0, informers.WithNamespace(ns))
	a, err := activator.New(factory, cfg)
	if err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	if err := a.WaitForSync(ctx); err != nil {
		return nil, err
	}
	go func() { <-ctx.Done(); a.Close() }()
	return a, nil
}
