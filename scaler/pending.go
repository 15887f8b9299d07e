package scaler

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// PendingSource reports requests waiting for, or being served by, a Service
// in front of a workload: what the collector cannot see when the workload has
// no pods to scrape. With one, a trigger's wake Service (trigger.Trigger's
// WakeService) makes it active while requests are pending.
type PendingSource interface {
	// Pending returns the requests held (waiting for a ready endpoint) and
	// in flight for Service namespace/service; ok is false while the count
	// is unknown (no fresh answer from the source).
	Pending(namespace, service string) (held, inflight int, ok bool)
}

// updater is implemented by pending sources that can say when they have a new
// answer, so open streams re-evaluate at once rather than at their next poll.
type updater interface {
	// Updated returns a channel closed at the next new answer.
	Updated() <-chan struct{}
}

// Defaults of GatewayQueue.
const (
	DefaultGatewayQueueInterval = 250 * time.Millisecond
	DefaultGatewayQueueMaxAge   = 5 * time.Second
	// maxQueueBody bounds the queue JSON read from the gateway.
	maxQueueBody = 4 << 20
)

// queueCounts is one Service's entry in the gateway's queue JSON,
// {"namespace/service": {"held": 3, "inflight": 5}} (test/gateway's
// QueueHandler, modelled on KEDA http-add-on's interceptor queue endpoint).
type queueCounts struct {
	Held     int `json:"held"`
	Inflight int `json:"inflight"`
}

// GatewayQueue is a PendingSource polling the gateway's queue endpoint. It
// keeps the last good snapshot; one older than MaxAge counts as unknown.
type GatewayQueue struct {
	// URL of the gateway's queue JSON.
	URL string
	// Interval between polls; Timeout bounds each; MaxAge is how old the
	// last good snapshot may be and still count.
	Interval, Timeout, MaxAge time.Duration
	Client                    *http.Client
	Logger                    *slog.Logger

	mu      sync.Mutex
	snap    map[string]queueCounts
	at      time.Time // of snap; zero before the first good poll
	updated chan struct{}
	failing bool
}

var (
	_ PendingSource = (*GatewayQueue)(nil)
	_ updater       = (*GatewayQueue)(nil)
)

// NewGatewayQueue polls url every interval (DefaultGatewayQueueInterval when
// not positive) once Run starts.
func NewGatewayQueue(url string, interval time.Duration, log *slog.Logger) *GatewayQueue {
	if interval <= 0 {
		interval = DefaultGatewayQueueInterval
	}
	if log == nil {
		log = slog.Default()
	}
	timeout := min(max(interval, time.Second), 2*time.Second)
	return &GatewayQueue{
		URL: url, Interval: interval, Timeout: timeout, MaxAge: DefaultGatewayQueueMaxAge,
		Client: &http.Client{Timeout: timeout}, Logger: log,
		updated: make(chan struct{}),
	}
}

// Run polls until ctx ends.
func (q *GatewayQueue) Run(ctx context.Context) {
	interval := q.Interval
	if interval <= 0 {
		interval = DefaultGatewayQueueInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := q.Poll(ctx)
		q.mu.Lock()
		was := q.failing
		q.failing = err != nil
		q.mu.Unlock()
		switch {
		case err != nil && !was && ctx.Err() == nil && q.Logger != nil:
			q.Logger.Warn("polling the gateway queue failed; keeping the last answer until it is stale", "url", q.URL, "maxAge", q.MaxAge, "err", err)
		case err == nil && was && q.Logger != nil:
			q.Logger.Info("polling the gateway queue works again", "url", q.URL)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Poll fetches the queue once and, when it is valid, makes it the snapshot.
func (q *GatewayQueue) Poll(ctx context.Context) error {
	if q.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, q.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, q.URL, nil)
	if err != nil {
		return fmt.Errorf("building the request for %s: %w", q.URL, err)
	}
	client := q.Client
	if client == nil {
		client = http.DefaultClient // bounded by the context's timeout
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", q.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching %s: HTTP %s", q.URL, resp.Status)
	}
	var snap map[string]queueCounts
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxQueueBody)).Decode(&snap); err != nil {
		return fmt.Errorf("decoding the queue JSON from %s (want {\"namespace/service\": {\"held\": n, \"inflight\": n}}): %w", q.URL, err)
	}
	q.mu.Lock()
	q.snap, q.at = snap, time.Now()
	if q.updated != nil {
		close(q.updated)
	}
	q.updated = make(chan struct{})
	q.mu.Unlock()
	return nil
}

// Pending implements PendingSource. A Service missing from a fresh snapshot
// has nothing pending.
func (q *GatewayQueue) Pending(namespace, service string) (held, inflight int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	maxAge := q.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultGatewayQueueMaxAge
	}
	if q.at.IsZero() || time.Since(q.at) > maxAge {
		return 0, 0, false
	}
	c := q.snap[namespace+"/"+service]
	return c.Held, c.Inflight, true
}

// Updated implements updater.
func (q *GatewayQueue) Updated() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.updated == nil {
		q.updated = make(chan struct{})
	}
	return q.updated
}
