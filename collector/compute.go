package collector

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// This file is the one place a served value is computed: a pod's value from
// its window (value, over window.go's span, rate, histogramDelta and
// bucketQuantile), a workload's from its pods' values (Combine) or from
// their pooled histograms (pool), and the same formulas written as PromQL
// for the Prometheus source (Rule.PromQL). The scraping collector, the
// PromQL source (collector/promql) and the KEDA scaler's trigger override
// all compute through it.

// Aggregation says how pod values combine into one value for a workload
// (object and external metrics, and the KEDA scaler's trigger). It is one
// vocabulary for the collector's rules and the scaler's trigger metadata:
// sum, mean, max, min and pooled, with the older names in
// AggregationAliases accepted.
type Aggregation string

const (
	// AggSum adds pod values: the natural total for rates and in-flight counts.
	AggSum Aggregation = "sum"
	// AggMean is the unweighted mean of pod values ("avg" before).
	AggMean Aggregation = "mean"
	// AggMax is the largest pod value.
	AggMax Aggregation = "max"
	// AggMin is the smallest pod value.
	AggMin Aggregation = "min"
	// AggPooled pools the histogram increases of all pods before computing
	// the mean or quantile, so a busy pod weighs more than an idle one (the
	// exact answer for the workload's traffic as a whole). It needs the pods'
	// histograms, not their values: only a rule computing mean or quantile
	// pools.
	AggPooled Aggregation = "pooled"
)

// Aggregations is the vocabulary, in the order messages list it.
var Aggregations = []Aggregation{AggSum, AggMean, AggMax, AggMin, AggPooled}

// AggregationAliases are older names still accepted for an aggregation: the
// collector's config said avg where the scaler's trigger said mean.
var AggregationAliases = map[string]Aggregation{
	"avg": AggMean,
}

// ParseAggregation reads an aggregation name, case-insensitive and trimmed,
// accepting the aliases; "" is "" (the caller's default).
func ParseAggregation(s string) (Aggregation, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	if name == "" {
		return "", nil
	}
	for _, a := range Aggregations {
		if name == string(a) {
			return a, nil
		}
	}
	if a, ok := AggregationAliases[name]; ok {
		return a, nil
	}
	return "", fmt.Errorf("%q is not one of %s", s, AggregationNames())
}

// AggregationNames lists the vocabulary and its aliases for messages:
// "sum, mean, max, min, pooled (avg: mean)".
func AggregationNames() string {
	names := make([]string, len(Aggregations))
	for i, a := range Aggregations {
		names[i] = string(a)
	}
	s := strings.Join(names, ", ")
	if len(AggregationAliases) > 0 {
		aliases := make([]string, 0, len(AggregationAliases))
		for old, a := range AggregationAliases {
			aliases = append(aliases, old+": "+string(a))
		}
		sort.Strings(aliases)
		s += " (" + strings.Join(aliases, ", ") + ")"
	}
	return s
}

// value computes rule r (reading source src) for one pod's samples. Stale
// data (no sample within staleAfter of now) and windows with nothing to
// compute (one sample, or no observations for a histogram) give false:
// "no data" is never 0.
func value(r *Rule, src int, samples []sample, window, slack, staleAfter time.Duration, now time.Time) (PodValue, bool) {
	if len(samples) == 0 || now.Sub(samples[len(samples)-1].t) > staleAfter {
		return PodValue{}, false
	}
	s := span(samples, window, slack)
	switch r.Compute {
	case ComputeRate:
		v, t, w, ok := rate(s, src)
		return PodValue{Value: v, Timestamp: t, Window: w}, ok
	case ComputeMean:
		d, ok := histogramDelta(s, src)
		if !ok || d.count <= 0 {
			return PodValue{}, false
		}
		return PodValue{Value: d.sum / d.count, Timestamp: d.last, Window: d.last.Sub(d.first)}, true
	case ComputeQuantile:
		d, ok := histogramDelta(s, src)
		if !ok {
			return PodValue{}, false
		}
		v, ok := bucketQuantile(r.Quantile, d.bounds, d.counts)
		return PodValue{Value: v, Timestamp: d.last, Window: d.last.Sub(d.first)}, ok
	default: // ComputeLast
		last := &s[len(s)-1]
		if !last.obs[src].present {
			return PodValue{}, false
		}
		return PodValue{Value: last.obs[src].value, Timestamp: last.t}, true
	}
}

// Combine folds pod values into a workload's value as a says (sum, mean,
// max, min; pooled needs the pods' histograms, see pool, and adds values
// here). The aggregate is as fresh as its stalest pod and spans the longest
// window. No values give an Aggregate with Pods 0.
func Combine(a Aggregation, values []PodValue) Aggregate {
	var agg Aggregate
	for _, v := range values {
		switch {
		case agg.Pods == 0:
			agg.Value = v.Value
		case a == AggMax:
			agg.Value = math.Max(agg.Value, v.Value)
		case a == AggMin:
			agg.Value = math.Min(agg.Value, v.Value)
		default: // sum, mean
			agg.Value += v.Value
		}
		agg.note(v.Timestamp, v.Window)
	}
	if a == AggMean && agg.Pods > 0 {
		agg.Value /= float64(agg.Pods)
	}
	return agg
}

// note counts one contributing pod whose newest sample is at t and whose
// value spans w.
func (agg *Aggregate) note(t time.Time, w time.Duration) {
	if agg.Pods == 0 || t.Before(agg.Timestamp) {
		agg.Timestamp = t
	}
	if w > agg.Window {
		agg.Window = w
	}
	agg.Pods++
}

// pool is a workload's pooled histogram: the pods' increases added up.
type pool struct {
	agg       Aggregate
	d         histDelta
	bucketsOK bool
}

// add pools one pod's increase d.
func (p *pool) add(d histDelta) {
	if p.agg.Pods == 0 {
		p.bucketsOK = true
		p.d.bounds = d.bounds
		p.d.counts = append([]float64(nil), d.counts...)
	} else if len(d.bounds) == len(p.d.bounds) && equalBounds(d.bounds, p.d.bounds) {
		for j := range d.counts {
			p.d.counts[j] += d.counts[j]
		}
	} else {
		p.bucketsOK = false
	}
	if d.bounds == nil {
		p.bucketsOK = false
	}
	p.d.count += d.count
	p.d.sum += d.sum
	p.agg.note(d.last, d.last.Sub(d.first))
}

// value computes rule r (mean or quantile) over the pooled histogram; false
// when no pod contributed, nothing was observed, or the pods' buckets differ.
func (p *pool) value(r *Rule) (Aggregate, bool) {
	if p.agg.Pods == 0 {
		return Aggregate{}, false
	}
	switch r.Compute {
	case ComputeMean:
		if p.d.count <= 0 {
			return Aggregate{}, false
		}
		p.agg.Value = p.d.sum / p.d.count
	default:
		v, ok := bucketQuantile(r.Quantile, p.d.bounds, p.d.counts)
		if !ok || !p.bucketsOK {
			return Aggregate{}, false
		}
		p.agg.Value = v
	}
	return p.agg, true
}

func equalBounds(a, b []float64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// promQLOperators are the PromQL aggregation operators over per-pod values
// that compute what Combine computes.
var promQLOperators = map[Aggregation]string{
	AggSum:  "sum",
	AggMean: "avg",
	AggMax:  "max",
	AggMin:  "min",
}

// PromQL is rule r written as PromQL over the series matching selector (a
// "{...}" matcher list) with rate window window (a Prometheus duration):
// per pod (grouped by podGroup, the namespace and pod labels) when perPod,
// else one value for all of them as r.Aggregate combines pods. It is value
// and Combine (or pool) in Prometheus' terms: rate is rate(), mean is
// Δ_sum/Δ_count, quantile is histogram_quantile over the buckets' increase,
// last is the gauge; pooled adds the pods' series before computing, as does
// sum for a rate or a gauge (the same number).
func (r Rule) PromQL(selector, window, podGroup string, perPod bool) string {
	if perPod {
		return r.promQLExpr(selector, window, podGroup)
	}
	if r.Aggregate == AggPooled || r.Aggregate == AggSum && (r.Compute == ComputeRate || r.Compute == ComputeLast) {
		return r.promQLExpr(selector, window, "")
	}
	return promQLOperators[r.Aggregate] + "(" + r.promQLExpr(selector, window, podGroup) + ")"
}

// promQLExpr is value's formula grouped by group ("" for one group).
func (r Rule) promQLExpr(selector, window, group string) string {
	w := "[" + window + "]"
	sum := func(inner string) string {
		if group == "" {
			return "sum(" + inner + ")"
		}
		return "sum by (" + group + ") (" + inner + ")"
	}
	switch r.Compute {
	case ComputeRate:
		return sum("rate(" + r.Series + selector + w + ")")
	case ComputeMean:
		return sum("rate("+r.Series+"_sum"+selector+w+")") + " / " + sum("rate("+r.Series+"_count"+selector+w+")")
	case ComputeQuantile:
		by := "le"
		if group != "" {
			by = group + ", le"
		}
		return "histogram_quantile(" + strconv.FormatFloat(r.Quantile, 'g', -1, 64) + ", sum by (" + by + ") (rate(" + r.Series + "_bucket" + selector + w + ")))"
	default: // last
		return sum(r.Series + selector)
	}
}
