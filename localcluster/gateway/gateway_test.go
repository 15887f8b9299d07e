package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// activatorSlice lists addr as the activator Service's one endpoint.
func activatorSlice(name, addr string, ready bool) *discoveryv1.EndpointSlice {
	host, port, _ := net.SplitHostPort(addr)
	var p int32
	fmt.Sscan(port, &p)
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "mlscale", Labels: map[string]string{discoveryv1.LabelServiceName: "mlscale-activator"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(p), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}},
	}
}

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Every request goes, path unchanged, to the activator's ready endpoint; with
// none ready the gateway answers 503 at once (no hold: that is the
// activator's job), and follows the endpoint when it turns ready.
func TestForwardsEverythingToTheActivator(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.20:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "activator got %s", r.URL.RequestURI())
	})}
	go func() { _ = backend.Serve(l) }()
	defer backend.Close()

	cs := fake.NewClientset(activatorSlice("a", l.Addr().String(), false))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gw, err := NewForClient(ctx, cs, prometheus.NewRegistry(), ActivatorService, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()

	code, body := post(t, srv.URL+"/seldon/model/iris/api/v1.0/predictions")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "service mlscale/mlscale-activator has no ready endpoint (holding is off") {
		t.Errorf("no ready activator: %d %q, want an immediate 503 naming it", code, body)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("mlscale").Update(ctx, activatorSlice("a", l.Addr().String(), true), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body = post(t, srv.URL+"/seldon/model/iris/api/v1.0/predictions?x=1")
		if code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if want := "activator got /seldon/model/iris/api/v1.0/predictions?x=1"; code != http.StatusOK || body != want {
		t.Errorf("ready activator: %d %q, want 200 %q", code, body, want)
	}
}
