package adapter

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/collector/promql"
	"github.com/mlscale/mlscale/loadgen"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/scenario"
	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

var rpsInfo = provider.CustomMetricInfo{GroupResource: PodsResource, Namespaced: true, Metric: "requests_per_second"}

func percentile(d []time.Duration, p float64) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(math.Ceil(p*float64(len(d))))-1]
}

// BenchmarkGetMetricBySelector1000 answers the HPA's question for 1,000
// pods (the provider call behind GET .../pods/*/requests_per_second) while
// the collector keeps scraping them, and reports p50/p99 against the 20 ms
// goal, with the collector's PodValues alone as the baseline in the same run.
func BenchmarkGetMetricBySelector1000(b *testing.B) {
	const n = 1000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var count atomicCounter
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# TYPE mlscale_requests_total counter\nmlscale_requests_total{code=\"200\"} %d\n", count.add(7))
	})
	col, err := collector.New(collector.NewOptions(), collector.DefaultRules(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		srv := httptest.NewServer(h)
		b.Cleanup(srv.Close)
		col.Upsert(collector.Target{Namespace: "models", Name: "iris-" + strconv.Itoa(i), Labels: labels.Set{"app": "iris"}, URL: srv.URL, ReadySince: time.Now().Add(-time.Hour)})
	}
	go col.Run(ctx)
	p := NewProvider(col, nil, prometheus.NewRegistry())
	sel := labels.SelectorFromSet(labels.Set{"app": "iris"})
	var got int
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := p.GetMetricBySelector(ctx, "models", sel, rpsInfo, labels.Everything())
		if err == nil {
			got = len(l.Items)
		}
		return got >= n*95/100, nil
	}); err != nil {
		b.Fatalf("only %d of %d pods had values", got, n)
	}
	lat := make([]time.Duration, 0, b.N)
	base := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		l, err := p.GetMetricBySelector(ctx, "models", sel, rpsInfo, labels.Everything())
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		got = len(l.Items)
		t1 := time.Now()
		if _, err := col.PodValues(ctx, "requests_per_second", "models", sel); err != nil {
			b.Fatal(err)
		}
		base = append(base, time.Since(t1))
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(base, 0.99)), "podvalues-p99-ms")
	b.ReportMetric(float64(got), "pods")
}

type atomicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *atomicCounter) add(d int) int { c.mu.Lock(); defer c.mu.Unlock(); c.n += d; return c.n }

// servedSeries polls read every 100 ms until ctx ends.
type point struct {
	t time.Time
	v float64
}

func poll(ctx context.Context, read func() (float64, error)) chan []point {
	out := make(chan []point, 1)
	go func() {
		var pts []point
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, err := read(); err == nil {
				pts = append(pts, point{time.Now(), v})
			}
			select {
			case <-ctx.Done():
				out <- pts
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// settled is how long after step the served value came within 10% of want
// and stayed there until end; -1 if it never did.
func settled(pts []point, step, end time.Time, want float64) float64 {
	var since time.Time
	for _, p := range pts {
		if p.t.Before(step) || p.t.After(end) {
			continue
		}
		if math.Abs(p.v-want)/want <= 0.10 {
			if since.IsZero() {
				since = p.t
			}
		} else {
			since = time.Time{}
		}
	}
	if since.IsZero() {
		return -1
	}
	return since.Sub(step).Seconds()
}

// BenchmarkFreshness steps the load on a real model server from 20 to 100
// requests/s (the load client, open loop) and reports how many seconds the
// served requests_per_second takes to come within 10% of the new rate: the
// collector with its defaults, and in the same run, when MLSCALE_BENCH_PROMETHEUS
// is set, the path prometheus-adapter takes: the Prometheus binary scraping
// every 15 s and a 1 m rate() (four scrapes), queried by the PromQL source.
func BenchmarkFreshness(b *testing.B) {
	withProm := os.Getenv("MLSCALE_BENCH_PROMETHEUS") != ""
	if _, err := os.Stat("/usr/bin/prometheus"); err != nil {
		withProm = false
	}
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		model, err := xgboost.Load("../modelserver/xgboost/testdata/iris.json")
		if err != nil {
			b.Fatal(err)
		}
		podObj, url := benchModelPod(b, model)
		client := fake.NewClientset(podObj)
		col, err := collector.New(collector.NewOptions(), collector.DefaultRules(), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		disc, err := collector.NewDiscovery(client, collector.DiscoveryConfig{Selector: "app=iris"}, col)
		if err != nil {
			b.Fatal(err)
		}
		disc.Start(ctx)
		go col.Run(ctx)
		sel := labels.SelectorFromSet(labels.Set{"app": "iris"})
		p := NewProvider(col, nil, prometheus.NewRegistry())
		read := func(p *Provider) func() (float64, error) {
			return func() (float64, error) {
				l, err := p.GetMetricBySelector(ctx, "models", sel, rpsInfo, labels.Everything())
				if err != nil {
					return 0, err
				}
				return l.Items[0].Value.AsApproximateFloat64(), nil
			}
		}
		before, after := 10*time.Second, 12*time.Second
		var promPts chan []point
		pollCtx, stopPoll := context.WithCancel(ctx)
		if withProm {
			before, after = 90*time.Second, 100*time.Second
			promURL := startPrometheusForBench(b, ctx, 15*time.Second, url)
			factory := informers.NewSharedInformerFactory(client, 0)
			lister := factory.Core().V1().Pods().Lister()
			factory.Start(ctx.Done())
			factory.WaitForCacheSync(ctx.Done())
			pc, _ := promapi.NewClient(promapi.Config{Address: promURL})
			src, err := promql.New(pc, collector.DefaultRules(), lister, promql.NewOptions())
			if err != nil {
				b.Fatal(err)
			}
			promPts = poll(pollCtx, read(NewProvider(src, nil, prometheus.NewRegistry())))
		}
		colPts := poll(pollCtx, read(p))
		sc, err := scenario.Parse([]byte(fmt.Sprintf("tasks: [{name: low, data_size: 10, rate: 20, duration: %s}, {name: high, data_size: 10, rate: 100, duration: %s}]", before, after)))
		if err != nil {
			b.Fatal(err)
		}
		endpoint, _ := request.DirectEndpoint(url, request.Seldon, "")
		sum, err := loadgen.Run(ctx, loadgen.Config{Scenario: sc, URL: endpoint, Protocol: request.Seldon, OutDir: b.TempDir(), ChartWidth: -1})
		stopPoll()
		if err != nil {
			b.Fatal(err)
		}
		high := sum.Tasks[1]
		cs := settled(<-colPts, high.Start, high.End, high.ReqPerSec)
		b.ReportMetric(cs, "collector-s")
		b.ReportMetric(high.ReqPerSec, "new-rps")
		if promPts != nil {
			b.ReportMetric(settled(<-promPts, high.Start, high.End, high.ReqPerSec), "prometheus-15s-1m-s")
		}
		cancel()
	}
}

func benchModelPod(b *testing.B, model *xgboost.Model) (*corev1.Pod, string) {
	srv := httptest.NewUnstartedServer(nil)
	ms, err := modelserver.New(modelserver.Options{Predictor: model, ModelName: "iris"})
	if err != nil {
		b.Fatal(err)
	}
	srv.Config.Handler = ms.Handler()
	srv.Start()
	b.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris-0", Labels: map[string]string{"app": "iris"},
			Annotations: map[string]string{collector.AnnotationPort: strconv.Itoa(port)}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(time.Now().Add(-time.Hour))}}},
	}, srv.URL
}

func startPrometheusForBench(b *testing.B, ctx context.Context, interval time.Duration, target string) string {
	dir := b.TempDir()
	cfg := fmt.Sprintf("global: {scrape_interval: %s}\nscrape_configs:\n- job_name: pods\n  static_configs:\n  - targets: [%q]\n    labels: {namespace: models, pod: iris-0}\n", interval, strings.TrimPrefix(target, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "p.yml"), []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.CommandContext(ctx, "/usr/bin/prometheus", "--config.file="+filepath.Join(dir, "p.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck // teardown
	return "http://" + addr
}
