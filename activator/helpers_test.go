package activator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
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

func startBackend(t testing.TB, ip string) *backend {
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

func hostPort(t testing.TB, addr string) (string, int32) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	fmt.Sscan(p, &n)
	return h, n
}

// fronted is a Service the activator fronts, with extra annotations.
func fronted(name string, ann map[string]string) *corev1.Service {
	a := map[string]string{AnnotationEnabled: "true"}
	for k, v := range ann {
		a[k] = v
	}
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "model", Annotations: a}}
}

func plainService(name string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "model"}}
}

type port struct {
	name string
	port int32
}

func slice(name, svc string, ports []port, eps map[string]bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "model", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.name), Port: ptr.To(p.port), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	for addr, ready := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}})
	}
	return s
}

func httpSlice(name, svc string, p int32, eps map[string]bool) *discoveryv1.EndpointSlice {
	return slice(name, svc, []port{{"http", p}}, eps)
}

// fakeScaler records wakes; data-driven: err is returned when set.
type fakeScaler struct {
	mu    sync.Mutex
	calls []string
	err   error
}

func (f *fakeScaler) ScaleFromZero(_ context.Context, ns string, t *ScaleTarget) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, ns+"/"+t.Kind+"/"+t.Name)
	return f.err == nil, f.err
}

func (f *fakeScaler) wakes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

type harness struct {
	a      *Activator
	cs     *fake.Clientset
	url    string
	reg    *prometheus.Registry
	scaler *fakeScaler
}

// newHarness runs an activator over a fake clientset holding objs, served
// on loopback.
func newHarness(t testing.TB, mutate func(*Config), objs ...runtime.Object) *harness {
	t.Helper()
	cs := fake.NewClientset(objs...)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := &harness{cs: cs, reg: prometheus.NewRegistry(), scaler: &fakeScaler{}}
	cfg := NewConfig()
	cfg.Registerer, cfg.Scaler, cfg.Replica = h.reg, h.scaler, "test-0"
	cfg.Logger = slog.New(slog.DiscardHandler)
	if mutate != nil {
		mutate(&cfg)
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	a, err := New(factory, cfg)
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	if err := a.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	h.a = a
	// HTTP/1.1 and h2c, as Serve serves the proxy.
	srv := httptest.NewUnstartedServer(a)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	h.url = srv.URL
	return h
}

func (h *harness) createSlice(t *testing.T, s *discoveryv1.EndpointSlice) {
	t.Helper()
	if _, err := h.cs.DiscoveryV1().EndpointSlices(s.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) updateSlice(t *testing.T, s *discoveryv1.EndpointSlice) {
	t.Helper()
	if _, err := h.cs.DiscoveryV1().EndpointSlices(s.Namespace).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) held(svc string) float64 {
	return testutil.ToFloat64(h.a.m.held.WithLabelValues("model", svc))
}

func (h *harness) outcome(svc, o string) float64 {
	return testutil.ToFloat64(h.a.m.outcomes.WithLabelValues("model", svc, o))
}

func (h *harness) requests(svc, code string) float64 {
	return testutil.ToFloat64(h.a.m.requests.WithLabelValues("model", svc, code))
}

// waitFronted waits until the informer has delivered the Service.
func (h *harness) waitFronted(t *testing.T, svc string) {
	t.Helper()
	eventually(t, "service "+svc+" to be fronted", func() bool { return h.a.table.get("model/"+svc) != nil })
}

// result is one finished request.
type result struct {
	code   int
	body   string
	header http.Header
	err    error
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
		done <- result{code: resp.StatusCode, body: string(b), header: resp.Header, err: err}
	}()
	return done
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
