package modelserver

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Protocol label values of the mlscale_* series, indexed by the proto*
// constants.
var protocolNames = [...]string{protoSeldon: "seldon", protoV2: "v2", protoSeldonGRPC: "seldon-grpc", protoV2GRPC: "v2-grpc"}

const (
	protoSeldon = iota
	protoV2
	protoSeldonGRPC
	protoV2GRPC
	numProtocols
)

// durationBuckets cover a 1-row answer on loopback (well under 1 ms) up to
// a 10,000-row batch on a busy pod (hundreds of ms) and a stalled one.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// batchBuckets are rows per request: the seed sends 1 to 10,000 rows, and
// a 1-2-5 ladder up to 100,000 keeps the mean and the quantiles honest
// above that too.
var batchBuckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000}

// seldonBuckets are the Seldon executor's DefBuckets, so Seldon's Grafana
// dashboards and recording rules read this histogram unchanged.
var seldonBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// metrics are the series of ARCHITECTURE.md's metrics contract.
type metrics struct {
	requests  *prometheus.CounterVec   // model, protocol, code
	duration  *prometheus.HistogramVec // model, protocol
	batch     *prometheus.HistogramVec // model, protocol
	rows      prometheus.Counter       // model
	inflight  prometheus.Gauge         // model
	seldonReq *prometheus.HistogramVec // deployment_name, predictor_name, predictor_version, service, method, code
}

func newMetrics(reg prometheus.Registerer, model string) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_requests_total",
			Help: "Prediction requests answered, by protocol and HTTP status code.",
		}, []string{"model", "protocol", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mlscale_request_duration_seconds",
			Help:    "Server-side latency of prediction requests, from the first byte read to the last byte written.",
			Buckets: durationBuckets,
		}, []string{"model", "protocol"}),
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mlscale_batch_size",
			Help:    "Rows per successful prediction request.",
			Buckets: batchBuckets,
		}, []string{"model", "protocol"}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "mlscale_predicted_rows_total",
			Help:        "Rows predicted.",
			ConstLabels: prometheus.Labels{"model": model},
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "mlscale_inflight_requests",
			Help:        "Prediction requests being served.",
			ConstLabels: prometheus.Labels{"model": model},
		}),
		// Name, help, labels and buckets as in Seldon Core's executor
		// (executor/api/metric), whose REST server times each service with
		// promhttp.InstrumentHandlerDuration.
		seldonReq: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "seldon_api_executor_server_requests_seconds",
			Help:    "A histogram of latencies for executor server",
			Buckets: seldonBuckets,
		}, []string{"deployment_name", "predictor_name", "predictor_version", "service", "method", "code"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.batch, m.rows, m.inflight, m.seldonReq} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Start the success series and the histograms at zero, so a scraper
	// computes a rate from the first scrape instead of the second.
	for _, p := range protocolNames {
		m.requests.WithLabelValues(model, p, "200")
		m.duration.WithLabelValues(model, p)
		m.batch.WithLabelValues(model, p)
	}
	return m, nil
}

// newRegistry is a private registry with the Go and process collectors
// (process_cpu_seconds_total is the contract's CPU series).
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}
