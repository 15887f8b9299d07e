//go:build e2e

package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/mlscale/mlscale/internal/testenv"
	"github.com/mlscale/mlscale/loadgen/chart"
)

// benchConfig is one autoscaling configuration of `make bench-scaling`.
type benchConfig struct {
	Key, Name, Overlay string
	// HPA is the HPA that scales the model (KEDA names its own).
	HPA string
	// FromZero: the configuration idles at zero replicas and the step's
	// first request wakes it.
	FromZero bool
	// AdapterSyncs: the HPA reads its metric from mlscale's adapter, so its
	// syncs can be seen there (hpaSyncs) and the step placed at a chosen
	// phase of the sync period.
	AdapterSyncs bool
	setup        func(t *testing.T, ctx context.Context)
}

// benchResult is what one run of one configuration measured.
type benchResult struct {
	Key, Name string
	// Run names the `make bench-scaling` invocation the row came from (its
	// UTC start); Repeat is the run's index within it (1-based). Rows kept
	// from an earlier invocation (MLSCALE_BENCH_ONLY) keep their Run.
	Run    string
	Repeat int
	// PhaseS is how long after the HPA's last sync the step came (-1:
	// not observable for this configuration), PhaseBy how that sync was
	// seen; OffsetS the extra wait used to move the step along the sync
	// period.
	PhaseS, OffsetS float64
	PhaseBy         string `json:",omitempty"`
	// DecideS is seconds from the step to the first scale-up (the
	// Deployment's replicas raised above where they were); ReadyS to the
	// replicas of that first decision all being Ready.
	DecideS, ReadyS float64
	// OutS is seconds to the first scale-out above one replica (the
	// step's answer; for a configuration at zero DecideS is the wake),
	// OutReadyS to those replicas Ready, OutReplicas that count. PodStartS
	// is OutReadyS - OutS: how long the new pods took to start.
	OutS, OutReadyS, PodStartS float64
	OutReplicas                int32
	// FirstReplicas is that first decision; MaxReplicas the most within the
	// window; FinalReplicas at its end.
	FirstReplicas, MaxReplicas, FinalReplicas int32
	// ReplicaSeconds integrates spec.replicas over the window; ScaleEvents
	// counts the changes of spec.replicas in it.
	ReplicaSeconds float64
	ScaleEvents    int
	// FirstRequestS (FromZero only) is the first request's latency at zero:
	// the first sent, held until a pod is Ready; FirstRequestFailed says it
	// was answered with an error instead.
	FirstRequestS      float64
	FirstRequestFailed bool
	Sent, Failed       int64
	Curve              []chart.Step
	Note               string `json:",omitempty"`
}

const (
	// The step must be heavy enough for the seed's CPU rule to have a
	// chance (a 5,000-row, 16/s step never crossed 40% in 150 s) and light
	// enough for this 2-core machine (at 40/s one replica saturated).
	benchRows     = 10000
	benchBaseline = 1  // requests per second before the step
	benchStep     = 24 // requests per second after it
	benchWindow   = 150 * time.Second
)

// TestBenchScaling is `make bench-scaling` (skipped otherwise): the same load
// step (benchBaseline -> benchStep requests/s of benchRows-row predictions,
// open loop, through the gateway) against each configuration in one run on
// the local cluster, timing the HPA's first scale-up decision and the new
// pods' readiness, and drawing the replica curves in one chart.
func TestBenchScaling(t *testing.T) {
	if os.Getenv("MLSCALE_BENCH_SCALING") != "1" {
		testenv.RequireOrSkip(t, "MLSCALE_BENCH_SCALING=1 runs it (make bench-scaling; make e2e leaves it out)")
	}
	out := os.Getenv("MLSCALE_BENCH_OUT")
	if out == "" {
		out = filepath.Join(env.repo, "results", "bench")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	dyn := dynamicClient(t)
	configs := []benchConfig{
		{Key: "a", Name: "mlscale adapter, requests_per_second", Overlay: "local", HPA: "iris-model-autoscale", AdapterSyncs: true},
		{Key: "b", Name: "seed: CPU 40% via metrics-server", Overlay: "local-cpu", HPA: "iris-model-autoscale"},
		{Key: "c", Name: "prometheus-adapter v0.12.0 + Prometheus", Overlay: "local", HPA: "iris-model-autoscale",
			setup: func(t *testing.T, ctx context.Context) { setupPrometheusAdapter(t, ctx, dyn) }},
	}
	if os.Getenv("MLSCALE_E2E_NO_KEDA") != "1" {
		configs = append(configs, benchConfig{Key: "d", Name: "KEDA external-push (from zero)", Overlay: "local-keda",
			HPA: "keda-hpa-iris-model-autoscale", FromZero: true})
	}
	burstPolicy := cmp.Or(os.Getenv("MLSCALE_BENCH_BURST"), "threshold=200%,hold=500ms")
	configs = append(configs, benchConfig{Key: "e", Name: "mlscale adapter + burst (mlscale.io/burst: " + burstPolicy + ")", Overlay: "local", HPA: "iris-model-autoscale", AdapterSyncs: true,
		setup: func(t *testing.T, ctx context.Context) {
			// The same HPA as (a), opted in. The default is the hold for a
			// workload behind the activator (burst.TestEdgeStepShortHold);
			// MLSCALE_BENCH_BURST sets another annotation value.
			ann, err := json.Marshal(burstPolicy)
			if err != nil {
				t.Fatal(err)
			}
			patch := []byte(`{"metadata":{"annotations":{"mlscale.io/burst":` + string(ann) + `}}}`)
			if _, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}})
	// MLSCALE_BENCH_REPEAT=3 runs each configuration three times, the step
	// at a different phase of the HPA's sync period each time.
	repeats := 1
	if r, err := strconv.Atoi(os.Getenv("MLSCALE_BENCH_REPEAT")); err == nil && r > 0 {
		repeats = r
	}
	run := time.Now().UTC().Format("2006-01-02T15:04Z")
	// MLSCALE_BENCH_ONLY=a,e reruns some configurations; the others' rows
	// are kept from the last report, marked with the run they came from.
	only := os.Getenv("MLSCALE_BENCH_ONLY")
	var results []benchResult
	if only != "" {
		if data, err := os.ReadFile(filepath.Join(out, "scaling.json")); err == nil {
			_ = json.Unmarshal(data, &results)
		}
	}
	body := benchBody()
	t.Cleanup(func() { keepKEDAOperatorLogs(t, out) })
	for _, c := range configs {
		if only != "" && !strings.Contains(","+only+",", ","+c.Key+",") {
			continue
		}
		results = slices.DeleteFunc(results, func(o benchResult) bool { return o.Key == c.Key })
		for i := range repeats {
			t.Run(fmt.Sprintf("%s/%d", c.Key, i+1), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
				defer cancel()
				r := runBenchConfig(t, ctx, c, body, i, repeats)
				r.Run, r.Repeat = run, i+1
				results = append(results, r)
				slices.SortStableFunc(results, func(x, y benchResult) int { return strings.Compare(x.Key, y.Key) })
				t.Logf("%s #%d: decided at %.1f s (%d replicas), Ready at %.1f s, max %d, final %d; %.0f replica-s, %d scale events; %d requests, %d failed",
					c.Name, i+1, r.DecideS, r.FirstReplicas, r.ReadyS, r.MaxReplicas, r.FinalReplicas, r.ReplicaSeconds, r.ScaleEvents, r.Sent, r.Failed)
			})
		}
	}
	writeBenchReport(t, out, results)
}

func benchBody() []byte {
	rows := make([][]float64, benchRows)
	for i := range rows {
		rows[i] = []float64{float64(1 + i%4), float64(1 + (i/4)%4), float64(1 + (i/16)%4), float64(1 + (i/64)%4)}
	}
	b, _ := json.Marshal(map[string]any{"data": map[string]any{"ndarray": rows}})
	return b
}

// runBenchConfig deploys c, holds the baseline until the HPA computes from
// live metrics, places the step (repeat i of n: at i/n of the way through
// the HPA's sync period when its syncs are visible, else after i x period/n
// more of baseline), and watches the replicas for benchWindow.
func runBenchConfig(t *testing.T, ctx context.Context, c benchConfig, body []byte, i, n int) benchResult {
	res := benchResult{Key: c.Key, Name: c.Name, PhaseS: -1}
	deployOverlay(t, ctx, c.Overlay)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, 2*time.Minute)
	if c.setup != nil {
		c.setup(t, ctx)
	}
	const path = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
	// A fixed, pre-encoded body keeps the load client's own CPU small next
	// to the model server's.
	load := &openLoop{}
	send := func(ctx context.Context) error { _, err := post(ctx, path, body); return err }
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer func() { stopLoad(); load.wg.Wait() }()
	const period = 15 * time.Second // the HPA sync period the cluster runs with
	offset := time.Duration(i) * period / time.Duration(n)
	var step time.Time
	if c.FromZero {
		// KEDA's operator must be up before its ScaledObject can be:
		// say so (with its container state) instead of timing out on the
		// ScaledObject.
		for _, p := range waitReady(t, ctx, "keda", "app=keda-operator", 1, 3*time.Minute) {
			for _, cs := range p.Status.ContainerStatuses {
				if lt := cs.LastTerminationState.Terminated; lt != nil {
					t.Logf("KEDA operator %s: %d restarts so far, the last exit code %d at %s", p.Name, cs.RestartCount, lt.ExitCode, lt.FinishedAt.Format(time.RFC3339))
				}
			}
		}
		ensureKEDAMetricsAPI(t, ctx, dynamicClient(t))
		waitScaledObjectTrue(t, ctx, dynamicClient(t), "Ready", 2*time.Minute)
		waitReplicas(t, ctx, func(r int32) bool { return r == 0 }, 3*time.Minute)
		waitReady(t, ctx, "model", modelSelector, 0, time.Minute)
		time.Sleep(offset)
		step = time.Now()
	} else {
		waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
		waitEndpoints(t, ctx, "model", "iris-model-autoscale", 1)
		// A steady baseline until the HPA computes from live metrics, so
		// every configuration starts from the same state.
		load.rate.Store(benchBaseline)
		load.run(loadCtx, send)
		waitScalingActive(t, ctx, c.HPA, 5*time.Minute)
		if c.AdapterSyncs {
			syncs := watchHPASyncs(t, ctx)
			step = syncs.stepAfterSync(t, ctx, 2*time.Second+offset)
			if last, ok := syncs.lastBefore(step); ok {
				res.PhaseS = step.Sub(last).Seconds()
			}
		} else if syncs, ok := watchHPAStatusSyncs(t, ctx, c.HPA); ok {
			// The HPA's status changes at a sync whose metrics moved:
			// the phase is measured from the last such change.
			step = syncs.stepAfterSync(t, ctx, 2*time.Second+offset)
			if last, ok := syncs.lastBefore(step); ok {
				res.PhaseS, res.PhaseBy = step.Sub(last).Seconds(), "HPA status update"
			}
		} else {
			time.Sleep(20*time.Second + offset)
			step = time.Now()
		}
		if c.AdapterSyncs {
			res.PhaseBy = "metric query at the adapter"
		}
		if r := waitReplicas(t, ctx, func(int32) bool { return true }, time.Second); r != 1 {
			t.Fatalf("the baseline load left %d replicas, want 1", r)
		}
	}
	res.OffsetS = offset.Seconds()

	start := int32(0)
	if !c.FromZero {
		start = 1
	}
	load.rate.Store(benchStep)
	if c.FromZero {
		load.run(loadCtx, send)
	}
	res.Curve = append(res.Curve, chart.Step{T: -5, Replicas: float64(start)})
	res.DecideS, res.ReadyS, res.OutS, res.OutReadyS, res.PodStartS = -1, -1, -1, -1, -1
	last, lastT := start, 0.0
	for time.Since(step) < benchWindow {
		now := time.Since(step).Seconds()
		d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil {
			r := *d.Spec.Replicas
			res.ReplicaSeconds += float64(last) * (now - lastT)
			if r != last {
				res.ScaleEvents++
			}
			last, lastT = r, now
			res.Curve = append(res.Curve, chart.Step{T: now, Replicas: float64(r)})
			res.MaxReplicas = max(res.MaxReplicas, r)
			if res.DecideS < 0 && r > start {
				res.DecideS, res.FirstReplicas = now, r
			}
			if res.OutS < 0 && r > max(start, 1) {
				res.OutS, res.OutReplicas = now, r
			}
			if (res.DecideS >= 0 && res.ReadyS < 0) || (res.OutS >= 0 && res.OutReadyS < 0) {
				if ready, err := readyPods(ctx, "model", modelSelector); err == nil {
					if res.DecideS >= 0 && res.ReadyS < 0 && int32(len(ready)) >= res.FirstReplicas {
						res.ReadyS = now
					}
					if res.OutS >= 0 && res.OutReadyS < 0 && int32(len(ready)) >= res.OutReplicas {
						res.OutReadyS, res.PodStartS = now, now-res.OutS
					}
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.ReplicaSeconds += float64(last) * (benchWindow.Seconds() - lastT)
	res.FinalReplicas = last
	res.FirstRequestS, res.FirstRequestFailed = load.firstLatency()
	stopLoad()
	load.wg.Wait()
	res.Sent, res.Failed = load.sent.Load(), load.failed.Load()
	if res.Failed != 0 {
		res.Note = fmt.Sprintf("first failure: %v", load.firstErr.Load())
	}
	return res
}

func waitScalingActive(t *testing.T, ctx context.Context, hpa string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, hpa, metav1.GetOptions{})
		if err == nil {
			for _, c := range h.Status.Conditions {
				if c.Type == "ScalingActive" {
					last = string(c.Status) + " " + c.Reason + ": " + c.Message
					if c.Status == "True" && len(h.Status.CurrentMetrics) > 0 {
						return
					}
				}
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("HPA %s not computing from metrics after %s: %s", hpa, timeout, last)
}

// setupPrometheusAdapter replaces mlscale's custom.metrics.k8s.io
// APIServices with prometheus-adapter's, over Prometheus scraping the pods.
func setupPrometheusAdapter(t *testing.T, ctx context.Context, dyn dynamic.Interface) {
	for _, v := range []string{"v1beta1", "v1beta2"} {
		if err := dyn.Resource(apiServices).Delete(ctx, v+".custom.metrics.k8s.io", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	manifest, err := os.ReadFile("testdata/bench/prometheus-adapter.yaml")
	if err != nil {
		t.Fatal(err)
	}
	manifest = bytes.ReplaceAll(manifest, []byte("__SD_URL__"), []byte(serveHTTPSD(t, ctx, "model")))
	kubectl(t, ctx, manifest, "apply", "-f", "-")
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		kubectl(t, cctx, manifest, "delete", "--ignore-not-found", "--wait=false", "-f", "-")
		waitNamespaceGone(t, cctx, "monitoring")
	})
	waitReady(t, ctx, "monitoring", "app=prometheus", 1, 2*time.Minute)
	waitReady(t, ctx, "monitoring", "app=prometheus-adapter", 1, 2*time.Minute)
	waitAPIService(t, ctx, dyn, "v1beta2.custom.metrics.k8s.io", "monitoring", "prometheus-adapter")
}

// serveHTTPSD serves Prometheus HTTP service discovery on loopback for the
// pods of namespace that carry prometheus.io/scrape=true: one target group
// per pod at podIP:prometheus.io/port, labels namespace and pod (what
// kubernetes_sd_configs with the usual relabelling produces).
func serveHTTPSD(t *testing.T, ctx context.Context, namespace string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pods, err := env.client.CoreV1().Pods(namespace).List(r.Context(), metav1.ListOptions{})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		type group struct {
			Targets []string          `json:"targets"`
			Labels  map[string]string `json:"labels"`
		}
		groups := []group{}
		for _, p := range pods.Items {
			a := p.Annotations
			if a["prometheus.io/scrape"] != "true" || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
				continue
			}
			labels := map[string]string{"namespace": p.Namespace, "pod": p.Name}
			if path := a["prometheus.io/path"]; path != "" {
				labels["__metrics_path__"] = path
			}
			groups = append(groups, group{Targets: []string{net.JoinHostPort(p.Status.PodIP, a["prometheus.io/port"])}, Labels: labels})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(groups)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String() + "/sd"
}

func writeBenchReport(t *testing.T, out string, results []benchResult) {
	var md strings.Builder
	fmt.Fprintf(&md, "# bench-scaling: %s\n\nLoad step at t=0: %d -> %d requests/s of %d-row predictions (open loop, through the gateway), watched for %s. HPA sync period: Kubernetes' default (15 s).\n\n",
		time.Now().UTC().Format(time.RFC3339), benchBaseline, benchStep, benchRows, benchWindow)
	md.WriteString("Each row is one run: `run` is the `make bench-scaling` invocation it came from (UTC start), `#` its repeat. Phase: seconds from the HPA's last sync to the step, seen as its metric query at mlscale's adapter ((a), (e)) or as the last change of its status (a sync whose metrics moved; (b), (c)); n/a where neither is observable: there the step was moved by the offset instead. Scale-out: the first decision above one replica (the step's answer; for (d), which starts at zero, the first decision is the wake 0 -> 1). Pod start: scale-out to those replicas Ready.\n\n")
	md.WriteString("| configuration | run | # | phase (s) | first decision (s) | replicas | Ready (s) | scale-out (s) | replicas | Ready (s) | pod start (s) | max | final | replica-s | scale events | first request at zero (s) | requests | failed |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var curves []chart.Curve
	byKey := map[string][]benchResult{}
	var keys []string
	for _, r := range results {
		if _, ok := byKey[r.Key]; !ok {
			keys = append(keys, r.Key)
		}
		byKey[r.Key] = append(byKey[r.Key], r)
		first := ""
		if r.FirstRequestS > 0 && strings.Contains(r.Name, "zero") {
			first = fmt.Sprintf("%.2f", r.FirstRequestS)
			if r.FirstRequestFailed {
				first += " (failed)"
			}
		}
		phase := "n/a"
		if r.PhaseS >= 0 {
			phase = fmt.Sprintf("%.1f", r.PhaseS)
		} else if r.OffsetS > 0 {
			phase = fmt.Sprintf("n/a (+%.0f s)", r.OffsetS)
		}
		runName := r.Run
		if runName == "" {
			runName = "(unmarked, before runs were marked)"
		}
		fmt.Fprintf(&md, "| (%s) %s | %s | %d | %s | %s | %d | %s | %s | %d | %s | %s | %d | %d | %.0f | %d | %s | %d | %d |\n", r.Key, r.Name, runName, r.Repeat, phase,
			secs(r.DecideS), r.FirstReplicas, secs(r.ReadyS), secs(r.OutS), r.OutReplicas, secs(r.OutReadyS), secs(r.PodStartS),
			r.MaxReplicas, r.FinalReplicas, r.ReplicaSeconds, r.ScaleEvents, first, r.Sent, r.Failed)
		if r.Repeat <= 1 {
			curves = append(curves, chart.Curve{Name: "(" + r.Key + ") " + r.Name, Steps: r.Curve})
		}
	}
	md.WriteString("\nPer configuration over its runs (median, and min-max):\n\n| configuration | runs | first decision (s) | scale-out (s) | its Ready (s) | pod start (s) | replica-s | scale events | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	med, medOut, medEvents := map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, k := range keys {
		rs := byKey[k]
		col := func(f func(benchResult) float64) (float64, string) {
			var xs []float64
			for _, r := range rs {
				if v := f(r); v >= 0 {
					xs = append(xs, v)
				}
			}
			if len(xs) == 0 {
				return -1, "none"
			}
			slices.Sort(xs)
			m := xs[len(xs)/2]
			if len(xs)%2 == 0 {
				m = (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
			}
			if len(xs) < len(rs) {
				return m, fmt.Sprintf("%.1f (%.1f-%.1f; %d of %d runs)", m, xs[0], xs[len(xs)-1], len(xs), len(rs))
			}
			return m, fmt.Sprintf("%.1f (%.1f-%.1f)", m, xs[0], xs[len(xs)-1])
		}
		d, ds := col(func(r benchResult) float64 { return r.DecideS })
		med[k] = d
		o, outs := col(func(r benchResult) float64 { return r.OutS })
		medOut[k] = o
		_, ordy := col(func(r benchResult) float64 { return r.OutReadyS })
		_, pss := col(func(r benchResult) float64 { return r.PodStartS })
		_, rs2 := col(func(r benchResult) float64 { return r.ReplicaSeconds })
		e, ev := col(func(r benchResult) float64 { return float64(r.ScaleEvents) })
		medEvents[k] = e
		_, fl := col(func(r benchResult) float64 { return float64(r.Failed) })
		fmt.Fprintf(&md, "| (%s) %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", k, rs[0].Name, len(rs), ds, outs, ordy, pss, rs2, ev, fl)
	}
	if a, ok := med["a"]; ok && a > 0 {
		md.WriteString("\nGoal: (a) decides within one HPA sync period + 5 s (20 s) of the step, and at least 2x faster than (b) and (c) (medians).\n\n")
		fmt.Fprintf(&md, "- (a) decided in %.1f s: %s\n", a, verdict(a <= 20))
		for _, k := range []string{"b", "c"} {
			o, ok := med[k]
			if !ok {
				continue
			}
			if o < 0 {
				fmt.Fprintf(&md, "- (%s) made no scale-up decision within %s: (a) is faster by more than %.1fx\n", k, benchWindow, benchWindow.Seconds()/a)
				continue
			}
			fmt.Fprintf(&md, "- (%s) / (a) = %.1fx: %s\n", k, o/a, verdict(o >= 2*a))
		}
	}
	if e, ok := medOut["e"]; ok && e > 0 {
		md.WriteString("\nGoal: (e) scales out <= 2 s after the step, its capacity Ready <= pod start + 2 s, at least 5x faster than every other configuration's scale-out, and at most one scale event more than (a) (medians).\n\n")
		fmt.Fprintf(&md, "- (e) scaled out in %.1f s: %s\n", e, verdict(e <= 2))
		for _, r := range byKey["e"] {
			if r.OutReadyS >= 0 {
				fmt.Fprintf(&md, "- (e) run %s #%d: Ready at %.1f s, pod start %.1f s: %s\n", r.Run, r.Repeat, r.OutReadyS, r.PodStartS, verdict(r.OutReadyS <= r.PodStartS+2))
			}
		}
		for _, k := range keys {
			if k == "e" {
				continue
			}
			if o := medOut[k]; o > 0 {
				fmt.Fprintf(&md, "- (%s) / (e) = %.1fx: %s\n", k, o/e, verdict(o >= 5*e))
			} else {
				fmt.Fprintf(&md, "- (%s) did not scale out within %s: (e) is faster by more than %.0fx\n", k, benchWindow, benchWindow.Seconds()/e)
			}
		}
		if a, ok := medEvents["a"]; ok {
			fmt.Fprintf(&md, "- scale events: (e) %.0f, (a) %.0f: %s\n", medEvents["e"], a, verdict(medEvents["e"] <= a+1))
		}
	}
	if err := os.WriteFile(filepath.Join(out, "scaling.md"), []byte(md.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "scaling.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(out, "scaling.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(curves) > 0 {
		if err := chart.WriteCurvesPNG(f, fmt.Sprintf("replicas after a %d -> %d req/s step (%d rows each), first run of each", benchBaseline, benchStep, benchRows),
			"seconds since the load step", curves, 1100, 550); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("report: %s\n%s", filepath.Join(out, "scaling.md"), md.String())
}

func secs(s float64) string {
	if s < 0 {
		return "none in window"
	}
	return fmt.Sprintf("%.1f", s)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// watchHPAStatusSyncs records when the HPA's status changes (polled every
// 200 ms): the controller writes it at a sync whose metrics or counts moved,
// so with a live metric each change is a sync. ok is false when fewer than
// two changes come within 45 s (a metric that does not move between syncs):
// then the sync is not observable this way.
func watchHPAStatusSyncs(t *testing.T, ctx context.Context, hpa string) (*hpaSyncs, bool) {
	t.Helper()
	w := &hpaSyncs{}
	go func() {
		last := ""
		for ctx.Err() == nil {
			h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, hpa, metav1.GetOptions{})
			if err == nil && h.ResourceVersion != last {
				if last != "" {
					w.mu.Lock()
					w.times = append(w.times, time.Now())
					w.mu.Unlock()
				}
				last = h.ResourceVersion
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		w.mu.Lock()
		n := len(w.times)
		w.mu.Unlock()
		if n >= 2 {
			return w, true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return w, false
}

// keepKEDAOperatorLogs copies every KEDA operator container log of this
// cluster (the node agent keeps a pod's <container>.log, appended across
// restarts, after the pod is gone) into out when the benchmark failed or an
// operator container restarted during it, and logs the lines that say why
// it stopped. An exit of KEDA's operator in the middle of a run is what made
// configuration (d) fail once ("ScaledObject not Ready within 2m0s"); this
// keeps the evidence whatever the outcome.
func keepKEDAOperatorLogs(t *testing.T, out string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	restarts := int32(0)
	if pods, err := env.client.CoreV1().Pods("keda").List(ctx, metav1.ListOptions{LabelSelector: "app=keda-operator"}); err == nil {
		for _, p := range pods.Items {
			for _, cs := range p.Status.ContainerStatuses {
				restarts += cs.RestartCount
			}
		}
	}
	t.Logf("KEDA operator restarts during the benchmark: %d", restarts)
	if restarts == 0 && !t.Failed() {
		return
	}
	for _, l := range containerLogs("keda_keda-operator-*", "keda-operator") {
		data, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		dst := filepath.Join(out, "keda-operator-"+strings.TrimPrefix(filepath.Base(filepath.Dir(l)), "keda_")+".log")
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Logf("keeping %s: %v", l, err)
			continue
		}
		var why []string
		for _, line := range strings.Split(string(data), "\n") {
			// The local operator logs with --zap-encoder=console
			// ("<time>\tERROR\t..."); klog lines start E/F<mmdd>.
			if strings.Contains(line, "\tERROR\t") || strings.Contains(line, "\tDPANIC\t") || strings.Contains(line, "\tFATAL\t") ||
				strings.Contains(line, "leader election lost") || strings.HasPrefix(line, "E1") || strings.HasPrefix(line, "F1") {
				why = append(why, line)
			}
		}
		if len(why) > 20 {
			why = why[len(why)-20:]
		}
		t.Logf("KEDA operator log kept in %s; its error lines:\n%s", dst, strings.Join(why, "\n"))
	}
}
