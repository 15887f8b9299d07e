package scaler

import (
	"context"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
)

// modelPod is a loopback HTTP endpoint exposing the model server's metrics
// contract with the real client library, as a model-server pod does.
type modelPod struct {
	url      string
	requests prometheus.Counter
	inflight prometheus.Gauge
	batch    prometheus.Observer
}

func startModelPod(t *testing.T, broken bool) *modelPod {
	t.Helper()
	reg := prometheus.NewRegistry()
	p := &modelPod{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mlscale_requests_total", Help: "h"}, []string{"model", "protocol", "code"}).WithLabelValues("iris", "seldon", "200"),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mlscale_inflight_requests", Help: "h"}, []string{"model"}).WithLabelValues("iris"),
	}
	batch := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mlscale_batch_size", Help: "h", Buckets: prometheus.ExponentialBuckets(1, 4, 8)}, []string{"model", "protocol"})
	p.batch = batch.WithLabelValues("iris", "seldon")
	reg.MustRegister(
		p.requests.(prometheus.Collector), p.inflight.(prometheus.Collector), batch)
	var h http.Handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if broken {
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "exporter crashed", http.StatusInternalServerError)
		})
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	p.url = srv.URL + "/metrics"
	return p
}

// TestWithRealCollector runs the scaler over the real collector scraping
// real loopback metric endpoints, with the real informer-backed workload
// resolver and pod counter (over client-go's fake clientset).
func TestWithRealCollector(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	irisLabels := map[string]string{"app": "iris"}
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: "iris-a", Labels: irisLabels}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: "iris-b", Labels: irisLabels}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: "sick-a", Labels: map[string]string{"app": "sick"}}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		// Finished pods do not count as "pods exist".
		{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: "idle-old", Labels: map[string]string{"app": "idle"}}, Status: corev1.PodStatus{Phase: corev1.PodSucceeded}},
	}
	deploy := func(name string, sel map[string]string) *appsv1.Deployment {
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: name},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}}}
	}
	client := fake.NewClientset(pods[0], pods[1], pods[2], pods[3],
		deploy("iris", irisLabels), deploy("sick", map[string]string{"app": "sick"}), deploy("idle", map[string]string{"app": "idle"}))
	factory := informers.NewSharedInformerFactory(client, 0)
	resolver := collector.NewListerResolver(factory)
	counter := ListerPodCounter{Pods: factory.Core().V1().Pods().Lister()}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	opts := collector.NewOptions()
	opts.Interval, opts.ScrapeTimeout, opts.Window, opts.StaleAfter, opts.WarmUp = 100*time.Millisecond, 90*time.Millisecond, time.Second, time.Second, 0
	coll, err := collector.New(opts, collector.DefaultRules(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a, b, sick := startModelPod(t, false), startModelPod(t, false), startModelPod(t, true)
	ready := time.Now().Add(-time.Minute)
	for name, p := range map[string]*modelPod{"iris-a": a, "iris-b": b, "sick-a": sick} {
		l := map[string]string{"app": "iris"}
		if name == "sick-a" {
			l = map[string]string{"app": "sick"}
		}
		coll.Upsert(collector.Target{Namespace: "model", Name: name, Labels: labels.Set(l), URL: p.url, ReadySince: ready})
	}
	go coll.Run(ctx)

	s := New(coll, resolver, Config{Pods: counter, PollInterval: 50 * time.Millisecond})
	ts := serveServer(t, s)
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))

	a.inflight.Set(3)
	b.inflight.Set(4)
	inflight := ref(md("deploymentName=iris", "metricName=inflight_requests", "targetValue=5", "activationValue=6"))
	waitFor(t, "the collector to serve inflight_requests = 7", func() bool {
		r, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: inflight, MetricName: "inflight_requests"})
		return err == nil && r.MetricValues[0].MetricValueFloat == 7
	})
	if r, err := c.IsActive(ctx, inflight); err != nil || !r.Result {
		t.Errorf("IsActive at 7 > 6 = %v, %v; want true", r, err)
	}

	// The push: drop below the activation value on the pod's endpoint.
	stream, err := c.StreamIsActive(ctx, inflight)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || !m.Result {
		t.Fatalf("first streamed state %v, %v; want active", m, err)
	}
	b.inflight.Set(1)
	changed := time.Now()
	if m, err := stream.Recv(); err != nil || m.Result {
		t.Fatalf("after the drop: %v, %v; want inactive", m, err)
	}
	t.Logf("pushed %v after the endpoint changed (scrape interval %v, poll %v)", time.Since(changed), opts.Interval, 50*time.Millisecond)

	// Rates from real counters: 20 req/s on each pod, summed.
	rps := ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=10"))
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				a.requests.Inc()
				b.requests.Inc()
			}
		}
	}()
	var got float64
	waitFor(t, "requests_per_second near 40", func() bool {
		r, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: rps, MetricName: "requests_per_second"})
		if err != nil {
			return false
		}
		got = r.MetricValues[0].MetricValueFloat
		return math.Abs(got-40) < 8
	})

	// Pods exist but their endpoint fails: Unavailable, never 0.
	_, err = c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: ref(md("deploymentName=sick", "metricName=inflight_requests", "targetValue=5")), MetricName: "inflight_requests"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("unscrapable pods: %v, want Unavailable", err)
	}
	// A Deployment scaled to zero (only a finished pod left): a real zero.
	idle := ref(md("deploymentName=idle", "metricName=inflight_requests", "targetValue=5"))
	if r, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: idle, MetricName: "inflight_requests"}); err != nil || r.MetricValues[0].MetricValueFloat != 0 {
		t.Errorf("scaled-to-zero workload: %v, %v; want 0", r, err)
	}
	if r, err := c.IsActive(ctx, idle); err != nil || r.Result {
		t.Errorf("scaled-to-zero workload IsActive: %v, %v; want false", r, err)
	}
	// A Deployment that does not exist.
	_, err = c.IsActive(ctx, ref(md("deploymentName=nope", "metricName=inflight_requests", "targetValue=5")))
	if status.Code(err) != codes.NotFound {
		t.Errorf("missing deployment: %v, want NotFound", err)
	}
}

// serveServer serves an already built Server on loopback.
func serveServer(t testing.TB, s *Server) *testServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{s: s, addr: lis.Addr().String()}
}
