package burst

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/mlscale/mlscale/activator/api"
	"github.com/mlscale/mlscale/adapter"
	"github.com/mlscale/mlscale/collector"
)

// ServiceDemandReader is the activator's per-Service demand summed over its
// replicas (activator/api.Watcher; adapter.DemandReader).
type ServiceDemandReader interface {
	Demand(namespace, service string) (api.Demand, bool)
}

// demandAter is a ServiceDemandReader that also says when its data arrived
// (api.Watcher).
type demandAter interface {
	DemandAt(namespace, service string) (api.Demand, time.Time, bool)
}

// read is r's demand for namespace/service and when it arrived: the
// watcher's receipt time when it says, else now minus api.Heartbeat (the
// watcher keeps only snapshots younger than api.StaleAfter and a stream
// sends one at least every api.Heartbeat).
func read(r ServiceDemandReader, now time.Time, namespace, service string) (api.Demand, time.Time, bool) {
	if a, ok := r.(demandAter); ok {
		return a.DemandAt(namespace, service)
	}
	d, ok := r.Demand(namespace, service)
	return d, now.Add(-api.Heartbeat), ok
}

// arrivalsFor maps a pod metric to the activator's measure of the same
// demand at the edge: requests arriving per second, held and refused ones
// included, which exist before the pods catch up and do not saturate with
// them.
// The higher of the two windows' rates is the demand, as Knative's KPA uses
// its panic window's when that is higher: after a step the recent window
// (api.RecentWindow, 1 s) reads the new rate in full within a second, while
// the activator's demand window (3 s) is still ramping.
var arrivalsFor = map[string]func(api.Demand) float64{
	"requests_per_second": func(d api.Demand) float64 { return max(d.ArrivalsPerSecond, d.RecentArrivalsPerSecond) },
}

// EdgeDemand reads demand from the edge where it can: for a metric in
// arrivalsFor over a workload's pods, the higher of the pods' own value
// (Pods) and the arrivals the activator counts for the Service that selects
// those pods. Everything else, and any workload the activator does not front,
// is Pods' answer. So a step shows at once in the arrivals, and a saturated
// pod that answers 6 of 24 requests a second still reads as 24.
type EdgeDemand struct {
	Pods     Demand
	Arrivals ServiceDemandReader
	Services corelisters.ServiceLister
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Demand implements Demand.
func (e EdgeDemand) Demand(ctx context.Context, q Query) (Reading, error) {
	now := time.Now
	if e.Now != nil {
		now = e.Now
	}
	// The activator's own metrics on a Service (an HPA on
	// activator_arrivals_per_second, say) are what the adapter serves from
	// the same watcher: read them there, not from the pods.
	if f, ok := adapter.DemandMetrics[q.Metric]; ok && q.Service != "" && e.Arrivals != nil {
		d, at, ok := read(e.Arrivals, now(), q.Namespace, q.Service)
		if !ok {
			return Reading{}, fmt.Errorf("%s on service %s/%s: %w: no activator replica reports it", q.Metric, q.Namespace, q.Service, collector.ErrNoData)
		}
		return Reading{Value: f(d), At: at}, nil
	}
	pods, err := e.Pods.Demand(ctx, q)
	f, ok := arrivalsFor[q.Metric]
	if !ok || e.Arrivals == nil || e.Services == nil || q.Selector == nil || q.Selector.Empty() {
		return pods, err
	}
	svcs, lerr := e.Services.Services(q.Namespace).List(labels.Everything())
	if lerr != nil {
		return pods, err
	}
	var edge Reading
	found := false
	for _, s := range svcs {
		if len(s.Spec.Selector) == 0 || !covers(labels.SelectorFromSet(s.Spec.Selector), q.Selector) {
			continue
		}
		d, at, ok := read(e.Arrivals, now(), s.Namespace, s.Name)
		if !ok {
			continue
		}
		if v := f(d); !found || v > edge.Value {
			edge, found = Reading{Value: v, At: at}, true
		}
	}
	if !found {
		return pods, err
	}
	if err != nil || edge.Value > pods.Value {
		return edge, nil
	}
	return pods, nil
}

// covers: every requirement of the Service's selector is one of the
// workload's, so the Service selects at least the workload's pods (a
// Service that narrows them with one more label does not count).
func covers(svc, workload labels.Selector) bool {
	a, _ := svc.Requirements()
	b, _ := workload.Requirements()
	if len(a) == 0 {
		return false
	}
	for _, ra := range a {
		match := false
		for _, rb := range b {
			if ra.Equal(rb) {
				match = true
				break
			}
		}
		if !match {
			return false
		}
	}
	return true
}
