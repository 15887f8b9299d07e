package promql

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/internal/testenv"
)

// prometheusBin is the real Prometheus server (Debian's package, which
// `make test` installs through deps-prometheus).
func prometheusBin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/prometheus"); err == nil {
		return "/usr/bin/prometheus"
	}
	testenv.RequireOrSkip(t, "the prometheus binary is not installed (make deps-prometheus, or apt-get install prometheus)")
	return ""
}

// endpoint is a loopback metrics endpoint whose request counter grows at a
// steady rate, every request 4 rows taking 3 ms.
type endpoint struct {
	url string
}

func startEndpoint(t testing.TB, ctx context.Context, rps float64) endpoint {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mlscale_requests_total", Help: "h"}, []string{"code"})
	batch := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mlscale_batch_size", Help: "h", Buckets: []float64{1, 2, 4, 8}})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mlscale_request_duration_seconds", Help: "h", Buckets: []float64{.001, .005, .01}})
	reg.MustRegister(requests, batch, latency)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	go func() {
		start := time.Now()
		done := 0
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			due := int(time.Since(start).Seconds() * rps)
			for ; done < due; done++ {
				requests.WithLabelValues("200").Inc()
				batch.Observe(4)
				latency.Observe(0.003)
			}
		}
	}()
	return endpoint{url: srv.URL}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startPrometheus runs the real Prometheus binary scraping targets (pod
// name → URL) in namespace models every interval, and returns its URL.
func startPrometheus(t testing.TB, ctx context.Context, interval time.Duration, targets map[string]string) string {
	t.Helper()
	bin := prometheusBin(t)
	dir := t.TempDir()
	var b strings.Builder
	fmt.Fprintf(&b, "global: {scrape_interval: %s, evaluation_interval: %s}\nscrape_configs:\n- job_name: pods\n  static_configs:\n", interval, interval)
	for pod, u := range targets {
		fmt.Fprintf(&b, "  - targets: [%q]\n    labels: {namespace: models, pod: %q}\n", strings.TrimPrefix(u, "http://"), pod)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.CommandContext(ctx, bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cmd.Process.Kill() //nolint:errcheck // it may have exited
			cmd.Wait()         //nolint:errcheck // killed
		})
	})
	u := "http://" + addr
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		resp, err := http.Get(u + "/-/ready")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		t.Fatalf("prometheus not ready: %v\n%s", err, logs.String())
	}
	return u
}

func readyPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: name, Labels: map[string]string{"app": "iris"}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func TestSourceAgainstPrometheus(t *testing.T) {
	testenv.SkipIfShort(t, "runs the Prometheus binary for ~10 s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := startEndpoint(t, ctx, 20), startEndpoint(t, ctx, 10)
	promURL := startPrometheus(t, ctx, time.Second, map[string]string{"iris-a": a.url, "iris-b": b.url})
	// The in-process collector scrapes the same pods, to hold the PromQL
	// formulas to collector/compute.go's.
	col := startCollector(t, ctx, map[string]string{"iris-a": a.url, "iris-b": b.url})

	notReady := readyPod("iris-c")
	notReady.Status.Conditions[0].Status = corev1.ConditionFalse
	client := fake.NewClientset(readyPod("iris-a"), readyPod("iris-b"), notReady)
	factory := informers.NewSharedInformerFactory(client, 0)
	lister := factory.Core().V1().Pods().Lister()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	pc, err := promapi.NewClient(promapi.Config{Address: promURL})
	if err != nil {
		t.Fatal(err)
	}
	opts := NewOptions()
	opts.Window = 5 * time.Second
	src, err := New(pc, collector.DefaultRules(), lister, opts)
	if err != nil {
		t.Fatal(err)
	}
	sel := labels.SelectorFromSet(labels.Set{"app": "iris"})
	// Wait until Prometheus holds a full window of scrapes of both pods (its
	// first scrape comes a few seconds after it reports ready).
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		v, _, _, err := src.api.Query(ctx, `count(count_over_time(mlscale_requests_total[5s]) >= 5) == 2`, time.Now())
		vec, ok := v.(model.Vector)
		return err == nil && ok && len(vec) == 1, nil
	}); err != nil {
		t.Fatalf("prometheus never had a window of samples: %v", err)
	}

	vals, err := src.PodValues(ctx, "requests_per_second", "models", sel)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"iris-a": 20, "iris-b": 10}
	if len(vals) != 2 {
		t.Fatalf("values %+v, want two pods", vals)
	}
	for _, v := range vals {
		if math.Abs(v.Value-want[v.Pod])/want[v.Pod] > 0.15 {
			t.Errorf("%s requests_per_second = %.2f, want %.0f ±15%%", v.Pod, v.Value, want[v.Pod])
		}
	}
	agg, err := src.AggregateValue(ctx, "requests_per_second", "models", sel)
	if err != nil || math.Abs(agg.Value-30)/30 > 0.15 {
		t.Errorf("aggregate requests_per_second = %+v, %v; want 30 ±15%%", agg, err)
	}
	mean, err := src.AggregateValue(ctx, "batch_size", "models", sel)
	if err != nil || math.Abs(mean.Value-4) > 1e-9 {
		t.Errorf("batch_size = %+v, %v; want exactly 4", mean, err)
	}
	p99, err := src.PodValues(ctx, "request_duration_p99_seconds", "models", sel)
	if err != nil || len(p99) != 2 || p99[0].Value <= 0.001 || p99[0].Value > 0.005 {
		t.Errorf("p99 = %+v, %v; want within the (1 ms, 5 ms] bucket", p99, err)
	}

	for name, tc := range map[string]struct {
		metric string
		sel    labels.Selector
		want   error
	}{
		"unknown metric": {"nope", sel, collector.ErrUnknownMetric},
		"no pods":        {"requests_per_second", labels.SelectorFromSet(labels.Set{"app": "none"}), collector.ErrNoData},
		"series missing": {"inflight_requests", sel, collector.ErrNoData},
	} {
		if _, err := src.PodValues(ctx, tc.metric, "models", tc.sel); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}

	t.Run("agrees with the collector", func(t *testing.T) {
		agreesWithCollector(t, ctx, pc, lister, opts, col, sel)
	})

	// Prometheus gone: an error that is not "no data".
	down, _ := promapi.NewClient(promapi.Config{Address: fmt.Sprintf("http://127.0.0.1:%d", freePort(t))})
	dsrc, _ := New(down, collector.DefaultRules(), lister, opts)
	if _, err := dsrc.PodValues(ctx, "requests_per_second", "models", sel); err == nil || errors.Is(err, collector.ErrNoData) {
		t.Errorf("prometheus down: err = %v, want a query error", err)
	}
}

func TestQuery(t *testing.T) {
	src := &Source{opts: NewOptions()}
	pods := []string{"iris-a", "iris.b"}
	for _, tc := range []struct {
		rule   collector.Rule
		perPod bool
		want   string
	}{
		{collector.Rule{Series: "x_total", Compute: collector.ComputeRate, Aggregate: collector.AggSum}, true,
			`sum by (namespace, pod) (rate(x_total{namespace="ns",pod=~"iris-a|iris\\.b"}[1m]))`},
		{collector.Rule{Series: "x_total", Compute: collector.ComputeRate, Aggregate: collector.AggSum, Labels: map[string]string{"code": "500"}}, false,
			`sum(rate(x_total{code="500",namespace="ns",pod=~"iris-a|iris\\.b"}[1m]))`},
		{collector.Rule{Series: "h", Compute: collector.ComputeMean, Aggregate: collector.AggPooled}, false,
			`sum(rate(h_sum{namespace="ns",pod=~"iris-a|iris\\.b"}[1m])) / sum(rate(h_count{namespace="ns",pod=~"iris-a|iris\\.b"}[1m]))`},
		{collector.Rule{Series: "h", Compute: collector.ComputeQuantile, Quantile: 0.99, Aggregate: collector.AggMax}, false,
			`max(histogram_quantile(0.99, sum by (namespace, pod, le) (rate(h_bucket{namespace="ns",pod=~"iris-a|iris\\.b"}[1m]))))`},
		{collector.Rule{Series: "g", Compute: collector.ComputeLast, Aggregate: collector.AggMean}, false,
			`avg(sum by (namespace, pod) (g{namespace="ns",pod=~"iris-a|iris\\.b"}))`},
	} {
		if got := src.Query(tc.rule, "ns", pods, tc.perPod); got != tc.want {
			t.Errorf("Query =\n  %s\nwant\n  %s", got, tc.want)
		}
	}
}

// aggregationVariants is every default rule under every aggregation of the
// vocabulary its computation allows, named <rule>.<aggregation>.
func aggregationVariants() []collector.Rule {
	var out []collector.Rule
	for _, r := range collector.DefaultRules() {
		for _, agg := range collector.Aggregations {
			if agg == collector.AggPooled && r.Compute != collector.ComputeMean && r.Compute != collector.ComputeQuantile {
				continue
			}
			v := r
			v.Name, v.Aggregate = r.Name+"."+string(agg), agg
			out = append(out, v)
		}
	}
	return out
}

// startCollector runs the scraping collector over targets (pod name → URL)
// in namespace models, serving aggregationVariants.
func startCollector(t testing.TB, ctx context.Context, targets map[string]string) *collector.Collector {
	t.Helper()
	col, err := collector.New(collector.NewOptions(), aggregationVariants(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for pod, u := range targets {
		col.Upsert(collector.Target{Namespace: "models", Name: pod, Labels: labels.Set{"app": "iris"}, URL: u + "/metrics", ReadySince: time.Now().Add(-time.Hour)})
	}
	go col.Run(ctx)
	return col
}

// agreesWithCollector holds the PromQL source to the in-process collector
// over the same pods: per pod and per workload, for every rule under every
// aggregation (Rule.PromQL against compute.go), the same value (within the
// two windows' difference) or the same "no data".
func agreesWithCollector(t *testing.T, ctx context.Context, pc promapi.Client, lister corelisters.PodLister, opts Options, col *collector.Collector, sel labels.Selector) {
	src, err := New(pc, aggregationVariants(), lister, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return col.Ready() == nil, nil
	}); err != nil {
		t.Fatalf("collector not ready: %v", col.Ready())
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 0.15*math.Max(math.Abs(a), math.Abs(b)) }
	for _, r := range aggregationVariants() {
		pv, perr := src.AggregateValue(ctx, r.Name, "models", sel)
		cv, cerr := col.AggregateValue(ctx, r.Name, "models", sel)
		switch {
		case errors.Is(cerr, collector.ErrNoData) && errors.Is(perr, collector.ErrNoData):
		case cerr != nil || perr != nil:
			t.Errorf("%s: collector %v, prometheus %v; want both values or both no data", r.Name, cerr, perr)
		case !close(cv.Value, pv.Value):
			t.Errorf("%s: collector %.4g, prometheus %.4g; want within 15%%", r.Name, cv.Value, pv.Value)
		}
	}
	for _, r := range collector.DefaultRules() {
		pvs, perr := src.PodValues(ctx, r.Name+"."+string(collector.AggSum), "models", sel)
		cvs, cerr := col.PodValues(ctx, r.Name+"."+string(collector.AggSum), "models", sel)
		if errors.Is(cerr, collector.ErrNoData) && errors.Is(perr, collector.ErrNoData) {
			continue
		}
		if cerr != nil || perr != nil || len(cvs) != len(pvs) {
			t.Errorf("%s per pod: collector %+v, %v; prometheus %+v, %v", r.Name, cvs, cerr, pvs, perr)
			continue
		}
		for i := range cvs {
			if cvs[i].Pod != pvs[i].Pod || !close(cvs[i].Value, pvs[i].Value) {
				t.Errorf("%s per pod: collector %s=%.4g, prometheus %s=%.4g", r.Name, cvs[i].Pod, cvs[i].Value, pvs[i].Pod, pvs[i].Value)
			}
		}
	}
}
