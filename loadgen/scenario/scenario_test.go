package scenario

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLoadSeed(t *testing.T) {
	s, err := Load("../../scenarios/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, task := range s.Tasks {
		if !task.Closed() || task.DataAmount != 1500 || task.ClientNum != 4 {
			t.Errorf("task %s = %+v, want closed loop of 1500 requests from 4 clients", task.Name, task)
		}
		sizes = append(sizes, task.DataSize)
	}
	if diff := cmp.Diff([]int{500, 1000, 5000, 10000, 5000, 1000, 500}, sizes); diff != "" {
		t.Errorf("data sizes (-want +got):\n%s", diff)
	}
	if s.Features != 4 || s.ValueMin != 1 || s.ValueMax != 4 {
		t.Errorf("features %d values %d..%d, want 4 features in 1..4", s.Features, s.ValueMin, s.ValueMax)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want *Scenario
	}{
		{
			name: "defaults and both loop kinds",
			yaml: `
tasks:
  - {data_size: 10, data_amount: 5, client_num: 2}
  - name: ramp
    data_size: 1
    rate: 10
    rate_end: 50
    duration: 30s
    pause_after: 1m
`,
			want: &Scenario{
				Features: 4, ValueMin: 1, ValueMax: 4,
				Tasks: []Task{
					{Name: "task-1", DataSize: 10, DataAmount: 5, ClientNum: 2},
					{Name: "ramp", DataSize: 1, Rate: 10, RateEnd: 50,
						Duration: Duration{30 * time.Second}, PauseAfter: Duration{time.Minute}},
				},
			},
		},
		{
			name: "closed loop bounded by time only",
			yaml: "features: 7\nvalue_min: 0\nvalue_max: 9\ntasks: [{name: soak, data_size: 1, client_num: 8, duration: 2s}]",
			want: &Scenario{
				Features: 7, ValueMin: 0, ValueMax: 9,
				Tasks: []Task{{Name: "soak", DataSize: 1, ClientNum: 8, Duration: Duration{2 * time.Second}}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error
	}{
		{"unknown task field", "tasks: [{name: a, data_size: 1, client_num: 1, data_amount: 1}, {name: b, data_size: 1, clients: 4}]",
			[]string{`task 2 ("b")`, `unknown field "clients"`}},
		{"unknown top-level field", "taskz: []\ntasks: [{data_size: 1, client_num: 1, data_amount: 1}]",
			[]string{`unknown field "taskz"`}},
		{"zero size", "tasks: [{name: z, data_size: 0, client_num: 1, data_amount: 1}]",
			[]string{`task 1 ("z")`, "data_size must be positive"}},
		{"negative amount", "tasks: [{name: neg, data_size: 1, client_num: 1, data_amount: -3}]",
			[]string{`task 1 ("neg")`, "data_amount must be positive"}},
		{"negative clients", "tasks: [{name: neg, data_size: 1, client_num: -1, data_amount: 3}]",
			[]string{`task 1 ("neg")`, "client_num must be positive"}},
		{"neither loop", "tasks: [{data_size: 1, data_amount: 0}, {name: idle, data_size: 5}]",
			[]string{`task 1 ("task-1")`, `task 2 ("idle")`, "neither closed-loop"}},
		{"both loops", "tasks: [{name: m, data_size: 1, client_num: 2, data_amount: 2, rate: 5, duration: 1s}]",
			[]string{`task 1 ("m")`, "mixes closed-loop"}},
		{"open loop without duration", "tasks: [{name: o, data_size: 1, rate: 5}]",
			[]string{`task 1 ("o")`, "needs a positive duration"}},
		{"open loop zero rate with ramp", "tasks: [{name: o, data_size: 1, rate_end: 5, duration: 1s}]",
			[]string{"rate must be positive"}},
		{"closed loop without amount", "tasks: [{name: c, data_size: 1, client_num: 2}]",
			[]string{`task 1 ("c")`, "needs data_amount or duration"}},
		{"bad duration", "tasks: [{name: d, data_size: 1, rate: 1, duration: 10}]",
			[]string{`task 1 ("d")`, "duration must be a string"}},
		{"duplicate names", "tasks: [{name: d, data_size: 1, rate: 1, duration: 1s}, {name: d, data_size: 1, rate: 1, duration: 1s}]",
			[]string{`task 2 ("d")`, "already used by task 1"}},
		{"no tasks", "name: x", []string{"no tasks"}},
		{"null task", "tasks: [null]", []string{"task 1", "empty"}},
		{"not yaml", "tasks: [", []string{"parsing YAML"}},
		{"bad value range", "value_min: 5\nvalue_max: 1\ntasks: [{data_size: 1, rate: 1, duration: 1s}]", []string{"value_min 5 is greater"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestScaled(t *testing.T) {
	s, err := Parse([]byte(`
tasks:
  - {name: a, data_size: 500, data_amount: 1500, client_num: 4, pause_after: 10s}
  - {name: b, data_size: 1, data_amount: 3, client_num: 4}
  - {name: c, data_size: 1, rate: 10, duration: 1m}
`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Scaled(0.02)
	if err != nil {
		t.Fatal(err)
	}
	want := []Task{
		{Name: "a", DataSize: 500, DataAmount: 30, ClientNum: 4, PauseAfter: Duration{200 * time.Millisecond}},
		{Name: "b", DataSize: 1, DataAmount: 1, ClientNum: 4},
		{Name: "c", DataSize: 1, Rate: 10, Duration: Duration{1200 * time.Millisecond}},
	}
	if diff := cmp.Diff(want, got.Tasks); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if s.Tasks[0].DataAmount != 1500 {
		t.Errorf("Scaled modified the original")
	}
	for _, f := range []float64{0, -1} {
		if _, err := s.Scaled(f); err == nil {
			t.Errorf("Scaled(%g): no error", f)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("tasks: [{data_size: 1, client_num: 1, data_amount: 1}]"))
	f.Add([]byte("tasks: [{data_size: 1, rate: 3, rate_end: 9, duration: 1s, pause_after: 2s}]"))
	f.Add([]byte("features: 3\nrows_csv: x.csv\ntasks: [{name: q, data_size: 1, client_num: 1, duration: 5ms}]"))
	f.Add([]byte("tasks: [null, 3, {}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses must be valid and runnable.
		if err := s.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid scenario: %v", err)
		}
		for _, task := range s.Tasks {
			if task.DataSize <= 0 || task.Name == "" {
				t.Fatalf("accepted task %+v", task)
			}
		}
	})
}
