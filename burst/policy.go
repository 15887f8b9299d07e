// Package burst scales a workload at once when its demand jumps, to the
// count its own HorizontalPodAutoscaler will ask for at its next sync, so
// capacity arrives seconds after a load step instead of on the HPA's 15 s
// grid. The HPA stays in charge: a burst only ever raises the workload's
// /scale to what the HPA's formula, maxReplicas and scale-up behavior allow,
// and the adapter serves the demand the burst acted on until the HPA has
// synced (Floors), so the HPA computes the same count instead of undoing it.
//
// Decide is the decision, a pure function of the demand readings; the
// Controller feeds it every interval and applies its answers.
package burst

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Annotation opts an HPA in. Its value is "" or "on" for the defaults, or
// comma-separated key=value pairs:
//
//	mlscale.io/burst: "threshold=200%,hold=1s"
//
// threshold is how far demand must exceed the ready pods' capacity (their
// count times the HPA's per-pod target) before a burst: "200%" or "2" (the
// KPA's panic threshold). hold is how long it must stay there (a Go
// duration), so a spike shorter than that scales nothing.
const Annotation = "mlscale.io/burst"

// Policy is one HPA's burst configuration, from its Annotation.
type Policy struct {
	// Threshold is the ratio of demand to ready capacity (2 = 200%) at or
	// above which a burst may happen. At least 1.
	Threshold float64
	// Hold is how long the ratio must stay at or above Threshold.
	Hold time.Duration
}

// DefaultPolicy is Knative's panic threshold (200% of target) held for one
// second: two readings of the collector's one-second scrapes.
func DefaultPolicy() Policy { return Policy{Threshold: 2, Hold: time.Second} }

// maxHold bounds hold: a burst held longer than the HPA's own reaction is
// pointless, and a typo such as "hold=1h" should be an error, not a burst
// mode that never fires.
const maxHold = 5 * time.Minute

// ParsePolicy parses an Annotation value. Errors name the key and what is
// wrong with it; unknown keys are errors, so a typo never silently means the
// default.
func ParsePolicy(s string) (Policy, error) {
	p := DefaultPolicy()
	s = strings.TrimSpace(s)
	if s == "" || s == "on" || s == "true" {
		return p, nil
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return Policy{}, fmt.Errorf("%s: %q is not key=value (keys: threshold, hold)", Annotation, kv)
		}
		if seen[k] {
			return Policy{}, fmt.Errorf("%s: %s given twice", Annotation, k)
		}
		seen[k] = true
		switch k {
		case "threshold":
			t, err := parseRatio(v)
			if err != nil {
				return Policy{}, fmt.Errorf("%s: threshold %q: %w", Annotation, v, err)
			}
			if t < 1 {
				return Policy{}, fmt.Errorf("%s: threshold %q is below 100%%: a burst needs demand above capacity", Annotation, v)
			}
			p.Threshold = t
		case "hold":
			d, err := time.ParseDuration(v)
			if err != nil {
				return Policy{}, fmt.Errorf("%s: hold %q: want a duration such as 1s: %w", Annotation, v, err)
			}
			if d < 0 || d > maxHold {
				return Policy{}, fmt.Errorf("%s: hold %q: want 0 to %s", Annotation, v, maxHold)
			}
			p.Hold = d
		default:
			return Policy{}, fmt.Errorf("%s: unknown key %q (keys: threshold, hold)", Annotation, k)
		}
	}
	return p, nil
}

// parseRatio reads "200%" as 2 and "2" or "2.5" as themselves.
func parseRatio(v string) (float64, error) {
	scale := 1.0
	if n, ok := strings.CutSuffix(v, "%"); ok {
		v, scale = n, 0.01
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, fmt.Errorf("want a ratio such as 2 or a percentage such as 200%%")
	}
	f *= scale
	if f != f || f > 1e6 {
		return 0, fmt.Errorf("want a finite ratio up to 1e6")
	}
	return f, nil
}

// String is the policy as an Annotation value.
func (p Policy) String() string {
	return fmt.Sprintf("threshold=%s%%,hold=%s", strconv.FormatFloat(p.Threshold*100, 'f', -1, 64), p.Hold)
}
