package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/expfmt"
)

// Accept headers as Prometheus sends them: the preferred format first, the
// other as fallback, so any client library's endpoint answers.
const (
	acceptProtobuf = `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1`
	acceptText     = `text/plain;version=0.0.4;q=0.7,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.3,*/*;q=0.1`
)

// scraper fetches pods' expositions over HTTP (content negotiation, a
// timeout per pod, a bound on the body) and parses what the rules read.
type scraper struct {
	client      *http.Client
	accept      string
	timeout     time.Duration
	maxBody     int64
	concurrency int
	ext         *extractor
	metrics     *selfMetrics
	now         func() time.Time
}

func newScraper(opts Options, ext *extractor, metrics *selfMetrics, now func() time.Time) *scraper {
	s := &scraper{
		accept:      acceptProtobuf,
		timeout:     opts.ScrapeTimeout,
		maxBody:     opts.MaxBodyBytes,
		concurrency: opts.Concurrency,
		ext:         ext,
		metrics:     metrics,
		now:         now,
		client: &http.Client{
			// No client-wide timeout: each scrape's context carries its own.
			Transport: &http.Transport{
				Proxy:               nil, // pod IPs are never reached through a proxy
				MaxIdleConnsPerHost: 2,
				IdleConnTimeout:     90 * time.Second,
				// Expositions are small and in-cluster: gzip costs more CPU
				// on both ends than it saves on the wire.
				DisableCompression: true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	if opts.Protocol == "text" {
		s.accept = acceptText
	}
	return s
}

// scraped is one target's scrape: a sample, or why there is none.
type scraped struct {
	t   *target
	s   sample
	err error
}

// scrapeAll scrapes every target concurrently (at most concurrency at once),
// each with its own timeout, until ctx ends. It returns the scrapes it made,
// successful or not, and how many targets it never reached before ctx ended:
// failures for this cycle, never zeros.
func (s *scraper) scrapeAll(ctx context.Context, targets []*target) (batch []scraped, skipped int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var skippedN atomic.Int64
	batch = make([]scraped, 0, len(targets))
	sem := make(chan struct{}, s.concurrency)
	for _, t := range targets {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			s.metrics.scrapeErrors.WithLabelValues(t.Namespace, t.Name).Inc()
			skippedN.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			smp, err := s.scrape(ctx, t.URL, t.latest())
			s.metrics.scrapeDuration.WithLabelValues(t.Namespace, t.Name).Observe(time.Since(start).Seconds())
			if err != nil {
				s.metrics.scrapeErrors.WithLabelValues(t.Namespace, t.Name).Inc()
			}
			mu.Lock()
			batch = append(batch, scraped{t: t, s: smp, err: err})
			mu.Unlock()
		}()
	}
	wg.Wait()
	return batch, int(skippedN.Load())
}

// limitedReader fails once more than limit bytes are read.
type limitedReader struct {
	r     io.Reader
	left  int64
	limit int64
}

var errTooLarge = errors.New("exposition too large")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// Probe for one more byte to tell "exactly limit" from "more".
		var b [1]byte
		n, _ := l.r.Read(b[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: more than %d bytes", errTooLarge, l.limit)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// scrape fetches and parses one exposition. prev is the pod's previous
// sample's observations (nil for none), whose bucket bounds the new sample
// shares when they are equal.
func (s *scraper) scrape(ctx context.Context, url string, prev []obs) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return sample{}, fmt.Errorf("building scrape request: %w", err)
	}
	req.Header.Set("Accept", s.accept)
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", fmt.Sprintf("%g", s.timeout.Seconds()))
	resp, err := s.client.Do(req)
	if err != nil {
		return sample{}, fmt.Errorf("scraping: %w", err)
	}
	defer resp.Body.Close()
	// The response headers arrive once the pod has gathered its metrics:
	// the closest moment to when the values were read.
	ts := s.now()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) //nolint:errcheck // draining for reuse only
		return sample{}, fmt.Errorf("scraping: HTTP status %s", resp.Status)
	}
	out := make([]obs, len(s.ext.sources))
	body := &limitedReader{r: resp.Body, left: s.maxBody, limit: s.maxBody}
	if err := s.ext.decode(body, expfmt.ResponseFormat(resp.Header), out, prev); err != nil {
		return sample{}, err
	}
	return sample{t: ts, obs: out}, nil
}
