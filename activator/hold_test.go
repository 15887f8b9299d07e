package activator

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A request for a service without a ready endpoint waits, and is forwarded
// once an EndpointSlice event (a new slice, or an update marking an endpoint
// ready) shows one. The wake goes to the Service's scale target.
func TestHoldReleasedWhenEndpointBecomesReady(t *testing.T) {
	tests := []struct {
		name    string
		initial bool // a slice with the endpoint not ready exists at first
		ip, svc string
		target  string
	}{
		{name: "slice created", ip: "127.0.0.8", svc: "iris", target: "Deployment/iris"},
		{name: "endpoint turns ready", initial: true, ip: "127.0.0.9", svc: "wine", target: "SeldonDeployment/wine"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := startBackend(t, tc.ip)
			host, p := hostPort(t, be.addr)
			h := newHarness(t, nil, fronted(tc.svc, map[string]string{AnnotationScaleTarget: tc.target}))
			if tc.initial {
				h.createSlice(t, httpSlice("s", tc.svc, p, map[string]bool{host: false}))
			}
			h.waitFronted(t, tc.svc)

			done := send(context.Background(), h.url+"/seldon/model/"+tc.svc+"/predict")
			eventually(t, "the request to be held", func() bool { return h.held(tc.svc) == 1 })
			snap := h.a.Snapshot()
			if len(snap.Services) != 1 || snap.Services[0].Held != 1 || snap.Services[0].ArrivalsPerSecond <= 0 {
				t.Errorf("demand while held: %+v, want 1 held and arrivals > 0", snap.Services)
			}
			eventually(t, "the wake", func() bool { return len(h.scaler.wakes()) > 0 })
			if diff := cmp.Diff("model/"+tc.target, h.scaler.wakes()[0]); diff != "" {
				t.Errorf("woken target (-want +got):\n%s", diff)
			}
			select {
			case r := <-done:
				t.Fatalf("request finished while no endpoint was ready: %+v", r)
			default:
			}

			ready := httpSlice("s", tc.svc, p, map[string]bool{host: true})
			if tc.initial {
				h.updateSlice(t, ready)
			} else {
				h.createSlice(t, ready)
			}
			r := await(t, done)
			if r.err != nil || r.code != http.StatusOK || r.body != "from "+be.addr {
				t.Fatalf("released request: %+v, want 200 from %s", r, be.addr)
			}
			if got := h.held(tc.svc); got != 0 {
				t.Errorf("held gauge after release = %v", got)
			}
			if got := h.outcome(tc.svc, outcomeReleased); got != 1 {
				t.Errorf("released outcomes = %v, want 1", got)
			}
			if n := testutil.CollectAndCount(h.a.m.holdSecs, "mlscale_activator_hold_seconds"); n != 1 {
				t.Errorf("hold_seconds series = %d, want 1", n)
			}
			// A request now finds the endpoint and is not held.
			if code, body := post(t, h.url+"/seldon/model/"+tc.svc+"/predict", "{}"); code != http.StatusOK {
				t.Errorf("request after release: %d %q", code, body)
			}
			if got := h.outcome(tc.svc, outcomeReleased); got != 1 {
				t.Errorf("released outcomes after an unheld request = %v, want 1", got)
			}
		})
	}
}

// Without a scale target the activator holds but never wakes (KEDA does).
func TestHoldWithoutTargetDoesNotWake(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Hold.QueueTimeout = 300 * time.Millisecond }, fronted("iris", nil))
	h.waitFronted(t, "iris")
	code, _ := post(t, h.url+"/seldon/model/iris/predict", "{}")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("got %d, want 503 after the hold", code)
	}
	if w := h.scaler.wakes(); len(w) != 0 {
		t.Errorf("woke %v without a scale target", w)
	}
}

func TestHoldTimesOut(t *testing.T) {
	h := newHarness(t, nil, fronted("iris", map[string]string{AnnotationQueueTimeout: "200ms"}))
	h.waitFronted(t, "iris")
	r := await(t, send(context.Background(), h.url+"/seldon/model/iris/predict"))
	want := "no ready endpoint for service model/iris after waiting 0.2s (limit activator.mlscale.io/queue-timeout=0.2s); retry after 1s"
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, want) || r.header.Get("Retry-After") != "1" {
		t.Errorf("got %d %q Retry-After %q, want 503 containing %q, Retry-After 1", r.code, r.body, r.header.Get("Retry-After"), want)
	}
	if got := h.outcome("iris", outcomeTimeout); got != 1 {
		t.Errorf("timeout outcomes = %v, want 1", got)
	}
	if got := h.held("iris"); got != 0 {
		t.Errorf("held gauge after the timeout = %v", got)
	}
}

func TestHoldQueueFull(t *testing.T) {
	h := newHarness(t, nil, fronted("iris", map[string]string{AnnotationQueueLength: "2"}), fronted("wine", nil))
	h.waitFronted(t, "iris")
	h.waitFronted(t, "wine")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := send(ctx, h.url+"/seldon/model/iris/predict")
	second := send(ctx, h.url+"/seldon/model/iris/predict")
	eventually(t, "two requests to be held", func() bool { return h.held("iris") == 2 })
	r := await(t, send(context.Background(), h.url+"/seldon/model/iris/predict"))
	want := "hold queue of service model/iris is full (2 waiting, limit activator.mlscale.io/queue-length=2)"
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, want) || r.header.Get("Retry-After") == "" {
		t.Errorf("got %d %q, want 503 with Retry-After containing %q", r.code, r.body, want)
	}
	if got := h.outcome("iris", outcomeFull); got != 1 {
		t.Errorf("full outcomes = %v, want 1", got)
	}
	// Another service has its own queue.
	other := send(ctx, h.url+"/seldon/model/wine/predict")
	eventually(t, "a request for another service to be held", func() bool { return h.held("wine") == 1 })
	cancel()
	for _, c := range []<-chan result{first, second, other} {
		if r := await(t, c); !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled request ended with %+v", r)
		}
	}
}

// A client that gives up leaves the queue at once.
func TestHoldCancelled(t *testing.T) {
	h := newHarness(t, nil, fronted("iris", nil))
	h.waitFronted(t, "iris")
	ctx, cancel := context.WithCancel(context.Background())
	done := send(ctx, h.url+"/seldon/model/iris/predict")
	eventually(t, "the request to be held", func() bool { return h.held("iris") == 1 })
	cancel()
	await(t, done)
	eventually(t, "the held gauge to drop", func() bool { return h.held("iris") == 0 })
	eventually(t, "the cancellation to be counted", func() bool { return h.outcome("iris", outcomeCancelled) == 1 })
	eventually(t, "the request to be counted as 499", func() bool { return h.requests("iris", "499") == 1 })
}

// A flood at zero: the queue takes QueueLength, the rest is refused at once,
// and the activator's goroutines stay bounded by the queue, not the flood.
func TestFloodAtZeroIsBounded(t *testing.T) {
	const queue, flood = 50, 2000
	be := startBackend(t, "127.0.0.13")
	host, p := hostPort(t, be.addr)
	h := newHarness(t, nil, fronted("iris", map[string]string{AnnotationQueueLength: "50"}))
	h.waitFronted(t, "iris")
	base := runtime.NumGoroutine()
	results := make(chan result, flood)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 200}}
	for range flood {
		go func() {
			resp, err := client.Post(h.url+"/seldon/model/iris/predict", "application/json", strings.NewReader("{}"))
			if err != nil {
				results <- result{err: err}
				return
			}
			resp.Body.Close()
			results <- result{code: resp.StatusCode, header: resp.Header}
		}()
	}
	eventually(t, "the queue to fill", func() bool { return h.held("iris") == queue })
	eventually(t, "the overflow to be refused", func() bool { return h.outcome("iris", outcomeFull) == flood-queue })
	h.createSlice(t, httpSlice("s", "iris", p, map[string]bool{host: true}))
	codes := map[int]int{}
	for range flood {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		codes[r.code]++
		if r.code == http.StatusServiceUnavailable && r.header.Get("Retry-After") != "1" {
			t.Errorf("a refusal without Retry-After: %v", r.header)
		}
	}
	if diff := cmp.Diff(map[int]int{200: queue, 503: flood - queue}, codes); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	t.Logf("goroutines: %d before the flood", base)
}

func TestParsePolicy(t *testing.T) {
	def := HoldPolicy{QueueLength: 100, QueueTimeout: time.Minute}
	tests := []struct {
		name    string
		ann     map[string]string
		want    HoldPolicy
		wantErr string
	}{
		{"defaults", nil, def, ""},
		{"all set", map[string]string{AnnotationQueueLength: "5", AnnotationQueueTimeout: "2s", AnnotationScaleTarget: "Deployment/iris"},
			HoldPolicy{QueueLength: 5, QueueTimeout: 2 * time.Second, Target: &ScaleTarget{Kind: "Deployment", Name: "iris", Resource: scaleKinds["Deployment"]}}, ""},
		{"seldon", map[string]string{AnnotationScaleTarget: "SeldonDeployment/iris"},
			HoldPolicy{QueueLength: 100, QueueTimeout: time.Minute, Target: &ScaleTarget{Kind: "SeldonDeployment", Name: "iris", Resource: scaleKinds["SeldonDeployment"]}}, ""},
		{"zero queue turns holding off", map[string]string{AnnotationQueueLength: "0"}, HoldPolicy{QueueLength: 0, QueueTimeout: time.Minute}, ""},
		{"bad length keeps default", map[string]string{AnnotationQueueLength: "lots"}, def, `activator.mlscale.io/queue-length: "lots" is not an integer from 0 to 10000`},
		{"length over the limit", map[string]string{AnnotationQueueLength: "10001"}, def, "queue-length"},
		{"bad timeout", map[string]string{AnnotationQueueTimeout: "60"}, def, `activator.mlscale.io/queue-timeout: "60" is not a duration`},
		{"negative timeout", map[string]string{AnnotationQueueTimeout: "-1s"}, def, "queue-timeout"},
		{"unknown kind", map[string]string{AnnotationScaleTarget: "StatefulSet/iris"}, def, `kind "StatefulSet" is not Deployment or SeldonDeployment`},
		{"no name", map[string]string{AnnotationScaleTarget: "Deployment/"}, def, "want Deployment/NAME"},
		{"two errors", map[string]string{AnnotationQueueLength: "x", AnnotationScaleTarget: "x"}, def, "queue-length: \"x\" is not an integer from 0 to 10000; activator.mlscale.io/scale-target"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePolicy(tc.ann, def)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("policy (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add("5", "2s", "Deployment/iris")
	f.Add("-1", "1h", "SeldonDeployment/")
	f.Add("", "", "/")
	def := HoldPolicy{QueueLength: 100, QueueTimeout: time.Minute}
	f.Fuzz(func(t *testing.T, length, timeout, target string) {
		p, err := ParsePolicy(map[string]string{AnnotationQueueLength: length, AnnotationQueueTimeout: timeout, AnnotationScaleTarget: target}, def)
		if p.QueueLength < 0 || p.QueueLength > MaxQueueLength || p.QueueTimeout <= 0 || p.QueueTimeout > MaxQueueTimeout {
			t.Fatalf("policy out of bounds: %+v (err %v)", p, err)
		}
		if p.Target != nil && (p.Target.Name == "" || p.Target.Resource.Resource == "") {
			t.Fatalf("bad target accepted: %+v", p.Target)
		}
	})
}
