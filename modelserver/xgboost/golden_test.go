package xgboost_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// The HTTP layer serves *xgboost.Model through this interface.
var _ modelserver.Predictor = (*xgboost.Model)(nil)

// golden is a NAME.golden.json written by testdata/train.py: inputs and
// XGBoost's own Booster.predict outputs.
type golden struct {
	Model       string `json:"model"`
	Objective   string `json:"objective"`
	NumFeatures int    `json:"num_features"`
	NumOutputs  int    `json:"num_outputs"`
	Sets        []struct {
		Name string `json:"name"`
		Rows int    `json:"rows"`
	} `json:"sets"`
	Inputs  [][]json.Number `json:"inputs"`
	Outputs [][]json.Number `json:"outputs"`

	x, y []float32 // row-major; NaN for null inputs
	rows int
}

func loadGolden(t testing.TB, name string) *golden {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name+".golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	// null (a missing value) decodes to the empty json.Number.
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	g := &golden{}
	if err := dec.Decode(g); err != nil {
		t.Fatalf("parse %s golden: %v", name, err)
	}
	g.rows = len(g.Inputs)
	if len(g.Outputs) != g.rows {
		t.Fatalf("%s golden: %d inputs, %d outputs", name, g.rows, len(g.Outputs))
	}
	g.x = flatten(t, g.Inputs, g.NumFeatures)
	g.y = flatten(t, g.Outputs, g.NumOutputs)
	return g
}

func flatten(t testing.TB, rows [][]json.Number, width int) []float32 {
	t.Helper()
	out := make([]float32, 0, len(rows)*width)
	for i, row := range rows {
		if len(row) != width {
			t.Fatalf("golden row %d has %d values, want %d", i, len(row), width)
		}
		for _, v := range row {
			if v == "" {
				out = append(out, float32(math.NaN()))
				continue
			}
			// Values are float32 in shortest form: parse straight to float32.
			f, err := strconv.ParseFloat(string(v), 32)
			if err != nil {
				t.Fatalf("golden row %d: %v", i, err)
			}
			out = append(out, float32(f))
		}
	}
	return out
}

// setOf names the golden set a row belongs to, for failure messages.
func (g *golden) setOf(row int) string {
	for _, s := range g.Sets {
		if row < s.Rows {
			return s.Name
		}
		row -= s.Rows
	}
	return "?"
}

// tolerance is the issue's bar: 1e-6 absolute. Outputs above 8 (the
// regression and log-link objectives) have a float32 step wider than that,
// so there a value may also be one float32 step off: exp and log are libm's
// expf/logf in XGBoost and correctly rounded float64 results here, which
// can round to neighbouring float32s.
const tolerance = 1e-6

func matches(got, want float32) bool {
	d := math.Abs(float64(got) - float64(want))
	if d <= tolerance {
		return true
	}
	return got == math.Nextafter32(want, float32(math.Inf(1))) || got == math.Nextafter32(want, float32(math.Inf(-1)))
}

func TestGoldenPredictions(t *testing.T) {
	for _, tc := range []struct {
		file, golden string
	}{
		{"iris.json", "iris"},
		{"iris.ubj", "iris"},
		{"model.joblib", "iris"},
		{"iris.deprecated", "iris"},
		{"model-xgb15.joblib", "iris"},
		{"iris_softmax.json", "iris_softmax"},
		{"iris_forest.json", "iris_forest"},
		{"cancer_logistic.json", "cancer_logistic"},
		{"cancer_logistic_base.json", "cancer_logistic_base"},
		{"diabetes_squarederror.json", "diabetes_squarederror"},
		{"cancer_logitraw.json", "cancer_logitraw"},
		{"cancer_dart.json", "cancer_dart"},
		{"cancer_dart.deprecated", "cancer_dart"},
		{"diabetes_logistic.json", "diabetes_logistic"},
		{"obj_count_poisson.json", "obj_count_poisson"},
		{"obj_reg_gamma.json", "obj_reg_gamma"},
		{"obj_reg_tweedie.json", "obj_reg_tweedie"},
		{"obj_binary_hinge.json", "obj_binary_hinge"},
		{"obj_reg_pseudohubererror.json", "obj_reg_pseudohubererror"},
		{"obj_reg_squaredlogerror.json", "obj_reg_squaredlogerror"},
		{"obj_reg_absoluteerror.json", "obj_reg_absoluteerror"},
		{"obj_rank_pairwise.json", "obj_rank_pairwise"},
		{"tiny.json", "tiny"},
		{"tiny.ubj", "tiny"},
		{"tiny.joblib", "tiny"},
		{"tiny.joblib.gz", "tiny"},
		{"tiny.joblib.z", "tiny"},
		{"tiny.deprecated", "tiny"},
		{"tiny-xgb15.joblib", "tiny"},
		{"tiny-p2.pkl", "tiny"},
		{"tiny-p5.pkl", "tiny"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			g := loadGolden(t, tc.golden)
			m, err := xgboost.Load(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := m.Objective(), g.Objective; got != want {
				t.Errorf("Objective() = %q, want %q", got, want)
			}
			if m.NumFeatures() != g.NumFeatures || m.NumOutputs() != g.NumOutputs {
				t.Fatalf("shape %d->%d, want %d->%d", m.NumFeatures(), m.NumOutputs(), g.NumFeatures, g.NumOutputs)
			}
			// The whole set as one batch, and one row at a time: block
			// boundaries must not change a result.
			batch := make([]float32, g.rows*g.NumOutputs)
			if err := m.PredictBatch(g.x, g.rows, batch); err != nil {
				t.Fatal(err)
			}
			compare(t, g, batch)
			single := make([]float32, len(batch))
			nf, no := g.NumFeatures, g.NumOutputs
			for r := 0; r < g.rows; r++ {
				if err := m.PredictBatch(g.x[r*nf:(r+1)*nf], 1, single[r*no:(r+1)*no]); err != nil {
					t.Fatal(err)
				}
			}
			compare(t, g, single)
		})
	}
}

func compare(t *testing.T, g *golden, got []float32) {
	t.Helper()
	exact, worst, bad := 0, 0.0, 0
	for i, want := range g.y {
		d := math.Abs(float64(got[i]) - float64(want))
		worst = max(worst, d)
		if got[i] == want {
			exact++
		}
		if !matches(got[i], want) {
			if bad++; bad <= 5 {
				r := i / g.NumOutputs
				t.Errorf("row %d (%s) output %d: got %v, XGBoost %v (diff %.3g)",
					r, g.setOf(r), i%g.NumOutputs, got[i], want, d)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d values differ from XGBoost by more than %g and one float32 step", bad, len(g.y), tolerance)
	}
	t.Logf("%d rows: %d/%d values bit-identical to XGBoost, max |diff| %.3g", g.rows, exact, len(g.y), worst)
}

func TestGoldenSetsCoverTheIssue(t *testing.T) {
	// The issue asks for at least 2,000 iris rows across these sets.
	g := loadGolden(t, "iris")
	if g.rows < 2000 {
		t.Errorf("iris golden has %d rows, want >= 2000", g.rows)
	}
	var names []string
	for _, s := range g.Sets {
		names = append(names, s.Name)
	}
	want := []string{"seed-ints-1-4", "uniform-wide", "iris", "missing", "thresholds"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("sets %v, want %v", names, want)
	}
}

// A model declaring more features than the stack buffers hold per lane
// group takes a heap buffer (1,000 features: eight rows at a time; 100,000:
// one row at a time). The trees use the first 4 features; rows padded with
// unused columns must give tiny's golden answers.
func TestWideModel(t *testing.T) {
	for _, tc := range []struct{ features, rows int }{{1000, 200}, {100000, 20}} {
		t.Run(fmt.Sprint(tc.features), func(t *testing.T) {
			data := readTestdata(t, "tiny.json")
			wide := bytes.ReplaceAll(data, []byte(`"num_feature":"4"`), []byte(fmt.Sprintf(`"num_feature":"%d"`, tc.features)))
			m, err := xgboost.Decode(wide)
			if err != nil {
				t.Fatal(err)
			}
			if m.NumFeatures() != tc.features {
				t.Fatalf("NumFeatures() = %d", m.NumFeatures())
			}
			g := loadGolden(t, "tiny")
			g.rows = min(g.rows, tc.rows)
			g.y = g.y[:g.rows*g.NumOutputs]
			nf := tc.features
			x := make([]float32, g.rows*nf)
			for r := 0; r < g.rows; r++ {
				copy(x[r*nf:], g.x[r*4:(r+1)*4])
				for c := 4; c < nf; c++ {
					x[r*nf+c] = float32(c) // unused: must not matter
				}
			}
			out := make([]float32, len(g.y))
			if err := m.PredictBatch(x, g.rows, out); err != nil {
				t.Fatal(err)
			}
			compare(t, g, out)
		})
	}
}
