package collector

import (
	"context"
	"github.com/prometheus/common/expfmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/apimachinery/pkg/labels"
)

// modelExposition renders a model server's exposition once, in both
// formats: the contract's series plus the Go collector, as a
// real pod exposes (~40 families). Serving pre-rendered bytes keeps the
// endpoints small: 1,000 Go collectors in one process would each stop the
// world per scrape, which 1,000 separate pods do not do to each other.
func modelExposition(b *testing.B) map[expfmt.FormatType][]byte {
	m := newFakeModel(b, collectors.NewGoCollector())
	m.requests.WithLabelValues("iris", "seldon", "200").Add(1000)
	for j := 0; j < 20; j++ {
		m.batch.Observe(float64(j))
		m.latency.Observe(float64(j) / 1000)
	}
	out := map[expfmt.FormatType][]byte{}
	for _, accept := range []string{acceptProtobuf, acceptText} {
		body, err := getBody(m.srv.URL, accept)
		if err != nil {
			b.Fatal(err)
		}
		out[expfmt.Negotiate(http.Header{"Accept": {accept}}).FormatType()] = body
	}
	return out
}

// loopbackTargets starts n small metric endpoints on loopback serving body
// in the negotiated format.
func loopbackTargets(b *testing.B, n int) []Target {
	b.Helper()
	bodies := modelExposition(b)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := expfmt.Negotiate(r.Header)
		w.Header().Set("Content-Type", string(f))
		w.Write(bodies[f.FormatType()]) //nolint:errcheck // benchmark endpoint
	})
	out := make([]Target, n)
	for i := 0; i < n; i++ {
		srv := httptest.NewServer(h)
		b.Cleanup(srv.Close)
		out[i] = Target{Namespace: "models", Name: "iris-" + strconv.Itoa(i), Labels: labels.Set{"app": "iris"}, URL: srv.URL + "/metrics", ReadySince: time.Now().Add(-time.Hour)}
	}
	b.Logf("exposition: %d bytes protobuf, %d bytes text", len(bodies[expfmt.TypeProtoDelim]), len(bodies[expfmt.TypeTextPlain]))
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
			// Fill the windows first (and open the keep-alive connections)
			// so the held memory is the steady state. The first cycle dials
			// 1,000 connections at once; on a loaded machine some of those
			// time out, which later cycles make up for.
			for i := 0; i < int(o.Window/o.Interval)+3; i++ {
				st := c.ScrapeOnce(ctx)
				b.Logf("warm-up cycle %d: %v, %d of %d failed", i, st.Duration.Round(time.Millisecond), st.Failed, st.Targets)
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
