package api

import (
	"sync"
	"time"
)

// BucketWidth is the resolution of an arrival rate.
const BucketWidth = 100 * time.Millisecond

// RecentWindow is the short window of RecentArrivalsPerSecond: a step in
// arrivals shows in full within it, where the activator's --demand-window
// (3 s by default) ramps over seconds. Knative keeps a panic window beside
// its stable one for the same reason.
const RecentWindow = time.Second

// Arrivals counts events (requests arriving) in a ring of BucketWidth
// buckets covering a window: a fixed amount of memory whatever the rate.
// It is safe for concurrent use.
type Arrivals struct {
	window time.Duration
	mu     sync.Mutex
	counts []int64
	epochs []int64 // the bucket number each slot holds
}

// NewArrivals returns an empty count over window (rounded down to whole
// buckets, at least one).
func NewArrivals(window time.Duration) *Arrivals {
	window = max(window.Truncate(BucketWidth), BucketWidth)
	n := int(window/BucketWidth) + 1
	return &Arrivals{window: window, counts: make([]int64, n), epochs: make([]int64, n)}
}

// Window is the longest window Rate can measure.
func (a *Arrivals) Window() time.Duration { return a.window }

// Add counts one arrival at now.
func (a *Arrivals) Add(now time.Time) {
	b := now.UnixNano() / int64(BucketWidth)
	i := int(b % int64(len(a.counts)))
	a.mu.Lock()
	if a.epochs[i] != b {
		a.epochs[i], a.counts[i] = b, 0
	}
	a.counts[i]++
	a.mu.Unlock()
}

// Rate is the arrivals per second in the window ending now.
func (a *Arrivals) Rate(now time.Time) float64 { return a.RateOver(now, a.window) }

// RateOver is the arrivals per second over the last w (whole buckets,
// between one bucket and Window) ending now. The current, partial bucket
// counts, and the oldest bucket with it would make the window one bucket
// too long, so that one is left out: a step shows in the first bucket.
func (a *Arrivals) RateOver(now time.Time, w time.Duration) float64 {
	w = min(max(w.Truncate(BucketWidth), BucketWidth), a.window)
	k := int64(w / BucketWidth)
	b := now.UnixNano() / int64(BucketWidth)
	var sum int64
	a.mu.Lock()
	for i, e := range a.epochs {
		if e > b-k && e <= b {
			sum += a.counts[i]
		}
	}
	a.mu.Unlock()
	return float64(sum) / w.Seconds()
}
