package collector

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
)

// recordingSink keeps targets by namespace/name.
type recordingSink struct {
	mu      sync.Mutex
	targets map[string]Target
}

func (s *recordingSink) Upsert(t Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets[t.Namespace+"/"+t.Name] = t
}

func (s *recordingSink) Remove(ns, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.targets, ns+"/"+name)
}

func (s *recordingSink) urls() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for k, t := range s.targets {
		out[k] = t.URL
	}
	return out
}

var readyAt = metav1.NewTime(time.Date(2026, 11, 25, 11, 0, 0, 0, time.UTC))

func pod(ns, name, ip string, ready bool, lbls, annotations map[string]string) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls, Annotations: annotations},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st, LastTransitionTime: readyAt}},
		},
	}
}

func waitFor(t *testing.T, s *recordingSink, want map[string]string) {
	t.Helper()
	var last map[string]string
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		last = s.urls()
		return cmp.Equal(want, last), nil
	})
	if err != nil {
		t.Fatalf("targets (-want +got):\n%s", cmp.Diff(want, last))
	}
}

func TestDiscoveryPodsComingAndGoing(t *testing.T) {
	iris := map[string]string{"app": "iris", SeldonDeploymentLabel: "iris"}
	client := fake.NewClientset(
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "wine"},
			Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "wine"}}},
		},
		pod("models", "iris-a", "10.0.0.1", true, iris, nil),
		pod("models", "iris-b", "10.0.0.2", false, iris, nil),
		pod("models", "wine-a", "10.0.0.3", true, map[string]string{"app": "wine"}, map[string]string{AnnotationPort: "8080", AnnotationPath: "/prometheus"}),
		pod("models", "other", "10.0.0.4", true, map[string]string{"app": "other"}, nil),
		pod("elsewhere", "iris-x", "10.0.1.1", true, iris, nil),
		pod("models", "iris-optout", "10.0.0.5", true, iris, map[string]string{AnnotationScrape: "false"}),
	)
	sink := &recordingSink{targets: map[string]Target{}}
	d, err := NewDiscovery(client, DiscoveryConfig{
		Namespaces: []string{"models"},
		Workloads: []WorkloadRef{
			{Kind: "SeldonDeployment", Namespace: "models", Name: "iris"},
			{Kind: "deployment", Namespace: "models", Name: "wine"},
		},
	}, sink)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.Start(ctx)
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) { return d.HasSynced(), nil }); err != nil {
		t.Fatal("informers did not sync")
	}
	pods := client.CoreV1().Pods("models")
	waitFor(t, sink, map[string]string{
		"models/iris-a": "http://10.0.0.1:9000/metrics",
		"models/wine-a": "http://10.0.0.3:8080/prometheus",
	})
	if got := sink.targets["models/iris-a"].ReadySince; !got.Equal(readyAt.Time) {
		t.Errorf("ReadySince = %v, want %v", got, readyAt)
	}

	// iris-b becomes ready; iris-a becomes unready: both apply at once.
	if _, err := pods.UpdateStatus(ctx, pod("models", "iris-b", "10.0.0.2", true, iris, nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.UpdateStatus(ctx, pod("models", "iris-a", "10.0.0.1", false, iris, nil), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sink, map[string]string{
		"models/iris-b": "http://10.0.0.2:9000/metrics",
		"models/wine-a": "http://10.0.0.3:8080/prometheus",
	})

	// Terminating (deletion timestamp set) leaves before the pod is gone;
	// deletion leaves too.
	p := pod("models", "iris-b", "10.0.0.2", true, iris, nil)
	now := metav1.Now()
	p.DeletionTimestamp = &now
	if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pods.Delete(ctx, "wine-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sink, map[string]string{})
}

func TestDiscoverySelectorAndAnnotation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  DiscoveryConfig
		want map[string]string
	}{
		{"selector", DiscoveryConfig{Selector: "app in (iris)"}, map[string]string{"a/iris": "http://10.0.0.1:9000/metrics"}},
		{"annotation when nothing is configured", DiscoveryConfig{}, map[string]string{"b/annotated": "http://10.0.0.2:9000/metrics"}},
		{"namespaces", DiscoveryConfig{Namespaces: []string{"b"}, Selector: "app"}, map[string]string{"b/annotated": "http://10.0.0.2:9000/metrics"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(
				pod("a", "iris", "10.0.0.1", true, map[string]string{"app": "iris"}, nil),
				pod("b", "annotated", "10.0.0.2", true, map[string]string{"app": "x"}, map[string]string{AnnotationScrape: "true"}),
			)
			sink := &recordingSink{targets: map[string]Target{}}
			d, err := NewDiscovery(client, tc.cfg, sink)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			d.Start(ctx)
			waitFor(t, sink, tc.want)
		})
	}
}

func TestDiscoveryConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  DiscoveryConfig
		want string
	}{
		{"bad selector", DiscoveryConfig{Selector: "app in ("}, `discovery: field "selector"`},
		{"bad kind", DiscoveryConfig{Workloads: []WorkloadRef{{Kind: "Job", Namespace: "a", Name: "b"}}}, `discovery: workloads[0]: field "kind": unsupported workload kind "Job"`},
		{"unwatched namespace", DiscoveryConfig{Namespaces: []string{"a"}, Workloads: []WorkloadRef{{Kind: "svc", Namespace: "b", Name: "c"}}}, `discovery: workloads[0]: namespace "b" is not in namespaces [a]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewDiscovery(fake.NewClientset(), tc.cfg, &recordingSink{})
			if err == nil || len(err.Error()) < len(tc.want) || err.Error()[:len(tc.want)] != tc.want {
				t.Errorf("error = %v, want prefix %q", err, tc.want)
			}
		})
	}
}
