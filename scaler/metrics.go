package scaler

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the scaler's own series. RPC counts and latency by method and
// code come from the gRPC ecosystem's Prometheus middleware
// (grpc_server_handled_total, grpc_server_handling_seconds, ...), so the
// usual gRPC dashboards work unchanged.
type metrics struct {
	grpc          *grpcprom.ServerMetrics
	activeStreams *prometheus.GaugeVec
	pushes        *prometheus.CounterVec
	evaluations   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			// Answers come from memory: sub-millisecond buckets matter.
			grpcprom.WithHistogramBuckets([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}),
		)),
	}
	reg.MustRegister(m.grpc)
	f := promauto.With(reg)
	m.activeStreams = f.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mlscale_scaler_active_streams",
		Help: "Open server streams (StreamIsActive, StreamMetricSpec) by method.",
	}, []string{"method"})
	m.pushes = f.NewCounterVec(prometheus.CounterOpts{
		Name: "mlscale_scaler_stream_messages_total",
		Help: "Messages sent on server streams by method (the first state and every change).",
	}, []string{"method"})
	m.evaluations = f.NewCounterVec(prometheus.CounterOpts{
		Name: "mlscale_scaler_evaluations_total",
		Help: "Reads of the collector by metric and outcome (ok, no_pods, no_data, not_found, error).",
	}, []string{"metric", "outcome"})
	for _, method := range []string{"StreamIsActive", "StreamMetricSpec"} {
		m.activeStreams.WithLabelValues(method)
		m.pushes.WithLabelValues(method)
	}
	return m
}

// streamOpened counts an open stream until the returned func runs.
func (m *metrics) streamOpened(method string) func() {
	g := m.activeStreams.WithLabelValues(method)
	g.Inc()
	return g.Dec
}

func (m *metrics) outcome(metric, outcome string) {
	m.evaluations.WithLabelValues(metric, outcome).Inc()
}
