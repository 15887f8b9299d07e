package activator

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestRoutesToReadyEndpoints(t *testing.T) {
	ready := startBackend(t, "127.0.0.2")
	notReady := startBackend(t, "127.0.0.3")
	h1, p1 := hostPort(t, ready.addr)
	h2, p2 := hostPort(t, notReady.addr)
	h := newHarness(t, nil, fronted("iris", nil),
		httpSlice("iris-a", "iris", p1, map[string]bool{h1: true}),
		httpSlice("iris-b", "iris", p2, map[string]bool{h2: false}),
	)
	for i := range 20 {
		code, body := post(t, h.url+"/seldon/model/iris/api/v1.0/predictions?x=1", `{"data":{"ndarray":[[1,2,3,4]]}}`)
		if code != http.StatusOK || body != "from "+ready.addr {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if notReady.count() != 0 {
		t.Errorf("the not-ready endpoint got %d requests", notReady.count())
	}
	ready.mu.Lock()
	if diff := cmp.Diff(`POST /api/v1.0/predictions?x=1 {"data":{"ndarray":[[1,2,3,4]]}}`, ready.hits[0]); diff != "" {
		t.Errorf("forwarded request (-want +got):\n%s", diff)
	}
	ready.mu.Unlock()
	// Counted once ServeHTTP returns, just after the client has its answer.
	eventually(t, "mlscale_activator_requests_total{code=200} to reach 20", func() bool { return h.requests("iris", "200") == 20 })
}

func TestErrors(t *testing.T) {
	h := newHarness(t, nil, fronted("empty", map[string]string{AnnotationQueueLength: "0"}),
		plainService("plain"))
	tests := []struct {
		name, path string
		want       int
		wantBody   string
	}{
		{"not a seldon path", "/api/v1.0/predictions", http.StatusNotFound, "routes /seldon/{namespace}/{name}/"},
		{"no service name", "/seldon/model/", http.StatusNotFound, "want /seldon/{namespace}/{name}/"},
		{"unknown service", "/seldon/model/nope/api/v1.0/predictions", http.StatusNotFound, "service model/nope is not fronted here (annotate it activator.mlscale.io/enabled=true)"},
		{"service not annotated", "/seldon/model/plain/predict", http.StatusNotFound, "service model/plain is not fronted here"},
		{"no ready endpoint, holding off", "/seldon/model/empty/api/v1.0/predictions", http.StatusServiceUnavailable, "service model/empty has no ready endpoint (holding is off: activator.mlscale.io/queue-length=0)"},
	}
	h.waitFronted(t, "empty")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(t, h.url+tc.path, "{}")
			if code != tc.want || !strings.Contains(body, tc.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", code, body, tc.want, tc.wantBody)
			}
		})
	}
}

// An endpoint whose process just went away (connection refused) while its
// slice still lists it: with retries, requests go to the live one and none
// fails; with retries off, some fail with 502 naming the service.
func TestRetriesEndpointThatRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		retries int
	}{{"retries on", 2}, {"retries off", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			live := startBackend(t, "127.0.0.4")
			dead, err := net.Listen("tcp", "127.0.0.5:0")
			if err != nil {
				t.Fatal(err)
			}
			deadAddr := dead.Addr().String()
			dead.Close()
			hl, pl := hostPort(t, live.addr)
			hd, pd := hostPort(t, deadAddr)
			h := newHarness(t, func(c *Config) { c.Retries = tc.retries }, fronted("iris", nil),
				httpSlice("a", "iris", pl, map[string]bool{hl: true}),
				httpSlice("b", "iris", pd, map[string]bool{hd: true}),
			)
			failed := 0
			for i := range 40 {
				code, body := post(t, h.url+"/seldon/model/iris/predict", "{}")
				if code != http.StatusOK {
					if tc.retries > 0 || code != http.StatusBadGateway || !strings.Contains(body, "forwarding to service model/iris failed") {
						t.Fatalf("request %d: %d %q", i, code, body)
					}
					failed++
				}
			}
			retried := testutil.CollectAndCount(h.reg, "mlscale_activator_retries_total")
			if tc.retries > 0 && (live.count() != 40 || retried == 0) {
				t.Errorf("live endpoint served %d of 40, %d retry series", live.count(), retried)
			}
			if tc.retries == 0 && (failed == 0 || retried != 0) {
				t.Errorf("retries off: %d failed (want some: the dead endpoint is idle, so least-outstanding picks it), %d retry series", failed, retried)
			}
		})
	}
}

// Scale-out and scale-in as EndpointSlice updates: traffic follows.
func TestFollowsEndpointChanges(t *testing.T) {
	a := startBackend(t, "127.0.0.6")
	b := startBackend(t, "127.0.0.7")
	ha, pa := hostPort(t, a.addr)
	hb, pb := hostPort(t, b.addr)
	h := newHarness(t, nil, fronted("iris", nil), httpSlice("a", "iris", pa, map[string]bool{ha: true}))
	code, _ := post(t, h.url+"/seldon/model/iris/p", "{}")
	if code != http.StatusOK || a.count() != 1 {
		t.Fatalf("first request: %d, a served %d", code, a.count())
	}
	h.createSlice(t, httpSlice("b", "iris", pb, map[string]bool{hb: true}))
	if err := h.cs.DiscoveryV1().EndpointSlices("model").Delete(context.Background(), "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.count() == 0 && time.Now().Before(deadline) {
		if code, body := post(t, h.url+"/seldon/model/iris/p", "{}"); code != http.StatusOK {
			t.Fatalf("request during the change failed: %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := a.count()
	for range 10 {
		post(t, h.url+"/seldon/model/iris/p", "{}")
	}
	if a.count() != before || b.count() < 10 {
		t.Errorf("after the change: a served %d more, b served %d", a.count()-before, b.count())
	}
}

// Least outstanding: with one endpoint stuck on a slow request, the next
// requests all go to the other one.
func TestLeastOutstanding(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	served := map[string]int{}
	start := func(ip string) string {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			mu.Lock()
			served[addr]++
			mu.Unlock()
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
		return addr
	}
	x, y := start("127.0.0.10"), start("127.0.0.11")
	hx, px := hostPort(t, x)
	hy, py := hostPort(t, y)
	h := newHarness(t, nil, fronted("iris", nil),
		httpSlice("x", "iris", px, map[string]bool{hx: true}), httpSlice("y", "iris", py, map[string]bool{hy: true}))
	slow := send(context.Background(), h.url+"/seldon/model/iris/slow")
	st := h.a.table.get("model/iris")
	var busy string
	eventually(t, "the slow request to be in flight", func() bool {
		for _, e := range st.endpoints(false) {
			if e.inflight.Load() == 1 {
				busy = e.addr
				return true
			}
		}
		return false
	})
	for range 20 {
		if code, _ := post(t, h.url+"/seldon/model/iris/fast", "{}"); code != http.StatusOK {
			t.Fatal(code)
		}
	}
	mu.Lock()
	if served[busy] != 0 {
		t.Errorf("the endpoint busy with a slow request got %d of 20 fast ones", served[busy])
	}
	mu.Unlock()
	close(release)
	if r := await(t, slow); r.code != http.StatusOK {
		t.Errorf("slow request: %+v", r)
	}
	for _, e := range st.endpoints(false) {
		if n := e.inflight.Load(); n != 0 {
			t.Errorf("endpoint %s in flight after all answers: %d", e.addr, n)
		}
	}
}

// gRPC passes through as HTTP/2 without TLS (h2c), to the port named grpc,
// routed by Seldon's `seldon`/`namespace` metadata, trailers included.
func TestH2CPassThrough(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.12:0")
	if err != nil {
		t.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protocols, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		fmt.Fprintf(w, "%s %s %s", r.Proto, r.URL.Path, body)
		w.Header().Set("Grpc-Status", "0")
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	hg, pg := hostPort(t, l.Addr().String())
	hb := startBackend(t, "127.0.0.12")
	_, ph := hostPort(t, hb.addr)
	h := newHarness(t, nil, fronted("iris", nil),
		slice("s", "iris", []port{{"http", ph}, {"grpc", pg}}, map[string]bool{hg: true}))

	client := &http.Client{Transport: &http.Transport{Protocols: &protocols}}
	req, _ := http.NewRequest(http.MethodPost, h.url+"/inference.GRPCInferenceService/ModelInfer", strings.NewReader("frame"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("seldon", "iris")
	req.Header.Set("namespace", "model")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "HTTP/2.0 /inference.GRPCInferenceService/ModelInfer frame"; resp.StatusCode != 200 || string(body) != want {
		t.Errorf("gRPC through the activator: %d %q, want 200 %q", resp.StatusCode, body, want)
	}
	if got := resp.Trailer.Get("Grpc-Status"); got != "0" {
		t.Errorf("trailer Grpc-Status = %q, want 0", got)
	}
	// Without the metadata the activator cannot know the model.
	req, _ = http.NewRequest(http.MethodPost, h.url+"/inference.GRPCInferenceService/ModelInfer", strings.NewReader("frame"))
	req.Header.Set("Content-Type", "application/grpc")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "`seldon` and `namespace` metadata") {
		t.Errorf("gRPC without metadata: %d %q", resp.StatusCode, body)
	}
}

// The pooled HTTP/1.1 transport: a 2 MB body each way passes through
// intact; a connection the endpoint closed while idle (its keep-alive
// timeout) is not an error for the next request, which is retried on a
// fresh connection; and net/http's Transport does the same job when asked.
func TestH1Transport(t *testing.T) {
	for _, nethttp := range []bool{false, true} {
		t.Run(fmt.Sprintf("net/http=%v", nethttp), func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.15:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{IdleTimeout: 50 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				w.Write(body)
			})}
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(func() { srv.Close() })
			host, p := hostPort(t, l.Addr().String())
			h := newHarness(t, func(c *Config) { c.NetHTTPTransport = nethttp }, fronted("iris", nil), httpSlice("s", "iris", p, map[string]bool{host: true}))
			big := strings.Repeat("0123456789abcdef", 128<<10)
			for i, sent := range []string{big, big, big, "{}", "{}"} {
				code, body := post(t, h.url+"/seldon/model/iris/echo", sent)
				if code != http.StatusOK || body != sent {
					t.Fatalf("request %d: %d, %d bytes back of %d: %.300s", i, code, len(body), len(sent), body)
				}
				time.Sleep(150 * time.Millisecond) // the endpoint closes the idle connection
			}
			if n := h.requests("iris", "200"); n < 4 {
				t.Errorf("%v answers counted", n)
			}
		})
	}
}
