package scaler

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/mlscale/mlscale/collector"
)

// fakePod is a pod the fake collector knows: its labels and, per metric, the
// value it serves (absent: not scraped yet).
type fakePod struct {
	Namespace, Name string
	Labels          labels.Set
	Values          map[string]float64
}

// fakeSource is a data-driven stand-in for the collector and its resolver:
// PodValues answers from Pods the way the real collector does (matching
// namespace and selector, ErrNoData when no matching pod has a value), and
// Errs injects failures by metric. It asserts nothing about call order.
type fakeSource struct {
	mu          sync.Mutex
	Served      []string
	Pods        []fakePod
	Errs        map[string]error           // by metric
	Workloads   map[string]labels.Selector // "Kind/ns/name"
	ResolveErrs map[string]error           // "Kind/ns/name"
	// Averaged metrics; AggregateValue sums the others (the real
	// collector pools histograms, which a fake of pod values cannot).
	Averaged map[string]bool
}

func newFakeSource(pods ...fakePod) *fakeSource {
	return &fakeSource{
		Served: []string{"requests_per_second", "predicted_rows_per_second", "batch_size",
			"inflight_requests", "request_duration_p99_seconds", "cpu_usage_cores", "queue_depth"},
		Pods:        pods,
		Errs:        map[string]error{},
		Workloads:   map[string]labels.Selector{},
		ResolveErrs: map[string]error{},
		Averaged:    map[string]bool{"batch_size": true, "request_duration_p99_seconds": true},
	}
}

func (f *fakeSource) AggregateValue(ctx context.Context, metric, namespace string, sel labels.Selector) (collector.Aggregate, error) {
	values, err := f.PodValues(ctx, metric, namespace, sel)
	if err != nil {
		return collector.Aggregate{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	by := collector.AggSum
	if f.Averaged[metric] {
		by = collector.AggMean
	}
	return collector.Combine(by, values), nil
}

func (f *fakeSource) Metrics() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.Served...)
}

func (f *fakeSource) PodValues(_ context.Context, metric, namespace string, sel labels.Selector) ([]collector.PodValue, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.Errs[metric]; err != nil {
		return nil, err
	}
	known := false
	for _, m := range f.Served {
		known = known || m == metric
	}
	if !known {
		return nil, fmt.Errorf("reading %s: %w", metric, collector.ErrUnknownMetric)
	}
	var out []collector.PodValue
	for _, p := range f.Pods {
		if p.Namespace != namespace || !sel.Matches(p.Labels) {
			continue
		}
		if v, ok := p.Values[metric]; ok {
			out = append(out, collector.PodValue{Namespace: p.Namespace, Pod: p.Name, Value: v, Timestamp: time.Now()})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("reading %s in %s: %w", metric, namespace, collector.ErrNoData)
	}
	return out, nil
}

func (f *fakeSource) SelectorFor(_ context.Context, kind, namespace, name string) (labels.Selector, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := kind + "/" + namespace + "/" + name
	if err := f.ResolveErrs[key]; err != nil {
		return nil, err
	}
	sel, ok := f.Workloads[key]
	if !ok {
		return nil, fmt.Errorf("resolving %s: %w", key, collector.ErrWorkloadNotFound)
	}
	return sel, nil
}

func (f *fakeSource) CountPods(_ context.Context, namespace string, sel labels.Selector) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, p := range f.Pods {
		if p.Namespace == namespace && sel.Matches(p.Labels) {
			n++
		}
	}
	return n, nil
}

// set changes one pod's value (or adds the pod).
func (f *fakeSource) set(namespace, pod, metric string, v float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.Pods {
		if f.Pods[i].Namespace == namespace && f.Pods[i].Name == pod {
			f.Pods[i].Values[metric] = v
			return
		}
	}
	panic("set: no pod " + namespace + "/" + pod)
}

func (f *fakeSource) setErr(metric string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Errs[metric] = err
}
