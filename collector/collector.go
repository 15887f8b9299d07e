package collector

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
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

type servedRule struct {
	Rule
	src int
}

// Collector scrapes targets on a loop and serves their windows through
// Reader. Targets come from Upsert and Remove (Discovery calls them from pod
// informer events). Each tick reads scrape → store: the scraper (scrape.go)
// fetches every pod's exposition, the store (store.go) appends the samples
// to the pods' windows; answers are computed from the windows (compute.go).
type Collector struct {
	opts    Options
	rules   map[string]*servedRule
	names   []string
	ext     *extractor
	scraper *scraper
	store   *store
	metrics *selfMetrics
	now     func() time.Time

	lastCycleEnd atomic.Int64 // unix nanos of the last completed cycle
	cycles       atomic.Int64
	synced       func() bool
}

var _ Reader = (*Collector)(nil)

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
		store:   newStore(opts),
		synced:  func() bool { return true },
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
	c.scraper = newScraper(opts, c.ext, c.metrics, func() time.Time { return c.now() })
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
	c.metrics.podsTracked.Set(float64(c.store.upsert(t)))
}

// Remove drops a target and its window at once: a deleted or unready pod's
// old rate must not keep counting.
func (c *Collector) Remove(namespace, name string) {
	removed, n := c.store.remove(namespace, name)
	if !removed {
		return
	}
	c.metrics.podsTracked.Set(float64(n))
	c.metrics.forget(namespace, name)
}

// Targets returns the tracked targets, sorted by namespace and name.
func (c *Collector) Targets() []Target { return c.store.targets() }

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

// ScrapeOnce runs one cycle, scrape → store: every target concurrently,
// each with its own timeout, the whole cycle bounded by the interval; then
// the samples go to the pods' windows. Successful scrapes are kept even if
// others fail.
func (c *Collector) ScrapeOnce(ctx context.Context) CycleStats {
	start := time.Now()
	targets := c.store.all()
	cctx, cancel := context.WithTimeout(ctx, c.opts.Interval)
	batch, skipped := c.scraper.scrapeAll(cctx, targets)
	cancel()
	failed := c.store.add(batch) + skipped
	d := time.Since(start)
	c.metrics.cycleDuration.Observe(d.Seconds())
	c.lastCycleEnd.Store(c.now().UnixNano())
	c.cycles.Add(1)
	return CycleStats{Targets: len(targets), Failed: failed, Duration: d}
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
	return c.store.selected(namespace, sel, now, c.opts.WarmUp)
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
		return nil, NoData(metric, namespace, sel, len(ts))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Pod < out[j].Pod
	})
	return out, nil
}

// AggregateValue implements Aggregator: the pods' values combined as the
// rule says (Combine), or their histograms pooled.
func (c *Collector) AggregateValue(_ context.Context, metric, namespace string, sel labels.Selector) (Aggregate, error) {
	r, err := c.rule(metric)
	if err != nil {
		return Aggregate{}, err
	}
	now := c.now()
	ts := c.selected(namespace, sel, now)
	if r.Aggregate == AggPooled {
		var p pool
		for _, t := range ts {
			t.mu.Lock()
			if len(t.samples) == 0 || now.Sub(t.samples[len(t.samples)-1].t) > c.opts.StaleAfter {
				t.mu.Unlock()
				continue
			}
			d, ok := histogramDelta(span(t.samples, c.opts.Window, c.opts.Interval/2), r.src)
			t.mu.Unlock()
			if ok {
				p.add(d)
			}
		}
		agg, ok := p.value(&r.Rule)
		if !ok {
			return Aggregate{}, NoData(metric, namespace, sel, len(ts))
		}
		return agg, nil
	}
	values := make([]PodValue, 0, len(ts))
	for _, t := range ts {
		if v, ok := c.podValue(r, t, now); ok {
			values = append(values, v)
		}
	}
	agg := Combine(r.Aggregate, values)
	if agg.Pods == 0 {
		return Aggregate{}, NoData(metric, namespace, sel, len(ts))
	}
	return agg, nil
}
