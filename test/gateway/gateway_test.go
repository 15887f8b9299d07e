package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// backend is a real HTTP server on its own loopback address that records
// what it served.
type backend struct {
	addr string
	srv  *http.Server
	mu   sync.Mutex
	hits []string
}

func startBackend(t *testing.T, ip string) *backend {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: l.Addr().String()}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.hits = append(b.hits, r.Method+" "+r.URL.RequestURI()+" "+string(body))
		b.mu.Unlock()
		fmt.Fprintf(w, "from %s", b.addr)
	})}
	go func() { _ = b.srv.Serve(l) }()
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.hits)
}

func slice(name, svc string, port int32, eps map[string]bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "model", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for addr, ready := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}})
	}
	return s
}

func hostPort(t *testing.T, addr string) (string, int32) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	fmt.Sscan(p, &n)
	return h, n
}

func newGateway(t *testing.T, objs ...*discoveryv1.EndpointSlice) (*Gateway, *fake.Clientset, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	cs := fake.NewClientset()
	for _, o := range objs {
		if _, err := cs.DiscoveryV1().EndpointSlices(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	reg := prometheus.NewRegistry()
	g, err := NewForClient(ctx, cs, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	return g, cs, srv, reg
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRoutesToReadyEndpoints(t *testing.T) {
	ready := startBackend(t, "127.0.0.2")
	notReady := startBackend(t, "127.0.0.3")
	h1, p1 := hostPort(t, ready.addr)
	h2, _ := hostPort(t, notReady.addr)
	// Both backends listen on different ports; one slice per port.
	_, p2 := hostPort(t, notReady.addr)
	_, _, srv, reg := newGateway(t,
		slice("iris-a", "iris", p1, map[string]bool{h1: true}),
		slice("iris-b", "iris", p2, map[string]bool{h2: false}),
	)
	for i := 0; i < 20; i++ {
		code, body := post(t, srv.URL+"/seldon/model/iris/api/v1.0/predictions?x=1", `{"data":{"ndarray":[[1,2,3,4]]}}`)
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
	if got := testutil.ToFloat64(mustCounter(t, reg, "model", "iris", "200")); got != 20 {
		t.Errorf("mlscale_gateway_requests_total{code=200} = %v, want 20", got)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, ns, svc, code string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mlscale_gateway_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == ns && labels["service"] == svc && labels["code"] == code {
				c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
				c.Add(m.GetCounter().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no mlscale_gateway_requests_total{namespace=%q,service=%q,code=%q}", ns, svc, code)
	return nil
}

func TestErrors(t *testing.T) {
	g, _, srv, _ := newGateway(t, slice("empty", "empty", 9000, map[string]bool{"127.0.0.9": false}))
	g.HoldTimeout = 0 // holding is TestHold*'s
	tests := []struct {
		name, path string
		want       int
		wantBody   string
	}{
		{"not a seldon path", "/api/v1.0/predictions", http.StatusNotFound, "routes /seldon/"},
		{"no service name", "/seldon/model/", http.StatusNotFound, "routes /seldon/"},
		{"unknown service", "/seldon/model/nope/api/v1.0/predictions", http.StatusServiceUnavailable, "no ready endpoints"},
		{"no ready endpoint", "/seldon/model/empty/api/v1.0/predictions", http.StatusServiceUnavailable, "no ready endpoints"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(t, srv.URL+tc.path, "{}")
			if code != tc.want || !strings.Contains(body, tc.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", code, body, tc.want, tc.wantBody)
			}
		})
	}
}

// An endpoint whose process just went away (connection refused) while its
// slice still lists it: requests go to the live one and none fails.
func TestRetriesEndpointThatRefuses(t *testing.T) {
	live := startBackend(t, "127.0.0.4")
	dead, err := net.Listen("tcp", "127.0.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	hl, pl := hostPort(t, live.addr)
	hd, pd := hostPort(t, deadAddr)
	_, _, srv, reg := newGateway(t,
		slice("a", "iris", pl, map[string]bool{hl: true}),
		slice("b", "iris", pd, map[string]bool{hd: true}),
	)
	for i := 0; i < 40; i++ {
		code, body := post(t, srv.URL+"/seldon/model/iris/predict", "{}")
		if code != http.StatusOK {
			t.Fatalf("request %d failed: %d %q", i, code, body)
		}
	}
	if live.count() != 40 {
		t.Errorf("live endpoint served %d of 40", live.count())
	}
	if n := testutil.CollectAndCount(reg, "mlscale_gateway_retries_total"); n == 0 {
		t.Error("no retry was counted although an endpoint refused connections")
	}
}

// Scale-out and scale-in as EndpointSlice updates: traffic follows.
func TestFollowsEndpointChanges(t *testing.T) {
	a := startBackend(t, "127.0.0.6")
	b := startBackend(t, "127.0.0.7")
	ha, pa := hostPort(t, a.addr)
	hb, pb := hostPort(t, b.addr)
	_, cs, srv, _ := newGateway(t, slice("a", "iris", pa, map[string]bool{ha: true}))
	code, _ := post(t, srv.URL+"/seldon/model/iris/p", "{}")
	if code != http.StatusOK || a.count() != 1 {
		t.Fatalf("first request: %d, a served %d", code, a.count())
	}
	ctx := context.Background()
	if _, err := cs.DiscoveryV1().EndpointSlices("model").Create(ctx, slice("b", "iris", pb, map[string]bool{hb: true}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cs.DiscoveryV1().EndpointSlices("model").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.count() == 0 && time.Now().Before(deadline) {
		if code, body := post(t, srv.URL+"/seldon/model/iris/p", "{}"); code != http.StatusOK {
			t.Fatalf("request during the change failed: %d %q", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := a.count()
	for i := 0; i < 10; i++ {
		post(t, srv.URL+"/seldon/model/iris/p", "{}")
	}
	if a.count() != before || b.count() < 10 {
		t.Errorf("after the change: a served %d more, b served %d", a.count()-before, b.count())
	}
}
