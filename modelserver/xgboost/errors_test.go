package xgboost_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// mutateJSON decodes tiny.json, lets edit change it, and encodes it again.
func mutateJSON(t *testing.T, edit func(learner map[string]any)) []byte {
	t.Helper()
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(readTestdata(t, "tiny.json")))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	edit(doc["learner"].(map[string]any))
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func firstTree(learner map[string]any) map[string]any {
	gb := learner["gradient_booster"].(map[string]any)
	return gb["model"].(map[string]any)["trees"].([]any)[0].(map[string]any)
}

func TestDecodeErrors(t *testing.T) {
	legacy := readTestdata(t, "tiny.deprecated")
	oldLegacy := bytes.Clone(legacy)
	binary.LittleEndian.PutUint32(oldLegacy[4+20:], 0) // major_version 0
	joblib := readTestdata(t, "tiny.joblib")

	for _, tc := range []struct {
		name string
		data []byte
		want string // a substring the error must contain
	}{
		{"empty", nil, "file is empty"},
		{"text", []byte("hello, model"), "unrecognised model format"},
		{"json empty object", []byte("{}"), `missing "learner"`},
		{"json truncated", readTestdata(t, "tiny.json")[:500], "parse json"},
		{"json trailing", append(readTestdata(t, "tiny.json"), []byte(" {}")...), "trailing data"},
		{"ubjson truncated", readTestdata(t, "tiny.ubj")[:700], "ubjson"},
		{"ubjson huge count", []byte("{L\x00\x00\x00\x00\x00\x00\x00\x01a[$d#L\x7f\xff\xff\xff\xff\xff\xff\xff}"), "runs past the end"},
		{"ubjson deep", append([]byte("{L\x00\x00\x00\x00\x00\x00\x00\x01a"), bytes.Repeat([]byte("["), 10000)...), "nested too deeply"},
		{"unsupported objective", mutateJSON(t, func(l map[string]any) {
			l["objective"].(map[string]any)["name"] = "survival:cox"
		}), `objective "survival:cox" is not supported`},
		{"gblinear booster", mutateJSON(t, func(l map[string]any) {
			l["gradient_booster"].(map[string]any)["name"] = "gblinear"
		}), `booster "gblinear" is not supported`},
		{"dart without weights", mutateJSON(t, func(l map[string]any) {
			l["gradient_booster"].(map[string]any)["name"] = "dart"
		}), `missing "weight_drop"`},
		{"softprob without classes", mutateJSON(t, func(l map[string]any) {
			l["learner_model_param"].(map[string]any)["num_class"] = "0"
		}), "does not fit 1 output groups"},
		{"logistic base_score 0", mutateJSON(t, func(l map[string]any) {
			l["learner_model_param"].(map[string]any)["num_class"] = "0"
			l["learner_model_param"].(map[string]any)["base_score"] = "0"
			l["objective"].(map[string]any)["name"] = "binary:logistic"
			gb := l["gradient_booster"].(map[string]any)["model"].(map[string]any)
			info := gb["tree_info"].([]any)
			for i := range info {
				info[i] = 0
			}
		}), "base_score must be in (0,1)"},
		{"feature out of range", mutateJSON(t, func(l map[string]any) {
			firstTree(l)["split_indices"].([]any)[0] = 4
		}), "split feature 4 out of range [0,4)"},
		{"child loop", mutateJSON(t, func(l map[string]any) {
			tr := firstTree(l)
			tr["right_children"].([]any)[0] = tr["left_children"].([]any)[0]
		}), "not a tree"},
		{"child out of range", mutateJSON(t, func(l map[string]any) {
			firstTree(l)["right_children"].([]any)[0] = 1000
		}), "child index out of range"},
		{"categorical split", mutateJSON(t, func(l map[string]any) {
			firstTree(l)["split_type"].([]any)[0] = 1
		}), "categorical splits are not supported"},
		{"ragged node arrays", mutateJSON(t, func(l map[string]any) {
			tr := firstTree(l)
			tr["split_conditions"] = tr["split_conditions"].([]any)[1:]
		}), "node arrays disagree"},
		{"tree_info short", mutateJSON(t, func(l map[string]any) {
			m := l["gradient_booster"].(map[string]any)["model"].(map[string]any)
			m["tree_info"] = m["tree_info"].([]any)[1:]
		}), "tree_info has 5 entries for 6 trees"},
		{"group out of range", mutateJSON(t, func(l map[string]any) {
			m := l["gradient_booster"].(map[string]any)["model"].(map[string]any)
			m["tree_info"].([]any)[0] = 3
		}), "output group 3 out of range"},
		{"legacy truncated", legacy[:300], "truncated"},
		{"legacy before 1.0", oldLegacy, "before 1.0"},
		{"config-offset length", append([]byte("CONFIG-offset:\xff\xff\xff\xff\xff\xff\xff\x7f"), legacy...), "does not fit"},
		{"pickle other class", bytes.Replace(joblib, []byte("Booster"), []byte("Boaster"), 1), "pickle refers to xgboost.core.Boaster"},
		{"pickle huge bytes", []byte("\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f"), "runs past the end"},
		{"pickle no stop", []byte("\x80\x04K\x01"), "no STOP"},
		{"pickle frame past end", joblib[:len(joblib)/2], "runs past the end"},
		{"pickle not a booster", []byte("\x80\x04K\x01."), "not an xgboost.core.Booster"},
		{"gzip not a pickle", gzipped(t, []byte("{}")), "does not hold a pickle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := xgboost.Decode(tc.data)
			if err == nil {
				t.Fatalf("Decode succeeded (%d trees), want an error containing %q", m.NumTrees(), tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "model.joblib")
	if err := os.WriteFile(bad, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{bad, filepath.Join(dir, "missing.json")} {
		_, err := xgboost.Load(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("Load(%s) error %v, want one naming the file", path, err)
		}
	}
}

func TestPredictBatchErrors(t *testing.T) {
	m, err := xgboost.Load(filepath.Join("testdata", "tiny.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		x         []float32
		rows, out int
		want      string
	}{
		{"short x", make([]float32, 7), 2, 6, "got 7 values for 2 rows of 4 features"},
		{"long x", make([]float32, 9), 2, 6, "got 9 values for 2 rows of 4 features"},
		{"short out", make([]float32, 8), 2, 5, "output has room for 5 values, need 6"},
		{"negative rows", nil, -1, 0, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := m.PredictBatch(tc.x, tc.rows, make([]float32, tc.out))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if err := m.PredictBatch(nil, 0, nil); err != nil {
		t.Errorf("zero rows: %v", err)
	}
}

func TestPredictBatchAllocatesNothing(t *testing.T) {
	m, err := xgboost.Load(filepath.Join("testdata", "iris.json"))
	if err != nil {
		t.Fatal(err)
	}
	g := loadGolden(t, "iris")
	out := make([]float32, g.rows*m.NumOutputs())
	for _, rows := range []int{1, 7, g.rows} {
		allocs := testing.AllocsPerRun(5, func() {
			if err := m.PredictBatch(g.x[:rows*g.NumFeatures], rows, out); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%d rows: %v allocations per batch, want 0", rows, allocs)
		}
	}
}

// The HTTP server shares one Model between request goroutines.
func TestPredictBatchConcurrent(t *testing.T) {
	m, err := xgboost.Load(filepath.Join("testdata", "iris.json"))
	if err != nil {
		t.Fatal(err)
	}
	g := loadGolden(t, "iris")
	var wg sync.WaitGroup
	results := make([][]float32, 4)
	for w := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]float32, len(g.y))
			for i := 0; i < 5; i++ {
				if err := m.PredictBatch(g.x, g.rows, out); err != nil {
					t.Error(err)
					return
				}
			}
			results[w] = out
		}()
	}
	wg.Wait()
	for w, got := range results {
		if diff := cmp.Diff(g.y, got, cmp.Comparer(matches)); diff != "" {
			t.Errorf("goroutine %d differs from XGBoost (-want +got):\n%s", w, diff)
		}
	}
}

// reg:linear is the pre-1.0 name of reg:squarederror, still found in old
// model files: same margins, same output.
func TestRegLinearAlias(t *testing.T) {
	data := readTestdata(t, "diabetes_squarederror.json")
	alias := bytes.Replace(data, []byte(`"name":"reg:squarederror"`), []byte(`"name":"reg:linear"`), 1)
	if bytes.Equal(alias, data) {
		t.Fatal("objective name not found in diabetes_squarederror.json")
	}
	m, err := xgboost.Decode(alias)
	if err != nil {
		t.Fatal(err)
	}
	if m.Objective() != "reg:linear" {
		t.Errorf("Objective() = %q", m.Objective())
	}
	g := loadGolden(t, "diabetes_squarederror")
	out := make([]float32, len(g.y))
	if err := m.PredictBatch(g.x, g.rows, out); err != nil {
		t.Fatal(err)
	}
	compare(t, g, out)
}
