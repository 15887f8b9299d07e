// Package record keeps what a load run measured: every request as a CSV row
// (the seed's calc_log.csv with more columns) and a per-task summary whose
// latency percentiles come from an HDR histogram rather than a sorted sample.
package record

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Request is one prediction request's outcome.
type Request struct {
	// Task is the index of the task in the scenario.
	Task int
	// Start is when the request should have been sent: the intended send
	// time on the open-loop schedule (so latency includes any wait the
	// generator or server imposed, no coordinated omission), or the actual
	// send time for closed-loop requests.
	Start time.Time
	// Latency is from Start to the end of the response.
	Latency time.Duration
	// SendDelay is how much later than Start the request really left
	// (always 0 for closed-loop requests).
	SendDelay time.Duration
	// Status is the HTTP status, 0 when there was no response.
	Status int
	// Err is empty on success.
	Err string
}

// OK reports whether the request succeeded.
func (r Request) OK() bool { return r.Err == "" && r.Status >= 200 && r.Status < 300 }

// CSVHeader are the columns of the requests CSV.
var csvHeader = []string{"timestamp", "elapsed_s", "task", "data_size", "latency_ms", "send_delay_ms", "status", "error"}

// CSVWriter writes requests as CSV rows.
type CSVWriter struct {
	w     *bufio.Writer
	begin time.Time
	names []string
	sizes []int
	buf   []byte
	err   error
}

// NewCSVWriter writes the header; begin is the run's start (elapsed_s
// column), names and sizes label task indices.
func NewCSVWriter(w io.Writer, begin time.Time, names []string, sizes []int) (*CSVWriter, error) {
	c := &CSVWriter{w: bufio.NewWriterSize(w, 64<<10), begin: begin, names: names, sizes: sizes}
	if _, err := c.w.WriteString(strings.Join(csvHeader, ",") + "\n"); err != nil {
		return nil, fmt.Errorf("writing requests CSV header: %w", err)
	}
	return c, nil
}

// Write appends one row. Errors are sticky and returned by Flush too.
func (c *CSVWriter) Write(r Request) error {
	if c.err != nil {
		return c.err
	}
	b := c.buf[:0]
	b = r.Start.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, ',')
	b = strconv.AppendFloat(b, r.Start.Sub(c.begin).Seconds(), 'f', 6, 64)
	b = append(b, ',')
	b = appendCSVField(b, c.names[r.Task])
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(c.sizes[r.Task]), 10)
	b = append(b, ',')
	b = strconv.AppendFloat(b, float64(r.Latency)/1e6, 'f', 3, 64)
	b = append(b, ',')
	b = strconv.AppendFloat(b, float64(r.SendDelay)/1e6, 'f', 3, 64)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, ',')
	b = appendCSVField(b, r.Err)
	b = append(b, '\n')
	c.buf = b
	if _, err := c.w.Write(b); err != nil {
		c.err = fmt.Errorf("writing requests CSV: %w", err)
	}
	return c.err
}

// Flush writes buffered rows.
func (c *CSVWriter) Flush() error {
	if c.err != nil {
		return c.err
	}
	if err := c.w.Flush(); err != nil {
		c.err = fmt.Errorf("writing requests CSV: %w", err)
	}
	return c.err
}

func appendCSVField(b []byte, s string) []byte {
	if !strings.ContainsAny(s, ",\"\r\n") {
		return append(b, s...)
	}
	b = append(b, '"')
	b = append(b, strings.ReplaceAll(s, `"`, `""`)...)
	return append(b, '"')
}

// ReadCSV reads a requests CSV back (for tests and for re-drawing charts).
// Task indices are assigned in order of first appearance.
func ReadCSV(r io.Reader) (reqs []Request, names []string, err error) {
	cr := csv.NewReader(r)
	head, err := cr.Read()
	if err != nil {
		return nil, nil, fmt.Errorf("reading requests CSV header: %w", err)
	}
	if strings.Join(head, ",") != strings.Join(csvHeader, ",") {
		return nil, nil, fmt.Errorf("requests CSV header %q, want %q", head, csvHeader)
	}
	idx := map[string]int{}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return reqs, names, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading requests CSV: %w", err)
		}
		var q Request
		if q.Start, err = time.Parse(time.RFC3339Nano, rec[0]); err != nil {
			return nil, nil, fmt.Errorf("requests CSV line %d: %w", line, err)
		}
		i, ok := idx[rec[2]]
		if !ok {
			i = len(names)
			idx[rec[2]] = i
			names = append(names, rec[2])
		}
		q.Task = i
		lat, err1 := strconv.ParseFloat(rec[4], 64)
		delay, err2 := strconv.ParseFloat(rec[5], 64)
		status, err3 := strconv.Atoi(rec[6])
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, nil, fmt.Errorf("requests CSV line %d: bad number in %q", line, rec)
		}
		q.Latency = time.Duration(lat * 1e6)
		q.SendDelay = time.Duration(delay * 1e6)
		q.Status = status
		q.Err = rec[7]
		reqs = append(reqs, q)
	}
}

// Histogram range: 1 µs to 10 minutes at 3 significant digits.
const (
	histMin = 1
	histMax = int64(10 * time.Minute / time.Microsecond)
)

// TaskSummary is one task's outcome.
type TaskSummary struct {
	Name     string `json:"name"`
	DataSize int    `json:"data_size"`
	// Scheduled is how many requests the task meant to send (data_amount,
	// or rate × duration for open loop); Requests is how many it sent.
	Scheduled int64 `json:"scheduled"`
	Requests  int64 `json:"requests"`
	Errors    int64 `json:"errors"`
	// ErrorKinds counts errors by HTTP status or error text.
	ErrorKinds map[string]int64 `json:"error_kinds,omitempty"`
	Seconds    float64          `json:"seconds"`
	ReqPerSec  float64          `json:"requests_per_second"`
	RowsPerSec float64          `json:"rows_per_second"`
	// Latencies in milliseconds, from the HDR histogram of every request
	// (errors included: a fast failure is still a response the user saw).
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
	// Start and End bound the task on the wall clock.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`

	hist *hdrhistogram.Histogram
}

// Summary aggregates requests per task.
type Summary struct {
	Tasks []*TaskSummary
}

// NewSummary prepares one entry per task.
func NewSummary(names []string, sizes []int, scheduled []int64) *Summary {
	s := &Summary{}
	for i := range names {
		s.Tasks = append(s.Tasks, &TaskSummary{
			Name: names[i], DataSize: sizes[i], Scheduled: scheduled[i],
			hist: hdrhistogram.New(histMin, histMax, 3),
		})
	}
	return s
}

// Add records one request.
func (s *Summary) Add(r Request) {
	t := s.Tasks[r.Task]
	t.Requests++
	if !r.OK() {
		t.Errors++
		if t.ErrorKinds == nil {
			t.ErrorKinds = map[string]int64{}
		}
		t.ErrorKinds[errorKind(r)]++
	}
	us := min(max(r.Latency.Microseconds(), histMin), histMax)
	_ = t.hist.RecordValue(us) // in range by construction
}

func errorKind(r Request) string {
	if r.Status != 0 {
		return strconv.Itoa(r.Status)
	}
	e := r.Err
	// Keep the kind short and free of per-connection detail (ports).
	if i := strings.LastIndex(e, ": "); i >= 0 {
		e = e[i+2:]
	}
	return e
}

// SetSpan records when a task started and ended.
func (s *Summary) SetSpan(task int, start, end time.Time) {
	s.Tasks[task].Start, s.Tasks[task].End = start, end
}

// Finish computes the derived figures.
func (s *Summary) Finish() {
	for _, t := range s.Tasks {
		t.Seconds = t.End.Sub(t.Start).Seconds()
		if t.Seconds > 0 {
			t.ReqPerSec = float64(t.Requests) / t.Seconds
			t.RowsPerSec = float64(t.Requests-t.Errors) * float64(t.DataSize) / t.Seconds
		}
		if t.Requests > 0 {
			ms := func(us int64) float64 { return float64(us) / 1e3 }
			t.P50Ms = ms(t.hist.ValueAtQuantile(50))
			t.P90Ms = ms(t.hist.ValueAtQuantile(90))
			t.P99Ms = ms(t.hist.ValueAtQuantile(99))
			t.MaxMs = ms(t.hist.Max())
			t.MeanMs = math.Round(t.hist.Mean()) / 1e3
		}
	}
}

// WriteJSON writes the summary as indented JSON.
func (s *Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(struct {
		Tasks []*TaskSummary `json:"tasks"`
	}{s.Tasks}); err != nil {
		return fmt.Errorf("writing summary JSON: %w", err)
	}
	return nil
}

// WriteTable writes the summary as an aligned text table.
func (s *Summary) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "task\trows\trequests\terrors\treq/s\trows/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\t")
	for _, t := range s.Tasks {
		fmt.Fprintf(tw, "%s\t%d\t%d/%d\t%d\t%.1f\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t\n",
			t.Name, t.DataSize, t.Requests, t.Scheduled, t.Errors, t.ReqPerSec, t.RowsPerSec, t.P50Ms, t.P90Ms, t.P99Ms, t.MaxMs)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing summary table: %w", err)
	}
	return nil
}
