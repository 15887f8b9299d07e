package modelserver

import (
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // grpc-encoding gzip (tritonclient's compression_algorithm)
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/seldon"
)

// The gRPC side serves the same predictor as the HTTP routes: Seldon's
// Model and Seldon services (what Seldon's executor and SeldonClient's
// transport="grpc" call) and the Open Inference Protocol's
// GRPCInferenceService (tritonclient.grpc, KServe, MLServer clients), with
// the same work buffers, the same checks and the same metrics contract
// (protocol seldon-grpc and v2-grpc).

// Full method names of the prediction calls, which label Seldon's
// executor histogram on gRPC as the executor labels it.
const (
	methodSeldonPredict = "/seldon.protos.Seldon/Predict"
	methodModelPredict  = "/seldon.protos.Model/Predict"
	methodModelInfer    = "/inference.GRPCInferenceService/ModelInfer"
)

// grpcProtocols are the prediction methods and the protocol label each
// counts under.
var grpcProtocols = map[string]int{
	methodSeldonPredict: protoSeldonGRPC,
	methodModelPredict:  protoSeldonGRPC,
	methodModelInfer:    protoV2GRPC,
}

// deflate is grpc-encoding "deflate" (zlib, as in HTTP), the other
// compression tritonclient's gRPC client offers; grpc-go ships only gzip.
// Compressors live in grpc-go's global registry, so this one is
// registered once, at init.
type deflate struct{}

func (deflate) Name() string                                 { return "deflate" }
func (deflate) Compress(w io.Writer) (io.WriteCloser, error) { return zlib.NewWriter(w), nil }
func (deflate) Decompress(r io.Reader) (io.Reader, error)    { return zlib.NewReader(r) }

func init() { encoding.RegisterCompressor(deflate{}) }

// NewGRPCServer builds the gRPC server with the Seldon, Open Inference
// Protocol and gRPC health services registered. Messages may be gzip or
// deflate compressed; larger than MaxBodyBytes (after decompression too)
// they are refused with ResourceExhausted before they reach a handler, and
// counted as 413s. ServeGRPC is the usual way to run it; this is for
// callers that manage the server themselves.
func (s *Server) NewGRPCServer() (*grpc.Server, *health.Server) {
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(int(min(s.opts.MaxBodyBytes, int64(^uint32(0)>>1)))),
		grpc.StatsHandler(refusedCalls{s}),
	)
	sg := &seldonGRPC{s: s}
	seldon.RegisterModelServer(gs, sg)
	seldon.RegisterSeldonServer(gs, sg)
	inference.RegisterGRPCInferenceServiceServer(gs, &v2GRPC{s: s})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	for _, svc := range []string{"seldon.protos.Model", "seldon.protos.Seldon", "inference.GRPCInferenceService"} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	reflection.Register(gs)
	return gs, hs
}

// ServeGRPC serves gRPC on lis until ctx is cancelled, then drains as
// Serve does: readiness (ServerReady, ModelReady, the gRPC health
// service) turns false at once, calls are still served for DrainDelay,
// then GracefulStop sends GOAWAY and waits up to ShutdownTimeout for calls
// in flight. It returns nil after a clean drain.
func (s *Server) ServeGRPC(ctx context.Context, lis net.Listener) error {
	gs, hs := s.NewGRPCServer()
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()

	// hs.Shutdown: every service NOT_SERVING.
	if err := s.drain(ctx, errc, lis, "gRPC ", hs.Shutdown); err != nil {
		return err
	}
	s.log.Info("gRPC shutting down: waiting for calls in flight", "timeout", s.opts.ShutdownTimeout)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	t := time.NewTimer(s.opts.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
		return fmt.Errorf("modelserver: gRPC calls still in flight after %v; cut them off", s.opts.ShutdownTimeout)
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("modelserver: serving gRPC on %s: %w", lis.Addr(), err)
	}
	s.log.Info("gRPC shut down cleanly")
	return nil
}

// refusedCalls counts the prediction calls grpc-go refuses before any
// handler runs (a message over MaxRecvMsgSize: ResourceExhausted), which
// grpcCall never sees, so that they are in mlscale_requests_total as 413s
// as over-size REST bodies are. Every other outcome is counted by grpcCall.
type refusedCalls struct{ s *Server }

type methodKey struct{}

func (h refusedCalls) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if _, ok := grpcProtocols[info.FullMethodName]; !ok {
		return ctx
	}
	return context.WithValue(ctx, methodKey{}, info.FullMethodName)
}

func (h refusedCalls) HandleRPC(ctx context.Context, st stats.RPCStats) {
	end, ok := st.(*stats.End)
	if !ok || status.Code(end.Error) != codes.ResourceExhausted {
		return
	}
	method, _ := ctx.Value(methodKey{}).(string)
	proto, ok := grpcProtocols[method]
	if !ok {
		return
	}
	d := end.EndTime.Sub(end.BeginTime).Seconds()
	h.s.record(proto, http.StatusRequestEntityTooLarge, 0, d)
	h.s.grpcSeldon[method].WithLabelValues("unary", codes.ResourceExhausted.String()).Observe(d)
}

func (refusedCalls) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (refusedCalls) HandleConn(context.Context, stats.ConnStats)                       {}

// grpcCall runs one gRPC prediction call f in the metrics contract and
// maps its error to a gRPC status. f gets warm work buffers, which it
// must not let the answer point into.
func (s *Server) grpcCall(ctx context.Context, proto int, f func(wk *work) (rows int, err error)) error {
	start := time.Now()
	var rows int
	err := s.admit()
	if err == nil {
		s.m.inflight.Inc()
		s.acquire()
		rows, err = s.callSafely(f)
		s.releaseSlot()
		s.m.inflight.Dec()
		s.release()
	}
	d := time.Since(start).Seconds()
	code := http.StatusOK
	if err != nil {
		code, _, _ = statusOf(err)
	}
	s.record(proto, code, rows, d)
	st := grpcStatus(err)
	method, _ := grpc.Method(ctx)
	if vec, ok := s.grpcSeldon[method]; ok {
		// Created on first use, so a server nobody calls over gRPC
		// exposes no gRPC series of Seldon's histogram.
		vec.WithLabelValues("unary", st.Code().String()).Observe(d)
	}
	return st.Err()
}

// callSafely runs f with work buffers; a panic (grpc-go does not recover
// handler panics: it would take the process down) is an internal error.
func (s *Server) callSafely(f func(wk *work) (int, error)) (rows int, err error) {
	wk := s.getWork()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("gRPC call panicked", "panic", p, "stack", string(debug.Stack()))
			rows, err = 0, fmt.Errorf("gRPC call panicked: %v", p)
			return // wk may be half-written: not returned to the pool
		}
		s.putWork(wk)
	}()
	return f(wk)
}

// grpcStatus maps a request error to the gRPC code of the same meaning;
// anything else is Internal with a generic message (details in the log).
func grpcStatus(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	code, _, msg := statusOf(err)
	switch code {
	case http.StatusBadRequest, http.StatusUnsupportedMediaType:
		return status.New(codes.InvalidArgument, msg)
	case http.StatusNotFound:
		return status.New(codes.NotFound, msg)
	case http.StatusRequestEntityTooLarge:
		return status.New(codes.ResourceExhausted, msg)
	case http.StatusServiceUnavailable:
		return status.New(codes.Unavailable, msg)
	}
	return status.New(codes.Internal, msg)
}

// seldonGRPC serves seldon.protos.Model and seldon.protos.Seldon.
type seldonGRPC struct {
	seldon.UnimplementedModelServer
	seldon.UnimplementedSeldonServer
	s *Server
}

// Predict answers in the request's data form, as the python wrapper does.
// The seldon and namespace metadata headers that Seldon's Istio route
// matches on are accepted and not needed: this server is the deployment.
func (g *seldonGRPC) Predict(ctx context.Context, m *seldon.SeldonMessage) (*seldon.SeldonMessage, error) {
	var resp *seldon.SeldonMessage
	err := g.s.grpcCall(ctx, protoSeldonGRPC, func(wk *work) (int, error) {
		var n int
		var form dataForm
		var err error
		if wk.x, n, form, err = seldonRows(m, g.s.nf, wk.x); err != nil {
			return 0, err
		}
		if err := g.s.predict(wk, n); err != nil {
			return 0, err
		}
		resp = g.s.seldonAnswer(form, wk.out[:n*g.s.no], n, m.GetMeta())
		return n, nil
	})
	return resp, err
}

// SendFeedback is timed in Seldon's executor histogram only: it is not a
// prediction.
func (g *seldonGRPC) SendFeedback(ctx context.Context, f *seldon.Feedback) (*seldon.SeldonMessage, error) {
	start := time.Now()
	resp := feedbackAnswer(f)
	if method, ok := grpc.Method(ctx); ok { // one of the two registered SendFeedback methods
		g.s.seldonCurried(method).WithLabelValues("unary", codes.OK.String()).Observe(time.Since(start).Seconds())
	}
	return resp, nil
}

func (g *seldonGRPC) Metadata(ctx context.Context, _ *emptypb.Empty) (*seldon.SeldonModelMetadata, error) {
	return g.s.seldonMetadata(), nil
}

func (g *seldonGRPC) ModelMetadata(ctx context.Context, req *seldon.SeldonModelMetadataRequest) (*seldon.SeldonModelMetadata, error) {
	if req.GetName() != "" {
		if err := g.s.checkModel(req.GetName(), ""); err != nil {
			return nil, grpcStatus(err).Err()
		}
	}
	return g.s.seldonMetadata(), nil
}

func (s *Server) seldonMetadata() *seldon.SeldonModelMetadata {
	md := &seldon.SeldonModelMetadata{
		Name:     s.opts.ModelName,
		Platform: s.opts.Platform,
		Inputs:   []*seldon.SeldonMessageMetadata{{Name: "input-0", Datatype: "FP32", Shape: []int64{-1, int64(s.nf)}}},
		Outputs:  []*seldon.SeldonMessageMetadata{{Name: v2OutputName, Datatype: "FP32", Shape: []int64{-1, int64(s.no)}}},
	}
	if s.opts.ModelVersion != "" {
		md.Versions = []string{s.opts.ModelVersion}
	}
	return md
}

// v2GRPC serves inference.GRPCInferenceService.
type v2GRPC struct {
	inference.UnimplementedGRPCInferenceServiceServer
	s *Server
}

func (v *v2GRPC) ServerLive(context.Context, *inference.ServerLiveRequest) (*inference.ServerLiveResponse, error) {
	return &inference.ServerLiveResponse{Live: true}, nil
}

func (v *v2GRPC) ServerReady(context.Context, *inference.ServerReadyRequest) (*inference.ServerReadyResponse, error) {
	return &inference.ServerReadyResponse{Ready: v.s.ready.Load()}, nil
}

func (v *v2GRPC) ModelReady(ctx context.Context, req *inference.ModelReadyRequest) (*inference.ModelReadyResponse, error) {
	if err := v.s.checkModel(req.GetName(), req.GetVersion()); err != nil {
		return nil, grpcStatus(err).Err()
	}
	return &inference.ModelReadyResponse{Ready: v.s.ready.Load()}, nil
}

func (v *v2GRPC) ServerMetadata(context.Context, *inference.ServerMetadataRequest) (*inference.ServerMetadataResponse, error) {
	return &inference.ServerMetadataResponse{Name: serverName, Version: serverVersion, Extensions: v2Extensions}, nil
}

func (v *v2GRPC) ModelMetadata(ctx context.Context, req *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	s := v.s
	if err := s.checkModel(req.GetName(), req.GetVersion()); err != nil {
		return nil, grpcStatus(err).Err()
	}
	md := &inference.ModelMetadataResponse{
		Name:     s.opts.ModelName,
		Platform: s.opts.Platform,
		Inputs:   []*inference.ModelMetadataResponse_TensorMetadata{{Name: "input-0", Datatype: "FP32", Shape: []int64{-1, int64(s.nf)}}},
		Outputs:  []*inference.ModelMetadataResponse_TensorMetadata{{Name: v2OutputName, Datatype: "FP32", Shape: []int64{-1, int64(s.no)}}},
	}
	if s.opts.ModelVersion != "" {
		md.Versions = []string{s.opts.ModelVersion}
	}
	return md, nil
}

// ModelInfer answers with raw_output_contents when the request came with
// raw_input_contents (what tritonclient sends), else with fp32_contents.
func (v *v2GRPC) ModelInfer(ctx context.Context, req *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	s := v.s
	var resp *inference.ModelInferResponse
	err := s.grpcCall(ctx, protoV2GRPC, func(wk *work) (int, error) {
		if err := s.checkModel(req.GetModelName(), req.GetModelVersion()); err != nil {
			return 0, err
		}
		if err := checkRequestedOutputs(req.GetOutputs()); err != nil {
			return 0, err
		}
		var n int
		var raw bool
		var err error
		if wk.x, n, raw, err = inferRows(req, s.nf, wk.x); err != nil {
			return 0, err
		}
		if err := s.predict(wk, n); err != nil {
			return 0, err
		}
		out := wk.out[:n*s.no]
		o := &inference.ModelInferResponse_InferOutputTensor{Name: v2OutputName, Datatype: "FP32", Shape: []int64{int64(n), int64(s.no)}}
		resp = &inference.ModelInferResponse{
			ModelName:    s.opts.ModelName,
			ModelVersion: s.opts.ModelVersion,
			Id:           req.GetId(),
			Outputs:      []*inference.ModelInferResponse_InferOutputTensor{o},
		}
		if raw {
			resp.RawOutputContents = [][]byte{appendRawFP32(make([]byte, 0, 4*len(out)), out)}
		} else {
			o.Contents = &inference.InferTensorContents{Fp32Contents: append([]float32(nil), out...)}
		}
		return n, nil
	})
	return resp, err
}
