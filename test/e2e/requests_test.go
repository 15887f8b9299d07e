//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// openLoop sends requests through the gateway at rate per second (open
// loop: a slow answer does not slow the sender) until ctx ends.
type openLoop struct {
	rate         atomic.Int64
	sent, failed atomic.Int64
	firstErr     atomic.Value
	wg           sync.WaitGroup
	first        atomic.Int64 // latency of the first request sent, ns
	firstFailed  atomic.Bool

	mu       sync.Mutex
	failures []time.Time
}

// failedBetween counts the failures recorded in [from, to).
func (l *openLoop) failedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, f := range l.failures {
		if !f.Before(from) && f.Before(to) {
			n++
		}
	}
	return n
}

// firstLatency is the seconds the first request sent took to be answered
// (0 before it is), and whether that answer was a failure. Not the first
// request to end: at zero a later one refused at once (a full hold queue)
// ends first.
func (l *openLoop) firstLatency() (float64, bool) {
	return time.Duration(l.first.Load()).Seconds(), l.firstFailed.Load()
}

// onePrediction sends a one-row Seldon prediction to path.
func onePrediction(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := predict(ctx, path, []float64{5.1, 3.5, 1.4, 0.2})
		return err
	}
}

// run sends with send at the current rate until ctx ends. A new rate takes
// effect within 20 ms: the gap since the last request is measured against
// the current rate while waiting, so a step from 1/s starts at once instead
// of after the baseline's one-second gap.
func (l *openLoop) run(ctx context.Context, send func(context.Context) error) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		last := time.Now().Add(-time.Second / time.Duration(l.rate.Load()))
		isFirst := true // the first request sent, whichever ends first
		for ctx.Err() == nil {
			gap := time.Second / time.Duration(l.rate.Load())
			next := last.Add(gap)
			if d := time.Until(next); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(min(d, 20*time.Millisecond)):
				}
				continue
			}
			// Behind by more than a gap (a step up from a slow rate):
			// start from now rather than send the missed ones at once.
			last = next
			if time.Since(last) > gap {
				last = time.Now()
			}
			l.wg.Add(1)
			go func(isFirst bool) {
				defer l.wg.Done()
				start := time.Now()
				err := send(ctx)
				if ctx.Err() != nil {
					return
				}
				if isFirst {
					l.firstFailed.Store(err != nil)
					l.first.Store(int64(time.Since(start)))
				}
				l.sent.Add(1)
				if err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err.Error())
					l.mu.Lock()
					l.failures = append(l.failures, time.Now())
					l.mu.Unlock()
				}
			}(isFirst)
			isFirst = false
		}
	}()
}

// TestRequestsPerSecondHPA covers the cases 1, 2, 4 and 5 on the
// `local` overlay: the adapter registered through APIServices answers
// custom.metrics.k8s.io through kube-apiserver in agreement with the load;
// the real HPA controller scales the model server to ceil(rate / 4) on a
// load step and back down when the load drops; no request fails meanwhile.
// Then the bad days: the adapter down (the HPA holds its replicas and says
// why, then catches up once the adapter is back) and a model pod killed
// under load (replaced; only what was in flight on it may fail).
func TestRequestsPerSecondHPA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local")
	// The test's HPA behaviour: scale-down after 15 s instead of a minute.
	patch := []byte(`{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":15,"policies":[{"type":"Percent","value":100,"periodSeconds":15}]}}}}`)
	if _, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, 2*time.Minute)
	waitReady(t, ctx, "model", "app.kubernetes.io/instance=iris-model-autoscale", 1, 2*time.Minute)
	waitEndpoints(t, ctx, "model", "iris-model-autoscale", 1)

	const path = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
	load := &openLoop{}
	load.rate.Store(20)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load.run(loadCtx, onePrediction(path))

	// Case 1: the custom metrics API through the aggregator agrees with the
	// load within 10%, summed over the pods.
	const raw = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/model/pods/*/requests_per_second"
	var sum float64
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		sum = -1
		data, err := env.client.CoreV1().RESTClient().Get().AbsPath(raw).DoRaw(ctx)
		if err == nil {
			var list struct {
				Items []struct {
					Value string `json:"value"`
				} `json:"items"`
			}
			if json.Unmarshal(data, &list) == nil {
				sum = 0
				for _, it := range list.Items {
					q, err := parseQuantity(it.Value)
					if err == nil {
						sum += q
					}
				}
			}
		}
		if math.Abs(sum-20)/20 <= 0.10 {
			break
		}
		time.Sleep(2 * time.Second)
	}
	if math.Abs(sum-20)/20 > 0.10 {
		t.Fatalf("custom.metrics.k8s.io says %.2f requests/s in total, the load is 20", sum)
	}
	t.Logf("custom.metrics.k8s.io: %.2f requests/s for a 20/s load", sum)

	// Case 2: the HPA formula, ceil(20 / 4) = 5 replicas, within one.
	want := int32(5)
	got := waitDesired(t, ctx, func(r int32) bool { return r >= want-1 && r <= want+1 }, 3*time.Minute)
	waitReady(t, ctx, "model", "app.kubernetes.io/instance=iris-model-autoscale", int(got), 2*time.Minute)
	t.Logf("scaled out to %d replicas (formula: %d)", got, want)

	// ...and back down when the load drops to 2/s: ceil(2/4) = 1.
	load.rate.Store(2)
	got = waitDesired(t, ctx, func(r int32) bool { return r <= 2 }, 3*time.Minute)
	waitReady(t, ctx, "model", "app.kubernetes.io/instance=iris-model-autoscale", int(got), 2*time.Minute)
	time.Sleep(5 * time.Second)

	// Case 4: nothing failed across the scale-out and the scale-in.
	t.Logf("scaled back in to %d; %d requests, %d failed", got, load.sent.Load(), load.failed.Load())
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across scaling; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}

	adapterDown(t, ctx, load)
	podKilled(t, ctx, load)
	stopLoad()
	load.wg.Wait()
}

const modelSelector = "app.kubernetes.io/instance=iris-model-autoscale"

// adapterDown: at 12/s (3 replicas) the adapter goes away and the load
// rises to 20/s. The HPA cannot see the rise: it must keep 3 replicas and
// report ScalingActive=False, never act on a made-up value; once the adapter
// is back it catches up to ceil(20/4) = 5.
func adapterDown(t *testing.T, ctx context.Context, load *openLoop) {
	load.rate.Store(12)
	failed0 := load.failed.Load()
	before := waitDesired(t, ctx, func(r int32) bool { return r >= 3 && r <= 4 }, 3*time.Minute)
	waitReady(t, ctx, "model", modelSelector, int(before), 2*time.Minute)
	setReplicas(t, ctx, "mlscale", "mlscale-adapter", 0)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 0, time.Minute)
	load.rate.Store(20)
	down := time.Now()
	sawCondition := ""
	for time.Since(down) < 50*time.Second {
		d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil && *d.Spec.Replicas != before {
			t.Fatalf("with the adapter down the model scaled from %d to %d replicas", before, *d.Spec.Replicas)
		}
		h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil {
			for _, c := range h.Status.Conditions {
				if c.Type == "ScalingActive" && c.Status == "False" {
					sawCondition = c.Reason + ": " + c.Message
				}
			}
		}
		time.Sleep(time.Second)
	}
	if sawCondition == "" {
		t.Fatalf("the HPA never reported ScalingActive=False in 50 s with the adapter down")
	}
	t.Logf("adapter down for 50 s: replicas held at %d; HPA says %.200s", before, sawCondition)
	setReplicas(t, ctx, "mlscale", "mlscale-adapter", 1)
	back := time.Now()
	got := waitDesired(t, ctx, func(r int32) bool { return r > before && r >= 4 && r <= 6 }, 3*time.Minute)
	t.Logf("adapter back: the HPA caught up from %d to %d replicas for 20/s in %s", before, got, time.Since(back).Round(time.Second))
	waitReady(t, ctx, "model", modelSelector, int(got), 2*time.Minute)
	if n := load.failed.Load() - failed0; n != 0 {
		t.Errorf("%d requests failed while the adapter was down and came back; first: %v", n, load.firstErr.Load())
	}
}

// podKilled: one model pod is force-deleted under 20/s (no preStop, no
// drain: its process gets SIGKILL). The ReplicaSet replaces it and traffic
// carries on: requests that were in flight on it may fail (Istio does not
// retry a reset either), nothing after it.
func podKilled(t *testing.T, ctx context.Context, load *openLoop) {
	pods := waitReady(t, ctx, "model", modelSelector, countReady(t, ctx), time.Minute)
	victim := pods[0]
	zero := int64(0)
	failedBefore := load.failed.Load()
	killed := time.Now()
	if err := env.client.CoreV1().Pods("model").Delete(ctx, victim.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		now, err := readyPods(ctx, "model", modelSelector)
		replaced := err == nil && len(now) >= len(pods)
		for _, p := range now {
			if p.Name == victim.Name {
				replaced = false
			}
		}
		if replaced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s killed; %d ready pods after 2 min, want %d again", victim.Name, len(now), len(pods))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("pod %s killed; replaced and Ready after %s", victim.Name, time.Since(killed).Round(100*time.Millisecond))
	time.Sleep(5 * time.Second)
	late := load.failedBetween(killed.Add(2*time.Second), time.Now())
	all := load.failed.Load() - failedBefore
	t.Logf("around the kill: %d failed (first error: %v), %d of them later than 2 s after it", all, load.firstErr.Load(), late)
	if late != 0 || all > 3 {
		t.Errorf("a killed pod cost %d failed requests (%d later than 2 s after the kill); want only the ones in flight on it", all, late)
	}
}

func countReady(t *testing.T, ctx context.Context) int {
	pods, err := readyPods(ctx, "model", modelSelector)
	if err != nil {
		t.Fatal(err)
	}
	return len(pods)
}

func setReplicas(t *testing.T, ctx context.Context, ns, name string, n int32) {
	t.Helper()
	// The Deployment changes under us (status, the activator's or the HPA's
	// writes): read and write again on a conflict, as kubectl scale does.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := env.client.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Spec.Replicas = n
		_, err = env.client.AppsV1().Deployments(ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("scaling %s/%s to %d: %v", ns, name, n, err)
	}
}

func waitDesired(t *testing.T, ctx context.Context, ok func(int32) bool, timeout time.Duration) int32 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last int32
	for time.Now().Before(deadline) {
		h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil {
			last = h.Status.DesiredReplicas
			if ok(last) {
				return last
			}
		}
		time.Sleep(time.Second)
	}
	h, _ := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
	t.Fatalf("HPA desired replicas %d did not reach the expected count; status %+v", last, h.Status)
	return 0
}

func parseQuantity(s string) (float64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, err
	}
	return q.AsApproximateFloat64(), nil
}
