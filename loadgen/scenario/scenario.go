// Package scenario reads the load client's scenarios: a list of tasks, each
// either closed-loop (the seed's data_size/data_amount/client_num: every client
// sends its next request when the last one answered) or open-loop (a fixed or
// linearly ramping arrival rate held for a duration, whatever the latency).
//
// Parsing is strict because a typo in a benchmark definition silently changes
// the experiment: unknown fields, missing or non-positive sizes and tasks that
// are neither closed- nor open-loop are errors that name the task.
package scenario

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// DefaultFeatures is the seed's feature count (iris: 4 columns).
const DefaultFeatures = 4

// Scenario is a parsed, validated scenario.
type Scenario struct {
	// Name labels the run in summaries; defaults to the file's base name.
	Name string `json:"name,omitempty"`
	// Features is the number of columns per generated row.
	Features int `json:"features,omitempty"`
	// ValueMin and ValueMax bound the generated integer feature values
	// (inclusive); the seed used 1..4.
	ValueMin int `json:"value_min,omitempty"`
	ValueMax int `json:"value_max,omitempty"`
	// RowsCSV, when set, names a CSV of rows to send instead of random rows
	// (relative paths are relative to the scenario file).
	RowsCSV string `json:"rows_csv,omitempty"`
	Tasks   []Task `json:"tasks"`
}

// Task is one step of a scenario.
type Task struct {
	// Name labels the task in records, summaries and the chart; defaults to
	// "task-N".
	Name string `json:"name,omitempty"`
	// DataSize is the number of rows per request.
	DataSize int `json:"data_size"`

	// Closed loop: ClientNum clients, each sending its next request when the
	// last one answered, DataAmount requests in total and/or until Duration.
	ClientNum  int `json:"client_num,omitempty"`
	DataAmount int `json:"data_amount,omitempty"`

	// Open loop: Rate requests/s (ramping linearly to RateEnd when set) for
	// Duration, independent of how fast the server answers.
	Rate    float64 `json:"rate,omitempty"`
	RateEnd float64 `json:"rate_end,omitempty"`

	// Duration bounds an open-loop task (required) or a closed-loop one
	// (optional, in addition to DataAmount).
	Duration Duration `json:"duration,omitempty"`
	// PauseAfter idles after the task, so the autoscaler's reaction (or its
	// scale-down) is recorded before the next task starts.
	PauseAfter Duration `json:"pause_after,omitempty"`
}

// Closed reports whether the task is closed-loop.
func (t Task) Closed() bool { return t.ClientNum > 0 }

// Duration is a time.Duration written as a Go duration string ("90s", "5m").
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Load reads and parses a scenario file.
func Load(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading scenario: %w", err)
	}
	s, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("scenario %s: %w", path, err)
	}
	return s, nil
}

// Parse parses and validates YAML (or JSON) scenario bytes.
func Parse(b []byte) (*Scenario, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("parsing YAML: %w", err)
	}
	// Tasks are decoded one by one so that an error can name its task.
	var raw struct {
		Scenario
		Tasks []json.RawMessage `json:"tasks"`
	}
	if err := decodeStrict(j, &raw); err != nil {
		return nil, err
	}
	s := raw.Scenario
	s.Tasks = make([]Task, 0, len(raw.Tasks))
	for i, rt := range raw.Tasks {
		var t Task
		if err := decodeStrict(rt, &t); err != nil {
			return nil, fmt.Errorf("%s: %w", taskLabel(i, rt), err)
		}
		if t.Name == "" {
			t.Name = fmt.Sprintf("task-%d", i+1)
		}
		s.Tasks = append(s.Tasks, t)
	}
	if s.Features == 0 {
		s.Features = DefaultFeatures
	}
	if s.ValueMin == 0 && s.ValueMax == 0 {
		s.ValueMin, s.ValueMax = 1, 4
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

func decodeStrict(b []byte, v any) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return errors.New("empty")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	return nil
}

// taskLabel names a task for an error before it is decoded: by its name if
// one can be read, else by position.
func taskLabel(i int, raw json.RawMessage) string {
	var n struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(raw, &n) == nil && n.Name != "" {
		return fmt.Sprintf("task %d (%q)", i+1, n.Name)
	}
	return fmt.Sprintf("task %d", i+1)
}

// Validate checks the scenario; every task error names the task.
func (s *Scenario) Validate() error {
	var errs []error
	if len(s.Tasks) == 0 {
		errs = append(errs, errors.New("no tasks"))
	}
	if s.Features <= 0 {
		errs = append(errs, fmt.Errorf("features must be positive, got %d", s.Features))
	}
	if s.ValueMin > s.ValueMax {
		errs = append(errs, fmt.Errorf("value_min %d is greater than value_max %d", s.ValueMin, s.ValueMax))
	}
	seen := map[string]int{}
	for i, t := range s.Tasks {
		label := fmt.Sprintf("task %d (%q)", i+1, t.Name)
		if j, ok := seen[t.Name]; ok {
			errs = append(errs, fmt.Errorf("%s: name already used by task %d", label, j+1))
		}
		seen[t.Name] = i
		if err := t.validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", label, err))
		}
	}
	return errors.Join(errs...)
}

func (t Task) validate() error {
	var errs []error
	if t.DataSize <= 0 {
		errs = append(errs, fmt.Errorf("data_size must be positive, got %d", t.DataSize))
	}
	if t.Duration.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration must not be negative, got %s", t.Duration))
	}
	if t.PauseAfter.Duration < 0 {
		errs = append(errs, fmt.Errorf("pause_after must not be negative, got %s", t.PauseAfter))
	}
	closed := t.ClientNum != 0 || t.DataAmount != 0
	open := t.Rate != 0 || t.RateEnd != 0
	switch {
	case closed && open:
		errs = append(errs, errors.New("mixes closed-loop (client_num, data_amount) and open-loop (rate, rate_end) settings"))
	case closed:
		if t.ClientNum <= 0 {
			errs = append(errs, fmt.Errorf("client_num must be positive, got %d", t.ClientNum))
		}
		if t.DataAmount < 0 {
			errs = append(errs, fmt.Errorf("data_amount must be positive, got %d", t.DataAmount))
		}
		if t.DataAmount == 0 && t.Duration.Duration == 0 {
			errs = append(errs, errors.New("closed-loop task needs data_amount or duration"))
		}
	case open:
		if !(t.Rate > 0) || math.IsInf(t.Rate, 0) {
			errs = append(errs, fmt.Errorf("rate must be positive, got %g", t.Rate))
		}
		if t.RateEnd < 0 || math.IsNaN(t.RateEnd) || math.IsInf(t.RateEnd, 0) {
			errs = append(errs, fmt.Errorf("rate_end must be positive, got %g", t.RateEnd))
		}
		if t.Duration.Duration <= 0 {
			errs = append(errs, errors.New("open-loop task needs a positive duration"))
		}
	default:
		errs = append(errs, errors.New("neither closed-loop (client_num with data_amount or duration) nor open-loop (rate with duration)"))
	}
	return errors.Join(errs...)
}

// Scaled returns a copy whose request counts, durations and pauses are
// multiplied by f (0 < f), keeping at least one request and one client's
// worth of work per task, for short local runs of long scenarios.
func (s *Scenario) Scaled(f float64) (*Scenario, error) {
	if !(f > 0) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("scale must be positive, got %g", f)
	}
	c := *s
	c.Tasks = make([]Task, len(s.Tasks))
	for i, t := range s.Tasks {
		if t.DataAmount > 0 {
			t.DataAmount = max(1, int(math.Round(float64(t.DataAmount)*f)))
		}
		t.Duration.Duration = scaleDur(t.Duration.Duration, f)
		t.PauseAfter.Duration = scaleDur(t.PauseAfter.Duration, f)
		c.Tasks[i] = t
	}
	return &c, nil
}

func scaleDur(d time.Duration, f float64) time.Duration {
	if d == 0 {
		return 0
	}
	return max(time.Millisecond, time.Duration(float64(d)*f))
}

// Describe is a one-line description of a task for logs.
func (t Task) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d rows/request, ", t.Name, t.DataSize)
	if t.Closed() {
		fmt.Fprintf(&b, "closed loop, %d clients", t.ClientNum)
		if t.DataAmount > 0 {
			fmt.Fprintf(&b, ", %d requests", t.DataAmount)
		}
		if t.Duration.Duration > 0 {
			fmt.Fprintf(&b, ", at most %s", t.Duration)
		}
	} else {
		fmt.Fprintf(&b, "open loop, %g req/s", t.Rate)
		if t.RateEnd > 0 {
			fmt.Fprintf(&b, " ramping to %g req/s", t.RateEnd)
		}
		fmt.Fprintf(&b, " for %s", t.Duration)
	}
	if t.PauseAfter.Duration > 0 {
		fmt.Fprintf(&b, ", then pause %s", t.PauseAfter)
	}
	return b.String()
}
