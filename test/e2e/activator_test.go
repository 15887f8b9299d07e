//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	osexec "os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/mlscale/mlscale/manifests"
)

const (
	activatorSelector = "app.kubernetes.io/name=activator"
	modelPath         = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
)

// deployActivator applies only the activator (components/activator as the
// `local` overlay renders it: its namespace, Deployment, Service and RBAC),
// for tests that bring their own model (TestSmoke): the gateway sends every
// request to it. The cleanup deletes what it created.
func deployActivator(t *testing.T, ctx context.Context) {
	t.Helper()
	all, err := manifests.Build(filesys.MakeFsOnDisk(), env.repo+"/manifests/overlays/local")
	if err != nil {
		t.Fatalf("rendering the local overlay (did `make certs` run?): %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, o := range all {
		if (o.GetKind() == "Namespace" && o.GetName() == "mlscale") || o.GetLabels()["app.kubernetes.io/name"] == "activator" ||
			(strings.HasPrefix(o.GetName(), "mlscale-activator") && o.GetKind() != "RoleBinding" && o.GetKind() != "Role") {
			objs = append(objs, o)
		}
	}
	yaml, err := manifests.YAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, yaml, "apply", "--server-side", "--force-conflicts", "-f", "-")
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		kubectl(t, cctx, yaml, "delete", "--ignore-not-found", "--wait=false", "-f", "-")
		waitNamespaceGone(t, cctx, "mlscale")
	})
	waitReady(t, ctx, "mlscale", activatorSelector, 2, 2*time.Minute)
}

// activatorMetric sums one series over every activator replica's /metrics
// (exact series text as exposed, labels sorted).
func activatorMetric(t *testing.T, ctx context.Context, series string) float64 {
	t.Helper()
	pods, err := readyPods(ctx, "mlscale", activatorSelector)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, p := range pods {
		v, err := scrapeSeries(ctx, "http://"+p.Status.PodIP+":8081/metrics", series)
		if err != nil {
			t.Fatal(err)
		}
		sum += v
	}
	return sum
}

func scrapeSeries(ctx context.Context, url, series string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v, nil
		}
	}
	return 0, sc.Err()
}

// fastScaleDown makes the HPA go down within half a minute of quiet (the
// hpa component waits a minute and halves every 30 s): the tests wait for
// zero, not for the production pace.
func fastScaleDown(t *testing.T, ctx context.Context) {
	t.Helper()
	patch := `{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":20,"policies":[{"type":"Percent","value":100,"periodSeconds":15}]}}}}`
	if _, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPlainHPAScaleToZero: no KEDA in the path (the `local-zero` overlay: a
// plain HPA with minReplicas 0 on the activator's demand, served by the
// adapter as Object metrics on the Service). Idle goes to zero; the first
// request at zero is held by the activator, which scales the Deployment 0->1
// itself, and is answered; 20/s scales out; quiet goes back to zero; no
// request fails.
func TestPlainHPAScaleToZero(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local-zero")
	waitReady(t, ctx, "mlscale", activatorSelector, 2, 2*time.Minute)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, 2*time.Minute)
	fastScaleDown(t, ctx)

	// The Object metric exists with no request yet (and later at zero pods).
	const raw = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/model/services/iris-model-autoscale/activator_concurrency"
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cctx, c := context.WithTimeout(ctx, 10*time.Second)
		out, err := kubectlOut(cctx, "get", "--raw", raw)
		c()
		if err == nil && strings.Contains(out, `"activator_concurrency"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served: %v %s", raw, err, out)
		}
		time.Sleep(2 * time.Second)
	}

	start := time.Now()
	waitReplicas(t, ctx, func(r int32) bool { return r == 0 }, 3*time.Minute)
	waitReady(t, ctx, "model", modelSelector, 0, time.Minute)
	t.Logf("idle: the HPA scaled to zero %s after the overlay was applied", time.Since(start).Round(time.Second))
	out, err := kubectlOut(ctx, "get", "--raw", raw)
	if err != nil || !strings.Contains(out, `"value":"0"`) {
		t.Errorf("at zero pods, %s: %v %s (want a known 0)", raw, err, out)
	}

	readyAt := watchFirstReady(t, ctx)
	first := time.Now()
	if _, err := predict(ctx, modelPath, []float64{5.1, 3.5, 1.4, 0.2}); err != nil {
		t.Fatalf("the first request at zero replicas: %v", err)
	}
	answered := time.Now()
	select {
	case r := <-readyAt:
		t.Logf("first request from zero answered in %s; %s after the pod turned Ready (watched)", answered.Sub(first).Round(time.Millisecond), answered.Sub(r).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Logf("first request from zero answered in %s; the pod's Ready was not seen on the watch", answered.Sub(first).Round(time.Millisecond))
	}
	if n := activatorMetric(t, ctx, `mlscale_activator_wakes_total{namespace="model",result="scaled",service="iris-model-autoscale"}`); n < 1 {
		t.Errorf("the activator scaled the Deployment from zero %v times, want >= 1", n)
	}
	if n := activatorMetric(t, ctx, `mlscale_activator_hold_outcomes_total{namespace="model",outcome="released",service="iris-model-autoscale"}`); n < 1 {
		t.Errorf("%v requests released from the hold, want >= 1", n)
	}

	load := &openLoop{}
	load.rate.Store(20)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load.run(loadCtx, onePrediction(modelPath))
	got := waitReplicas(t, ctx, func(r int32) bool { return r >= 4 && r <= 6 }, 3*time.Minute)
	t.Logf("20/s: the HPA scaled out to %d replicas on activator_arrivals_per_second (formula: 5)", got)
	stopLoad()
	load.wg.Wait()

	quiet := time.Now()
	waitReplicas(t, ctx, func(r int32) bool { return r == 0 }, 4*time.Minute)
	t.Logf("quiet: back to zero in %s; %d requests, %d failed", time.Since(quiet).Round(time.Second), load.sent.Load(), load.failed.Load())
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}
}

// watchFirstReady reports when a model pod is first seen Ready on a watch.
func watchFirstReady(t *testing.T, ctx context.Context) <-chan time.Time {
	t.Helper()
	w, err := env.client.CoreV1().Pods("model").Watch(ctx, metav1.ListOptions{LabelSelector: modelSelector})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan time.Time, 1)
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.DeletionTimestamp != nil {
				// A pod of the last scale-down, still terminating, may
				// still say Ready: not the pod that answers.
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					out <- time.Now()
					return
				}
			}
		}
	}()
	return out
}

// kubectlOut runs the cached kubectl, returning its error rather than
// failing the test.
func kubectlOut(ctx context.Context, args ...string) (string, error) {
	cmd := osexec.CommandContext(ctx, env.kubectl, append([]string{"--kubeconfig", env.kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestActivatorOverflow: at zero with one activator replica and a queue of
// N, N+k requests at once: exactly k get 503 with Retry-After at once, the N
// held are answered once a pod is Ready. Then 10,000 requests at zero: the
// activator's RSS stays under its memory limit (256 MiB).
func TestActivatorOverflow(t *testing.T) {
	const n, k = 20, 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local-zero")
	// One replica: each replica has its own queue (the activator keeps no
	// shared state), so "N" is per replica.
	setReplicas(t, ctx, "mlscale", "mlscale-activator", 1)
	waitReady(t, ctx, "mlscale", activatorSelector, 1, 2*time.Minute)
	// The HPA off: this test decides when the model is at zero.
	if err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Delete(ctx, "iris-model-autoscale", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	annotate := fmt.Sprintf(`{"metadata":{"annotations":{"activator.mlscale.io/queue-length":"%d"}}}`, n)
	if _, err := env.client.CoreV1().Services("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, []byte(annotate), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	setReplicas(t, ctx, "model", "iris-model-autoscale", 0)
	waitReady(t, ctx, "model", modelSelector, 0, time.Minute)
	time.Sleep(2 * time.Second) // the annotation and the empty endpoints reach the informer

	type answer struct {
		code       int
		retryAfter string
		body       string
	}
	answers := make(chan answer, n+k)
	body := []byte(`{"data":{"ndarray":[[5.1,3.5,1.4,0.2]]}}`)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0}}
	for range n + k {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+modelPath, strings.NewReader(string(body)))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				answers <- answer{body: err.Error()}
				return
			}
			defer resp.Body.Close()
			b := make([]byte, 512)
			m, _ := resp.Body.Read(b)
			answers <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), string(b[:m])}
		}()
	}
	var refused int
	for refused < k {
		select {
		case a := <-answers:
			if a.code != http.StatusServiceUnavailable || a.retryAfter == "" || !strings.Contains(a.body, "activator.mlscale.io/queue-length=20") {
				t.Fatalf("before any pod: %+v, want 503 with Retry-After naming the queue length", a)
			}
			refused++
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d refused at once", refused, k)
		}
	}
	if held := activatorMetric(t, ctx, `mlscale_activator_held_requests{namespace="model",service="iris-model-autoscale"}`); held != n {
		t.Errorf("%v held, want %d", held, n)
	}
	// The activator wakes the Deployment itself (scale-target annotation).
	waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
	t.Logf("queue %d, %d at once at zero: %d refused with 503 and Retry-After at once, %d held", n, n+k, k, n)
	for i := range n {
		select {
		case a := <-answers:
			if a.code != http.StatusOK {
				t.Errorf("held request %d: %+v, want 200", i, a)
			}
		case <-time.After(90 * time.Second):
			t.Fatalf("only %d of the %d held requests answered", i, n)
		}
	}

	// The flood: 10,000 requests at zero from 1,000 connections.
	setReplicas(t, ctx, "model", "iris-model-autoscale", 0)
	waitReady(t, ctx, "model", modelSelector, 0, time.Minute)
	// No wake during the flood: the held ones time out instead.
	annotate = `{"metadata":{"annotations":{"activator.mlscale.io/scale-target":null,"activator.mlscale.io/queue-timeout":"5s"}}}`
	if _, err := env.client.CoreV1().Services("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, []byte(annotate), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	pods, err := readyPods(ctx, "mlscale", activatorSelector)
	if err != nil || len(pods) != 1 {
		t.Fatalf("activator pods: %v %v", len(pods), err)
	}
	metricsURL := "http://" + pods[0].Status.PodIP + ":8081/metrics"
	before, _ := scrapeSeries(ctx, metricsURL, "process_resident_memory_bytes")
	var peak atomic.Int64
	sampling, stopSampling := context.WithCancel(ctx)
	var sw sync.WaitGroup
	sw.Add(1)
	go func() {
		defer sw.Done()
		for sampling.Err() == nil {
			if v, err := scrapeSeries(sampling, metricsURL, "process_resident_memory_bytes"); err == nil && int64(v) > peak.Load() {
				peak.Store(int64(v))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	flood := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1000, MaxIdleConnsPerHost: 1000}}
	var ok, unavailable, other atomic.Int64
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+modelPath, strings.NewReader(string(body)))
				resp, err := flood.Do(req)
				switch {
				case err != nil:
					other.Add(1)
				case resp.StatusCode == http.StatusServiceUnavailable:
					unavailable.Add(1)
				case resp.StatusCode == http.StatusOK:
					ok.Add(1)
				default:
					other.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	floodStart := time.Now()
	for range 10000 {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	stopSampling()
	sw.Wait()
	t.Logf("flood of 10,000 at zero in %s: %d 503, %d other; activator RSS %.1f MiB before, peak %.1f MiB",
		time.Since(floodStart).Round(time.Millisecond), unavailable.Load(), other.Load(), before/(1<<20), float64(peak.Load())/(1<<20))
	if unavailable.Load() != 10000 {
		t.Errorf("%d of 10,000 got 503 (%d other, %d 200), want all: no pod and no wake", unavailable.Load(), other.Load(), ok.Load())
	}
	if peak.Load() == 0 || peak.Load() > 256<<20 {
		t.Errorf("activator RSS peak %d bytes, want known and under its 256 MiB limit", peak.Load())
	}
}

// TestScaleInThroughActivator: 5 -> 1 replicas under a steady load of
// 10,000-row requests, with the activator's retries off: no request fails.
// A pod being deleted is marked terminating in its EndpointSlice at once
// (before its preStop pause), so the activator stops picking it while it
// still serves; requests already on it finish during its drain.
func TestScaleInThroughActivator(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local")
	kubectl(t, ctx, nil, "-n", "mlscale", "patch", "deployment/mlscale-activator", "--type=json",
		`-p=[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--retries=0"}]`)
	if err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Delete(ctx, "iris-model-autoscale", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	setReplicas(t, ctx, "model", "iris-model-autoscale", 5)
	waitReady(t, ctx, "model", modelSelector, 5, 3*time.Minute)
	waitRollout(t, ctx, "mlscale", "mlscale-activator", 2)

	body := rowsBody(10000)
	// 1/s: one pod (200m CPU on the local overlay, about 10 such requests a second) keeps up with it after
	// the scale-in, so the run ends with no backlog.
	load := &openLoop{}
	load.rate.Store(1)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load.run(loadCtx, func(ctx context.Context) error { _, err := post(ctx, modelPath, body); return err })
	time.Sleep(15 * time.Second)
	setReplicas(t, ctx, "model", "iris-model-autoscale", 1)
	waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
	time.Sleep(20 * time.Second) // the removed pods' drains end; load goes on
	stopLoad()
	load.wg.Wait()
	t.Logf("5 -> 1 under 1/s of 10,000-row requests, retries off: %d requests, %d failed", load.sent.Load(), load.failed.Load())
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d failed; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}
	if n := activatorMetric(t, ctx, `mlscale_activator_retries_total{reason="connect-failure"}`); n != 0 {
		t.Errorf("%v retries with retries off", n)
	}
}

// TestActivatorReplicaKilled: one of two activator replicas killed (grace 0)
// under 20/s: only requests in flight on it may fail, none afterwards.
func TestActivatorReplicaKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local")
	waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
	pods := waitReady(t, ctx, "mlscale", activatorSelector, 2, 2*time.Minute)

	load := &openLoop{}
	load.rate.Store(20)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load.run(loadCtx, onePrediction(modelPath))
	time.Sleep(10 * time.Second)
	killed := time.Now()
	zero := int64(0)
	if err := env.client.CoreV1().Pods("mlscale").Delete(ctx, pods[0].Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, "mlscale", activatorSelector, 2, 2*time.Minute)
	replaced := time.Now()
	time.Sleep(15 * time.Second)
	stopLoad()
	load.wg.Wait()
	during := load.failedBetween(killed.Add(-time.Second), replaced.Add(time.Second))
	after := load.failedBetween(replaced.Add(time.Second), time.Now())
	t.Logf("activator %s killed under 20/s: %d requests, %d failed around the kill, %d after the replacement was Ready (%s later)",
		pods[0].Name, load.sent.Load(), during, after, replaced.Sub(killed).Round(100*time.Millisecond))
	if during > 0 {
		t.Logf("first failure: %v", load.firstErr.Load())
	}
	if after != 0 || int(load.failed.Load()) != during {
		t.Errorf("%d failures after the replacement, %d outside the kill window", after, int(load.failed.Load())-during)
	}
}

// waitRollout waits until a Deployment's pods all run its latest template.
func waitRollout(t *testing.T, ctx context.Context, ns, name string, n int32) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		d, err := env.client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == n && d.Status.ReadyReplicas == n && d.Status.Replicas == n {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("deployment %s/%s did not roll out", ns, name)
}
