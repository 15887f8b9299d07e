// Package run sends a task's requests with vegeta's attacker: closed-loop
// tasks as client_num workers that each wait for their answer (an unbounded
// pacer over a fixed worker pool), open-loop tasks on vegeta's constant or
// linear pacers with latency measured from the intended send time, so a slow
// server or a saturated client cannot hide its delay (coordinated omission).
package run

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/mlscale/mlscale/loadgen/record"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

// DefaultMaxWorkers caps an open-loop task's concurrent requests: enough for
// thousands of requests/s at second-long latencies, bounded so a dead server
// cannot make the client open connections without end.
const DefaultMaxWorkers = 4096

// ClientOptions describe the HTTP client.
type ClientOptions struct {
	// Conns is the keep-alive pool size per host (the clients of the widest
	// task); requests beyond it still go out on new connections.
	Conns int
	// NewConnPerRequest disables keep-alive. With keep-alive, every request
	// of a client rides one connection, and behind a Kubernetes Service
	// (kube-proxy balances connections, not requests) all of it can stick
	// to one replica; a new connection per request spreads it out, as a
	// fleet of independent callers would.
	NewConnPerRequest bool
	// Timeout bounds each request (0: 60s).
	Timeout time.Duration
}

// Client is an HTTP/1.1 client for loopback or in-cluster targets (no proxy
// from the environment, no compression, the keep-alive pool sized to the
// clients) that can abort every request in flight by closing its
// connections: cheaper than a cancellable context per request.
type Client struct {
	http  *http.Client
	tr    *syncTransport
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// NewClient builds a Client.
func NewClient(o ClientOptions) *Client {
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	c := &Client{conns: map[*trackedConn]struct{}{}}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: conn, c: c}
		c.mu.Lock()
		c.conns[tc] = struct{}{}
		c.mu.Unlock()
		return tc, nil
	}
	// HTTP/1.1 on the caller's goroutine (see syncTransport); no
	// http.Client.Timeout, which would add a context and a timer to every
	// request: the wait for the answer is bounded by a read deadline.
	c.tr = newSyncTransport(dial, max(1, o.Conns), !o.NewConnPerRequest, o.Timeout)
	c.http = &http.Client{Transport: c.tr}
	return c
}

// Abort closes every connection, failing the requests in flight.
func (c *Client) Abort() {
	c.mu.Lock()
	conns := make([]*trackedConn, 0, len(c.conns))
	for tc := range c.conns {
		conns = append(conns, tc)
	}
	c.mu.Unlock()
	for _, tc := range conns {
		tc.Close()
	}
}

// CloseIdleConnections closes kept-alive connections not in use.
func (c *Client) CloseIdleConnections() { c.tr.closeIdle() }

type trackedConn struct {
	net.Conn
	c    *Client
	once sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.c.mu.Lock()
		delete(t.c.conns, t)
		t.c.mu.Unlock()
	})
	return t.Conn.Close()
}

// Options say where and how to send.
type Options struct {
	URL    string
	Client *Client
	// MaxWorkers caps open-loop concurrency (0: DefaultMaxWorkers).
	MaxWorkers uint64
}

// Plan is one task ready to run: its bodies are built before the clock starts.
type Plan struct {
	Index  int
	Task   scenario.Task
	Bodies [][]byte
}

// Scheduled is how many requests the task means to send (for a closed loop
// bounded only by time, 0: unknown in advance).
func Scheduled(t scenario.Task) int64 {
	if t.Closed() {
		return int64(t.DataAmount)
	}
	end := t.RateEnd
	if end == 0 {
		end = t.Rate
	}
	return int64(math.Round((t.Rate + end) / 2 * t.Duration.Seconds()))
}

// Task runs one task and hands every request's record to sink (called from
// one goroutine, in arrival order). Cancelling ctx stops sending, aborts
// requests in flight (recorded with their error) and returns after every
// sent request has been handed to sink.
func Task(ctx context.Context, o Options, p Plan, sink func(record.Request)) (start, end time.Time, err error) {
	if len(p.Bodies) == 0 {
		return time.Time{}, time.Time{}, fmt.Errorf("task %q: no request bodies", p.Task.Name)
	}
	var next atomic.Uint64
	hdr := http.Header{"Content-Type": []string{"application/json"}}
	targeter := func(t *vegeta.Target) error {
		i := next.Add(1) - 1
		t.Method = http.MethodPost
		t.URL = o.URL
		t.Body = p.Bodies[i%uint64(len(p.Bodies))]
		t.Header = hdr
		return nil
	}

	opts := []func(*vegeta.Attacker){
		vegeta.Client(o.Client.http),
		// The answer is not needed, only its status; skipping the copy
		// keeps 10 000-row answers from costing the client memory.
		vegeta.MaxBody(0),
		vegeta.Redirects(vegeta.NoFollow),
	}
	var (
		pacer    vegeta.Pacer
		du       = p.Task.Duration.Duration
		limit    uint64
		openLoop = !p.Task.Closed()
	)
	if openLoop {
		pacer = OpenPacer(p.Task)
		maxW := o.MaxWorkers
		if maxW == 0 {
			maxW = DefaultMaxWorkers
		}
		opts = append(opts, vegeta.Workers(min(64, maxW)), vegeta.MaxWorkers(maxW))
	} else {
		// A zero rate is vegeta's "as fast as the workers go"; with exactly
		// client_num workers that is the seed's closed loop.
		pacer = vegeta.ConstantPacer{}
		limit = uint64(p.Task.DataAmount)
		n := uint64(p.Task.ClientNum)
		opts = append(opts, vegeta.Workers(n), vegeta.MaxWorkers(n))
	}
	sp := &schedule{inner: pacer, limit: limit}
	atk := vegeta.NewAttacker(opts...)

	start = time.Now()
	// No attack name: vegeta would send it as a header on every request.
	results := atk.Attack(targeter, sp, du, "")
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			// Stop sending, and fail what is in flight now rather than
			// after the server answers or the timeout.
			atk.Stop()
			o.Client.Abort()
		case <-stopped:
		}
	}()
	for res := range results {
		r := record.Request{
			Task:    p.Index,
			Start:   res.Timestamp,
			Latency: res.Latency,
			Status:  int(res.Code),
			Err:     res.Error,
		}
		if r.Err != "" && ctx.Err() != nil {
			r.Err = "cancelled: " + r.Err
		}
		if openLoop {
			// sp.began was set before the first tick, which happened
			// before this result was sent to us.
			intended := sp.began.Add(Intended(pacer, res.Seq))
			if d := res.Timestamp.Sub(intended); d > 0 {
				r.Start = intended
				r.Latency += d
				r.SendDelay = d
			}
		}
		sink(r)
	}
	end = time.Now()
	if err := ctx.Err(); err != nil {
		return start, end, fmt.Errorf("task %q: %w", p.Task.Name, err)
	}
	return start, end, nil
}

// OpenPacer returns vegeta's pacer for an open-loop task: constant, or
// linear from rate to rate_end over the duration.
func OpenPacer(t scenario.Task) vegeta.Pacer {
	start := rate(t.Rate)
	if t.RateEnd == 0 || t.RateEnd == t.Rate || t.Duration.Duration <= 0 {
		return start
	}
	return vegeta.LinearPacer{StartAt: start, Slope: (t.RateEnd - t.Rate) / t.Duration.Seconds()}
}

// rate expresses a fractional rate in vegeta's integer hits per period.
func rate(r float64) vegeta.Rate {
	if r == math.Trunc(r) && r <= math.MaxInt32 {
		return vegeta.Rate{Freq: int(r), Per: time.Second}
	}
	return vegeta.Rate{Freq: int(math.Round(r * 1000)), Per: 1000 * time.Second}
}

// schedule wraps a pacer to learn when the attack began (vegeta keeps that
// private) and to stop after a number of hits.
type schedule struct {
	inner vegeta.Pacer
	limit uint64
	began time.Time
}

func (s *schedule) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	if s.began.IsZero() {
		s.began = time.Now().Add(-elapsed)
	}
	if s.limit > 0 && hits >= s.limit {
		return 0, true
	}
	return s.inner.Pace(elapsed, hits)
}

func (s *schedule) Rate(elapsed time.Duration) float64 { return s.inner.Rate(elapsed) }

// Intended returns when, after the attack began, the pacer meant hit n to
// go out: the earliest elapsed time at which Pace(elapsed, n) says "now".
// That is exact for any pacer whose Pace depends only on its arguments, as
// vegeta's do, so the schedule is vegeta's own, not a re-derivation.
func Intended(p vegeta.Pacer, n uint64) time.Duration {
	if cp, ok := p.(vegeta.ConstantPacer); ok && cp.Freq > 0 && cp.Per > 0 {
		// Closed form of ConstantPacer.Pace: hit n at (n+1) intervals.
		return time.Duration(n+1) * time.Duration(cp.Per.Nanoseconds()/int64(cp.Freq))
	}
	due := func(t time.Duration) bool { w, stop := p.Pace(t, n); return stop || w <= 0 }
	if due(0) {
		return 0
	}
	// Step forward by the pacer's own waits until due (for a linear pacer
	// these are Newton steps), then bisect to a microsecond.
	lo, hi := time.Duration(0), time.Duration(0)
	for t, i := time.Duration(0), 0; ; i++ {
		if i == 10_000 {
			return t // a pacer that never comes due: give up rather than spin
		}
		w, stop := p.Pace(t, n)
		if stop || w <= 0 {
			hi = t
			break
		}
		lo, t = t, t+max(w, time.Microsecond)
	}
	for hi-lo > time.Microsecond {
		mid := lo + (hi-lo)/2
		if due(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}
