package modelserver_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

const testdata = "xgboost/testdata"

// golden is XGBoost's own predictions for the iris model (written by
// xgboost/testdata/train.py): inputs are float32 values as shortest text,
// null meaning missing.
type golden struct {
	NumFeatures int             `json:"num_features"`
	NumOutputs  int             `json:"num_outputs"`
	Inputs      json.RawMessage `json:"inputs"`
	Outputs     [][]float64     `json:"outputs"`
	rows        [][]*float64
}

var loadOnce = sync.OnceValues(func() (*xgboost.Model, error) {
	return xgboost.Load(filepath.Join(testdata, "iris.json"))
})

var goldenOnce = sync.OnceValues(func() (*golden, error) {
	b, err := os.ReadFile(filepath.Join(testdata, "iris.golden.json"))
	if err != nil {
		return nil, err
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(g.Inputs, &g.rows); err != nil {
		return nil, err
	}
	return &g, nil
})

func irisModel(t testing.TB) *xgboost.Model {
	t.Helper()
	m, err := loadOnce()
	if err != nil {
		t.Fatalf("loading the iris model: %v", err)
	}
	return m
}

func irisGolden(t testing.TB) *golden {
	t.Helper()
	g, err := goldenOnce()
	if err != nil {
		t.Fatalf("reading golden predictions: %v", err)
	}
	return g
}

// newServer starts the real handler on a loopback listener.
func newServer(t testing.TB, opts modelserver.Options) (*modelserver.Server, *httptest.Server) {
	t.Helper()
	if opts.Predictor == nil {
		opts.Predictor = irisModel(t)
	}
	if opts.ModelName == "" {
		opts.ModelName = "iris"
	}
	s, err := modelserver.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts
}

func post(t testing.TB, url, contentType string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading answer of POST %s: %v", url, err)
	}
	return resp.StatusCode, b
}

func get(t testing.TB, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading answer of GET %s: %v", url, err)
	}
	return resp.StatusCode, b
}

// flatInputs is the golden inputs row-major, missing values as null.
func flatInputs(g *golden) []*float64 {
	var flat []*float64
	for _, r := range g.rows {
		flat = append(flat, r...)
	}
	return flat
}

func checkGolden(t *testing.T, g *golden, got [][]float64) {
	t.Helper()
	if len(got) != len(g.Outputs) {
		t.Fatalf("got %d rows, want %d", len(got), len(g.Outputs))
	}
	bad := 0
	for i := range got {
		if len(got[i]) != len(g.Outputs[i]) {
			t.Fatalf("row %d: got %d outputs, want %d", i, len(got[i]), len(g.Outputs[i]))
		}
		for j := range got[i] {
			if d := math.Abs(got[i][j] - g.Outputs[i][j]); !(d <= 1e-6) {
				if bad++; bad <= 5 {
					t.Errorf("row %d (input %v) output %d: got %v, XGBoost %v", i, g.rows[i], j, got[i][j], g.Outputs[i][j])
				}
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d outputs differ from XGBoost by more than 1e-6", bad, len(got)*len(got[0]))
	}
}

func reshape(flat []float64, cols int) [][]float64 {
	var out [][]float64
	for i := 0; i+cols <= len(flat); i += cols {
		out = append(out, flat[i:i+cols])
	}
	return out
}

// TestGolden sends every golden row through each protocol and request
// form over HTTP and compares the answers with XGBoost's predictions.
func TestGolden(t *testing.T) {
	g := irisGolden(t)
	_, ts := newServer(t, modelserver.Options{})
	want := inProcess(t, goldenMatrix(g))
	flat, err := json.Marshal(flatInputs(g))
	if err != nil {
		t.Fatal(err)
	}
	n := len(g.rows)
	tests := []struct {
		name, path, body string
		decode           func(t *testing.T, b []byte) [][]float64
	}{
		{
			name: "seldon ndarray", path: "/api/v1.0/predictions",
			body: `{"data":{"names":["sepal_length","sepal_width","petal_length","petal_width"],"ndarray":` + string(g.Inputs) + `}}`,
			decode: func(t *testing.T, b []byte) [][]float64 {
				var r struct {
					Data struct {
						Names   []string    `json:"names"`
						NDArray [][]float64 `json:"ndarray"`
					} `json:"data"`
				}
				mustUnmarshal(t, b, &r)
				if diff := cmp.Diff([]string{"t:0", "t:1", "t:2"}, r.Data.Names); diff != "" {
					t.Errorf("names (-want +got):\n%s", diff)
				}
				return r.Data.NDArray
			},
		},
		{
			name: "seldon tensor via gateway prefix", path: "/seldon/model/iris-model-autoscale/api/v1.0/predictions",
			body: fmt.Sprintf(`{"data":{"tensor":{"shape":[%d,4],"values":%s}}}`, n, flat),
			decode: func(t *testing.T, b []byte) [][]float64 {
				var r struct {
					Data struct {
						Tensor struct {
							Shape  []int     `json:"shape"`
							Values []float64 `json:"values"`
						} `json:"tensor"`
					} `json:"data"`
				}
				mustUnmarshal(t, b, &r)
				if diff := cmp.Diff([]int{n, 3}, r.Data.Tensor.Shape); diff != "" {
					t.Errorf("shape (-want +got):\n%s", diff)
				}
				return reshape(r.Data.Tensor.Values, 3)
			},
		},
		{
			// SeldonClient(payload_type="tftensor") over REST: protobuf's JSON
			// of tf.make_tensor_proto, answered the same way.
			name: "seldon tftensor", path: "/api/v1.0/predictions",
			body: fmt.Sprintf(`{"data":{"tftensor":{"dtype":"DT_DOUBLE","tensorShape":{"dim":[{"size":"%d"},{"size":"4"}]},"tensorContent":%q}}}`,
				n, base64.StdEncoding.EncodeToString(rawFP64(goldenMatrix(g)))),
			decode: func(t *testing.T, b []byte) [][]float64 {
				var r struct {
					Data struct {
						TF struct {
							Dtype       string `json:"dtype"`
							TensorShape struct {
								Dim []struct {
									Size string `json:"size"`
								} `json:"dim"`
							} `json:"tensorShape"`
							TensorContent []byte `json:"tensorContent"`
						} `json:"tftensor"`
					} `json:"data"`
				}
				mustUnmarshal(t, b, &r)
				tf := r.Data.TF
				if tf.Dtype != "DT_FLOAT" || len(tf.TensorShape.Dim) != 2 || tf.TensorShape.Dim[0].Size != strconv.Itoa(n) || tf.TensorShape.Dim[1].Size != "3" {
					t.Errorf("tftensor answer %s, want DT_FLOAT [%d, 3]", b[:min(len(b), 200)], n)
				}
				return reshape(fromRawFP32(t, tf.TensorContent), 3)
			},
		},
		{
			name: "v2 flat FP32", path: "/v2/models/iris/infer",
			body:   fmt.Sprintf(`{"inputs":[{"name":"input-0","shape":[%d,4],"datatype":"FP32","data":%s}]}`, n, flat),
			decode: v2Outputs(n),
		},
		{
			name: "v2 nested FP64 via gateway prefix", path: "/seldon/model/iris/v2/models/iris/infer",
			body:   fmt.Sprintf(`{"inputs":[{"name":"input-0","shape":[%d,4],"datatype":"FP64","data":%s}]}`, n, g.Inputs),
			decode: v2Outputs(n),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := post(t, ts.URL+tc.path, "application/json", []byte(tc.body))
			if code != http.StatusOK {
				t.Fatalf("status %d: %s", code, b)
			}
			got := tc.decode(t, b)
			checkGolden(t, g, got)
			var flat []float64
			for _, r := range got {
				flat = append(flat, r...)
			}
			checkBits(t, want, flat)
		})
	}
}

func v2Outputs(n int) func(t *testing.T, b []byte) [][]float64 {
	return func(t *testing.T, b []byte) [][]float64 {
		var r struct {
			ModelName string `json:"model_name"`
			Outputs   []struct {
				Name     string    `json:"name"`
				Datatype string    `json:"datatype"`
				Shape    []int     `json:"shape"`
				Data     []float64 `json:"data"`
			} `json:"outputs"`
		}
		mustUnmarshal(t, b, &r)
		if len(r.Outputs) != 1 {
			t.Fatalf("got %d outputs, want 1: %s", len(r.Outputs), b)
		}
		o := r.Outputs[0]
		if diff := cmp.Diff([]any{"iris", "predict", "FP32", []int{n, 3}}, []any{r.ModelName, o.Name, o.Datatype, o.Shape}); diff != "" {
			t.Errorf("answer header (-want +got):\n%s", diff)
		}
		return reshape(o.Data, 3)
	}
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("answer is not the expected JSON: %v: %.300s", err, b)
	}
}

// TestAnswerShape pins the exact bytes of each protocol's answer: the
// Seldon python wrapper's SeldonMessage (names t:0.., the request's data
// form, meta {}) and the v2 inference response.
func TestAnswerShape(t *testing.T) {
	_, ts := newServer(t, modelserver.Options{Predictor: fixed{}, ModelName: "iris", ModelVersion: "3"})
	tests := []struct{ name, path, body, want string }{
		{
			"seldon ndarray", "/api/v1.0/predictions",
			`{"meta":{"tags":{"a":1}},"data":{"ndarray":[[1,2,3,4],[5,6,7,8]]}}`,
			`{"data":{"names":["t:0","t:1","t:2"],"ndarray":[[10,0.25,-1e-07],[26,0.25,-1e-07]]},"meta":{"tags":{"a":1}}}`,
		},
		{
			// The python wrapper echoes the request's tags, metrics, puid and
			// requestPath (not routing); NaN, which JSON cannot carry, as null.
			"seldon meta echoed", "/api/v1.0/predictions",
			`{"meta":{"puid":"p1","routing":{"r":1},"requestPath":{"c":"img"},"metrics":[{"key":"k","type":"GAUGE","value":1}],"tags":{"s":"x","n":[1,NaN],"o":{"z":null}}},"data":{"ndarray":[[1,2,3,4]]}}`,
			`{"data":{"names":["t:0","t:1","t:2"],"ndarray":[[10,0.25,-1e-07]]},"meta":{"tags":{"s":"x","n":[1,null],"o":{"z":null}},"metrics":[{"key":"k","type":"GAUGE","value":1}],"puid":"p1","requestPath":{"c":"img"}}}`,
		},
		{
			"seldon tensor", "/api/v1.0/predictions",
			`{"data":{"tensor":{"shape":[1,4],"values":[1,2,3,4]}}}`,
			`{"data":{"names":["t:0","t:1","t:2"],"tensor":{"shape":[1,3],"values":[10,0.25,-1e-07]}},"meta":{}}`,
		},
		{
			"seldon tftensor", "/api/v1.0/predictions",
			`{"data":{"tftensor":{"dtype":"DT_FLOAT","tensorShape":{"dim":[{"size":"1"},{"size":"4"}]},"floatVal":[1,2,3,4]}}}`,
			`{"data":{"names":["t:0","t:1","t:2"],"tftensor":{"dtype":"DT_FLOAT","tensorShape":{"dim":[{"size":"1"},{"size":"3"}]},"tensorContent":"AAAgQQAAgD6Vv9az"}},"meta":{}}`,
		},
		{
			"seldon missing values", "/predict",
			`{"data":{"ndarray":[[null,NaN,1,1]]}}`,
			`{"data":{"names":["t:0","t:1","t:2"],"ndarray":[[null,0.25,-1e-07]]},"meta":{}}`,
		},
		{
			"v2 with id", "/v2/models/iris/versions/3/infer",
			`{"id":"req-\"1\"","inputs":[{"name":"x","shape":[2,4],"datatype":"INT64","data":[1,2,3,4,5,6,7,8]}]}`,
			`{"model_name":"iris","model_version":"3","id":"req-\"1\"","outputs":[{"name":"predict","datatype":"FP32","shape":[2,3],"data":[10,0.25,-1e-07,26,0.25,-1e-07]}]}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := post(t, ts.URL+tc.path, "application/json", []byte(tc.body))
			if code != http.StatusOK {
				t.Fatalf("status %d: %s", code, b)
			}
			if diff := cmp.Diff(tc.want, string(b)); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
}

// fixed is a predictor with outputs easy to write down: the row's sum,
// 0.25 and -1e-7 (an exponent-form number).
type fixed struct{}

func (fixed) NumFeatures() int { return 4 }
func (fixed) NumOutputs() int  { return 3 }
func (fixed) PredictBatch(x []float32, rows int, out []float32) error {
	for i := 0; i < rows; i++ {
		var s float32
		for _, v := range x[i*4 : i*4+4] {
			s += v
		}
		out[i*3], out[i*3+1], out[i*3+2] = s, 0.25, -1e-7
	}
	return nil
}

// TestBadInput sends each kind of bad request and checks the status, the
// protocol's error shape and that the message says what is wrong; then
// that every one was counted by code.
func TestBadInput(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, ts := newServer(t, modelserver.Options{Registry: reg, MaxBodyBytes: 4096})
	big := `{"data":{"ndarray":[` + strings.Repeat(`[1,2,3,4],`, 500) + `[1,2,3,4]]}}`
	tests := []struct {
		name, method, path, ctype, body string
		status                          int
		msg                             string // substring of the error message
	}{
		{"malformed JSON", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[[1,2,3,4]]`, 400, "malformed JSON"},
		{"not an object", "POST", "/api/v1.0/predictions", "application/json", `[[1,2,3,4]]`, 400, "must be a JSON object"},
		{"no data", "POST", "/api/v1.0/predictions", "application/json", `{"meta":{}}`, 400, `no "data" field`},
		{"strData", "POST", "/api/v1.0/predictions", "application/json", `{"strData":"hello"}`, 400, "strData is not supported"},
		{"no ndarray or tensor", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"names":["a"]}}`, 400, "no ndarray, tensor or tftensor"},
		{"tensor and tftensor", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tensor":{},"tftensor":{}}}`, 400, "data has both tensor and tftensor; send one"},
		{"tftensor not a TensorProto", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tftensor":{"dtype":"DT_FLOAT","shape":[1,4]}}}`, 400, "data.tftensor is not a TensorProto"},
		{"tftensor string dtype", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tftensor":{"dtype":"DT_STRING","stringVal":["YQ=="]}}}`, 400, "data.tftensor.dtype DT_STRING is not supported"},
		{"tftensor short content", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tftensor":{"dtype":"DT_FLOAT","tensorShape":{"dim":[{"size":"2"},{"size":"4"}]},"tensorContent":"AACAPwAAAEAAAEBAAACAQA=="}}}`, 400, "more values than the 16 bytes of data.tftensor.tensor_content hold"},
		{"wrong feature count", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[[1,2,3]]}}`, 400, "data.ndarray[0] has 3 values; the model takes 4 features"},
		{"ragged rows", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[[1,2,3,4],[1,2,3,4,5]]}}`, 400, "data.ndarray[1] has 5 values"},
		{"flat ndarray", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[1,2,3,4]}}`, 400, "data.ndarray[0] must be an array of 4 numbers"},
		{"non-numeric value", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[[1,"2",3,4]]}}`, 400, `data.ndarray[0][1] must be a number or null, got string "2"`},
		{"bad number", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[[1,2-3,3,4]]}}`, 400, "data.ndarray[0][1] must be a number"},
		{"empty ndarray", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"ndarray":[]}}`, 400, "data.ndarray is empty"},
		{"empty body", "POST", "/api/v1.0/predictions", "application/json", ``, 400, "request body is empty"},
		{"tensor shape mismatch", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tensor":{"shape":[2,4],"values":[1,2,3,4]}}}`, 400, "shape [2, 4] needs 8"},
		{"tensor huge shape", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tensor":{"shape":[4611686018427387904,4],"values":[]}}}`, 400, "more values than a 65-byte request can hold"},
		{"tensor wrong width", "POST", "/api/v1.0/predictions", "application/json", `{"data":{"tensor":{"shape":[1,3],"values":[1,2,3]}}}`, 400, "the model takes 4 features"},
		{"body over the limit", "POST", "/api/v1.0/predictions", "application/json", big, 413, "larger than the 4096-byte limit"},
		{"wrong content type", "POST", "/api/v1.0/predictions", "text/plain", `{"data":{"ndarray":[[1,2,3,4]]}}`, 415, "send application/json or a form"},
		{"form without json", "POST", "/predict", "application/x-www-form-urlencoded", `data=1`, 400, "form body has no json field"},
		{"form with bad json", "POST", "/predict", "application/x-www-form-urlencoded", `json=%7B%22data%22`, 400, "malformed JSON"},
		{"meta not an object", "POST", "/api/v1.0/predictions", "application/json", `{"meta":[],"data":{"ndarray":[[1,2,3,4]]}}`, 400, "meta must be an object"},
		{"meta.tags not an object", "POST", "/api/v1.0/predictions", "application/json", `{"meta":{"tags":1},"data":{"ndarray":[[1,2,3,4]]}}`, 400, "meta.tags must be an object"},
		{"GET predictions", "GET", "/api/v1.0/predictions", "", ``, 405, "method GET is not allowed"},
		{"GET predict without json", "GET", "/predict", "", ``, 400, "json query parameter"},
		{"unknown route", "GET", "/api/v9/predictions", "", ``, 404, "no route"},
		{"gateway prefix without namespace", "POST", "/seldon/iris-model-autoscale/api/v1.0/predictions", "application/json", `{}`, 404,
			`no route for POST /seldon/iris-model-autoscale/api/v1.0/predictions: read as namespace "iris-model-autoscale", deployment "api" and route /v1.0/predictions`},
		{"feedback unknown field", "POST", "/api/v1.0/feedback", "application/json", `{"reward":1,"label":2}`, 400, `feedback has an unknown field "label"`},
		{"feedback bad reward", "POST", "/api/v1.0/feedback", "application/json", `{"reward":"high"}`, 400, "feedback reward must be a number"},
		{"feedback malformed", "POST", "/api/v0.1/feedback", "application/json", `{"reward":`, 400, "malformed JSON"},
		{"feedback GET", "GET", "/api/v1.0/feedback", "", ``, 405, "method GET is not allowed"},
		{"v2 unknown model", "POST", "/v2/models/resnet/infer", "application/json", `{"inputs":[]}`, 404, `model "resnet" not found`},
		{"v2 unknown version", "POST", "/v2/models/iris/versions/7/infer", "application/json", `{"inputs":[]}`, 404, `model "iris" version "7" not found`},
		{"v2 malformed JSON", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":`, 400, "malformed JSON"},
		{"v2 no inputs", "POST", "/v2/models/iris/infer", "application/json", `{"id":"1"}`, 400, `no "inputs"`},
		{"v2 two inputs", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{},{}]}`, 400, "got 2 inputs"},
		{"v2 wrong shape", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400, "the model takes 4 features"},
		{"v2 huge shape", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1000000,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "more values than a"},
		{"v2 data count", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "has 4 values; shape [2, 4] needs 8"},
		{"v2 bad datatype", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"BYTES","data":["a","b","c","d"]}]}`, 400, "datatype string \"BYTES\" is not supported"},
		{"v2 fraction in INT32", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT32","data":[1,2.5,3,4]}]}`, 400, "not a valid value for the input's integer datatype"},
		{"v2 too deep", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[[[1,2,3,4]]]}]}`, 400, "nests deeper"},
		{"v2 wrong content type", "POST", "/v2/models/iris/infer", "text/plain", `{}`, 415, "send application/json"},
		{"v2 binary input without header", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}`, 400, "no Inference-Header-Content-Length header"},
		{"v2 unknown output", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"probabilities"}]}`, 400, `outputs[0].name string "probabilities" is not an output`},
		{"v2 bad binary_data", "POST", "/v2/models/iris/infer", "application/json", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"predict","parameters":{"binary_data":"yes"}}]}`, 400, "outputs[0].parameters.binary_data must be true or false"},
		{"v2 GET infer", "GET", "/v2/models/iris/infer", "", ``, 405, "method GET is not allowed"},
		{"v2 unknown route", "GET", "/v2/repository/index", "", ``, 404, "no route"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, ts.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, tc.status, b)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var msg string
			if strings.HasPrefix(tc.path, "/v2") {
				var e map[string]string
				mustUnmarshal(t, b, &e)
				if len(e) != 1 {
					t.Errorf("v2 error body has keys other than error: %s", b)
				}
				msg = e["error"]
			} else {
				var e struct {
					Status struct {
						Code   int    `json:"code"`
						Info   string `json:"info"`
						Reason string `json:"reason"`
						Status string `json:"status"`
					} `json:"status"`
				}
				mustUnmarshal(t, b, &e)
				if e.Status.Code != tc.status || e.Status.Status != "FAILURE" || e.Status.Reason == "" {
					t.Errorf("Seldon status body %s: want code %d, a reason and status FAILURE", b, tc.status)
				}
				msg = e.Status.Info
			}
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("error message %q does not say %q", msg, tc.msg)
			}
		})
	}

	// Every bad prediction request is counted under its code; the
	// unknown routes are not prediction requests.
	want := `
# HELP mlscale_requests_total Prediction requests answered, by protocol and HTTP status code.
# TYPE mlscale_requests_total counter
mlscale_requests_total{code="200",model="iris",protocol="seldon"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2"} 0
mlscale_requests_total{code="200",model="iris",protocol="seldon-grpc"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2-grpc"} 0
mlscale_requests_total{code="400",model="iris",protocol="seldon"} 24
mlscale_requests_total{code="400",model="iris",protocol="v2"} 12
mlscale_requests_total{code="404",model="iris",protocol="v2"} 2
mlscale_requests_total{code="405",model="iris",protocol="seldon"} 1
mlscale_requests_total{code="405",model="iris",protocol="v2"} 1
mlscale_requests_total{code="413",model="iris",protocol="seldon"} 1
mlscale_requests_total{code="415",model="iris",protocol="seldon"} 1
mlscale_requests_total{code="415",model="iris",protocol="v2"} 1
`
	if err := gatherAndCompare(reg, want, "mlscale_requests_total"); err != nil {
		t.Error(err)
	}
}

// TestProbesAndMetadata covers the health routes of both protocols, bare
// and under the gateway prefix, and the v2 metadata documents.
func TestProbesAndMetadata(t *testing.T) {
	_, ts := newServer(t, modelserver.Options{Platform: "xgboost"})
	tests := []struct {
		path   string
		status int
		body   string // exact, or "" to skip
	}{
		{"/health/ping", 200, "pong"},
		{"/live", 200, ""},
		{"/ready", 200, ""},
		{"/seldon/model/iris/ready", 200, ""},
		{"/seldon/model/iris/health/ping", 200, "pong"},
		{"/v2/health/live", 200, `{"live":true}`},
		{"/v2/health/ready", 200, `{"ready":true}`},
		{"/v2/models/iris/ready", 200, `{"name":"iris","ready":true}`},
		{"/v2/models/other/ready", 404, `{"error":"model \"other\" not found; this server serves model \"iris\""}`},
		{"/v2/models/iris", 200, `{"name":"iris","versions":[],"platform":"xgboost","inputs":[{"name":"input-0","datatype":"FP32","shape":[-1,4]}],"outputs":[{"name":"predict","datatype":"FP32","shape":[-1,3]}]}`},
		{"/v2", 200, `{"name":"mlscale-modelserver","version":"1","extensions":["binary_tensor_data"]}`},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			code, b := get(t, ts.URL+tc.path)
			if code != tc.status {
				t.Errorf("status %d, want %d (%s)", code, tc.status, b)
			}
			if tc.body != "" {
				if diff := cmp.Diff(tc.body, string(b)); diff != "" {
					t.Errorf("body (-want +got):\n%s", diff)
				}
			}
		})
	}

	// /health/status evaluates the model on an all-missing row: the
	// answer must be XGBoost's prediction for that row.
	g := irisGolden(t)
	code, b := get(t, ts.URL+"/health/status")
	if code != 200 {
		t.Fatalf("/health/status: status %d: %s", code, b)
	}
	var r struct {
		Data struct {
			NDArray [][]float64 `json:"ndarray"`
		} `json:"data"`
	}
	mustUnmarshal(t, b, &r)
	for i, row := range g.rows {
		if row[0] == nil && row[1] == nil && row[2] == nil && row[3] == nil {
			if diff := cmp.Diff(g.Outputs[i], r.Data.NDArray[0], cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) <= 1e-6 })); diff != "" {
				t.Errorf("/health/status prediction (-XGBoost +got):\n%s", diff)
			}
			return
		}
	}
	t.Error("golden data has no all-missing row to check /health/status with")
}

func TestNewRejectsBadOptions(t *testing.T) {
	m := irisModel(t)
	tests := []struct {
		name string
		opts modelserver.Options
		msg  string
	}{
		{"no predictor", modelserver.Options{ModelName: "iris"}, "Predictor is nil"},
		{"no name", modelserver.Options{Predictor: m}, "model name"},
		{"slash in name", modelserver.Options{Predictor: m, ModelName: "a/b"}, "model name"},
		{"negative limit", modelserver.Options{Predictor: m, ModelName: "iris", MaxBodyBytes: -1}, "must not be negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := modelserver.New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("New: error %v, want one saying %q", err, tc.msg)
			}
		})
	}
	reg := prometheus.NewRegistry()
	if _, err := modelserver.New(modelserver.Options{Predictor: m, ModelName: "iris", Registry: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := modelserver.New(modelserver.Options{Predictor: m, ModelName: "iris", Registry: reg}); err == nil {
		t.Error("a second server on the same registry must fail to register its metrics")
	}
}
