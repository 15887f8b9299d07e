//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type golden struct {
	Inputs  [][]float64 `json:"inputs"`
	Outputs [][]float64 `json:"outputs"`
}

func readyPods(ctx context.Context, ns, selector string) ([]corev1.Pod, error) {
	pods, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

func waitReady(t *testing.T, ctx context.Context, ns, selector string, n int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods, err := readyPods(ctx, ns, selector)
		if err == nil && len(pods) == n {
			return pods
		}
		if time.Now().After(deadline) {
			all, _ := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			var b strings.Builder
			for _, p := range all.Items {
				fmt.Fprintf(&b, "  %s phase=%s ip=%s deleting=%v conditions=%v containers=%+v\n", p.Name, p.Status.Phase, p.Status.PodIP, p.DeletionTimestamp != nil, p.Status.Conditions, p.Status.ContainerStatuses)
			}
			t.Fatalf("%d ready pods (%v) in %s after %s, want %d:\n%s", len(pods), err, ns, timeout, n, b.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// post sends a JSON body through the gateway and returns the answer of a
// 200, or an error naming any other status.
func post(ctx context.Context, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, data)
	}
	return data, nil
}

// predictRows sends a batch and checks only that it was answered.
func predictRows(ctx context.Context, path string, rows [][]float64) error {
	_, err := predictBatch(ctx, path, rows)
	return err
}

// predict sends one Seldon v1 request through the gateway.
func predict(ctx context.Context, path string, row []float64) ([]float64, error) {
	out, err := predictBatch(ctx, path, [][]float64{row})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

func predictBatch(ctx context.Context, path string, rows [][]float64) ([][]float64, error) {
	body, _ := json.Marshal(map[string]any{"data": map[string]any{"ndarray": rows}})
	data, err := post(ctx, path, body)
	if err != nil {
		return nil, err
	}
	var out struct {
		Data struct {
			Ndarray [][]float64 `json:"ndarray"`
		} `json:"data"`
	}
	if err := json.Unmarshal(data, &out); err != nil || len(out.Data.Ndarray) != len(rows) {
		return nil, fmt.Errorf("unexpected answer %.200s: %v", data, err)
	}
	return out.Data.Ndarray, nil
}

// TestSmoke: the control plane schedules a model server on the node, which
// runs it Ready on its own pod address; the gateway and the activator reach
// it and get
// XGBoost's own answer; scaling to two spreads traffic over both; deleting
// a pod under load is graceful (preStop, drain) and fails no request.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	deployActivator(t, ctx) // the request path, as the overlays deploy it
	manifest, err := os.ReadFile("testdata/smoke.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, manifest, "apply", "-f", "-")
	t.Cleanup(func() {
		_ = env.client.CoreV1().Namespaces().Delete(context.Background(), "e2e-smoke", metav1.DeleteOptions{})
	})
	const ns, sel, path = "e2e-smoke", "app=iris", "/seldon/e2e-smoke/iris/api/v1.0/predictions"

	pods := waitReady(t, ctx, ns, sel, 1, 90*time.Second)
	ip := net.ParseIP(pods[0].Status.PodIP)
	_, podNet, _ := net.ParseCIDR("198.18.0.0/24")
	if ip == nil || !podNet.Contains(ip) || pods[0].Status.PodIP == pods[0].Status.HostIP {
		t.Fatalf("pod IP %q (host %q): want its own address in %s", pods[0].Status.PodIP, pods[0].Status.HostIP, podNet)
	}
	if pods[0].Spec.NodeName == "" {
		t.Fatal("pod is not bound to a node")
	}

	var g golden
	data, err := os.ReadFile("../../modelserver/xgboost/testdata/iris.golden.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	// The endpoint appears in the EndpointSlice a moment after Ready.
	var got []float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err = predict(ctx, path, g.Inputs[0])
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("prediction through the gateway: %v", err)
	}
	for i := range g.Outputs[0] {
		if math.Abs(got[i]-g.Outputs[0][i]) > 1e-6 {
			t.Fatalf("prediction %v, XGBoost says %v", got, g.Outputs[0])
		}
	}

	kubectl(t, ctx, nil, "-n", ns, "scale", "deployment/iris", "--replicas=2")
	pods = waitReady(t, ctx, ns, sel, 2, 90*time.Second)
	if pods[0].Status.PodIP == pods[1].Status.PodIP {
		t.Fatalf("two pods share the address %s", pods[0].Status.PodIP)
	}
	// Wait until the gateway has both endpoints, then check both serve.
	waitEndpoints(t, ctx, ns, "iris", 2)
	for i := 0; i < 40; i++ {
		if _, err := predict(ctx, path, g.Inputs[i%len(g.Inputs)]); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	for _, p := range pods {
		if n := servedBy(t, ctx, p.Status.PodIP); n == 0 {
			t.Errorf("pod %s (%s) served no request of 40", p.Name, p.Status.PodIP)
		}
	}

	// Graceful deletion under load.
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil; i++ {
				_, err := predict(loadCtx, path, g.Inputs[i%len(g.Inputs)])
				if loadCtx.Err() != nil {
					return
				}
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	victim := pods[0]
	start := time.Now()
	if err := env.client.CoreV1().Pods(ns).Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := env.client.CoreV1().Pods(ns).Get(ctx, victim.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("pod %s still present 30s after a delete with a 10s grace period", victim.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	// preStop sleep 2s, then the server's 2s drain: the node must not have
	// cut it short, nor waited for the whole grace period.
	if took < 2*time.Second || took > 12*time.Second {
		t.Errorf("graceful deletion took %s, want between the preStop (2s) and the grace period (10s)", took.Round(time.Millisecond))
	}
	waitReady(t, ctx, ns, sel, 2, 90*time.Second)
	time.Sleep(time.Second)
	stopLoad()
	wg.Wait()
	t.Logf("graceful deletion took %s; %d requests during it, %d failed", took.Round(time.Millisecond), sent.Load(), failed.Load())
	if sent.Load() < 50 {
		t.Errorf("only %d requests were sent during the deletion", sent.Load())
	}
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during a graceful deletion; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
}

func waitEndpoints(t *testing.T, ctx context.Context, ns, svc string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		slices, err := env.client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc})
		if err == nil {
			ready := 0
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					if e.Conditions.Ready == nil || *e.Conditions.Ready {
						ready++
					}
				}
			}
			if ready == n {
				time.Sleep(500 * time.Millisecond) // the gateway's informer
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("service %s/%s does not have %d ready endpoints", ns, svc, n)
}

// servedBy reads a pod's own request counter.
func servedBy(t *testing.T, ctx context.Context, ip string) float64 {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(ip, "9000")+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scraping %s: %v", ip, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	total := 0.0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "mlscale_requests_total{") && strings.Contains(line, `code="200"`) {
			var v float64
			fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
			total += v
		}
	}
	return total
}
