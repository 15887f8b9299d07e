// Package scaler is a KEDA external scaler (the ExternalScaler gRPC service of
// KEDA's `external` and `external-push` triggers) over the collector's per-pod
// window. It never scrapes: every answer is read through the same
// collector.Reader the custom-metrics adapter serves from, so both front doors
// report the same numbers. It can run on its own (cmd/scaler) or inside the
// adapter process sharing one collector: New, then Serve or Register.
//
// A workload at zero pods has nothing to scrape, so nothing in the collector
// can wake it. With Config.ActivatorService (--activator-service) the scaler
// also watches the activator's demand stream (activator/api), and requests
// held or in flight there for a trigger's wake Service (metadata
// wakeServiceName, by default its serviceName) make the trigger active the
// moment they are held and, at zero pods, are the metric value, as KEDA's
// http-add-on does with its interceptor's queue.
package scaler

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/labels"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/scaler/trigger"
)

// PodCounter says how many pods a selector matches whether or not they have
// been scraped. With it, "no data because there are no pods" (a workload KEDA
// scaled to zero: legitimately idle, value 0) is told apart from "pods exist
// but have no data" (unknown: an error). Without it every no-data answer is an
// error, which is safe but keeps a ScaledObject at zero replicas not Ready.
type PodCounter interface {
	CountPods(ctx context.Context, namespace string, sel labels.Selector) (int, error)
}

// ServiceName is the gRPC service name KEDA calls, also used for health.
const ServiceName = "externalscaler.ExternalScaler"

// Server implements pb.ExternalScalerServer.
type Server struct {
	pb.UnimplementedExternalScalerServer

	reader   collector.Reader
	resolver collector.SelectorResolver
	pods     PodCounter
	cfg      Config
	pending  PendingSource
	log      *slog.Logger
	metrics  *metrics
	health   *health.Server

	done      chan struct{}
	closeOnce sync.Once
}

var _ pb.ExternalScalerServer = (*Server)(nil)

// New returns a scaler reading from reader, resolving workload names with
// resolver. cfg.Pods (optional) distinguishes zero pods from unscraped pods.
// Its metrics are registered on cfg.Registerer (a fresh registry when nil).
// With cfg.ActivatorService (and no cfg.Pending) it watches the activator's
// demand until Shutdown.
func New(reader collector.Reader, resolver collector.SelectorResolver, cfg Config) *Server {
	cfg.defaults()
	s := &Server{
		reader:   reader,
		resolver: resolver,
		pods:     cfg.Pods,
		cfg:      cfg,
		log:      cfg.Logger,
		metrics:  newMetrics(cfg.Registerer),
		health:   health.NewServer(),
		done:     make(chan struct{}),
	}
	// The health status starts as the collector's readiness is now, not
	// SERVING until followReadiness first looks (a client checking at once
	// would see SERVING before the collector is ready).
	st := healthpb.HealthCheckResponse_SERVING
	if cfg.Ready != nil && cfg.Ready() != nil {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(ServiceName, st)
	s.pending = cfg.Pending
	if s.pending == nil && cfg.ActivatorService != "" && cfg.Kube != nil {
		// Watched from now until Shutdown (which Serve calls when it
		// ends), so the first answer is there before KEDA asks.
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-s.done; cancel() }()
		w, err := WatchActivator(ctx, cfg.Kube, cfg.ActivatorService, cfg.Logger)
		if err != nil {
			// Validate has checked the name; nothing else fails here.
			cfg.Logger.Error("watching the activator's demand", "err", err)
		} else {
			s.pending = w
		}
	}
	return s
}

// pendingFor returns the requests held and the requests pending (held and
// in flight) at the activator for t's wake Service; ok is false without a
// source, a wake Service, or a fresh answer, when only the metric counts.
// Requests held are waiting for a ready endpoint, so while any are, the
// workload serves nothing new.
func (s *Server) pendingFor(t *trigger.Trigger) (held, pending int, ok bool) {
	if s.pending == nil || t.WakeService == "" {
		return 0, 0, false
	}
	held, inflight, ok := s.pending.Pending(t.Namespace, t.WakeService)
	return held, held + inflight, ok
}

// active is IsActive's answer: requests pending at the activator, or else the
// metric above activationValue.
func (s *Server) active(ctx context.Context, t *trigger.Trigger) (bool, error) {
	if _, n, ok := s.pendingFor(t); ok && n > 0 {
		return true, nil
	}
	v, err := s.value(ctx, t)
	if err != nil {
		return false, err
	}
	return v > t.Activation, nil
}

// Register adds the ExternalScaler and the standard gRPC health service to gs
// and pre-initialises the RPC metrics. gs should be built with
// GRPCServerOptions so that RPCs are counted and TLS applies.
func (s *Server) Register(gs *grpc.Server) {
	pb.RegisterExternalScalerServer(gs, s)
	healthpb.RegisterHealthServer(gs, s.health)
	s.metrics.grpc.InitializeMetrics(gs)
}

// Shutdown ends open streams (with Unavailable, so KEDA reconnects, possibly
// to another replica) and reports NOT_SERVING on the health service. Call it
// before grpc.Server.GracefulStop, which otherwise waits for streams that
// never end on their own.
func (s *Server) Shutdown() {
	s.closeOnce.Do(func() {
		s.health.Shutdown()
		close(s.done)
	})
}

// IsActive reports whether the workload's value is above activationValue
// or, with a pending source, requests are held or in flight at the activator
// for the trigger's wake Service.
func (s *Server) IsActive(ctx context.Context, ref *pb.ScaledObjectRef) (*pb.IsActiveResponse, error) {
	t, err := s.trigger(ref)
	if err != nil {
		return nil, err
	}
	a, err := s.active(ctx, t)
	if err != nil {
		return nil, err
	}
	return &pb.IsActiveResponse{Result: a}, nil
}

// GetMetricSpec returns the trigger's one metric and its target.
func (s *Server) GetMetricSpec(_ context.Context, ref *pb.ScaledObjectRef) (*pb.GetMetricSpecResponse, error) {
	t, err := s.trigger(ref)
	if err != nil {
		return nil, err
	}
	return metricSpec(t), nil
}

// GetMetrics returns the workload's aggregated value. At zero pods, with
// requests held or in flight at the activator for the wake Service, it returns
// their number instead (the metric is 0 there), so the HPA KEDA hands the
// woken workload to computes at least one replica.
func (s *Server) GetMetrics(ctx context.Context, req *pb.GetMetricsRequest) (*pb.GetMetricsResponse, error) {
	t, err := s.trigger(req.GetScaledObjectRef())
	if err != nil {
		return nil, err
	}
	// KEDA asks with the name GetMetricSpec returned (its "sN-" prefix
	// removed); anything else is a caller mixing up triggers.
	if name := req.GetMetricName(); name != "" && name != t.Metric {
		return nil, trigger.Invalid("metricName: request asks for %q but the trigger's %s is %q", name, trigger.KeyMetricName, t.Metric)
	}
	v, pods, err := s.read(ctx, t)
	held, pending, known := s.pendingFor(t)
	if err != nil {
		// Requests held at the activator mean no endpoint is ready: the
		// workload's pods, if any, serve nothing (the last one still
		// terminating after a scale to zero, the first one not scraped
		// yet), and the held requests are its demand. An error here would
		// also make KEDA rebuild the trigger's scalers (it does on any
		// metric error), closing the push stream that is to wake it: run
		// 2026-11-30T15:05 of bench-scaling (d) woke 9.4 s late that way.
		if !known || held == 0 || status.Code(err) != codes.Unavailable {
			return nil, err
		}
		v, pods = 0, 0
	}
	if pods == 0 && known && pending > 0 {
		v = max(v, float64(pending))
	}
	return &pb.GetMetricsResponse{MetricValues: []*pb.MetricValue{{
		MetricName:       t.Metric,
		MetricValue:      toInt64(v),
		MetricValueFloat: v,
	}}}, nil
}

// StreamIsActive sends the current state at once, then every change. The
// collector's window is polled every cfg.PollInterval, a fraction of its
// scrape interval, so a crossing is pushed within one scrape interval of the
// scrape that saw it. While the value is unknown (no data, scrape failing) the
// stream stays open and silent: "no data" must not be pushed as "inactive",
// and KEDA's polling IsActive/GetMetrics report the error meanwhile. Requests
// pending at the activator count as active (see IsActive) and are re-read at
// every new answer of the pending source as well.
func (s *Server) StreamIsActive(ref *pb.ScaledObjectRef, stream grpc.ServerStreamingServer[pb.IsActiveResponse]) error {
	t, err := s.trigger(ref)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	last, err := s.active(ctx, t)
	if err != nil {
		return err
	}
	done := s.metrics.streamOpened("StreamIsActive")
	defer done()

	if err := stream.Send(&pb.IsActiveResponse{Result: last}); err != nil {
		return err
	}
	s.metrics.pushes.WithLabelValues("StreamIsActive").Inc()
	tick := time.NewTicker(s.cfg.PollInterval)
	defer tick.Stop()
	failing := false
	for {
		var updated <-chan struct{} // nil: never
		if u, ok := s.pending.(updater); ok && t.WakeService != "" {
			updated = u.Updated()
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			return status.Error(codes.Unavailable, "scaler shutting down")
		case <-tick.C:
		case <-updated:
		}
		a, err := s.active(ctx, t)
		if err != nil {
			if !failing && ctx.Err() == nil {
				s.log.Warn("StreamIsActive: value unknown, holding last state", "scaledObject", ref.GetNamespace()+"/"+ref.GetName(), "err", err)
			}
			failing = true
			continue
		}
		failing = false
		if a != last {
			if err := stream.Send(&pb.IsActiveResponse{Result: a}); err != nil {
				return err
			}
			last = a
			s.metrics.pushes.WithLabelValues("StreamIsActive").Inc()
		}
	}
}

// StreamMetricSpec sends the current spec at once and keeps the stream open.
// The spec depends only on the trigger metadata, and KEDA rebuilds its scaler
// (and reopens this stream) when the ScaledObject changes, so there is never
// a later update to push; GetMetricSpec returns the same answer.
func (s *Server) StreamMetricSpec(ref *pb.ScaledObjectRef, stream grpc.ServerStreamingServer[pb.GetMetricSpecResponse]) error {
	t, err := s.trigger(ref)
	if err != nil {
		return err
	}
	done := s.metrics.streamOpened("StreamMetricSpec")
	defer done()
	if err := stream.Send(metricSpec(t)); err != nil {
		return err
	}
	s.metrics.pushes.WithLabelValues("StreamMetricSpec").Inc()
	select {
	case <-stream.Context().Done():
		return status.FromContextError(stream.Context().Err()).Err()
	case <-s.done:
		return status.Error(codes.Unavailable, "scaler shutting down")
	}
}

func (s *Server) trigger(ref *pb.ScaledObjectRef) (*trigger.Trigger, error) {
	return trigger.Parse(ref, s.reader.Metrics())
}

func metricSpec(t *trigger.Trigger) *pb.GetMetricSpecResponse {
	// The deprecated integer target must not be 0 for a positive float
	// target: older KEDA versions read only this field.
	return &pb.GetMetricSpecResponse{MetricSpecs: []*pb.MetricSpec{{
		MetricName:      t.Metric,
		TargetSize:      max(1, toInt64(t.Target)),
		TargetSizeFloat: t.Target,
	}}}
}

// Outcomes of one evaluation (the `outcome` label).
const (
	outcomeOK       = "ok"
	outcomeNoPods   = "no_pods"
	outcomeNoData   = "no_data"
	outcomeNotFound = "not_found"
	outcomeError    = "error"
)

// value reads and aggregates the trigger's metric. Errors are gRPC statuses:
// NotFound for a named workload that does not exist, Unavailable for pods that
// exist but have no data (not scraped yet, scrapes failing) and for backend
// failures, whose details go to the log rather than to the caller.
func (s *Server) value(ctx context.Context, t *trigger.Trigger) (float64, error) {
	v, _, err := s.read(ctx, t)
	return v, err
}

// read is value with the number of pods it aggregated (0: scaled to zero).
func (s *Server) read(ctx context.Context, t *trigger.Trigger) (float64, int, error) {
	sel := t.Selector
	if sel == nil {
		var err error
		sel, err = s.resolver.SelectorFor(ctx, t.Kind, t.Namespace, t.Name)
		switch {
		case errors.Is(err, collector.ErrWorkloadNotFound):
			s.metrics.outcome(t.Metric, outcomeNotFound)
			return 0, 0, status.Errorf(codes.NotFound, "%s: %s %s/%s not found or selects no pods", trigger.WorkloadKey(t.Kind), t.Kind, t.Namespace, t.Name)
		case err != nil:
			return 0, 0, s.backendError(ctx, t, "resolving the workload", err)
		}
	}
	var v float64
	var pods int
	var err error
	if t.Aggregation == "" {
		var agg collector.Aggregate
		agg, err = s.reader.AggregateValue(ctx, t.Metric, t.Namespace, sel)
		if err == nil && agg.Pods == 0 {
			err = collector.ErrNoData
		}
		v, pods = agg.Value, agg.Pods
	} else {
		var values []collector.PodValue
		values, err = s.reader.PodValues(ctx, t.Metric, t.Namespace, sel)
		if err == nil && len(values) == 0 {
			err = collector.ErrNoData
		}
		if err == nil {
			v, pods = collector.Combine(t.Aggregation, values).Value, len(values)
		}
	}
	switch {
	case err == nil:
		s.metrics.outcome(t.Metric, outcomeOK)
		return v, pods, nil
	case errors.Is(err, collector.ErrUnknownMetric):
		s.metrics.outcome(t.Metric, outcomeError)
		return 0, 0, trigger.Invalid("%s: %q is not served", trigger.KeyMetricName, t.Metric)
	case errors.Is(err, collector.ErrNoData):
		if s.pods != nil {
			n, cerr := s.pods.CountPods(ctx, t.Namespace, sel)
			if cerr == nil && n == 0 {
				// Scaled to zero: nothing is being served, which is a
				// real, known zero rather than missing data.
				s.metrics.outcome(t.Metric, outcomeNoPods)
				return 0, 0, nil
			}
			if cerr != nil {
				s.log.Warn("counting pods failed", "namespace", t.Namespace, "selector", sel.String(), "err", cerr)
			}
		}
		s.metrics.outcome(t.Metric, outcomeNoData)
		return 0, 0, status.Errorf(codes.Unavailable, "no data for %s from the pods of %s: not scraped yet or scrapes failing", t.Metric, t.Describe())
	default:
		return 0, 0, s.backendError(ctx, t, "reading "+t.Metric, err)
	}
}

func (s *Server) backendError(ctx context.Context, t *trigger.Trigger, doing string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	s.metrics.outcome(t.Metric, outcomeError)
	s.log.Error(doing+" failed", "workload", t.Describe(), "err", err)
	return status.Errorf(codes.Unavailable, "%s for %s failed; see the scaler's log", doing, t.Describe())
}

// toInt64 fills KEDA's deprecated integer fields.
func toInt64(v float64) int64 {
	switch {
	case v >= math.MaxInt64:
		return math.MaxInt64
	case v <= math.MinInt64:
		return math.MinInt64
	}
	return int64(math.Round(v))
}
