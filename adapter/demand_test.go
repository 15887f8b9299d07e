package adapter

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/mlscale/mlscale/activator/api"
	"github.com/mlscale/mlscale/collector"
)

// noPods is a Source with the default metric names and no pod at all: the
// workload is at zero.
type noPods struct{}

func (noPods) Metrics() []string { return []string{"requests_per_second"} }
func (noPods) PodValues(context.Context, string, string, labels.Selector) ([]collector.PodValue, error) {
	return nil, fmt.Errorf("no pods: %w", collector.ErrNoData)
}
func (noPods) AggregateValue(context.Context, string, string, labels.Selector) (collector.Aggregate, error) {
	return collector.Aggregate{}, fmt.Errorf("no pods: %w", collector.ErrNoData)
}

// replica is one activator replica's demand stream on loopback.
type replica struct {
	demand []api.Demand
	ch     chan struct{}
}

func (r *replica) Snapshot() api.Snapshot {
	return api.Snapshot{Replica: "r", Time: time.Now(), WindowSeconds: 3, Services: r.demand}
}
func (r *replica) Changed() <-chan struct{} { return r.ch }

// The activator's demand is served as an Object metric on the Service while
// the workload has no pod: read from two real replica streams through the
// watcher the adapter runs, summed.
func TestServiceDemandAtZeroPods(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	var urls []string
	for _, d := range []api.Demand{
		{Namespace: "model", Service: "iris", ArrivalsPerSecond: 0.5, Held: 2},
		{Namespace: "model", Service: "iris", ArrivalsPerSecond: 1.5, Held: 1, Inflight: 4},
	} {
		srv := httptest.NewServer(api.Handler(&replica{demand: []api.Demand{d}, ch: make(chan struct{})}, done))
		defer srv.Close()
		urls = append(urls, srv.URL+api.Path)
	}
	w := api.NewWatcher(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.Set(ctx, urls)
	deadline := time.Now().Add(10 * time.Second)
	for len(w.Replicas()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the watcher never saw both replicas")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p := NewProvider(noPods{}, nil, prometheus.NewRegistry()).WithDemand(w)

	tests := []struct {
		metric, service string
		want            float64
		notFound        bool
	}{
		{metric: "activator_arrivals_per_second", service: "iris", want: 2},
		{metric: "activator_held_requests", service: "iris", want: 3},
		{metric: "activator_inflight_requests", service: "iris", want: 4},
		{metric: "activator_concurrency", service: "iris", want: 7},
		// Not fronted: unknown, never a zero that would scale to zero.
		{metric: "activator_concurrency", service: "typo", notFound: true},
	}
	for _, tc := range tests {
		t.Run(tc.metric+"/"+tc.service, func(t *testing.T) {
			mv, err := p.GetMetricByName(ctx, types.NamespacedName{Namespace: "model", Name: tc.service},
				provider.CustomMetricInfo{GroupResource: ServicesResource, Namespaced: true, Metric: tc.metric}, labels.Everything())
			if tc.notFound {
				if !apierrors.IsNotFound(err) {
					t.Fatalf("got %v, %v; want a NotFound", mv, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if mv.WindowSeconds == nil || *mv.WindowSeconds != 3 {
				t.Errorf("windowSeconds %v, want the replicas' 3", mv.WindowSeconds)
			}
			if got := mv.Value.AsApproximateFloat64(); got != tc.want || mv.DescribedObject.Kind != "Service" || mv.DescribedObject.Name != tc.service {
				t.Errorf("got %v on %+v, want %v on Service %s", got, mv.DescribedObject, tc.want, tc.service)
			}
		})
	}
	// Listed once per demand metric, on services only.
	n := 0
	for _, info := range p.ListAllMetrics() {
		if _, ok := DemandMetrics[info.Metric]; ok {
			n++
			if info.GroupResource != ServicesResource {
				t.Errorf("demand metric listed on %s", info.GroupResource)
			}
		}
	}
	if n != len(DemandMetrics) {
		t.Errorf("%d demand metrics listed, want %d", n, len(DemandMetrics))
	}
}
