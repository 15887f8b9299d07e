// Package collector discovers model-server pods, scrapes their Prometheus
// metrics directly, and keeps a short per-pod window from which it computes the
// values the adapter and the scaler serve. The adapter and the scaler never
// scrape on their own: they read through Reader.
package collector

import (
	"context"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/labels"
)

// ErrUnknownMetric is returned (wrapped) for a metric name no rule serves.
var ErrUnknownMetric = errors.New("unknown metric")

// ErrNoData is returned (wrapped) when no selected pod has a value for the
// metric yet. "No data" is never reported as zero.
var ErrNoData = errors.New("no data")

// PodValue is one pod's current value of a served metric.
type PodValue struct {
	Namespace string
	Pod       string
	Value     float64
	// Timestamp is when the newest sample behind Value was taken.
	Timestamp time.Time
	// Window is the span of samples Value was computed over (0 for gauges).
	Window time.Duration
}

// Reader is what the adapter and the scaler read. Implementations: the
// scraping collector and the Prometheus-query source.
type Reader interface {
	// Metrics lists the served metric names.
	Metrics() []string
	// PodValues returns the named metric for every ready, warmed-up pod in
	// namespace matching sel that has data. It fails with ErrUnknownMetric or
	// ErrNoData (wrapped) rather than returning an empty or zero answer.
	PodValues(ctx context.Context, metric, namespace string, sel labels.Selector) ([]PodValue, error)
}
