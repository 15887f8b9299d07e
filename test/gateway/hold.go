package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Hold defaults: as KEDA's http-add-on interceptor, a request for a service
// scaled to zero waits for its first endpoint instead of failing.
const (
	DefaultHoldMax     = 100
	DefaultHoldTimeout = 60 * time.Second
	// serviceTTL is how long an idle service stays in QueueHandler's answer
	// (and in memory) after its last request.
	serviceTTL = 10 * time.Minute
)

// Hold outcomes (the `outcome` label of mlscale_gateway_hold_outcomes_total).
const (
	outcomeReleased  = "released"
	outcomeTimeout   = "timeout"
	outcomeFull      = "full"
	outcomeCancelled = "cancelled"
)

// statusClientClosed is what a request whose client went away while held is
// counted as (nginx's 499); the client never sees it.
const statusClientClosed = 499

// service is the gateway's per-service state: the hold queue, the broadcast
// channel its waiters block on, and the requests being forwarded.
type service struct {
	// ready is closed (and replaced) whenever an EndpointSlice of the
	// service is added or updated; guarded by Gateway.mu.
	ready    chan struct{}
	held     int // guarded by Gateway.mu
	lastSeen time.Time
	inflight atomic.Int64
}

type holdMetrics struct {
	held     *prometheus.GaugeVec
	seconds  *prometheus.HistogramVec
	outcomes *prometheus.CounterVec
}

func newHoldMetrics(f promauto.Factory) holdMetrics {
	return holdMetrics{
		held: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlscale_gateway_held_requests", Help: "Requests waiting for a ready endpoint of their service (cold start).",
		}, []string{"namespace", "service"}),
		seconds: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mlscale_gateway_hold_seconds", Help: "Time requests that found no ready endpoint were held, whatever the outcome.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"namespace", "service"}),
		outcomes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_gateway_hold_outcomes_total", Help: "Requests that found no ready endpoint, by outcome (released, timeout, full, cancelled).",
		}, []string{"namespace", "service", "outcome"}),
	}
}

// serviceLocked returns the state of ns/svc, creating it, and marks it seen.
// Call with g.mu held.
func (g *Gateway) serviceLocked(key string) *service {
	s, ok := g.services[key]
	if !ok {
		s = &service{ready: make(chan struct{})}
		g.services[key] = s
	}
	s.lastSeen = time.Now()
	return s
}

// notify wakes the requests held for the service of an added or updated
// EndpointSlice; they re-check its endpoints. The informer has updated its
// indexer before it calls handlers, so they see the new endpoints.
func (g *Gateway) notify(obj any) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	// Even with nobody held yet: a request may have looked at the
	// endpoints just before this update and be about to wait on ready.
	if st, ok := g.services[s.Namespace+"/"+name]; ok {
		close(st.ready)
		st.ready = make(chan struct{})
	}
}

// hold waits until ns/svc has a ready endpoint, for at most HoldTimeout.
// ready is the service's broadcast channel, taken before the endpoints are
// looked at: an endpoint that appears after the look closes it. hold returns
// the endpoints it found and 0 when the request may be forwarded, or else
// the status it answered the client with.
func (g *Gateway) hold(w http.ResponseWriter, r *http.Request, ns, svc string, st *service, ready chan struct{}) ([]string, int) {
	key := ns + "/" + svc
	if eps, err := g.Endpoints(ns, svc); err != nil || len(eps) > 0 || g.HoldTimeout <= 0 {
		return eps, 0
	}
	g.mu.Lock()
	if st.held >= g.HoldMax {
		n := st.held
		g.mu.Unlock()
		g.hm.outcomes.WithLabelValues(ns, svc, outcomeFull).Inc()
		http.Error(w, fmt.Sprintf("hold queue for %s is full (%d waiting): no ready endpoint yet", key, n), http.StatusServiceUnavailable)
		return nil, http.StatusServiceUnavailable
	}
	st.held++
	g.mu.Unlock()
	gauge := g.hm.held.WithLabelValues(ns, svc)
	gauge.Inc()
	start := time.Now()
	outcome, eps := g.wait(r.Context(), ns, svc, st, ready)
	g.mu.Lock()
	st.held--
	g.mu.Unlock()
	gauge.Dec()
	g.hm.seconds.WithLabelValues(ns, svc).Observe(time.Since(start).Seconds())
	g.hm.outcomes.WithLabelValues(ns, svc, outcome).Inc()
	switch outcome {
	case outcomeTimeout:
		http.Error(w, fmt.Sprintf("no ready endpoint for service %s after holding %s", key, seconds(g.HoldTimeout)), http.StatusServiceUnavailable)
		return nil, http.StatusServiceUnavailable
	case outcomeCancelled:
		return nil, statusClientClosed
	}
	return eps, 0
}

// wait blocks on the service's broadcast channel until an endpoint is ready,
// the hold times out or the client goes away; released, it returns the
// endpoints it saw.
func (g *Gateway) wait(ctx context.Context, ns, svc string, st *service, ready chan struct{}) (string, []string) {
	timer := time.NewTimer(g.HoldTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return outcomeCancelled, nil
		case <-timer.C:
			return outcomeTimeout, nil
		case <-ready:
		}
		g.mu.Lock()
		ready = st.ready
		g.mu.Unlock()
		if eps, err := g.Endpoints(ns, svc); err == nil && len(eps) > 0 {
			return outcomeReleased, eps
		}
	}
}

// seconds formats d as "60s" or "0.2s" rather than Duration's "1m0s".
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// QueueCounts is one service's entry in QueueHandler's answer.
type QueueCounts struct {
	// Held requests wait for a ready endpoint.
	Held int `json:"held"`
	// Inflight requests are being forwarded to an endpoint.
	Inflight int64 `json:"inflight"`
}

// Queue returns the counts of every service with requests held or in flight
// or a request in the last ten minutes, by "namespace/service". Services idle
// for longer are forgotten.
func (g *Gateway) Queue() map[string]QueueCounts {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]QueueCounts, len(g.services))
	for key, s := range g.services {
		c := QueueCounts{Held: s.held, Inflight: s.inflight.Load()}
		if c.Held == 0 && c.Inflight == 0 && time.Since(s.lastSeen) > serviceTTL {
			delete(g.services, key)
			continue
		}
		out[key] = c
	}
	return out
}

// QueueHandler serves Queue as JSON, {"model/iris": {"held": 3,
// "inflight": 5}}, like the KEDA http-add-on interceptor's queue endpoint:
// the scaler polls it to wake a workload at zero pods.
func (g *Gateway) QueueHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the queue endpoint answers GET", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(g.Queue())
	})
}
