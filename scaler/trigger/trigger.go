// Package trigger parses and validates the metadata of a KEDA `external` or
// `external-push` trigger aimed at mlscale's scaler: which pods, which
// metric, the target and activation values, how pod values fold into one,
// and which Service's gateway queue wakes the workload from zero pods.
package trigger

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
)

// Trigger metadata keys. A ScaledObject's `external` / `external-push` trigger
// carries them in `metadata`; KEDA forwards the whole map as
// ScaledObjectRef.scalerMetadata.
const (
	KeyNamespace            = "namespace"
	KeyDeploymentName       = "deploymentName"
	KeySeldonDeploymentName = "seldonDeploymentName"
	KeyServiceName          = "serviceName"
	KeyLabelSelector        = "labelSelector"
	KeyMetricName           = "metricName"
	KeyTargetValue          = "targetValue"
	KeyActivationValue      = "activationValue"
	KeyAggregation          = "aggregation"
	// KeyWakeServiceName names the Service (in the trigger's namespace)
	// the gateway routes the workload's requests to: requests the gateway
	// holds or forwards for it make the trigger active even at zero pods.
	// It defaults to serviceName when the trigger names its pods that way.
	KeyWakeServiceName = "wakeServiceName"
)

// KEDA's own keys for the external scaler; they reach us in the same map and
// are accepted without meaning anything here.
var kedaKeys = []string{"scalerAddress", "enableTLS", "unsafeSsl"}

// fromEnvSuffix: KEDA resolves `<key>FromEnv: ENV_VAR` against the scale
// target's container environment and forwards it under the same suffixed key,
// so every key may also arrive as <key>FromEnv.
const fromEnvSuffix = "FromEnv"

var ownKeys = []string{
	KeyNamespace, KeyDeploymentName, KeySeldonDeploymentName, KeyServiceName,
	KeyLabelSelector, KeyMetricName, KeyTargetValue, KeyActivationValue, KeyAggregation,
	KeyWakeServiceName,
}

// Trigger is one ScaledObject trigger's parsed, validated metadata.
type Trigger struct {
	Namespace string
	// Kind and Name name the workload (collector.Kind*); both empty when
	// Selector came from labelSelector.
	Kind, Name string
	// Selector is set when the trigger gave labelSelector.
	Selector labels.Selector

	Metric     string
	Target     float64
	Activation float64
	// Aggregation overrides how the per-pod values of the workload fold
	// into the one number KEDA asks for: sum, mean, max or min
	// (collector.Combine, the vocabulary of the collector's rules, aliases
	// such as avg included). "" (the default) is the collector rule's own
	// aggregation (collector.Aggregator): sums for rates, in-flight and
	// CPU, and pooled histograms for batch size and p99, exactly as the
	// adapter serves them. pooled is refused: it needs the pods'
	// histograms and is already the default of the metrics that pool.
	Aggregation collector.Aggregation
	// WakeService is the Service, in Namespace, whose requests held or in
	// flight at the gateway count as activity (KeyWakeServiceName); "" when
	// the trigger gives none and does not name its pods by serviceName.
	WakeService string
}

// workloadKeys map the mutually exclusive "which pods" keys to kinds.
var workloadKeys = []struct{ key, kind string }{
	{KeyDeploymentName, collector.KindDeployment},
	{KeySeldonDeploymentName, collector.KindSeldonDeployment},
	{KeyServiceName, collector.KindService},
	{KeyLabelSelector, ""},
}

// Parse validates a ScaledObjectRef's metadata. served lists the metric
// names the collector serves. Every error is a gRPC InvalidArgument status
// whose message names the offending key, so KEDA's log and the ScaledObject's
// events say what to fix.
func Parse(ref *pb.ScaledObjectRef, served []string) (*Trigger, error) {
	if ref == nil {
		return nil, Invalid("scaledObjectRef is required")
	}
	md := ref.GetScalerMetadata()
	if err := checkKeys(md); err != nil {
		return nil, err
	}
	get := func(key string) (string, error) {
		v, okPlain := md[key]
		e, okEnv := md[key+fromEnvSuffix]
		if okPlain && okEnv {
			return "", Invalid("%s and %s%s are mutually exclusive", key, key, fromEnvSuffix)
		}
		if okEnv {
			v = e
		}
		return strings.TrimSpace(v), nil
	}
	t := &Trigger{}
	var err error

	if t.Namespace, err = get(KeyNamespace); err != nil {
		return nil, err
	}
	if t.Namespace == "" {
		t.Namespace = ref.GetNamespace()
	}
	if t.Namespace == "" {
		return nil, Invalid("%s: not set in the trigger metadata and the ScaledObjectRef has no namespace", KeyNamespace)
	}

	var given []string
	for _, w := range workloadKeys {
		v, err := get(w.key)
		if err != nil {
			return nil, err
		}
		if v == "" {
			continue
		}
		given = append(given, w.key)
		if w.kind == "" {
			sel, err := labels.Parse(v)
			if err != nil {
				return nil, Invalid("%s: %v", KeyLabelSelector, err)
			}
			if sel.Empty() {
				return nil, Invalid("%s: %q selects every pod in the namespace; name the model server's labels", KeyLabelSelector, v)
			}
			t.Selector = sel
		} else {
			t.Kind, t.Name = w.kind, v
		}
	}
	switch len(given) {
	case 0:
		return nil, Invalid("one of %s, %s, %s or %s is required", KeyDeploymentName, KeySeldonDeploymentName, KeyServiceName, KeyLabelSelector)
	case 1:
	default:
		return nil, Invalid("%s are mutually exclusive: give one", strings.Join(given, " and "))
	}

	if t.Metric, err = get(KeyMetricName); err != nil {
		return nil, err
	}
	if t.Metric == "" {
		return nil, Invalid("%s is required (one of %s)", KeyMetricName, strings.Join(sorted(served), ", "))
	}
	if !slices.Contains(served, t.Metric) {
		return nil, Invalid("%s: %q is not served (one of %s)", KeyMetricName, t.Metric, strings.Join(sorted(served), ", "))
	}

	if t.Target, err = number(get, KeyTargetValue, true); err != nil {
		return nil, err
	}
	if !(t.Target > 0) {
		return nil, Invalid("%s: must be greater than 0, got %v", KeyTargetValue, t.Target)
	}
	if t.Activation, err = number(get, KeyActivationValue, false); err != nil {
		return nil, err
	}
	if t.Activation < 0 {
		return nil, Invalid("%s: must not be negative, got %v", KeyActivationValue, t.Activation)
	}

	agg, err := get(KeyAggregation)
	if err != nil {
		return nil, err
	}
	if t.Aggregation, err = collector.ParseAggregation(agg); err != nil {
		return nil, Invalid("%s: %v", KeyAggregation, err)
	}
	if t.Aggregation == collector.AggPooled {
		return nil, Invalid("%s: pooled combines the pods' histograms and is already the default of the metrics whose rule pools (batch size, p99); leave %s unset, or give sum, mean, max or min", KeyAggregation, KeyAggregation)
	}

	if t.WakeService, err = get(KeyWakeServiceName); err != nil {
		return nil, err
	}
	if t.WakeService != "" {
		if errs := validation.IsDNS1035Label(t.WakeService); len(errs) > 0 {
			return nil, Invalid("%s: %q is not a Service name: %s", KeyWakeServiceName, t.WakeService, strings.Join(errs, "; "))
		}
	} else if t.Kind == collector.KindService {
		t.WakeService = t.Name
	}
	return t, nil
}

// number parses a finite float; an absent optional key is 0.
func number(get func(string) (string, error), key string, required bool) (float64, error) {
	s, err := get(key)
	if err != nil {
		return 0, err
	}
	if s == "" {
		if required {
			return 0, Invalid("%s is required", key)
		}
		return 0, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, Invalid("%s: %q is not a finite number", key, s)
	}
	return v, nil
}

// checkKeys rejects keys nobody reads: a typo such as "targetvalue" would
// otherwise silently fall back to a default.
func checkKeys(md map[string]string) error {
	var unknown []string
	for k := range md {
		base := strings.TrimSuffix(k, fromEnvSuffix)
		if slices.Contains(ownKeys, base) || slices.Contains(kedaKeys, k) {
			continue
		}
		unknown = append(unknown, k)
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Invalid("unknown metadata key(s) %s (known: %s)", strings.Join(unknown, ", "), strings.Join(ownKeys, ", "))
	}
	return nil
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	sort.Strings(c)
	return c
}

// Invalid is the InvalidArgument status every metadata error is.
func Invalid(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

// Describe names the pods for messages.
func (t *Trigger) Describe() string {
	if t.Selector != nil {
		return fmt.Sprintf("namespace %s selector %q", t.Namespace, t.Selector.String())
	}
	return fmt.Sprintf("%s %s/%s", t.Kind, t.Namespace, t.Name)
}

// WorkloadKey is the metadata key that names a workload of kind.
func WorkloadKey(kind string) string {
	for _, w := range workloadKeys {
		if w.kind == kind {
			return w.key
		}
	}
	return KeyLabelSelector
}
