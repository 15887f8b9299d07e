package xgboost_test

import (
	"bytes"
	"compress/gzip"
	"math"
	"strings"
	"testing"

	"github.com/mlscale/mlscale/modelserver/xgboost"
)

func gzipped(t testing.TB, data []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzDecode feeds hostile bytes in every format to the loader: it must
// return an error or a model, never panic or run away with memory. Whatever
// loads is then evaluated, which checks that load-time validation really
// keeps the evaluator's unchecked reads in bounds.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"tiny.json", "tiny.ubj", "tiny.joblib", "tiny.joblib.gz",
		"tiny.joblib.z", "tiny.deprecated", "tiny-xgb15.joblib", "tiny-p2.pkl", "tiny-p5.pkl"} {
		data := readTestdata(f, name)
		f.Add(data)
		f.Add(data[:len(data)/2])
	}
	f.Add([]byte("{}"))
	f.Add([]byte("\x80\x04."))
	// The 2.x/3.x forms: a version, base_score vectors, vector leaves.
	tiny := string(readTestdata(f, "tiny.json"))
	for _, r := range []*strings.Replacer{
		strings.NewReplacer(`"base_score":"5E-1"`, `"base_score":"[5E-1,2E-1]"`, `"learner":`, `"version":[3,1,0],"learner":`),
		strings.NewReplacer(`"base_score":"5E-1"`, `"base_score":"[5E-1]"`, `"size_leaf_vector":"0"`, `"size_leaf_vector":"2"`),
		strings.NewReplacer(`"learner":`, `"version":[4,0,0],"learner":`),
	} {
		f.Add([]byte(r.Replace(tiny)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := xgboost.Decode(data)
		if err != nil {
			return
		}
		nf, no := m.NumFeatures(), m.NumOutputs()
		if nf > 1<<12 || no > 1<<12 {
			return // valid but too wide to evaluate quickly here
		}
		rows := 9 // one 8-row lane group and one single row
		x := make([]float32, rows*nf)
		for i := range x {
			switch i % 5 {
			case 0:
				x[i] = float32(math.NaN())
			case 1:
				x[i] = float32(math.Inf(1))
			default:
				x[i] = float32(i%7) - 3
			}
		}
		if err := m.PredictBatch(x, rows, make([]float32, rows*no)); err != nil {
			t.Fatalf("valid model, valid batch: %v", err)
		}
	})
}
