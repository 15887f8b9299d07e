package activator

import (
	"sort"
	"sync"
	"time"

	"github.com/mlscale/mlscale/activator/api"
)

// bucketWidth is the resolution of the arrival rate.
const bucketWidth = 100 * time.Millisecond

// arrivals counts requests in a ring of bucketWidth buckets covering a
// window: a fixed amount of memory whatever the rate.
type arrivals struct {
	window time.Duration
	mu     sync.Mutex
	counts []int64
	epochs []int64 // the bucket number each slot holds
}

func newArrivals(window time.Duration) *arrivals {
	n := int(window/bucketWidth) + 1
	return &arrivals{window: window, counts: make([]int64, n), epochs: make([]int64, n)}
}

func (a *arrivals) add(now time.Time) {
	b := now.UnixNano() / int64(bucketWidth)
	i := int(b % int64(len(a.counts)))
	a.mu.Lock()
	if a.epochs[i] != b {
		a.epochs[i], a.counts[i] = b, 0
	}
	a.counts[i]++
	a.mu.Unlock()
}

// rate is the arrivals in the window ending now, per second. The current,
// partial bucket counts, and the oldest bucket with it would make the
// window one bucket too long, so that one is left out.
func (a *arrivals) rate(now time.Time) float64 {
	b := now.UnixNano() / int64(bucketWidth)
	n := int64(len(a.counts))
	var sum int64
	a.mu.Lock()
	for i, e := range a.epochs {
		if e > b-n+1 && e <= b {
			sum += a.counts[i]
		}
	}
	a.mu.Unlock()
	return float64(sum) / a.window.Seconds()
}

// Snapshot implements api.Source.
func (a *Activator) Snapshot() api.Snapshot {
	now := time.Now()
	s := api.Snapshot{Replica: a.cfg.Replica, Time: now, WindowSeconds: a.cfg.DemandWindow.Seconds()}
	for _, st := range a.table.all() {
		st.mu.Lock()
		held := st.held
		st.mu.Unlock()
		s.Services = append(s.Services, api.Demand{
			Namespace: st.ns, Service: st.name,
			ArrivalsPerSecond: st.arrivals.rate(now),
			Held:              int64(held),
			Inflight:          st.inflight.Load(),
			ReadyEndpoints:    max(len(st.endpoints(false)), len(st.endpoints(true))),
		})
	}
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Key() < s.Services[j].Key() })
	return s
}

// Changed implements api.Source.
func (a *Activator) Changed() <-chan struct{} {
	a.changeMu.Lock()
	defer a.changeMu.Unlock()
	return a.changed
}

func (a *Activator) notifyChange() {
	a.changeMu.Lock()
	close(a.changed)
	a.changed = make(chan struct{})
	a.changeMu.Unlock()
}
