package node

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// testContainer is what the test binary does when the agent starts it as a
// container (MLSCALE_TEST_CONTAINER=1): an HTTP server on $LISTEN that
// records, in $JOURNAL, the order of preStop and SIGTERM, then drains.
func testContainer() {
	journal := os.Getenv("JOURNAL")
	note := func(s string) {
		f, _ := os.OpenFile(journal, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		fmt.Fprintln(f, s)
		f.Close()
	}
	if os.Getenv("BUSY") == "1" {
		// Spin on every CPU: a saturating load whose CPU use only a limit
		// bounds.
		for i := 0; i < runtime.NumCPU(); i++ {
			go func() {
				for {
				}
			}()
		}
	}
	if os.Getenv("CRASH") == "1" {
		note("crash")
		os.Exit(3)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/prestop", func(w http.ResponseWriter, _ *http.Request) { note("prestop"); io.WriteString(w, "ok") })
	mux.HandleFunc("/args", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, strings.Join(os.Args[1:], " "))
	})
	listen := ""
	for _, a := range os.Args[1:] {
		if v, ok := strings.CutPrefix(a, "--listen="); ok {
			listen = v
		}
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		note("listen: " + err.Error())
		os.Exit(1)
	}
	note("started " + l.Addr().String())
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	note("sigterm")
	srv.Close()
	os.Exit(0)
}

func init() {
	// Containers run through the container helper (this binary
	// re-executed, with the container's environment): the helper goes
	// first, or it would itself become the test container below.
	MaybeRunHelper()
	if os.Getenv("MLSCALE_TEST_CONTAINER") == "1" {
		testContainer()
	}
}

type agentEnv struct {
	agent   *Agent
	port    int
	client  *fake.Clientset
	journal string
	cancel  context.CancelFunc
	done    chan error
}

func startAgent(t *testing.T) *agentEnv {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset()
	port := freePort(t)
	a, err := New(Config{
		NodeName: "node-a", NodeIP: "127.0.0.1", KubeletPort: port,
		PodIPs: []string{"127.0.0.51", "127.0.0.52", "127.0.0.53"},
		Client: cs, Images: ImageMap{{Prefix: "test/", Binary: self}},
		WorkDir: t.TempDir(), StateDir: t.TempDir(),
		APIServerHost: "127.0.0.1", APIServerPort: 6443,
		RestartBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &agentEnv{agent: a, port: port, client: cs, journal: filepath.Join(t.TempDir(), "journal"), cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-e.done:
		case <-time.After(20 * time.Second):
			t.Error("the agent did not stop within 20s")
		}
	})
	return e
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (e *agentEnv) pod(name string, env ...corev1.EnvVar) *corev1.Pod {
	env = append([]corev1.EnvVar{
		{Name: "MLSCALE_TEST_CONTAINER", Value: "1"},
		{Name: "JOURNAL", Value: e.journal},
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
	}, env...)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{
			NodeName: "node-a", RestartPolicy: corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: ptr.To[int64](5),
			Containers: []corev1.Container{{
				Name: "c", Image: "test/server:1", Env: env,
				Args:  []string{"--listen=$(POD_IP):8080", "--escaped=$$(POD_IP)"},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}},
					PeriodSeconds: 1,
				},
				Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/prestop", Port: intstr.FromInt32(8080)},
				}},
			}},
		},
	}
}

func (e *agentEnv) waitPod(t *testing.T, name string, what string, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var p *corev1.Pod
	var err error
	for time.Now().Before(deadline) {
		p, err = e.client.CoreV1().Pods("ns").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && ok(p) {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("pod %s never %s; last: %v %+v", name, what, err, p.Status)
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func (e *agentEnv) journalLines() []string {
	data, _ := os.ReadFile(e.journal)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// A pod runs Ready on its own address with its args expanded, and a
// graceful deletion runs preStop, then SIGTERM, then removes the pod.
func TestAgentRunsAndDeletesPod(t *testing.T) {
	e := startAgent(t)
	ctx := context.Background()
	if _, err := e.client.CoreV1().Pods("ns").Create(ctx, e.pod("web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := e.waitPod(t, "web", "Ready", podReady)
	if p.Status.Phase != corev1.PodRunning || p.Status.PodIP != "127.0.0.51" || p.Status.HostIP != "127.0.0.1" {
		t.Fatalf("status: phase %s podIP %s hostIP %s", p.Status.Phase, p.Status.PodIP, p.Status.HostIP)
	}
	cs := p.Status.ContainerStatuses
	if len(cs) != 1 || !cs[0].Ready || cs[0].State.Running == nil || cs[0].RestartCount != 0 {
		t.Fatalf("container status %+v", cs)
	}
	resp, err := http.Get("http://127.0.0.51:8080/args")
	if err != nil {
		t.Fatal(err)
	}
	args, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if diff := cmp.Diff("--listen=127.0.0.51:8080 --escaped=$(POD_IP)", string(args)); diff != "" {
		t.Errorf("container args (-want +got):\n%s", diff)
	}

	// What the API server does on a graceful delete: set the timestamps.
	now := metav1.Now()
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &now, ptr.To[int64](5)
	if _, err := e.client.CoreV1().Pods("ns").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := e.client.CoreV1().Pods("ns").Get(ctx, "web", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not remove the deleted pod")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if diff := cmp.Diff([]string{"started 127.0.0.51:8080", "prestop", "sigterm"}, e.journalLines()); diff != "" {
		t.Errorf("container lifecycle (-want +got):\n%s", diff)
	}
	if _, err := net.DialTimeout("tcp", "127.0.0.51:8080", time.Second); err == nil {
		t.Error("the container still listens after its pod was deleted")
	}
}

// A container that keeps failing is restarted with back-off and reported.
func TestAgentRestartsCrashingContainer(t *testing.T) {
	e := startAgent(t)
	pod := e.pod("crasher", corev1.EnvVar{Name: "CRASH", Value: "1"})
	if _, err := e.client.CoreV1().Pods("ns").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := e.waitPod(t, "crasher", "restarted twice", func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2
	})
	cs := p.Status.ContainerStatuses[0]
	if cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 3 {
		t.Errorf("last termination %+v, want exit code 3", cs.LastTerminationState)
	}
	if podReady(p) {
		t.Error("a crashing pod is Ready")
	}
}

// The node registers itself Ready with a Lease.
func TestAgentRegistersNode(t *testing.T) {
	e := startAgent(t)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		n, err := e.client.CoreV1().Nodes().Get(context.Background(), "node-a", metav1.GetOptions{})
		_, lerr := e.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(context.Background(), "node-a", metav1.GetOptions{})
		if err == nil && lerr == nil {
			ready := false
			for _, c := range n.Status.Conditions {
				ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
			}
			if !ready || n.Status.Addresses[0].Address != "127.0.0.1" || n.Status.Capacity.Cpu().IsZero() {
				t.Fatalf("node status %+v", n.Status)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no Ready node with a lease")
}

// /metrics/resource has what metrics-server reads: node, pod and container
// CPU and memory with sample timestamps, the container's from its process.
func TestResourceMetrics(t *testing.T) {
	e := startAgent(t)
	if _, err := e.client.CoreV1().Pods("ns").Create(context.Background(), e.pod("web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPod(t, "web", "Ready", podReady)
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
	want := map[string]map[string]string{
		"node_cpu_usage_seconds_total":       {},
		"node_memory_working_set_bytes":      {},
		"container_cpu_usage_seconds_total":  {"container": "c", "namespace": "ns", "pod": "web"},
		"container_memory_working_set_bytes": {"container": "c", "namespace": "ns", "pod": "web"},
		"container_start_time_seconds":       {"container": "c", "namespace": "ns", "pod": "web"},
		"pod_cpu_usage_seconds_total":        {"namespace": "ns", "pod": "web"},
		"pod_memory_working_set_bytes":       {"namespace": "ns", "pod": "web"},
	}
	for name, labels := range want {
		mf, ok := mfs[name]
		if !ok || len(mf.GetMetric()) != 1 {
			t.Errorf("%s: %v", name, mf)
			continue
		}
		m := mf.GetMetric()[0]
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if diff := cmp.Diff(labels, got); diff != "" {
			t.Errorf("%s labels (-want +got):\n%s", name, diff)
		}
		if m.GetTimestampMs() == 0 {
			t.Errorf("%s has no timestamp", name)
		}
		v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
		if v <= 0 {
			t.Errorf("%s = %v", name, v)
		}
	}
}
