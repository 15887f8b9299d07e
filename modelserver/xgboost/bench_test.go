package xgboost_test

import (
	"fmt"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// benchRows tiles the iris golden inputs (seed integers, wide reals, iris,
// missing values, thresholds) to n rows. bench_xgboost.py builds the same
// rows for XGBoost's side of the comparison.
func benchRows(b *testing.B, n int) []float32 {
	g := loadGolden(b, "iris")
	x := make([]float32, 0, n*g.NumFeatures)
	for len(x) < cap(x) {
		x = append(x, g.x[:min(len(g.x), cap(x)-len(x))]...)
	}
	return x
}

// BenchmarkPredictBatch is Go inference on one goroutine, in rows/s;
// `make bench-inference` compares it with XGBoost's inplace_predict.
func BenchmarkPredictBatch(b *testing.B) {
	m, err := xgboost.Load(filepath.Join("testdata", "iris.json"))
	if err != nil {
		b.Fatal(err)
	}
	for _, rows := range []int{1, 500, 10000} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			x := benchRows(b, rows)
			out := make([]float32, rows*m.NumOutputs())
			b.ReportAllocs()
			cpu0 := cpuSeconds(b)
			for b.Loop() {
				if err := m.PredictBatch(x, rows, out); err != nil {
					b.Fatal(err)
				}
			}
			total := float64(rows) * float64(b.N)
			b.ReportMetric(total/b.Elapsed().Seconds(), "rows/s")
			// On a shared machine wall time measures the neighbours too;
			// CPU time is what the comparison with XGBoost uses.
			b.ReportMetric(total/(cpuSeconds(b)-cpu0), "rows/cpu-s")
		})
	}
}

// cpuSeconds is the process's user+system CPU time.
func cpuSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}
