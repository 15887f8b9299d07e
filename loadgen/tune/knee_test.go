package tune

import (
	"errors"
	"os"
	"testing"
	"time"
)

// curve builds steps from (offered, p99 ms) pairs: every request answered,
// at the offered rate unless achieved is given.
func curve(rows int, pts ...[2]float64) []Step {
	out := make([]Step, len(pts))
	for i, p := range pts {
		out[i] = Step{Rows: rows, Offered: p[0], Achieved: p[0], Sent: 100, P50: ms(p[1] / 3), P99: ms(p[1])}
	}
	return out
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

func TestFindKnee(t *testing.T) {
	slo := KneeOptions{SLO: 200 * time.Millisecond}
	fallsBehind := curve(500, [2]float64{10, 20}, [2]float64{20, 25}, [2]float64{30, 40}, [2]float64{40, 90})
	fallsBehind[3].Achieved = 33 // under 95% of 40 offered
	fallsBehind = append(fallsBehind, Step{Rows: 500, Offered: 50, Achieved: 34, Sent: 100, P99: ms(150)})
	failing := curve(500, [2]float64{10, 20}, [2]float64{20, 25}, [2]float64{30, 30}, [2]float64{40, 30})
	failing[2].Failed, failing[3].Failed = 5, 9
	tests := []struct {
		name    string
		steps   []Step
		opt     KneeOptions
		want    Knee
		wantErr error
	}{
		{name: "clean hockey stick", steps: curve(10000, [2]float64{4, 60}, [2]float64{6, 70}, [2]float64{8, 90}, [2]float64{10, 150}, [2]float64{12, 900}, [2]float64{14, 4000}),
			opt: slo, want: Knee{Index: 3, Reached: true, Why: "p99 900ms > SLO 200ms"}},
		{name: "one noisy spike before the knee is ignored", steps: curve(500, [2]float64{50, 10}, [2]float64{60, 400}, [2]float64{70, 12}, [2]float64{80, 15}, [2]float64{90, 300}, [2]float64{100, 2000}),
			opt: slo, want: Knee{Index: 3, Reached: true, Why: "p99 300ms > SLO 200ms"}},
		{name: "a lucky step past the knee does not extend it", steps: curve(500, [2]float64{50, 10}, [2]float64{60, 20}, [2]float64{70, 500}, [2]float64{80, 700}, [2]float64{90, 150}),
			opt: slo, want: Knee{Index: 1, Reached: true, Why: "p99 500ms > SLO 200ms"}},
		{name: "noise on both sides: good, bad, good, bad, bad", steps: curve(500, [2]float64{10, 50}, [2]float64{20, 250}, [2]float64{30, 60}, [2]float64{40, 210}, [2]float64{50, 800}),
			opt: slo, want: Knee{Index: 2, Reached: true, Why: "p99 210ms > SLO 200ms"}},
		{name: "falling behind breaks it even within the latency SLO", steps: fallsBehind,
			opt: slo, want: Knee{Index: 2, Reached: true, Why: "answered 33.0/s of 40.0/s sent"}},
		{name: "errors break it", steps: failing, opt: slo, want: Knee{Index: 1, Reached: true, Why: "5 of 100 requests failed"}},
		{name: "p50 SLO", steps: curve(500, [2]float64{10, 90}, [2]float64{20, 240}, [2]float64{30, 330}, [2]float64{40, 700}),
			opt: KneeOptions{SLO: 100 * time.Millisecond, Quantile: 0.5}, want: Knee{Index: 1, Reached: true, Why: "p50 110ms > SLO 100ms"}},
		{name: "never broken: capacity at least the last step", steps: curve(500, [2]float64{10, 20}, [2]float64{20, 30}),
			opt: slo, want: Knee{Index: 1}},
		{name: "last step alone broken counts (nothing after it)", steps: curve(500, [2]float64{10, 20}, [2]float64{20, 30}, [2]float64{30, 300}),
			opt: slo, want: Knee{Index: 1, Reached: true, Why: "p99 300ms > SLO 200ms"}},
		{name: "broken from the start", steps: curve(500, [2]float64{10, 300}, [2]float64{20, 400}),
			opt: slo, want: Knee{Index: -1, Reached: true, Why: "p99 300ms > SLO 200ms"}, wantErr: ErrBrokenAtStart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FindKnee(tc.steps, tc.opt)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("FindKnee = %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := FindKnee(nil, slo); err == nil {
		t.Error("no steps: no error")
	}
}

func TestStop(t *testing.T) {
	o := KneeOptions{SLO: 100 * time.Millisecond}
	if o.Stop(curve(1, [2]float64{1, 10}, [2]float64{2, 200})) {
		t.Error("one broken step stops the ramp")
	}
	if !o.Stop(curve(1, [2]float64{1, 10}, [2]float64{2, 200}, [2]float64{3, 300})) {
		t.Error("two broken steps do not stop the ramp")
	}
}

// Curves recorded by `loadgen tune` on the loopback model server under a
// 250m CPU limit (testdata/*.csv, written by the tool itself): the knee
// lands where the recorded p99 first stays above the SLO.
func TestFindKneeRecorded(t *testing.T) {
	for _, tc := range []struct {
		file string
		slo  time.Duration
	}{
		{"testdata/steps-250m.csv", 500 * time.Millisecond},
		{"testdata/steps-100m.csv", 500 * time.Millisecond}, // noisy: lone breaks at 1.7/s (10,000 rows)
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			all, err := ReadStepsCSV(f)
			if err != nil {
				t.Fatal(err)
			}
			byRows := map[int][]Step{}
			var order []int
			for _, s := range all {
				if _, ok := byRows[s.Rows]; !ok {
					order = append(order, s.Rows)
				}
				byRows[s.Rows] = append(byRows[s.Rows], s)
			}
			o := KneeOptions{SLO: tc.slo}
			for _, rows := range order {
				steps := byRows[rows]
				k, err := FindKnee(steps, o)
				if err != nil {
					t.Fatalf("%d rows: %v", rows, err)
				}
				// Independently: the knee meets the SLO, and the step
				// after it and the one after that (if any) do not both pass.
				if o.Broken(steps[k.Index]) != "" {
					t.Errorf("%d rows: knee step %d misses the SLO: %s", rows, k.Index, o.Broken(steps[k.Index]))
				}
				if k.Reached {
					next := o.Broken(steps[k.Index+1])
					if next == "" {
						t.Errorf("%d rows: the step after the knee (%d) meets the SLO", rows, k.Index+1)
					}
				}
				t.Logf("%d rows: knee at %.1f req/s offered (p99 %s), then %s", rows, steps[k.Index].Offered, steps[k.Index].P99, k.Why)
			}
		})
	}
}
