package collector

import (
	"math"
	"slices"
	"time"
)

// span selects the samples a value is computed from: those no older than
// window (plus slack, so scrape jitter does not drop the sample that starts
// the window) before the newest one.
func span(samples []sample, window, slack time.Duration) []sample {
	if len(samples) == 0 {
		return nil
	}
	from := samples[len(samples)-1].t.Add(-window - slack)
	i := 0
	for i < len(samples) && samples[i].t.Before(from) {
		i++
	}
	return samples[i:]
}

// delta is the increase of a counter-like value between consecutive samples
// that carry it, adding the value itself after a drop (the counter restarted
// from zero, as in PromQL's increase()). It reports the first and last
// timestamps used and false if fewer than two samples carry the value.
func delta(samples []sample, src int, val func(*obs) float64) (inc float64, first, last time.Time, ok bool) {
	var prev float64
	n := 0
	for i := range samples {
		o := &samples[i].obs[src]
		if !o.present {
			continue
		}
		v := val(o)
		if n == 0 {
			first = samples[i].t
		} else if v >= prev {
			inc += v - prev
		} else {
			inc += v
		}
		prev = v
		last = samples[i].t
		n++
	}
	return inc, first, last, n >= 2 && last.After(first)
}

func countOf(o *obs) float64 { return o.value }
func sumOf(o *obs) float64   { return o.sum }

// rate is the per-second increase of a counter over the samples.
func rate(samples []sample, src int) (v float64, newest time.Time, w time.Duration, ok bool) {
	inc, first, last, ok := delta(samples, src, countOf)
	if !ok {
		return 0, time.Time{}, 0, false
	}
	w = last.Sub(first)
	return inc / w.Seconds(), last, w, true
}

// histDelta is a histogram's increase over the samples: Δcount, Δsum and
// Δbucket counts. A drop in the count marks a restart for all three. Buckets
// are only returned if every sample used has the same bounds.
type histDelta struct {
	count, sum float64
	bounds     []float64
	counts     []float64
	first      time.Time
	last       time.Time
}

func histogramDelta(samples []sample, src int) (histDelta, bool) {
	var d histDelta
	var prev *obs
	sameBounds := true
	for i := range samples {
		o := &samples[i].obs[src]
		if !o.present {
			continue
		}
		if prev == nil {
			d.first = samples[i].t
			d.bounds = o.bounds
			d.counts = make([]float64, len(o.bounds))
		} else {
			restarted := o.value < prev.value
			if restarted {
				d.count += o.value
				d.sum += o.sum
			} else {
				d.count += o.value - prev.value
				d.sum += o.sum - prev.sum
			}
			if sameBounds && slices.Equal(o.bounds, d.bounds) && len(prev.counts) == len(o.counts) {
				for j := range o.counts {
					if restarted || o.counts[j] < prev.counts[j] {
						d.counts[j] += o.counts[j]
					} else {
						d.counts[j] += o.counts[j] - prev.counts[j]
					}
				}
			} else {
				sameBounds = false
			}
		}
		d.last = samples[i].t
		prev = o
	}
	if !sameBounds {
		d.bounds, d.counts = nil, nil
	}
	return d, prev != nil && d.last.After(d.first)
}

// bucketQuantile estimates quantile q from cumulative bucket counts (bounds
// ascending, the last +Inf), as PromQL's histogram_quantile does: find the
// bucket holding rank q*count and interpolate linearly inside it, the
// lowest bucket starting at 0. It reports false if there are no
// observations or no usable buckets.
func bucketQuantile(q float64, bounds, counts []float64) (float64, bool) {
	n := len(bounds)
	if n < 2 || len(counts) != n || !math.IsInf(bounds[n-1], 1) {
		return 0, false
	}
	// Bucket counts from different scrapes can be slightly out of order
	// (counts and buckets are not read atomically by every client library);
	// make them monotonic as Prometheus does.
	c := make([]float64, n)
	copy(c, counts)
	for i := 1; i < n; i++ {
		if c[i] < c[i-1] {
			c[i] = c[i-1]
		}
	}
	total := c[n-1]
	if total <= 0 {
		return 0, false
	}
	rank := q * total
	b := 0
	for b < n-1 && c[b] < rank {
		b++
	}
	if b == n-1 {
		return bounds[n-2], true
	}
	if b == 0 && bounds[0] <= 0 {
		return bounds[0], true
	}
	start, end, count := 0.0, bounds[b], c[b]
	if b > 0 {
		start = bounds[b-1]
		count -= c[b-1]
		rank -= c[b-1]
	}
	if count <= 0 {
		return end, true
	}
	return start + (end-start)*(rank/count), true
}
