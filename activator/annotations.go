package activator

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The Service annotations the activator reads. A Service is fronted only
// when AnnotationEnabled is "true": the activator is not an open proxy to
// every Service of the cluster.
const (
	AnnotationPrefix = "activator.mlscale.io/"
	// AnnotationEnabled: "true" routes /seldon/{ns}/{name}/ to this Service.
	AnnotationEnabled = AnnotationPrefix + "enabled"
	// AnnotationQueueLength: how many requests may wait for a first ready
	// endpoint (a positive integer; 0 turns holding off: 503 at once), in
	// each activator replica: every replica keeps its own queue, so with R
	// replicas up to R × queue-length requests are held for the Service in
	// all, and one replica may refuse while another still has room (the
	// ingress spreads requests over them). Divide by the replica count for
	// a total limit.
	AnnotationQueueLength = AnnotationPrefix + "queue-length"
	// AnnotationQueueTimeout: how long one request may wait (a Go
	// duration, "60s").
	AnnotationQueueTimeout = AnnotationPrefix + "queue-timeout"
	// AnnotationScaleTarget: the workload to scale from 0 to 1 when a
	// request is held, "Deployment/NAME" or "SeldonDeployment/NAME" in the
	// Service's namespace. Absent: the activator holds but does not wake
	// (KEDA wakes the workload through the scaler instead).
	AnnotationScaleTarget = AnnotationPrefix + "scale-target"
)

// Limits for the annotations: a typo must not allow an unbounded queue.
const (
	MaxQueueLength  = 10000
	MaxQueueTimeout = 10 * time.Minute
)

// ScaleTarget is a workload the activator may scale from zero through its
// scale subresource.
type ScaleTarget struct {
	Kind     string
	Name     string
	Resource schema.GroupVersionResource
}

// scaleKinds are the kinds a scale target may name.
var scaleKinds = map[string]schema.GroupVersionResource{
	"Deployment":       {Group: "apps", Version: "v1", Resource: "deployments"},
	"SeldonDeployment": {Group: "machinelearning.seldon.io", Version: "v1", Resource: "seldondeployments"},
}

// HoldPolicy is one Service's hold settings.
type HoldPolicy struct {
	QueueLength  int
	QueueTimeout time.Duration
	// Target is nil when the activator does not wake the workload.
	Target *ScaleTarget
}

// ParsePolicy reads a Service's annotations over the defaults. It returns
// the defaults for the fields it could not parse and an error naming each
// bad annotation, so a typo is reported but does not take the model off the
// air.
func ParsePolicy(ann map[string]string, def HoldPolicy) (HoldPolicy, error) {
	p := def
	p.Target = nil
	var errs []string
	if v, ok := ann[AnnotationQueueLength]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 || n > MaxQueueLength {
			errs = append(errs, fmt.Sprintf("%s: %q is not an integer from 0 to %d", AnnotationQueueLength, v, MaxQueueLength))
		} else {
			p.QueueLength = n
		}
	}
	if v, ok := ann[AnnotationQueueTimeout]; ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 || d > MaxQueueTimeout {
			errs = append(errs, fmt.Sprintf("%s: %q is not a duration above 0 and at most %s", AnnotationQueueTimeout, v, MaxQueueTimeout))
		} else {
			p.QueueTimeout = d
		}
	}
	if v, ok := ann[AnnotationScaleTarget]; ok {
		t, err := ParseScaleTarget(v)
		if err != nil {
			errs = append(errs, err.Error())
		} else {
			p.Target = t
		}
	}
	if len(errs) > 0 {
		return p, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return p, nil
}

// ParseScaleTarget parses "Kind/name".
func ParseScaleTarget(v string) (*ScaleTarget, error) {
	kind, name, ok := strings.Cut(strings.TrimSpace(v), "/")
	gvr, known := scaleKinds[kind]
	switch {
	case !ok || name == "" || strings.Contains(name, "/"):
		return nil, fmt.Errorf("%s: %q: want Deployment/NAME or SeldonDeployment/NAME", AnnotationScaleTarget, v)
	case !known:
		return nil, fmt.Errorf("%s: %q: kind %q is not Deployment or SeldonDeployment", AnnotationScaleTarget, v, kind)
	}
	return &ScaleTarget{Kind: kind, Name: name, Resource: gvr}, nil
}
