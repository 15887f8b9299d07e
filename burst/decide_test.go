package burst

import (
	"bufio"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
)

var base = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

// sample is one demand reading of a curve: seconds from the curve's start,
// the value, and how old its newest data was when read (NaN value: no data).
type sample struct {
	t, v float64
	age  time.Duration
}

// recorded loads testdata/demand.csv (see record_test.go): the collector's
// requests_per_second for one real model server under loadgen, read every
// 250 ms, between from and to seconds, re-based so from is 0.
func recorded(t *testing.T, from, to float64) []sample {
	t.Helper()
	f, err := os.Open("testdata/demand.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		parts := strings.Split(line, ",")
		if len(parts) != 3 {
			t.Fatalf("demand.csv: bad line %q", line)
		}
		ts, err := strconv.ParseFloat(parts[0], 64)
		if err != nil {
			t.Fatalf("demand.csv: %q: %v", line, err)
		}
		if ts < from || ts >= to {
			continue
		}
		s := sample{t: ts - from, v: math.NaN()}
		if parts[1] != "" {
			s.v, _ = strconv.ParseFloat(parts[1], 64)
			ms, _ := strconv.Atoi(parts[2])
			s.age = time.Duration(ms) * time.Millisecond
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		t.Fatalf("demand.csv has no samples in [%v, %v)", from, to)
	}
	return out
}

// synthetic is a curve every 250 ms for secs seconds of f(t), fresh data.
func synthetic(secs float64, f func(t float64) float64) []sample {
	var out []sample
	for ts := 0.0; ts < secs; ts += 0.25 {
		out = append(out, sample{t: ts, v: f(ts), age: 300 * time.Millisecond})
	}
	return out
}

// hpa is the HPA under test: one Pods metric target per pod.
type hpa struct {
	target   float64
	min, max int32
	behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
}

// overlayBehavior is components/hpa's: 100% or 4 pods per 15 s.
func overlayBehavior() *autoscalingv2.HorizontalPodAutoscalerBehavior {
	zero, sel := int32(0), autoscalingv2.MaxChangePolicySelect
	return &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{
		StabilizationWindowSeconds: &zero, SelectPolicy: &sel,
		Policies: []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PercentScalingPolicy, Value: 100, PeriodSeconds: 15}, {Type: autoscalingv2.PodsScalingPolicy, Value: 4, PeriodSeconds: 15}},
	}}
}

func podsBehavior(n, period int32) *autoscalingv2.HorizontalPodAutoscalerBehavior {
	return &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{
		Policies: []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PodsScalingPolicy, Value: n, PeriodSeconds: period}},
	}}
}

// scaleEvent is a burst the replay applied.
type scaleEvent struct {
	T        float64 // seconds into the curve
	From, To int32
}

// replay feeds the curve to Decide every 500 ms as the controller does,
// starting at start replicas (all ready), and applies each burst: new pods
// are ready podStart later. It returns the bursts.
func replay(t *testing.T, p Policy, h hpa, start int32, podStart time.Duration, curve []sample) []scaleEvent {
	t.Helper()
	var st State
	var events []scaleEvent
	current := start
	var readyAt []time.Time
	for range start {
		readyAt = append(readyAt, base.Add(-time.Hour))
	}
	next := 0.0
	for _, s := range curve {
		if s.t < next {
			continue
		}
		next = s.t + 0.5
		now := base.Add(time.Duration(s.t * float64(time.Second)))
		ready := int32(0)
		for _, r := range readyAt {
			if !now.Before(r) {
				ready++
			}
		}
		r := Reading{}
		if !math.IsNaN(s.v) {
			r = Reading{Value: s.v, At: now.Add(-s.age)}
		}
		in := Input{Now: now, Current: current, Ready: ready, Min: h.min, Max: h.max, Behavior: h.behavior,
			Tolerance: DefaultTolerance, MaxAge: 3 * time.Second,
			Targets: []Target{{Metric: "requests_per_second", PerPod: true, Value: h.target}}, Readings: []Reading{r}}
		d, nst := Decide(p, in, st)
		st = nst
		if d.Desired < current {
			t.Fatalf("t=%.2f: decided %d below the current %d: %s", s.t, d.Desired, current, d.Reason)
		}
		if d.Burst(in) {
			events = append(events, scaleEvent{T: s.t, From: current, To: d.Desired})
			t.Logf("t=%.2fs burst: %s", s.t, d.Reason)
			st = st.Scaled(now, current, d.Desired)
			for range d.Desired - current {
				readyAt = append(readyAt, now.Add(podStart))
			}
			current = d.Desired
		}
	}
	return events
}

func TestDecideRecordedCurves(t *testing.T) {
	defaultHPA := hpa{target: 4, min: 1, max: 20, behavior: overlayBehavior()}
	roomy := hpa{target: 4, min: 1, max: 20, behavior: podsBehavior(10, 15)}
	tests := []struct {
		name   string
		policy Policy
		hpa    hpa
		from   float64 // seconds of demand.csv; the load changes at from+step
		to     float64
		step   float64
		// firstBy: the first burst must come within this many seconds of
		// the load change (0: no burst at all; -1: any time).
		firstBy float64
		final   int32 // replicas at the end
		max     int   // at most this many bursts
	}{
		// 1/s -> 24/s. The collector's 3 s window passes 200% of one pod's
		// 4/s about a second after the step; one more reading holds it.
		{name: "step, room to scale", policy: DefaultPolicy(), hpa: roomy, from: 5, to: 40, step: 5, firstBy: 3, final: 6, max: 2},
		// components/hpa's behavior allows 1 -> 5 in the first 15 s; the
		// HPA itself adds the sixth at its next sync.
		{name: "step, the overlay's scale-up policy", policy: DefaultPolicy(), hpa: defaultHPA, from: 5, to: 40, step: 5, firstBy: 3, final: 5, max: 1},
		{name: "step, maxReplicas 3", policy: DefaultPolicy(), hpa: hpa{target: 4, min: 1, max: 3, behavior: podsBehavior(10, 15)}, from: 5, to: 40, step: 5, firstBy: 3, final: 3, max: 1},
		{name: "step, 2 pods per minute", policy: DefaultPolicy(), hpa: hpa{target: 4, min: 1, max: 20, behavior: podsBehavior(2, 60)}, from: 5, to: 40, step: 5, firstBy: 3, final: 3, max: 1},
		{name: "step, legacy limit without behavior", policy: DefaultPolicy(), hpa: hpa{target: 4, min: 1, max: 20}, from: 5, to: 40, step: 5, firstBy: 3, final: 6, max: 2},
		// 60/s for one second: through the 3 s window the reading stays
		// above 200% for about three seconds, shorter than a 5 s hold.
		{name: "one-second spike, hold 5s", policy: Policy{Threshold: 2, Hold: 5 * time.Second}, hpa: roomy, from: 45, to: 65, step: 7, final: 1},
		// The same spike bursts with a 1 s hold, so the case above is the
		// hold at work, not a spike too small to matter.
		{name: "one-second spike, hold 1s", policy: DefaultPolicy(), hpa: roomy, from: 45, to: 65, step: 7, firstBy: 3, final: 6, max: 1},
		// 8/s: exactly 200% of one pod, readings jitter from 7.97 to 8.04
		// around the threshold. The first reading at or above it held for a
		// second bursts once, to what the HPA's formula gives for it
		// (ceil(8.03/4) = 3); after that, 30 s of jitter change nothing.
		{name: "noisy plateau at the threshold", policy: DefaultPolicy(), hpa: roomy, from: 60, to: 95, step: 5, firstBy: -1, final: 3, max: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := replay(t, tc.policy, tc.hpa, 1, 2*time.Second, recorded(t, tc.from, tc.to))
			if len(ev) > tc.max {
				t.Fatalf("%d bursts, want at most %d: %+v", len(ev), tc.max, ev)
			}
			if tc.firstBy == 0 && len(ev) > 0 {
				t.Fatalf("want no burst, got %+v", ev)
			}
			if tc.firstBy == -1 && len(ev) == 0 {
				t.Fatal("no burst, want one")
			}
			if tc.firstBy > 0 {
				if len(ev) == 0 {
					t.Fatalf("no burst, want one within %.1f s of the step", tc.firstBy)
				}
				if d := ev[0].T - tc.step; d < 0 || d > tc.firstBy {
					t.Fatalf("first burst %.2f s after the step, want within (0, %.1f]: %+v", d, tc.firstBy, ev)
				}
			}
			final := int32(1)
			if len(ev) > 0 {
				final = ev[len(ev)-1].To
			}
			if final != tc.final {
				t.Fatalf("ended at %d replicas, want %d: %+v", final, tc.final, ev)
			}
		})
	}
}

func TestDecideSynthetic(t *testing.T) {
	roomy := hpa{target: 4, min: 1, max: 20, behavior: podsBehavior(10, 15)}
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name   string
		hpa    hpa
		start  int32
		curve  []sample
		policy Policy
		want   []scaleEvent
	}{
		{
			// After a burst to 6, demand noisy around 24 (+-15%): the
			// HPA's tolerance keeps 6 and nothing ever goes down.
			name: "noisy plateau at the burst's count", hpa: roomy, start: 6, policy: DefaultPolicy(),
			curve: synthetic(60, func(float64) float64 { return 24 * (0.85 + 0.3*rng.Float64()) }),
		},
		{
			name: "stale readings never burst", hpa: roomy, start: 1, policy: DefaultPolicy(),
			curve: func() []sample {
				c := synthetic(10, func(float64) float64 { return 40 })
				for i := range c {
					c[i].age = 4 * time.Second
				}
				return c
			}(),
		},
		{
			name: "no data never bursts", hpa: roomy, start: 1, policy: DefaultPolicy(),
			curve: synthetic(10, func(float64) float64 { return math.NaN() }),
		},
		{
			// A gap in the data restarts the hold: 40/s with a stale
			// reading every 2 s never holds for 2 s.
			name: "a gap restarts the hold", hpa: roomy, start: 1, policy: Policy{Threshold: 2, Hold: 2 * time.Second},
			curve: func() []sample {
				c := synthetic(10, func(float64) float64 { return 40 })
				for i := range c {
					if i%8 == 6 {
						c[i].v = math.NaN()
					}
				}
				return c
			}(),
		},
		{
			name: "demand falls: never downwards", hpa: roomy, start: 8, policy: DefaultPolicy(),
			curve: synthetic(20, func(t float64) float64 { return 40 - 2*t }),
		},
		{
			// 21/s on 5 replicas of 4/s is 105%: within the HPA's 10%, so
			// the HPA would keep 5, and so does the burst, however far
			// above the threshold the one ready pod is.
			name: "within the HPA's tolerance", hpa: roomy, start: 5, policy: DefaultPolicy(),
			curve: synthetic(10, func(float64) float64 { return 21 }),
		},
		{
			name: "min replicas lift the count", hpa: hpa{target: 4, min: 9, max: 20, behavior: podsBehavior(10, 15)}, start: 1, policy: DefaultPolicy(),
			curve: synthetic(5, func(float64) float64 { return 24 }),
			want:  []scaleEvent{{T: 1, From: 1, To: 9}},
		},
		{
			name: "hold zero bursts on the first reading", hpa: roomy, start: 1, policy: Policy{Threshold: 2},
			curve: synthetic(5, func(float64) float64 { return 24 }),
			want:  []scaleEvent{{T: 0, From: 1, To: 6}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := replay(t, tc.policy, tc.hpa, tc.start, 2*time.Second, tc.curve)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("bursts (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDecideFormula checks single decisions against the HPA's formula and
// limits, number by number.
func TestDecideFormula(t *testing.T) {
	zero := int32(0)
	thirty := int32(30)
	disabled := autoscalingv2.DisabledPolicySelect
	minSel := autoscalingv2.MinChangePolicySelect
	tol := resource.MustParse("0.5")
	per := func(v float64) Target { return Target{Metric: "rps", PerPod: true, Value: v} }
	tests := []struct {
		name     string
		current  int32
		ready    int32
		max      int32
		behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
		targets  []Target
		values   []float64
		want     int32
	}{
		{name: "per pod: ceil(total/target)", current: 1, ready: 1, max: 20, behavior: podsBehavior(20, 15), targets: []Target{per(4)}, values: []float64{24.2}, want: 7},
		{name: "Value target: ceil(ratio x ready)", current: 2, ready: 2, max: 20, behavior: podsBehavior(20, 15), targets: []Target{{Metric: "p99", Value: 0.1}}, values: []float64{0.35}, want: 7},
		{name: "highest over the metrics", current: 1, ready: 1, max: 20, behavior: podsBehavior(20, 15), targets: []Target{per(4), per(100)}, values: []float64{9, 1000}, want: 10},
		{name: "maxReplicas", current: 1, ready: 1, max: 4, behavior: podsBehavior(20, 15), targets: []Target{per(4)}, values: []float64{100}, want: 4},
		{name: "legacy limit max(2x, 4)", current: 3, ready: 3, max: 50, targets: []Target{per(1)}, values: []float64{100}, want: 6},
		{name: "default rules when scaleUp is unset", current: 2, ready: 2, max: 50, behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{}, targets: []Target{per(1)}, values: []float64{100}, want: 6},
		{name: "percent policy", current: 3, ready: 3, max: 50, behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{Policies: []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PercentScalingPolicy, Value: 50, PeriodSeconds: 15}}}}, targets: []Target{per(1)}, values: []float64{100}, want: 5},
		{name: "min-change policy", current: 3, ready: 3, max: 50, behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{SelectPolicy: &minSel, Policies: []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PercentScalingPolicy, Value: 100, PeriodSeconds: 15}, {Type: autoscalingv2.PodsScalingPolicy, Value: 1, PeriodSeconds: 15}}}}, targets: []Target{per(1)}, values: []float64{100}, want: 4},
		{name: "scale-up disabled", current: 1, ready: 1, max: 20, behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{SelectPolicy: &disabled, Policies: podsBehavior(10, 15).ScaleUp.Policies}}, targets: []Target{per(4)}, values: []float64{24}, want: 1},
		{name: "scale-up tolerance 50%", current: 4, ready: 1, max: 20, behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{Tolerance: &tol, StabilizationWindowSeconds: &zero, Policies: podsBehavior(10, 15).ScaleUp.Policies}}, targets: []Target{per(4)}, values: []float64{23}, want: 4},
		{name: "stabilization window: first evaluation", current: 1, ready: 1, max: 20, behavior: &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{StabilizationWindowSeconds: &thirty, Policies: podsBehavior(10, 15).ScaleUp.Policies}}, targets: []Target{per(4)}, values: []float64{24}, want: 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Now: base, Current: tc.current, Ready: tc.ready, Min: 1, Max: tc.max, Behavior: tc.behavior,
				Tolerance: DefaultTolerance, MaxAge: 3 * time.Second, Targets: tc.targets}
			for _, v := range tc.values {
				in.Readings = append(in.Readings, Reading{Value: v, At: base})
			}
			d, _ := Decide(Policy{Threshold: 2}, in, State{})
			if d.Desired != tc.want {
				t.Fatalf("desired %d, want %d: %s", d.Desired, tc.want, d.Reason)
			}
		})
	}
}

// TestDecideStabilizationAndPeriods: a scale-up stabilization window takes
// the lowest recommendation in it, and the bursts' own scale-ups count
// against the policy's period.
func TestDecideStabilizationAndPeriods(t *testing.T) {
	thirty := int32(30)
	b := &autoscalingv2.HorizontalPodAutoscalerBehavior{ScaleUp: &autoscalingv2.HPAScalingRules{StabilizationWindowSeconds: &thirty,
		Policies: []autoscalingv2.HPAScalingPolicy{{Type: autoscalingv2.PodsScalingPolicy, Value: 3, PeriodSeconds: 60}}}}
	in := func(sec float64, current int32, v float64) Input {
		now := base.Add(time.Duration(sec * float64(time.Second)))
		return Input{Now: now, Current: current, Ready: current, Min: 1, Max: 20, Behavior: b, Tolerance: DefaultTolerance, MaxAge: time.Second,
			Targets: []Target{{Metric: "rps", PerPod: true, Value: 4}}, Readings: []Reading{{Value: v, At: now}}}
	}
	p := Policy{Threshold: 2}
	var st State
	// 6/s recommends 2; below the threshold (150%), no burst.
	d, st := Decide(p, in(0, 1, 6), st)
	if d.Desired != 1 {
		t.Fatalf("t=0: %d: %s", d.Desired, d.Reason)
	}
	// 24/s at t=10: the window still holds the 2 from t=0.
	d, st = Decide(p, in(10, 1, 24), st)
	if d.Desired != 2 {
		t.Fatalf("t=10: desired %d, want 2 (lowest recommendation in 30 s): %s", d.Desired, d.Reason)
	}
	st = st.Scaled(base.Add(10*time.Second), 1, 2)
	// t=31: the 2 is out of the window; the policy allows 3 pods per 60 s
	// counted from 1, and one was added at t=10: 1 + 3 = 4.
	d, _ = Decide(p, in(31, 2, 24), st)
	if d.Desired != 4 {
		t.Fatalf("t=31: desired %d, want 4 (3 pods per 60 s from 1): %s", d.Desired, d.Reason)
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		in      string
		want    Policy
		wantErr string
	}{
		{in: "", want: DefaultPolicy()},
		{in: "on", want: DefaultPolicy()},
		{in: "threshold=150%", want: Policy{Threshold: 1.5, Hold: time.Second}},
		{in: " threshold = 3 , hold = 2.5s ", want: Policy{Threshold: 3, Hold: 2500 * time.Millisecond}},
		{in: "hold=0s", want: Policy{Threshold: 2}},
		{in: "threshold=90%", wantErr: "below 100%"},
		{in: "threshold=x", wantErr: `threshold "x"`},
		{in: "threshold=NaN", wantErr: "finite"},
		{in: "threshold=Inf", wantErr: "finite"},
		{in: "hold=1h", wantErr: "want 0 to 5m0s"},
		{in: "hold=-1s", wantErr: "want 0 to"},
		{in: "hold=fast", wantErr: `hold "fast"`},
		{in: "treshold=2", wantErr: `unknown key "treshold"`},
		{in: "threshold", wantErr: "not key=value"},
		{in: "hold=1s,hold=2s", wantErr: "hold given twice"},
		{in: "hold=1s,", wantErr: "not key=value"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePolicy(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			back, err := ParsePolicy(got.String())
			if err != nil || back != got {
				t.Fatalf("String() %q parses to %+v, %v", got.String(), back, err)
			}
		})
	}
}

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"", "on", "threshold=200%,hold=1s", "threshold=1.5", "hold=0s", "x=y", "threshold=1e400%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy(s)
		if err != nil {
			return
		}
		if p.Threshold < 1 || p.Threshold > 1e6 || math.IsNaN(p.Threshold) || p.Hold < 0 || p.Hold > maxHold {
			t.Fatalf("%q parsed to out-of-range %+v", s, p)
		}
		back, err := ParsePolicy(p.String())
		if err != nil {
			t.Fatalf("%q -> %q does not parse again: %v", s, p.String(), err)
		}
		if math.Abs(back.Threshold-p.Threshold) > 1e-9*p.Threshold || back.Hold != p.Hold {
			t.Fatalf("%q -> %+v -> %q -> %+v", s, p, p.String(), back)
		}
	})
}
