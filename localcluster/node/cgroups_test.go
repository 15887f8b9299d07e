package node

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mlscale/mlscale/internal/cgroup"
	"github.com/mlscale/mlscale/internal/testenv"
)

func TestContainerLimits(t *testing.T) {
	q := resource.MustParse
	for _, tc := range []struct {
		name string
		res  corev1.ResourceRequirements
		want cgroup.Limits
	}{
		{"none", corev1.ResourceRequirements{}, cgroup.Limits{}},
		{"the seed's", corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: q("500m"), corev1.ResourceMemory: q("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: q("1"), corev1.ResourceMemory: q("256Mi")},
		}, cgroup.Limits{CPUMilli: 1000, CPURequestMilli: 500, MemoryBytes: 256 << 20}},
		{"limit only: request defaults to it", corev1.ResourceRequirements{
			Limits: corev1.ResourceList{corev1.ResourceCPU: q("250m")},
		}, cgroup.Limits{CPUMilli: 250, CPURequestMilli: 250}},
		{"request only", corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: q("0.1")},
		}, cgroup.Limits{CPURequestMilli: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, containerLimits(&corev1.Container{Resources: tc.res})); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// scrapeCPU reads a container's CPU counter and its sample time from the
// agent's /metrics/resource, as metrics-server does.
func (e *agentEnv) scrapeCPU(t *testing.T, pod string) (float64, time.Time) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics/resource", e.port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mfs["container_cpu_usage_seconds_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "pod" && l.GetValue() == pod {
				return m.GetCounter().GetValue(), time.UnixMilli(m.GetTimestampMs())
			}
		}
	}
	t.Fatalf("no container_cpu_usage_seconds_total for pod %s", pod)
	return 0, time.Time{}
}

// A pod whose container spins on both cores under limits.cpu 250m uses a
// quarter of a core, by the agent's /metrics/resource (its cgroup, what
// metrics-server reads) and by /proc; deleting the pod removes its cgroup.
func TestPodCPULimitEnforced(t *testing.T) {
	e := startAgent(t)
	if e.agent.cg == nil {
		testenv.RequireOrSkip(t, "no cgroups here: limits are not enforced (needs root and a cgroup cpu controller)")
	}
	pod := e.pod("busy", corev1.EnvVar{Name: "BUSY", Value: "1"})
	pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
	}
	ctx := context.Background()
	if _, err := e.client.CoreV1().Pods("ns").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := e.waitPod(t, "busy", "Ready", podReady)
	pid, err := strconv.Atoi(strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "mlscale://"))
	if err != nil {
		t.Fatal(err)
	}
	proc := func() float64 {
		pr, err := procfs.NewProc(pid)
		if err != nil {
			t.Fatal(err)
		}
		st, err := pr.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return st.CPUTime()
	}
	time.Sleep(time.Second)
	c0, s0 := e.scrapeCPU(t, "busy")
	p0, w0 := proc(), time.Now()
	time.Sleep(4 * time.Second)
	c1, s1 := e.scrapeCPU(t, "busy")
	p1, w1 := proc(), time.Now()
	byMetrics := (c1 - c0) / s1.Sub(s0).Seconds()
	byProc := (p1 - p0) / w1.Sub(w0).Seconds()
	t.Logf("limit 250m: %.3f cores by /metrics/resource, %.3f by /proc", byMetrics, byProc)
	for name, v := range map[string]float64{"/metrics/resource": byMetrics, "/proc": byProc} {
		if v < 0.2 || v > 0.3 {
			t.Errorf("by %s the pod used %.3f cores, want 0.2-0.3 under limits.cpu 250m", name, v)
		}
	}
	dir := filepath.Join(e.agent.cg.Group(podGroupPath(p)).ProcsFiles()[0], "..")
	if b, err := os.ReadFile(filepath.Join(dir, "c", "cgroup.procs")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Errorf("the container's cgroup holds %q (%v), want its pid %d", b, err, pid)
	}
	// Forced deletion: the pod's processes and its cgroup go.
	if err := e.client.CoreV1().Pods("ns").Delete(ctx, "busy", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := os.Stat(dir)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted pod's cgroup %s is still there", dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
