// Package gateway is the local cluster's ingress: it routes
// /seldon/{namespace}/{name}/... to the ready endpoints of Service
// {namespace}/{name}, as Istio's ingress gateway does for Seldon Core, from
// EndpointSlices it watches, so endpoint changes (scale-out, scale-in, pods
// killed) are followed without dropping requests.
//
// A request for a service with no ready endpoint (scaled to zero) is held,
// as KEDA's http-add-on interceptor does, until an EndpointSlice event shows
// one (HoldMax per service, HoldTimeout each); QueueHandler reports the held
// and in-flight counts per service for the scaler to wake the workload.
package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// maxRetryBody is the largest request body kept for a retry; larger
// requests are forwarded once.
const maxRetryBody = 8 << 20

// Gateway is an http.Handler routing /seldon/{ns}/{name}/...
type Gateway struct {
	slices    cache.Indexer
	synced    cache.InformerSynced
	transport http.RoundTripper
	// Tries is how many endpoints a request that could not be delivered is
	// offered to.
	Tries int
	// HoldMax is how many requests per service may wait for a first ready
	// endpoint (cold start); more are answered 503 at once.
	HoldMax int
	// HoldTimeout is how long a request waits for a ready endpoint before
	// a 503; 0 disables holding (no ready endpoint: 503 at once).
	HoldTimeout time.Duration

	mu       sync.Mutex
	inflight map[string]*atomic.Int64 // by endpoint
	services map[string]*service      // by "namespace/name"
	hm       holdMetrics

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	retries  *prometheus.CounterVec
}

// New creates a gateway over the cluster's EndpointSlices and registers its
// metrics on reg. Start the informer factory afterwards.
func New(factory informers.SharedInformerFactory, reg prometheus.Registerer) (*Gateway, error) {
	inf := factory.Discovery().V1().EndpointSlices().Informer()
	if err := inf.AddIndexers(cache.Indexers{"service": func(obj any) ([]string, error) {
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			return nil, nil
		}
		svc := s.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			return nil, nil
		}
		return []string{s.Namespace + "/" + svc}, nil
	}}); err != nil {
		return nil, fmt.Errorf("indexing EndpointSlices: %w", err)
	}
	f := promauto.With(reg)
	g := &Gateway{
		slices: inf.GetIndexer(), synced: inf.HasSynced, Tries: 3,
		HoldMax: DefaultHoldMax, HoldTimeout: DefaultHoldTimeout,
		services: map[string]*service{},
		hm:       newHoldMetrics(f),
		transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     60 * time.Second,
		},
		inflight: map[string]*atomic.Int64{},
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_gateway_requests_total", Help: "Requests routed by the gateway, by destination service and response code.",
		}, []string{"namespace", "service", "code"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mlscale_gateway_request_duration_seconds", Help: "Time from receiving a request to the end of its response.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"namespace", "service"}),
		retries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_gateway_retries_total", Help: "Requests offered to another endpoint because the first could not take them, by reason.",
		}, []string{"reason"}),
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    g.notify,
		UpdateFunc: func(_, obj any) { g.notify(obj) },
	}); err != nil {
		return nil, fmt.Errorf("watching EndpointSlices: %w", err)
	}
	return g, nil
}

// NewForClient is New with its own informer factory, started on ctx.
func NewForClient(ctx context.Context, c kubernetes.Interface, reg prometheus.Registerer) (*Gateway, error) {
	factory := informers.NewSharedInformerFactory(c, 0)
	g, err := New(factory, reg)
	if err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), g.synced) {
		return nil, errors.New("gateway: EndpointSlices did not sync")
	}
	return g, nil
}

// Endpoints returns the ready, non-terminating endpoints of ns/svc on the
// port named "http" (Istio's convention) or else the first TCP port.
func (g *Gateway) Endpoints(ns, svc string) ([]string, error) {
	objs, err := g.slices.ByIndex("service", ns+"/"+svc)
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	for _, o := range objs {
		s := o.(*discoveryv1.EndpointSlice)
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		port := slicePort(s)
		if port == 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
				continue
			}
			for _, a := range ep.Addresses {
				hp := net.JoinHostPort(a, strconv.Itoa(port))
				if !seen[hp] {
					seen[hp] = true
					out = append(out, hp)
				}
			}
		}
	}
	return out, nil
}

func slicePort(s *discoveryv1.EndpointSlice) int {
	first := 0
	for _, p := range s.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != "TCP") {
			continue
		}
		if p.Name != nil && *p.Name == "http" {
			return int(*p.Port)
		}
		if first == 0 {
			first = int(*p.Port)
		}
	}
	return first
}

// pick chooses the endpoint with fewer requests in flight out of two random
// ones (Envoy's LEAST_REQUEST, Istio's default), skipping those in avoid.
func (g *Gateway) pick(eps []string, avoid map[string]bool) (string, *atomic.Int64) {
	cands := eps[:0:0]
	for _, e := range eps {
		if !avoid[e] {
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return "", nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	counter := func(e string) *atomic.Int64 {
		c, ok := g.inflight[e]
		if !ok {
			c = new(atomic.Int64)
			g.inflight[e] = c
		}
		return c
	}
	a := cands[rand.IntN(len(cands))]
	if len(cands) > 1 {
		b := cands[rand.IntN(len(cands))]
		if counter(b).Load() < counter(a).Load() {
			a = b
		}
	}
	return a, counter(a)
}

// ServeHTTP routes one request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ns, svc, rest, ok := parsePath(r.URL.Path)
	if !ok {
		http.Error(w, "not found: the gateway routes /seldon/{namespace}/{name}/...", http.StatusNotFound)
		return
	}
	g.mu.Lock()
	st := g.serviceLocked(ns + "/" + svc)
	ready := st.ready
	g.mu.Unlock()
	code := http.StatusBadRequest
	body, replayable, err := readBody(r)
	if err != nil {
		http.Error(w, err.Error(), code)
	} else if eps, held := g.hold(w, r, ns, svc, st, ready); held == 0 {
		st.inflight.Add(1)
		code = g.forward(w, r, ns, svc, rest, body, replayable, eps)
		st.inflight.Add(-1)
	} else {
		code = held
	}
	g.requests.WithLabelValues(ns, svc, strconv.Itoa(code)).Inc()
	g.duration.WithLabelValues(ns, svc).Observe(time.Since(start).Seconds())
}

func parsePath(p string) (ns, svc, rest string, ok bool) {
	tail, found := strings.CutPrefix(p, "/seldon/")
	if !found {
		return "", "", "", false
	}
	parts := strings.SplitN(tail, "/", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return "", "", "", false
	}
	rest = "/"
	if len(parts) == 3 {
		rest += parts[2]
	}
	return parts[0], parts[1], rest, true
}

// readBody reads a body of up to maxRetryBody for retries; a larger one is
// left to stream (replayable false). Reading it to the end also lets
// net/http notice a client that goes away while the request is held.
func readBody(r *http.Request) (body []byte, replayable bool, err error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxRetryBody+1))
	if err != nil {
		return nil, false, fmt.Errorf("reading the request body: %w", err)
	}
	if len(data) > maxRetryBody {
		r.Body = readCloser{io.MultiReader(bytes.NewReader(data), r.Body), r.Body}
		return nil, false, nil
	}
	return data, true, nil
}

// forward offers the request to up to Tries endpoints. eps are the
// endpoints hold just looked up (nil: look them up); later attempts look
// again, as endpoints may have changed meanwhile.
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, ns, svc, rest string, body []byte, replayable bool, eps []string) int {
	tried := map[string]bool{}
	var lastErr error
	for attempt := 0; attempt < g.Tries; attempt++ {
		if attempt > 0 || eps == nil {
			var err error
			if eps, err = g.Endpoints(ns, svc); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return http.StatusInternalServerError
			}
		}
		ep, inflight := g.pick(eps, tried)
		if ep == "" {
			if len(eps) == 0 && lastErr == nil {
				msg := fmt.Sprintf("no healthy upstream: service %s/%s has no ready endpoints", ns, svc)
				http.Error(w, msg, http.StatusServiceUnavailable)
				return http.StatusServiceUnavailable
			}
			break
		}
		tried[ep] = true
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.URL.Path, out.URL.RawPath = "http", ep, rest, ""
		out.Host = ep
		out.RequestURI = ""
		if replayable {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.ContentLength = int64(len(body))
			if body == nil {
				out.Body = http.NoBody
			}
		}
		removeHopByHop(out.Header)
		out.Header.Set("X-Forwarded-For", clientIP(r))
		out.Header.Set("X-Envoy-Original-Path", r.URL.Path)
		inflight.Add(1)
		resp, err := g.transport.RoundTrip(out)
		if err != nil {
			inflight.Add(-1)
			lastErr = err
			if reason := undelivered(err); reason != "" && replayable {
				g.retries.WithLabelValues(reason).Inc()
				continue
			}
			break
		}
		defer inflight.Add(-1)
		defer resp.Body.Close()
		removeHopByHop(resp.Header)
		for k, vs := range resp.Header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		return resp.StatusCode
	}
	msg := fmt.Sprintf("upstream connect error for service %s/%s: %v", ns, svc, lastErr)
	http.Error(w, msg, http.StatusServiceUnavailable)
	return http.StatusServiceUnavailable
}

// undelivered says why err proves the request never reached an application
// (so sending it elsewhere cannot run it twice), or "" if it may have.
func undelivered(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return "connect-failure"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "connect-failure"
	}
	// net/http's errServerClosedIdle: the endpoint closed a keep-alive
	// connection before reading the request from it (a draining server).
	if strings.Contains(err.Error(), "server closed idle connection") {
		return "closed-idle-connection"
	}
	return ""
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

type readCloser struct {
	io.Reader
	io.Closer
}

// removeHopByHop drops the headers that describe one connection (RFC 9110
// 7.6.1), so a client's "Connection: close" does not close the gateway's
// pooled connection to the pod, and the pod's does not close the client's.
func removeHopByHop(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
		h.Del(name)
	}
}
