package activator

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// Hold defaults: as KEDA's http-add-on interceptor, a request for a Service
// scaled to zero waits for its first endpoint instead of failing.
const (
	DefaultQueueLength  = 100
	DefaultQueueTimeout = 60 * time.Second
)

// statusClientClosed is what a request whose client went away is counted
// as (nginx's 499); the client never sees it.
const statusClientClosed = 499

// hold waits until st has a ready endpoint for the request's protocol. It
// returns the endpoints to forward to, or 0 endpoints and the status it
// answered the client with. A held request's body is not read while it
// waits: the queue's memory is a goroutine and a connection per request,
// whatever the bodies (Knative's activator buffered them, serving#13583).
func (a *Activator) hold(w http.ResponseWriter, r *http.Request, st *service, grpc bool) ([]*endpoint, int) {
	st.mu.Lock()
	// ready is taken before the endpoints are looked at again: refresh
	// stores the new set, then closes ready, both under st.mu.
	ready := st.ready
	if eps := st.endpoints(grpc); len(eps) > 0 {
		st.mu.Unlock()
		return eps, 0
	}
	p := st.policy
	if p.QueueLength == 0 {
		st.mu.Unlock()
		a.m.outcomes.WithLabelValues(st.ns, st.name, outcomeFull).Inc()
		a.refuse(w, fmt.Sprintf("activator: service %s has no ready endpoint (holding is off: %s=0)", st.key, AnnotationQueueLength))
		return nil, http.StatusServiceUnavailable
	}
	if st.held >= p.QueueLength {
		n := st.held
		st.mu.Unlock()
		a.m.outcomes.WithLabelValues(st.ns, st.name, outcomeFull).Inc()
		a.refuse(w, fmt.Sprintf("activator: hold queue of service %s is full (%d waiting, limit %s=%d): no ready endpoint yet", st.key, n, AnnotationQueueLength, p.QueueLength))
		return nil, http.StatusServiceUnavailable
	}
	st.held++
	wake := p.Target != nil && !st.waking
	if wake {
		st.waking = true
	}
	st.mu.Unlock()
	a.notifyChange()
	if wake {
		go a.wake(st, p.Target)
	}
	gauge := a.m.held.WithLabelValues(st.ns, st.name)
	gauge.Inc()
	start := time.Now()
	outcome, eps := a.wait(r.Context(), st, grpc, ready, p.QueueTimeout)
	st.mu.Lock()
	st.held--
	st.mu.Unlock()
	a.notifyChange()
	gauge.Dec()
	a.m.holdSecs.WithLabelValues(st.ns, st.name).Observe(time.Since(start).Seconds())
	a.m.outcomes.WithLabelValues(st.ns, st.name, outcome).Inc()
	switch outcome {
	case outcomeTimeout:
		a.refuse(w, fmt.Sprintf("activator: no ready endpoint for service %s after waiting %s (limit %s=%s)", st.key, seconds(p.QueueTimeout), AnnotationQueueTimeout, seconds(p.QueueTimeout)))
		return nil, http.StatusServiceUnavailable
	case outcomeCancelled:
		return nil, statusClientClosed
	}
	return eps, 0
}

// refuse answers 503 with Retry-After and a body naming the limit hit.
func (a *Activator) refuse(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(a.cfg.RetryAfter.Seconds()))))
	http.Error(w, msg+"; retry after "+seconds(a.cfg.RetryAfter), http.StatusServiceUnavailable)
}

// wait blocks on the service's broadcast channel until an endpoint is
// ready, the hold times out or the client goes away; released, it returns
// the endpoints it saw.
func (a *Activator) wait(ctx context.Context, st *service, grpc bool, ready chan struct{}, timeout time.Duration) (string, []*endpoint) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return outcomeCancelled, nil
		case <-timer.C:
			return outcomeTimeout, nil
		case <-ready:
		}
		st.mu.Lock()
		ready = st.ready
		eps := st.endpoints(grpc)
		st.mu.Unlock()
		if len(eps) > 0 {
			return outcomeReleased, eps
		}
	}
}

// seconds formats d as "60s" or "0.2s" rather than Duration's "1m0s".
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}
