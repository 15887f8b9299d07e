package scaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/labels"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
)

// testServer is a Server serving on real loopback listeners.
type testServer struct {
	s           *Server
	addr        string
	metricsAddr string
	reg         *prometheus.Registry
	stop        func()
}

func serve(t testing.TB, src *fakeSource, cfg Config) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Registerer == nil {
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(src, src, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis, mlis) }()
	ts := &testServer{s: s, addr: lis.Addr().String(), metricsAddr: mlis.Addr().String(), reg: reg}
	var stopped bool
	ts.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

func dial(t testing.TB, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// world is the cluster the fake collector sees.
func world() *fakeSource {
	iris := labels.Set{"app": "iris", collector.SeldonDeploymentLabel: "iris-model-autoscale"}
	src := newFakeSource(
		fakePod{Namespace: "model", Name: "iris-a", Labels: iris, Values: map[string]float64{
			"requests_per_second": 3, "predicted_rows_per_second": 300, "batch_size": 100,
			"inflight_requests": 2, "request_duration_p99_seconds": 0.05, "cpu_usage_cores": 0.25,
		}},
		fakePod{Namespace: "model", Name: "iris-b", Labels: iris, Values: map[string]float64{
			"requests_per_second": 4.5, "predicted_rows_per_second": 1350, "batch_size": 300,
			"inflight_requests": 0, "request_duration_p99_seconds": 0.15, "cpu_usage_cores": 0.5,
		}},
		// Running but not scraped yet.
		fakePod{Namespace: "model", Name: "fresh-a", Labels: labels.Set{"app": "fresh"}, Values: map[string]float64{}},
		// Same labels in another namespace: must never be counted.
		fakePod{Namespace: "other", Name: "iris-x", Labels: iris, Values: map[string]float64{"requests_per_second": 1000}},
	)
	src.Workloads["Deployment/model/iris"] = labels.SelectorFromSet(labels.Set{"app": "iris"})
	src.Workloads["Service/model/iris"] = labels.SelectorFromSet(labels.Set{"app": "iris"})
	src.Workloads["SeldonDeployment/model/iris-model-autoscale"] = labels.SelectorFromSet(labels.Set{collector.SeldonDeploymentLabel: "iris-model-autoscale"})
	src.Workloads["Deployment/model/fresh"] = labels.SelectorFromSet(labels.Set{"app": "fresh"})
	src.Workloads["Deployment/model/idle"] = labels.SelectorFromSet(labels.Set{"app": "idle"})
	src.Workloads["Deployment/model/broken"] = labels.SelectorFromSet(labels.Set{"app": "broken"})
	src.ResolveErrs["Deployment/model/broken"] = errors.New("informer cache exploded at 10.0.0.7")
	return src
}

func ref(md map[string]string) *pb.ScaledObjectRef {
	return &pb.ScaledObjectRef{Name: "iris", Namespace: "model", ScalerMetadata: md}
}

// md builds metadata from key=value pairs.
func md(kv ...string) map[string]string {
	m := map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return m
}

// answer is what the three unary RPCs said, in plain values for cmp.
type answer struct {
	Active       bool
	SpecName     string
	TargetSize   int64
	TargetFloat  float64
	MetricName   string
	MetricValue  int64
	MetricFloat  float64
	ValueCode    codes.Code // of IsActive and GetMetrics (they agree)
	SpecCode     codes.Code
	ValueMessage string
}

func ask(t *testing.T, c pb.ExternalScalerClient, r *pb.ScaledObjectRef) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var a answer
	spec, err := c.GetMetricSpec(ctx, r)
	a.SpecCode = status.Code(err)
	metricName := ""
	if err == nil {
		if len(spec.MetricSpecs) != 1 {
			t.Fatalf("GetMetricSpec returned %d specs, want 1", len(spec.MetricSpecs))
		}
		ms := spec.MetricSpecs[0]
		a.SpecName, a.TargetSize, a.TargetFloat = ms.MetricName, ms.TargetSize, ms.TargetSizeFloat
		metricName = ms.MetricName
	}
	act, aerr := c.IsActive(ctx, r)
	vals, verr := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: r, MetricName: metricName})
	if status.Code(aerr) != status.Code(verr) {
		t.Fatalf("IsActive said %v but GetMetrics said %v", aerr, verr)
	}
	a.ValueCode = status.Code(verr)
	if verr != nil {
		a.ValueMessage = status.Convert(verr).Message()
		return a
	}
	a.Active = act.Result
	if len(vals.MetricValues) != 1 {
		t.Fatalf("GetMetrics returned %d values, want 1", len(vals.MetricValues))
	}
	mv := vals.MetricValues[0]
	a.MetricName, a.MetricValue, a.MetricFloat = mv.MetricName, mv.MetricValue, mv.MetricValueFloat
	return a
}

func TestUnaryRPCs(t *testing.T) {
	src := world()
	ts := serve(t, src, Config{Pods: src})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))

	tests := []struct {
		name string
		md   map[string]string
		want answer
		// wantMessage must appear in the error message (names the field or
		// says what is missing).
		wantMessage string
	}{
		{
			name: "deployment, requests/s summed over its pods",
			md:   md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5"),
			want: answer{Active: true, SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5,
				MetricName: "requests_per_second", MetricValue: 8, MetricFloat: 7.5},
		},
		{
			name: "seldonDeployment, rows/s summed",
			md:   md("seldonDeploymentName=iris-model-autoscale", "metricName=predicted_rows_per_second", "targetValue=1000"),
			want: answer{Active: true, SpecName: "predicted_rows_per_second", TargetSize: 1000, TargetFloat: 1000,
				MetricName: "predicted_rows_per_second", MetricValue: 1650, MetricFloat: 1650},
		},
		{
			name: "service, cpu summed, fractional target keeps a non-zero int target",
			md:   md("serviceName=iris", "metricName=cpu_usage_cores", "targetValue=0.4"),
			want: answer{Active: true, SpecName: "cpu_usage_cores", TargetSize: 1, TargetFloat: 0.4,
				MetricName: "cpu_usage_cores", MetricValue: 1, MetricFloat: 0.75},
		},
		{
			name: "labelSelector, batch size averaged",
			md:   md("labelSelector=app=iris", "metricName=batch_size", "targetValue=500"),
			want: answer{Active: true, SpecName: "batch_size", TargetSize: 500, TargetFloat: 500,
				MetricName: "batch_size", MetricValue: 200, MetricFloat: 200},
		},
		{
			name: "p99 as the collector aggregates it",
			md:   md("deploymentName=iris", "metricName=request_duration_p99_seconds", "targetValue=0.1"),
			want: answer{Active: true, SpecName: "request_duration_p99_seconds", TargetSize: 1, TargetFloat: 0.1,
				MetricName: "request_duration_p99_seconds", MetricValue: 0, MetricFloat: 0.1},
		},
		{
			name: "p99, max over pods when asked",
			md:   md("deploymentName=iris", "metricName=request_duration_p99_seconds", "targetValue=0.1", "aggregation=max"),
			want: answer{Active: true, SpecName: "request_duration_p99_seconds", TargetSize: 1, TargetFloat: 0.1,
				MetricName: "request_duration_p99_seconds", MetricValue: 0, MetricFloat: 0.15},
		},
		{
			name: "overrides: mean and min",
			md:   md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5", "aggregation=Mean"),
			want: answer{Active: true, SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5,
				MetricName: "requests_per_second", MetricValue: 4, MetricFloat: 3.75},
		},
		{
			name: "overrides: avg, the collector config's old name for mean",
			md:   md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5", "aggregation=avg"),
			want: answer{Active: true, SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5,
				MetricName: "requests_per_second", MetricValue: 4, MetricFloat: 3.75},
		},
		{
			name: "overrides: min",
			md:   md("deploymentName=iris", "metricName=inflight_requests", "targetValue=5", "aggregation=min"),
			want: answer{Active: false, SpecName: "inflight_requests", TargetSize: 5, TargetFloat: 5,
				MetricName: "inflight_requests", MetricValue: 0, MetricFloat: 0},
		},
		{
			name: "overrides: sum of a pooled metric",
			md:   md("deploymentName=iris", "metricName=batch_size", "targetValue=5", "aggregation=sum"),
			want: answer{Active: true, SpecName: "batch_size", TargetSize: 5, TargetFloat: 5,
				MetricName: "batch_size", MetricValue: 400, MetricFloat: 400},
		},
		{
			name: "below activationValue is inactive but still reports the value",
			md:   md("deploymentName=iris", "metricName=inflight_requests", "targetValue=4", "activationValue=2"),
			want: answer{Active: false, SpecName: "inflight_requests", TargetSize: 4, TargetFloat: 4,
				MetricName: "inflight_requests", MetricValue: 2, MetricFloat: 2},
		},
		{
			name: "namespace in metadata wins over the ScaledObject's",
			md:   md("namespace=other", "labelSelector=app=iris", "metricName=requests_per_second", "targetValue=5"),
			want: answer{Active: true, SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5,
				MetricName: "requests_per_second", MetricValue: 1000, MetricFloat: 1000},
		},
		{
			name: "FromEnv keys as KEDA resolves them",
			md:   md("deploymentNameFromEnv=iris", "metricName=requests_per_second", "targetValueFromEnv=10", "scalerAddress=x:6000", "enableTLS=false"),
			want: answer{Active: true, SpecName: "requests_per_second", TargetSize: 10, TargetFloat: 10,
				MetricName: "requests_per_second", MetricValue: 8, MetricFloat: 7.5},
		},
		{
			name: "no pods at all (scaled to zero) is a real zero",
			md:   md("deploymentName=idle", "metricName=requests_per_second", "targetValue=5"),
			want: answer{Active: false, SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5,
				MetricName: "requests_per_second", MetricValue: 0, MetricFloat: 0},
		},
		{
			name:        "pods exist but have no data: Unavailable, not zero",
			md:          md("deploymentName=fresh", "metricName=requests_per_second", "targetValue=5"),
			want:        answer{SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5, ValueCode: codes.Unavailable},
			wantMessage: "no data for requests_per_second",
		},
		{
			name:        "missing deployment: NotFound naming the key",
			md:          md("deploymentName=gone", "metricName=requests_per_second", "targetValue=5"),
			want:        answer{SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5, ValueCode: codes.NotFound},
			wantMessage: "deploymentName: Deployment model/gone not found",
		},
		{
			name:        "resolver failure: Unavailable without the internals",
			md:          md("deploymentName=broken", "metricName=requests_per_second", "targetValue=5"),
			want:        answer{SpecName: "requests_per_second", TargetSize: 5, TargetFloat: 5, ValueCode: codes.Unavailable},
			wantMessage: "resolving the workload for Deployment model/broken failed; see the scaler's log",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ask(t, c, ref(tc.md))
			msg := got.ValueMessage
			got.ValueMessage = ""
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("answers differ (-want +got):\n%s\nmessage: %s", diff, msg)
			}
			if !strings.Contains(msg, tc.wantMessage) {
				t.Errorf("message %q does not contain %q", msg, tc.wantMessage)
			}
			if strings.Contains(msg, "10.0.0.7") {
				t.Errorf("message leaks backend internals: %q", msg)
			}
		})
	}
}

// Without a PodCounter the scaler cannot tell zero pods from unscraped pods
// and must not guess zero.
func TestNoPodCounterNeverReportsZero(t *testing.T) {
	src := world()
	ts := serve(t, src, Config{}) // fakeSource is a PodCounter only if wired as cfg.Pods
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	got := ask(t, c, ref(md("deploymentName=idle", "metricName=requests_per_second", "targetValue=5")))
	if got.ValueCode != codes.Unavailable {
		t.Errorf("zero pods without a PodCounter: code %v, want Unavailable", got.ValueCode)
	}

	ts2 := serve(t, src, Config{Pods: src})
	c2 := pb.NewExternalScalerClient(dial(t, ts2.addr, nil))
	got = ask(t, c2, ref(md("deploymentName=idle", "metricName=requests_per_second", "targetValue=5")))
	if got.ValueCode != codes.OK || got.Active || got.MetricFloat != 0 {
		t.Errorf("zero pods with a PodCounter: %+v, want OK, inactive, 0", got)
	}
}

func TestGetMetricsWrongMetricName(t *testing.T) {
	ts := serve(t, world(), Config{})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	_, err := c.GetMetrics(context.Background(), &pb.GetMetricsRequest{
		ScaledObjectRef: ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5")),
		MetricName:      "batch_size",
	})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "metricName") {
		t.Errorf("GetMetrics for another trigger's metric: %v, want InvalidArgument naming metricName", err)
	}
	_, err = c.GetMetrics(context.Background(), &pb.GetMetricsRequest{MetricName: "requests_per_second"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "scaledObjectRef is required") {
		t.Errorf("GetMetrics without a ScaledObjectRef: %v, want InvalidArgument naming scaledObjectRef", err)
	}
}

func TestBackendErrors(t *testing.T) {
	src := world()
	ts := serve(t, src, Config{Pods: src})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	r := ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5"))
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"no data from the collector", fmt.Errorf("window empty: %w", collector.ErrNoData), codes.Unavailable},
		{"collector dropped the metric", fmt.Errorf("rules reloaded: %w", collector.ErrUnknownMetric), codes.InvalidArgument},
		{"anything else", errors.New("prometheus at 10.0.0.7 said 503"), codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src.setErr("requests_per_second", tc.err)
			defer src.setErr("requests_per_second", nil)
			got := ask(t, c, r)
			if got.ValueCode != tc.code {
				t.Errorf("code %v, want %v (%s)", got.ValueCode, tc.code, got.ValueMessage)
			}
			if strings.Contains(got.ValueMessage, "10.0.0.7") {
				t.Errorf("message leaks backend internals: %q", got.ValueMessage)
			}
		})
	}
}

func TestMetadataErrors(t *testing.T) {
	ts := serve(t, world(), Config{})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	base := []string{"deploymentName=iris", "metricName=requests_per_second", "targetValue=5"}
	with := func(kv ...string) map[string]string { return md(append(append([]string{}, base...), kv...)...) }
	without := func(key string, kv ...string) map[string]string {
		m := with(kv...)
		delete(m, key)
		return m
	}
	tests := []struct {
		name     string
		ref      *pb.ScaledObjectRef
		wantText string
	}{
		{"no namespace anywhere", &pb.ScaledObjectRef{Name: "x", ScalerMetadata: with()}, "namespace"},
		{"no workload", ref(without("deploymentName")), "one of deploymentName, seldonDeploymentName, serviceName or labelSelector is required"},
		{"deployment and selector", ref(with("labelSelector=app=iris")), "deploymentName and labelSelector are mutually exclusive"},
		{"deployment and seldonDeployment", ref(with("seldonDeploymentName=iris")), "deploymentName and seldonDeploymentName are mutually exclusive"},
		{"key and its FromEnv", ref(with("deploymentNameFromEnv=iris")), "deploymentName and deploymentNameFromEnv are mutually exclusive"},
		{"bad selector", ref(md("labelSelector=app in (", "metricName=requests_per_second", "targetValue=5")), "labelSelector"},
		{"everything selector", ref(md("labelSelector= ", "metricName=requests_per_second", "targetValue=5")), "one of deploymentName"},
		{"no metric", ref(without("metricName")), "metricName is required"},
		{"unknown metric", ref(with("metricName=gpu_temperature")), `metricName: "gpu_temperature" is not served`},
		{"no target", ref(without("targetValue")), "targetValue is required"},
		{"zero target", ref(with("targetValue=0")), "targetValue: must be greater than 0"},
		{"negative target", ref(with("targetValue=-3")), "targetValue: must be greater than 0"},
		{"NaN target", ref(with("targetValue=NaN")), "targetValue"},
		{"text target", ref(with("targetValue=five")), `targetValue: "five" is not a finite number`},
		{"infinite target", ref(with("targetValue=+Inf")), "targetValue"},
		{"negative activation", ref(with("activationValue=-1")), "activationValue: must not be negative"},
		{"text activation", ref(with("activationValue=lots")), "activationValue"},
		{"unknown aggregation", ref(with("aggregation=median")), `aggregation: "median" is not one of sum, mean, max, min`},
		{"pooled aggregation", ref(with("aggregation=pooled")), `aggregation: pooled combines the pods' histograms`},
		{"typo in a key", ref(with("targetvalue=5")), "unknown metadata key(s) targetvalue"},
		{"empty ref", &pb.ScaledObjectRef{}, "namespace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			check := func(rpc string, err error) {
				t.Helper()
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.wantText) {
					t.Errorf("%s: got %v %q, want InvalidArgument containing %q", rpc, st.Code(), st.Message(), tc.wantText)
				}
			}
			_, err := c.IsActive(ctx, tc.ref)
			check("IsActive", err)
			_, err = c.GetMetricSpec(ctx, tc.ref)
			check("GetMetricSpec", err)
			_, err = c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: tc.ref, MetricName: "requests_per_second"})
			check("GetMetrics", err)
			s, err := c.StreamIsActive(ctx, tc.ref)
			if err == nil {
				_, err = s.Recv()
			}
			check("StreamIsActive", err)
			ms, err := c.StreamMetricSpec(ctx, tc.ref)
			if err == nil {
				_, err = ms.Recv()
			}
			check("StreamMetricSpec", err)
		})
	}
}

// recvAll forwards a stream's messages to a channel; the channel's last item
// is the stream's error.
func recvAll[T any](s interface{ Recv() (T, error) }) (<-chan T, <-chan error) {
	msgs := make(chan T, 16)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				errc <- err
				return
			}
			msgs <- m
		}
	}()
	return msgs, errc
}

func TestStreamIsActive(t *testing.T) {
	src := world()
	const poll = 20 * time.Millisecond
	ts := serve(t, src, Config{Pods: src, PollInterval: poll})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// inflight: iris-a 2 + iris-b 0 = 2, activation 3: inactive.
	r := ref(md("deploymentName=iris", "metricName=inflight_requests", "targetValue=4", "activationValue=3"))
	stream, err := c.StreamIsActive(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	msgs, errc := recvAll[*pb.IsActiveResponse](stream)
	expect := func(want bool, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		select {
		case m := <-msgs:
			if m.Result != want {
				t.Fatalf("stream sent %v, want %v", m.Result, want)
			}
			return time.Since(start)
		case err := <-errc:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(within):
			t.Fatalf("no message within %v (want %v)", within, want)
		}
		return 0
	}
	quiet := func(d time.Duration) {
		t.Helper()
		select {
		case m := <-msgs:
			t.Fatalf("unexpected message %v", m.Result)
		case err := <-errc:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(d):
		}
	}

	expect(false, 5*time.Second) // the current state, on open
	src.set("model", "iris-b", "inflight_requests", 0.5)
	quiet(10 * poll) // changed, but still below activation: nothing to push
	src.set("model", "iris-b", "inflight_requests", 1.5)
	took := expect(true, 5*time.Second)
	t.Logf("push after crossing up: %v (poll interval %v)", took, poll)

	// No data is not inactive: the stream holds, then resumes.
	src.setErr("inflight_requests", fmt.Errorf("scrapes failing: %w", collector.ErrNoData))
	quiet(10 * poll)
	src.setErr("inflight_requests", nil)
	src.set("model", "iris-a", "inflight_requests", 0)
	expect(false, 5*time.Second)

	if got := testutil.ToFloat64(ts.s.metrics.activeStreams.WithLabelValues("StreamIsActive")); got != 1 {
		t.Errorf("active streams = %v while open, want 1", got)
	}
	// Client goes away: the handler must end and the gauge drop.
	cancel()
	waitFor(t, "the stream handler to end", func() bool {
		return testutil.ToFloat64(ts.s.metrics.activeStreams.WithLabelValues("StreamIsActive")) == 0
	})
}

func TestStreamsEndOnShutdown(t *testing.T) {
	src := world()
	ts := serve(t, src, Config{Pods: src})
	conn := dial(t, ts.addr, nil)
	c := pb.NewExternalScalerClient(conn)
	ctx := context.Background()
	r := ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5"))
	active, err := c.StreamIsActive(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := active.Recv(); err != nil {
		t.Fatal(err)
	}
	spec, err := c.StreamMetricSpec(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := spec.Recv(); err != nil {
		t.Fatal(err)
	}
	health := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", ServiceName} {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q before shutdown: %v %v, want SERVING", svc, resp, err)
		}
	}

	ts.s.Shutdown()
	for name, recv := range map[string]func() error{
		"StreamIsActive":   func() error { _, err := active.Recv(); return err },
		"StreamMetricSpec": func() error { _, err := spec.Recv(); return err },
	} {
		if err := recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("%s after Shutdown: %v, want Unavailable", name, err)
		}
	}
	for _, svc := range []string{"", ServiceName} {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health %q after shutdown: %v %v, want NOT_SERVING", svc, resp, err)
		}
	}
	ts.stop() // graceful stop must not hang on the ended streams
}

func TestStreamMetricSpec(t *testing.T) {
	src := world()
	ts := serve(t, src, Config{Pods: src})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := ref(md("seldonDeploymentName=iris-model-autoscale", "metricName=requests_per_second", "targetValue=2.5"))
	want, err := c.GetMetricSpec(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := c.StreamMetricSpec(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	msgs, errc := recvAll[*pb.GetMetricSpecResponse](stream)
	select {
	case got := <-msgs:
		// KEDA relies on the stream and GetMetricSpec agreeing.
		if diff := cmp.Diff(want.String(), got.String()); diff != "" {
			t.Errorf("streamed spec differs from GetMetricSpec (-want +got):\n%s", diff)
		}
	case err := <-errc:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no spec sent on open")
	}
	select {
	case m := <-msgs:
		t.Errorf("unexpected second spec %v", m)
	case err := <-errc:
		t.Errorf("stream ended on its own: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	waitFor(t, "the spec stream handler to end", func() bool {
		return testutil.ToFloat64(ts.s.metrics.activeStreams.WithLabelValues("StreamMetricSpec")) == 0
	})
}

func TestMetricsEndpoint(t *testing.T) {
	src := world()
	ts := serve(t, src, Config{Pods: src})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	ctx := context.Background()
	good := ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5"))
	for range 3 {
		if _, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: good, MetricName: "requests_per_second"}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = c.IsActive(ctx, ref(md("deploymentName=iris")))
	_, _ = c.IsActive(ctx, ref(md("deploymentName=fresh", "metricName=requests_per_second", "targetValue=5")))

	err := testutil.GatherAndCompare(ts.reg, strings.NewReader(`
# HELP mlscale_scaler_evaluations_total Reads of the collector by metric and outcome (ok, no_pods, no_data, not_found, error).
# TYPE mlscale_scaler_evaluations_total counter
mlscale_scaler_evaluations_total{metric="requests_per_second",outcome="no_data"} 1
mlscale_scaler_evaluations_total{metric="requests_per_second",outcome="ok"} 3
`), "mlscale_scaler_evaluations_total")
	if err != nil {
		t.Error(err)
	}

	resp, err := http.Get("http://" + ts.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="GetMetrics",grpc_service="externalscaler.ExternalScaler",grpc_type="unary"} 3`,
		`grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="IsActive",grpc_service="externalscaler.ExternalScaler",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="Unavailable",grpc_method="IsActive",grpc_service="externalscaler.ExternalScaler",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_count{grpc_method="GetMetrics",grpc_service="externalscaler.ExternalScaler",grpc_type="unary"} 3`,
		`mlscale_scaler_active_streams`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	problems, err := testutil.GatherAndLint(ts.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "mlscale_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReadinessFollowsCollector(t *testing.T) {
	var notReady atomic.Pointer[error]
	e := errors.New("collector: first window not complete")
	notReady.Store(&e)
	ready := func() error {
		if p := notReady.Load(); p != nil {
			return *p
		}
		return nil
	}
	ts := serve(t, world(), Config{Ready: ready, Healthy: func() error { return nil }})
	health := healthpb.NewHealthClient(dial(t, ts.addr, nil))
	get := func(path string) int {
		resp, err := http.Get("http://" + ts.metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	grpcStatus := func() healthpb.HealthCheckResponse_ServingStatus {
		r, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: ServiceName})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	waitFor(t, "NOT_SERVING while the collector is not ready", func() bool {
		return grpcStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while not ready: %d, want 503", got)
	}
	if got := get("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz: %d, want 200", got)
	}
	notReady.Store(nil)
	waitFor(t, "SERVING once the collector is ready", func() bool {
		return grpcStatus() == healthpb.HealthCheckResponse_SERVING
	})
	if got := get("/readyz"); got != http.StatusOK {
		t.Errorf("/readyz when ready: %d, want 200", got)
	}
	ts.s.Shutdown()
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while stopping: %d, want 503", got)
	}
}

// Embedding: a host process (the adapter) passes its own Registerer, builds
// its own grpc.Server with GRPCServerOptions, and Registers the scaler on it.
func TestEmbedded(t *testing.T) {
	host := prometheus.NewRegistry()
	src := world()
	s := New(src, src, Config{Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"component": "scaler"}, host), Pods: src,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	opts, err := s.GRPCServerOptions()
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	defer gs.Stop()
	c := pb.NewExternalScalerClient(dial(t, lis.Addr().String(), nil))
	got := ask(t, c, ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5")))
	if got.ValueCode != codes.OK || got.MetricFloat != 7.5 {
		t.Fatalf("embedded scaler answered %+v", got)
	}
	err = testutil.GatherAndCompare(host, strings.NewReader(`
# HELP mlscale_scaler_evaluations_total Reads of the collector by metric and outcome (ok, no_pods, no_data, not_found, error).
# TYPE mlscale_scaler_evaluations_total counter
mlscale_scaler_evaluations_total{component="scaler",metric="requests_per_second",outcome="ok"} 2
`), "mlscale_scaler_evaluations_total")
	if err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(host, "grpc_server_handled_total"); err != nil || n == 0 {
		t.Errorf("the host registry has %d grpc_server_handled_total series (%v)", n, err)
	}
}
