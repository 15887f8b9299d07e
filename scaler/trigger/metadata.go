package trigger

import (
	"strconv"

	"github.com/mlscale/mlscale/collector"
)

// Metadata is a trigger's metadata as a ScaledObject carries it, for Go code
// that writes ScaledObjects: the keys Parse reads, typed once, so a writer
// and the scaler cannot disagree on a key's spelling. Empty fields are left
// out of the map.
type Metadata struct {
	// ScalerAddress is KEDA's own key: where the scaler listens.
	ScalerAddress string
	Namespace     string
	// Exactly one of these names the pods.
	DeploymentName, SeldonDeploymentName, ServiceName, LabelSelector string

	MetricName      string
	TargetValue     float64
	ActivationValue float64
	Aggregation     collector.Aggregation
	WakeServiceName string
}

// Map returns m as the trigger's `metadata` map.
func (m Metadata) Map() map[string]string {
	out := map[string]string{}
	set := func(key, v string) {
		if v != "" {
			out[key] = v
		}
	}
	num := func(key string, v float64) {
		if v != 0 {
			out[key] = strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	set("scalerAddress", m.ScalerAddress)
	set(KeyNamespace, m.Namespace)
	set(KeyDeploymentName, m.DeploymentName)
	set(KeySeldonDeploymentName, m.SeldonDeploymentName)
	set(KeyServiceName, m.ServiceName)
	set(KeyLabelSelector, m.LabelSelector)
	set(KeyMetricName, m.MetricName)
	num(KeyTargetValue, m.TargetValue)
	num(KeyActivationValue, m.ActivationValue)
	set(KeyAggregation, string(m.Aggregation))
	set(KeyWakeServiceName, m.WakeServiceName)
	return out
}
