package scaler

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// ListerPodCounter counts pods from an informer cache (the collector's pod
// informer when shared), so telling "no pods" from "no data" costs no API
// call.
type ListerPodCounter struct {
	Pods corelisters.PodLister
}

var _ PodCounter = ListerPodCounter{}

// CountPods counts the pods matching sel that have not terminated and are
// not being deleted: a pod still pending or running will be (or should have
// been) scraped, while a terminating one is out of its Service's endpoints
// and serves nothing new. A workload scaled to zero whose last pod is still
// draining is at a known zero, not missing data.
func (c ListerPodCounter) CountPods(_ context.Context, namespace string, sel labels.Selector) (int, error) {
	pods, err := c.Pods.Pods(namespace).List(sel)
	if err != nil {
		return 0, fmt.Errorf("listing pods in %s matching %q: %w", namespace, sel.String(), err)
	}
	n := 0
	for _, p := range pods {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && p.DeletionTimestamp == nil {
			n++
		}
	}
	return n, nil
}
