package burst

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/scale"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlscale/mlscale/collector"
)

// Option configures Setup.
type Option func(*options)

type options struct{ arrivals ServiceDemandReader }

// WithArrivals reads requests_per_second demand from the activator's
// per-Service arrivals too (EdgeDemand): the higher of the two counts.
func WithArrivals(r ServiceDemandReader) Option { return func(o *options) { o.arrivals = r } }

// Setup wires burst into a process that serves src (the adapter): it returns
// the source to serve instead (src with the bursts' floors) and a start
// function that runs the controller until ctx ends. It registers the HPA
// and pod informers on inf, so call it before inf.Start. The controller reads
// the raw src, never its own floors.
func Setup(cfg Config, restCfg *rest.Config, inf informers.SharedInformerFactory, src collector.Reader, resolver collector.SelectorResolver, reg prometheus.Registerer, opts ...Option) (collector.Reader, func(context.Context), error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("burst: building the Kubernetes client: %w", err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(restCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("burst: building the discovery client: %w", err)
	}
	cached := memory.NewMemCacheClient(disco)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	scales, err := scale.NewForConfig(restCfg, mapper, dynamic.LegacyAPIPathResolverFunc, scale.NewDiscoveryScaleKindResolver(cached))
	if err != nil {
		return nil, nil, fmt.Errorf("burst: building the scale client: %w", err)
	}
	broadcaster := record.NewBroadcaster()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "mlscale-burst"})
	floors := NewFloors()
	var demand Demand = CollectorDemand{Source: src}
	var wake func() <-chan struct{}
	if o.arrivals != nil {
		demand = EdgeDemand{Pods: demand, Arrivals: o.arrivals, Services: inf.Core().V1().Services().Lister()}
		// A snapshot pushed by the activator (api.Watcher) is evaluated
		// when it arrives, not at the next tick.
		if u, ok := o.arrivals.(interface{ Updated() <-chan struct{} }); ok {
			wake = u.Updated
		}
	}
	c, err := New(cfg, Deps{
		HPAs:       inf.Autoscaling().V2().HorizontalPodAutoscalers().Lister(),
		Pods:       inf.Core().V1().Pods().Lister(),
		Scales:     scales,
		Mapper:     mapper,
		Resolver:   resolver,
		Demand:     demand,
		Floors:     floors,
		Recorder:   recorder,
		Registerer: reg,
		Wake:       wake,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("burst: %w", err)
	}
	hpaSynced := inf.Autoscaling().V2().HorizontalPodAutoscalers().Informer().HasSynced
	start := func(ctx context.Context) {
		broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
		go func() {
			defer broadcaster.Shutdown()
			for !hpaSynced() {
				select {
				case <-ctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			// A kind the cached discovery did not know yet (a CRD installed
			// after start, such as SeldonDeployment) is looked up again.
			go func() {
				t := time.NewTicker(time.Minute)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						mapper.Reset()
					}
				}
			}()
			klog.InfoS("Burst controller running", "interval", cfg.Interval, "maxAge", cfg.MaxAge, "annotation", Annotation)
			c.Run(ctx)
		}()
	}
	return floors.Wrap(src), start, nil
}
