package tune

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// Signal is one thing an autoscaler can scale on.
type Signal struct {
	// Metric is the adapter's metric name (custom.metrics.k8s.io and the
	// KEDA scaler's metricName); "cpu" is metrics-server's resource metric.
	Metric string
	// Label is how the table names it.
	Label string
	// value reads the signal from a step; NaN when not measured.
	value func(Step) float64
	// why is the signal's trait that is not in the numbers.
	why string
	// late marks a signal the HPA sees late: metrics-server's CPU is a
	// 15 s sample (bench-scaling: first scale-up 24.8 s after a step, 9.6 s
	// for the adapter's rates). A late signal must be steadier by
	// LatePenalty to be chosen over a fresh one.
	late bool
}

// LatePenalty is how much steadier across mixes a late signal must be to
// win: the capacity error a fresh signal's spread costs (the target is set
// at the smallest capacity, so up to spread-1 over-provisioned) against
// 15 s more of a rising load on too few pods.
const LatePenalty = 1.25

// Signals in order of preference when their capacities are equally steady:
// the adapter's per-second rates are fresh within seconds (1 s scrapes, a
// 3 s window); metrics-server's CPU is 15 s samples, and a CPU-limited pod
// cannot show more than its limit, so an overloaded pod looks merely busy;
// in-flight grows without bound under overload but is a noisy few requests
// at the knee of a fast model.
var Signals = []Signal{
	{Metric: "predicted_rows_per_second", Label: "rows/s", why: "follows the work itself: a 10,000-row request counts 20x a 500-row one",
		value: func(s Step) float64 { return pick(s.RowsPerSecond, s.Achieved*float64(s.Rows)) }},
	{Metric: "requests_per_second", Label: "requests/s", why: "counts a 500-row and a 10,000-row request alike",
		value: func(s Step) float64 { return pick(s.RequestsPerSecond, s.Achieved) }},
	{Metric: "cpu", Label: "CPU cores", late: true, why: "steady, but metrics-server samples every 15 s and a pod at its CPU limit looks the same at 1x and 3x its capacity",
		value: func(s Step) float64 { return s.CPUCores }},
	{Metric: "inflight_requests", Label: "in-flight", why: "grows under overload, but a few requests at the knee: coarse and noisy",
		value: func(s Step) float64 { return s.Inflight }},
}

func score(s Signal, spread float64) float64 {
	if s.late {
		return spread * LatePenalty
	}
	return spread
}

func pick(server, client float64) float64 {
	if !math.IsNaN(server) {
		return server
	}
	return client
}

// SignalByMetric finds a signal by its metric name.
func SignalByMetric(name string) (Signal, bool) {
	for _, s := range Signals {
		if s.Metric == name {
			return s, true
		}
	}
	return Signal{}, false
}

// Capacity is one mix's knee and the pod's capacity in every signal there.
type Capacity struct {
	Rows  int
	Knee  Knee
	Steps []Step
}

// At is the step at the knee.
func (c Capacity) At() Step { return c.Steps[c.Knee.Index] }

// Value is the capacity in s.
func (c Capacity) Value(s Signal) float64 { return s.value(c.At()) }

// Recommendation is the chosen signal and target.
type Recommendation struct {
	Signal Signal
	// Capacity is the lowest capacity over the mixes in Signal; Target is
	// Headroom below it.
	Capacity, Target, Headroom float64
	// Spread is, per signal metric, the largest capacity over the smallest
	// across mixes (1: the same whatever the rows per request).
	Spread     map[string]float64
	Capacities []Capacity
}

// Recommend picks the signal whose per-pod capacity varies least across the
// mixes (a late signal's spread counted LatePenalty times; ties, within
// 15%, go to the earlier of Signals) and sets its target headroom (0.2 =
// 20%) below the smallest capacity.
func Recommend(caps []Capacity, headroom float64, only string) (Recommendation, error) {
	if len(caps) == 0 {
		return Recommendation{}, errors.New("no capacity measured")
	}
	if headroom < 0 || headroom >= 1 {
		return Recommendation{}, fmt.Errorf("headroom %g: want 0 <= headroom < 1", headroom)
	}
	r := Recommendation{Headroom: headroom, Spread: map[string]float64{}, Capacities: caps}
	best := -1
	for i, s := range Signals {
		lo, hi := math.Inf(1), 0.0
		for _, c := range caps {
			v := c.Value(s)
			if math.IsNaN(v) || v <= 0 {
				lo = math.NaN()
				break
			}
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		if math.IsNaN(lo) {
			r.Spread[s.Metric] = math.NaN()
			continue
		}
		r.Spread[s.Metric] = hi / lo
		if only != "" && s.Metric != only {
			continue
		}
		if best < 0 || score(s, r.Spread[s.Metric]) < score(Signals[best], r.Spread[Signals[best].Metric])/1.15 {
			best = i
			r.Capacity = lo
		}
	}
	if best < 0 {
		if only != "" {
			return r, fmt.Errorf("signal %q was not measured for every mix (CPU needs the pod's /metrics)", only)
		}
		return r, errors.New("no signal was measured for every mix")
	}
	r.Signal = Signals[best]
	r.Target = roundDown(r.Capacity * (1 - headroom))
	return r, nil
}

// WriteTable explains the choice: each signal's capacity per mix, how much
// it moves with the mix, and why.
func (r Recommendation) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var head strings.Builder
	head.WriteString("signal\tmetric")
	for _, c := range r.Capacities {
		fmt.Fprintf(&head, "\tcapacity @%d rows", c.Rows)
	}
	head.WriteString("\tmax/min\t")
	fmt.Fprintln(tw, head.String())
	for _, s := range Signals {
		var b strings.Builder
		mark := " "
		if s.Metric == r.Signal.Metric {
			mark = "*"
		}
		fmt.Fprintf(&b, "%s %s\t%s", mark, s.Label, s.Metric)
		for _, c := range r.Capacities {
			fmt.Fprintf(&b, "\t%s", fmtValue(c.Value(s)))
		}
		sp := r.Spread[s.Metric]
		spread := "n/a"
		if !math.IsNaN(sp) {
			spread = fmt.Sprintf("%.2fx", sp)
		}
		fmt.Fprintf(&b, "\t%s\t%s", spread, s.why)
		fmt.Fprintln(tw, b.String())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	note := fmt.Sprintf("\n(CPU's max/min counts %.2fx: the HPA sees metrics-server's 15 s samples late)", LatePenalty)
	if len(r.Capacities) < 2 {
		note = " (one mix measured: pass --rows 500,10000 to see how each signal moves with rows per request)"
	}
	_, err := fmt.Fprintf(w, "\nrecommended: %s (%s), capacity %s per pod at the smallest, target %s (%.0f%% headroom)%s\n",
		r.Signal.Label, r.Signal.Metric, fmtValue(r.Capacity), fmtValue(r.Target), r.Headroom*100, note)
	return err
}

// roundDown keeps a target readable in a manifest: whole units from 100 up,
// three significant digits below, never rounded up past the headroom.
func roundDown(v float64) float64 {
	if v >= 100 {
		return math.Floor(v)
	}
	if v <= 0 {
		return v
	}
	scale := math.Pow(10, 2-math.Floor(math.Log10(v)))
	return math.Floor(v*scale) / scale
}

func fmtValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
