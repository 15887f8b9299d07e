package activator

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Hold outcomes (the `outcome` label of mlscale_activator_hold_outcomes_total).
const (
	outcomeReleased  = "released"
	outcomeTimeout   = "timeout"
	outcomeFull      = "full"
	outcomeCancelled = "cancelled"
)

type metrics struct {
	held     *prometheus.GaugeVec
	holdSecs *prometheus.HistogramVec
	outcomes *prometheus.CounterVec
	requests *prometheus.CounterVec
	retries  *prometheus.CounterVec
	wakes    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		held: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlscale_activator_held_requests", Help: "Requests waiting for a ready endpoint of their Service (cold start).",
		}, []string{"namespace", "service"}),
		holdSecs: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mlscale_activator_hold_seconds", Help: "Time requests that found no ready endpoint were held, whatever the outcome: the cold-start latency.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"namespace", "service"}),
		outcomes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_activator_hold_outcomes_total", Help: "Requests that found no ready endpoint, by outcome (released, timeout, full, cancelled).",
		}, []string{"namespace", "service", "outcome"}),
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_activator_requests_total", Help: "Requests answered, by Service and response code (the activator's own 503s and 502s included).",
		}, []string{"namespace", "service", "code"}),
		retries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_activator_retries_total", Help: "Requests offered to another endpoint because the first provably never received them, by reason.",
		}, []string{"reason"}),
		wakes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_activator_wakes_total", Help: "Scale-from-zero attempts on a Service's scale target, by result (scaled, already_up, error).",
		}, []string{"namespace", "service", "result"}),
	}
}
