// Package modelserver serves a Predictor over HTTP the way Seldon Core's
// python wrapper and the Open Inference Protocol (KServe v2, MLServer) do,
// and tells Prometheus how busy it is: requests, rows per request,
// in-flight requests and latency, plus Seldon's executor histogram so
// Seldon's dashboards keep working. On shutdown it drains: readiness turns
// false at once, serving continues for a drain delay while endpoints
// update, then in-flight requests finish.
package modelserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fastjson"
)

// DefaultMaxBodyBytes is the default request body limit: 32 MiB holds
// about a million 4-feature rows of JSON.
const DefaultMaxBodyBytes = 32 << 20

// DefaultShutdownTimeout bounds how long Serve waits for in-flight
// requests after the drain delay.
const DefaultShutdownTimeout = 30 * time.Second

// Options configure a Server. Predictor and ModelName are required.
type Options struct {
	// Predictor evaluates batches of rows. It is called from many
	// goroutines at once.
	Predictor Predictor
	// ModelName is the Open Inference Protocol model name
	// (/v2/models/{name}) and the model label of the mlscale_* series.
	ModelName string
	// ModelVersion, if set, is reported in v2 metadata and answers.
	ModelVersion string
	// Platform is reported in v2 model metadata (e.g. "xgboost").
	Platform string

	// DeploymentName, PredictorName and PredictorVersion label
	// seldon_api_executor_server_requests_seconds as Seldon's executor
	// does (SELDON_DEPLOYMENT_ID and PREDICTOR_ID in a Seldon pod).
	DeploymentName   string
	PredictorName    string
	PredictorVersion string

	// MaxBodyBytes limits request bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// DrainDelay is how long Serve keeps serving after its context is
	// cancelled, with readiness false, so that endpoints and load
	// balancers stop sending before the listener closes (what a preStop
	// sleep does for servers that cannot drain).
	DrainDelay time.Duration
	// ShutdownTimeout bounds the wait for in-flight requests after the
	// drain delay; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// Registry receives the server's metrics and is served at /metrics and
	// /prometheus. nil means a new private registry that also carries the
	// Go and process collectors; an injected registry gets only the
	// server's own series.
	Registry *prometheus.Registry
	// Logger receives request failures and drain progress; nil discards.
	Logger *slog.Logger
}

// Server is the HTTP model server. Create it with New.
type Server struct {
	opts    Options
	nf, no  int
	log     *slog.Logger
	reg     *prometheus.Registry
	m       *metrics
	ready   atomic.Bool
	handler http.Handler

	// Per-protocol series, resolved once: the hot path does no label
	// lookups for successful requests.
	ok       [2]prometheus.Counter
	duration [2]prometheus.Observer
	batch    [2]prometheus.Observer

	// free holds warm per-request scratch space. Not a sync.Pool: every
	// GC empties a sync.Pool, and rebuilding a parser's value cache for a
	// 10,000-row request allocates ~20 MB, which brings the next GC sooner;
	// a bounded free list keeps a few warm ones across GCs.
	free chan *work

	seldonPrefix []byte // {"data":{"names":["t:0",...],
	v2Prefix     []byte // {"model_name":"...","model_version":"..."
	v2Output     []byte // ,"outputs":[{"name":"predict","datatype":"FP32","shape":[
}

// work is the per-request scratch space, kept so that a steady stream
// of requests reuses the body buffer, the parser's value cache, the
// feature and output slices and the answer buffer.
type work struct {
	body []byte
	p    fastjson.Parser
	x    []float32
	out  []float32
	resp []byte
}

// maxPooledBody keeps rare huge requests from pinning their buffers in the
// pool; the 10,000-row requests of the seed's load are about 200 KB.
const maxPooledBody = 4 << 20

// New validates opts and builds a Server, registering its metrics.
func New(opts Options) (*Server, error) {
	if opts.Predictor == nil {
		return nil, errors.New("modelserver: Options.Predictor is nil")
	}
	nf, no := opts.Predictor.NumFeatures(), opts.Predictor.NumOutputs()
	if nf <= 0 || no <= 0 {
		return nil, fmt.Errorf("modelserver: predictor has %d features and %d outputs; both must be positive", nf, no)
	}
	if opts.ModelName == "" || strings.ContainsAny(opts.ModelName, "/?#% ") {
		return nil, fmt.Errorf("modelserver: model name %q must be non-empty and usable in a URL path", opts.ModelName)
	}
	if opts.MaxBodyBytes < 0 || opts.DrainDelay < 0 || opts.ShutdownTimeout < 0 {
		return nil, errors.New("modelserver: MaxBodyBytes, DrainDelay and ShutdownTimeout must not be negative")
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = DefaultShutdownTimeout
	}
	s := &Server{opts: opts, nf: nf, no: no, log: opts.Logger, reg: opts.Registry}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.reg == nil {
		s.reg = newRegistry()
	}
	m, err := newMetrics(s.reg, opts.ModelName)
	if err != nil {
		return nil, fmt.Errorf("modelserver: registering metrics: %w", err)
	}
	s.m = m
	for i, p := range []string{protoSeldon, protoV2} {
		s.ok[i] = m.requests.WithLabelValues(opts.ModelName, p, "200")
		s.duration[i] = m.duration.WithLabelValues(opts.ModelName, p)
		s.batch[i] = m.batch.WithLabelValues(opts.ModelName, p)
	}
	s.free = make(chan *work, 2*runtime.GOMAXPROCS(0))

	// The python wrapper names output columns t:0..t:{n-1} when the model
	// has no class names.
	b := []byte(`{"data":{"names":[`)
	for i := 0; i < no; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"t:`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, '"')
	}
	s.seldonPrefix = append(b, "],"...)
	s.v2Prefix = appendJSONString([]byte(`{"model_name":`), opts.ModelName)
	if opts.ModelVersion != "" {
		s.v2Prefix = appendJSONString(append(s.v2Prefix, `,"model_version":`...), opts.ModelVersion)
	}
	s.v2Output = []byte(`,"outputs":[{"name":"predict","datatype":"FP32","shape":[`)

	s.handler = s.routes()
	s.ready.Store(true)
	return s, nil
}

// Handler is the server's HTTP handler: prediction, health and metrics
// routes, also under the gateway prefix /seldon/{namespace}/{deployment}.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready reports whether the server answers its readiness probes with 200.
func (s *Server) Ready() bool { return s.ready.Load() }

// Serve serves on lis until ctx is cancelled, then drains: readiness turns
// false at once and answers close their connections, serving continues for DrainDelay,
// then the listener closes and Serve waits up to ShutdownTimeout for
// in-flight requests. It returns nil after a clean drain.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()

	select {
	case err := <-errc:
		return fmt.Errorf("modelserver: serving on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}

	// Readiness false also makes every answer carry Connection: close (see
	// routes), so clients reconnect and, once the endpoint is gone, land on
	// another pod. Not srv.SetKeepAlivesEnabled(false): it also closes idle
	// connections at once, racing with clients that are just sending a
	// request on one, and a POST that lost that race is not retried.
	s.ready.Store(false)
	s.log.Info("draining: readiness false, still serving", "drain_delay", s.opts.DrainDelay)
	if s.opts.DrainDelay > 0 {
		t := time.NewTimer(s.opts.DrainDelay)
		select {
		case <-t.C:
		case err := <-errc:
			t.Stop()
			return fmt.Errorf("modelserver: serving on %s during drain: %w", lis.Addr(), err)
		}
	}

	s.log.Info("shutting down: waiting for in-flight requests", "timeout", s.opts.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("modelserver: waiting for in-flight requests: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("modelserver: serving on %s: %w", lis.Addr(), err)
	}
	s.log.Info("shut down cleanly")
	return nil
}

func (s *Server) getWork() *work {
	select {
	case w := <-s.free:
		return w
	default:
		return new(work)
	}
}

func (s *Server) putWork(w *work) {
	if cap(w.body) > maxPooledBody {
		return
	}
	select {
	case s.free <- w:
	default:
	}
}

// readBody reads the request body into buf, enforcing MaxBodyBytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, buf []byte) ([]byte, error) {
	limit := s.opts.MaxBodyBytes
	if r.ContentLength > limit {
		return buf, s.tooLarge()
	}
	// Room for the whole body plus the read that sees EOF, so a body of
	// known length is read without growing the buffer.
	if r.ContentLength > 0 && int64(cap(buf)) <= r.ContentLength {
		buf = make([]byte, 0, r.ContentLength+512)
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return buf, s.tooLarge()
			}
			return buf, badRequest("reading the request body: %v", err)
		}
	}
	if len(buf) == 0 {
		return buf, badRequest("request body is empty; send a JSON prediction request")
	}
	return buf, nil
}

func (s *Server) tooLarge() error {
	return &requestError{
		status: http.StatusRequestEntityTooLarge,
		reason: reasonBadData,
		msg:    fmt.Sprintf("request body is larger than the %d-byte limit (--max-body-bytes); split the batch", s.opts.MaxBodyBytes),
	}
}

// checkJSON accepts application/json (with parameters) or no Content-Type
// at all; anything else, such as curl's default form encoding, is 415, as
// is a compressed body.
func checkJSON(r *http.Request) error {
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return &requestError{
			status: http.StatusUnsupportedMediaType,
			reason: reasonBadData,
			msg:    fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed", ce),
		}
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, _ := strings.Cut(ct, ";")
	if strings.EqualFold(strings.TrimSpace(mt), "application/json") {
		return nil
	}
	return &requestError{
		status: http.StatusUnsupportedMediaType,
		reason: reasonBadData,
		msg:    fmt.Sprintf("Content-Type %q is not supported; send application/json", ct),
	}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) error {
	w.Header().Set("Allow", allow)
	return &requestError{
		status: http.StatusMethodNotAllowed,
		reason: reasonMethod,
		msg:    fmt.Sprintf("method %s is not allowed here; use %s", r.Method, allow),
	}
}

func writeJSON(w http.ResponseWriter, status int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// predictSeldon answers POST /api/v1.0/predictions.
func (s *Server) predictSeldon(w http.ResponseWriter, r *http.Request) (code, rows int) {
	if r.Method != http.MethodPost {
		return writeSeldonError(w, methodNotAllowed(w, r, http.MethodPost)), 0
	}
	if err := checkJSON(r); err != nil {
		return writeSeldonError(w, err), 0
	}
	wk := s.getWork()
	defer s.putWork(wk)
	var err error
	if wk.body, err = s.readBody(w, r, wk.body[:0]); err != nil {
		return writeSeldonError(w, err), 0
	}
	var n int
	var form dataForm
	if wk.x, n, form, err = decodeSeldon(&wk.p, wk.body, s.nf, wk.x); err != nil {
		return writeSeldonError(w, err), 0
	}
	if err := s.predict(wk, n); err != nil {
		return writeSeldonError(w, err), 0
	}
	b := append(wk.resp[:0], s.seldonPrefix...)
	if form == formTensor {
		b = append(b, `"tensor":{"shape":[`...)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(s.no), 10)
		b = append(b, `],"values":`...)
		b = appendFlat(b, wk.out[:n*s.no])
		b = append(b, '}')
	} else {
		b = append(b, `"ndarray":`...)
		b = appendRows(b, wk.out, n, s.no)
	}
	b = append(b, `},"meta":{}}`...)
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
	return http.StatusOK, n
}

// predictV2 answers POST /v2/models/{name}[/versions/{version}]/infer.
func (s *Server) predictV2(w http.ResponseWriter, r *http.Request) (code, rows int) {
	if err := s.checkModel(r); err != nil {
		return writeV2Error(w, err), 0
	}
	if r.Method != http.MethodPost {
		return writeV2Error(w, methodNotAllowed(w, r, http.MethodPost)), 0
	}
	if err := checkJSON(r); err != nil {
		return writeV2Error(w, err), 0
	}
	wk := s.getWork()
	defer s.putWork(wk)
	var err error
	if wk.body, err = s.readBody(w, r, wk.body[:0]); err != nil {
		return writeV2Error(w, err), 0
	}
	var n int
	var req v2Request
	if wk.x, n, req, err = decodeV2(&wk.p, wk.body, s.nf, wk.x); err != nil {
		return writeV2Error(w, err), 0
	}
	if err := s.predict(wk, n); err != nil {
		return writeV2Error(w, err), 0
	}
	b := append(wk.resp[:0], s.v2Prefix...)
	if req.id != nil {
		b = append(b, `,"id":`...)
		b = appendJSONString(b, string(req.id))
	}
	b = append(b, s.v2Output...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(s.no), 10)
	b = append(b, `],"data":`...)
	b = appendFlat(b, wk.out[:n*s.no])
	b = append(b, "}]}"...)
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
	return http.StatusOK, n
}

// predict runs the model over wk.x's n rows into wk.out.
func (s *Server) predict(wk *work, n int) error {
	wk.out = grow(wk.out, n*s.no)
	if err := s.opts.Predictor.PredictBatch(wk.x[:n*s.nf], n, wk.out); err != nil {
		s.log.Error("prediction failed", "rows", n, "err", err)
		return fmt.Errorf("predicting %d rows: %w", n, err)
	}
	return nil
}

// checkModel answers 404 for a v2 model name (or version) this server
// does not serve.
func (s *Server) checkModel(r *http.Request) error {
	name := r.PathValue("name")
	version := r.PathValue("version")
	if name != s.opts.ModelName || (version != "" && version != s.opts.ModelVersion) {
		what := fmt.Sprintf("model %q", name)
		if version != "" {
			what = fmt.Sprintf("model %q version %q", name, version)
		}
		return &requestError{
			status: http.StatusNotFound,
			reason: reasonNotFound,
			msg:    fmt.Sprintf("%s not found; this server serves model %q", what, s.opts.ModelName),
		}
	}
	return nil
}

// instrument wraps a prediction handler with the metrics contract. The
// handler returns its status and row count, which is cheaper and more
// direct than promhttp's response-writer delegation, and lets the batch
// histogram and row counter see the rows.
func (s *Server) instrument(proto int, h func(http.ResponseWriter, *http.Request) (int, int)) http.HandlerFunc {
	protoName := [2]string{protoSeldon, protoV2}[proto]
	seldon := s.m.seldonReq.MustCurryWith(prometheus.Labels{
		"deployment_name":   s.opts.DeploymentName,
		"predictor_name":    s.opts.PredictorName,
		"predictor_version": s.opts.PredictorVersion,
		"service":           "predictions",
	})
	seldonOK := seldon.WithLabelValues("post", "200")
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.m.inflight.Inc()
		code, rows := h(w, r)
		s.m.inflight.Dec()
		d := time.Since(start).Seconds()
		s.duration[proto].Observe(d)
		if code == http.StatusOK {
			s.ok[proto].Inc()
			s.batch[proto].Observe(float64(rows))
			s.m.rows.Add(float64(rows))
			seldonOK.Observe(d) // only POST answers 200
			return
		}
		s.m.requests.WithLabelValues(s.opts.ModelName, protoName, strconv.Itoa(code)).Inc()
		seldon.WithLabelValues(methodLabel(r.Method), strconv.Itoa(code)).Observe(d)
	}
}

// methodLabel lower-cases the HTTP method as promhttp does for Seldon's
// executor, and folds unknown methods into one value so clients cannot
// create series at will.
func methodLabel(m string) string {
	switch m {
	case http.MethodPost:
		return "post"
	case http.MethodGet:
		return "get"
	case http.MethodPut:
		return "put"
	case http.MethodDelete:
		return "delete"
	case http.MethodHead:
		return "head"
	case http.MethodOptions:
		return "options"
	case http.MethodPatch:
		return "patch"
	}
	return "unknown"
}

func (s *Server) routes() http.Handler {
	inner := http.NewServeMux()
	seldon := s.instrument(0, s.predictSeldon)
	// The python wrapper answers /predict and /api/v1.0/predictions; the
	// executor also keeps /api/v0.1/predictions.
	inner.Handle("/api/v1.0/predictions", seldon)
	inner.Handle("/api/v0.1/predictions", seldon)
	inner.Handle("/predict", seldon)
	inner.HandleFunc("GET /health/ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "pong")
	})
	inner.HandleFunc("GET /health/status", s.healthStatus)
	inner.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	inner.HandleFunc("GET /ready", s.readyProbe)

	v2 := s.instrument(1, s.predictV2)
	inner.Handle("/v2/models/{name}/infer", v2)
	inner.Handle("/v2/models/{name}/versions/{version}/infer", v2)
	inner.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	inner.HandleFunc("GET /v2/health/ready", s.readyProbe)
	inner.HandleFunc("GET /v2", s.v2ServerMetadata)
	inner.HandleFunc("GET /v2/models/{name}", s.v2ModelMetadata)
	inner.HandleFunc("GET /v2/models/{name}/versions/{version}", s.v2ModelMetadata)
	inner.HandleFunc("GET /v2/models/{name}/ready", s.v2ModelReady)
	inner.HandleFunc("GET /v2/models/{name}/versions/{version}/ready", s.v2ModelReady)

	metrics := promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})
	inner.Handle("GET /metrics", metrics)
	inner.Handle("GET /prometheus", metrics)
	inner.HandleFunc("/", s.notFound)

	// Seldon's Istio VirtualService sends /seldon/{namespace}/{deployment}/...
	// to the predictor; gateways that do not rewrite the prefix reach the
	// same routes here.
	outer := http.NewServeMux()
	outer.HandleFunc("/seldon/{namespace}/{deployment}/", func(w http.ResponseWriter, r *http.Request) {
		prefix := "/seldon/" + r.PathValue("namespace") + "/" + r.PathValue("deployment")
		http.StripPrefix(prefix, inner).ServeHTTP(w, r)
	})
	outer.Handle("/", inner)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			w.Header().Set("Connection", "close")
		}
		outer.ServeHTTP(w, r)
	})
}

func (s *Server) readyProbe(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// healthStatus predicts one all-missing row and answers it in Seldon's
// form: a probe that proves the model evaluates, not only that the
// process is up.
func (s *Server) healthStatus(w http.ResponseWriter, r *http.Request) {
	wk := s.getWork()
	defer s.putWork(wk)
	wk.x = grow(wk.x, s.nf)
	for i := range wk.x {
		wk.x[i] = float32(math.NaN())
	}
	if err := s.predict(wk, 1); err != nil {
		writeSeldonError(w, err)
		return
	}
	b := append(wk.resp[:0], s.seldonPrefix...)
	b = append(b, `"ndarray":`...)
	b = appendRows(b, wk.out, 1, s.no)
	b = append(b, `},"meta":{}}`...)
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) v2ServerMetadata(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []byte(`{"name":"mlscale-modelserver","version":"1","extensions":[]}`))
}

func (s *Server) v2ModelMetadata(w http.ResponseWriter, r *http.Request) {
	if err := s.checkModel(r); err != nil {
		writeV2Error(w, err)
		return
	}
	b := appendJSONString([]byte(`{"name":`), s.opts.ModelName)
	b = append(b, `,"versions":[`...)
	if s.opts.ModelVersion != "" {
		b = appendJSONString(b, s.opts.ModelVersion)
	}
	b = append(b, `],"platform":`...)
	b = appendJSONString(b, s.opts.Platform)
	b = append(b, `,"inputs":[{"name":"input-0","datatype":"FP32","shape":[-1,`...)
	b = strconv.AppendInt(b, int64(s.nf), 10)
	b = append(b, `]}],"outputs":[{"name":"predict","datatype":"FP32","shape":[-1,`...)
	b = strconv.AppendInt(b, int64(s.no), 10)
	b = append(b, `]}]}`...)
	writeJSON(w, http.StatusOK, b)
}

// v2ModelReady is 200 while the model is loaded and the server is not
// draining.
func (s *Server) v2ModelReady(w http.ResponseWriter, r *http.Request) {
	if err := s.checkModel(r); err != nil {
		writeV2Error(w, err)
		return
	}
	s.readyProbe(w, r)
}

// notFound answers unknown paths in the error shape of the protocol the
// path belongs to.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	err := &requestError{status: http.StatusNotFound, reason: reasonNotFound, msg: fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)}
	if strings.HasPrefix(r.URL.Path, "/v2/") || r.URL.Path == "/v2" {
		writeV2Error(w, err)
		return
	}
	writeSeldonError(w, err)
}
