package xgboost_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
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
			benchPredict(b, m, x, rows, make([]float32, rows*m.NumOutputs()))
		})
	}
}

// BenchmarkPredictFile evaluates the model in $MLSCALE_BENCH_MODEL on the
// float32 rows in $MLSCALE_BENCH_ROWS (raw little-endian, row-major): how
// bench_xgboost.py compares models it trains at run time (deep and
// loss-guided trees) with XGBoost on identical rows. Skipped without them.
func BenchmarkPredictFile(b *testing.B) {
	modelPath, rowsPath := os.Getenv("MLSCALE_BENCH_MODEL"), os.Getenv("MLSCALE_BENCH_ROWS")
	if modelPath == "" || rowsPath == "" {
		b.Skip("MLSCALE_BENCH_MODEL and MLSCALE_BENCH_ROWS not set")
	}
	m, err := xgboost.Load(modelPath)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := os.ReadFile(rowsPath)
	if err != nil {
		b.Fatal(err)
	}
	x := make([]float32, len(raw)/4)
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	rows := len(x) / m.NumFeatures()
	x = x[:rows*m.NumFeatures()]
	out := make([]float32, rows*m.NumOutputs())
	if want := os.Getenv("MLSCALE_BENCH_WANT"); want != "" {
		// XGBoost's predictions for these rows: don't time a wrong answer.
		raw, err := os.ReadFile(want)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.PredictBatch(x, rows, out); err != nil {
			b.Fatal(err)
		}
		if len(raw) != 4*len(out) {
			b.Fatalf("%s holds %d values, want %d", want, len(raw)/4, len(out))
		}
		for i, got := range out {
			if w := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])); got != w {
				b.Fatalf("row %d output %d: Go %v, XGBoost %v", i/m.NumOutputs(), i%m.NumOutputs(), got, w)
			}
		}
	}
	benchPredict(b, m, x, rows, out)
}

// benchPredict times PredictBatch of x's rows into out and reports rows/s
// and rows/cpu-s: on a shared machine wall time measures the neighbours
// too; CPU time is what the comparison with XGBoost uses.
func benchPredict(b *testing.B, m *xgboost.Model, x []float32, rows int, out []float32) {
	b.ReportAllocs()
	cpu0 := cpuSeconds(b)
	for b.Loop() {
		if err := m.PredictBatch(x, rows, out); err != nil {
			b.Fatal(err)
		}
	}
	total := float64(rows) * float64(b.N)
	b.ReportMetric(total/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(total/(cpuSeconds(b)-cpu0), "rows/cpu-s")
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
