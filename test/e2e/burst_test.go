//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/activator/api"
)

// burstAnnotation opts the `local` overlay's HPA into burst, and lets its
// scale-up policy take 1 -> 6 in one period (the overlay's allows 1 -> 5).
const burstPatch = `{"metadata":{"annotations":{"mlscale.io/burst":"threshold=200%,hold=1s"}},
 "spec":{"behavior":{"scaleUp":{"stabilizationWindowSeconds":0,"selectPolicy":"Max","policies":[{"type":"Pods","value":10,"periodSeconds":15}]}}}}`

// TestBurst is issue 17's proof on the real HPA controller: a 1 -> 24
// requests/s step on a workload whose HPA is annotated mlscale.io/burst. The
// replicas rise before the HPA's first sync after the step (seen as its
// metric query reaching the adapter), the HPA keeps the burst's count for the
// rest of the step (no scale-down, no further scale-up: it computes the same
// number), the HPA's last scale time is not before the burst, and no request
// fails.
func TestBurst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deployOverlay(t, ctx, "local")
	if _, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, []byte(burstPatch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, 2*time.Minute)
	waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
	waitEndpoints(t, ctx, "model", "iris-model-autoscale", 1)

	const path = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
	load := &openLoop{}
	load.rate.Store(1)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer func() { stopLoad(); load.wg.Wait() }()
	load.run(loadCtx, onePrediction(path))
	waitScalingActive(t, ctx, "iris-model-autoscale", 5*time.Minute)

	syncs := watchHPASyncs(t, ctx)
	edge := watchActivatorDemand(t, ctx, "model", "iris-model-autoscale")
	step := syncs.stepAfterSync(t, ctx, 2*time.Second)
	load.rate.Store(24)
	res := watchStep(t, ctx, step, 75*time.Second)
	logBurstTimeline(t, step, edge, res, 8) // 200% of one pod's 4/s

	firstSync, ok := syncs.after(step)
	if !ok {
		t.Fatalf("no HPA sync seen in the 75 s after the step (syncs at %v)", syncs.since(step))
	}
	t.Logf("step at %s; replicas rose at +%.2f s (to %d), the HPA's first sync after the step at +%.2f s; burst counts %v; replicas at the end %d",
		step.Format("15:04:05.000"), res.riseS, res.firstRise, firstSync.Sub(step).Seconds(), res.counts, res.final)
	if res.riseS < 0 {
		t.Fatalf("the replicas never rose in 75 s at 24/s")
	}
	if rise := step.Add(time.Duration(res.riseS * float64(time.Second))); !rise.Before(firstSync) {
		t.Fatalf("the replicas rose at +%.2f s, not before the HPA's first sync after the step (+%.2f s): the burst did not act first",
			res.riseS, firstSync.Sub(step).Seconds())
	}

	// The bursts say why, with the numbers.
	evs, err := env.client.CoreV1().Events("model").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=iris-model-autoscale,reason=Burst"})
	if err != nil {
		t.Fatal(err)
	}
	var burstTo int32
	for _, e := range evs.Items {
		t.Logf("Event %s x%d: %s", e.Reason, e.Count, e.Message)
		var from, to int32
		if i := strings.LastIndex(e.Message, ": "); i >= 0 {
			if _, err := fmt.Sscanf(e.Message[i+2:], "%d -> %d", &from, &to); err == nil && to > burstTo {
				burstTo = to
			}
		}
	}
	if burstTo == 0 {
		t.Fatalf("no Burst event on the HPA with a from -> to count (%d events)", len(evs.Items))
	}

	// The HPA agrees: it keeps the burst's count for the rest of the step,
	// and if it scaled at all since the step, that was after the burst.
	if res.minAfterRise < burstTo && res.minAfterRise < res.firstRise {
		t.Errorf("the replicas dropped to %d after the burst (to %d): the HPA undid it", res.minAfterRise, burstTo)
	}
	if res.final != burstTo {
		t.Errorf("%d replicas at the end of the step, the burst chose %d: the HPA did not keep the count", res.final, burstTo)
	}
	h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Status.DesiredReplicas != burstTo {
		t.Errorf("the HPA desires %d replicas, the burst chose %d", h.Status.DesiredReplicas, burstTo)
	}
	if ls := h.Status.LastScaleTime; ls != nil && ls.After(step) && ls.Time.Before(step.Add(time.Duration(res.riseS*float64(time.Second))).Truncate(time.Second)) {
		t.Errorf("the HPA scaled at %s, before the burst at +%.2f s", ls.Format("15:04:05"), res.riseS)
	}
	stopLoad()
	load.wg.Wait()
	t.Logf("%d requests, %d failed", load.sent.Load(), load.failed.Load())
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed; first: %v", n, load.sent.Load(), load.firstErr.Load())
	}
}

// stepResult is what watchStep saw of the Deployment's replicas.
type stepResult struct {
	riseS        float64 // seconds from the step to spec.replicas first above where it was; -1 none
	readyS       float64 // seconds from the step to that many replicas Ready; -1 none
	firstRise    int32   // the count of that first rise
	minAfterRise int32   // the lowest count after it
	final        int32
	counts       []int32 // every distinct count in order
}

func watchStep(t *testing.T, ctx context.Context, step time.Time, window time.Duration) stepResult {
	t.Helper()
	res := stepResult{riseS: -1, readyS: -1}
	start := int32(-1)
	for time.Since(step) < window && ctx.Err() == nil {
		d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil {
			r := *d.Spec.Replicas
			if start < 0 {
				start = r
			}
			if len(res.counts) == 0 || res.counts[len(res.counts)-1] != r {
				res.counts = append(res.counts, r)
			}
			if res.riseS < 0 && r > start {
				res.riseS, res.firstRise, res.minAfterRise = time.Since(step).Seconds(), r, r
			}
			if res.riseS >= 0 && res.readyS < 0 && d.Status.ReadyReplicas >= res.firstRise {
				res.readyS = time.Since(step).Seconds()
			}
			if res.riseS >= 0 && r < res.minAfterRise {
				res.minAfterRise = r
			}
			res.final = r
		}
		time.Sleep(200 * time.Millisecond)
	}
	return res
}

// demandSeen is one activator demand snapshot for a Service as the test
// received it.
type demandSeen struct {
	taken, received  time.Time
	arrivals, recent float64
}

// edgeDemand follows every activator replica's demand stream (api.Path on
// its admin port) for one Service, as the adapter's watcher does.
type edgeDemand struct {
	mu    sync.Mutex
	snaps []demandSeen
}

func watchActivatorDemand(t *testing.T, ctx context.Context, namespace, service string) *edgeDemand {
	t.Helper()
	e := &edgeDemand{}
	pods, err := readyPods(ctx, "mlscale", "app.kubernetes.io/name=activator")
	if err != nil || len(pods) == 0 {
		t.Fatalf("no ready activator to follow (%v)", err)
	}
	for _, p := range pods {
		url := "http://" + net.JoinHostPort(p.Status.PodIP, "8081") + api.Path
		go func() {
			_ = api.Watch(ctx, http.DefaultClient, url, func(s api.Snapshot) {
				now := time.Now()
				for _, d := range s.Services {
					if d.Namespace == namespace && d.Service == service {
						e.mu.Lock()
						e.snaps = append(e.snaps, demandSeen{taken: s.Time, received: now, arrivals: d.ArrivalsPerSecond, recent: d.RecentArrivalsPerSecond})
						e.mu.Unlock()
					}
				}
			})
		}()
	}
	return e
}

// first is the first snapshot taken after t0 whose demand (the higher of
// the two windows) is at least v.
func (e *edgeDemand) first(t0 time.Time, v float64) (demandSeen, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.snaps {
		if s.taken.After(t0) && max(s.arrivals, s.recent) >= v {
			return s, true
		}
	}
	return demandSeen{}, false
}

// logBurstTimeline logs where the time from the step to the burst went:
// the step's requests reaching the activator, its demand crossing
// threshold (taken, and received here: the adapter's watcher receives it
// the same way), the burst controller first seeing the threshold and
// writing /scale (the adapter's log), the replicas rising (polled) and
// Ready.
func logBurstTimeline(t *testing.T, step time.Time, e *edgeDemand, res stepResult, threshold float64) {
	t.Helper()
	at := func(x time.Time, ok bool) string {
		if !ok {
			return "not seen"
		}
		return fmt.Sprintf("%+.2f s", x.Sub(step).Seconds())
	}
	secs := func(s float64) string {
		if s < 0 {
			return "not seen"
		}
		return fmt.Sprintf("%+.2f s", s)
	}
	arrived, ok1 := e.first(step, 1.5)
	crossed, ok2 := e.first(step, threshold)
	held, ok3 := adapterLogTime(step, "Burst threshold reached")
	burst, ok4 := adapterLogTime(step, `"Burst"`)
	t.Logf("timeline after the step: activator arrivals above 1.5/s (snapshot taken) %s; at %.0f/s taken %s, received %s; "+
		"controller at threshold %s; /scale written %s; replicas rose (seen) %s; Ready %s",
		at(arrived.taken, ok1), threshold, at(crossed.taken, ok2), at(crossed.received, ok2), at(held, ok3), at(burst, ok4), secs(res.riseS), secs(res.readyS))
}

// adapterLogTime is the klog time of the first line containing what after
// t0 in the adapter's container logs (the node agent keeps them under
// node/pods/).
func adapterLogTime(t0 time.Time, what string) (time.Time, bool) {
	dirs, _ := filepath.Glob(filepath.Join(env.state, "node", "pods", "mlscale_mlscale-adapter-*", "*.log"))
	var best time.Time
	for _, f := range dirs {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, what) || len(line) < 21 {
				continue
			}
			// klog: "I1130 10:40:01.123456 ..." (no year; the pod's local time).
			ts, err := time.ParseInLocation("0102 15:04:05.000000", line[1:21], time.Local)
			if err != nil {
				continue
			}
			ts = ts.AddDate(t0.Year(), 0, 0)
			if ts.After(t0) && (best.IsZero() || ts.Before(best)) {
				best = ts
			}
		}
	}
	return best, !best.IsZero()
}

// hpaSyncs records when the HPA controller syncs: each sync asks the
// adapter for the Pods metric once, which the adapter counts in
// mlscale_adapter_request_duration_seconds_count{call="by_selector"} (read
// from its /metrics with the cluster admin's client certificate every
// 200 ms).
type hpaSyncs struct {
	mu    sync.Mutex
	times []time.Time
}

func watchHPASyncs(t *testing.T, ctx context.Context) *hpaSyncs {
	t.Helper()
	pods := waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, time.Minute)
	cfg, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.Host = "https://" + net.JoinHostPort(pods[0].Status.PodIP, "6443")
	// The adapter's serving certificate is for its Service name; the
	// client certificate is what matters here.
	cfg.TLSClientConfig.Insecure, cfg.TLSClientConfig.CAData, cfg.TLSClientConfig.CAFile = true, nil, ""
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	read := func() (float64, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cfg.Host+"/metrics", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("adapter /metrics: %s: %.200s", resp.Status, data)
		}
		total := 0.0
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "mlscale_adapter_request_duration_seconds_count{") && strings.Contains(line, `call="by_selector"`) {
				var v float64
				fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
				total += v
			}
		}
		return total, nil
	}
	last, err := read()
	if err != nil {
		t.Fatalf("reading the adapter's request count: %v", err)
	}
	w := &hpaSyncs{}
	go func() {
		for ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			n, err := read()
			if err != nil || n == last {
				continue
			}
			last = n
			w.mu.Lock()
			w.times = append(w.times, time.Now())
			w.mu.Unlock()
		}
	}()
	return w
}

// stepAfterSync waits for two HPA syncs (the period and phase) and returns
// delay after the latest, the moment to start a step: the HPA's next sync is
// then about one period minus delay away.
func (w *hpaSyncs) stepAfterSync(t *testing.T, ctx context.Context, delay time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		w.mu.Lock()
		n := len(w.times)
		var lastSync time.Time
		if n > 0 {
			lastSync = w.times[n-1]
		}
		w.mu.Unlock()
		if n >= 2 && time.Since(lastSync) < delay {
			time.Sleep(time.Until(lastSync.Add(delay)))
			return time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("fewer than two HPA syncs seen at the adapter in 90 s: %v", w.since(time.Time{}))
	return time.Time{}
}

// after is the first sync after t0.
func (w *hpaSyncs) after(t0 time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.times {
		if s.After(t0) {
			return s, true
		}
	}
	return time.Time{}, false
}

func (w *hpaSyncs) since(t0 time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, s := range w.times {
		out = append(out, fmt.Sprintf("%+.1fs", s.Sub(t0).Seconds()))
	}
	return out
}

// lastBefore is the last sync before t0.
func (w *hpaSyncs) lastBefore(t0 time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var last time.Time
	for _, s := range w.times {
		if s.Before(t0) {
			last = s
		}
	}
	return last, !last.IsZero()
}
