// Package modelserver serves a Predictor over HTTP and gRPC the way Seldon
// Core's python wrapper and the Open Inference Protocol (KServe v2, Triton,
// MLServer) do,
// and tells Prometheus how busy it is: requests, rows per request,
// in-flight requests and latency, plus Seldon's executor histogram so
// Seldon's dashboards keep working. On shutdown it drains: readiness turns
// false at once, serving continues for a drain delay while endpoints
// update, then in-flight requests finish.
package modelserver

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fastjson"

	"github.com/mlscale/mlscale/api/ndarray"
)

// The server's name and version in Open Inference Protocol metadata.
const (
	serverName    = "mlscale-modelserver"
	serverVersion = "1"
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
	// MaxInflight bounds the prediction requests (REST and gRPC) served at
	// once; one more is refused at once with 503 (gRPC UNAVAILABLE) and
	// Retry-After, before its body is read. A pod past its CPU capacity
	// then sheds load instead of queueing it until its memory runs out,
	// and its /metrics stays answerable. 0 means no bound.
	MaxInflight int
	// Workers is how many admitted prediction requests run at once when
	// MaxInflight is set; the others wait their turn without running
	// (their bodies unread), so a saturated server's CPU time goes to a
	// few requests at a time and its /metrics scrape is not queued
	// behind all of them. 0 means GOMAXPROCS.
	Workers int
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
	// busy counts prediction requests admitted under Options.MaxInflight;
	// slots holds one token per admitted request running (nil: no bound).
	busy  atomic.Int64
	slots chan struct{}

	// Per-protocol series, resolved once: the hot path does no label
	// lookups for successful requests.
	ok       [numProtocols]prometheus.Counter
	duration [numProtocols]prometheus.Observer
	batch    [numProtocols]prometheus.Observer
	// Seldon's executor histogram for each gRPC prediction method.
	grpcSeldon map[string]prometheus.ObserverVec

	// free holds warm per-request scratch space. Not a sync.Pool: every
	// GC empties a sync.Pool, and rebuilding a parser's value cache for a
	// 10,000-row request allocates ~20 MB, which brings the next GC sooner;
	// a bounded free list keeps a few warm ones across GCs.
	free chan *work

	outNames     []string // t:0..t:{no-1}, the python wrapper's output names
	seldonPrefix []byte   // {"data":{"names":["t:0",...],
	v2Prefix     []byte   // {"model_name":"...","model_version":"..."
	v2Output     []byte   // ,"outputs":[{"name":"predict","datatype":"FP32","shape":[
}

// work is the per-request scratch space, kept so that a steady stream
// of requests reuses the body buffer, the parser's value cache, the
// feature and output slices and the answer buffer.
type work struct {
	body  []byte
	zbody []byte // a compressed body before decompression
	p     fastjson.Parser
	x     []float32
	out   []float32
	resp  []byte
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
	if opts.MaxInflight < 0 || opts.Workers < 0 {
		return nil, fmt.Errorf("modelserver: MaxInflight (%d) and Workers (%d) must not be negative", opts.MaxInflight, opts.Workers)
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
	for i, p := range protocolNames {
		s.ok[i] = m.requests.WithLabelValues(opts.ModelName, p, "200")
		s.duration[i] = m.duration.WithLabelValues(opts.ModelName, p)
		s.batch[i] = m.batch.WithLabelValues(opts.ModelName, p)
	}
	s.free = make(chan *work, 2*runtime.GOMAXPROCS(0))
	if opts.MaxInflight > 0 {
		n := opts.Workers
		if n <= 0 {
			n = runtime.GOMAXPROCS(0)
		}
		s.slots = make(chan struct{}, n)
	}
	s.grpcSeldon = make(map[string]prometheus.ObserverVec)
	for _, m := range []string{methodSeldonPredict, methodModelPredict, methodModelInfer} {
		s.grpcSeldon[m] = s.seldonCurried(m)
	}

	// The python wrapper names output columns t:0..t:{n-1} when the model
	// has no class names.
	b := []byte(`{"data":{"names":[`)
	for i := 0; i < no; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		s.outNames = append(s.outNames, "t:"+strconv.Itoa(i))
		b = appendJSONString(b, s.outNames[i])
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

	// Readiness false also makes every answer carry Connection: close (see
	// routes), so clients reconnect and, once the endpoint is gone, land on
	// another pod. Not srv.SetKeepAlivesEnabled(false): it also closes idle
	// connections at once, racing with clients that are just sending a
	// request on one, and a POST that lost that race is not retried.
	if err := s.drain(ctx, errc, lis, "", nil); err != nil {
		return err
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

// drain is the start of Serve's and ServeGRPC's shutdown: it waits for
// ctx, turns readiness false (and calls notServing, when not nil) and keeps
// serving for DrainDelay. It returns the serving goroutine's error (errc)
// if serving ends first. what names the server in errors and logs: "" for
// HTTP, "gRPC ".
func (s *Server) drain(ctx context.Context, errc <-chan error, lis net.Listener, what string, notServing func()) error {
	select {
	case err := <-errc:
		return fmt.Errorf("modelserver: serving %son %s: %w", what, lis.Addr(), err)
	case <-ctx.Done():
	}
	s.ready.Store(false)
	if notServing != nil {
		notServing()
	}
	s.log.Info(what+"draining: readiness false, still serving", "drain_delay", s.opts.DrainDelay)
	if s.opts.DrainDelay > 0 {
		t := time.NewTimer(s.opts.DrainDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case err := <-errc:
			return fmt.Errorf("modelserver: serving %son %s during drain: %w", what, lis.Addr(), err)
		}
	}
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
	if cap(w.body) > maxPooledBody || cap(w.zbody) > maxPooledBody {
		return
	}
	select {
	case s.free <- w:
	default:
	}
}

// readBody reads the request body into wk.body, enforcing MaxBodyBytes on
// the body as sent and, for a compressed body (Content-Encoding gzip or
// deflate, as tritonclient's request compression sends), on the
// decompressed body too, so a small zip bomb is a 413 rather than memory.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, wk *work) error {
	enc, err := contentEncoding(r)
	if err != nil {
		return err
	}
	if enc == "" {
		wk.body, err = s.readLimited(w, r, wk.body[:0])
	} else {
		if wk.zbody, err = s.readLimited(w, r, wk.zbody[:0]); err == nil {
			wk.body, err = s.decompress(enc, wk.zbody, wk.body[:0])
		}
	}
	if err != nil {
		return err
	}
	if len(wk.body) == 0 {
		return badRequest("request body is empty; send a JSON prediction request")
	}
	return nil
}

// readLimited reads r's body into buf, at most MaxBodyBytes.
func (s *Server) readLimited(w http.ResponseWriter, r *http.Request, buf []byte) ([]byte, error) {
	limit := s.opts.MaxBodyBytes
	if r.ContentLength > limit {
		return buf, s.tooLarge("request body")
	}
	// Room for the whole body plus the read that sees EOF, so a body of
	// known length is read without growing the buffer.
	if r.ContentLength > 0 && int64(cap(buf)) <= r.ContentLength {
		buf = make([]byte, 0, r.ContentLength+512)
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	buf, err := readAll(rd, buf)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return buf, s.tooLarge("request body")
		}
		return buf, badRequest("reading the request body: %v", err)
	}
	return buf, nil
}

// readAll appends everything rd yields to buf.
func readAll(rd io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// decompress inflates a gzip or deflate (zlib) body into buf, stopping
// one byte past MaxBodyBytes.
func (s *Server) decompress(enc string, z, buf []byte) ([]byte, error) {
	var zr io.Reader
	var err error
	if enc == "gzip" {
		zr, err = gzip.NewReader(bytes.NewReader(z))
	} else {
		zr, err = zlib.NewReader(bytes.NewReader(z))
	}
	if err != nil {
		return buf, badRequest("decompressing the %s request body: %v", enc, err)
	}
	buf, err = readAll(io.LimitReader(zr, s.opts.MaxBodyBytes+1), buf)
	if err != nil {
		return buf, badRequest("decompressing the %s request body: %v", enc, err)
	}
	if int64(len(buf)) > s.opts.MaxBodyBytes {
		return buf, s.tooLarge("decompressed request body")
	}
	return buf, nil
}

func (s *Server) tooLarge(what string) error {
	return &requestError{
		status: http.StatusRequestEntityTooLarge,
		reason: reasonBadData,
		msg:    fmt.Sprintf("%s is larger than the %d-byte limit (--max-body-bytes); split the batch", what, s.opts.MaxBodyBytes),
	}
}

// contentEncoding is "", "gzip" or "deflate"; other encodings are 415.
func contentEncoding(r *http.Request) (string, error) {
	ce := strings.TrimSpace(r.Header.Get("Content-Encoding"))
	switch {
	case ce == "" || strings.EqualFold(ce, "identity"):
		return "", nil
	case strings.EqualFold(ce, "gzip"), strings.EqualFold(ce, "x-gzip"):
		return "gzip", nil
	case strings.EqualFold(ce, "deflate"):
		return "deflate", nil
	}
	return "", &requestError{
		status: http.StatusUnsupportedMediaType,
		reason: reasonBadData,
		msg:    fmt.Sprintf("Content-Encoding %q is not supported; send the body uncompressed, gzip or deflate", ce),
	}
}

// bodyKind is what a request body holds, by its Content-Type.
type bodyKind uint8

const (
	bodyJSON   bodyKind = iota
	bodyForm            // application/x-www-form-urlencoded, json=<message>
	bodyBinary          // application/octet-stream
)

// contentKind accepts application/json (with parameters) or no
// Content-Type at all, and the other kinds a route allows; anything else
// is 415, naming what the route takes.
func contentKind(r *http.Request, allowForm, allowBinary bool) (bodyKind, error) {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return bodyJSON, nil
	}
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.TrimSpace(mt)
	switch {
	case strings.EqualFold(mt, "application/json"):
		return bodyJSON, nil
	case allowForm && strings.EqualFold(mt, "application/x-www-form-urlencoded"):
		return bodyForm, nil
	case allowBinary && strings.EqualFold(mt, "application/octet-stream"):
		return bodyBinary, nil
	}
	want := "application/json"
	if allowForm {
		want = "application/json or a form with json=<message> (application/x-www-form-urlencoded)"
	}
	return 0, &requestError{
		status: http.StatusUnsupportedMediaType,
		reason: reasonBadData,
		msg:    fmt.Sprintf("Content-Type %q is not supported; send %s", ct, want),
	}
}

// formJSON returns the json field of a Seldon microservice form body, as
// the python wrapper reads it (what seldon-core-microservice-tester and
// SeldonClient's microservice calls send).
func formJSON(body []byte) ([]byte, error) {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, badRequest("malformed form body: %v", err)
	}
	j, ok := vals["json"]
	if !ok || len(j) == 0 || j[0] == "" {
		return nil, badRequest("form body has no json field: send json=<SeldonMessage as JSON>")
	}
	return []byte(j[0]), nil
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

// seldonBody reads a Seldon REST request's SeldonMessage (or Feedback)
// JSON into wk.body: a JSON body, a form body's json field, or, on GET
// (which the python wrapper allows on /predict and /send-feedback), the
// json query parameter.
func (s *Server) seldonBody(w http.ResponseWriter, r *http.Request, wk *work) error {
	if r.Method == http.MethodGet {
		j := r.URL.Query().Get("json")
		if j == "" {
			return badRequest("GET needs the message in the json query parameter; or POST it")
		}
		wk.body = append(wk.body[:0], j...)
		return nil
	}
	kind, err := contentKind(r, true, false)
	if err != nil {
		return err
	}
	if err := s.readBody(w, r, wk); err != nil {
		return err
	}
	if kind == bodyForm {
		j, err := formJSON(wk.body)
		if err != nil {
			return err
		}
		wk.body = append(wk.body[:0], j...)
	}
	return nil
}

// seldonMethods are the methods a Seldon route takes: the python wrapper
// answers GET too on its microservice paths (/predict, /send-feedback).
func seldonMethods(w http.ResponseWriter, r *http.Request, allowGET bool) error {
	if r.Method == http.MethodPost || (allowGET && r.Method == http.MethodGet) {
		return nil
	}
	if allowGET {
		return methodNotAllowed(w, r, "GET, POST")
	}
	return methodNotAllowed(w, r, http.MethodPost)
}

// predictSeldon answers POST /api/v1.0/predictions (and /predict).
func (s *Server) predictSeldon(w http.ResponseWriter, r *http.Request) (code, rows int) {
	if err := seldonMethods(w, r, r.URL.Path == "/predict"); err != nil {
		return writeSeldonError(w, err), 0
	}
	wk := s.getWork()
	defer s.putWork(wk)
	if err := s.seldonBody(w, r, wk); err != nil {
		return writeSeldonError(w, err), 0
	}
	var n int
	var req seldonRequest
	var err error
	if wk.x, n, req, err = decodeSeldon(&wk.p, wk.body, s.nf, wk.x); err != nil {
		return writeSeldonError(w, err), 0
	}
	if err := s.predict(wk, n); err != nil {
		return writeSeldonError(w, err), 0
	}
	b := append(wk.resp[:0], s.seldonPrefix...)
	if req.form == formTFTensor {
		b = appendTFTensorJSON(b, wk.out[:n*s.no], n, s.no)
	} else if req.form == formTensor {
		b = append(b, `"tensor":{"shape":[`...)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(s.no), 10)
		b = append(b, `],"values":`...)
		b = ndarray.AppendFlat(b, wk.out[:n*s.no], ndarray.Null)
		b = append(b, '}')
	} else {
		b = append(b, `"ndarray":`...)
		b = ndarray.AppendRows(b, wk.out, n, s.no, ndarray.Null)
	}
	b = append(b, "},"...)
	b = appendSeldonMeta(b, &req)
	b = append(b, '}')
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
	return http.StatusOK, n
}

// feedbackSeldon answers /api/v1.0/feedback as Seldon's python wrapper does
// for a model without a send_feedback method: the Feedback is checked and
// answered with an empty prediction in the form of its request's data (a
// tensor when it has none) and the request's puid.
func (s *Server) feedbackSeldon(w http.ResponseWriter, r *http.Request) int {
	if err := seldonMethods(w, r, r.URL.Path == "/send-feedback"); err != nil {
		return writeSeldonError(w, err)
	}
	wk := s.getWork()
	defer s.putWork(wk)
	if err := s.seldonBody(w, r, wk); err != nil {
		return writeSeldonError(w, err)
	}
	fb, err := decodeFeedback(&wk.p, wk.body)
	if err != nil {
		return writeSeldonError(w, err)
	}
	b := append(wk.resp[:0], `{"data":{`...)
	if fb.form == formNDArray {
		b = append(b, `"ndarray":[]`...)
	} else {
		b = append(b, `"tensor":{"shape":[0]}`...)
	}
	b = append(b, "},"...)
	b = appendSeldonMeta(b, &seldonRequest{puid: fb.puid})
	b = append(b, '}')
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
	return http.StatusOK
}

// v2OutputName is the model's one output tensor.
const v2OutputName = "predict"

// binaryHeader is the binary tensor extension's header: the length of the
// JSON part of a body that continues with raw tensor data.
const binaryHeader = "Inference-Header-Content-Length"

// predictV2 answers POST /v2/models/{name}[/versions/{version}]/infer.
func (s *Server) predictV2(w http.ResponseWriter, r *http.Request) (code, rows int) {
	if err := s.checkModel(r.PathValue("name"), r.PathValue("version")); err != nil {
		return writeV2Error(w, err), 0
	}
	if r.Method != http.MethodPost {
		return writeV2Error(w, methodNotAllowed(w, r, http.MethodPost)), 0
	}
	hl := r.Header.Get(binaryHeader)
	if _, err := contentKind(r, false, hl != ""); err != nil {
		return writeV2Error(w, err), 0
	}
	wk := s.getWork()
	defer s.putWork(wk)
	if err := s.readBody(w, r, wk); err != nil {
		return writeV2Error(w, err), 0
	}
	header, binary, err := splitBinary(wk.body, hl)
	if err != nil {
		return writeV2Error(w, err), 0
	}
	var n int
	var req v2Request
	if wk.x, n, req, err = decodeV2(&wk.p, header, binary, s.nf, wk.x); err != nil {
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
	out := wk.out[:n*s.no]
	if req.binaryOut {
		b = append(b, `],"parameters":{"binary_data_size":`...)
		b = strconv.AppendInt(b, int64(4*len(out)), 10)
		b = append(b, "}}]}"...)
		jsonLen := len(b)
		b = appendRawFP32(b, out)
		wk.resp = b
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set(binaryHeader, strconv.Itoa(jsonLen))
		h.Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b)
		return http.StatusOK, n
	}
	b = append(b, `],"data":`...)
	b = ndarray.AppendFlat(b, out, ndarray.Null)
	b = append(b, "}]}"...)
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
	return http.StatusOK, n
}

// splitBinary splits a binary tensor extension body at the length its
// Inference-Header-Content-Length header gives (hl; "" means the whole
// body is JSON and binary is nil).
func splitBinary(body []byte, hl string) (header, binary []byte, err error) {
	if hl == "" {
		return body, nil, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(hl))
	if err != nil || n <= 0 || n > len(body) {
		return nil, nil, badRequest("%s %q is not the length of the JSON header within the %d-byte body", binaryHeader, hl, len(body))
	}
	return body[:n], body[n:], nil
}

// predict runs the model over wk.x's n rows into wk.out. A panicking
// predictor is a server fault: it is logged with its stack and answered
// as an internal error, and the server goes on.
func (s *Server) predict(wk *work, n int) (err error) {
	wk.out = grow(wk.out, n*s.no)
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("predictor panicked", "rows", n, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("predicting %d rows: predictor panicked: %v", n, p)
		}
	}()
	if err := s.opts.Predictor.PredictBatch(wk.x[:n*s.nf], n, wk.out); err != nil {
		s.log.Error("prediction failed", "rows", n, "err", err)
		return fmt.Errorf("predicting %d rows: %w", n, err)
	}
	return nil
}

// checkModel is a 404 for a v2 model name (or version) this server does
// not serve.
func (s *Server) checkModel(name, version string) error {
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
	seldon := s.seldonCurried("predictions")
	seldonOK := seldon.WithLabelValues("post", "200")
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if err := s.admit(); err != nil {
			w.Header().Set("Retry-After", "1")
			var code int
			if proto == protoV2 {
				code = writeV2Error(w, err)
			} else {
				code = writeSeldonError(w, err)
			}
			d := time.Since(start).Seconds()
			s.record(proto, code, 0, d)
			seldon.WithLabelValues(methodLabel(r.Method), strconv.Itoa(code)).Observe(d)
			return
		}
		// Deferred, so a handler that panics (net/http recovers it) does
		// not leave the count, the gauge or a slot taken for good.
		defer s.release()
		s.m.inflight.Inc()
		defer s.m.inflight.Dec()
		s.acquire()
		defer s.releaseSlot()
		code, rows := h(w, r)
		d := time.Since(start).Seconds()
		s.record(proto, code, rows, d)
		if code == http.StatusOK {
			seldonOK.Observe(d) // only POST answers 200
			return
		}
		seldon.WithLabelValues(methodLabel(r.Method), strconv.Itoa(code)).Observe(d)
	}
}

// admit takes one of Options.MaxInflight's places for a prediction
// request, or says the server is full; every nil return is paired with a
// release.
func (s *Server) admit() error {
	n := s.busy.Add(1)
	if s.opts.MaxInflight > 0 && n > int64(s.opts.MaxInflight) {
		s.busy.Add(-1)
		return &requestError{
			status: http.StatusServiceUnavailable,
			reason: reasonOverloaded,
			msg: fmt.Sprintf("server busy: %d prediction requests in flight, the limit (--max-inflight); retry later or add replicas",
				s.opts.MaxInflight),
		}
	}
	return nil
}

func (s *Server) release() { s.busy.Add(-1) }

// acquire waits for one of Options.Workers' slots (at once when
// MaxInflight is 0); releaseSlot gives it back.
func (s *Server) acquire() {
	if s.slots != nil {
		s.slots <- struct{}{}
	}
}

func (s *Server) releaseSlot() {
	if s.slots != nil {
		<-s.slots
	}
}

// timeSeldon times a Seldon route that is not a prediction in Seldon's
// executor histogram only.
func (s *Server) timeSeldon(service string, h func(http.ResponseWriter, *http.Request) int) http.HandlerFunc {
	vec := s.seldonCurried(service)
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		code := h(w, r)
		vec.WithLabelValues(methodLabel(r.Method), strconv.Itoa(code)).Observe(time.Since(start).Seconds())
	}
}

// seldonCurried is Seldon's executor histogram with this server's labels
// and service (the REST route's service name, or a gRPC full method name).
func (s *Server) seldonCurried(service string) prometheus.ObserverVec {
	return s.m.seldonReq.MustCurryWith(prometheus.Labels{
		"deployment_name":   s.opts.DeploymentName,
		"predictor_name":    s.opts.PredictorName,
		"predictor_version": s.opts.PredictorVersion,
		"service":           service,
	})
}

// record counts one answered prediction request of any protocol in the
// mlscale_* series; code is its HTTP status (for gRPC, the status the
// same outcome gets over REST).
func (s *Server) record(proto, code, rows int, seconds float64) {
	s.duration[proto].Observe(seconds)
	if code == http.StatusOK {
		s.ok[proto].Inc()
		s.batch[proto].Observe(float64(rows))
		s.m.rows.Add(float64(rows))
		return
	}
	s.m.requests.WithLabelValues(s.opts.ModelName, protocolNames[proto], strconv.Itoa(code)).Inc()
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
	seldon := s.instrument(protoSeldon, s.predictSeldon)
	// The python wrapper answers /predict and /api/v1.0/predictions; the
	// executor also keeps /api/v0.1/predictions.
	inner.Handle("/api/v1.0/predictions", seldon)
	inner.Handle("/api/v0.1/predictions", seldon)
	inner.Handle("/predict", seldon)
	// Feedback is not a prediction: only Seldon's executor histogram
	// sees it, under the executor's service name for it.
	feedback := s.timeSeldon("feedback", s.feedbackSeldon)
	inner.Handle("/api/v1.0/feedback", feedback)
	inner.Handle("/api/v0.1/feedback", feedback)
	inner.Handle("/send-feedback", feedback)
	inner.HandleFunc("GET /health/ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "pong")
	})
	inner.HandleFunc("GET /health/status", s.healthStatus)
	inner.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	inner.HandleFunc("GET /ready", s.readyProbe)

	v2 := s.instrument(protoV2, s.predictV2)
	inner.Handle("/v2/models/{name}/infer", v2)
	inner.Handle("/v2/models/{name}/versions/{version}/infer", v2)
	inner.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, []byte(`{"live":true}`))
	})
	inner.HandleFunc("GET /v2/health/ready", s.v2Ready)
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
	b = ndarray.AppendRows(b, wk.out, 1, s.no, ndarray.Null)
	b = append(b, `},"meta":{}}`...)
	wk.resp = b
	writeJSON(w, http.StatusOK, b)
}

// v2Extensions are the Open Inference Protocol extensions this server
// speaks (Triton's names), in the REST and gRPC server metadata.
var v2Extensions = []string{"binary_tensor_data"}

func (s *Server) v2ServerMetadata(w http.ResponseWriter, r *http.Request) {
	b, _ := json.Marshal(struct {
		Name       string   `json:"name"`
		Version    string   `json:"version"`
		Extensions []string `json:"extensions"`
	}{serverName, serverVersion, v2Extensions})
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) v2ModelMetadata(w http.ResponseWriter, r *http.Request) {
	if err := s.checkModel(r.PathValue("name"), r.PathValue("version")); err != nil {
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

// v2Ready answers /v2/health/ready with the JSON body KServe's client
// reads: 200 {"ready":true}, or 503 {"ready":false} while draining.
func (s *Server) v2Ready(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		writeJSON(w, http.StatusServiceUnavailable, []byte(`{"ready":false}`))
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"ready":true}`))
}

// v2ModelReady is 200 {"name":...,"ready":true} while the model is loaded
// and the server is not draining.
func (s *Server) v2ModelReady(w http.ResponseWriter, r *http.Request) {
	if err := s.checkModel(r.PathValue("name"), r.PathValue("version")); err != nil {
		writeV2Error(w, err)
		return
	}
	ready := s.ready.Load()
	b := appendJSONString([]byte(`{"name":`), s.opts.ModelName)
	b = append(b, `,"ready":`...)
	b = strconv.AppendBool(b, ready)
	b = append(b, '}')
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, b)
}

// notFound answers unknown paths in the error shape of the protocol the
// path belongs to. Under the gateway prefix it says how the path was read,
// so /seldon/{deployment}/api/... (no namespace) is not reported as a
// missing /v1.0/predictions.
func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	msg := fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)
	orig, _, _ := strings.Cut(r.RequestURI, "?")
	if rest, ok := strings.CutPrefix(orig, "/seldon/"); ok && orig != r.URL.Path {
		parts := strings.SplitN(rest, "/", 3)
		if len(parts) == 3 {
			msg = fmt.Sprintf("no route for %s %s: read as namespace %q, deployment %q and route /%s, which this server does not have; the gateway prefix is /seldon/{namespace}/{deployment}/",
				r.Method, orig, parts[0], parts[1], parts[2])
		}
	}
	err := &requestError{status: http.StatusNotFound, reason: reasonNotFound, msg: msg}
	if strings.HasPrefix(r.URL.Path, "/v2/") || r.URL.Path == "/v2" {
		writeV2Error(w, err)
		return
	}
	writeSeldonError(w, err)
}
