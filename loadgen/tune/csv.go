package tune

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
)

var stepsHeader = []string{"rows", "offered_rps", "duration_s", "sent", "failed", "achieved_rps", "p50_ms", "p99_ms",
	"server_rps", "server_rows_per_s", "server_inflight", "server_cpu_cores", "slo_broken"}

// WriteStepsCSV writes steps, one row each; o marks the steps that miss
// the SLO (the reason, or empty).
func WriteStepsCSV(w io.Writer, steps []Step, o KneeOptions) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(stepsHeader); err != nil {
		return err
	}
	f := func(v float64) string {
		if math.IsNaN(v) {
			return ""
		}
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
	for _, s := range steps {
		rec := []string{strconv.Itoa(s.Rows), f(s.Offered), f(s.Duration.Seconds()), strconv.Itoa(s.Sent), strconv.Itoa(s.Failed),
			f(s.Achieved), f(float64(s.P50) / 1e6), f(float64(s.P99) / 1e6),
			f(s.RequestsPerSecond), f(s.RowsPerSecond), f(s.Inflight), f(s.CPUCores), o.Broken(s)}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// ReadStepsCSV reads what WriteStepsCSV wrote; empty server columns are NaN.
func ReadStepsCSV(r io.Reader) ([]Step, error) {
	cr := csv.NewReader(r)
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("reading the steps CSV header: %w", err)
	}
	if len(head) < len(stepsHeader)-1 {
		return nil, fmt.Errorf("steps CSV: %d columns, want %v", len(head), stepsHeader)
	}
	for i, h := range stepsHeader[:len(stepsHeader)-1] {
		if head[i] != h {
			return nil, fmt.Errorf("steps CSV: column %d is %q, want %q", i+1, head[i], h)
		}
	}
	var out []Step
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("steps CSV line %d: %w", line, err)
		}
		num := func(i int) (float64, error) {
			if rec[i] == "" {
				return math.NaN(), nil
			}
			v, err := strconv.ParseFloat(rec[i], 64)
			if err != nil {
				return 0, fmt.Errorf("steps CSV line %d, column %s: %w", line, stepsHeader[i], err)
			}
			return v, nil
		}
		var v [12]float64
		for i := range v {
			if v[i], err = num(i); err != nil {
				return nil, err
			}
		}
		for _, i := range []int{0, 3, 4} {
			if math.IsNaN(v[i]) || v[i] < 0 || v[i] != math.Trunc(v[i]) {
				return nil, fmt.Errorf("steps CSV line %d, column %s: %q is not a count", line, stepsHeader[i], rec[i])
			}
		}
		out = append(out, Step{
			Rows: int(v[0]), Offered: v[1], Duration: time.Duration(v[2] * float64(time.Second)),
			Sent: int(v[3]), Failed: int(v[4]), Achieved: v[5],
			P50: time.Duration(v[6] * 1e6), P99: time.Duration(v[7] * 1e6),
			RequestsPerSecond: v[8], RowsPerSecond: v[9], Inflight: v[10], CPUCores: v[11],
		})
	}
}
