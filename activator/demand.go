package activator

import (
	"sort"
	"time"

	"github.com/mlscale/mlscale/activator/api"
)

// arrivals counts a Service's requests (api.Arrivals) over the demand
// window.
type arrivals struct{ *api.Arrivals }

func newArrivals(window time.Duration) *arrivals { return &arrivals{api.NewArrivals(window)} }

func (a *arrivals) add(now time.Time) { a.Add(now) }

// rate is the arrivals in the window ending now, per second.
func (a *arrivals) rate(now time.Time) float64 { return a.Rate(now) }

// Snapshot implements api.Source.
func (a *Activator) Snapshot() api.Snapshot {
	now := time.Now()
	s := api.Snapshot{Replica: a.cfg.Replica, Time: now, WindowSeconds: a.cfg.DemandWindow.Seconds(), RecentWindowSeconds: api.RecentWindow.Seconds()}
	for _, st := range a.table.all() {
		st.mu.Lock()
		held := st.held
		st.mu.Unlock()
		s.Services = append(s.Services, api.Demand{
			Namespace: st.ns, Service: st.name,
			ArrivalsPerSecond:       st.arrivals.rate(now),
			RecentArrivalsPerSecond: st.arrivals.RateOver(now, api.RecentWindow),
			Held:                    int64(held),
			Inflight:                st.inflight.Load(),
			ReadyEndpoints:          max(len(st.endpoints(false)), len(st.endpoints(true))),
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
