package scaler

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
)

// fakeQueue is the gateway's queue endpoint on a real loopback server,
// answering whatever body and status it was last given.
type fakeQueue struct {
	srv  *httptest.Server
	mu   sync.Mutex
	code int
	body string
}

func newFakeQueue(t *testing.T, body string) *fakeQueue {
	t.Helper()
	q := &fakeQueue{code: http.StatusOK, body: body}
	q.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		q.mu.Lock()
		code, body := q.code, q.body
		q.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}))
	t.Cleanup(q.srv.Close)
	return q
}

func (q *fakeQueue) set(code int, body string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.code, q.body = code, body
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type pending struct {
	held, inflight int
	ok             bool
}

func pendingOf(q *GatewayQueue, ns, svc string) pending {
	h, i, ok := q.Pending(ns, svc)
	return pending{h, i, ok}
}

func TestGatewayQueuePoll(t *testing.T) {
	fq := newFakeQueue(t, `{"model/iris": {"held": 3, "inflight": 5}, "model/wine": {"held": 0, "inflight": 1}}`)
	q := NewGatewayQueue(fq.srv.URL, time.Hour, quietLog())
	ctx := context.Background()
	if got := pendingOf(q, "model", "iris"); got.ok {
		t.Fatalf("before the first poll: %+v, want unknown", got)
	}
	if err := q.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name      string
		code      int
		body      string
		wantErr   string
		ns, svc   string
		want      pending
		staleness time.Duration // MaxAge set before asking; 0: default
	}{
		{name: "listed", ns: "model", svc: "iris", want: pending{3, 5, true}},
		{name: "other namespace", ns: "other", svc: "iris", want: pending{0, 0, true}},
		{name: "unlisted", ns: "model", svc: "nope", want: pending{0, 0, true}},
		{name: "server error keeps the last answer", code: http.StatusInternalServerError, body: "boom", wantErr: "HTTP 500", ns: "model", svc: "iris", want: pending{3, 5, true}},
		{name: "bad JSON keeps the last answer", code: http.StatusOK, body: `{"model/iris": "three"}`, wantErr: "decoding the queue JSON", ns: "model", svc: "iris", want: pending{3, 5, true}},
		{name: "not an object", code: http.StatusOK, body: `[1,2]`, wantErr: "decoding", ns: "model", svc: "iris", want: pending{3, 5, true}},
		{name: "new answer", code: http.StatusOK, body: `{"model/iris": {"held": 1}}`, ns: "model", svc: "iris", want: pending{1, 0, true}},
		{name: "stale", ns: "model", svc: "iris", staleness: time.Nanosecond, want: pending{0, 0, false}},
	}
	for _, st := range steps {
		if st.code != 0 {
			fq.set(st.code, st.body)
			err := q.Poll(ctx)
			if (err == nil) != (st.wantErr == "") || (err != nil && !strings.Contains(err.Error(), st.wantErr)) {
				t.Fatalf("%s: Poll() = %v, want error containing %q", st.name, err, st.wantErr)
			}
		}
		if st.staleness != 0 {
			q.MaxAge = st.staleness
			time.Sleep(time.Millisecond) // older than 1 ns, whatever the clock's resolution
		}
		if got := pendingOf(q, st.ns, st.svc); got != st.want {
			t.Errorf("%s: Pending(%s, %s) = %+v, want %+v", st.name, st.ns, st.svc, got, st.want)
		}
	}
}

func TestGatewayQueueUnreachable(t *testing.T) {
	fq := newFakeQueue(t, `{}`)
	url := fq.srv.URL
	fq.srv.Close()
	q := NewGatewayQueue(url, time.Hour, quietLog())
	if err := q.Poll(context.Background()); err == nil || !strings.Contains(err.Error(), "fetching "+url) {
		t.Errorf("Poll() of a closed server = %v, want a fetching error naming the URL", err)
	}
	if got := pendingOf(q, "model", "iris"); got.ok {
		t.Errorf("after a failed first poll: %+v, want unknown", got)
	}
}

// Requests waiting at the gateway wake a workload at zero pods: IsActive,
// GetMetrics and the stream follow the gateway's queue, and the stream pushes
// on the queue's answer, not only on its own poll.
func TestWakeFromGatewayQueue(t *testing.T) {
	src := world()
	fq := newFakeQueue(t, `{}`)
	ts := serve(t, src, Config{
		Pods: src, GatewayQueueURL: fq.srv.URL, GatewayQueueInterval: 10 * time.Millisecond,
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
	want("an idle workload with an empty queue to be inactive at 0", zero)

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

	fq.set(http.StatusOK, `{"model/idle-svc": {"held": 1, "inflight": 0}}`)
	expect(true)
	want("one held request to make it active with value 1",
		answer{Active: true, MetricName: "requests_per_second", MetricValue: 1, MetricFloat: 1})

	fq.set(http.StatusOK, `{"model/idle-svc": {"held": 2, "inflight": 1}}`)
	want("held+inflight as the value", answer{Active: true, MetricName: "requests_per_second", MetricValue: 3, MetricFloat: 3})

	fq.set(http.StatusOK, `{"model/idle-svc": {"held": 0, "inflight": 0}, "model/other": {"held": 9}}`)
	expect(false)
	want("an emptied queue to make it inactive again", zero)

	// With pods, the metric is the value: the queue only adds activity.
	iris := ref(md("deploymentName=iris", "wakeServiceName=iris", "metricName=requests_per_second", "targetValue=5", "activationValue=100"))
	fq.set(http.StatusOK, `{"model/iris": {"held": 4}}`)
	waitFor(t, "held requests to activate a running workload", func() bool {
		got := ask(t, c, iris)
		return got.Active && got.MetricFloat == 7.5
	})
	if got := ask(t, c, ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5", "activationValue=100"))); got.Active {
		t.Error("a trigger without a wake Service was activated by the queue")
	}
}

// A queue that stops answering is unknown once stale: only the metric counts.
func TestStaleGatewayQueueFallsBackToMetric(t *testing.T) {
	src := world()
	fq := newFakeQueue(t, `{"model/idle-svc": {"held": 5}}`)
	q := NewGatewayQueue(fq.srv.URL, 10*time.Millisecond, quietLog())
	q.MaxAge = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	ts := serve(t, src, Config{Pods: src, Pending: q})
	c := pb.NewExternalScalerClient(dial(t, ts.addr, nil))
	idle := ref(md("deploymentName=idle", "wakeServiceName=idle-svc", "metricName=requests_per_second", "targetValue=5"))
	waitFor(t, "the queue to activate the idle workload", func() bool { return ask(t, c, idle).Active })

	fq.set(http.StatusServiceUnavailable, "gateway restarting")
	waitFor(t, "the stale queue to be ignored", func() bool {
		got := ask(t, c, idle)
		return got.ValueCode == codes.OK && !got.Active && got.MetricFloat == 0
	})
	fq.set(http.StatusOK, `{"model/idle-svc": {"held": 5}}`)
	waitFor(t, "a fresh answer to count again", func() bool { return ask(t, c, idle).Active })
}

func TestGatewayQueueFlags(t *testing.T) {
	tests := []struct {
		name, prefix string
		args         []string
		wantURL      string
		wantErr      string
	}{
		{name: "off by default", prefix: ""},
		{name: "standalone", prefix: "", args: []string{"--gateway-queue-url=http://gateway:8080/queue"}, wantURL: "http://gateway:8080/queue"},
		{name: "in the adapter", prefix: "scaler-", args: []string{"--scaler-gateway-queue-url=https://gw/queue", "--scaler-gateway-queue-interval=1s"}, wantURL: "https://gw/queue"},
		{name: "no scheme", prefix: "", args: []string{"--gateway-queue-url=gateway:8080/queue"}, wantErr: "gateway-queue-url"},
		{name: "not http", prefix: "", args: []string{"--gateway-queue-url=ftp://gw/queue"}, wantErr: "must be an http:// or https:// URL"},
		{name: "bad interval", prefix: "", args: []string{"--gateway-queue-url=http://gw/queue", "--gateway-queue-interval=0s"}, wantErr: "gateway-queue-interval: must be positive"},
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
			if tc.wantErr == "" && cfg.GatewayQueueURL != tc.wantURL {
				t.Errorf("GatewayQueueURL = %q, want %q", cfg.GatewayQueueURL, tc.wantURL)
			}
		})
	}
}
