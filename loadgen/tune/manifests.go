package tune

import (
	"fmt"
	"math"
	"strconv"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/mlscale/mlscale/scaler/trigger"
)

// Target says what the manifests scale.
type Target struct {
	Namespace, Name string
	// Kind is Deployment (the HPA and the ScaledObject target it);
	// the SeldonDeployment's hpaSpec targets its own Deployment.
	MinReplicas, MaxReplicas int32
	// CPURequest is the pod's requests.cpu in cores, for a CPU
	// utilisation target (percent of the request).
	CPURequest float64
	// ScalerAddress is the mlscale KEDA scaler's gRPC address.
	ScalerAddress string
}

// Quantity renders a target value as a Kubernetes quantity (milli
// precision: "1500", "12500m").
func Quantity(v float64) resource.Quantity {
	return *resource.NewMilliQuantity(int64(math.Round(v*1000)), resource.DecimalSI)
}

// CPUUtilization is a CPU target in cores as percent of the request.
func CPUUtilization(cores, request float64) (int32, error) {
	if request <= 0 {
		return 0, fmt.Errorf("a CPU target needs the pod's CPU request (--cpu-request)")
	}
	return int32(math.Max(1, math.Round(100*cores/request))), nil
}

// MetricSpec is the HPA metric for the recommendation.
func (r Recommendation) MetricSpec(t Target) (autoscalingv2.MetricSpec, error) {
	if r.Signal.Metric == "cpu" {
		u, err := CPUUtilization(r.Target, t.CPURequest)
		if err != nil {
			return autoscalingv2.MetricSpec{}, err
		}
		return autoscalingv2.MetricSpec{Type: autoscalingv2.ResourceMetricSourceType, Resource: &autoscalingv2.ResourceMetricSource{
			Name: "cpu", Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: &u},
		}}, nil
	}
	q := Quantity(r.Target)
	return autoscalingv2.MetricSpec{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricSource{
		Metric: autoscalingv2.MetricIdentifier{Name: r.Signal.Metric},
		Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: &q},
	}}, nil
}

// behavior is the base HPA's: scale up at once (double or four pods per
// 15 s), down after a minute of lower load.
func behavior() *autoscalingv2.HorizontalPodAutoscalerBehavior {
	return &autoscalingv2.HorizontalPodAutoscalerBehavior{
		ScaleUp: &autoscalingv2.HPAScalingRules{
			StabilizationWindowSeconds: ptr.To[int32](0),
			Policies: []autoscalingv2.HPAScalingPolicy{
				{Type: autoscalingv2.PercentScalingPolicy, Value: 100, PeriodSeconds: 15},
				{Type: autoscalingv2.PodsScalingPolicy, Value: 4, PeriodSeconds: 15},
			},
			SelectPolicy: ptr.To(autoscalingv2.MaxChangePolicySelect),
		},
		ScaleDown: &autoscalingv2.HPAScalingRules{
			StabilizationWindowSeconds: ptr.To[int32](60),
			Policies:                   []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PercentScalingPolicy, Value: 50, PeriodSeconds: 30}},
		},
	}
}

func (r Recommendation) comment() string {
	return fmt.Sprintf("# Written by `loadgen tune`: one pod serves %s %s within the SLO at the\n"+
		"# smallest of the measured mixes; the target is %.0f%% below that.\n"+
		"# desired replicas = ceil(total %s / %s)\n",
		fmtValue(r.Capacity), r.Signal.Label, r.Headroom*100, r.Signal.Label, fmtValue(r.Target))
}

// HPA renders the autoscaling/v2 HorizontalPodAutoscaler.
func (r Recommendation) HPA(t Target) ([]byte, error) {
	m, err := r.MetricSpec(t)
	if err != nil {
		return nil, err
	}
	hpa := autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: metav1.ObjectMeta{Name: t.Name, Namespace: t.Namespace},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: t.Name},
			MinReplicas:    ptr.To(t.MinReplicas), MaxReplicas: t.MaxReplicas,
			Metrics:  []autoscalingv2.MetricSpec{m},
			Behavior: behavior(),
		},
	}
	b, err := yaml.Marshal(hpa)
	if err != nil {
		return nil, err
	}
	return append([]byte(r.comment()), stripStatus(b)...), nil
}

// SeldonHPASpec renders the SeldonDeployment predictor's hpaSpec (Seldon
// Core v1's metricsv2 field, the autoscaling/v2 shape).
func (r Recommendation) SeldonHPASpec(t Target) ([]byte, error) {
	m, err := r.MetricSpec(t)
	if err != nil {
		return nil, err
	}
	spec := map[string]any{"hpaSpec": map[string]any{
		"minReplicas": t.MinReplicas, "maxReplicas": t.MaxReplicas, "metricsv2": []autoscalingv2.MetricSpec{m},
	}}
	b, err := yaml.Marshal(spec)
	if err != nil {
		return nil, err
	}
	return append([]byte(r.comment()+"# Put under spec.predictors[].componentSpecs[] of the SeldonDeployment.\n"), b...), nil
}

// ScaledObject renders the KEDA ScaledObject: mlscale's external scaler for
// the adapter's metrics, KEDA's cpu trigger for CPU.
func (r Recommendation) ScaledObject(t Target) ([]byte, error) {
	var trig map[string]any
	if r.Signal.Metric == "cpu" {
		u, err := CPUUtilization(r.Target, t.CPURequest)
		if err != nil {
			return nil, err
		}
		trig = map[string]any{"type": "cpu", "metricType": "Utilization", "metadata": map[string]any{"value": strconv.Itoa(int(u))}}
	} else {
		trig = map[string]any{
			"type": "external", "name": "tuned", "metricType": "AverageValue",
			// The keys the scaler parses, from its own type.
			"metadata": trigger.Metadata{
				ScalerAddress: t.ScalerAddress, Namespace: t.Namespace, DeploymentName: t.Name,
				MetricName: r.Signal.Metric, TargetValue: math.Round(r.Target*1000) / 1000,
			}.Map(),
			"authenticationRef": map[string]any{"name": "mlscale-scaler-tls"},
		}
	}
	so := map[string]any{
		"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
		"metadata": map[string]any{"name": t.Name, "namespace": t.Namespace},
		"spec": map[string]any{
			"scaleTargetRef":  map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "name": t.Name},
			"minReplicaCount": t.MinReplicas, "maxReplicaCount": t.MaxReplicas,
			"pollingInterval": 5,
			"triggers":        []any{trig},
		},
	}
	b, err := yaml.Marshal(so)
	if err != nil {
		return nil, err
	}
	return append([]byte(r.comment()), b...), nil
}

// stripStatus drops the empty status and creationTimestamp a typed object
// marshals with.
func stripStatus(b []byte) []byte {
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return b
	}
	delete(m, "status")
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	out, err := yaml.Marshal(m)
	if err != nil {
		return b
	}
	return out
}
