package collector

import (
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"
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

// latest returns the observations of t's newest sample, nil for none.
func (t *target) latest() []obs {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.samples); n > 0 {
		return t.samples[n-1].obs
	}
	return nil
}

// store holds every tracked pod's window of samples, by namespace and name.
// It keeps what the window can use plus slack, never more than a bounded
// number of samples per pod.
type store struct {
	keep       time.Duration // age before the newest sample still kept
	maxSamples int

	mu   sync.RWMutex
	byNS map[string]map[string]*target
}

func newStore(opts Options) *store {
	return &store{
		keep:       opts.Window + 2*opts.Interval,
		maxSamples: int(opts.Window/opts.Interval) + 8,
		byNS:       make(map[string]map[string]*target),
	}
}

// upsert adds or updates a target and returns how many are tracked. A
// changed URL starts a new window: the samples of another endpoint say
// nothing about this one.
func (st *store) upsert(t Target) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	ns := st.byNS[t.Namespace]
	if ns == nil {
		ns = make(map[string]*target)
		st.byNS[t.Namespace] = ns
	}
	if old, ok := ns[t.Name]; ok && old.URL == t.URL {
		// Only what can change for the same endpoint; scrapes read the
		// rest without the lock.
		old.mu.Lock()
		old.Labels, old.ReadySince = t.Labels, t.ReadySince
		old.mu.Unlock()
		return st.countLocked()
	}
	ns[t.Name] = &target{Target: t}
	return st.countLocked()
}

// remove drops a target and its window; false if it was not tracked.
func (st *store) remove(namespace, name string) (removed bool, tracked int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	ns := st.byNS[namespace]
	if _, ok := ns[name]; !ok {
		return false, st.countLocked()
	}
	delete(ns, name)
	if len(ns) == 0 {
		delete(st.byNS, namespace)
	}
	return true, st.countLocked()
}

func (st *store) countLocked() int {
	n := 0
	for _, ns := range st.byNS {
		n += len(ns)
	}
	return n
}

// all returns every tracked target, in no order.
func (st *store) all() []*target {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]*target, 0, st.countLocked())
	for _, ns := range st.byNS {
		for _, t := range ns {
			out = append(out, t)
		}
	}
	return out
}

// targets returns the tracked targets, sorted by namespace and name.
func (st *store) targets() []Target {
	ts := st.all()
	out := make([]Target, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.Target)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// selected returns the targets in namespace ("" for all) that match sel and
// have been ready for warmUp at now.
func (st *store) selected(namespace string, sel labels.Selector, now time.Time, warmUp time.Duration) []*target {
	st.mu.RLock()
	defer st.mu.RUnlock()
	var out []*target
	visit := func(ns map[string]*target) {
		for _, t := range ns {
			if now.Sub(t.ReadySince) < warmUp {
				continue
			}
			if sel != nil && !sel.Matches(t.Labels) {
				continue
			}
			out = append(out, t)
		}
	}
	if namespace == "" {
		for _, ns := range st.byNS {
			visit(ns)
		}
	} else {
		visit(st.byNS[namespace])
	}
	return out
}

// add stores a cycle's scrapes and returns how many failed. A sample goes
// to its pod's window; a failure adds nothing, so the window ages towards
// "no data" rather than towards zero, and is logged with the pod.
func (st *store) add(batch []scraped) (failed int) {
	for _, b := range batch {
		if b.err != nil {
			failed++
		}
		st.record(b.t, b.s, b.err)
	}
	return failed
}

func (st *store) record(t *target, s sample, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.failures++
		// Log the first failure in a row and then one in 60, so a pod that
		// stays down does not flood the log.
		if t.failures%60 == 1 {
			klog.ErrorS(err, "Scrape failed", "pod", klog.KRef(t.Namespace, t.Name), "url", t.URL, "consecutiveFailures", t.failures)
		}
		return
	}
	if t.failures > 0 {
		klog.InfoS("Scrape recovered", "pod", klog.KRef(t.Namespace, t.Name), "failedScrapes", t.failures)
	}
	t.failures = 0
	t.samples = append(t.samples, s)
	keepFrom := s.t.Add(-st.keep)
	i := 0
	for i < len(t.samples)-1 && t.samples[i].t.Before(keepFrom) {
		i++
	}
	if len(t.samples)-i > st.maxSamples {
		i = len(t.samples) - st.maxSamples
	}
	if i > 0 {
		t.samples = append(t.samples[:0], t.samples[i:]...)
	}
}
