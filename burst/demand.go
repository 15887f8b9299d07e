package burst

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/mlscale/mlscale/collector"
)

// Query names the demand a burst reads: a served metric over the pods sel
// picks in namespace.
type Query struct {
	Namespace, Metric string
	Selector          labels.Selector
	// Service is the Service an Object metric describes, when it is one
	// (the activator's demand metrics are served on Services).
	Service string
}

// Demand reads current demand. The collector's aggregate over the pods is one
// implementation (CollectorDemand); an edge count of arrivals (the
// activator's per-Service requests, which exist before the pods catch up and
// do not saturate with them) is another.
type Demand interface {
	// Demand returns the value and when its newest data was taken. No data
	// is an error, never a zero.
	Demand(ctx context.Context, q Query) (Reading, error)
}

// CollectorDemand reads the collector's aggregate over the pods: the same
// numbers the adapter serves the HPA.
type CollectorDemand struct{ Source collector.Aggregator }

// Demand implements Demand.
func (c CollectorDemand) Demand(ctx context.Context, q Query) (Reading, error) {
	a, err := c.Source.AggregateValue(ctx, q.Metric, q.Namespace, q.Selector)
	if err != nil {
		return Reading{}, fmt.Errorf("reading %s in %s for %s: %w", q.Metric, q.Namespace, selString(q.Selector), err)
	}
	return Reading{Value: a.Value, At: a.Timestamp}, nil
}
