package collector

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"k8s.io/apimachinery/pkg/labels"
)

// fakeModel is a real client_golang registry exposing the model server's
// metrics contract over HTTP on loopback.
type fakeModel struct {
	srv      *httptest.Server
	requests *prometheus.CounterVec
	rows     prometheus.Counter
	batch    prometheus.Histogram
	latency  prometheus.Histogram
	inflight prometheus.Gauge
	cpu      prometheus.Counter
	status   atomic.Int32 // non-zero: answer with this status
	mu       sync.Mutex
	served   []string // Content-Types served
}

func newFakeModel(t testing.TB, extra ...prometheus.Collector) *fakeModel {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := &fakeModel{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mlscale_requests_total", Help: "h"}, []string{"model", "protocol", "code"}),
		rows:     prometheus.NewCounter(prometheus.CounterOpts{Name: "mlscale_predicted_rows_total", Help: "h"}),
		batch:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mlscale_batch_size", Help: "h", Buckets: []float64{1, 2, 4, 8, 16, 32}}),
		latency:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mlscale_request_duration_seconds", Help: "h", Buckets: []float64{.001, .005, .01, .05, .1}}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mlscale_inflight_requests", Help: "h"}),
		cpu:      prometheus.NewCounter(prometheus.CounterOpts{Name: "process_cpu_seconds_total", Help: "h"}),
	}
	reg.MustRegister(m.requests, m.rows, m.batch, m.latency, m.inflight, m.cpu)
	reg.MustRegister(extra...)
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := m.status.Load(); s != 0 {
			http.Error(w, "broken", int(s))
			return
		}
		h.ServeHTTP(w, r)
		m.mu.Lock()
		m.served = append(m.served, w.Header().Get("Content-Type"))
		m.mu.Unlock()
	}))
	t.Cleanup(m.srv.Close)
	return m
}

// clock is a manual time source for the collector.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestCollector(t testing.TB, protocol string) (*Collector, *clock) {
	t.Helper()
	o := NewOptions()
	o.Protocol = protocol
	c, err := New(o, DefaultRules(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: t0}
	c.now = clk.now
	return c, clk
}

func TestScrapeDefaultRules(t *testing.T) {
	for _, tc := range []struct{ protocol, wantType string }{
		{"protobuf", string(expfmt.NewFormat(expfmt.TypeProtoDelim))},
		{"text", string(expfmt.NewFormat(expfmt.TypeTextPlain))},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			m := newFakeModel(t)
			c, clk := newTestCollector(t, tc.protocol)
			c.Upsert(Target{Namespace: "models", Name: "iris-0", Labels: labels.Set{"app": "iris"}, URL: m.srv.URL + "/metrics", ReadySince: t0.Add(-time.Hour)})
			ctx := context.Background()
			// Four cycles one second apart; between them each pod serves 10
			// requests of 4 rows (so batch mean 4), 2 of them failing, 3
			// in flight at the end, 0.5 s of CPU.
			for i := 0; i < 4; i++ {
				if i > 0 {
					clk.add(time.Second)
				}
				if st := c.ScrapeOnce(ctx); st.Failed != 0 || st.Targets != 1 {
					t.Fatalf("cycle %d: %+v", i, st)
				}
				m.requests.WithLabelValues("iris", "seldon", "200").Add(8)
				m.requests.WithLabelValues("iris", "seldon", "500").Add(2)
				m.rows.Add(40)
				for j := 0; j < 10; j++ {
					m.batch.Observe(4)
					m.latency.Observe(0.003)
				}
				m.inflight.Set(3)
				m.cpu.Add(0.5)
			}
			want := map[string]float64{
				"requests_per_second":          10,
				"predicted_rows_per_second":    40,
				"batch_size":                   4,
				"inflight_requests":            3,
				"request_duration_p99_seconds": 0.001 + 0.004*0.99,
				"cpu_usage_cores":              0.5,
			}
			clk.add(time.Second)
			c.ScrapeOnce(ctx)
			for metric, v := range want {
				got, err := c.PodValues(ctx, metric, "models", labels.SelectorFromSet(labels.Set{"app": "iris"}))
				if err != nil {
					t.Fatalf("%s: %v", metric, err)
				}
				wantPV := []PodValue{{Namespace: "models", Pod: "iris-0", Value: v, Timestamp: clk.now(), Window: 3 * time.Second}}
				if metric == "inflight_requests" {
					wantPV[0].Window = 0
				}
				if diff := cmp.Diff(wantPV, got, cmpopts.EquateApprox(1e-9, 0)); diff != "" {
					t.Errorf("%s (-want +got):\n%s", metric, diff)
				}
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			for _, ct := range m.served {
				if expfmt.ResponseFormat(http.Header{"Content-Type": {ct}}).FormatType() != expfmt.Format(tc.wantType).FormatType() {
					t.Fatalf("served Content-Type %q, want %q", ct, tc.wantType)
				}
			}
		})
	}
}

func TestFailedScrapeIsNeverZero(t *testing.T) {
	m := newFakeModel(t)
	c, clk := newTestCollector(t, "protobuf")
	c.Upsert(Target{Namespace: "models", Name: "iris-0", URL: m.srv.URL + "/metrics", ReadySince: t0.Add(-time.Hour)})
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		m.requests.WithLabelValues("iris", "seldon", "200").Add(5)
		c.ScrapeOnce(ctx)
		clk.add(time.Second)
	}
	check := func(wantValue float64, wantErr error) {
		t.Helper()
		got, err := c.PodValues(ctx, "requests_per_second", "models", labels.Everything())
		if !errors.Is(err, wantErr) {
			t.Fatalf("PodValues error = %v, want %v", err, wantErr)
		}
		if err == nil && got[0].Value != wantValue {
			t.Fatalf("PodValues = %v, want %v", got[0].Value, wantValue)
		}
	}
	check(5, nil)
	// The pod breaks: its window keeps the last real rate until it is
	// stale, then there is no data; never a zero.
	m.status.Store(http.StatusInternalServerError)
	for i := 0; i < 3; i++ {
		if st := c.ScrapeOnce(ctx); st.Failed != 1 {
			t.Fatalf("failed scrapes = %d, want 1", st.Failed)
		}
		clk.add(time.Second)
		check(5, nil)
	}
	clk.add(3 * time.Second)
	check(0, ErrNoData)
	// It recovers: one sample is not yet a rate, two are.
	m.status.Store(0)
	c.ScrapeOnce(ctx)
	check(0, ErrNoData)
	clk.add(time.Second)
	m.requests.WithLabelValues("iris", "seldon", "200").Add(7)
	c.ScrapeOnce(ctx)
	check(7, nil)

	if _, err := c.PodValues(ctx, "nope", "models", labels.Everything()); !errors.Is(err, ErrUnknownMetric) {
		t.Errorf("unknown metric error = %v", err)
	}
	// An endpoint nobody listens on.
	c.Upsert(Target{Namespace: "other", Name: "gone", URL: "http://127.0.0.1:1/metrics", ReadySince: t0})
	if st := c.ScrapeOnce(ctx); st.Failed != 1 {
		t.Errorf("failed = %d, want 1", st.Failed)
	}
	if _, err := c.PodValues(ctx, "requests_per_second", "other", labels.Everything()); !errors.Is(err, ErrNoData) {
		t.Errorf("unreachable pod: error = %v, want ErrNoData", err)
	}
}

func TestWarmUpAndRemove(t *testing.T) {
	m := newFakeModel(t)
	c, clk := newTestCollector(t, "protobuf")
	ctx := context.Background()
	// Ready at the first scrape: held back until 3 s old.
	c.Upsert(Target{Namespace: "models", Name: "new", URL: m.srv.URL + "/metrics", ReadySince: t0})
	for i := 0; i < 2; i++ {
		m.requests.WithLabelValues("iris", "seldon", "200").Add(5)
		c.ScrapeOnce(ctx)
		clk.add(time.Second)
	}
	if _, err := c.PodValues(ctx, "requests_per_second", "models", labels.Everything()); !errors.Is(err, ErrNoData) {
		t.Fatalf("warming pod served: err = %v", err)
	}
	c.ScrapeOnce(ctx)
	clk.add(time.Second)
	if _, err := c.PodValues(ctx, "requests_per_second", "models", labels.Everything()); err != nil {
		t.Fatalf("warmed-up pod: %v", err)
	}
	c.Remove("models", "new")
	if _, err := c.PodValues(ctx, "requests_per_second", "models", labels.Everything()); !errors.Is(err, ErrNoData) {
		t.Fatalf("removed pod still served: err = %v", err)
	}
	if n := len(c.Targets()); n != 0 {
		t.Errorf("%d targets left", n)
	}
}

func TestAggregateValue(t *testing.T) {
	a, b := newFakeModel(t), newFakeModel(t)
	c, clk := newTestCollector(t, "text")
	ctx := context.Background()
	for _, p := range []struct {
		name string
		m    *fakeModel
	}{{"a", a}, {"b", b}} {
		c.Upsert(Target{Namespace: "models", Name: p.name, Labels: labels.Set{"app": "iris"}, URL: p.m.srv.URL, ReadySince: t0.Add(-time.Hour)})
	}
	for i := 0; i < 4; i++ {
		c.ScrapeOnce(ctx)
		clk.add(time.Second)
		// a: 30 requests/s of 1 row; b: 10 requests/s of 9 rows.
		for j := 0; j < 30; j++ {
			a.requests.WithLabelValues("iris", "v2", "200").Inc()
			a.batch.Observe(1)
		}
		for j := 0; j < 10; j++ {
			b.requests.WithLabelValues("iris", "v2", "200").Inc()
			b.batch.Observe(9)
		}
		a.inflight.Set(2)
		b.inflight.Set(5)
	}
	c.ScrapeOnce(ctx)
	sel := labels.SelectorFromSet(labels.Set{"app": "iris"})
	for metric, want := range map[string]Aggregate{
		"requests_per_second": {Value: 40, Pods: 2, Timestamp: clk.now(), Window: 3 * time.Second},
		// Pooled: (30*1 + 10*9) / 40 requests, not the mean of 1 and 9.
		"batch_size":        {Value: 3, Pods: 2, Timestamp: clk.now(), Window: 3 * time.Second},
		"inflight_requests": {Value: 7, Pods: 2, Timestamp: clk.now()},
	} {
		got, err := c.AggregateValue(ctx, metric, "models", sel)
		if err != nil {
			t.Fatalf("%s: %v", metric, err)
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateApprox(1e-9, 0)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", metric, diff)
		}
	}
	if _, err := c.AggregateValue(ctx, "batch_size", "models", labels.SelectorFromSet(labels.Set{"app": "other"})); !errors.Is(err, ErrNoData) {
		t.Errorf("no pods: err = %v, want ErrNoData", err)
	}
}

func getBody(url, accept string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return b.Bytes(), err
}
