package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// result is one finished request.
type result struct {
	code int
	body string
	err  error
}

// send issues a POST in the background; ctx may cancel it.
func send(ctx context.Context, url string) <-chan result {
	done := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
		if err != nil {
			done <- result{err: err}
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{code: resp.StatusCode, body: string(b), err: err}
	}()
	return done
}

// eventually polls cond for up to 10 s: no timing assertion, only a bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func await(t *testing.T, c <-chan result) result {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("request did not finish")
		return result{}
	}
}

func heldGauge(g *Gateway, svc string) float64 {
	return testutil.ToFloat64(g.hm.held.WithLabelValues("model", svc))
}

func outcome(g *Gateway, svc, o string) float64 {
	return testutil.ToFloat64(g.hm.outcomes.WithLabelValues("model", svc, o))
}

func queue(t *testing.T, url string) map[string]QueueCounts {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("queue endpoint: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var q map[string]QueueCounts
	if err := json.NewDecoder(resp.Body).Decode(&q); err != nil {
		t.Fatalf("decoding the queue JSON: %v", err)
	}
	return q
}

// A request for a service without a ready endpoint waits, and is forwarded
// once an EndpointSlice event (a new slice, or an update marking an endpoint
// ready) shows one.
func TestHoldReleasedWhenEndpointBecomesReady(t *testing.T) {
	tests := []struct {
		name    string
		initial bool // a slice with the endpoint not ready exists at first
		ip, svc string
	}{
		{name: "slice created", ip: "127.0.0.8", svc: "iris"},
		{name: "endpoint turns ready", initial: true, ip: "127.0.0.9", svc: "wine"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := startBackend(t, tc.ip)
			h, p := hostPort(t, be.addr)
			var initial []*discoveryv1.EndpointSlice
			if tc.initial {
				initial = append(initial, slice("s", tc.svc, p, map[string]bool{h: false}))
			}
			g, cs, srv, _ := newGateway(t, initial...)
			qsrv := httptest.NewServer(g.QueueHandler())
			t.Cleanup(qsrv.Close)

			done := send(context.Background(), srv.URL+"/seldon/model/"+tc.svc+"/predict")
			eventually(t, "the request to be held", func() bool { return heldGauge(g, tc.svc) == 1 })
			if diff := cmp.Diff(map[string]QueueCounts{"model/" + tc.svc: {Held: 1}}, queue(t, qsrv.URL)); diff != "" {
				t.Errorf("queue while held (-want +got):\n%s", diff)
			}
			select {
			case r := <-done:
				t.Fatalf("request finished while no endpoint was ready: %+v", r)
			default:
			}

			ready := slice("s", tc.svc, p, map[string]bool{h: true})
			slices := cs.DiscoveryV1().EndpointSlices("model")
			var err error
			if tc.initial {
				_, err = slices.Update(context.Background(), ready, metav1.UpdateOptions{})
			} else {
				_, err = slices.Create(context.Background(), ready, metav1.CreateOptions{})
			}
			if err != nil {
				t.Fatal(err)
			}

			r := await(t, done)
			if r.err != nil || r.code != http.StatusOK || r.body != "from "+be.addr {
				t.Fatalf("released request: %+v, want 200 from %s", r, be.addr)
			}
			if got := heldGauge(g, tc.svc); got != 0 {
				t.Errorf("held gauge after release = %v", got)
			}
			if got := outcome(g, tc.svc, outcomeReleased); got != 1 {
				t.Errorf("released outcomes = %v, want 1", got)
			}
			if n := testutil.CollectAndCount(g.hm.seconds, "mlscale_gateway_hold_seconds"); n != 1 {
				t.Errorf("hold_seconds series = %d, want 1", n)
			}
			// A request now finds the endpoint and is not held.
			if code, body := post(t, srv.URL+"/seldon/model/"+tc.svc+"/predict", "{}"); code != http.StatusOK {
				t.Errorf("request after release: %d %q", code, body)
			}
			if got := outcome(g, tc.svc, outcomeReleased); got != 1 {
				t.Errorf("released outcomes after an unheld request = %v, want 1", got)
			}
		})
	}
}

func TestHoldTimesOut(t *testing.T) {
	g, _, srv, _ := newGateway(t)
	g.HoldTimeout = 200 * time.Millisecond
	code, body := post(t, srv.URL+"/seldon/model/iris/predict", "{}")
	want := "no ready endpoint for service model/iris after holding 0.2s"
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("got %d %q, want 503 containing %q", code, body, want)
	}
	if got := outcome(g, "iris", outcomeTimeout); got != 1 {
		t.Errorf("timeout outcomes = %v, want 1", got)
	}
	if got := heldGauge(g, "iris"); got != 0 {
		t.Errorf("held gauge after the timeout = %v", got)
	}
}

func TestHoldQueueFull(t *testing.T) {
	g, _, srv, _ := newGateway(t)
	g.HoldMax = 2
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := send(ctx, srv.URL+"/seldon/model/iris/predict")
	second := send(ctx, srv.URL+"/seldon/model/iris/predict")
	eventually(t, "two requests to be held", func() bool { return heldGauge(g, "iris") == 2 })
	code, body := post(t, srv.URL+"/seldon/model/iris/predict", "{}")
	want := "hold queue for model/iris is full (2 waiting)"
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("got %d %q, want 503 containing %q", code, body, want)
	}
	if got := outcome(g, "iris", outcomeFull); got != 1 {
		t.Errorf("full outcomes = %v, want 1", got)
	}
	// Another service has its own queue.
	other := send(ctx, srv.URL+"/seldon/model/wine/predict")
	eventually(t, "a request for another service to be held", func() bool { return heldGauge(g, "wine") == 1 })
	cancel()
	for _, c := range []<-chan result{first, second, other} {
		if r := await(t, c); !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled request ended with %+v", r)
		}
	}
}

// A client that gives up leaves the queue at once.
func TestHoldCancelled(t *testing.T) {
	g, _, srv, reg := newGateway(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := send(ctx, srv.URL+"/seldon/model/iris/predict")
	eventually(t, "the request to be held", func() bool { return heldGauge(g, "iris") == 1 })
	cancel()
	await(t, done)
	eventually(t, "the held gauge to drop", func() bool { return heldGauge(g, "iris") == 0 })
	eventually(t, "the cancellation to be counted", func() bool { return outcome(g, "iris", outcomeCancelled) == 1 })
	eventually(t, "the request to be counted as 499", func() bool {
		return testutil.ToFloat64(mustCounter(t, reg, "model", "iris", "499")) == 1
	})
}

// QueueHandler counts requests being forwarded per service.
func TestQueueReportsInflight(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 2)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	}))
	defer be.Close()
	h, p := hostPort(t, strings.TrimPrefix(be.URL, "http://"))
	g, _, srv, _ := newGateway(t, slice("s", "iris", p, map[string]bool{h: true}))
	qsrv := httptest.NewServer(g.QueueHandler())
	defer qsrv.Close()
	a := send(context.Background(), srv.URL+"/seldon/model/iris/predict")
	b := send(context.Background(), srv.URL+"/seldon/model/iris/predict")
	<-arrived
	<-arrived
	if diff := cmp.Diff(map[string]QueueCounts{"model/iris": {Inflight: 2}}, queue(t, qsrv.URL)); diff != "" {
		t.Errorf("queue while forwarding (-want +got):\n%s", diff)
	}
	close(release)
	for _, c := range []<-chan result{a, b} {
		if r := await(t, c); r.code != http.StatusOK {
			t.Errorf("request: %+v", r)
		}
	}
	// Idle but seen recently: still listed, with zeros.
	if diff := cmp.Diff(map[string]QueueCounts{"model/iris": {}}, queue(t, qsrv.URL)); diff != "" {
		t.Errorf("queue after the requests (-want +got):\n%s", diff)
	}
	resp, err := http.Post(qsrv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST to the queue endpoint: %d, want 405", resp.StatusCode)
	}
}

// HoldTimeout 0 keeps the old behaviour: 503 at once.
func TestHoldDisabled(t *testing.T) {
	g, _, srv, _ := newGateway(t)
	g.HoldTimeout = 0
	code, body := post(t, srv.URL+"/seldon/model/iris/predict", "{}")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no ready endpoints") {
		t.Errorf("got %d %q, want an immediate 503", code, body)
	}
	if got := heldGauge(g, "iris"); got != 0 {
		t.Errorf("held gauge = %v", got)
	}
}
