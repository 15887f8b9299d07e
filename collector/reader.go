// Package collector discovers model-server pods, scrapes their Prometheus
// metrics directly, and keeps a short per-pod window from which it computes the
// values the adapter and the scaler serve. The adapter and the scaler never
// scrape on their own: they read through Reader.
package collector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/labels"
)

// ErrUnknownMetric is returned (wrapped) for a metric name no rule serves.
var ErrUnknownMetric = errors.New("unknown metric")

// ErrNoData is returned (wrapped) when no selected pod has a value for the
// metric yet. "No data" is never reported as zero.
var ErrNoData = errors.New("no data")

// NoData is the ErrNoData (wrapped) of metric for the pods in namespace
// matching sel ("<all>" when nil): none of them (pods is 0), or none of the
// pods had a value.
func NoData(metric, namespace string, sel labels.Selector, pods int) error {
	s := "<all>"
	if sel != nil {
		s = sel.String()
	}
	if pods == 0 {
		return fmt.Errorf("%w: %s: no ready, warmed-up pod in namespace %q matches %q", ErrNoData, metric, namespace, s)
	}
	return fmt.Errorf("%w: %s: none of the %d pods in namespace %q matching %q has a value yet", ErrNoData, metric, pods, namespace, s)
}

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

// Reader is what the adapter's provider and the KEDA scaler read: the one
// interface both front doors import. Implementations: the scraping
// collector and the Prometheus-query source (collector/promql).
type Reader interface {
	// Metrics lists the served metric names.
	Metrics() []string
	// PodValues returns the named metric for every ready, warmed-up pod in
	// namespace matching sel that has data. It fails with ErrUnknownMetric or
	// ErrNoData (wrapped) rather than returning an empty or zero answer.
	PodValues(ctx context.Context, metric, namespace string, sel labels.Selector) ([]PodValue, error)
	// Aggregator gives a workload's value as the metric's rule combines
	// its pods (the same number for the adapter and the scaler).
	Aggregator
}

// Workload kinds SelectorFor resolves. Matching is case-insensitive and also
// accepts the plural resource and the short names kubectl knows
// ("deployments", "deploy", "seldondeployments", "sdep", "services", "svc").
const (
	KindDeployment       = "Deployment"
	KindSeldonDeployment = "SeldonDeployment"
	KindService          = "Service"
)

// SeldonDeploymentLabel is the label Seldon Core v1's operator puts on every
// pod (and Deployment and Service) it creates for a SeldonDeployment, with the
// SeldonDeployment's name as value.
const SeldonDeploymentLabel = "seldon-deployment-id"

// ErrUnsupportedKind is returned (wrapped) by SelectorFor for a kind it does
// not know.
var ErrUnsupportedKind = errors.New("unsupported workload kind")

// ErrWorkloadNotFound is returned (wrapped) by SelectorFor when the named
// workload does not exist (or selects no pods by construction, such as a
// Service without a selector).
var ErrWorkloadNotFound = errors.New("workload not found")

// SelectorResolver resolves a workload to the label selector of its pods, so a
// caller that names a Deployment, SeldonDeployment or Service can read
// PodValues for exactly its pods.
type SelectorResolver interface {
	// SelectorFor returns the pod selector of the workload kind/namespace/name.
	// It fails with ErrUnsupportedKind or ErrWorkloadNotFound (wrapped).
	SelectorFor(ctx context.Context, kind, namespace, name string) (labels.Selector, error)
}

// Aggregate is one metric over a set of pods, such as a workload's.
type Aggregate struct {
	Value float64
	// Pods is how many pods contributed.
	Pods int
	// Timestamp is the oldest of the contributing pods' newest samples: the
	// aggregate is only as fresh as its stalest part.
	Timestamp time.Time
	// Window is the longest span of samples behind Value.
	Window time.Duration
}

// Aggregator combines the selected pods' data into one value the way the
// metric's rule says: rates and gauges add up by default, histogram means and
// quantiles pool the pods' increases (so the answer is the workload's mean
// or p99, not an average of averages).
type Aggregator interface {
	// AggregateValue fails like PodValues: ErrUnknownMetric or ErrNoData
	// (wrapped), never a zero for "nothing known".
	AggregateValue(ctx context.Context, metric, namespace string, sel labels.Selector) (Aggregate, error)
}
