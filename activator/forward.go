package activator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path. A plain HTTP/1.1 request of known length (what
// every REST client sends) is forwarded by serveH1 instead of
// httputil.ReverseProxy: the request head is written straight from the
// incoming request onto a pooled connection to the endpoint, without the
// clone of the request and its headers, the httptrace context, the
// per-request context values and the status-recording writer that the
// general path costs. What reaches the endpoint is what ReverseProxy with
// SetXForwarded sends: hop-by-hop headers and those named by Connection
// dropped, Te: trailers kept, Forwarded dropped, X-Forwarded-For, -Host and
// -Proto replaced by the client's address, Host and http, no User-Agent
// added.
// Its answer goes back as ReverseProxy would: hop-by-hop headers dropped,
// announced trailers passed on, answers of unknown length flushed on every
// write, and a failure once the answer has started aborts the client's
// connection (http.ErrAbortHandler) so a cut answer never looks whole.
// gRPC, h2c, protocol upgrades, chunked requests and absolute-form targets
// take the general path.

// h1Target returns the request-target to send upstream when r can take
// the fast path, and the original path for X-Envoy-Original-Path ("" when
// the path is forwarded unchanged).
func (a *Activator) h1Target(r *http.Request, prefix int) (uri, original string, ok bool) {
	if a.pooled == nil || r.ProtoMajor != 1 || r.ContentLength < 0 || len(r.TransferEncoding) > 0 {
		return "", "", false
	}
	if len(r.Header["Upgrade"]) > 0 || !strings.HasPrefix(r.RequestURI, "/") {
		return "", "", false
	}
	if prefix == 0 {
		return r.RequestURI, "", true
	}
	// The raw target must start with the prefix the route matched in the
	// decoded path (namespace and service names never need escaping).
	if len(r.RequestURI) < prefix || r.RequestURI[:prefix] != r.URL.Path[:prefix] {
		return "", "", false
	}
	uri = r.RequestURI[prefix:]
	if uri == "" || uri[0] != '/' {
		uri = "/" + uri
	}
	original = r.RequestURI
	if i := strings.IndexByte(original, '?'); i >= 0 {
		original = original[:i]
	}
	return uri, original, true
}

// serveH1 forwards r to the least loaded of eps (and on to others while
// the request provably never reached one), and returns the status the
// client was answered with.
func (a *Activator) serveH1(w http.ResponseWriter, r *http.Request, st *service, eps []*endpoint, uri, original string, body *rewindBody) (code int) {
	var src io.Reader = r.Body
	if body == nil && r.ContentLength > 0 && a.cfg.Retries > 0 && r.ContentLength <= a.cfg.MaxRetryBody {
		body = newRewindBody(r.Body)
	}
	if body != nil {
		defer body.release()
		src = body
	}
	var tried []*endpoint
	var lastErr error
	for attempt := 0; attempt <= a.cfg.Retries; attempt++ {
		if attempt > 0 {
			eps = st.endpoints(false)
		}
		ep := leastOutstanding(eps, tried)
		if ep == nil {
			break
		}
		code, retry, err := a.tryH1(w, r, ep, uri, original, src)
		if err == nil {
			return code
		}
		lastErr = err
		if retry != "closed-idle-connection" {
			tried = append(tried, ep)
		}
		if retry == "" || attempt == a.cfg.Retries {
			break
		}
		// Nothing reached the endpoint, but the body may have been read
		// (a stale connection takes the request before it fails): only a
		// kept body can go again.
		if body != nil {
			body.rewind()
		} else if r.ContentLength > 0 && retry != "connect-failure" {
			break
		}
		a.m.retries.WithLabelValues(retry).Inc()
	}
	var bad *clientBodyError
	switch {
	case r.Context().Err() != nil:
		return statusClientClosed
	case errors.As(lastErr, &bad):
		http.Error(w, "activator: "+bad.Error(), http.StatusBadRequest)
		return http.StatusBadRequest
	case lastErr == nil:
		a.refuse(w, "activator: service "+st.key+" has no ready endpoint that would take the request")
		return http.StatusServiceUnavailable
	default:
		a.log.Warn("forwarding failed", "service", st.key, "err", lastErr)
		http.Error(w, fmt.Sprintf("activator: forwarding to service %s failed: %v", st.key, lastErr), http.StatusBadGateway)
		return http.StatusBadGateway
	}
}

// tryH1 is one attempt on ep, counted in its requests in flight (also
// when the answer is cut and the handler aborts).
func (a *Activator) tryH1(w http.ResponseWriter, r *http.Request, ep *endpoint, uri, original string, body io.Reader) (int, string, error) {
	ep.inflight.Add(1)
	defer ep.inflight.Add(-1)
	return a.exchangeH1(w, r, ep.addr, uri, original, body)
}

// clientBodyError: the client's request body could not be read.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// exchangeH1 sends r to addr and copies the answer to w. An error means
// nothing was written to w; retry then says why the request provably never
// reached the endpoint ("" if it may have).
func (a *Activator) exchangeH1(w http.ResponseWriter, r *http.Request, addr, uri, original string, body io.Reader) (code int, retry string, err error) {
	t := a.pooled
	c := t.get(addr)
	reused := c != nil
	if c == nil {
		conn, err := t.dial(r.Context(), "tcp", addr)
		if err != nil {
			return 0, undelivered(err), err
		}
		c = newH1Conn(conn)
	}
	// The client going away aborts the exchange: any blocked read or
	// write on the endpoint's connection returns at once.
	stop := afterCancel(r, c)
	fail := func(err error, wrote bool) (int, string, error) {
		stop()
		c.Close()
		if r.Context().Err() != nil {
			return 0, "", r.Context().Err()
		}
		// A pooled connection that fails while the request is written
		// (the endpoint closed it: broken pipe), or that ends before any
		// answer, was closed by the endpoint while idle.
		if reused && (!wrote || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
			return 0, "closed-idle-connection", fmt.Errorf("%w: %v", errStaleConn, err)
		}
		return 0, "", err
	}
	writeHead(c.w, r, addr, uri, original)
	if r.ContentLength > 0 {
		rb := bodyReader{r: body}
		n, err := c.w.ReadFrom(io.LimitReader(&rb, r.ContentLength))
		if rb.err != nil {
			// The client's body failed: nothing to retry.
			stop()
			c.Close()
			return 0, "", &clientBodyError{rb.err}
		}
		if err == nil && n < r.ContentLength {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fail(err, false)
		}
	}
	if err := c.w.Flush(); err != nil {
		return fail(err, false)
	}
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(c.r, r)
		if err != nil {
			return fail(err, true)
		}
		// 1xx informational answers (100 Continue, 103 Early Hints)
		// precede the real one.
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		break
	}

	// The answer starts: from here on a failure cuts the client's
	// connection.
	h := w.Header()
	copyEndToEnd(h, resp.Header)
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	eof, err := copyAnswer(w, resp.Body, resp.ContentLength < 0)
	if !eof || err != nil {
		stop()
		c.Close()
		panic(http.ErrAbortHandler)
	}
	if announced > 0 {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		if len(resp.Trailer) == announced {
			for k, vv := range resp.Trailer {
				h[k] = vv
			}
		} else {
			for k, vv := range resp.Trailer {
				for _, v := range vv {
					h.Add(http.TrailerPrefix+k, v)
				}
			}
		}
	}
	if stop() && !resp.Close {
		c.SetDeadline(time.Time{})
		t.put(addr, c)
	} else {
		c.Close()
	}
	return resp.StatusCode, "", nil
}

// afterCancel sets c's deadline in the past when r's client goes away; the
// returned stop reports whether that had not happened.
func afterCancel(r *http.Request, c *h1Conn) func() bool {
	return context.AfterFunc(r.Context(), func() { c.SetDeadline(time.Unix(1, 0)) })
}

// copyAnswer copies an answer's body to w with a pooled buffer, flushing
// every write when flush (an answer of unknown length may be a stream).
// eof says the body was read to its end.
func copyAnswer(w http.ResponseWriter, body io.Reader, flush bool) (eof bool, err error) {
	buf := copyBuffers.Get().([]byte)
	defer copyBuffers.Put(buf) //nolint:staticcheck // a slice header, as httputil.BufferPool's own
	fl, _ := w.(http.Flusher)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false, werr
			}
			if flush && fl != nil {
				fl.Flush()
			}
		}
		if rerr == io.EOF {
			return true, nil
		}
		if rerr != nil {
			return false, rerr
		}
	}
}

// writeHead writes the request line and headers of r as sent upstream.
func writeHead(b *bufio.Writer, r *http.Request, addr, uri, original string) {
	b.WriteString(r.Method)
	b.WriteByte(' ')
	b.WriteString(uri)
	b.WriteString(" HTTP/1.1\r\nHost: ")
	if r.Host != "" {
		b.WriteString(r.Host)
	} else {
		b.WriteString(addr)
	}
	b.WriteString("\r\n")
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if hopByHop(k) || named(conn, k) {
			continue
		}
		switch k {
		case "Content-Length", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
			continue
		}
		for _, v := range vv {
			b.WriteString(k)
			b.WriteString(": ")
			b.WriteString(v)
			b.WriteString("\r\n")
		}
	}
	if te := r.Header["Te"]; len(te) > 0 && httpguts.HeaderValuesContainsToken(te, "trailers") {
		b.WriteString("Te: trailers\r\n")
	}
	// As ReverseProxy with SetXForwarded: the client's own X-Forwarded-*
	// headers are replaced, not extended.
	b.WriteString("X-Forwarded-For: ")
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		b.WriteString(ip)
	} else {
		b.WriteString(r.RemoteAddr)
	}
	b.WriteString("\r\nX-Forwarded-Host: ")
	b.WriteString(r.Host)
	b.WriteString("\r\nX-Forwarded-Proto: http\r\n")
	if original != "" && len(r.Header["X-Envoy-Original-Path"]) == 0 {
		b.WriteString("X-Envoy-Original-Path: ")
		b.WriteString(original)
		b.WriteString("\r\n")
	}
	switch {
	case r.ContentLength > 0:
		b.WriteString("Content-Length: ")
		var n [20]byte
		b.Write(strconv.AppendInt(n[:0], r.ContentLength, 10))
		b.WriteString("\r\n")
	case r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch:
		b.WriteString("Content-Length: 0\r\n")
	}
	b.WriteString("\r\n")
}

// hopByHop: the headers of one connection (RFC 9110 7.6.1), which a proxy
// does not forward; the list is ReverseProxy's.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// named reports whether the Connection header values conn name header k.
func named(conn []string, k string) bool {
	return len(conn) > 0 && httpguts.HeaderValuesContainsToken(conn, k)
}

// copyEndToEnd copies an answer's headers to dst without the hop-by-hop
// ones.
func copyEndToEnd(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if hopByHop(k) || named(conn, k) {
			continue
		}
		dst[k] = vv
	}
}

// bodyReader records an error of the client's body, to tell it from the
// endpoint's.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// rewindBody keeps what it read from a request body, in a pooled buffer,
// so that a request that never reached its endpoint can be sent again.
// Bodies are kept only up to MaxRetryBody (the caller checks the length).
type rewindBody struct {
	src  io.Reader
	bp   *[]byte
	buf  []byte
	off  int
	done bool // src is at its end
}

// maxPooledBody: larger kept bodies are left to the garbage collector.
const maxPooledBody = 64 << 10

var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func newRewindBody(src io.Reader) *rewindBody {
	bp := bodyBuffers.Get().(*[]byte)
	return &rewindBody{src: src, bp: bp, buf: (*bp)[:0]}
}

func (b *rewindBody) Read(p []byte) (int, error) {
	if b.off < len(b.buf) {
		n := copy(p, b.buf[b.off:])
		b.off += n
		return n, nil
	}
	if b.done {
		return 0, io.EOF
	}
	n, err := b.src.Read(p)
	b.buf = append(b.buf, p[:n]...)
	b.off = len(b.buf)
	if err == io.EOF {
		b.done = true
	}
	return n, err
}

// fill reads the body to its end (n bytes), as before a hold.
func (b *rewindBody) fill(n int64) error {
	if int64(cap(b.buf)) < n {
		b.buf = make([]byte, 0, n)
	}
	b.buf = b.buf[:n]
	if _, err := io.ReadFull(b.src, b.buf); err != nil {
		return err
	}
	b.done = true
	b.off = 0
	return nil
}

// rewind starts the body over: everything read was kept.
func (b *rewindBody) rewind() { b.off = 0 }

// bytes is the body read so far.
func (b *rewindBody) bytes() []byte { return b.buf }

func (b *rewindBody) release() {
	if b.bp != nil && cap(b.buf) <= maxPooledBody {
		*b.bp = b.buf[:0]
		bodyBuffers.Put(b.bp)
	}
	b.bp, b.buf = nil, nil
}
