package collector

import (
	"math"
	"testing"
	"time"
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
