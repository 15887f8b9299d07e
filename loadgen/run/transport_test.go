package run

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// connServer counts the connections a server accepted.
func connServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	return connServerIdle(t, h, 0)
}

func connServerIdle(t *testing.T, h http.HandlerFunc, idle time.Duration) (*httptest.Server, *atomic.Int32) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(h)
	srv.Config.IdleTimeout = idle
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func post(t *testing.T, c *Client, url, body string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), err
}

func TestSyncTransport(t *testing.T) {
	echo := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/chunked":
			w.Write(b)
			w.(http.Flusher).Flush() // forces chunked encoding
			w.Write(b)
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write(b)
		case "/big":
			w.Write(bytes.Repeat(b, 10000))
		default:
			w.Write(b)
		}
	}
	tests := []struct {
		name      string
		path      string
		newConn   bool
		wantBody  func(string) string
		wantConns int32
	}{
		{"keep-alive reuses one connection", "/", false, func(s string) string { return s }, 1},
		{"chunked answers keep the connection usable", "/chunked", false, func(s string) string { return s + s }, 1},
		{"bodies larger than the buffer", "/big", false, func(s string) string { return strings.Repeat(s, 10000) }, 1},
		{"Connection: close from the server", "/close", false, func(s string) string { return s }, 5},
		{"a connection per request", "/", true, func(s string) string { return s }, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, conns := connServer(t, echo)
			c := NewClient(ClientOptions{Conns: 1, NewConnPerRequest: tc.newConn, Timeout: 5 * time.Second})
			for i := range 5 {
				body := strings.Repeat("x", i+1)
				code, got, err := post(t, c, srv.URL+tc.path, body)
				if err != nil || code != 200 || got != tc.wantBody(body) {
					t.Fatalf("request %d: %d %q %v", i, code, got, err)
				}
			}
			if n := conns.Load(); n != tc.wantConns {
				t.Errorf("%d connections, want %d", n, tc.wantConns)
			}
		})
	}
}

// A server that drops idle connections (its keep-alive timeout) must not
// turn the next request into an error.
func TestSyncTransportStaleConnection(t *testing.T) {
	srv, conns := connServerIdle(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, 50*time.Millisecond)
	c := NewClient(ClientOptions{Conns: 1, Timeout: 5 * time.Second})
	for i := range 3 {
		if code, body, err := post(t, c, srv.URL, "{}"); err != nil || code != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want a fresh one after each idle close (3)", n)
	}
}

func TestSyncTransportTimeout(t *testing.T) {
	release := make(chan struct{})
	srv, _ := connServer(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	t.Cleanup(func() { close(release) })
	c := NewClient(ClientOptions{Conns: 1, Timeout: 100 * time.Millisecond})
	start := time.Now()
	_, _, err := post(t, c, srv.URL, "{}")
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("error %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timed out after %s", d)
	}
}
