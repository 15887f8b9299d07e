package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"
)

// Options tune the scrape loop and the window. NewOptions gives the defaults.
type Options struct {
	// Interval between scrape cycles.
	Interval time.Duration `json:"interval,omitempty"`
	// ScrapeTimeout bounds one pod's scrape; it must not exceed Interval.
	ScrapeTimeout time.Duration `json:"scrapeTimeout,omitempty"`
	// Window is the span rates and histogram increases are computed over.
	Window time.Duration `json:"window,omitempty"`
	// StaleAfter: a pod whose newest sample is older than this has no data.
	StaleAfter time.Duration `json:"staleAfter,omitempty"`
	// WarmUp holds back a pod until it has been ready this long, so its
	// first window is not its start-up.
	WarmUp time.Duration `json:"warmUp,omitempty"`
	// MaxBodyBytes bounds one exposition.
	MaxBodyBytes int64 `json:"maxBodyBytes,omitempty"`
	// Concurrency bounds the scrapes in flight. Each scrape's timeout starts
	// when it starts, so a thousand targets do not all wait for the CPU at
	// once and time out together; the cycle as a whole is still bounded by
	// Interval.
	Concurrency int `json:"concurrency,omitempty"`
	// Protocol is what the scrape asks for first: "protobuf" (the default,
	// cheapest to parse) or "text". Either way the pod's answer is parsed
	// by its Content-Type.
	Protocol string `json:"protocol,omitempty"`
}

// NewOptions returns the defaults: a 1 s interval and a 3 s window, which
// with jitter gives a served rate within 10% of a new steady rate about 3-4 s
// after a step.
func NewOptions() Options {
	return Options{
		Interval:      time.Second,
		ScrapeTimeout: 900 * time.Millisecond,
		Window:        3 * time.Second,
		StaleAfter:    5 * time.Second,
		WarmUp:        3 * time.Second,
		MaxBodyBytes:  10 << 20,
		Concurrency:   64,
		Protocol:      "protobuf",
	}
}

// Validate lists every problem with o.
func (o Options) Validate() []error {
	var errs []error
	if o.Interval <= 0 {
		errs = append(errs, fmt.Errorf("interval must be positive, got %v", o.Interval))
	}
	if o.ScrapeTimeout <= 0 || o.ScrapeTimeout > o.Interval {
		errs = append(errs, fmt.Errorf("scrapeTimeout must be in (0, interval=%v], got %v", o.Interval, o.ScrapeTimeout))
	}
	if o.Window < o.Interval {
		errs = append(errs, fmt.Errorf("window (%v) must be at least one interval (%v): a rate needs two samples", o.Window, o.Interval))
	}
	if o.StaleAfter < o.Interval {
		errs = append(errs, fmt.Errorf("staleAfter (%v) must be at least one interval (%v)", o.StaleAfter, o.Interval))
	}
	if o.WarmUp < 0 {
		errs = append(errs, fmt.Errorf("warmUp must not be negative, got %v", o.WarmUp))
	}
	if o.MaxBodyBytes <= 0 {
		errs = append(errs, fmt.Errorf("maxBodyBytes must be positive, got %d", o.MaxBodyBytes))
	}
	if o.Concurrency <= 0 {
		errs = append(errs, fmt.Errorf("concurrency must be positive, got %d", o.Concurrency))
	}
	if o.Protocol != "protobuf" && o.Protocol != "text" {
		errs = append(errs, fmt.Errorf("protocol must be protobuf or text, got %q", o.Protocol))
	}
	return errs
}

// Accept headers as Prometheus sends them: the preferred format first, the
// other as fallback, so any client library's endpoint answers.
const (
	acceptProtobuf = `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1`
	acceptText     = `text/plain;version=0.0.4;q=0.7,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.3,*/*;q=0.1`
)

// Target is one pod to scrape.
type Target struct {
	Namespace string
	Name      string
	Labels    labels.Set
	// URL of the pod's metrics endpoint.
	URL string
	// ReadySince is when the pod became ready; warm-up counts from here.
	ReadySince time.Time
}

// target is a Target with its window.
type target struct {
	Target
	mu       sync.Mutex
	samples  []sample
	failures int // consecutive
}

type servedRule struct {
	Rule
	src int
}

// Collector scrapes targets on a loop and serves their windows through
// Reader and Aggregator. Targets come from Upsert and Remove (Discovery
// calls them from pod informer events).
type Collector struct {
	opts    Options
	rules   map[string]*servedRule
	names   []string
	ext     *extractor
	client  *http.Client
	accept  string
	metrics *selfMetrics
	now     func() time.Time

	mu   sync.RWMutex
	byNS map[string]map[string]*target

	lastCycleEnd atomic.Int64 // unix nanos of the last completed cycle
	cycles       atomic.Int64
	synced       func() bool
}

var (
	_ Reader     = (*Collector)(nil)
	_ Aggregator = (*Collector)(nil)
)

// New builds a collector serving rules (already validated by ValidateRules
// or LoadConfig). reg receives the collector's own metrics.
func New(opts Options, rules []Rule, reg prometheus.Registerer) (*Collector, error) {
	if errs := opts.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("collector options: %w", errors.Join(errs...))
	}
	rules, err := ValidateRules(rules)
	if err != nil {
		return nil, err
	}
	c := &Collector{
		opts:    opts,
		rules:   make(map[string]*servedRule, len(rules)),
		metrics: newSelfMetrics(reg),
		now:     time.Now,
		byNS:    make(map[string]map[string]*target),
		synced:  func() bool { return true },
		accept:  acceptProtobuf,
	}
	if opts.Protocol == "text" {
		c.accept = acceptText
	}
	var sources []source
	srcIdx := map[string]int{}
	for _, r := range rules {
		k := r.sourceKey()
		i, ok := srcIdx[k]
		if !ok {
			i = len(sources)
			srcIdx[k] = i
			sources = append(sources, source{series: r.Series, histogram: r.Compute == ComputeMean || r.Compute == ComputeQuantile, labels: r.Labels})
		}
		c.rules[r.Name] = &servedRule{Rule: r, src: i}
		c.names = append(c.names, r.Name)
	}
	c.ext = newExtractor(sources)
	c.client = &http.Client{
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
	}
	return c, nil
}

// SetSynced tells the collector how to know its target list is complete
// (the pod informer has synced); Ready fails until it is.
func (c *Collector) SetSynced(f func() bool) { c.synced = f }

// Rules returns the served rules, sorted by name.
func (c *Collector) Rules() []Rule {
	out := make([]Rule, 0, len(c.names))
	for _, n := range c.names {
		out = append(out, c.rules[n].Rule)
	}
	return out
}

// Metrics implements Reader.
func (c *Collector) Metrics() []string { return append([]string(nil), c.names...) }

// Upsert adds or updates a target. A changed URL starts a new window: the
// samples of another endpoint say nothing about this one.
func (c *Collector) Upsert(t Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ns := c.byNS[t.Namespace]
	if ns == nil {
		ns = make(map[string]*target)
		c.byNS[t.Namespace] = ns
	}
	if old, ok := ns[t.Name]; ok && old.URL == t.URL {
		// Only what can change for the same endpoint; scrapes read the
		// rest without the lock.
		old.mu.Lock()
		old.Labels, old.ReadySince = t.Labels, t.ReadySince
		old.mu.Unlock()
		return
	}
	ns[t.Name] = &target{Target: t}
	c.metrics.podsTracked.Set(float64(c.countLocked()))
}

// Remove drops a target and its window at once: a deleted or unready pod's
// old rate must not keep counting.
func (c *Collector) Remove(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ns := c.byNS[namespace]
	if _, ok := ns[name]; !ok {
		return
	}
	delete(ns, name)
	if len(ns) == 0 {
		delete(c.byNS, namespace)
	}
	c.metrics.podsTracked.Set(float64(c.countLocked()))
	c.metrics.forget(namespace, name)
}

// Targets returns the tracked targets, sorted by namespace and name.
func (c *Collector) Targets() []Target {
	c.mu.RLock()
	out := make([]Target, 0, c.countLocked())
	for _, ns := range c.byNS {
		for _, t := range ns {
			out = append(out, t.Target)
		}
	}
	c.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func (c *Collector) countLocked() int {
	n := 0
	for _, ns := range c.byNS {
		n += len(ns)
	}
	return n
}

// Run scrapes every Interval until ctx ends. Cycles never overlap: a cycle
// that overruns delays the next tick rather than piling up.
func (c *Collector) Run(ctx context.Context) {
	tick := time.NewTicker(c.opts.Interval)
	defer tick.Stop()
	for {
		c.ScrapeOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// CycleStats describes one scrape cycle.
type CycleStats struct {
	Targets  int
	Failed   int
	Duration time.Duration
}

// ScrapeOnce runs one cycle: every target concurrently, each with its own
// timeout, the whole cycle bounded by the interval. Successful scrapes are
// kept even if others fail.
func (c *Collector) ScrapeOnce(ctx context.Context) CycleStats {
	start := time.Now()
	c.mu.RLock()
	targets := make([]*target, 0, c.countLocked())
	for _, ns := range c.byNS {
		for _, t := range ns {
			targets = append(targets, t)
		}
	}
	c.mu.RUnlock()

	cctx, cancel := context.WithTimeout(ctx, c.opts.Interval)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, c.opts.Concurrency)
	for _, t := range targets {
		select {
		case sem <- struct{}{}:
		case <-cctx.Done():
			// The cycle ran out of time before reaching this target: a
			// failure for this cycle, never a zero.
			c.metrics.scrapeErrors.WithLabelValues(t.Namespace, t.Name).Inc()
			failed.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if !c.scrapeTarget(cctx, t) {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	c.metrics.cycleDuration.Observe(d.Seconds())
	c.lastCycleEnd.Store(c.now().UnixNano())
	c.cycles.Add(1)
	return CycleStats{Targets: len(targets), Failed: int(failed.Load()), Duration: d}
}

// scrapeTarget scrapes one pod and appends the sample to its window. A
// failure is counted and logged with the pod; it adds nothing, so the window
// ages towards "no data" rather than towards zero.
func (c *Collector) scrapeTarget(ctx context.Context, t *target) bool {
	start := time.Now()
	s, err := c.scrape(ctx, t)
	c.metrics.scrapeDuration.WithLabelValues(t.Namespace, t.Name).Observe(time.Since(start).Seconds())
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		c.metrics.scrapeErrors.WithLabelValues(t.Namespace, t.Name).Inc()
		t.failures++
		// Log the first failure in a row and then one in 60, so a pod that
		// stays down does not flood the log.
		if t.failures%60 == 1 {
			klog.ErrorS(err, "Scrape failed", "pod", klog.KRef(t.Namespace, t.Name), "url", t.URL, "consecutiveFailures", t.failures)
		}
		return false
	}
	if t.failures > 0 {
		klog.InfoS("Scrape recovered", "pod", klog.KRef(t.Namespace, t.Name), "failedScrapes", t.failures)
	}
	t.failures = 0
	t.samples = append(t.samples, s)
	// Keep what the window can use, plus one interval of slack, and never
	// more than a bounded number of samples.
	keepFrom := s.t.Add(-c.opts.Window - 2*c.opts.Interval)
	i := 0
	for i < len(t.samples)-1 && t.samples[i].t.Before(keepFrom) {
		i++
	}
	if max := int(c.opts.Window/c.opts.Interval) + 8; len(t.samples)-i > max {
		i = len(t.samples) - max
	}
	if i > 0 {
		t.samples = append(t.samples[:0], t.samples[i:]...)
	}
	return true
}

// countingReader fails once more than limit bytes are read.
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

func (c *Collector) scrape(ctx context.Context, t *target) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ScrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return sample{}, fmt.Errorf("building scrape request: %w", err)
	}
	req.Header.Set("Accept", c.accept)
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", fmt.Sprintf("%g", c.opts.ScrapeTimeout.Seconds()))
	resp, err := c.client.Do(req)
	if err != nil {
		return sample{}, fmt.Errorf("scraping: %w", err)
	}
	defer resp.Body.Close()
	// The response headers arrive once the pod has gathered its metrics:
	// the closest moment to when the values were read.
	ts := c.now()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) //nolint:errcheck // draining for reuse only
		return sample{}, fmt.Errorf("scraping: HTTP status %s", resp.Status)
	}
	var prev []obs
	t.mu.Lock()
	if n := len(t.samples); n > 0 {
		prev = t.samples[n-1].obs
	}
	t.mu.Unlock()
	out := make([]obs, len(c.ext.sources))
	body := &limitedReader{r: resp.Body, left: c.opts.MaxBodyBytes, limit: c.opts.MaxBodyBytes}
	if err := c.ext.decode(body, expfmt.ResponseFormat(resp.Header), out, prev); err != nil {
		return sample{}, err
	}
	return sample{t: ts, obs: out}, nil
}

// Healthy fails if the loop has not completed a cycle recently: it is stuck.
func (c *Collector) Healthy() error {
	last := c.lastCycleEnd.Load()
	if last == 0 {
		return nil // not started yet; Ready covers start-up
	}
	if age := c.now().Sub(time.Unix(0, last)); age > 5*c.opts.Interval+c.opts.ScrapeTimeout {
		return fmt.Errorf("last scrape cycle ended %v ago (interval %v)", age.Round(time.Millisecond), c.opts.Interval)
	}
	return nil
}

// Ready fails until the target list is complete and a full window of
// cycles has run, so the first answers are not computed from one sample.
func (c *Collector) Ready() error {
	if !c.synced() {
		return errors.New("pod discovery has not synced")
	}
	need := int64(c.opts.Window/c.opts.Interval) + 1
	if n := c.cycles.Load(); n < need {
		return fmt.Errorf("%d of %d scrape cycles done", n, need)
	}
	return c.Healthy()
}

func (c *Collector) rule(metric string) (*servedRule, error) {
	r, ok := c.rules[metric]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownMetric, metric)
	}
	return r, nil
}

// selected returns the warmed-up targets in namespace ("" for all) that
// match sel.
func (c *Collector) selected(namespace string, sel labels.Selector, now time.Time) []*target {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*target
	visit := func(ns map[string]*target) {
		for _, t := range ns {
			if now.Sub(t.ReadySince) < c.opts.WarmUp {
				continue
			}
			if sel != nil && !sel.Matches(t.Labels) {
				continue
			}
			out = append(out, t)
		}
	}
	if namespace == "" {
		for _, ns := range c.byNS {
			visit(ns)
		}
	} else {
		visit(c.byNS[namespace])
	}
	return out
}

func (c *Collector) podValue(r *servedRule, t *target, now time.Time) (PodValue, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := value(&r.Rule, r.src, t.samples, c.opts.Window, c.opts.Interval/2, c.opts.StaleAfter, now)
	v.Namespace, v.Pod = t.Namespace, t.Name
	return v, ok
}

// PodValues implements Reader.
func (c *Collector) PodValues(_ context.Context, metric, namespace string, sel labels.Selector) ([]PodValue, error) {
	r, err := c.rule(metric)
	if err != nil {
		return nil, err
	}
	now := c.now()
	ts := c.selected(namespace, sel, now)
	out := make([]PodValue, 0, len(ts))
	for _, t := range ts {
		if v, ok := c.podValue(r, t, now); ok {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, noData(metric, namespace, sel, len(ts))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Pod < out[j].Pod
	})
	return out, nil
}

func noData(metric, namespace string, sel labels.Selector, pods int) error {
	s := "<all>"
	if sel != nil {
		s = sel.String()
	}
	if pods == 0 {
		return fmt.Errorf("%w: %s: no ready, warmed-up pod in namespace %q matches %q", ErrNoData, metric, namespace, s)
	}
	return fmt.Errorf("%w: %s: none of the %d pods in namespace %q matching %q has a value yet", ErrNoData, metric, pods, namespace, s)
}

// AggregateValue implements Aggregator.
func (c *Collector) AggregateValue(_ context.Context, metric, namespace string, sel labels.Selector) (Aggregate, error) {
	r, err := c.rule(metric)
	if err != nil {
		return Aggregate{}, err
	}
	now := c.now()
	ts := c.selected(namespace, sel, now)
	var agg Aggregate
	note := func(t time.Time, w time.Duration) {
		if agg.Pods == 0 || t.Before(agg.Timestamp) {
			agg.Timestamp = t
		}
		if w > agg.Window {
			agg.Window = w
		}
		agg.Pods++
	}
	if r.Aggregate == AggPooled {
		var pooled histDelta
		bucketsOK := true
		for _, t := range ts {
			t.mu.Lock()
			if len(t.samples) == 0 || now.Sub(t.samples[len(t.samples)-1].t) > c.opts.StaleAfter {
				t.mu.Unlock()
				continue
			}
			d, ok := histogramDelta(span(t.samples, c.opts.Window, c.opts.Interval/2), r.src)
			t.mu.Unlock()
			if !ok {
				continue
			}
			if d.bounds == nil {
				bucketsOK = false
			}
			if pooled.counts == nil && agg.Pods == 0 {
				pooled.bounds = d.bounds
				pooled.counts = append([]float64(nil), d.counts...)
			} else if len(d.bounds) == len(pooled.bounds) && equalBounds(d.bounds, pooled.bounds) {
				for j := range d.counts {
					pooled.counts[j] += d.counts[j]
				}
			} else {
				bucketsOK = false
			}
			pooled.count += d.count
			pooled.sum += d.sum
			note(d.last, d.last.Sub(d.first))
		}
		if agg.Pods == 0 {
			return Aggregate{}, noData(metric, namespace, sel, len(ts))
		}
		switch r.Compute {
		case ComputeMean:
			if pooled.count <= 0 {
				return Aggregate{}, noData(metric, namespace, sel, len(ts))
			}
			agg.Value = pooled.sum / pooled.count
		default:
			v, ok := bucketQuantile(r.Quantile, pooled.bounds, pooled.counts)
			if !ok || !bucketsOK {
				return Aggregate{}, noData(metric, namespace, sel, len(ts))
			}
			agg.Value = v
		}
		return agg, nil
	}
	for _, t := range ts {
		v, ok := c.podValue(r, t, now)
		if !ok {
			continue
		}
		switch {
		case agg.Pods == 0:
			agg.Value = v.Value
		case r.Aggregate == AggMax:
			agg.Value = max(agg.Value, v.Value)
		default: // sum, avg
			agg.Value += v.Value
		}
		note(v.Timestamp, v.Window)
	}
	if agg.Pods == 0 {
		return Aggregate{}, noData(metric, namespace, sel, len(ts))
	}
	if r.Aggregate == AggAvg {
		agg.Value /= float64(agg.Pods)
	}
	return agg, nil
}

func equalBounds(a, b []float64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
