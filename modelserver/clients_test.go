package modelserver_test

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/modelserver"
)

// The REST calls that clients other than the seed's make: tritonclient's
// binary tensors and compression, the Seldon microservice tester's form
// bodies, feedback.

// binaryRequest is a binary tensor extension request as tritonclient's
// set_data_from_numpy(binary_data=True) builds it: the JSON header, then
// the input's raw bytes, with the header's length in
// Inference-Header-Content-Length.
func binaryRequest(t *testing.T, url, datatype string, rows int, raw []byte, binaryOut bool) *http.Request {
	t.Helper()
	header := fmt.Sprintf(`{"id":"b1","inputs":[{"name":"input-0","shape":[%d,4],"datatype":%q,"parameters":{"binary_data_size":%d}}]`, rows, datatype, len(raw))
	if binaryOut {
		header += `,"outputs":[{"name":"predict","parameters":{"binary_data":true}}]`
	}
	header += "}"
	req, err := http.NewRequest("POST", url, bytes.NewReader(append([]byte(header), raw...)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(header)))
	req.Header.Set("Content-Type", "application/octet-stream")
	return req
}

// TestBinaryTensors sends the golden rows as binary tensors and reads the
// answer as JSON and as binary (split at the answer's own
// Inference-Header-Content-Length), compared with XGBoost's predictions.
func TestBinaryTensors(t *testing.T) {
	g := irisGolden(t)
	_, ts := newServer(t, modelserver.Options{})
	x := goldenMatrix(g)
	want := inProcess(t, x)
	n := len(g.rows)
	tests := []struct {
		name, datatype string
		raw            []byte
		binaryOut      bool
	}{
		{"FP32 in, JSON out", "FP32", rawFP32(x), false},
		{"FP64 in, binary out", "FP64", rawFP64(x), true},
		{"FP32 in, binary out", "FP32", rawFP32(x), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.DefaultClient.Do(binaryRequest(t, ts.URL+"/v2/models/iris/infer", tc.datatype, n, tc.raw, tc.binaryOut))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			hl := resp.Header.Get("Inference-Header-Content-Length")
			if !tc.binaryOut {
				if hl != "" {
					t.Errorf("JSON answer carries Inference-Header-Content-Length %q", hl)
				}
				checkGolden(t, g, v2Outputs(n)(t, b))
				return
			}
			jl, err := strconv.Atoi(hl)
			if err != nil || jl > len(b) || resp.Header.Get("Content-Type") != "application/octet-stream" {
				t.Fatalf("binary answer: Inference-Header-Content-Length %q, Content-Type %q, %d bytes", hl, resp.Header.Get("Content-Type"), len(b))
			}
			var h struct {
				ID      string `json:"id"`
				Outputs []struct {
					Name       string         `json:"name"`
					Datatype   string         `json:"datatype"`
					Shape      []int          `json:"shape"`
					Parameters map[string]int `json:"parameters"`
					Data       []float64      `json:"data"`
				} `json:"outputs"`
			}
			mustUnmarshal(t, b[:jl], &h)
			if len(h.Outputs) != 1 {
				t.Fatalf("%d outputs", len(h.Outputs))
			}
			o := h.Outputs[0]
			if diff := cmp.Diff([]any{"b1", "predict", "FP32", []int{n, 3}, map[string]int{"binary_data_size": n * 3 * 4}, []float64(nil)},
				[]any{h.ID, o.Name, o.Datatype, o.Shape, o.Parameters, o.Data}); diff != "" {
				t.Errorf("answer header (-want +got):\n%s", diff)
			}
			checkGolden(t, g, reshape(fromRawFP32(t, b[jl:]), 3))
			checkBits(t, want, fromRawFP32(t, b[jl:]))
		})
	}

	// binary_data_output on the request asks for every output as binary.
	header := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"parameters":{"binary_data_output":true}}`
	code, b := post(t, ts.URL+"/v2/models/iris/infer", "application/json", []byte(header))
	if code != 200 || !bytes.Contains(b, []byte(`"parameters":{"binary_data_size":12}`)) {
		t.Errorf("binary_data_output: %d %q", code, b)
	}

	bad := []struct {
		name   string
		req    func() *http.Request
		status int
		msg    string
	}{
		{"header longer than body", func() *http.Request {
			r := binaryRequest(t, ts.URL+"/v2/models/iris/infer", "FP32", 1, make([]byte, 16), false)
			r.Header.Set("Inference-Header-Content-Length", "100000")
			return r
		}, 400, "is not the length of the JSON header"},
		{"header not a number", func() *http.Request {
			r := binaryRequest(t, ts.URL+"/v2/models/iris/infer", "FP32", 1, make([]byte, 16), false)
			r.Header.Set("Inference-Header-Content-Length", "ten")
			return r
		}, 400, "is not the length of the JSON header"},
		{"size disagrees with the bytes", func() *http.Request {
			r := binaryRequest(t, ts.URL+"/v2/models/iris/infer", "FP32", 1, make([]byte, 16), false)
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(append(body, 0)))
			r.ContentLength++
			return r
		}, 400, "binary_data_size is 16, but 17 bytes follow"},
		{"shape needs more bytes", func() *http.Request {
			return binaryRequest(t, ts.URL+"/v2/models/iris/infer", "FP32", 2, make([]byte, 16), false)
		}, 400, "more values than the 16 bytes of binary data hold"},
		{"bytes for a different datatype", func() *http.Request {
			return binaryRequest(t, ts.URL+"/v2/models/iris/infer", "FP64", 1, make([]byte, 16), false)
		}, 400, "more values than the 16 bytes of binary data hold"},
		{"bytes not a whole number of rows", func() *http.Request {
			return binaryRequest(t, ts.URL+"/v2/models/iris/infer", "FP32", 1, make([]byte, 20), false)
		}, 400, "inputs[0]'s binary data has 20 bytes; 4 FP32 values need 16"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.DefaultClient.Do(tc.req())
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var e map[string]string
			mustUnmarshal(t, b, &e)
			if resp.StatusCode != tc.status || !strings.Contains(e["error"], tc.msg) {
				t.Errorf("got %d %q, want %d saying %q", resp.StatusCode, e["error"], tc.status, tc.msg)
			}
		})
	}
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func deflated(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zlib.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestCompressedBodies: gzip and deflate bodies (tritonclient's
// request_compression_algorithm) are decompressed and answered; the
// decompressed size is bounded by --max-body-bytes (413, not memory), a
// corrupt stream is 400, an unknown encoding 415.
func TestCompressedBodies(t *testing.T) {
	g := irisGolden(t)
	_, ts := newServer(t, modelserver.Options{MaxBodyBytes: 1 << 20})
	seldonBody := []byte(`{"data":{"ndarray":` + string(g.Inputs) + `}}`)
	v2Body, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "x", "shape": []int{len(g.rows), 4}, "datatype": "FP64", "data": json.RawMessage(g.Inputs)}}})
	bomb := gzipped(t, bytes.Repeat([]byte(" "), 10<<20)) // 10 MiB of spaces in ~10 KiB
	tests := []struct {
		name, path, encoding string
		body                 []byte
		status               int
		msg                  string
	}{
		{"seldon gzip", "/api/v1.0/predictions", "gzip", gzipped(t, seldonBody), 200, ""},
		{"v2 deflate", "/v2/models/iris/infer", "deflate", deflated(t, v2Body), 200, ""},
		{"zip bomb", "/api/v1.0/predictions", "gzip", bomb, 413, "decompressed request body is larger than the 1048576-byte limit"},
		{"corrupt gzip", "/api/v1.0/predictions", "gzip", []byte("\x1f\x8b..."), 400, "decompressing the gzip request body"},
		{"truncated gzip", "/v2/models/iris/infer", "gzip", gzipped(t, v2Body)[:100], 400, "decompressing the gzip request body: unexpected EOF"},
		{"brotli", "/api/v1.0/predictions", "br", seldonBody, 415, "is not supported; send the body uncompressed, gzip or deflate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("POST", ts.URL+tc.path, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Content-Encoding", tc.encoding)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.msg) {
				t.Fatalf("got %d %.300s, want %d saying %q", resp.StatusCode, b, tc.status, tc.msg)
			}
			if tc.status != 200 {
				return
			}
			if strings.HasPrefix(tc.path, "/v2") {
				checkGolden(t, g, v2Outputs(len(g.rows))(t, b))
				return
			}
			var r struct {
				Data struct {
					NDArray [][]float64 `json:"ndarray"`
				} `json:"data"`
			}
			mustUnmarshal(t, b, &r)
			checkGolden(t, g, r.Data.NDArray)
		})
	}
}

// TestMicroserviceForms: the Seldon microservice REST form (json=<message>,
// what seldon-core-microservice-tester and SeldonClient's microservice
// calls send), on /predict and /api/v1.0/predictions, and GET
// /predict?json=.
func TestMicroserviceForms(t *testing.T) {
	_, ts := newServer(t, modelserver.Options{Predictor: fixed{}})
	msg := `{"meta":{"puid":"p"},"data":{"names":["a","b","c","d"],"ndarray":[[1,2,3,4]]}}`
	want := `{"data":{"names":["t:0","t:1","t:2"],"ndarray":[[10,0.25,-1e-07]]},"meta":{"puid":"p"}}`
	form := url.Values{"json": {msg}}.Encode()
	for _, path := range []string{"/predict", "/api/v1.0/predictions", "/seldon/model/iris/api/v1.0/predictions"} {
		code, b := post(t, ts.URL+path, "application/x-www-form-urlencoded", []byte(form))
		if code != 200 || string(b) != want {
			t.Errorf("form POST %s: %d %s, want 200 %s", path, code, b, want)
		}
	}
	code, b := get(t, ts.URL+"/predict?"+form)
	if code != 200 || string(b) != want {
		t.Errorf("GET /predict?json=: %d %s, want 200 %s", code, b, want)
	}
}

// TestFeedback: /api/v1.0/feedback (and /send-feedback with a form)
// answers as Seldon's python wrapper does for a model without
// send_feedback: an empty prediction in the request's data form and its
// puid.
func TestFeedback(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, ts := newServer(t, modelserver.Options{Registry: reg})
	tests := []struct{ name, path, ctype, body, want string }{
		{"ndarray request", "/api/v1.0/feedback", "application/json",
			`{"request":{"meta":{"puid":"p1"},"data":{"ndarray":[[1,2,3,4]]}},"response":{"data":{"ndarray":[[0.1,0.2,0.7]]}},"reward":1,"truth":{"data":{"ndarray":[[0,0,1]]}}}`,
			`{"data":{"ndarray":[]},"meta":{"puid":"p1"}}`},
		{"tensor request", "/api/v0.1/feedback", "application/json",
			`{"request":{"data":{"tensor":{"shape":[1,4],"values":[1,2,3,4]}}},"reward":0}`,
			`{"data":{"tensor":{"shape":[0]}},"meta":{}}`},
		{"reward only", "/seldon/model/iris/api/v1.0/feedback", "application/json", `{"reward":0.5}`, `{"data":{"tensor":{"shape":[0]}},"meta":{}}`},
		{"microservice form", "/send-feedback", "application/x-www-form-urlencoded",
			url.Values{"json": {`{"request":{"data":{"ndarray":[[1,2,3,4]]}},"reward":1}`}}.Encode(),
			`{"data":{"ndarray":[]},"meta":{}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := post(t, ts.URL+tc.path, tc.ctype, []byte(tc.body))
			if code != 200 {
				t.Fatalf("status %d: %s", code, b)
			}
			if diff := cmp.Diff(tc.want, string(b)); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
	// Feedback is not a prediction: no mlscale_* series; Seldon's executor
	// histogram has it under service "feedback", as the executor does.
	if err := gatherAndCompare(reg, `
# HELP mlscale_predicted_rows_total Rows predicted.
# TYPE mlscale_predicted_rows_total counter
mlscale_predicted_rows_total{model="iris"} 0
`, "mlscale_predicted_rows_total"); err != nil {
		t.Error(err)
	}
	counts := histogramCounts(t, reg)
	if got := counts[`seldon_api_executor_server_requests_seconds{code="200",deployment_name="",method="post",predictor_name="",predictor_version="",service="feedback"}`]; got != 4 {
		t.Errorf("feedback in Seldon's histogram: %d, want 4 (all series: %v)", got, counts)
	}
	if n := counts[`mlscale_request_duration_seconds{model="iris",protocol="seldon"}`]; n != 0 {
		t.Errorf("feedback counted as %d prediction requests", n)
	}
}

// panicky is a predictor with a bug.
type panicky struct{}

func (panicky) NumFeatures() int { return 4 }
func (panicky) NumOutputs() int  { return 3 }
func (panicky) PredictBatch(x []float32, rows int, out []float32) error {
	var m map[string]int
	m["boom"] = rows // nil map write
	return nil
}

// TestPanickingPredictor: a predictor that panics is a server fault,
// answered 500 / Internal with a generic message over every protocol; the
// server keeps serving and the in-flight gauge returns to 0.
func TestPanickingPredictor(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, ts := newServer(t, modelserver.Options{Predictor: panicky{}, Registry: reg})
	conn := serveGRPC(t, s)
	for i := 0; i < 2; i++ { // twice: the first panic must not break the server
		code, b := post(t, ts.URL+"/api/v1.0/predictions", "application/json", []byte(`{"data":{"ndarray":[[1,2,3,4]]}}`))
		if code != 500 || !strings.Contains(string(b), "internal error while predicting") {
			t.Errorf("seldon: %d %s, want 500 with a generic message", code, b)
		}
		code, b = post(t, ts.URL+"/v2/models/iris/infer", "application/json", []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`))
		if code != 500 || strings.Contains(string(b), "boom") {
			t.Errorf("v2: %d %s, want 500 with a generic message", code, b)
		}
		_, err := inference.NewGRPCInferenceServiceClient(conn).ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "iris",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{1, 4}, Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}}}})
		if st, _ := status.FromError(err); st.Code() != codes.Internal || strings.Contains(st.Message(), "boom") {
			t.Errorf("gRPC: %v, want Internal with a generic message", err)
		}
	}
	if err := gatherAndCompare(reg, `
# HELP mlscale_inflight_requests Prediction requests being served.
# TYPE mlscale_inflight_requests gauge
mlscale_inflight_requests{model="iris"} 0
# HELP mlscale_requests_total Prediction requests answered, by protocol and HTTP status code.
# TYPE mlscale_requests_total counter
mlscale_requests_total{code="200",model="iris",protocol="seldon"} 0
mlscale_requests_total{code="200",model="iris",protocol="seldon-grpc"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2-grpc"} 0
mlscale_requests_total{code="500",model="iris",protocol="seldon"} 2
mlscale_requests_total{code="500",model="iris",protocol="v2"} 2
mlscale_requests_total{code="500",model="iris",protocol="v2-grpc"} 2
`, "mlscale_inflight_requests", "mlscale_requests_total"); err != nil {
		t.Error(err)
	}
}
