package tune

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mlscale/mlscale/loadgen/record"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/run"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

// RampConfig is one ramp against one pod.
type RampConfig struct {
	// URL is the prediction endpoint; MetricsURL the pod's own /metrics
	// ("" when it cannot be reached: server-side signals are then NaN and
	// the client-side ones stand in, CPU unknown).
	URL, MetricsURL string
	Protocol        request.Protocol
	Rows            request.Rows
	// RowsPerRequest is the mix: every request carries this many rows.
	RowsPerRequest int
	// Start is the first step's rate (requests/s; 0: from a short probe),
	// Factor the ratio between steps (1.15), MaxSteps the most steps (20).
	Start, Factor float64
	MaxSteps      int
	// StepDuration is how long each rate is held (5 s), longer when that
	// would send fewer than MinRequests (40; at most 30 s): a p99 of five
	// requests is their maximum, and one slow answer would end the ramp.
	MinRequests int
	// Pause the quiet
	// time between steps, so one step's backlog does not spill into the
	// next (1 s).
	StepDuration, Pause time.Duration
	Knee                KneeOptions
	// Progress hears about each step as it ends.
	Progress func(Step, string)
}

func (c *RampConfig) defaults() {
	if c.Factor <= 1 {
		c.Factor = 1.15
	}
	if c.MaxSteps == 0 {
		c.MaxSteps = 20
	}
	if c.StepDuration == 0 {
		c.StepDuration = 5 * time.Second
	}
	if c.Pause == 0 {
		c.Pause = time.Second
	}
	if c.MinRequests == 0 {
		c.MinRequests = 40
	}
}

// duration is how long a step at rate lasts.
func (c *RampConfig) duration(rate float64) time.Duration {
	d := c.StepDuration
	if need := time.Duration(float64(c.MinRequests) / rate * float64(time.Second)); need > d {
		d = min(need, max(d, 30*time.Second))
	}
	return d.Round(100 * time.Millisecond)
}

// Ramp raises the offered load step by step until the SLO breaks for two
// steps in a row (or MaxSteps), and returns every step.
func Ramp(ctx context.Context, cfg RampConfig) ([]Step, error) {
	cfg.defaults()
	if cfg.RowsPerRequest <= 0 {
		return nil, fmt.Errorf("rows per request %d: want at least 1", cfg.RowsPerRequest)
	}
	bodies := request.Bodies(cfg.Rows, cfg.Protocol, cfg.RowsPerRequest, 16, request.PoolBytes)
	timeout := 10 * cfg.Knee.SLO
	if timeout < 5*time.Second {
		timeout = 5 * time.Second
	}
	client := run.NewClient(run.ClientOptions{Conns: 64, Timeout: timeout})
	defer client.CloseIdleConnections()
	rate := cfg.Start
	if rate <= 0 {
		probe, err := probeRate(ctx, client, cfg.URL, bodies)
		if err != nil {
			return nil, err
		}
		// Four clients back to back keep the pod busy: about its
		// saturated throughput, which the knee is below. Start at half.
		rate = math.Max(0.2, 0.5*probe)
	}
	var steps []Step
	for i := 0; i < cfg.MaxSteps; i++ {
		s, err := step(ctx, cfg, client, bodies, rate)
		if err != nil {
			return steps, err
		}
		steps = append(steps, s)
		if cfg.Progress != nil {
			cfg.Progress(s, cfg.Knee.Broken(s))
		}
		if cfg.Knee.Stop(steps) {
			break
		}
		rate *= cfg.Factor
		select {
		case <-ctx.Done():
			return steps, ctx.Err()
		case <-time.After(cfg.Pause):
		}
	}
	return steps, nil
}

// probeRate is the rate four clients reach sending back to back for 3 s.
func probeRate(ctx context.Context, client *run.Client, url string, bodies [][]byte) (float64, error) {
	task := scenario.Task{Name: "probe", DataSize: 1, ClientNum: 4, DataAmount: 1 << 30, Duration: scenario.Duration{Duration: 3 * time.Second}}
	ok, failed := 0, 0
	var firstErr string
	start, end, err := run.Task(ctx, run.Options{URL: url, Client: client}, run.Plan{Task: task, Bodies: bodies}, func(r record.Request) {
		if r.OK() {
			ok++
		} else {
			failed++
			if firstErr == "" {
				firstErr = fmt.Sprintf("status %d %s", r.Status, r.Err)
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("probing %s: %w", url, err)
	}
	if ok == 0 {
		return 0, fmt.Errorf("probing %s: no request answered (%d failed, first: %s)", url, failed, firstErr)
	}
	return float64(ok) / end.Sub(start).Seconds(), nil
}

func step(ctx context.Context, cfg RampConfig, client *run.Client, bodies [][]byte, rate float64) (Step, error) {
	dur := cfg.duration(rate)
	s := Step{Rows: cfg.RowsPerRequest, Offered: rate, Duration: dur,
		RequestsPerSecond: nan, RowsPerSecond: nan, Inflight: nan, CPUCores: nan}
	before, berr := scrape(ctx, cfg.MetricsURL)
	task := scenario.Task{Name: fmt.Sprintf("%.1f/s", rate), DataSize: cfg.RowsPerRequest, Rate: rate, Duration: scenario.Duration{Duration: dur}}
	h := hdrhistogram.New(1, 10*60*1e6, 3) // µs, up to 10 minutes
	var lastAnswer time.Time
	start, _, err := run.Task(ctx, run.Options{URL: cfg.URL, Client: client, MaxWorkers: 2048}, run.Plan{Task: task, Bodies: bodies}, func(r record.Request) {
		s.Sent++
		if !r.OK() {
			s.Failed++
		}
		_ = h.RecordValue(max(1, r.Latency.Microseconds()))
		if r.OK() {
			if end := r.Start.Add(r.Latency); end.After(lastAnswer) {
				lastAnswer = end
			}
		}
	})
	if err != nil {
		return s, err
	}
	after, aerr := scrape(ctx, cfg.MetricsURL)
	// Achieved: answers over the span from the first scheduled send to the
	// last answer (at least the step), so a backlog drained after the step
	// counts against it.
	span := math.Max(dur.Seconds(), lastAnswer.Sub(start).Seconds())
	s.Achieved = float64(s.Sent-s.Failed) / span
	s.P50 = time.Duration(h.ValueAtQuantile(50)) * time.Microsecond
	s.P99 = time.Duration(h.ValueAtQuantile(99)) * time.Microsecond
	if berr == nil && aerr == nil && cfg.MetricsURL != "" {
		dt := after.at.Sub(before.at).Seconds()
		if dt > 0 {
			s.RequestsPerSecond = (after.requests - before.requests) / dt
			s.RowsPerSecond = (after.rows - before.rows) / dt
			s.Inflight = (after.durationSum - before.durationSum) / dt
			s.CPUCores = (after.cpu - before.cpu) / dt
		}
	} else if cfg.MetricsURL != "" {
		return s, fmt.Errorf("reading the pod's metrics at %s: %v", cfg.MetricsURL, firstErr(berr, aerr))
	}
	return s, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// counters are the model server's cumulative series the adapter's signals
// are rates of.
type counters struct {
	at                               time.Time
	requests, rows, durationSum, cpu float64
}

func scrape(ctx context.Context, url string) (counters, error) {
	c := counters{at: time.Now()}
	if url == "" {
		return c, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return c, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	c.at = time.Now()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return c, fmt.Errorf("parsing %s: %w", url, err)
	}
	sum := func(name string) float64 {
		var v float64
		for _, m := range mfs[name].GetMetric() {
			v += m.GetCounter().GetValue() + m.GetHistogram().GetSampleSum()
		}
		return v
	}
	c.requests = sum("mlscale_requests_total")
	c.rows = sum("mlscale_predicted_rows_total")
	c.durationSum = sum("mlscale_request_duration_seconds")
	c.cpu = sum("process_cpu_seconds_total")
	if _, ok := mfs["mlscale_requests_total"]; !ok {
		return c, fmt.Errorf("%s has no mlscale_requests_total: is it a model server's /metrics?", url)
	}
	return c, nil
}
