// Package loadgen runs a scenario against a model server and writes what
// happened into a results directory: requests.csv (every request),
// replicas.csv (the target's scale each second, when a cluster is known),
// summary.json and summary.txt (per-task figures) and chart.png. It wires the
// sub-packages together; cmd/loadgen only turns flags into a Config.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mlscale/mlscale/loadgen/chart"
	"github.com/mlscale/mlscale/loadgen/progress"
	"github.com/mlscale/mlscale/loadgen/record"
	"github.com/mlscale/mlscale/loadgen/replicas"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/run"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

// Output file names inside the results directory.
const (
	RequestsCSV = "requests.csv"
	ReplicasCSV = "replicas.csv"
	SummaryJSON = "summary.json"
	SummaryTxt  = "summary.txt"
	ChartPNG    = "chart.png"
)

// Config is one run.
type Config struct {
	Scenario *scenario.Scenario
	// Rows replaces the random rows (a CSV named by the scenario or a flag).
	Rows request.Rows
	// Seed makes the random rows repeat.
	Seed     uint64
	URL      string
	Protocol request.Protocol
	Client   run.ClientOptions
	// MaxWorkers caps open-loop concurrency (0: run.DefaultMaxWorkers).
	MaxWorkers uint64
	// OutDir receives the files; it is created.
	OutDir string
	// Sampler, if set, is read every SampleEvery (default 1s).
	Sampler     replicas.Sampler
	SampleEvery time.Duration
	// Progress, if set, hears about every request.
	Progress progress.Reporter
	// Table, if set, receives the summary table at the end.
	Table io.Writer
	// ChartWidth and ChartHeight in pixels (default 1400×700); a negative
	// width skips the chart.
	ChartWidth, ChartHeight int
	// SLO, when set, is marked on the chart with the p99 of every 5 s.
	SLO time.Duration
	Log *slog.Logger
}

// Run executes the scenario. When ctx is cancelled (Ctrl-C) it stops
// sending, and still writes everything recorded so far before returning an
// error wrapping context.Canceled.
func Run(ctx context.Context, cfg Config) (*record.Summary, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SampleEvery == 0 {
		cfg.SampleEvery = time.Second
	}
	if cfg.ChartWidth == 0 {
		cfg.ChartWidth, cfg.ChartHeight = 1400, 700
	}
	sc := cfg.Scenario
	n := len(sc.Tasks)
	names, sizes, scheduled := make([]string, n), make([]int, n), make([]int64, n)
	for i, t := range sc.Tasks {
		names[i], sizes[i], scheduled[i] = t.Name, t.DataSize, run.Scheduled(t)
	}

	// Everything sent is built before the clock starts.
	plans := make([]run.Plan, n)
	for i, t := range sc.Tasks {
		src := cfg.Rows
		if src == nil {
			src = request.NewRandom(cfg.Seed, uint64(i), sc.Features, sc.ValueMin, sc.ValueMax)
		}
		want := 64
		if s := scheduled[i]; s > 0 && s < int64(want) {
			want = int(s)
		}
		plans[i] = run.Plan{Index: i, Task: t, Bodies: request.Bodies(src, cfg.Protocol, t.DataSize, want, request.PoolBytes)}
	}

	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating results directory: %w", err)
	}
	reqFile, err := os.Create(filepath.Join(cfg.OutDir, RequestsCSV))
	if err != nil {
		return nil, fmt.Errorf("creating requests CSV: %w", err)
	}
	defer reqFile.Close()

	begin := time.Now()
	csvw, err := record.NewCSVWriter(reqFile, begin, names, sizes)
	if err != nil {
		return nil, err
	}
	sum := record.NewSummary(names, sizes, scheduled)
	var points []chart.Point

	// Replica sampling runs beside the tasks, through pauses, until the end.
	var (
		samplerWG        sync.WaitGroup
		samples, desired []chart.Step
		samplerErr       error
	)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	if cfg.Sampler != nil {
		repFile, err := os.Create(filepath.Join(cfg.OutDir, ReplicasCSV))
		if err != nil {
			return nil, fmt.Errorf("creating replicas CSV: %w", err)
		}
		defer repFile.Close()
		repw, err := replicas.NewCSVWriter(repFile, begin)
		if err != nil {
			return nil, err
		}
		samplerWG.Add(1)
		go func() {
			defer samplerWG.Done()
			replicas.Loop(sampleCtx, cfg.Sampler, cfg.SampleEvery, func(s replicas.Sample) {
				if err := repw.Write(s); err != nil && samplerErr == nil {
					samplerErr = err
				}
				t := s.Time.Sub(begin).Seconds()
				samples = append(samples, chart.Step{T: t, Replicas: float64(s.Status)})
				if s.HPA != "" {
					d := float64(s.Desire)
					if !s.DesireKnown {
						d = math.NaN() // undecided: a gap in the chart, not 0
					}
					desired = append(desired, chart.Step{T: t, Replicas: d})
				}
			}, func(err error) { cfg.Log.Warn("replica sample failed", "err", err) })
		}()
	}

	client := run.NewClient(cfg.Client)
	opts := run.Options{URL: cfg.URL, Client: client, MaxWorkers: cfg.MaxWorkers}
	var spans []chart.Span
	var runErr error
	for i, p := range plans {
		cfg.Log.Info("task", "index", i+1, "of", n, "desc", p.Task.Describe())
		if cfg.Progress != nil {
			cfg.Progress.StartTask(i, n, p.Task.Name, scheduled[i])
		}
		start, end, err := run.Task(ctx, opts, p, func(r record.Request) {
			_ = csvw.Write(r) // sticky; reported by Flush
			sum.Add(r)
			points = append(points, chart.Point{T: r.Start.Sub(begin).Seconds(), LatencyMs: float64(r.Latency) / 1e6, Failed: !r.OK()})
			if cfg.Progress != nil {
				cfg.Progress.Done(r.OK())
			}
		})
		if cfg.Progress != nil {
			cfg.Progress.EndTask()
		}
		if !start.IsZero() {
			sum.SetSpan(i, start, end)
			spans = append(spans, chart.Span{Name: p.Task.Name, Start: start.Sub(begin).Seconds(), End: end.Sub(begin).Seconds()})
		}
		if err != nil {
			runErr = err
			break
		}
		if d := p.Task.PauseAfter.Duration; d > 0 {
			cfg.Log.Info("pause", "after", p.Task.Name, "for", d)
			select {
			case <-ctx.Done():
				runErr = fmt.Errorf("pause after task %q: %w", p.Task.Name, ctx.Err())
			case <-time.After(d):
			}
			if runErr != nil {
				break
			}
		}
	}
	client.CloseIdleConnections()

	// From here on, write everything even when cancelled.
	stopSampling()
	samplerWG.Wait()
	sum.Finish()
	var errs []error
	errs = append(errs, runErr, samplerErr, csvw.Flush(), reqFile.Close())
	errs = append(errs, writeFile(filepath.Join(cfg.OutDir, SummaryJSON), sum.WriteJSON))
	errs = append(errs, writeFile(filepath.Join(cfg.OutDir, SummaryTxt), sum.WriteTable))
	if cfg.Table != nil {
		errs = append(errs, sum.WriteTable(cfg.Table))
	}
	if cfg.ChartWidth > 0 {
		title := fmt.Sprintf("%s: latency per request and replicas", sc.Name)
		d := chart.Data{Title: title, Requests: points, Replicas: samples, Desired: desired, Tasks: spans, SLOMs: float64(cfg.SLO) / 1e6}
		errs = append(errs, writeFile(filepath.Join(cfg.OutDir, ChartPNG), func(w io.Writer) error {
			return chart.WritePNG(w, d, cfg.ChartWidth, cfg.ChartHeight)
		}))
	}
	return sum, errors.Join(errs...)
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Base(path), err)
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	return nil
}
