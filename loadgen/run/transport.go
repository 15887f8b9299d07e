package run

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

// syncTransport is an HTTP/1.1 RoundTripper that does each exchange on the
// caller's goroutine over a pooled connection: net/http's Transport hands
// every request to a writer and a reader goroutine per connection, and those
// hand-offs cost a load generator about as much CPU as the request itself.
// The protocol stays the standard library's (Request.Write,
// http.ReadResponse); only the connection pool is ours. It serves one
// host, as a load run does, and requests without Expect or upgrades.
type syncTransport struct {
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	keepAlive bool
	timeout   time.Duration // for the response headers
	idle      chan *syncConn
}

type syncConn struct {
	net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func newSyncTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error), pool int, keepAlive bool, timeout time.Duration) *syncTransport {
	return &syncTransport{dial: dial, keepAlive: keepAlive, timeout: timeout, idle: make(chan *syncConn, max(1, pool))}
}

func (t *syncTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		return nil, fmt.Errorf("unsupported scheme %q (the load client speaks plain HTTP/1.1)", req.URL.Scheme)
	}
	c, reused, err := t.get(req)
	if err != nil {
		return nil, err
	}
	resp, err := t.exchange(c, req)
	if err != nil && reused && req.GetBody != nil && isStale(err) {
		// The server closed an idle connection (its keep-alive timeout, say
		// after a long pause) as we picked it up. net/http retries only
		// idempotent methods here; a prediction is a pure function of its
		// rows, so sending it again on a fresh connection is safe.
		c.Close()
		if req.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
		if c, err = t.dialConn(req); err != nil {
			return nil, err
		}
		resp, err = t.exchange(c, req)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return resp, nil
}

// isStale reports an error that a connection closed by the server while
// idle gives: the request found no one reading it.
func isStale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (t *syncTransport) get(req *http.Request) (*syncConn, bool, error) {
	if t.keepAlive {
		select {
		case c := <-t.idle:
			return c, true, nil
		default:
		}
	}
	c, err := t.dialConn(req)
	return c, false, err
}

func (t *syncTransport) dialConn(req *http.Request) (*syncConn, error) {
	addr := req.URL.Host
	if req.URL.Port() == "" {
		addr = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	conn, err := t.dial(req.Context(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return &syncConn{Conn: conn, r: bufio.NewReaderSize(conn, 16<<10), w: bufio.NewWriterSize(conn, 16<<10)}, nil
}

func (t *syncTransport) exchange(c *syncConn, req *http.Request) (*http.Response, error) {
	req.Close = !t.keepAlive
	if err := req.Write(c.w); err != nil {
		return nil, fmt.Errorf("writing request: %w", err)
	}
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("writing request: %w", err)
	}
	if t.timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(t.timeout))
	}
	resp, err := http.ReadResponse(c.r, req)
	if err != nil {
		return nil, fmt.Errorf("reading response: %w", err)
	}
	resp.Body = &syncBody{ReadCloser: resp.Body, c: c, t: t, reuse: t.keepAlive && !resp.Close}
	return resp, nil
}

// syncBody returns the connection to the pool once the body has been read
// to its end and closed; anything else closes the connection.
type syncBody struct {
	io.ReadCloser
	c     *syncConn
	t     *syncTransport
	reuse bool
	eof   bool
	once  sync.Once
}

func (b *syncBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// WriteTo lets io.Copy(io.Discard, body) drain through the pooled buffer.
func (b *syncBody) WriteTo(w io.Writer) (int64, error) {
	n, err := io.Copy(w, struct{ io.Reader }{b.ReadCloser})
	if err == nil {
		b.eof = true
	}
	return n, err
}

func (b *syncBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		if b.reuse && b.eof && err == nil && b.c.r.Buffered() == 0 {
			_ = b.c.SetReadDeadline(time.Time{})
			select {
			case b.t.idle <- b.c:
				return
			default:
			}
		}
		b.c.Close()
	})
	return err
}

// closeIdle closes pooled connections.
func (t *syncTransport) closeIdle() {
	for {
		select {
		case c := <-t.idle:
			c.Close()
		default:
			return
		}
	}
}
