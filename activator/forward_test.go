package activator

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// exchange is what one request looked like at the endpoint and at the
// client.
type exchange struct {
	Upstream        string // method, target, host, headers, body as the endpoint saw them
	Status          int
	Header, Trailer string
	Body            string
}

func headerText(h http.Header, skip ...string) string {
	var lines []string
	for k, vv := range h {
		if contains(skip, k) {
			continue
		}
		lines = append(lines, k+": "+strings.Join(vv, " | "))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// The HTTP/1.1 fast path sends and answers what httputil.ReverseProxy
// (the general path, with net/http's Transport) does, request by request:
// hop-by-hop headers and those Connection names dropped both ways,
// Forwarded dropped, X-Forwarded-* replaced, Te: trailers kept, the prefix
// stripped with the query untouched, trailers, streamed answers, HEAD and
// 204 answers.
func TestFastPathMatchesReverseProxy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.16:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = fmt.Sprintf("%s %s host=%s len=%d\n%s\n%s", r.Method, r.RequestURI, r.Host, r.ContentLength, headerText(r.Header), body)
		mu.Unlock()
		switch r.URL.Path {
		case "/trailers":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "data")
			w.Header().Set("X-Sum", "42")
		case "/stream":
			for i := range 3 {
				fmt.Fprintf(w, "chunk %d\n", i)
				w.(http.Flusher).Flush()
			}
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "dropped")
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("X-App", "kept")
			w.Header().Set("Content-Length", fmt.Sprint(len(body)+3))
			w.Write(append(body, "!!!"...))
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	host, p := hostPort(t, l.Addr().String())
	fast := newHarness(t, nil, fronted("iris", nil), httpSlice("s", "iris", p, map[string]bool{host: true}))
	general := newHarness(t, func(c *Config) { c.NetHTTPTransport = true }, fronted("iris", nil), httpSlice("s", "iris", p, map[string]bool{host: true}))

	type request struct {
		method, path, body string
		header             http.Header
	}
	requests := []request{
		{"POST", "/seldon/model/iris/echo?x=1&y=%2F", "hello", http.Header{
			"Connection": {"X-Custom-Hop"}, "X-Custom-Hop": {"1"}, "Te": {"trailers, deflate"},
			"X-Forwarded-For": {"10.0.0.1"}, "Forwarded": {"for=10.0.0.1"}, "Proxy-Authorization": {"Basic eA=="},
			"X-Multi": {"a", "b"}, "Content-Type": {"application/json"},
		}},
		{"GET", "/seldon/model/iris/echo", "", nil},
		{"HEAD", "/seldon/model/iris/echo", "", nil},
		{"POST", "/seldon/model/iris", "{}", nil},
		{"POST", "/seldon/model/iris/trailers", "{}", nil},
		{"GET", "/seldon/model/iris/stream", "", nil},
		{"DELETE", "/seldon/model/iris/empty", "", nil},
		{"PUT", "/seldon/model/iris/echo", "", http.Header{"X-Envoy-Original-Path": {"/from/envoy"}}},
	}
	do := func(base string, rq request) exchange {
		t.Helper()
		req, err := http.NewRequest(rq.method, base+rq.path, strings.NewReader(rq.body))
		if err != nil {
			t.Fatal(err)
		}
		if rq.body == "" {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		req.Host = "model.example"
		for k, vv := range rq.header {
			req.Header[k] = vv
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		ex := exchange{Upstream: seen, Status: resp.StatusCode, Header: headerText(resp.Header, "Date"), Trailer: headerText(resp.Trailer), Body: string(body)}
		seen = ""
		return ex
	}
	for _, rq := range requests {
		t.Run(rq.method+" "+rq.path, func(t *testing.T) {
			want := do(general.url, rq)
			got := do(fast.url, rq)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("fast path vs ReverseProxy (-ReverseProxy +fast):\n%s", diff)
			}
		})
	}
	// And what both send, spelled out for the first request.
	got := do(fast.url, requests[0])
	for _, want := range []string{
		"POST /echo?x=1&y=%2F host=model.example len=5",
		"X-Forwarded-For: 127.0.0.1\n", "X-Forwarded-Host: model.example", "X-Forwarded-Proto: http",
		"X-Envoy-Original-Path: /seldon/model/iris/echo", "Te: trailers", "X-Multi: a | b",
	} {
		if !strings.Contains(got.Upstream, want) {
			t.Errorf("upstream request lacks %q:\n%s", want, got.Upstream)
		}
	}
	for _, gone := range []string{"X-Custom-Hop", "Connection", "Forwarded:", "Proxy-Authorization"} {
		if strings.Contains(got.Upstream, gone) {
			t.Errorf("upstream request has %q:\n%s", gone, got.Upstream)
		}
	}
	if strings.Contains(got.Header, "X-Hop") || strings.Contains(got.Header, "Keep-Alive") || !strings.Contains(got.Header, "X-App: kept") || got.Body != "hello!!!" {
		t.Errorf("answer: %+v", got)
	}
}

// An answer cut by the endpoint (it dies mid-body) reaches the client as a
// cut answer, never as a whole one, on the fast path and the general one.
func TestCutAnswerIsNotWhole(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.17:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/chunked" {
			io.WriteString(w, "part")
			w.(http.Flusher).Flush()
		} else {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "ten bytes.")
			w.(http.Flusher).Flush()
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	host, p := hostPort(t, l.Addr().String())
	for _, nethttp := range []bool{false, true} {
		h := newHarness(t, func(c *Config) { c.NetHTTPTransport = nethttp }, fronted("iris", nil), httpSlice("s", "iris", p, map[string]bool{host: true}))
		for _, path := range []string{"/sized", "/chunked"} {
			resp, err := http.Post(h.url+"/seldon/model/iris"+path, "application/json", strings.NewReader("{}"))
			if err != nil {
				continue // cut before the answer started: also not whole
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Errorf("net/http=%v %s: answer read as whole (%d, %q)", nethttp, path, resp.StatusCode, body)
			}
		}
	}
}
