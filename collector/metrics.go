package collector

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// selfMetrics are the collector's own metrics, on an injected registry.
type selfMetrics struct {
	scrapeDuration *prometheus.HistogramVec
	scrapeErrors   *prometheus.CounterVec
	podsTracked    prometheus.Gauge
	cycleDuration  prometheus.Histogram
}

func newSelfMetrics(reg prometheus.Registerer) *selfMetrics {
	f := promauto.With(reg)
	return &selfMetrics{
		scrapeDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mlscale_collector_scrape_duration_seconds",
			Help:    "Time to scrape and parse one pod's metrics, failed scrapes included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"namespace", "pod"}),
		scrapeErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_collector_scrape_errors_total",
			Help: "Failed scrapes of one pod's metrics.",
		}, []string{"namespace", "pod"}),
		podsTracked: f.NewGauge(prometheus.GaugeOpts{
			Name: "mlscale_collector_pods_tracked",
			Help: "Ready pods currently scraped.",
		}),
		cycleDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "mlscale_collector_cycle_duration_seconds",
			Help:    "Time for one scrape cycle over every tracked pod.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
}

// forget drops a departed pod's series so churn does not grow the registry.
func (m *selfMetrics) forget(namespace, pod string) {
	l := prometheus.Labels{"namespace": namespace, "pod": pod}
	m.scrapeDuration.Delete(l)
	m.scrapeErrors.Delete(l)
}
