// Package activator is the request path in front of model servers: a
// reverse proxy that forwards to a Service's ready endpoints (least
// outstanding requests), holds requests while the Service has none (a
// bounded queue per Service, released the moment an endpoint is Ready),
// wakes the workload by scaling it from 0 to 1, and reports each Service's
// demand (arrivals per second, held, in flight) over activator/api.
//
// How it joins the path: always (KEDA http-add-on's interceptor), not only
// at zero (Knative's activator, which becomes the Service's endpoints while
// no pod is ready). Reasons:
//   - Demand. The arrivals it counts are the only demand signal that exists
//     while pods are saturated or absent (burst scaling builds on it); an
//     activator that leaves the path at one pod sees nothing then.
//   - Routing. Requests reach it as /seldon/{namespace}/{name}/..., the path
//     Istio's ingress already uses, so it knows which Service a request is
//     for. In Knative's design the activator receives requests addressed to
//     the model's Service and must learn the target from headers its own
//     ingress adds; a third-party ingress (Seldon's VirtualService, a plain
//     Istio route) adds none.
//   - Ownership. Nothing writes EndpointSlices for a Service it does not
//     own, so Seldon's operator, the endpointslice controller and the
//     activator never race over one object.
//
// The cost is one more proxy hop on every request, measured by `make
// bench-activator`. Deployments and SeldonDeployments are fronted alike: a
// Service annotated activator.mlscale.io/enabled=true selects the pods, and
// activator.mlscale.io/scale-target names the workload to wake.
package activator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// Config configures an Activator.
type Config struct {
	// Replica names this replica in demand snapshots (its pod name).
	Replica string
	// Hold is the default HoldPolicy (per-Service annotations override it).
	Hold HoldPolicy
	// RetryAfter is what 503s tell clients to wait.
	RetryAfter time.Duration
	// Retries is how many more endpoints a request that provably never
	// reached a pod (connection refused, an idle connection closed by a
	// draining server) is offered to; 0 turns retries off. Only bodies of
	// at most MaxRetryBody bytes are kept for a retry.
	Retries      int
	MaxRetryBody int64
	// DemandWindow is the window of the arrival rate.
	DemandWindow time.Duration
	// Fixed fronts exactly these "namespace/name" Services instead of the
	// annotated ones, and routes every request to the first (the local
	// cluster's ingress, in front of the activator's own Service).
	Fixed []string
	// Registerer gets the activator's metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Scaler wakes workloads; nil never wakes.
	Scaler Scaler
	// NetHTTPTransport forwards HTTP/1.1 with net/http's Transport instead
	// of the activator's own pooled, same-goroutine one (h1Transport).
	NetHTTPTransport bool
}

// Defaults.
const (
	DefaultRetryAfter   = time.Second
	DefaultRetries      = 2
	DefaultMaxRetryBody = 4 << 20
	DefaultDemandWindow = 3 * time.Second
)

// NewConfig returns the defaults.
func NewConfig() Config {
	return Config{
		Hold:         HoldPolicy{QueueLength: DefaultQueueLength, QueueTimeout: DefaultQueueTimeout},
		RetryAfter:   DefaultRetryAfter,
		Retries:      DefaultRetries,
		MaxRetryBody: DefaultMaxRetryBody,
		DemandWindow: DefaultDemandWindow,
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() []error {
	var errs []error
	if c.Hold.QueueLength < 0 || c.Hold.QueueLength > MaxQueueLength {
		errs = append(errs, fmt.Errorf("queue-length: must be 0 to %d, got %d", MaxQueueLength, c.Hold.QueueLength))
	}
	if c.Hold.QueueTimeout <= 0 || c.Hold.QueueTimeout > MaxQueueTimeout {
		errs = append(errs, fmt.Errorf("queue-timeout: must be above 0 and at most %s, got %s", MaxQueueTimeout, c.Hold.QueueTimeout))
	}
	if c.RetryAfter < time.Second {
		errs = append(errs, fmt.Errorf("retry-after: must be at least 1s (Retry-After counts whole seconds), got %s", c.RetryAfter))
	}
	if c.Retries < 0 {
		errs = append(errs, fmt.Errorf("retries: must be >= 0, got %d", c.Retries))
	}
	if c.MaxRetryBody < 0 {
		errs = append(errs, fmt.Errorf("max-retry-body: must be >= 0, got %d", c.MaxRetryBody))
	}
	if c.DemandWindow < time.Second {
		errs = append(errs, fmt.Errorf("demand-window: must be at least 1s, got %s", c.DemandWindow))
	}
	return errs
}

// Activator is an http.Handler. Create it with New.
type Activator struct {
	cfg    Config
	table  *table
	m      *metrics
	log    *slog.Logger
	scaler Scaler
	proxy  *httputil.ReverseProxy
	h1, h2 http.RoundTripper
	pooled *h1Transport // the HTTP/1.1 fast path's pool; nil with NetHTTPTransport
	done   chan struct{}

	changeMu sync.Mutex
	changed  chan struct{}
}

// New builds an activator over factory's informers (start the factory
// afterwards, then wait for Synced).
func New(factory informers.SharedInformerFactory, cfg Config) (*Activator, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	a := &Activator{
		cfg: cfg, m: newMetrics(cfg.Registerer), log: cfg.Logger, scaler: cfg.Scaler,
		done: make(chan struct{}), changed: make(chan struct{}),
	}
	if a.scaler == nil {
		a.scaler = noScaler{}
	}
	dialer := &net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}
	a.h1 = &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     60 * time.Second,
		// The body passes through as the pod sent it.
		DisableCompression: true,
	}
	var pooled *h1Transport
	if !cfg.NetHTTPTransport {
		pooled = newH1Transport(dialer.DialContext, a.h1, 256)
		a.h1 = pooled
	}
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	a.h2 = &http.Transport{DialContext: dialer.DialContext, Protocols: &h2c, IdleConnTimeout: 60 * time.Second, DisableCompression: true}
	a.proxy = &httputil.ReverseProxy{
		// The path was rewritten in ServeHTTP; the endpoint is picked in
		// the round trip. The client's Host passes through, as Envoy's.
		Rewrite:      func(pr *httputil.ProxyRequest) { pr.SetXForwarded() },
		Transport:    roundTripper{a},
		ErrorHandler: a.proxyError,
		// No periodic flush: ReverseProxy flushes every write of an answer
		// without a Content-Length (gRPC streams, chunked answers) by
		// itself, and flushing a sized answer's header and body apart
		// costs a write syscall per request.
		// ReverseProxy allocates a 32 KiB copy buffer per request without.
		BufferPool: bufferPool{},
	}
	t, err := newTable(factory, cfg.Fixed, cfg.Hold, cfg.DemandWindow, cfg.Logger, a.notifyChange)
	if err != nil {
		return nil, err
	}
	if pooled != nil {
		t.onGone = pooled.closeAddr
	}
	a.pooled = pooled
	a.table = t
	return a, nil
}

// Synced reports whether the informer caches have synced.
func (a *Activator) Synced() bool {
	for _, s := range a.table.synced {
		if !s() {
			return false
		}
	}
	return true
}

// WaitForSync blocks until the caches have synced or ctx ends.
func (a *Activator) WaitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), a.table.synced...) {
		return errors.New("activator: informer caches did not sync")
	}
	return nil
}

// Close stops the wake loops.
func (a *Activator) Close() {
	select {
	case <-a.done:
	default:
		close(a.done)
	}
}

type noScaler struct{}

func (noScaler) ScaleFromZero(context.Context, string, *ScaleTarget) (bool, error) {
	return false, errors.New("no scaler configured")
}

// route finds the Service a request is for: /seldon/{namespace}/{name}/...
// (the Istio/Seldon REST path, forwarded without the prefix), or for gRPC,
// Seldon's `seldon` and `namespace` headers (forwarded unchanged). With
// Fixed, every request goes to the first fixed Service unchanged. prefix
// is the length of the path's part that is not forwarded; key is a
// substring of the path where it can be, so routing does not allocate.
func (a *Activator) route(r *http.Request) (key string, prefix int, grpc bool, err error) {
	grpc = r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
	if len(a.cfg.Fixed) > 0 {
		return a.cfg.Fixed[0], 0, grpc, nil
	}
	const seldon = "/seldon/"
	if tail, ok := strings.CutPrefix(r.URL.Path, seldon); ok {
		ns, rest, _ := strings.Cut(tail, "/")
		name, _, _ := strings.Cut(rest, "/")
		if ns == "" || name == "" {
			return "", 0, grpc, errors.New("want /seldon/{namespace}/{name}/...")
		}
		n := len(ns) + 1 + len(name)
		return tail[:n], len(seldon) + n, grpc, nil
	}
	if name, ns := r.Header.Get("seldon"), r.Header.Get("namespace"); grpc && name != "" && ns != "" {
		return ns + "/" + name, 0, true, nil
	}
	if grpc {
		return "", 0, true, errors.New("gRPC requests name their model with the `seldon` and `namespace` metadata, as Seldon Core's ingress routing expects")
	}
	return "", 0, false, errors.New("the activator routes /seldon/{namespace}/{name}/... (REST) and gRPC with `seldon` and `namespace` metadata")
}

type ctxKey struct{}

// forwarding is a request's state between ServeHTTP and the round trip of
// the general path.
type forwarding struct {
	st   *service
	grpc bool
	eps  []*endpoint // from the hold's look; later attempts look again
	body []byte      // kept for a retry; nil when not replayable
	ep   *endpoint   // the endpoint the answer came from
}

// ServeHTTP routes, holds and forwards one request.
func (a *Activator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, prefix, grpc, err := a.route(r)
	if err != nil {
		http.Error(w, "activator: not found: "+err.Error(), http.StatusNotFound)
		return
	}
	st := a.table.get(key)
	if st == nil {
		http.Error(w, fmt.Sprintf("activator: service %s is not fronted here (annotate it %s=true)", key, AnnotationEnabled), http.StatusNotFound)
		return
	}
	st.arrivals.add(time.Now())
	eps := st.endpoints(grpc)
	// Without a ready endpoint the request is held. A small body is read
	// first: net/http notices a client that goes away only once the body
	// has been read, and a held request whose client left must leave the
	// queue. Larger bodies stay unread while held, so the queue's memory
	// does not grow with them (such a request leaves the queue at its
	// deadline at the latest). With endpoints ready nothing is read ahead.
	var kept *rewindBody
	if len(eps) == 0 {
		if r.ContentLength > 0 && r.ContentLength <= smallBody {
			kept = newRewindBody(r.Body)
			if err := kept.fill(r.ContentLength); err != nil {
				kept.release()
				a.count(st, http.StatusBadRequest)
				http.Error(w, "activator: reading the request body: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		var code int
		if eps, code = a.hold(w, r, st, grpc); code != 0 {
			if kept != nil {
				kept.release()
			}
			a.count(st, code)
			return
		}
	}
	st.inflight.Add(1)
	defer st.inflight.Add(-1)
	if uri, original, ok := a.h1Target(r, prefix); ok && !grpc {
		a.count(st, a.serveH1(w, r, st, eps, uri, original, kept))
		return
	}
	a.forward(w, r, st, eps, grpc, prefix, kept)
}

// forward is the general path (gRPC, h2c, upgrades, bodies of unknown
// length): httputil.ReverseProxy over the transports, endpoints picked in
// the round trip.
func (a *Activator) forward(w http.ResponseWriter, r *http.Request, st *service, eps []*endpoint, grpc bool, prefix int, kept *rewindBody) {
	f := &forwarding{st: st, grpc: grpc, eps: eps}
	if kept != nil {
		// Not returned to the pool: a transport may still read it after
		// the answer.
		f.body = kept.bytes()
	} else if r.ContentLength == 0 {
		f.body = []byte{}
	} else if a.cfg.Retries > 0 && !grpc && r.ContentLength > 0 && r.ContentLength <= a.cfg.MaxRetryBody {
		var err error
		if f.body, err = readBody(r); err != nil {
			a.count(st, http.StatusBadRequest)
			http.Error(w, "activator: reading the request body: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	// A shallow copy: ReverseProxy clones the request (headers and all)
	// once more itself.
	out := r.WithContext(context.WithValue(r.Context(), ctxKey{}, f))
	u := *r.URL
	path := r.URL.Path[prefix:]
	if prefix > 0 && !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u.Path, u.RawPath = path, ""
	u.Scheme, u.Host = "http", st.key // the round trip picks the endpoint
	out.URL = &u
	if prefix > 0 && r.Header.Get("X-Envoy-Original-Path") == "" {
		out.Header.Set("X-Envoy-Original-Path", r.URL.Path)
	}
	if f.body != nil {
		out.Body, out.ContentLength = replay(f.body), int64(len(f.body))
	}
	sw := &statusWriter{ResponseWriter: w}
	a.proxy.ServeHTTP(sw, out)
	a.count(st, sw.status())
}

// count adds one answer to mlscale_activator_requests_total, the counter
// resolved once per Service and code (no label hashing on the hot path).
func (a *Activator) count(st *service, code int) {
	if c, ok := st.counters.Load(code); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	c := a.m.requests.WithLabelValues(st.ns, st.name, strconv.Itoa(code))
	st.counters.Store(code, c)
	c.Inc()
}

var copyBuffers = sync.Pool{New: func() any { return make([]byte, 32<<10) }}

type bufferPool struct{}

func (bufferPool) Get() []byte  { return copyBuffers.Get().([]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(b) } //nolint:staticcheck // a slice header, as httputil.BufferPool's own

// errNoEndpoint: every ready endpoint went away between the hold and the
// round trip (or failed to take the request).
var errNoEndpoint = errors.New("no ready endpoint")

type roundTripper struct{ a *Activator }

// RoundTrip offers the request to the least loaded endpoint, and to up to
// Retries more when it provably never reached the first.
func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	a := rt.a
	f, _ := req.Context().Value(ctxKey{}).(*forwarding)
	if f == nil {
		return nil, errors.New("activator: request without forwarding state")
	}
	tr := a.h1
	if f.grpc {
		tr = a.h2
	}
	eps := f.eps
	var tried []*endpoint
	var lastErr error
	for attempt := 0; attempt <= a.cfg.Retries; attempt++ {
		if attempt > 0 {
			eps = f.st.endpoints(f.grpc)
		}
		ep := leastOutstanding(eps, tried)
		if ep == nil {
			break
		}

		out := *req
		u := *req.URL
		u.Host = ep.addr
		out.URL = &u
		if attempt > 0 {
			out.Body = replay(f.body)
		}
		ep.inflight.Add(1)
		resp, err := tr.RoundTrip(&out)
		if err == nil {
			f.ep = ep
			resp.Body = &doneBody{ReadCloser: resp.Body, ep: ep}
			return resp, nil
		}
		ep.inflight.Add(-1)
		lastErr = err
		reason := undelivered(err)
		if reason != "closed-idle-connection" {
			// A stale pooled connection says nothing about its
			// endpoint: only other failures rule it out for the retry.
			tried = append(tried, ep)
		}
		if reason == "" || f.body == nil || attempt == a.cfg.Retries {
			break
		}
		a.m.retries.WithLabelValues(reason).Inc()
	}
	if lastErr == nil {
		lastErr = errNoEndpoint
	}
	return nil, lastErr
}

// smallBody is the largest body read before a request is held.
const smallBody = 64 << 10

// readBody reads a body of known length (r.ContentLength >= 0).
func readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength == 0 {
		return []byte{}, nil
	}
	b := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, b); err != nil {
		return nil, err
	}
	return b, nil
}

func replay(body []byte) io.ReadCloser {
	if len(body) == 0 {
		return http.NoBody
	}
	return io.NopCloser(bytes.NewReader(body))
}

// doneBody ends an endpoint's in-flight count when ReverseProxy closes the
// answer's body (it always does).
type doneBody struct {
	io.ReadCloser
	ep   *endpoint
	once sync.Once
}

func (b *doneBody) Close() error {
	b.once.Do(func() { b.ep.inflight.Add(-1) })
	return b.ReadCloser.Close()
}

func (a *Activator) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	f, _ := r.Context().Value(ctxKey{}).(*forwarding)
	key := ""
	if f != nil {
		key = f.st.key
	}
	switch {
	case r.Context().Err() != nil:
		w.WriteHeader(statusClientClosed) // the client is gone; only counted
	case errors.Is(err, errNoEndpoint):
		a.refuse(w, fmt.Sprintf("activator: service %s has no ready endpoint that would take the request", key))
	default:
		a.log.Warn("forwarding failed", "service", key, "err", err)
		http.Error(w, fmt.Sprintf("activator: forwarding to service %s failed: %v", key, err), http.StatusBadGateway)
	}
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

// statusWriter records the status ReverseProxy (or its error handler)
// wrote, and passes Flush and the rest through via Unwrap.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	if code == statusClientClosed {
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
