package burst

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/mlscale/mlscale/collector"
)

// Floors is the hand-over from a burst to the HPA. A burst scales to what
// the HPA's formula gives for the demand it read; the HPA computes at its next
// sync from whatever the adapter serves then. The served value lags behind a
// step (the collector's window still fills) and new pods spread the load, so
// without a floor the HPA could compute fewer replicas than the burst chose
// and, with its own earlier recommendations lower still, scale back down:
// a flap. So for a while after a burst the adapter serves, for exactly the
// metric, namespace and pod selector the burst read, at least the demand the
// burst acted on: the sum over the pods (PodValues, scaled up in proportion)
// or the aggregate (AggregateValue). The HPA then computes the burst's count
// (or more, if demand rose further), records it as its recommendation, and
// its scale-down stabilization keeps it.
//
// A floor never invents data: with no fresh value for the pods it serves
// "no data" as before, and it ends at its deadline.
type Floors struct {
	mu sync.Mutex
	m  map[floorKey]floor
	// now is the clock (tests).
	now func() time.Time
}

type floorKey struct{ namespace, metric, selector string }

type floor struct {
	value float64
	until time.Time
}

// NewFloors returns an empty set.
func NewFloors() *Floors { return &Floors{m: map[floorKey]floor{}, now: time.Now} }

// Set serves at least value for metric over the pods sel picks in namespace
// until until. A higher floor for the same key replaces a lower one; a lower
// one only extends nothing.
func (f *Floors) Set(namespace, metric string, sel labels.Selector, value float64, until time.Time) {
	k := floorKey{namespace, metric, selString(sel)}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.m[k]; ok && f.now().Before(old.until) && old.value >= value {
		if until.After(old.until) {
			old.until = until
			f.m[k] = old
		}
		return
	}
	f.m[k] = floor{value, until}
}

// Get returns the floor in force for the key, if any.
func (f *Floors) Get(namespace, metric string, sel labels.Selector) (float64, bool) {
	k := floorKey{namespace, metric, selString(sel)}
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, ok := f.m[k]
	if !ok {
		return 0, false
	}
	if !f.now().Before(fl.until) {
		delete(f.m, k)
		return 0, false
	}
	return fl.value, true
}

func selString(sel labels.Selector) string {
	if sel == nil {
		return ""
	}
	return sel.String()
}

// Wrap returns src with the floors applied: what the adapter serves once
// burst is wired in.
func (f *Floors) Wrap(src collector.Reader) collector.Reader { return &floored{src, f} }

type floored struct {
	collector.Reader
	f *Floors
}

func (s *floored) PodValues(ctx context.Context, metric, namespace string, sel labels.Selector) ([]collector.PodValue, error) {
	vs, err := s.Reader.PodValues(ctx, metric, namespace, sel)
	if err != nil || len(vs) == 0 {
		return vs, err
	}
	fl, ok := s.f.Get(namespace, metric, sel)
	if !ok {
		return vs, nil
	}
	sum := 0.0
	for _, v := range vs {
		sum += v.Value
	}
	if sum >= fl {
		return vs, nil
	}
	out := make([]collector.PodValue, len(vs))
	copy(out, vs)
	for i := range out {
		if sum > 0 {
			out[i].Value *= fl / sum
		} else {
			out[i].Value = fl / float64(len(out))
		}
	}
	return out, nil
}

func (s *floored) AggregateValue(ctx context.Context, metric, namespace string, sel labels.Selector) (collector.Aggregate, error) {
	a, err := s.Reader.AggregateValue(ctx, metric, namespace, sel)
	if err != nil {
		return a, err
	}
	if fl, ok := s.f.Get(namespace, metric, sel); ok && a.Value < fl {
		a.Value = fl
	}
	return a, nil
}
