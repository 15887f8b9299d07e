package collector

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/apimachinery/pkg/labels"
)

// loopbackTargets starts n small metric endpoints on loopback, each a real
// client_golang registry with the model server's series (plus the Go
// collector, as a real pod exposes).
func loopbackTargets(b *testing.B, n int) []Target {
	b.Helper()
	out := make([]Target, n)
	for i := 0; i < n; i++ {
		// The Go collector makes the exposition as long as a real model
		// server's (~40 families), which is what parsing costs.
		m := newFakeModel(b, collectors.NewGoCollector())
		m.requests.WithLabelValues("iris", "seldon", "200").Add(float64(100 * i))
		for j := 0; j < 20; j++ {
			m.batch.Observe(float64(j))
			m.latency.Observe(float64(j) / 1000)
		}
		out[i] = Target{Namespace: "models", Name: "iris-" + strconv.Itoa(i), Labels: labels.Set{"app": "iris"}, URL: m.srv.URL + "/metrics", ReadySince: time.Now().Add(-time.Hour)}
	}
	return out
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// BenchmarkScrapeCycle1000 times one scrape cycle over 1,000 loopback
// targets, against the 1 s interval it must fit in, and reports the heap the
// collector holds for their windows.
func BenchmarkScrapeCycle1000(b *testing.B) {
	for _, protocol := range []string{"protobuf", "text"} {
		b.Run("protocol="+protocol, func(b *testing.B) {
			targets := loopbackTargets(b, 1000)
			o := NewOptions()
			o.Protocol = protocol
			c, err := New(o, DefaultRules(), prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			before := heapInUse()
			for _, t := range targets {
				c.Upsert(t)
			}
			ctx := context.Background()
			// Fill the windows first so the held memory is the steady state.
			for i := 0; i < int(o.Window/o.Interval)+3; i++ {
				if st := c.ScrapeOnce(ctx); st.Failed > 0 {
					b.Fatalf("warm-up cycle: %d of %d scrapes failed", st.Failed, st.Targets)
				}
			}
			held := heapInUse() - before
			b.ResetTimer()
			var failed int
			for i := 0; i < b.N; i++ {
				failed += c.ScrapeOnce(ctx).Failed
			}
			b.StopTimer()
			perCycle := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(perCycle.Milliseconds()), "ms/cycle")
			b.ReportMetric(perCycle.Seconds()/o.Interval.Seconds(), "cycle/interval")
			b.ReportMetric(float64(held)/(1<<20), "MB-held")
			b.ReportMetric(float64(failed)/float64(b.N), "failed/cycle")
			runtime.KeepAlive(targets)
		})
	}
}
