package trigger

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/apimachinery/pkg/labels"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
)

// What Metadata writes, Parse reads back as the same trigger.
func TestMetadataRoundTrip(t *testing.T) {
	served := []string{"requests_per_second", "batch_size"}
	tests := []struct {
		name string
		md   Metadata
		want Trigger
	}{
		{"deployment", Metadata{ScalerAddress: "mlscale-scaler.mlscale.svc:6000", Namespace: "models", DeploymentName: "iris", MetricName: "requests_per_second", TargetValue: 4.125},
			Trigger{Namespace: "models", Kind: collector.KindDeployment, Name: "iris", Metric: "requests_per_second", Target: 4.125}},
		{"seldon, activation, aggregation", Metadata{SeldonDeploymentName: "sdep", MetricName: "batch_size", TargetValue: 500, ActivationValue: 0.5, Aggregation: collector.AggMax, WakeServiceName: "iris"},
			Trigger{Namespace: "so-ns", Kind: collector.KindSeldonDeployment, Name: "sdep", Metric: "batch_size", Target: 500, Activation: 0.5, Aggregation: collector.AggMax, WakeService: "iris"}},
		{"service", Metadata{ServiceName: "iris", MetricName: "requests_per_second", TargetValue: 1},
			Trigger{Namespace: "so-ns", Kind: collector.KindService, Name: "iris", Metric: "requests_per_second", Target: 1, WakeService: "iris"}},
		{"selector", Metadata{LabelSelector: "app=iris", MetricName: "requests_per_second", TargetValue: 1e-3},
			Trigger{Namespace: "so-ns", Selector: labels.SelectorFromSet(labels.Set{"app": "iris"}), Metric: "requests_per_second", Target: 1e-3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(&pb.ScaledObjectRef{Name: "so", Namespace: "so-ns", ScalerMetadata: tc.md.Map()}, served)
			if err != nil {
				t.Fatalf("Parse(%v): %v", tc.md.Map(), err)
			}
			if diff := cmp.Diff(&tc.want, got, cmpopts.IgnoreFields(Trigger{}, "Selector")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if (tc.want.Selector == nil) != (got.Selector == nil) || got.Selector != nil && got.Selector.String() != tc.want.Selector.String() {
				t.Errorf("selector %v, want %v", got.Selector, tc.want.Selector)
			}
		})
	}
	// Every field is a key Parse knows.
	all := Metadata{ScalerAddress: "a", Namespace: "n", DeploymentName: "d", SeldonDeploymentName: "s", ServiceName: "v", LabelSelector: "l",
		MetricName: "m", TargetValue: 1, ActivationValue: 1, Aggregation: collector.AggSum, WakeServiceName: "w"}
	if err := checkKeys(all.Map()); err != nil {
		t.Errorf("a key Metadata writes is unknown to Parse: %v", err)
	}
	if n := len(all.Map()); n != 11 {
		t.Errorf("Metadata wrote %d keys, want one per field (11)", n)
	}
}
