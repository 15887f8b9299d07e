package scaler

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/activator/api"
)

// fakeActivator is an activator replica's demand stream on a real loopback
// server (activator/api's Handler), reporting whatever demand it was last
// given, watched by the real api.Watcher.
type fakeActivator struct {
	srv     *httptest.Server
	done    chan struct{}
	mu      sync.Mutex
	demand  []api.Demand
	changed chan struct{}
}

func newFakeActivator(t *testing.T, demand ...api.Demand) *fakeActivator {
	t.Helper()
	f := &fakeActivator{demand: demand, changed: make(chan struct{}), done: make(chan struct{})}
	f.srv = httptest.NewServer(api.Handler(f, f.done))
	t.Cleanup(f.stop)
	return f
}

func (f *fakeActivator) stop() {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	f.srv.CloseClientConnections()
	f.srv.Close()
}

func (f *fakeActivator) Snapshot() api.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.Snapshot{Replica: "fake", Time: time.Now(), WindowSeconds: 3, Services: append([]api.Demand(nil), f.demand...)}
}

func (f *fakeActivator) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeActivator) set(demand ...api.Demand) {
	f.mu.Lock()
	f.demand = demand
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

// watch returns a watcher following f.
func (f *fakeActivator) watch(t *testing.T) *api.Watcher {
	t.Helper()
	w := api.NewWatcher(quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Set(ctx, []string{f.srv.URL + api.Path})
	return w
}

func held(ns, svc string, held, inflight int64) api.Demand {
	return api.Demand{Namespace: ns, Service: svc, Held: held, Inflight: inflight}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Requests held at the activator wake a workload at zero pods: IsActive,
// GetMetrics and the stream follow the activator's demand stream, and the
// stream pushes on its snapshots, not only on its own poll.
func TestWakeFromActivatorDemand(t *testing.T) {
	src := world()
	fa := newFakeActivator(t)
	ts := serve(t, src, Config{
		Pods: src, Pending: fa.watch(t),
		// So slow that only the queue's answers can drive the stream.
		PollInterval: time.Hour,
	})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	idle := ref(md("deploymentName=idle", "wakeServiceName=idle-svc", "metricName=requests_per_second", "targetValue=5"))
	want := func(what string, a answer) {
		t.Helper()
		waitFor(t, what, func() bool {
			got := ask(t, c, idle)
			got.SpecName, got.TargetSize, got.TargetFloat = "", 0, 0
			return got == a
		})
	}
	zero := answer{MetricName: "requests_per_second"}
	want("an idle workload with nothing held to be inactive at 0", zero)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.StreamIsActive(ctx, idle)
	if err != nil {
		t.Fatal(err)
	}
	msgs, errc := recvAll[*pb.IsActiveResponse](stream)
	expect := func(want bool) {
		t.Helper()
		select {
		case m := <-msgs:
			if m.Result != want {
				t.Fatalf("stream sent %v, want %v", m.Result, want)
			}
		case err := <-errc:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatalf("no message (want %v)", want)
		}
	}
	expect(false)

	fa.set(held("model", "idle-svc", 1, 0))
	expect(true)
	want("one held request to make it active with value 1",
		answer{Active: true, MetricName: "requests_per_second", MetricValue: 1, MetricFloat: 1})

	fa.set(held("model", "idle-svc", 2, 1))
	want("held+inflight as the value", answer{Active: true, MetricName: "requests_per_second", MetricValue: 3, MetricFloat: 3})

	fa.set(held("model", "idle-svc", 0, 0), held("model", "other", 9, 0))
	expect(false)
	want("no held requests to make it inactive again", zero)

	// With pods, the metric is the value: held requests only add activity.
	iris := ref(md("deploymentName=iris", "wakeServiceName=iris", "metricName=requests_per_second", "targetValue=5", "activationValue=100"))
	fa.set(held("model", "iris", 4, 0))
	waitFor(t, "held requests to activate a running workload", func() bool {
		got := ask(t, c, iris)
		return got.Active && got.MetricFloat == 7.5
	})
	if got := ask(t, c, ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5", "activationValue=100"))); got.Active {
		t.Error("a trigger without a wake Service was activated by the activator's demand")
	}
}

// An activator replica that goes away no longer counts, at once: only the
// metric does.
func TestActivatorGoneFallsBackToMetric(t *testing.T) {
	src := world()
	fa := newFakeActivator(t, held("model", "idle-svc", 5, 0))
	ts := serve(t, src, Config{Pods: src, Pending: fa.watch(t)})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	idle := ref(md("deploymentName=idle", "wakeServiceName=idle-svc", "metricName=requests_per_second", "targetValue=5"))
	waitFor(t, "held requests to activate the idle workload", func() bool { return ask(t, c, idle).Active })
	fa.stop()
	waitFor(t, "the gone replica to be ignored", func() bool {
		got := ask(t, c, idle)
		return got.ValueCode == codes.OK && !got.Active && got.MetricFloat == 0
	})
}

func TestActivatorServiceFlag(t *testing.T) {
	tests := []struct {
		name, prefix string
		args         []string
		want         string
		wantErr      string
	}{
		{name: "off by default", prefix: ""},
		{name: "standalone", prefix: "", args: []string{"--activator-service=mlscale/mlscale-activator"}, want: "mlscale/mlscale-activator"},
		{name: "in the adapter", prefix: "scaler-", args: []string{"--scaler-activator-service=ns/act"}, want: "ns/act"},
		{name: "no namespace", prefix: "", args: []string{"--activator-service=mlscale-activator"}, wantErr: `activator-service: "mlscale-activator" must be namespace/name`},
		{name: "a URL", prefix: "", args: []string{"--activator-service=http://act/queue"}, wantErr: "must be namespace/name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := NewConfig()
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			cfg.AddFlags(fs, tc.prefix)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			var msgs []string
			for _, err := range cfg.Validate() {
				msgs = append(msgs, err.Error())
			}
			got := strings.Join(msgs, "; ")
			if (tc.wantErr == "") != (got == "") || !strings.Contains(got, tc.wantErr) {
				t.Errorf("Validate() = %q, want %q", got, tc.wantErr)
			}
			if tc.wantErr == "" && cfg.ActivatorService != tc.want {
				t.Errorf("ActivatorService = %q, want %q", cfg.ActivatorService, tc.want)
			}
		})
	}
}

// Pods that exist but have no data (the first one not scraped yet, or one
// the collector no longer scrapes) are "no data", Unavailable, until
// requests are held at the activator: then no endpoint is ready, the pods
// serve nothing, and the held requests are the value, as at zero pods.
// KEDA rebuilds a trigger's scalers on any metric error, push stream
// included, so answering the error there delayed the wake from zero.
func TestHeldRequestsAnswerForUnscrapedPods(t *testing.T) {
	src := world()
	fa := newFakeActivator(t, held("model", "fresh-svc", 0, 0))
	w := fa.watch(t)
	ts := serve(t, src, Config{Pods: src, Pending: w})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	fresh := ref(md("deploymentName=fresh", "wakeServiceName=fresh-svc", "metricName=requests_per_second", "targetValue=5"))
	waitFor(t, "the watcher to report the Service", func() bool {
		_, _, ok := w.Pending("model", "fresh-svc")
		return ok
	})
	if got := ask(t, c, fresh); got.ValueCode != codes.Unavailable {
		t.Fatalf("unscraped pods, nothing held: %+v, want Unavailable", got)
	}
	fa.set(held("model", "fresh-svc", 3, 1))
	waitFor(t, "held requests to be the value", func() bool {
		got := ask(t, c, fresh)
		return got.ValueCode == codes.OK && got.Active && got.MetricFloat == 4
	})
	// In flight only: endpoints are ready and serving, so missing data is
	// missing data again.
	fa.set(held("model", "fresh-svc", 0, 2))
	waitFor(t, "in-flight requests alone not to hide missing data", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: fresh, MetricName: "requests_per_second"})
		return status.Code(err) == codes.Unavailable
	})
}
