package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mlscale/mlscale/internal/cli"
	"github.com/mlscale/mlscale/loadgen/chart"
	"github.com/mlscale/mlscale/loadgen/compare"
)

const compareUsage = `Usage: loadgen compare [flags] NAME=RESULTS_DIR...

Puts load runs of different autoscaling configurations on the same traffic
side by side, from each results directory's requests.csv and replicas.csv:
requests over the latency SLO, windows whose p99 is over it, replica-seconds,
peak replicas and scale events. Writes compare.md and compare.png (the
replica curves) into --out.

Flags:
`

func runCompare(args []string) error {
	fs := cli.FlagSet("loadgen compare", compareUsage)
	var (
		slo      = fs.Duration("slo", 500*time.Millisecond, "p99 latency SLO")
		window   = fs.Duration("window", 5*time.Second, "p99 is computed over requests starting in windows of this length")
		goal     = fs.String("goal", "", "run that should keep p99 within the SLO for --min-within of the windows...")
		baseline = fs.String("baseline", "", "...with no more replica-seconds than this run")
		within   = fs.Float64("min-within", 0.95, "fraction of windows --goal must keep within the SLO")
		out      = fs.String("out", ".", "directory for compare.md and compare.png")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("no runs: give NAME=RESULTS_DIR arguments")
	}
	if *slo <= 0 || *window <= 0 {
		return fmt.Errorf("--slo %s and --window %s must be positive", *slo, *window)
	}
	var runs []compare.Run
	var results []compare.Result
	for _, a := range fs.Args() {
		name, dir, err := compare.ParseRunArg(a)
		if err != nil {
			return err
		}
		r, err := compare.Load(name, dir)
		if err != nil {
			return err
		}
		runs = append(runs, r)
		results = append(results, compare.Evaluate(r, *slo, *window))
	}
	var md bytes.Buffer
	fmt.Fprintf(&md, "# Autoscaling configurations on the same traffic\n\nSLO: p99 <= %s, over windows of %s.\n\n", *slo, *window)
	if err := compare.WriteMarkdown(&md, results, *slo, *goal, *baseline, *within); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*out, "compare.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	os.Stdout.Write(md.Bytes())
	f, err := os.Create(filepath.Join(*out, "compare.png"))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := chart.WriteCurvesPNG(f, "replicas on the same traffic", "seconds since the first request", compare.Curves(runs), 1200, 600); err != nil {
		return err
	}
	return f.Close()
}
