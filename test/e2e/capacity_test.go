//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	metricsclient "k8s.io/metrics/pkg/client/clientset/versioned"
)

// rowsBody is a Seldon v1 request of n seed rows, encoded once.
func rowsBody(n int) []byte {
	rows := make([][]float64, n)
	for i := range rows {
		rows[i] = []float64{5.1, 3.5, 1.4, 0.2}
	}
	b, _ := json.Marshal(map[string]any{"data": map[string]any{"ndarray": rows}})
	return b
}

// closedLoop runs n clients sending body to url back to back until ctx ends.
func closedLoop(ctx context.Context, n int, url string, body []byte) (wait func() (sent, failed int64, firstErr string)) {
	var s, f atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := postURL(ctx, url, body)
				if ctx.Err() != nil {
					return
				}
				s.Add(1)
				if err != nil {
					f.Add(1)
					first.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	return func() (int64, int64, string) {
		wg.Wait()
		e, _ := first.Load().(string)
		return s.Load(), f.Load(), e
	}
}

// postURL sends a JSON body to url and fails on any status but 200.
func postURL(ctx context.Context, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %.200s", resp.Status, data)
	}
	return nil
}

// TestCPULimitEnforced: a model server limited to 250m, saturated by four
// clients of 2,000-row requests on a two-core machine, uses a quarter of a
// core, by metrics-server (metrics.k8s.io, from the node agent's cgroup
// reading) and by /proc (the kernel's account of its process), not the
// whole machine as an unlimited process would.
func TestCPULimitEnforced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	manifest, err := os.ReadFile("testdata/cpu-limit.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, manifest, "apply", "-f", "-")
	t.Cleanup(func() {
		_ = env.client.CoreV1().Namespaces().Delete(context.Background(), "e2e-cpulimit", metav1.DeleteOptions{})
	})
	const ns, sel = "e2e-cpulimit", "app=iris"
	pods := waitReady(t, ctx, ns, sel, 1, 90*time.Second)
	// Straight to the pod's address: the subject is the pod's limit, not
	// the request path.
	url := "http://" + pods[0].Status.PodIP + ":9000/api/v1.0/predictions"
	pid, err := strconv.Atoi(strings.TrimPrefix(pods[0].Status.ContainerStatuses[0].ContainerID, "mlscale://"))
	if err != nil {
		t.Fatalf("container ID %q: %v", pods[0].Status.ContainerStatuses[0].ContainerID, err)
	}
	procCPU := func() float64 {
		p, err := procfs.NewProc(pid)
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return st.CPUTime()
	}

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	wait := closedLoop(loadCtx, 4, url, rowsBody(2000))

	cfg, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	mc := metricsclient.NewForConfigOrDie(cfg)
	// metrics-server's value is the rate between its last two scrapes (15 s
	// apart): wait for a first value under load, then for a newer window
	// that lies wholly under load, and measure /proc across the same time.
	podCPU := func() (float64, time.Time, bool) {
		pm, err := mc.MetricsV1beta1().PodMetricses(ns).Get(ctx, pods[0].Name, metav1.GetOptions{})
		if err != nil || len(pm.Containers) == 0 {
			return 0, time.Time{}, false
		}
		q := pm.Containers[0].Usage["cpu"]
		return float64(q.MilliValue()) / 1000, pm.Timestamp.Time, true
	}
	time.Sleep(5 * time.Second)
	p0, w0 := procCPU(), time.Now()
	var first time.Time
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, ts, ok := podCPU(); ok && first.IsZero() {
			first = ts
		}
		if !first.IsZero() && time.Since(w0) > 40*time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("metrics.k8s.io has no usage for the loaded pod after 3 minutes")
		}
		time.Sleep(2 * time.Second)
	}
	byMetrics, ts, _ := podCPU()
	p1, w1 := procCPU(), time.Now()
	byProc := (p1 - p0) / w1.Sub(w0).Seconds()
	stopLoad()
	sent, failed, firstErr := wait()
	t.Logf("limit 250m on 2 cores, 4 clients x 2,000 rows: metrics.k8s.io %.3f cores (window ending %s), /proc %.3f cores over %s; %d requests (%.1f/s), %d failed",
		byMetrics, ts.Format(time.TimeOnly), byProc, w1.Sub(w0).Round(time.Second), sent, float64(sent)/w1.Sub(w0).Seconds(), failed)
	for name, v := range map[string]float64{"metrics.k8s.io": byMetrics, "/proc": byProc} {
		if v < 0.2 || v > 0.3 {
			t.Errorf("by %s the saturated pod used %.3f cores, want 0.2-0.3 under limits.cpu 250m", name, v)
		}
	}
	if failed != 0 {
		t.Errorf("%d of %d requests failed; first: %s", failed, sent, firstErr)
	}
}

// rowsPerSecond is the adapter's predicted_rows_per_second summed over the
// model's pods, read through kube-apiserver as the HPA reads it.
func rowsPerSecond(ctx context.Context) (float64, int, error) {
	const raw = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/model/pods/*/predicted_rows_per_second"
	data, err := env.client.CoreV1().RESTClient().Get().AbsPath(raw).DoRaw(ctx)
	if err != nil {
		return 0, 0, err
	}
	var list struct {
		Items []struct {
			Value string `json:"value"`
		} `json:"items"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return 0, 0, err
	}
	var sum float64
	for _, it := range list.Items {
		q, err := parseQuantity(it.Value)
		if err != nil {
			return 0, 0, err
		}
		sum += q
	}
	return sum, len(list.Items), nil
}

// TestTunedRowsPerSecondHPA: the HPA `loadgen tune` wrote (local-tuned:
// predicted_rows_per_second at 40% below what one 250m pod served through
// the cluster) on the seed's rising rows per request, about 500, 3,800 and
// 10,000 rows at loads of 0.1, 1.3 and 2.5 times the target (rates and rows
// derived from the target the HPA holds, so a re-tuned target needs no
// edit here). At each step the adapter's total agrees with the load, and the
// HPA reaches exactly the replicas its formula predicts from that total,
// ceil(total / target): 1, 2, 3; no request fails (a saturated pod would
// shed with 503 under --max-inflight, or go blind, as 100m pods did).
func TestTunedRowsPerSecondHPA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local-tuned")
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, 2*time.Minute)
	waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
	waitEndpoints(t, ctx, "model", "iris-model-autoscale", 1)
	h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Spec.Metrics) != 1 || h.Spec.Metrics[0].Pods == nil || h.Spec.Metrics[0].Pods.Metric.Name != "predicted_rows_per_second" {
		t.Fatalf("local-tuned's HPA scales on %+v, want predicted_rows_per_second", h.Spec.Metrics)
	}
	target := h.Spec.Metrics[0].Pods.Target.AverageValue.AsApproximateFloat64()

	const path = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
	var body atomic.Pointer[[]byte]
	load := &openLoop{}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	// The loads sit well inside the formula's steps (0.1, 1.3, 2.5 x the
	// target, with the adapter within 10%: ceil gives 1, 2, 3) and past the
	// HPA's 10% tolerance at each scale-up (1.3 on one pod, 1.25 on two),
	// while no pod carries more than 1.3 x the target (78% of its measured
	// capacity) before the HPA adds one.
	for i, step := range []struct {
		rows     int // about this many rows per request
		fraction float64
		want     int
	}{{500, 0.1, 1}, {3800, 1.3, 2}, {10000, 2.5, 3}} {
		rate := max(1, int(math.Round(step.fraction*target/float64(step.rows))))
		rows := int(math.Round(step.fraction * target / float64(rate)))
		b := rowsBody(rows)
		body.Store(&b)
		load.rate.Store(int64(rate))
		if i == 0 {
			load.run(loadCtx, func(ctx context.Context) error { _, err := post(ctx, path, *body.Load()); return err })
		}
		step.rows = rows
		offered := float64(rate * step.rows)
		// The formula on what the adapter serves, once it agrees with the
		// load (within 10%) across every pod.
		var total float64
		var pods int
		deadline := time.Now().Add(2 * time.Minute)
		for {
			total, pods, err = rowsPerSecond(ctx)
			if err == nil && math.Abs(total-offered)/offered <= 0.10 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d rows x %d/s: custom.metrics.k8s.io says %.0f rows/s over %d pods (%v), the load is %.0f", step.rows, rate, total, pods, err, offered)
			}
			time.Sleep(2 * time.Second)
		}
		formula := int32(math.Ceil(total / target))
		if formula != int32(step.want) {
			t.Fatalf("%d rows: ceil(%.0f / %.0f) = %d, the step was chosen for %d", step.rows, total, target, formula, step.want)
		}
		got := waitDesired(t, ctx, func(r int32) bool { return r == formula }, 3*time.Minute)
		waitReady(t, ctx, "model", modelSelector, int(got), 2*time.Minute)
		// ...and stays there: no overshoot on the next syncs.
		time.Sleep(20 * time.Second)
		h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%5d rows x %d/s: adapter %.0f rows/s (load %.0f); formula ceil(%.0f / %.0f) = %d; HPA desired %d, %d ready; %d sent, %d failed so far",
			step.rows, rate, total, offered, total, target, formula, h.Status.DesiredReplicas, h.Status.CurrentReplicas, load.sent.Load(), load.failed.Load())
		if h.Status.DesiredReplicas != formula {
			t.Errorf("%d rows: the HPA moved on to %d replicas, the formula says %d", step.rows, h.Status.DesiredReplicas, formula)
		}
	}
	stopLoad()
	load.wg.Wait()
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}
}
