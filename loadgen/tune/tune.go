package tune

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/mlscale/mlscale/loadgen/chart"
	"github.com/mlscale/mlscale/loadgen/request"
)

// Output files in the results directory.
const (
	StepsCSV          = "steps.csv"
	RecommendationTxt = "recommendation.txt"
	HPAYAML           = "hpa.yaml"
	SeldonYAML        = "seldon-hpaspec.yaml"
	ScaledObjectYAML  = "scaledobject.yaml"
)

// Config is one tuning run.
type Config struct {
	URL, MetricsURL string
	Protocol        request.Protocol
	Rows            request.Rows
	// Mixes are the rows per request to ramp, one ramp each.
	Mixes []int
	Ramp  RampConfig // Start, Factor, MaxSteps, StepDuration, Pause
	Knee  KneeOptions
	// Headroom is how far below capacity the target sits (0.2 = 20%).
	Headroom float64
	// Signal forces the signal ("" = recommend).
	Signal string
	Target Target
	OutDir string
	// Recorded, when set, replaces the ramps: the knees, the choice and the
	// manifests are computed again from these steps (a steps.csv), e.g.
	// for another SLO or headroom without measuring again.
	Recorded []Step
	// Log receives progress lines.
	Log io.Writer
}

// Result is what Run found.
type Result struct {
	Recommendation Recommendation
	Files          []string
}

// Run ramps every mix, finds the knees, recommends a signal and writes the
// steps CSV, one chart per mix, the explanation table and the manifests.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if len(cfg.Mixes) == 0 && len(cfg.Recorded) == 0 {
		return nil, fmt.Errorf("no rows-per-request mix to measure")
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", cfg.OutDir, err)
	}
	res := &Result{}
	var all []Step
	var caps []Capacity
	recorded := map[int][]Step{}
	if cfg.Recorded != nil {
		cfg.Mixes = nil
		for _, st := range cfg.Recorded {
			if _, ok := recorded[st.Rows]; !ok {
				cfg.Mixes = append(cfg.Mixes, st.Rows)
			}
			recorded[st.Rows] = append(recorded[st.Rows], st)
		}
	}
	for _, rows := range cfg.Mixes {
		rc := cfg.Ramp
		rc.URL, rc.MetricsURL, rc.Protocol, rc.Rows, rc.RowsPerRequest, rc.Knee = cfg.URL, cfg.MetricsURL, cfg.Protocol, cfg.Rows, rows, cfg.Knee
		i := 0
		rc.Progress = func(s Step, broken string) {
			i++
			verdict := "ok"
			if broken != "" {
				verdict = "SLO broken: " + broken
			}
			fmt.Fprintf(cfg.Log, "  %2d. %7.1f req/s offered -> %7.1f answered, p50 %7s p99 %7s, server %s rows/s, CPU %s cores  %s\n",
				i, s.Offered, s.Achieved, s.P50.Round(time.Millisecond/10), s.P99.Round(time.Millisecond/10), fmtValue(s.RowsPerSecond), fmtValue(s.CPUCores), verdict)
		}
		var steps []Step
		var err error
		if cfg.Recorded != nil {
			steps = recorded[rows]
			fmt.Fprintf(cfg.Log, "%d rows per request: %d recorded steps, SLO p%g <= %s\n", rows, len(steps), cfg.Knee.withDefaults().Quantile*100, cfg.Knee.SLO)
			for _, s := range steps {
				rc.Progress(s, cfg.Knee.Broken(s))
			}
		} else {
			fmt.Fprintf(cfg.Log, "%d rows per request: ramping until p%g > %s\n", rows, cfg.Knee.withDefaults().Quantile*100, cfg.Knee.SLO)
			steps, err = Ramp(ctx, rc)
		}
		all = append(all, steps...)
		if err != nil {
			_ = writeSteps(cfg, all)
			return nil, fmt.Errorf("ramp of %d rows: %w", rows, err)
		}
		knee, err := FindKnee(steps, cfg.Knee)
		if f, cerr := writeChart(cfg, rows, steps, knee); cerr == nil {
			res.Files = append(res.Files, f)
		} else {
			fmt.Fprintf(cfg.Log, "chart: %v\n", cerr)
		}
		if err != nil {
			_ = writeSteps(cfg, all)
			return nil, fmt.Errorf("%d rows: %w", rows, err)
		}
		k := steps[knee.Index]
		if knee.Reached {
			fmt.Fprintf(cfg.Log, "  knee: %.1f req/s (%s rows/s), then %s\n", k.Offered, fmtValue(Signals[0].value(k)), knee.Why)
		} else {
			fmt.Fprintf(cfg.Log, "  the SLO held at every step: capacity is at least %.1f req/s (raise --max-steps)\n", k.Offered)
		}
		caps = append(caps, Capacity{Rows: rows, Knee: knee, Steps: steps})
	}
	if err := writeSteps(cfg, all); err != nil {
		return nil, err
	}
	res.Files = append(res.Files, filepath.Join(cfg.OutDir, StepsCSV))
	rec, err := Recommend(caps, cfg.Headroom, cfg.Signal)
	if err != nil {
		return nil, err
	}
	res.Recommendation = rec
	var table bytes.Buffer
	if err := rec.WriteTable(&table); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Log, "\n%s", table.String())
	outputs := []struct {
		name string
		make func(Target) ([]byte, error)
	}{
		{RecommendationTxt, func(Target) ([]byte, error) { return table.Bytes(), nil }},
		{HPAYAML, rec.HPA}, {SeldonYAML, rec.SeldonHPASpec}, {ScaledObjectYAML, rec.ScaledObject},
	}
	for _, o := range outputs {
		b, err := o.make(cfg.Target)
		if err != nil {
			return nil, fmt.Errorf("writing %s: %w", o.name, err)
		}
		path := filepath.Join(cfg.OutDir, o.name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return nil, err
		}
		res.Files = append(res.Files, path)
	}
	return res, nil
}

func writeSteps(cfg Config, steps []Step) error {
	f, err := os.Create(filepath.Join(cfg.OutDir, StepsCSV))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := WriteStepsCSV(f, steps, cfg.Knee); err != nil {
		return fmt.Errorf("writing %s: %w", StepsCSV, err)
	}
	return f.Close()
}

func writeChart(cfg Config, rows int, steps []Step, knee Knee) (string, error) {
	q := cfg.Knee.withDefaults().Quantile
	c := chart.Capacity{
		Title:    fmt.Sprintf("one pod, %d rows per request", rows),
		Knee:     knee.Index,
		SLOMs:    float64(cfg.Knee.SLO) / 1e6,
		SLOLabel: fmt.Sprintf("p%g", q*100),
	}
	for _, s := range steps {
		c.Points = append(c.Points, chart.CapacityPoint{Offered: s.Offered, Achieved: s.Achieved, P99Ms: float64(s.Latency(q)) / 1e6, Broken: cfg.Knee.Broken(s) != ""})
	}
	path := filepath.Join(cfg.OutDir, fmt.Sprintf("capacity-%d-rows.png", rows))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := chart.WriteCapacityPNG(f, c, 1000, 800); err != nil {
		return "", err
	}
	return path, f.Close()
}
