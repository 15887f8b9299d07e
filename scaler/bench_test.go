package scaler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/labels"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
)

const benchScaledObjects = 100

// benchCollector is the real collector holding 100 workloads of 2 pods each,
// scraped from loopback endpoints until every pod has a rate, with windows
// long enough to stay fresh for the whole benchmark.
func benchCollector(b *testing.B) *collector.Collector {
	b.Helper()
	mux := http.NewServeMux()
	opts := collector.NewOptions()
	opts.Interval, opts.ScrapeTimeout, opts.Window, opts.StaleAfter, opts.WarmUp = time.Second, time.Second, time.Hour, time.Hour, 0
	coll, err := collector.New(opts, collector.DefaultRules(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(mux)
	b.Cleanup(srv.Close)
	var counters []prometheus.Counter
	for w := range benchScaledObjects {
		for p := range 2 {
			reg := prometheus.NewRegistry()
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: "mlscale_requests_total", Help: "h"})
			reg.MustRegister(c)
			counters = append(counters, c)
			path := fmt.Sprintf("/w%d/p%d", w, p)
			mux.Handle(path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
			coll.Upsert(collector.Target{
				Namespace: "model", Name: fmt.Sprintf("w%d-p%d", w, p),
				Labels: labels.Set{"app": "w" + strconv.Itoa(w)},
				URL:    srv.URL + path, ReadySince: time.Now().Add(-time.Hour),
			})
		}
	}
	ctx := context.Background()
	// Scrape until every workload has a rate (two good samples per pod);
	// a loaded machine may fail a few scrapes.
	for i := range 20 {
		for _, c := range counters {
			c.Add(float64(i + 1))
		}
		coll.ScrapeOnce(ctx)
		time.Sleep(100 * time.Millisecond)
		missing := 0
		for w := range benchScaledObjects {
			if _, err := coll.AggregateValue(ctx, "requests_per_second", "model", labels.SelectorFromSet(labels.Set{"app": "w" + strconv.Itoa(w)})); err != nil {
				missing++
			}
		}
		if missing == 0 && i >= 1 {
			return coll
		}
	}
	b.Fatal("some workloads have no rate after 20 scrapes")
	return nil
}

// burst100 runs b.N rounds; in each, all benchScaledObjects ScaledObjects
// call at the same instant (KEDA's polling loops aligned: the worst case for
// latency) and the round ends when every call has returned. It reports the
// latency percentiles of all calls.
func burst100(b *testing.B, call func(i int) error) {
	hist := hdrhistogram.New(1, int64(10*time.Second), 3)
	lat := make([]int64, benchScaledObjects)
	errs := make([]error, benchScaledObjects)
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for range b.N {
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for g := range benchScaledObjects {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				t := time.Now()
				errs[g] = call(g)
				lat[g] = int64(time.Since(t))
			}()
		}
		close(gate)
		wg.Wait()
		for g := range benchScaledObjects {
			if errs[g] != nil {
				b.Fatalf("ScaledObject %d: %v", g, errs[g])
			}
			_ = hist.RecordValue(lat[g])
		}
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	ms := func(q float64) float64 { return float64(hist.ValueAtQuantile(q)) / 1e6 }
	// CPU per call (client and server together, this process) does not
	// depend on how busy the machine is; the latencies do.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*benchScaledObjects), "cpu-µs/call")
	b.ReportMetric(ms(50), "p50-ms")
	b.ReportMetric(ms(99), "p99-ms")
	b.ReportMetric(float64(hist.Max())/1e6, "max-ms")
	b.ReportMetric(float64(b.N*benchScaledObjects)/elapsed.Seconds(), "calls/s")
}

// BenchmarkGetMetrics: 100 ScaledObjects calling GetMetrics at once over one
// connection (KEDA pools one per scaler address), against the real collector.
// Baselines in the same run: the collector read alone, and the scaler's
// handler called in-process (no gRPC), so the gRPC share is visible.
func BenchmarkGetMetrics(b *testing.B) {
	coll := benchCollector(b)
	resolver := staticResolver{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	reqs := make([]*pb.GetMetricsRequest, benchScaledObjects)
	sels := make([]labels.Selector, benchScaledObjects)
	for i := range reqs {
		reqs[i] = &pb.GetMetricsRequest{MetricName: "requests_per_second", ScaledObjectRef: &pb.ScaledObjectRef{
			Name: fmt.Sprintf("so-%d", i), Namespace: "model", ScalerMetadata: map[string]string{
				"scalerAddress": "mlscale-scaler.mlscale.svc:6000", "deploymentName": fmt.Sprintf("w%d", i),
				"metricName": "requests_per_second", "targetValue": "4", "activationValue": "0.5",
			}}}
		sels[i] = labels.SelectorFromSet(labels.Set{"app": "w" + strconv.Itoa(i)})
	}
	ctx := context.Background()

	b.Run("baseline=collector-read", func(b *testing.B) {
		burst100(b, func(i int) error {
			_, err := coll.AggregateValue(ctx, "requests_per_second", "model", sels[i])
			return err
		})
	})
	b.Run("baseline=handler-in-process", func(b *testing.B) {
		s := New(coll, resolver, Config{Logger: quiet})
		burst100(b, func(i int) error {
			_, err := s.GetMetrics(ctx, reqs[i])
			return err
		})
	})
	b.Run("grpc-loopback", func(b *testing.B) {
		s := New(coll, resolver, Config{Logger: quiet})
		ts := serveServer(b, s)
		c := pb.NewExternalScalerClient(dial(b, ts.addr, nil))
		burst100(b, func(i int) error {
			_, err := c.GetMetrics(ctx, reqs[i])
			return err
		})
	})
}

// staticResolver maps Deployment wN to app=wN, as the informer-backed
// resolver does from its cache.
type staticResolver struct{}

func (staticResolver) SelectorFor(_ context.Context, _, _, name string) (labels.Selector, error) {
	return labels.SelectorFromSet(labels.Set{"app": name}), nil
}

// BenchmarkStreamIsActivePush: the time from the collector's value crossing
// activationValue to the client receiving the change, at the default poll
// interval. The unary IsActive round trip is the same-run baseline (what a
// push costs beyond noticing the change); PollInterval bounds the wait.
func BenchmarkStreamIsActivePush(b *testing.B) {
	src := world()
	cfg := NewConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Pods = src
	s := New(src, src, cfg)
	ts := serveServer(b, s)
	c := pb.NewExternalScalerClient(dial(b, ts.addr, nil))
	r := ref(md("deploymentName=iris", "metricName=inflight_requests", "targetValue=4", "activationValue=3"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	unary := hdrhistogram.New(1, int64(10*time.Second), 3)
	for range 200 {
		t := time.Now()
		if _, err := c.IsActive(ctx, r); err != nil {
			b.Fatal(err)
		}
		_ = unary.RecordValue(int64(time.Since(t)))
	}

	stream, err := c.StreamIsActive(ctx, r)
	if err != nil {
		b.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		b.Fatal(err)
	}
	state := first.Result
	push := hdrhistogram.New(1, int64(10*time.Second), 3)
	b.ResetTimer()
	for range b.N {
		// Cross the activation value (3) the other way: 2 -> 3.5 or back.
		v := 0.0
		if !state {
			v = 1.5
		}
		// Land the change at a random phase of the poll, as a scrape would.
		time.Sleep(time.Duration(time.Now().UnixNano()%int64(cfg.PollInterval/time.Millisecond)) * time.Millisecond)
		src.set("model", "iris-b", "inflight_requests", v)
		t := time.Now()
		m, err := stream.Recv()
		if err != nil {
			b.Fatal(err)
		}
		_ = push.RecordValue(int64(time.Since(t)))
		if m.Result == state {
			b.Fatalf("pushed %v again", m.Result)
		}
		state = m.Result
	}
	b.StopTimer()
	ms := func(h *hdrhistogram.Histogram, q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1e6 }
	b.ReportMetric(ms(push, 50), "push-p50-ms")
	b.ReportMetric(ms(push, 99), "push-p99-ms")
	b.ReportMetric(float64(push.Max())/1e6, "push-max-ms")
	b.ReportMetric(ms(unary, 50), "unary-IsActive-p50-ms")
	b.ReportMetric(float64(cfg.PollInterval)/1e6, "poll-interval-ms")
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
