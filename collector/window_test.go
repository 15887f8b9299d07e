package collector

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// scalarSamples builds one sample per second from t0; NaN marks a scrape in
// which the series was absent.
func scalarSamples(values ...float64) []sample {
	out := make([]sample, len(values))
	for i, v := range values {
		out[i] = sample{t: t0.Add(time.Duration(i) * time.Second), obs: []obs{{present: !math.IsNaN(v), value: v}}}
	}
	return out
}

type hist struct {
	count, sum float64
	counts     []float64 // cumulative, for bounds {0.1, 1, +Inf}
}

var testBounds = []float64{0.1, 1, math.Inf(1)}

func histSamples(hs ...hist) []sample {
	out := make([]sample, len(hs))
	for i, h := range hs {
		out[i] = sample{t: t0.Add(time.Duration(i) * time.Second), obs: []obs{{present: true, value: h.count, sum: h.sum, bounds: testBounds, counts: h.counts}}}
	}
	return out
}

func TestValue(t *testing.T) {
	rateRule := &Rule{Name: "rps", Series: "x_total", Compute: ComputeRate}
	lastRule := &Rule{Name: "inflight", Series: "x", Compute: ComputeLast}
	meanRule := &Rule{Name: "batch", Series: "h", Compute: ComputeMean}
	p50 := &Rule{Name: "p50", Series: "h", Compute: ComputeQuantile, Quantile: 0.5}
	p99 := &Rule{Name: "p99", Series: "h", Compute: ComputeQuantile, Quantile: 0.99}
	const window = 3 * time.Second
	tests := []struct {
		name    string
		rule    *Rule
		samples []sample
		now     time.Time // zero: one second after the last sample
		want    PodValue
		wantOK  bool
	}{
		{"steady rate", rateRule, scalarSamples(0, 10, 20, 30), time.Time{}, PodValue{Value: 10, Window: 3 * time.Second}, true},
		{"rate only over the window", rateRule, scalarSamples(0, 100, 110, 120, 130), time.Time{}, PodValue{Value: 10, Window: 3 * time.Second}, true},
		{"idle is a real zero", rateRule, scalarSamples(5, 5, 5, 5), time.Time{}, PodValue{Value: 0, Window: 3 * time.Second}, true},
		{"counter reset", rateRule, scalarSamples(100, 110, 5, 15), time.Time{}, PodValue{Value: (10 + 5 + 10) / 3.0, Window: 3 * time.Second}, true},
		{"reset to zero", rateRule, scalarSamples(100, 0, 10, 20), time.Time{}, PodValue{Value: 20 / 3.0, Window: 3 * time.Second}, true},
		{"gap in series skipped", rateRule, scalarSamples(0, math.NaN(), 20, 30), time.Time{}, PodValue{Value: 10, Window: 3 * time.Second}, true},
		{"one sample is no data", rateRule, scalarSamples(42), time.Time{}, PodValue{}, false},
		{"series never present", rateRule, scalarSamples(math.NaN(), math.NaN()), time.Time{}, PodValue{}, false},
		{"stale pod is no data", rateRule, scalarSamples(0, 10, 20, 30), t0.Add(10 * time.Second), PodValue{}, false},
		{"gauge last", lastRule, scalarSamples(1, 7, 3), time.Time{}, PodValue{Value: 3}, true},
		{"gauge zero is zero", lastRule, scalarSamples(1, 0), time.Time{}, PodValue{Value: 0}, true},
		{"gauge absent in newest scrape", lastRule, scalarSamples(1, math.NaN()), time.Time{}, PodValue{}, false},
		{"histogram mean", meanRule, histSamples(
			hist{10, 40, []float64{0, 0, 10}},
			hist{20, 100, []float64{0, 0, 20}},
			hist{30, 130, []float64{0, 0, 30}},
		), time.Time{}, PodValue{Value: 90.0 / 20, Window: 2 * time.Second}, true},
		{"histogram mean across restart", meanRule, histSamples(
			hist{100, 400, []float64{0, 0, 100}},
			hist{4, 8, []float64{0, 0, 4}},
			hist{10, 32, []float64{0, 0, 10}},
		), time.Time{}, PodValue{Value: 32.0 / 10, Window: 2 * time.Second}, true},
		{"histogram without traffic is no data", meanRule, histSamples(
			hist{10, 40, []float64{0, 0, 10}},
			hist{10, 40, []float64{0, 0, 10}},
		), time.Time{}, PodValue{}, false},
		{"p50 interpolates inside bucket", p50, histSamples(
			hist{0, 0, []float64{0, 0, 0}},
			hist{100, 30, []float64{40, 100, 100}},
		), time.Time{}, PodValue{Value: 0.1 + 0.9*(10.0/60), Window: time.Second}, true},
		{"p99 in +Inf bucket is the highest bound", p99, histSamples(
			hist{0, 0, []float64{0, 0, 0}},
			hist{100, 300, []float64{10, 50, 100}},
		), time.Time{}, PodValue{Value: 1, Window: time.Second}, true},
		{"p99 from increases only", p99, histSamples(
			hist{1000, 5000, []float64{0, 0, 1000}}, // old slow requests
			hist{1100, 5010, []float64{100, 100, 1100}},
		), time.Time{}, PodValue{Value: 0.1 * 0.99, Window: time.Second}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = tc.samples[len(tc.samples)-1].t.Add(time.Second)
			}
			got, ok := value(tc.rule, 0, tc.samples, window, 500*time.Millisecond, 5*time.Second, now)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v (value %+v)", ok, tc.wantOK, got)
			}
			if !ok {
				return
			}
			got.Timestamp = time.Time{}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateApprox(1e-12, 0)); diff != "" {
				t.Errorf("value (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBucketQuantile(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		name   string
		q      float64
		bounds []float64
		counts []float64
		want   float64
		wantOK bool
	}{
		{"first bucket from zero", 0.5, []float64{1, 2, inf}, []float64{10, 10, 10}, 0.5, true},
		{"middle bucket", 0.75, []float64{1, 2, inf}, []float64{10, 20, 20}, 1.5, true},
		{"non-monotonic counts fixed", 0.75, []float64{1, 2, 3, inf}, []float64{10, 9, 20, 20}, 2.5, true},
		{"no observations", 0.5, []float64{1, inf}, []float64{0, 0}, 0, false},
		{"no +Inf bucket", 0.5, []float64{1, 2}, []float64{1, 2}, 0, false},
		{"single bucket", 0.5, []float64{inf}, []float64{5}, 0, false},
		{"negative first bound", 0.1, []float64{-1, 0, inf}, []float64{5, 10, 10}, -1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := bucketQuantile(tc.q, tc.bounds, tc.counts)
			if ok != tc.wantOK || (ok && math.Abs(got-tc.want) > 1e-12) {
				t.Errorf("bucketQuantile = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestValidateRules(t *testing.T) {
	tests := []struct {
		name    string
		rules   []Rule
		wantErr string
	}{
		{"defaults", DefaultRules(), ""},
		{"missing series", []Rule{{Name: "a", Compute: ComputeRate}}, `rules[0] "a": field "series": required`},
		{"bad compute", []Rule{{Name: "a", Series: "x", Compute: "avg"}}, `rules[0] "a": field "compute": "avg" is not one of rate, mean, quantile, last`},
		{"quantile out of range", []Rule{{Name: "a", Series: "h", Compute: ComputeQuantile, Quantile: 1.5}}, `rules[0] "a": field "quantile": must be in (0, 1), got 1.5`},
		{"quantile on rate", []Rule{{Name: "a", Series: "x", Compute: ComputeRate, Quantile: 0.5}}, `rules[0] "a": field "quantile": only allowed with compute: quantile`},
		{"bucket series", []Rule{{Name: "a", Series: "h_bucket", Compute: ComputeQuantile, Quantile: 0.5}}, `rules[0] "a": field "series": name the histogram family ("h"), not its _bucket series`},
		{"pooled rate", []Rule{{Name: "a", Series: "x", Compute: ComputeRate, Aggregate: AggPooled}}, `rules[0] "a": field "aggregate": pooled only applies to compute: mean or quantile`},
		{"duplicate", []Rule{{Name: "a", Series: "x", Compute: ComputeRate}, {Name: "a", Series: "y", Compute: ComputeLast}}, `rules[1] "a": field "name": already served by rules[0]`},
		{"bad name", []Rule{{Name: "A B", Series: "x", Compute: ComputeRate}}, `rules[0] "A B": field "name": "A B" is not a valid metric name (lower case letters, digits, '_', '-', '.')`},
		{"bad label", []Rule{{Name: "a", Series: "x", Compute: ComputeRate, Labels: map[string]string{"1x": "y"}}}, `rules[0] "a": field "labels": "1x" is not a valid label name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ValidateRules(tc.rules)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.wantErr {
				t.Errorf("error = %q, want %q", got, tc.wantErr)
			}
		})
	}
}
