package modelserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"testing"

	jsoniter "github.com/json-iterator/go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/proto"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/ndarray"
	"github.com/mlscale/mlscale/api/seldon"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// seedBody is a Seldon request like the seed's client sends: rows of 4
// random integers 1..4 (ints), or, with floats, uniform reals written as
// shortest float32 text (longer numbers, more parsing per byte).
func seedBody(rows int, floats bool) []byte {
	r := rand.New(rand.NewPCG(1, uint64(rows)))
	x := make([]float32, rows*4)
	for i := range x {
		if floats {
			x[i] = float32(r.Float64() * 8)
		} else {
			x[i] = float32(1 + r.IntN(4))
		}
	}
	return ndarray.AppendRequest(nil, x, rows, 4, ndarray.Null)
}

type stdRequest struct {
	Data struct {
		NDArray [][]float32 `json:"ndarray"`
	} `json:"data"`
}

// The decoders compared, each producing the row-major []float32 the
// predictor takes.
var decoders = []struct {
	name   string
	decode func(b *testing.B, body []byte, x []float32) []float32
}{
	{"fastjson", func(b *testing.B, body []byte, x []float32) []float32 {
		// What the server runs: one parser reused across requests.
		x, _, _, err := decodeSeldon(&benchParser, body, 4, x)
		if err != nil {
			b.Fatal(err)
		}
		return x
	}},
	{"encoding-json-unmarshal", func(b *testing.B, body []byte, x []float32) []float32 {
		var r stdRequest
		if err := json.Unmarshal(body, &r); err != nil {
			b.Fatal(err)
		}
		x = x[:0]
		for _, row := range r.Data.NDArray {
			x = append(x, row...)
		}
		return x
	}},
	{"encoding-json-tokens", func(b *testing.B, body []byte, x []float32) []float32 {
		// The stdlib streaming tokenizer, skipping straight to the numbers.
		d := json.NewDecoder(bytes.NewReader(body))
		x = x[:0]
		for {
			tok, err := d.Token()
			if err == io.EOF {
				return x
			}
			if err != nil {
				b.Fatal(err)
			}
			if f, ok := tok.(float64); ok {
				x = append(x, float32(f))
			}
		}
	}},
	{"jsoniter-stream", func(b *testing.B, body []byte, x []float32) []float32 {
		// json-iterator's streaming Iterator reading float32 in place.
		it := jsoniter.ConfigFastest.BorrowIterator(body)
		defer jsoniter.ConfigFastest.ReturnIterator(it)
		x = x[:0]
		for f := it.ReadObject(); f != ""; f = it.ReadObject() {
			if f != "data" {
				it.Skip()
				continue
			}
			for g := it.ReadObject(); g != ""; g = it.ReadObject() {
				if g != "ndarray" {
					it.Skip()
					continue
				}
				it.ReadArrayCB(func(it *jsoniter.Iterator) bool {
					return it.ReadArrayCB(func(it *jsoniter.Iterator) bool {
						x = append(x, it.ReadFloat32())
						return true
					})
				})
			}
		}
		if it.Error != nil {
			b.Fatal(it.Error)
		}
		return x
	}},
}

var benchParser fastjson.Parser

// BenchmarkDecode compares request decoders on the same bodies in the
// same run; rows/s is the figure to compare with inference rows/s.
func BenchmarkDecode(b *testing.B) {
	for _, kind := range []string{"ints", "floats"} {
		for _, rows := range []int{500, 10000} {
			body := seedBody(rows, kind == "floats")
			var want []float32
			for _, d := range decoders {
				b.Run(fmt.Sprintf("%s/rows=%d/%s", kind, rows, d.name), func(b *testing.B) {
					x := d.decode(b, body, nil)
					if want == nil {
						want = append([]float32(nil), x...)
					} else if !equalBits(want, x) {
						b.Fatalf("%s decodes differently from fastjson", d.name)
					}
					b.SetBytes(int64(len(body)))
					b.ReportAllocs()
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						x = d.decode(b, body, x)
					}
					b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
				})
			}
		}
	}
}

func equalBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BenchmarkEncode compares writing 10,000 3-class answers with
// strconv.AppendFloat into a reused buffer against encoding/json.
func BenchmarkEncode(b *testing.B) {
	const rows = 10000
	out := make([]float32, rows*3)
	r := rand.New(rand.NewPCG(2, 3))
	for i := range out {
		out[i] = r.Float32()
	}
	b.Run("append", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			buf = ndarray.AppendRows(buf[:0], out, rows, 3, ndarray.Null)
		}
		b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	})
	b.Run("encoding-json", func(b *testing.B) {
		nd := make([][]float32, rows)
		for i := range nd {
			nd[i] = out[i*3 : i*3+3]
		}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := json.Marshal(nd); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	})
}

// discard is a ResponseWriter that keeps nothing, so BenchmarkHandler
// measures the server's own work.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkServe compares, in one run, pure inference (PredictBatch on one
// goroutine) with the whole handler on the same rows: read body, decode,
// predict, encode, metrics. The handler/inference rows/s ratio is the
// share of time left to the model (goal at 10,000 rows: >= 0.5).
func BenchmarkServe(b *testing.B) {
	m, err := xgboost.Load(filepath.Join("xgboost", "testdata", "iris.json"))
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Options{Predictor: m, ModelName: "iris", Registry: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler()
	for _, rows := range []int{1, 500, 10000} {
		body := seedBody(rows, false)
		var p fastjson.Parser
		x, _, _, err := decodeSeldon(&p, body, 4, nil)
		if err != nil {
			b.Fatal(err)
		}
		out := make([]float32, rows*3)
		b.Run(fmt.Sprintf("rows=%d/inference", rows), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if err := m.PredictBatch(x, rows, out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
		b.Run(fmt.Sprintf("rows=%d/handler", rows), func(b *testing.B) {
			w := &discard{h: http.Header{}}
			rd := bytes.NewReader(body)
			req, _ := http.NewRequest(http.MethodPost, "/api/v1.0/predictions", rd)
			req.Header.Set("Content-Type", "application/json")
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				rd.Reset(body)
				req.Body = io.NopCloser(rd)
				req.ContentLength = int64(len(body))
				h.ServeHTTP(w, req)
			}
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
		// The gRPC handlers on the same rows, with protobuf decoding of the
		// request and encoding of the answer, as grpc-go does around them.
		vals := make([]float64, len(x))
		for i, f := range x {
			vals[i] = float64(f)
		}
		grpcCases := []struct {
			name string
			req  proto.Message
			call func(proto.Message) (proto.Message, error)
		}{
			{"grpc-seldon-tensor", &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{
				DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{int32(rows), 4}, Values: vals}}}}},
				func(m proto.Message) (proto.Message, error) {
					return (&seldonGRPC{s: s}).Predict(context.Background(), m.(*seldon.SeldonMessage))
				}},
			{"grpc-v2-raw", &inference.ModelInferRequest{ModelName: "iris",
				Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{int64(rows), 4}}},
				RawInputContents: [][]byte{appendRawFP32(nil, x)}},
				func(m proto.Message) (proto.Message, error) {
					return (&v2GRPC{s: s}).ModelInfer(context.Background(), m.(*inference.ModelInferRequest))
				}},
		}
		for _, gc := range grpcCases {
			wire, err := proto.Marshal(gc.req)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("rows=%d/%s", rows, gc.name), func(b *testing.B) {
				b.SetBytes(int64(len(wire)))
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					req := gc.req.ProtoReflect().New().Interface()
					if err := proto.Unmarshal(wire, req); err != nil {
						b.Fatal(err)
					}
					resp, err := gc.call(req)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := proto.Marshal(resp); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}
