package scaler

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// ListerPodCounter over a real informer cache: terminated pods and pods
// being deleted do not count, so a workload whose last pod is draining
// after a scale to zero reads as zero pods.
func TestListerPodCounter(t *testing.T) {
	pod := func(name string, phase corev1.PodPhase, deleting bool, app string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: name, Labels: map[string]string{"app": app}},
			Status: corev1.PodStatus{Phase: phase}}
		if deleting {
			now := metav1.NewTime(time.Now())
			p.DeletionTimestamp = &now
			p.Finalizers = []string{"test/keep"} // a fake clientset keeps it as the API server would
		}
		return p
	}
	cs := fake.NewClientset(
		pod("running", corev1.PodRunning, false, "iris"),
		pod("pending", corev1.PodPending, false, "iris"),
		pod("succeeded", corev1.PodSucceeded, false, "iris"),
		pod("failed", corev1.PodFailed, false, "iris"),
		pod("draining", corev1.PodRunning, true, "iris"),
		pod("draining-only", corev1.PodRunning, true, "zero"),
		pod("other-app", corev1.PodRunning, false, "other"),
	)
	factory := informers.NewSharedInformerFactory(cs, 0)
	counter := ListerPodCounter{Pods: factory.Core().V1().Pods().Lister()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	for _, tc := range []struct {
		app  string
		want int
	}{
		{"iris", 2},  // running and pending
		{"zero", 0},  // scaled to zero, last pod draining
		{"other", 1}, // a different workload
		{"none", 0},
	} {
		got, err := counter.CountPods(ctx, "model", labels.SelectorFromSet(labels.Set{"app": tc.app}))
		if err != nil || got != tc.want {
			t.Errorf("app=%s: CountPods = %d, %v; want %d", tc.app, got, err, tc.want)
		}
	}
}
