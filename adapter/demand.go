package adapter

import (
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/mlscale/mlscale/activator/api"
)

// DemandReader is the activator's per-Service demand, summed over its
// replicas (activator/api.Watcher).
type DemandReader interface {
	Demand(namespace, service string) (api.Demand, bool)
}

// DemandMetrics are served on Services from the activator's demand, not
// from pods: they exist while the workload has no pod at all, which an HPA
// with minReplicas 0 needs (an Object metric, target AverageValue, so
// desired = ceil(value / target) whatever the current replicas).
var DemandMetrics = map[string]func(api.Demand) float64{
	// Requests received per second, held and refused ones included.
	"activator_arrivals_per_second": func(d api.Demand) float64 { return d.ArrivalsPerSecond },
	"activator_held_requests":       func(d api.Demand) float64 { return float64(d.Held) },
	"activator_inflight_requests":   func(d api.Demand) float64 { return float64(d.Inflight) },
	// Held plus in flight: Knative's concurrency. One held request makes
	// it 1, so an HPA on it never computes 0 replicas for a waiting request.
	"activator_concurrency": func(d api.Demand) float64 { return float64(d.Held + d.Inflight) },
}

// WithDemand makes p serve DemandMetrics on Services from d.
func (p *Provider) WithDemand(d DemandReader) *Provider {
	p.demand = d
	return p
}

// serviceDemand answers a demand metric on a Service; handled is false for
// any other metric or resource.
func (p *Provider) serviceDemand(name types.NamespacedName, info provider.CustomMetricInfo) (mv *custom_metrics.MetricValue, handled bool, err error) {
	f, ok := DemandMetrics[info.Metric]
	if p.demand == nil || !ok || info.GroupResource != ServicesResource {
		return nil, false, nil
	}
	d, ok := p.demand.Demand(name.Namespace, name.Name)
	if !ok {
		// Not fronted by the activator, or no replica answering: unknown,
		// so the HPA holds its replicas rather than act on a zero.
		return nil, true, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	window := int64(api.Heartbeat / time.Second)
	if w, ok := p.demand.(interface{ Window() time.Duration }); ok && w.Window() > 0 {
		window = int64(w.Window().Round(time.Second) / time.Second)
	}
	return &custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: name.Namespace, Name: name.Name},
		Metric:          custom_metrics.MetricIdentifier{Name: info.Metric},
		Timestamp:       metav1.Now(),
		WindowSeconds:   &window,
		Value:           quantity(f(d)),
	}, true, nil
}

// demandMetricInfos lists the demand metrics (on Services) when served.
func (p *Provider) demandMetricInfos() []provider.CustomMetricInfo {
	if p.demand == nil {
		return nil
	}
	out := make([]provider.CustomMetricInfo, 0, len(DemandMetrics))
	for n := range DemandMetrics {
		out = append(out, provider.CustomMetricInfo{GroupResource: ServicesResource, Namespaced: true, Metric: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metric < out[j].Metric })
	return out
}
