package burst

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/mlscale/mlscale/collector"
)

// podSource serves fixed pod values (and their sum as the aggregate).
type podSource struct {
	vals []collector.PodValue
	err  error
}

func (s podSource) Metrics() []string { return []string{"rps"} }

func (s podSource) PodValues(context.Context, string, string, labels.Selector) ([]collector.PodValue, error) {
	return s.vals, s.err
}

func (s podSource) AggregateValue(context.Context, string, string, labels.Selector) (collector.Aggregate, error) {
	if s.err != nil {
		return collector.Aggregate{}, s.err
	}
	a := collector.Aggregate{Pods: len(s.vals)}
	for _, v := range s.vals {
		a.Value += v.Value
	}
	return a, nil
}

func TestFloors(t *testing.T) {
	now := base
	f := NewFloors()
	f.now = func() time.Time { return now }
	iris := labels.SelectorFromSet(labels.Set{"app": "iris"})
	other := labels.SelectorFromSet(labels.Set{"app": "other"})
	pods := []collector.PodValue{{Pod: "a", Value: 6}, {Pod: "b", Value: 2}}
	src := f.Wrap(podSource{vals: pods})
	ctx := context.Background()
	values := func(sel labels.Selector) []float64 {
		vs, err := src.PodValues(ctx, "rps", "model", sel)
		if err != nil {
			t.Fatal(err)
		}
		var out []float64
		for _, v := range vs {
			out = append(out, v.Value)
		}
		return out
	}
	if diff := cmp.Diff([]float64{6, 2}, values(iris)); diff != "" {
		t.Fatalf("no floor (-want +got):\n%s", diff)
	}
	f.Set("model", "rps", iris, 24, now.Add(20*time.Second))
	// Scaled up in proportion to sum to the floor: the HPA's average over
	// these pods is the burst's demand over them.
	if diff := cmp.Diff([]float64{18, 6}, values(iris)); diff != "" {
		t.Fatalf("floored pods (-want +got):\n%s", diff)
	}
	if a, _ := src.AggregateValue(ctx, "rps", "model", iris); a.Value != 24 {
		t.Fatalf("floored aggregate %v, want 24", a.Value)
	}
	// Another selector, metric or namespace is untouched.
	if diff := cmp.Diff([]float64{6, 2}, values(other)); diff != "" {
		t.Fatalf("other selector (-want +got):\n%s", diff)
	}
	if a, _ := src.AggregateValue(ctx, "rps", "elsewhere", iris); a.Value != 8 {
		t.Fatalf("other namespace %v, want 8", a.Value)
	}
	// A lower floor does not replace a higher one in force; a higher does.
	f.Set("model", "rps", iris, 10, now.Add(30*time.Second))
	if v, _ := f.Get("model", "rps", iris); v != 24 {
		t.Fatalf("floor %v after a lower one, want 24", v)
	}
	// Demand above the floor is served as it is.
	src2 := f.Wrap(podSource{vals: []collector.PodValue{{Pod: "a", Value: 20}, {Pod: "b", Value: 10}}})
	if a, _ := src2.AggregateValue(ctx, "rps", "model", iris); a.Value != 30 {
		t.Fatalf("aggregate above the floor %v, want 30", a.Value)
	}
	// No data stays no data: a floor never invents values.
	src3 := f.Wrap(podSource{err: fmt.Errorf("%w: nothing", collector.ErrNoData)})
	if _, err := src3.PodValues(ctx, "rps", "model", iris); !errors.Is(err, collector.ErrNoData) {
		t.Fatalf("PodValues with no data: %v", err)
	}
	if _, err := src3.AggregateValue(ctx, "rps", "model", iris); !errors.Is(err, collector.ErrNoData) {
		t.Fatalf("AggregateValue with no data: %v", err)
	}
	// Zero on every pod: the floor is shared evenly.
	src4 := f.Wrap(podSource{vals: []collector.PodValue{{Pod: "a"}, {Pod: "b"}}})
	if vs, _ := src4.PodValues(ctx, "rps", "model", iris); vs[0].Value != 12 || vs[1].Value != 12 {
		t.Fatalf("zero pods floored to %+v, want 12 each", vs)
	}
	// Extended to the later deadline, then gone.
	now = now.Add(25 * time.Second)
	if v, ok := f.Get("model", "rps", iris); !ok || v != 24 {
		t.Fatalf("at 25 s: %v %v, want 24 until 30 s", v, ok)
	}
	now = now.Add(5 * time.Second)
	if _, ok := f.Get("model", "rps", iris); ok {
		t.Fatal("floor in force after its deadline")
	}
	if diff := cmp.Diff([]float64{6, 2}, values(iris)); diff != "" {
		t.Fatalf("after the deadline (-want +got):\n%s", diff)
	}
	// The source's own pods are never modified in place.
	if pods[0].Value != 6 {
		t.Fatalf("source values modified: %+v", pods)
	}
}
