package app

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mlscale/mlscale/collector"
)

// The caches resolve a workload to its pods and count them once synced; with
// one discovery namespace they watch only that namespace.
func TestMakeCaches(t *testing.T) {
	iris := map[string]string{"app": "iris"}
	pod := func(ns, name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: iris}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: iris}},
	}
	for _, tc := range []struct {
		name       string
		namespaces []string
		other      int // pods counted in namespace other
	}{
		{"all namespaces", nil, 1},
		{"one namespace", []string{"models"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			client := fake.NewClientset(dep, pod("models", "iris-a"), pod("models", "iris-b"), pod("other", "iris-c"))
			cfg := &collector.Config{Discovery: collector.DiscoveryConfig{Namespaces: tc.namespaces}}
			factory, resolver, pods, ready := New().MakeCaches(client, cfg)
			if err := ready(); err == nil {
				t.Error("ready before the caches started")
			}
			factory.Start(ctx.Done())
			factory.WaitForCacheSync(ctx.Done())
			if err := ready(); err != nil {
				t.Fatalf("ready after sync: %v", err)
			}
			sel, err := resolver.SelectorFor(ctx, collector.KindDeployment, "models", "iris")
			if err != nil {
				t.Fatal(err)
			}
			if n, err := pods.CountPods(ctx, "models", sel); err != nil || n != 2 {
				t.Errorf("pods of deployment iris: %d, %v; want 2", n, err)
			}
			if n, err := pods.CountPods(ctx, "other", labels.SelectorFromSet(iris)); err != nil || n != tc.other {
				t.Errorf("pods in namespace other: %d, %v; want %d", n, err, tc.other)
			}
		})
	}
}
