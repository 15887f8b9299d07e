// Package replicas samples how many replicas serve the target while a load
// runs: the scale subresource of the scaled object (a Deployment, a
// SeldonDeployment or anything else with /scale) and the status of the
// HorizontalPodAutoscaler driving it, including the metric values the HPA
// currently sees. Reads go through client-go, so a kubeconfig that works for
// kubectl works here.
package replicas

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Sample is the scale of the target at one moment.
type Sample struct {
	Time time.Time
	// Spec is the replicas asked for (scale spec); Status the replicas
	// that exist (scale status).
	Spec, Status int32
	// HPA is empty when no autoscaler was found.
	HPA             string
	Current, Desire int32
	// DesireKnown says the HPA computed Desire from its metrics: false
	// before its first sync and while it cannot read them (its status then
	// holds 0 or the current count, not a decision), so Desire must not be
	// drawn or counted as one.
	DesireKnown bool
	// Metrics are the HPA's current metric values, e.g. "cpu=41%" or
	// "pods/requests_per_second=12.5".
	Metrics []string
}

// Sampler reads one sample.
type Sampler interface {
	Sample(ctx context.Context) (Sample, error)
}

// Target names the scaled object.
type Target struct {
	// Resource in kubectl's resource.version.group form, e.g.
	// "deployments.v1.apps" or "seldondeployments.v1.machinelearning.seldon.io".
	Resource  string
	Namespace string
	Name      string
	// HPA names the autoscaler; empty means the one whose scaleTargetRef
	// names the target or, failing that, the only one whose target's name
	// starts with the target's name and a dash (what Seldon Core generates).
	HPA string
}

type kubeSampler struct {
	dyn    dynamic.Interface
	kube   kubernetes.Interface
	gvr    schema.GroupVersionResource
	target Target
}

// NewKube returns a Sampler that reads through the API server cfg points at.
func NewKube(cfg *rest.Config, t Target) (Sampler, error) {
	gvr, gr := schema.ParseResourceArg(t.Resource)
	if gvr == nil {
		return nil, fmt.Errorf("scale target resource %q: want resource.version.group, e.g. deployments.v1.apps (%s)", t.Resource, gr)
	}
	if t.Namespace == "" || t.Name == "" {
		return nil, errors.New("scale target needs a namespace and a name")
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating dynamic client: %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating clientset: %w", err)
	}
	return &kubeSampler{dyn: dyn, kube: kube, gvr: *gvr, target: t}, nil
}

// Sample reads the scale subresource, then the HPA. A missing HPA is not an
// error (the target may be scaled by hand); a failing scale read is.
func (k *kubeSampler) Sample(ctx context.Context) (Sample, error) {
	s := Sample{Time: time.Now()}
	u, err := k.dyn.Resource(k.gvr).Namespace(k.target.Namespace).Get(ctx, k.target.Name, metav1.GetOptions{}, "scale")
	if err != nil {
		return s, fmt.Errorf("reading scale of %s %s/%s: %w", k.gvr.Resource, k.target.Namespace, k.target.Name, err)
	}
	spec, _, _ := unstructured.NestedInt64(u.Object, "spec", "replicas")
	status, _, _ := unstructured.NestedInt64(u.Object, "status", "replicas")
	s.Spec, s.Status = int32(spec), int32(status)

	hpa, err := k.hpa(ctx)
	if err != nil {
		return s, err
	}
	if hpa != nil {
		s.HPA = hpa.Name
		s.Current, s.Desire = hpa.Status.CurrentReplicas, hpa.Status.DesiredReplicas
		s.DesireKnown = DesireKnown(hpa.Status)
		for _, m := range hpa.Status.CurrentMetrics {
			s.Metrics = append(s.Metrics, FormatMetric(m))
		}
	}
	return s, nil
}

func (k *kubeSampler) hpa(ctx context.Context) (*autoscalingv2.HorizontalPodAutoscaler, error) {
	c := k.kube.AutoscalingV2().HorizontalPodAutoscalers(k.target.Namespace)
	if k.target.HPA != "" {
		h, err := c.Get(ctx, k.target.HPA, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("reading HPA %s/%s: %w", k.target.Namespace, k.target.HPA, err)
		}
		return h, nil
	}
	list, err := c.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing HPAs in %s: %w", k.target.Namespace, err)
	}
	var derived []*autoscalingv2.HorizontalPodAutoscaler
	for i := range list.Items {
		ref := list.Items[i].Spec.ScaleTargetRef
		gv, _ := schema.ParseGroupVersion(ref.APIVersion)
		if ref.Name == k.target.Name && gv.Group == k.gvr.Group {
			return &list.Items[i], nil
		}
		if strings.HasPrefix(ref.Name, k.target.Name+"-") {
			derived = append(derived, &list.Items[i])
		}
	}
	// Seldon Core v1 turns a SeldonDeployment's hpaSpec into an HPA on the
	// Deployment it generates, {sdep}-{predictor}-{container}: use it when
	// it is the only such one.
	if len(derived) == 1 {
		return derived[0], nil
	}
	return nil, nil
}

// DesireKnown says whether an HPA status's desiredReplicas is a decision:
// ScalingActive is True (the metrics were read), or False only because the
// target is at zero replicas (ScalingDisabled, KEDA's idle state, where 0 is
// the real count).
func DesireKnown(st autoscalingv2.HorizontalPodAutoscalerStatus) bool {
	for _, c := range st.Conditions {
		if c.Type == autoscalingv2.ScalingActive {
			return c.Status == corev1.ConditionTrue || c.Reason == "ScalingDisabled"
		}
	}
	return false
}

// FormatMetric renders an HPA metric status as name=value.
func FormatMetric(m autoscalingv2.MetricStatus) string {
	var name string
	var cur autoscalingv2.MetricValueStatus
	switch {
	case m.Resource != nil:
		name, cur = string(m.Resource.Name), m.Resource.Current
	case m.ContainerResource != nil:
		name, cur = m.ContainerResource.Container+"/"+string(m.ContainerResource.Name), m.ContainerResource.Current
	case m.Pods != nil:
		name, cur = "pods/"+m.Pods.Metric.Name, m.Pods.Current
	case m.Object != nil:
		name, cur = "object/"+m.Object.Metric.Name, m.Object.Current
	case m.External != nil:
		name, cur = "external/"+m.External.Metric.Name, m.External.Current
	default:
		return string(m.Type) + "=?"
	}
	switch {
	case cur.AverageUtilization != nil:
		return name + "=" + strconv.Itoa(int(*cur.AverageUtilization)) + "%"
	case cur.AverageValue != nil:
		return name + "=" + strconv.FormatFloat(cur.AverageValue.AsApproximateFloat64(), 'g', 6, 64)
	case cur.Value != nil:
		return name + "=" + strconv.FormatFloat(cur.Value.AsApproximateFloat64(), 'g', 6, 64)
	}
	return name + "=?"
}

// Loop samples every interval until ctx ends, handing each sample or error
// to the callbacks (from this goroutine). Each read gets at most one
// interval, so a slow API server delays no later sample.
func Loop(ctx context.Context, s Sampler, every time.Duration, onSample func(Sample), onErr func(error)) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, every)
		smp, err := s.Sample(sctx)
		cancel()
		switch {
		case err == nil:
			onSample(smp)
		case ctx.Err() == nil:
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// CSVWriter writes samples as CSV.
type CSVWriter struct {
	w     *bufio.Writer
	begin time.Time
}

// NewCSVWriter writes the header; begin is the run's start.
func NewCSVWriter(w io.Writer, begin time.Time) (*CSVWriter, error) {
	c := &CSVWriter{w: bufio.NewWriter(w), begin: begin}
	if _, err := c.w.WriteString("timestamp,elapsed_s,spec_replicas,status_replicas,hpa,hpa_current_replicas,hpa_desired_replicas,hpa_metrics\n"); err != nil {
		return nil, fmt.Errorf("writing replicas CSV: %w", err)
	}
	return c, nil
}

// Write appends a sample and flushes, so the file is current while a long
// run is watched.
func (c *CSVWriter) Write(s Sample) error {
	// An HPA's undecided desired count is left empty, not written as 0.
	desire := ""
	if s.HPA != "" && s.DesireKnown {
		desire = strconv.Itoa(int(s.Desire))
	}
	_, err := fmt.Fprintf(c.w, "%s,%.3f,%d,%d,%s,%d,%s,%s\n", s.Time.UTC().Format(time.RFC3339Nano),
		s.Time.Sub(c.begin).Seconds(), s.Spec, s.Status, s.HPA, s.Current, desire, quote(strings.Join(s.Metrics, ";")))
	if err == nil {
		err = c.w.Flush()
	}
	if err != nil {
		return fmt.Errorf("writing replicas CSV: %w", err)
	}
	return nil
}

func quote(s string) string {
	if strings.ContainsAny(s, ",\"\n") {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}
