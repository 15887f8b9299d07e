package activator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// errStaleConn: a pooled connection turned out closed by the endpoint
// before it answered (its keep-alive timeout, or a drain). The request was
// not processed; undelivered() recognises the message, as it does
// net/http's own for the same case.
var errStaleConn = errors.New("server closed idle connection")

// h1Transport does each HTTP/1.1 exchange on the caller's goroutine over a
// pool of connections per endpoint. net/http's Transport hands every
// request to a writer and a reader goroutine per connection; for a proxy
// whose requests are small, those hand-offs cost about as much CPU as the
// exchange (the load generator's loadgen/run/transport.go made the same
// trade). The protocol stays the standard library's: Request.Write and
// http.ReadResponse. Requests asking for a protocol upgrade go to the
// fallback transport.
type h1Transport struct {
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback http.RoundTripper
	maxIdle  int

	mu   sync.Mutex
	idle map[string][]*h1Conn
}

type h1Conn struct {
	net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	idleSince time.Time
}

func newH1Conn(conn net.Conn) *h1Conn {
	return &h1Conn{Conn: conn, r: bufio.NewReaderSize(conn, 16<<10), w: bufio.NewWriterSize(conn, 16<<10)}
}

// maxIdleAge is how long a pooled connection may sit unused: below the
// model server's 90 s IdleTimeout (and Go servers' usual ones), so the pool
// does not hand out connections the endpoint is about to close.
const maxIdleAge = 30 * time.Second

func newH1Transport(dial func(ctx context.Context, network, addr string) (net.Conn, error), fallback http.RoundTripper, maxIdle int) *h1Transport {
	return &h1Transport{dial: dial, fallback: fallback, maxIdle: maxIdle, idle: map[string][]*h1Conn{}}
}

func (t *h1Transport) get(addr string) *h1Conn {
	t.mu.Lock()
	var stale []*h1Conn
	var c *h1Conn
	for list := t.idle[addr]; len(list) > 0; list = t.idle[addr] {
		c, t.idle[addr] = list[len(list)-1], list[:len(list)-1]
		if time.Since(c.idleSince) < maxIdleAge {
			break
		}
		stale, c = append(stale, c), nil
	}
	if len(t.idle[addr]) == 0 {
		delete(t.idle, addr)
	}
	t.mu.Unlock()
	for _, s := range stale {
		s.Close()
	}
	return c
}

// closeAddr closes the pooled connections to an endpoint that is gone.
func (t *h1Transport) closeAddr(addr string) {
	t.mu.Lock()
	list := t.idle[addr]
	delete(t.idle, addr)
	t.mu.Unlock()
	for _, c := range list {
		c.Close()
	}
}

func (t *h1Transport) put(addr string, c *h1Conn) {
	t.mu.Lock()
	if len(t.idle[addr]) < t.maxIdle {
		c.idleSince = time.Now()
		t.idle[addr] = append(t.idle[addr], c)
		c = nil
	}
	t.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// CloseIdleConnections closes the pooled connections.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*h1Conn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.Close()
		}
	}
}

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Upgrade") != "" || req.URL.Scheme != "http" {
		return t.fallback.RoundTrip(req)
	}
	addr := req.URL.Host
	c := t.get(addr)
	reused := c != nil
	if c == nil {
		conn, err := t.dial(req.Context(), "tcp", addr)
		if err != nil {
			return nil, err
		}
		c = newH1Conn(conn)
	}
	// The client going away aborts the exchange: any blocked read or
	// write returns at once.
	stop := context.AfterFunc(req.Context(), func() { c.SetDeadline(time.Unix(1, 0)) })
	resp, wrote, err := t.exchange(c, req)
	if err != nil {
		stop()
		c.Close()
		if req.Context().Err() != nil {
			return nil, req.Context().Err()
		}
		// A pooled connection that fails while the request is being
		// written (the endpoint closed it: broken pipe), or that ends
		// before any answer, was closed by the endpoint while idle.
		if reused && (!wrote || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
			return nil, fmt.Errorf("%w: %v", errStaleConn, err)
		}
		return nil, err
	}
	resp.Body = &h1Body{ReadCloser: resp.Body, t: t, c: c, addr: addr, stop: stop, keep: !resp.Close && !req.Close}
	return resp, nil
}

// exchange writes req and reads its answer; wrote says whether the request
// was written in full before an error.
func (t *h1Transport) exchange(c *h1Conn, req *http.Request) (resp *http.Response, wrote bool, err error) {
	if err := req.Write(c.w); err != nil {
		return nil, false, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, false, err
	}
	for {
		resp, err := http.ReadResponse(c.r, req)
		if err != nil {
			return nil, true, err
		}
		// 1xx informational answers (100 Continue, 103 Early Hints)
		// precede the real one.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, true, nil
	}
}

// isReset: the endpoint closed the connection under the exchange.
func isReset(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// h1Body returns its connection to the pool once the answer was read to
// its end, and closes it otherwise (a half-read answer leaves the stream
// mid-message).
type h1Body struct {
	io.ReadCloser
	t      *h1Transport
	c      *h1Conn
	addr   string
	stop   func() bool
	keep   bool
	eof    bool
	closed bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	err := b.ReadCloser.Close()
	stopped := b.stop()
	if b.keep && b.eof && stopped && err == nil {
		b.c.SetDeadline(time.Time{})
		b.t.put(b.addr, b.c)
	} else {
		b.c.Close()
	}
	return err
}
