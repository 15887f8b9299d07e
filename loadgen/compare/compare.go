// Package compare puts load runs of different autoscaling configurations
// on the same traffic side by side: time and requests over the latency SLO,
// replica-seconds used and scale events, from each run's requests.csv and
// replicas.csv (what `loadgen` writes). `loadgen compare` is the command;
// `make demo SCALING=compare` runs the configurations and calls it.
package compare

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mlscale/mlscale/loadgen/chart"
	"github.com/mlscale/mlscale/loadgen/record"
)

// Replica is one row of replicas.csv.
type Replica struct {
	Time         time.Time
	Spec, Status int
}

// ReadReplicasCSV reads the scale samples of a replicas.csv.
func ReadReplicasCSV(r io.Reader) ([]Replica, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("reading replicas CSV header: %w", err)
	}
	if len(head) < 4 || head[0] != "timestamp" || head[2] != "spec_replicas" || head[3] != "status_replicas" {
		return nil, fmt.Errorf("replicas CSV header %q: want timestamp,elapsed_s,spec_replicas,status_replicas,...", head)
	}
	var out []Replica
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("replicas CSV line %d: %w", line, err)
		}
		if len(rec) < 4 {
			return nil, fmt.Errorf("replicas CSV line %d: %d fields", line, len(rec))
		}
		t, err := time.Parse(time.RFC3339Nano, rec[0])
		if err != nil {
			return nil, fmt.Errorf("replicas CSV line %d: %w", line, err)
		}
		spec, err1 := strconv.Atoi(rec[2])
		status, err2 := strconv.Atoi(rec[3])
		if err1 != nil || err2 != nil || spec < 0 || status < 0 {
			return nil, fmt.Errorf("replicas CSV line %d: replica counts %q, %q", line, rec[2], rec[3])
		}
		out = append(out, Replica{Time: t, Spec: spec, Status: status})
	}
}

// Run is one configuration's recorded run.
type Run struct {
	Name     string
	Requests []record.Request
	Replicas []Replica
}

// Load reads dir/requests.csv and dir/replicas.csv.
func Load(name, dir string) (Run, error) {
	r := Run{Name: name}
	f, err := os.Open(filepath.Join(dir, "requests.csv"))
	if err != nil {
		return r, err
	}
	defer f.Close()
	if r.Requests, _, err = record.ReadCSV(f); err != nil {
		return r, fmt.Errorf("%s: %w", dir, err)
	}
	g, err := os.Open(filepath.Join(dir, "replicas.csv"))
	if err != nil {
		return r, err
	}
	defer g.Close()
	if r.Replicas, err = ReadReplicasCSV(g); err != nil {
		return r, fmt.Errorf("%s: %w", dir, err)
	}
	return r, nil
}

// Result is one run's figures.
type Result struct {
	Name string
	// Requests sent, Failed, and OverSLO: failed or slower than the SLO.
	Requests, Failed, OverSLO int
	// Windows with traffic, and those whose p99 was over the SLO (or that
	// had a failure).
	Windows, ViolatingWindows int
	Window                    time.Duration
	// ReplicaSeconds integrates the replicas that existed (scale status)
	// from the first request to the last sample; Peak is the most.
	ReplicaSeconds float64
	Peak           int
	// ScaleEvents counts changes of the replicas asked for (scale spec).
	ScaleEvents int
	Duration    time.Duration
}

// WithinSLO is the fraction of windows whose p99 met the SLO.
func (r Result) WithinSLO() float64 {
	if r.Windows == 0 {
		return math.NaN()
	}
	return 1 - float64(r.ViolatingWindows)/float64(r.Windows)
}

// Evaluate computes a run's figures against slo over windows of win.
func Evaluate(run Run, slo, win time.Duration) Result {
	res := Result{Name: run.Name, Window: win, Requests: len(run.Requests)}
	if len(run.Requests) == 0 {
		return res
	}
	begin := run.Requests[0].Start
	for _, q := range run.Requests {
		if q.Start.Before(begin) {
			begin = q.Start
		}
	}
	type bucket struct {
		lat    []time.Duration
		failed bool
	}
	buckets := map[int]*bucket{}
	end := begin
	for _, q := range run.Requests {
		if !q.OK() {
			res.Failed++
		}
		if !q.OK() || q.Latency > slo {
			res.OverSLO++
		}
		i := int(q.Start.Sub(begin) / win)
		b := buckets[i]
		if b == nil {
			b = &bucket{}
			buckets[i] = b
		}
		b.lat = append(b.lat, q.Latency)
		b.failed = b.failed || !q.OK()
		if e := q.Start.Add(q.Latency); e.After(end) {
			end = e
		}
	}
	for _, b := range buckets {
		res.Windows++
		sort.Slice(b.lat, func(i, j int) bool { return b.lat[i] < b.lat[j] })
		p99 := b.lat[max(0, int(math.Ceil(0.99*float64(len(b.lat))))-1)]
		if b.failed || p99 > slo {
			res.ViolatingWindows++
		}
	}
	// Replica-seconds from the first request to the last sample, each
	// sample's count held until the next.
	reps := run.Replicas
	last := end
	if n := len(reps); n > 0 && reps[n-1].Time.After(last) {
		last = reps[n-1].Time
	}
	res.Duration = last.Sub(begin)
	for i, s := range reps {
		res.Peak = max(res.Peak, s.Status)
		if i > 0 && s.Spec != reps[i-1].Spec {
			res.ScaleEvents++
		}
		next := last
		if i+1 < len(reps) {
			next = reps[i+1].Time
		}
		from := s.Time
		if from.Before(begin) {
			from = begin
		}
		if next.After(from) {
			res.ReplicaSeconds += float64(s.Status) * next.Sub(from).Seconds()
		}
	}
	return res
}

// WriteMarkdown writes the comparison table and, when goal names a run,
// whether it kept p99 within the SLO for minWithin of the windows while
// using no more replica-seconds than the run named baseline.
func WriteMarkdown(w io.Writer, results []Result, slo time.Duration, goal, baseline string, minWithin float64) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintf(tw, "| configuration\t requests\t failed\t over the SLO (%s)\t %s windows with p99 over the SLO\t p99 within the SLO\t replica-seconds\t peak replicas\t scale events\t\n", slo, results[0].Window)
	fmt.Fprintln(tw, "|---\t---:\t---:\t---:\t---:\t---:\t---:\t---:\t---:\t")
	for _, r := range results {
		fmt.Fprintf(tw, "| %s\t %d\t %d\t %d (%.1f%%)\t %d of %d (%s)\t %.1f%%\t %.0f\t %d\t %d\t\n", r.Name, r.Requests, r.Failed,
			r.OverSLO, 100*float64(r.OverSLO)/math.Max(1, float64(r.Requests)), r.ViolatingWindows, r.Windows,
			time.Duration(r.ViolatingWindows)*r.Window, 100*r.WithinSLO(), r.ReplicaSeconds, r.Peak, r.ScaleEvents)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if goal == "" {
		return nil
	}
	var g, b *Result
	for i := range results {
		switch results[i].Name {
		case goal:
			g = &results[i]
		case baseline:
			b = &results[i]
		}
	}
	if g == nil || b == nil {
		return fmt.Errorf("goal %q and baseline %q must both be runs", goal, baseline)
	}
	within := g.WithinSLO() >= minWithin
	cheaper := g.ReplicaSeconds <= b.ReplicaSeconds
	verdict := "met"
	if !within || !cheaper {
		verdict = "NOT met"
	}
	_, err := fmt.Fprintf(w, "\nGoal (%s keeps p99 within the SLO for >= %.0f%% of the time, with no more replica-seconds than %s): %s: %.1f%% of windows within, %.0f vs %.0f replica-seconds.\n",
		goal, 100*minWithin, baseline, verdict, 100*g.WithinSLO(), g.ReplicaSeconds, b.ReplicaSeconds)
	return err
}

// Curves are the runs' replica counts over time since each run's first
// request, for chart.WriteCurvesPNG.
func Curves(runs []Run) []chart.Curve {
	var out []chart.Curve
	for _, r := range runs {
		if len(r.Requests) == 0 {
			continue
		}
		begin := r.Requests[0].Start
		c := chart.Curve{Name: r.Name}
		for _, s := range r.Replicas {
			c.Steps = append(c.Steps, chart.Step{T: s.Time.Sub(begin).Seconds(), Replicas: float64(s.Status)})
		}
		out = append(out, c)
	}
	return out
}

// ParseRunArg splits "name=dir".
func ParseRunArg(s string) (name, dir string, err error) {
	name, dir, ok := strings.Cut(s, "=")
	if !ok || name == "" || dir == "" {
		return "", "", fmt.Errorf("run %q: want NAME=RESULTS_DIR", s)
	}
	return name, dir, nil
}
