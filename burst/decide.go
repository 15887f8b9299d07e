package burst

import (
	"fmt"
	"math"
	"strings"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
)

// DefaultTolerance is the HPA's --horizontal-pod-autoscaler-tolerance: a
// usage ratio within 10% of 1 leaves the replicas as they are.
const DefaultTolerance = 0.1

// Target is one metric of the HPA that a burst can read: a Pods metric, or
// an Object or External metric the collector serves.
type Target struct {
	// Metric is the metric's name.
	Metric string
	// PerPod: the HPA divides the metric by the replicas (a Pods metric, or
	// an Object/External metric with an AverageValue target), so the
	// reading is the workload's total and Value the per-pod target.
	// Otherwise Value is compared with the reading as is (a Value target).
	PerPod bool
	// Value is the HPA's target, in the metric's units.
	Value float64
}

// Reading is one demand reading for a Target.
type Reading struct {
	// Value is the demand: the total over the workload's pods for a PerPod
	// target, the metric's value otherwise.
	Value float64
	// At is when the newest data behind Value was taken; zero means no
	// reading (the source failed or had no data).
	At time.Time
}

// Input is what Decide sees at one evaluation.
type Input struct {
	Now time.Time
	// Current is the workload's /scale spec.replicas, Ready its ready pods.
	Current, Ready int32
	// Min and Max are the HPA's minReplicas and maxReplicas.
	Min, Max int32
	// Behavior is the HPA's spec.behavior (nil: the HPA's legacy limits).
	Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
	// Tolerance is the controller-manager's tolerance (DefaultTolerance);
	// behavior.scaleUp.tolerance overrides it, as in the HPA.
	Tolerance float64
	// MaxAge is the oldest a reading may be: anything older is stale and
	// nothing scales on it.
	MaxAge time.Duration
	// Targets and Readings, index by index.
	Targets  []Target
	Readings []Reading
}

// Decision is Decide's answer.
type Decision struct {
	// Desired is the count to scale to now; Desired > Current is a burst,
	// anything else means leave the workload alone.
	Desired int32
	// Ratio is the highest demand-to-ready-capacity ratio among the targets
	// (0 when no fresh reading).
	Ratio float64
	// Metric is the target with that ratio.
	Metric int
	// Reason says why, with the numbers (the Event's message on a burst).
	Reason string
	// Stale: a reading was missing, too old or not a number, so nothing
	// was decided.
	Stale bool
	// Crossed: the ratio reached the threshold at this evaluation (the
	// hold starts now).
	Crossed bool
	// HoldEnds is when the hold will be satisfied if the ratio stays at or
	// above the threshold (zero when it is below).
	HoldEnds time.Time
}

// Burst reports whether the decision is to scale up now.
func (d Decision) Burst(in Input) bool { return d.Desired > in.Current }

// State is what Decide remembers between evaluations of one HPA.
type State struct {
	// since is when the ratio last rose to the threshold (zero: it is
	// below, or the last reading was stale).
	since time.Time
	// recs are raw recommendations, for scale-up stabilization.
	recs []stamped
	// ups are the bursts' own scale-ups, for the behavior's policy periods.
	ups []stamped
}

type stamped struct {
	at time.Time
	n  int32
}

// keepFor is how long State keeps recommendations and scale-ups: the
// longest stabilization window or policy period the HPA API allows.
const keepFor = time.Hour

// Scaled records a scale-up the controller applied, so the next decisions
// count it against the behavior's policies as the HPA counts its own.
func (s State) Scaled(at time.Time, from, to int32) State {
	if to > from {
		s.ups = append(prune(s.ups, at), stamped{at, to - from})
	}
	return s
}

func prune(xs []stamped, now time.Time) []stamped {
	out := xs[:0:0]
	for _, x := range xs {
		if now.Sub(x.at) < keepFor {
			out = append(out, x)
		}
	}
	return out
}

// Decide is the burst decision for one HPA: when every target has a fresh
// reading and one of them has been at or above p.Threshold times the ready
// pods' capacity for p.Hold, the answer is what the HPA's own replica
// calculation gives for those readings (ceil(current * usage/target) with its
// tolerance, per metric type, the highest over the targets), within
// minReplicas, maxReplicas and the behavior's scale-up stabilization and
// policies, never below Current. It is a pure function: the returned State
// replaces st.
func Decide(p Policy, in Input, st State) (Decision, State) {
	d := Decision{Desired: in.Current}
	if in.Current <= 0 {
		// Zero is the activator's and the HPA's (or KEDA's) business: there
		// is no ready capacity to exceed, and 0 -> 1 is not a burst.
		st.since = time.Time{}
		d.Reason = "workload at zero replicas"
		return d, st
	}
	if len(in.Targets) == 0 || len(in.Targets) != len(in.Readings) {
		st.since = time.Time{}
		d.Reason = "no metric the burst can read"
		return d, st
	}
	for i, r := range in.Readings {
		if r.At.IsZero() {
			st.since = time.Time{}
			d.Reason = fmt.Sprintf("no data for %s", in.Targets[i].Metric)
			d.Stale = true
			return d, st
		}
		if age := in.Now.Sub(r.At); age > in.MaxAge {
			st.since = time.Time{}
			d.Reason = fmt.Sprintf("%s is stale (%s old, limit %s)", in.Targets[i].Metric, age.Round(time.Millisecond), in.MaxAge)
			d.Stale = true
			return d, st
		}
		if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) || r.Value < 0 {
			st.since = time.Time{}
			d.Reason = fmt.Sprintf("%s reads %v", in.Targets[i].Metric, r.Value)
			d.Stale = true
			return d, st
		}
	}
	tolUp, tolDown := in.Tolerance, in.Tolerance
	if b := in.Behavior; b != nil {
		if b.ScaleUp != nil && b.ScaleUp.Tolerance != nil {
			tolUp = b.ScaleUp.Tolerance.AsApproximateFloat64()
		}
		if b.ScaleDown != nil && b.ScaleDown.Tolerance != nil {
			tolDown = b.ScaleDown.Tolerance.AsApproximateFloat64()
		}
	}
	raw := int32(0)
	formula := ""
	for i, t := range in.Targets {
		r := in.Readings[i].Value
		ratio := capacityRatio(t, r, in.Ready)
		if i == 0 || ratio > d.Ratio {
			d.Ratio, d.Metric = ratio, i
		}
		n, f := proposal(t, r, in.Current, in.Ready, tolUp, tolDown)
		if i == 0 || n > raw {
			raw, formula = n, f
		}
	}
	raw = max(raw, in.Min)
	st.recs = append(prune(st.recs, in.Now), stamped{in.Now, raw})

	t := in.Targets[d.Metric]
	what := fmt.Sprintf("%s %s against ready capacity %s (%d ready x %s): %.0f%%",
		t.Metric, num(in.Readings[d.Metric].Value), num(capacity(t, in.Ready)), in.Ready, num(t.Value), 100*d.Ratio)
	if !t.PerPod {
		what = fmt.Sprintf("%s %s against target %s: %.0f%%", t.Metric, num(in.Readings[d.Metric].Value), num(t.Value), 100*d.Ratio)
	}
	if d.Ratio < p.Threshold {
		st.since = time.Time{}
		d.Reason = fmt.Sprintf("%s, below the %.0f%% threshold", what, 100*p.Threshold)
		return d, st
	}
	if st.since.IsZero() {
		st.since = in.Now
		d.Crossed = true
	}
	d.HoldEnds = st.since.Add(p.Hold)
	if held := in.Now.Sub(st.since); held < p.Hold {
		d.Reason = fmt.Sprintf("%s, at or above %.0f%% for %s of %s", what, 100*p.Threshold, held.Round(time.Millisecond), p.Hold)
		return d, st
	}
	want, limit := normalize(in, raw, st)
	d.Desired = max(in.Current, want)
	if d.Desired == in.Current {
		d.Reason = fmt.Sprintf("%s for %s; the HPA would ask for %d (%s), limited to %d (%s): nothing to do at %d",
			what, in.Now.Sub(st.since).Round(time.Millisecond), raw, formula, want, limit, in.Current)
		return d, st
	}
	d.Reason = fmt.Sprintf("%s for %s (threshold %.0f%%); the HPA's formula gives %d (%s)",
		what, in.Now.Sub(st.since).Round(time.Millisecond), 100*p.Threshold, raw, formula)
	if want != raw {
		d.Reason += fmt.Sprintf(", limited to %d (%s)", want, limit)
	}
	d.Reason += fmt.Sprintf(": %d -> %d", in.Current, d.Desired)
	return d, st
}

func capacity(t Target, ready int32) float64 {
	if !t.PerPod {
		return t.Value
	}
	return t.Value * float64(ready)
}

// capacityRatio is demand over what the ready pods are sized for.
func capacityRatio(t Target, v float64, ready int32) float64 {
	c := capacity(t, ready)
	if c <= 0 {
		if v > 0 {
			return math.Inf(1)
		}
		return 0
	}
	return v / c
}

// proposal is the HPA replica calculator's answer for one metric
// (pkg/controller/podautoscaler/replica_calculator.go):
//   - per-pod targets (Pods; Object and External AverageValue): usage
//     ratio = total / (target * replicas); within tolerance the replicas
//     stay, else ceil(total / target). For a Pods metric the HPA counts the
//     pods that have no value yet as 0 on a scale-up, so the ratio is over
//     all current replicas, and a ratio that would turn the direction
//     round keeps the current count: the same answer.
//   - Value targets (Object, External): ratio = value / target; within
//     tolerance the replicas stay, else ceil(ratio * ready pods).
func proposal(t Target, v float64, current, ready int32, tolUp, tolDown float64) (int32, string) {
	if t.Value <= 0 {
		return current, "no target"
	}
	if t.PerPod {
		ratio := v / (t.Value * float64(current))
		if within(ratio, tolUp, tolDown) {
			return current, fmt.Sprintf("%s/(%s x %d) within tolerance", num(v), num(t.Value), current)
		}
		return ceil32(v / t.Value), fmt.Sprintf("ceil(%s/%s)", num(v), num(t.Value))
	}
	ratio := v / t.Value
	if within(ratio, tolUp, tolDown) {
		return current, fmt.Sprintf("%s/%s within tolerance", num(v), num(t.Value))
	}
	return ceil32(ratio * float64(ready)), fmt.Sprintf("ceil(%s/%s x %d ready)", num(v), num(t.Value), ready)
}

func within(ratio, up, down float64) bool { return 1-down <= ratio && ratio <= 1+up }

func ceil32(f float64) int32 {
	if f >= math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(math.Ceil(f))
}

// normalize applies what the HPA applies after the replica calculation
// (horizontal.go: normalizeDesiredReplicas[WithBehaviors]) to a scale-up:
// the scale-up stabilization window (the lowest recommendation in it), the
// scale-up policies counted from the bursts' own scale-ups in each policy's
// period (or, without behavior, the legacy max(2 x current, 4)), and
// maxReplicas. It returns the count and what limited it.
func normalize(in Input, raw int32, st State) (int32, string) {
	b := in.Behavior
	rec := raw
	var limit int32
	why := ""
	if b == nil {
		limit = max(2*in.Current, 4)
		why = "legacy limit max(2 x current, 4)"
	} else {
		up := b.ScaleUp
		if up != nil && up.StabilizationWindowSeconds != nil && *up.StabilizationWindowSeconds > 0 {
			cutoff := in.Now.Add(-time.Duration(*up.StabilizationWindowSeconds) * time.Second)
			for _, r := range st.recs {
				if r.at.After(cutoff) && r.n < rec {
					rec = r.n
				}
			}
		}
		limit = scaleUpLimit(in.Now, in.Current, st.ups, up)
		why = "scale-up policy"
	}
	if limit < in.Current {
		limit = in.Current
	}
	allowed := min(in.Max, limit)
	switch {
	case rec < raw:
		why = "scale-up stabilization"
	case raw > in.Max && allowed == in.Max:
		why = fmt.Sprintf("maxReplicas %d", in.Max)
	}
	return min(rec, allowed), why
}

// defaultScaleUp is the API's default scale-up rules (GenerateHPAScaleUpRules):
// 100% or 4 pods per 15 s, whichever is more.
var defaultScaleUp = autoscalingv2.HPAScalingRules{
	Policies: []autoscalingv2.HPAScalingPolicy{
		{Type: autoscalingv2.PercentScalingPolicy, Value: 100, PeriodSeconds: 15},
		{Type: autoscalingv2.PodsScalingPolicy, Value: 4, PeriodSeconds: 15},
	},
}

// scaleUpLimit is calculateScaleUpLimitWithScalingRules over the bursts' own
// scale-ups.
func scaleUpLimit(now time.Time, current int32, ups []stamped, rules *autoscalingv2.HPAScalingRules) int32 {
	if rules == nil || len(rules.Policies) == 0 {
		r := defaultScaleUp
		if rules != nil {
			r.SelectPolicy = rules.SelectPolicy
		}
		rules = &r
	}
	sel := autoscalingv2.MaxChangePolicySelect
	if rules.SelectPolicy != nil {
		sel = *rules.SelectPolicy
	}
	if sel == autoscalingv2.DisabledPolicySelect {
		return current
	}
	result := int32(math.MinInt32)
	if sel == autoscalingv2.MinChangePolicySelect {
		result = math.MaxInt32
	}
	for _, pol := range rules.Policies {
		cutoff := now.Add(-time.Duration(pol.PeriodSeconds) * time.Second)
		added := int32(0)
		for _, u := range ups {
			if u.at.After(cutoff) {
				added += u.n
			}
		}
		start := current - added
		var proposed int32
		switch pol.Type {
		case autoscalingv2.PodsScalingPolicy:
			proposed = start + pol.Value
		case autoscalingv2.PercentScalingPolicy:
			proposed = int32(math.Ceil(float64(start) * (1 + float64(pol.Value)/100)))
		default:
			continue
		}
		if sel == autoscalingv2.MinChangePolicySelect {
			result = min(result, proposed)
		} else {
			result = max(result, proposed)
		}
	}
	if result == math.MinInt32 || result == math.MaxInt32 {
		return current
	}
	return result
}

// num formats a metric value compactly (up to two decimals).
func num(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
