package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// Every test has its own cluster IP in 127.0.0.0/8 (local without root).
const svcPort = 18080

// syncBuffer is a log sink the proxy and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	t   *testing.T
	cs  *fake.Clientset
	log *syncBuffer
}

func start(t *testing.T) *env {
	t.Helper()
	cs := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(cs, 0)
	log := &syncBuffer{}
	p := New(factory, log)
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of the context ending")
		}
		factory.Shutdown()
		if t.Failed() {
			t.Logf("proxy log:\n%s", log.String())
		}
	})
	return &env{t: t, cs: cs, log: log}
}

// backend is a TCP server on 127.0.0.1 that answers every line with
// "<name>:<line>" and, once the client half-closes, "<name>:eof".
func backend(t *testing.T, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						fmt.Fprintf(c, "%s:eof\n", name)
						return
					}
					fmt.Fprintf(c, "%s:%s", name, line)
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// closedPort is a port on 127.0.0.1 nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func service(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports},
	}
}

func tcpPort(name string, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP}
}

type ep struct {
	ready, terminating bool
}

// slice is an EndpointSlice of svc with one port and one endpoint at
// 127.0.0.1:port.
func slice(ns, svc, name, portName string, port int, e ep) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"127.0.0.1"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready), Terminating: ptr.To(e.terminating)}}},
	}
}

func (e *env) create(objs ...any) {
	e.t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			_, err = e.cs.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *discoveryv1.EndpointSlice:
			_, err = e.cs.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) updateSlice(s *discoveryv1.EndpointSlice) {
	e.t.Helper()
	if _, err := e.cs.DiscoveryV1().EndpointSlices(s.Namespace).Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hit connects to addr, sends one line and returns which backend answered
// ("" when the connection failed or was closed without an answer).
func hit(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return ""
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return ""
	}
	name, _, _ := strings.Cut(line, ":")
	return name
}

func addr(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

func TestEchoAndHalfClose(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.50"
	e.create(service("ns", "echo", ip, tcpPort("http", svcPort)),
		slice("ns", "echo", "echo-a", "http", backend(t, "a"), ep{ready: true}))
	eventually(t, "the service to answer", func() bool { return hit(addr(ip, svcPort)) == "a" })

	c, err := net.Dial("tcp", addr(ip, svcPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	// Interactive: one line out, one line back.
	io.WriteString(c, "hello\n")
	if got, err := r.ReadString('\n'); err != nil || got != "a:hello\n" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	// Then a large write and a half-close: the backend still answers all of
	// it, and its own end of stream reaches the client.
	big := strings.Repeat("x", 256<<10) + "\n"
	go func() {
		io.WriteString(c, big+"last\n")
		c.(*net.TCPConn).CloseWrite()
	}()
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading after the half-close: %v", err)
	}
	if want := "a:" + big + "a:last\na:eof\n"; string(rest) != want {
		t.Errorf("after the half-close got %d bytes ending %q, want %d bytes ending %q",
			len(rest), tail(string(rest)), len(want), tail(want))
	}
}

func tail(s string) string {
	if len(s) > 20 {
		return s[len(s)-20:]
	}
	return s
}

func TestRoundRobin(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.51"
	e.create(service("ns", "rr", ip, tcpPort("", svcPort)),
		slice("ns", "rr", "rr-a", "", backend(t, "a"), ep{ready: true}),
		slice("ns", "rr", "rr-b", "", backend(t, "b"), ep{ready: true}))
	seen := map[string]bool{}
	eventually(t, "both endpoints to answer", func() bool {
		seen[hit(addr(ip, svcPort))] = true
		return seen["a"] && seen["b"]
	})
	count := map[string]int{}
	prev := ""
	for i := 0; i < 6; i++ {
		got := hit(addr(ip, svcPort))
		if got == prev {
			t.Errorf("connection %d went to %q again", i, got)
		}
		prev = got
		count[got]++
	}
	if count["a"] != 3 || count["b"] != 3 {
		t.Errorf("6 connections spread %v, want 3 each", count)
	}
}

func TestSkipsNotReadyAndTerminating(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.52"
	b := slice("ns", "s", "s-b", "web", backend(t, "b"), ep{ready: true})
	e.create(service("ns", "s", ip, tcpPort("web", svcPort)),
		slice("ns", "s", "s-a", "web", backend(t, "a"), ep{ready: true}), b,
		slice("ns", "s", "s-c", "web", backend(t, "c"), ep{ready: true, terminating: true}),
		// A port of another name is not this Service port's endpoint.
		slice("ns", "s", "s-d", "metrics", backend(t, "d"), ep{ready: true}))
	seen := map[string]bool{}
	eventually(t, "both ready endpoints to answer", func() bool {
		seen[hit(addr(ip, svcPort))] = true
		return seen["a"] && seen["b"]
	})
	if seen["c"] || seen["d"] {
		t.Errorf("a terminating endpoint or another port's endpoint was used: %v", seen)
	}
	b.Endpoints[0].Conditions.Ready = ptr.To(false)
	e.updateSlice(b)
	eventually(t, "only a to answer", func() bool {
		for i := 0; i < 4; i++ {
			if hit(addr(ip, svcPort)) != "a" {
				return false
			}
		}
		return true
	})
}

func TestNoReadyEndpointClosesConnection(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.53"
	e.create(service("ns", "down", ip, tcpPort("", svcPort)),
		slice("ns", "down", "down-a", "", backend(t, "a"), ep{ready: false}))
	var c net.Conn
	eventually(t, "the listener", func() bool {
		var err error
		c, err = net.Dial("tcp", addr(ip, svcPort))
		return err == nil
	})
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("read %d bytes, %v; want the proxy to close the connection (EOF)", n, err)
	}
}

func TestDeleteAndPortChangeCloseListener(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.54"
	svc := service("ns", "gone", ip, tcpPort("", svcPort))
	e.create(svc, slice("ns", "gone", "gone-a", "", backend(t, "a"), ep{ready: true}))
	eventually(t, "the service to answer", func() bool { return hit(addr(ip, svcPort)) == "a" })

	svc.Spec.Ports[0].Port = svcPort + 1
	if _, err := e.cs.CoreV1().Services("ns").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new port to answer", func() bool { return hit(addr(ip, svcPort+1)) == "a" })
	if _, err := net.DialTimeout("tcp", addr(ip, svcPort), 2*time.Second); err == nil {
		t.Error("the old port still accepts connections after the port change")
	}

	if err := e.cs.CoreV1().Services("ns").Delete(context.Background(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the listener to close", func() bool {
		c, err := net.DialTimeout("tcp", addr(ip, svcPort+1), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

func TestDialFailureFallsThrough(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.55"
	e.create(service("ns", "half", ip, tcpPort("", svcPort)),
		slice("ns", "half", "half-dead", "", closedPort(t), ep{ready: true}),
		slice("ns", "half", "half-a", "", backend(t, "a"), ep{ready: true}))
	// Both slices in the cache: the proxy has logged a failed dial.
	eventually(t, "a dial to the dead endpoint", func() bool {
		hit(addr(ip, svcPort))
		return strings.Contains(e.log.String(), "dialing endpoint")
	})
	for i := 0; i < 4; i++ {
		if got := hit(addr(ip, svcPort)); got != "a" {
			t.Errorf("connection %d: answered by %q, want a (after the dead endpoint)", i, got)
		}
	}
}

func TestKubernetesServiceOnlyWithEndpoints(t *testing.T) {
	e := start(t)
	const kip, oip = "127.0.0.56", "127.0.0.57"
	e.create(service("default", "kubernetes", kip, tcpPort("https", svcPort)),
		service("ns", "other", oip, tcpPort("", svcPort)),
		slice("ns", "other", "other-a", "", backend(t, "o"), ep{ready: true}))
	eventually(t, "the other service", func() bool { return hit(addr(oip, svcPort)) == "o" })
	if c, err := net.DialTimeout("tcp", addr(kip, svcPort), 2*time.Second); err == nil {
		c.Close()
		t.Error("default/kubernetes is proxied without endpoints")
	}
	e.create(slice("default", "kubernetes", "kubernetes", "https", backend(t, "api"), ep{ready: true}))
	eventually(t, "default/kubernetes with an endpoint", func() bool { return hit(addr(kip, svcPort)) == "api" })
}

func TestBindErrorIsLoggedAndRetried(t *testing.T) {
	e := start(t)
	const ip = "127.0.0.58"
	squatter, err := net.Listen("tcp", addr(ip, svcPort))
	if err != nil {
		t.Fatal(err)
	}
	svc := service("ns", "busy", ip, tcpPort("", svcPort), corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	e.create(svc, slice("ns", "busy", "busy-a", "", backend(t, "a"), ep{ready: true}))
	eventually(t, "the bind error in the log", func() bool {
		return strings.Contains(e.log.String(), `service ns/busy port "" on 127.0.0.58: listening on 127.0.0.58:18080`)
	})
	if !strings.Contains(e.log.String(), "only TCP is proxied") {
		t.Errorf("the UDP port was not reported:\n%s", e.log.String())
	}
	squatter.Close()
	// An update retries the listen.
	svc.Labels = map[string]string{"touched": "yes"}
	if _, err := e.cs.CoreV1().Services("ns").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the service to answer once the address is free", func() bool { return hit(addr(ip, svcPort)) == "a" })
	if n := strings.Count(e.log.String(), "only TCP is proxied"); n != 1 {
		t.Errorf("the UDP port was reported %d times, want once", n)
	}
}
