package collector

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

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

func TestParseAggregation(t *testing.T) {
	tests := []struct {
		in      string
		want    Aggregation
		wantErr string
	}{
		{in: "", want: ""},
		{in: "sum", want: AggSum},
		{in: "mean", want: AggMean},
		{in: "max", want: AggMax},
		{in: "min", want: AggMin},
		{in: "pooled", want: AggPooled},
		// The collector's config said avg where the trigger said mean.
		{in: "avg", want: AggMean},
		{in: "AVG", want: AggMean},
		{in: " Mean ", want: AggMean},
		{in: "Pooled", want: AggPooled},
		{in: "median", wantErr: `"median" is not one of sum, mean, max, min, pooled (avg: mean)`},
		{in: "average", wantErr: `"average" is not one of`},
		{in: "p99", wantErr: `"p99" is not one of`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseAggregation(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseAggregation(%q) = %q, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseAggregation(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

// Every alias is a name of the vocabulary's, and no alias hides one.
func TestAggregationAliases(t *testing.T) {
	for old, a := range AggregationAliases {
		for _, name := range Aggregations {
			if old == string(name) {
				t.Errorf("alias %q hides the aggregation %q", old, name)
			}
		}
		if got, err := ParseAggregation(old); err != nil || got != a {
			t.Errorf("alias %q parses as %q, %v; want %q", old, got, err, a)
		}
	}
}

func TestCombine(t *testing.T) {
	pods := []PodValue{
		{Pod: "a", Value: 30, Timestamp: t0.Add(2 * time.Second), Window: 3 * time.Second},
		{Pod: "b", Value: 10, Timestamp: t0, Window: 2 * time.Second},
		{Pod: "c", Value: 20, Timestamp: t0.Add(time.Second), Window: time.Second},
	}
	tests := []struct {
		name   string
		agg    Aggregation
		values []PodValue
		want   Aggregate
	}{
		{"sum", AggSum, pods, Aggregate{Value: 60, Pods: 3, Timestamp: t0, Window: 3 * time.Second}},
		{"mean", AggMean, pods, Aggregate{Value: 20, Pods: 3, Timestamp: t0, Window: 3 * time.Second}},
		{"max", AggMax, pods, Aggregate{Value: 30, Pods: 3, Timestamp: t0, Window: 3 * time.Second}},
		{"min", AggMin, pods, Aggregate{Value: 10, Pods: 3, Timestamp: t0, Window: 3 * time.Second}},
		{"min of one pod", AggMin, pods[:1], Aggregate{Value: 30, Pods: 1, Timestamp: t0.Add(2 * time.Second), Window: 3 * time.Second}},
		{"no pods", AggMean, nil, Aggregate{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, Combine(tc.agg, tc.values)); diff != "" {
				t.Errorf("Combine(%s) (-want +got):\n%s", tc.agg, diff)
			}
		})
	}
}

// A rule's aggregate is read with the same vocabulary, aliases included, and
// spelled as the vocabulary does once validated.
func TestRuleAggregateAliases(t *testing.T) {
	for _, tc := range []struct {
		compute Compute
		in      Aggregation
		want    Aggregation
	}{
		{ComputeRate, "avg", AggMean},
		{ComputeRate, "Sum", AggSum},
		{ComputeLast, "min", AggMin},
		{ComputeLast, "", AggSum},
		{ComputeMean, "", AggPooled},
		{ComputeQuantile, "MAX", AggMax},
	} {
		r := Rule{Name: "m", Series: "s", Compute: tc.compute, Aggregate: tc.in}
		if tc.compute == ComputeQuantile {
			r.Quantile = 0.9
		}
		got, err := ValidateRules([]Rule{r})
		if err != nil || got[0].Aggregate != tc.want {
			t.Errorf("%s with aggregate %q: got %+v, %v; want aggregate %q", tc.compute, tc.in, got, err, tc.want)
		}
	}
}
