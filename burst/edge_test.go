package burst

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mlscale/mlscale/activator/api"
	"github.com/mlscale/mlscale/collector"
)

type arrivals map[string]api.Demand

func (a arrivals) Demand(ns, svc string) (api.Demand, bool) {
	d, ok := a[ns+"/"+svc]
	return d, ok
}

func TestEdgeDemand(t *testing.T) {
	svc := func(name string, sel map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: name}, Spec: corev1.ServiceSpec{Selector: sel}}
	}
	client := fake.NewClientset(
		svc("iris", map[string]string{"app": "iris"}),
		svc("iris-canary", map[string]string{"app": "iris", "track": "canary"}),
		svc("other", map[string]string{"app": "other"}),
	)
	factory := informers.NewSharedInformerFactory(client, 0)
	lister := factory.Core().V1().Services().Lister()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	podsAt := base.Add(-500 * time.Millisecond)
	irisPods := labels.SelectorFromSet(labels.Set{"app": "iris", "pod-template-hash": "abc"})
	tests := []struct {
		name     string
		pods     *demands
		arrivals arrivals
		q        Query
		want     Reading
		wantErr  error
	}{
		{
			// A saturated pod answers 6/s of the 24/s arriving.
			name: "arrivals above the pods' rate", q: Query{Namespace: "model", Metric: "requests_per_second", Selector: irisPods},
			pods:     &demands{m: map[string]Reading{"requests_per_second": {Value: 6, At: podsAt}}},
			arrivals: arrivals{"model/iris": {ArrivalsPerSecond: 24}, "model/other": {ArrivalsPerSecond: 99}, "model/iris-canary": {ArrivalsPerSecond: 50}},
			want:     Reading{Value: 24, At: base.Add(-time.Second)},
		},
		{
			name: "the pods' rate when higher", q: Query{Namespace: "model", Metric: "requests_per_second", Selector: irisPods},
			pods:     &demands{m: map[string]Reading{"requests_per_second": {Value: 30, At: podsAt}}},
			arrivals: arrivals{"model/iris": {ArrivalsPerSecond: 24}},
			want:     Reading{Value: 30, At: podsAt},
		},
		{
			// Before any pod has a value (all new, or at zero) the edge
			// still knows the demand.
			name: "arrivals when the pods have no data", q: Query{Namespace: "model", Metric: "requests_per_second", Selector: irisPods},
			pods:     &demands{m: map[string]Reading{}},
			arrivals: arrivals{"model/iris": {ArrivalsPerSecond: 24}},
			want:     Reading{Value: 24, At: base.Add(-time.Second)},
		},
		{
			name: "not fronted by the activator", q: Query{Namespace: "model", Metric: "requests_per_second", Selector: irisPods},
			pods:     &demands{m: map[string]Reading{}},
			arrivals: arrivals{},
			wantErr:  collector.ErrNoData,
		},
		{
			name: "other metrics are the pods'", q: Query{Namespace: "model", Metric: "cpu_usage_cores", Selector: irisPods},
			pods:     &demands{m: map[string]Reading{"cpu_usage_cores": {Value: 0.4, At: podsAt}}},
			arrivals: arrivals{"model/iris": {ArrivalsPerSecond: 24}},
			want:     Reading{Value: 0.4, At: podsAt},
		},
		{
			// An HPA on the activator's own metric of a Service reads it
			// from the activator, as the adapter serves it.
			name: "the activator's metric on a Service", q: Query{Namespace: "model", Metric: "activator_concurrency", Service: "iris", Selector: labels.SelectorFromSet(labels.Set{"app": "iris"})},
			pods:     &demands{m: map[string]Reading{}},
			arrivals: arrivals{"model/iris": {ArrivalsPerSecond: 24, Held: 3, Inflight: 5}},
			want:     Reading{Value: 8, At: base.Add(-time.Second)},
		},
		{
			name: "the activator's metric on a Service it does not front", q: Query{Namespace: "model", Metric: "activator_arrivals_per_second", Service: "other"},
			pods:     &demands{m: map[string]Reading{}},
			arrivals: arrivals{"model/iris": {ArrivalsPerSecond: 24}},
			wantErr:  collector.ErrNoData,
		},
		{
			// Only the canary Service fronts these pods... and it narrows
			// them, so its arrivals are not the workload's.
			name: "a narrower Service does not count", q: Query{Namespace: "model", Metric: "requests_per_second", Selector: labels.SelectorFromSet(labels.Set{"app": "iris"})},
			pods:     &demands{m: map[string]Reading{"requests_per_second": {Value: 6, At: podsAt}}},
			arrivals: arrivals{"model/iris-canary": {ArrivalsPerSecond: 50}},
			want:     Reading{Value: 6, At: podsAt},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.pods.errs = map[string]error{}
			e := EdgeDemand{Pods: tc.pods, Arrivals: tc.arrivals, Services: lister, Now: func() time.Time { return base }}
			got, err := e.Demand(context.Background(), tc.q)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
