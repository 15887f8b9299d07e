// Package tune measures one model-server pod's capacity and turns it into an
// autoscaling target: it ramps open-loop load for a rows-per-request mix
// until the latency SLO breaks, finds the knee (the highest offered load the
// pod serves within the SLO), reads the pod's capacity in each signal the
// adapter serves (requests/s, rows/s, in-flight, CPU), recommends the signal
// whose capacity depends least on the mix, and writes the HPA, the
// SeldonDeployment hpaSpec and the KEDA ScaledObject with the target a
// stated headroom below capacity. `loadgen tune` is the command.
package tune

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Step is one constant-rate step of a ramp and what it measured.
type Step struct {
	// Rows is the rows per request of the mix.
	Rows int
	// Offered is the scheduled arrival rate (requests/s).
	Offered float64
	// Duration is how long requests were sent.
	Duration time.Duration
	// Sent, Failed count requests.
	Sent, Failed int
	// Achieved is successful answers per second of the step.
	Achieved float64
	// P50, P99 are client-side latencies from the intended send time.
	P50, P99 time.Duration
	// Server-side, as the adapter computes them from the pod's /metrics
	// over the step (NaN when the pod's metrics were not read): requests/s,
	// rows/s, mean requests in flight (Little's law over the duration
	// histogram's sum) and CPU cores (process_cpu_seconds_total).
	RequestsPerSecond, RowsPerSecond, Inflight, CPUCores float64
}

// KneeOptions say what breaks the SLO.
type KneeOptions struct {
	// SLO is the latency bound at Quantile.
	SLO time.Duration
	// Quantile is 0.5 or 0.99 (the quantiles a Step keeps).
	Quantile float64
	// MinGoodput is the least fraction of the offered rate that must be
	// answered successfully (below it the pod is falling behind); 0: 0.95.
	MinGoodput float64
	// MaxErrorRatio is the most failed requests allowed; 0: 0.01.
	MaxErrorRatio float64
}

func (o KneeOptions) withDefaults() KneeOptions {
	if o.MinGoodput == 0 {
		o.MinGoodput = 0.95
	}
	if o.MaxErrorRatio == 0 {
		o.MaxErrorRatio = 0.01
	}
	if o.Quantile == 0 {
		o.Quantile = 0.99
	}
	return o
}

// sentRate is what the step really sent per second (the schedule's whole
// requests over its duration), what the answers are compared with.
func (s Step) sentRate() float64 {
	if s.Duration <= 0 {
		return s.Offered
	}
	return float64(s.Sent) / s.Duration.Seconds()
}

// Latency is the step's latency at q (0.5 or 0.99).
func (s Step) Latency(q float64) time.Duration {
	if q <= 0.5 {
		return s.P50
	}
	return s.P99
}

// Broken says why the step misses the SLO, or "" when it meets it.
func (o KneeOptions) Broken(s Step) string {
	o = o.withDefaults()
	switch {
	case s.Sent == 0:
		return "nothing sent"
	case float64(s.Failed)/float64(s.Sent) > o.MaxErrorRatio:
		return fmt.Sprintf("%d of %d requests failed", s.Failed, s.Sent)
	case s.Latency(o.Quantile) > o.SLO:
		return fmt.Sprintf("p%g %s > SLO %s", o.Quantile*100, s.Latency(o.Quantile).Round(time.Millisecond), o.SLO)
	case s.Achieved < o.MinGoodput*s.sentRate():
		return fmt.Sprintf("answered %.1f/s of %.1f/s sent", s.Achieved, s.sentRate())
	}
	return ""
}

// ErrBrokenAtStart is returned when even the first step misses the SLO.
var ErrBrokenAtStart = errors.New("the SLO is broken at the lowest offered load")

// Knee is where a ramp's SLO broke.
type Knee struct {
	// Index of the last step that met the SLO before it broke for good.
	Index int
	// Reached says the SLO did break; false when every step met it (the
	// capacity is at least the last step's).
	Reached bool
	// Why the first step of the sustained break missed the SLO.
	Why string
}

// FindKnee returns the highest step, in ramp order, that meets the SLO
// before the first sustained break: a step that misses it and is either the
// last or followed by another that misses it. One bad step among good ones
// is noise (a GC pause, a neighbour's burst on a shared machine), not the
// pod's limit; the load only rises, so what comes after the sustained break
// is past the knee even where a step happens to pass.
func FindKnee(steps []Step, o KneeOptions) (Knee, error) {
	if len(steps) == 0 {
		return Knee{}, errors.New("no steps recorded")
	}
	o = o.withDefaults()
	broken := make([]string, len(steps))
	for i, s := range steps {
		broken[i] = o.Broken(s)
	}
	for i := range steps {
		if broken[i] == "" || (i+1 < len(steps) && broken[i+1] == "") {
			continue
		}
		if i == 0 {
			return Knee{Index: -1, Reached: true, Why: broken[0]}, fmt.Errorf("%w (%.1f requests/s of %d rows: %s): start lower or relax the SLO",
				ErrBrokenAtStart, steps[0].Offered, steps[0].Rows, broken[0])
		}
		// The last good step before i (i-1 may itself be a lone bad one
		// only if i-2 was good and so on: walk back to a good one).
		k := i - 1
		for k >= 0 && broken[k] != "" {
			k--
		}
		if k < 0 {
			return Knee{Index: -1, Reached: true, Why: broken[i]}, fmt.Errorf("%w: %s", ErrBrokenAtStart, broken[i])
		}
		return Knee{Index: k, Reached: true, Why: broken[i]}, nil
	}
	last := len(steps) - 1
	for last >= 0 && broken[last] != "" {
		last--
	}
	return Knee{Index: last}, nil
}

// Stop says whether a ramp can end after steps: the SLO broke on the last
// two steps (a sustained break, see FindKnee).
func (o KneeOptions) Stop(steps []Step) bool {
	n := len(steps)
	return n >= 2 && o.Broken(steps[n-1]) != "" && o.Broken(steps[n-2]) != ""
}

// nan is the value of a signal that was not measured.
var nan = math.NaN()
