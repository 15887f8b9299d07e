package modelserver

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/seldon"
	"github.com/mlscale/mlscale/api/tensorflow"
)

// Fuzz targets for the decoders the other clients need: the binary tensor
// extension's header split, SeldonMessage and ModelInferRequest from
// protobuf bytes, and the form and compressed bodies through the handler.

func rawF32(vals ...float32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// FuzzDecodeV2Binary splits a body at a fuzzed Inference-Header-Content-
// Length and decodes it: a 400 with a message, or rows that survive a
// round trip.
func FuzzDecodeV2Binary(f *testing.F) {
	hdr := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"predict","parameters":{"binary_data":true}}]}`
	f.Add([]byte(hdr+string(rawF32(1, 2, 3, float32(math.NaN())))), len(hdr))
	hdr2 := `{"inputs":[{"name":"x","shape":[2,4],"datatype":"UINT8","parameters":{"binary_data_size":8}}]}`
	f.Add([]byte(hdr2+"\x01\x02\x03\x04\x05\x06\x07\xff"), len(hdr2))
	hdr3 := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP16","parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}`
	f.Add([]byte(hdr3+"\x00\x3c\x00\x7c\x01\x00\xff\xff"), len(hdr3))
	f.Add([]byte(hdr+"short"), len(hdr))
	f.Add([]byte(hdr), 0)
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}xxxx`), 73)
	var p fastjson.Parser
	var x []float32
	f.Fuzz(func(t *testing.T, body []byte, hl int) {
		header, bin, err := splitBinary(body, strconv.Itoa(hl))
		if err != nil {
			checkRejected(t, err)
			return
		}
		if len(header)+len(bin) != len(body) || len(header) != hl {
			t.Fatalf("split %d bytes at %d into %d + %d", len(body), hl, len(header), len(bin))
		}
		var rows int
		x, rows, _, err = decodeV2(&p, header, bin, fuzzNF, x)
		if err != nil {
			checkRejected(t, err)
			return
		}
		checkDecoded(t, &p, x, rows)
	})
}

// FuzzSeldonProto decodes arbitrary bytes as a SeldonMessage: either not
// protobuf, a 400, or rows that survive a round trip, and an answer that
// marshals.
func FuzzSeldonProto(f *testing.F) {
	lv, _ := structpb.NewList([]any{[]any{1, 2, 3, nil}, []any{5, 6, 7, 8}})
	seeds := []*seldon.SeldonMessage{
		{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{Names: []string{"a"}, DataOneof: &seldon.DefaultData_Ndarray{Ndarray: lv}}}},
		{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{1, 4}, Values: []float64{1, 2, 3, 4}}}}}},
		{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{
			Dtype: tensorflow.DataType_DT_FLOAT, TensorShape: &tensorflow.TensorShapeProto{Dim: []*tensorflow.TensorShapeProto_Dim{{Size: 1}, {Size: 4}}}, TensorContent: rawF32(1, 2, 3, 4)}}}}},
		{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{
			Dtype: tensorflow.DataType_DT_INT64, TensorShape: &tensorflow.TensorShapeProto{Dim: []*tensorflow.TensorShapeProto_Dim{{Size: 1}, {Size: 4}}}, Int64Val: []int64{1, 2, 3, 4}}}}}},
		{Meta: &seldon.Meta{Puid: "p", Tags: map[string]*structpb.Value{"a": structpb.NewNumberValue(1)}}, DataOneof: &seldon.SeldonMessage_StrData{StrData: "x"}},
	}
	addProtoSeeds(f, seeds)
	s, err := New(Options{Predictor: sumPredictor{}, ModelName: "m", Registry: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	var p fastjson.Parser
	f.Fuzz(func(t *testing.T, b []byte) {
		var m seldon.SeldonMessage
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		x, rows, form, err := seldonRows(&m, fuzzNF, nil)
		if err != nil {
			checkRejected(t, err)
			return
		}
		checkDecoded(t, &p, x, rows)
		out := make([]float32, rows*3)
		if _, err := proto.Marshal(s.seldonAnswer(form, out, rows, m.GetMeta())); err != nil {
			t.Fatalf("answer does not marshal: %v", err)
		}
	})
}

// FuzzModelInferProto decodes arbitrary bytes as a ModelInferRequest.
func FuzzModelInferProto(f *testing.F) {
	seeds := []*inference.ModelInferRequest{
		{ModelName: "m", Inputs: []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{rawF32(1, 2, 3, 4)}},
		{ModelName: "m", Inputs: []*inference.ModelInferRequest_InferInputTensor{{Datatype: "INT32", Shape: []int64{1, 4}, Contents: &inference.InferTensorContents{IntContents: []int32{1, 2, 3, 4}}}}},
		{ModelName: "m", Inputs: []*inference.ModelInferRequest_InferInputTensor{{Datatype: "UINT64", Shape: []int64{2, 4}, Contents: &inference.InferTensorContents{Uint64Contents: []uint64{1, 2, 3, 4, 5, 6, 7, 1 << 63}}}}},
		{ModelName: "m", Inputs: []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP16", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{{0, 0x3c, 0, 0x7c, 1, 0, 0xff, 0xff}}},
		{ModelName: "m", Inputs: []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP64", Shape: []int64{1 << 62, 4}}}, RawInputContents: [][]byte{{}}},
	}
	addProtoSeeds(f, seeds)
	var p fastjson.Parser
	f.Fuzz(func(t *testing.T, b []byte) {
		var m inference.ModelInferRequest
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		if err := checkRequestedOutputs(m.GetOutputs()); err != nil {
			checkRejected(t, err)
		}
		x, rows, _, err := inferRows(&m, fuzzNF, nil)
		if err != nil {
			checkRejected(t, err)
			return
		}
		checkDecoded(t, &p, x, rows)
	})
}

// FuzzBodyEncodings sends arbitrary bodies as a microservice form, as
// gzip (valid and not) and with binary headers through the whole handler:
// the answer is always 200 or a 4xx, and JSON unless binary was asked for.
func FuzzBodyEncodings(f *testing.F) {
	for _, s := range seldonSeeds {
		f.Add(uint8(0), []byte(s))
		f.Add(uint8(1), []byte(s))
	}
	for _, s := range v2Seeds {
		f.Add(uint8(2), []byte(s))
		f.Add(uint8(3), []byte(s))
	}
	f.Add(uint8(4), []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00"))
	s, err := New(Options{Predictor: sumPredictor{}, ModelName: "m", MaxBodyBytes: 1 << 16, Registry: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		path, ctype, enc := "/predict", "application/json", ""
		hl := ""
		switch kind % 5 {
		case 0: // microservice form
			ctype = "application/x-www-form-urlencoded"
			body = []byte(url.Values{"json": {string(body)}}.Encode())
		case 1: // gzip Seldon
			enc = "gzip"
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			_, _ = zw.Write(body)
			_ = zw.Close()
			body = buf.Bytes()
		case 2: // gzip v2
			path, enc = "/v2/models/m/infer", "gzip"
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			_, _ = zw.Write(body)
			_ = zw.Close()
			body = buf.Bytes()
		case 3: // binary extension: the JSON is the first half
			path, ctype, hl = "/v2/models/m/infer", "application/octet-stream", strconv.Itoa(len(body)/2)
		case 4: // not gzip at all, declared gzip
			enc = "gzip"
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		if enc != "" {
			req.Header.Set("Content-Encoding", enc)
		}
		if hl != "" {
			req.Header.Set("Inference-Header-Content-Length", hl)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && (rec.Code < 400 || rec.Code > 499) {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		answer := rec.Body.Bytes()
		if n := rec.Header().Get("Inference-Header-Content-Length"); n != "" {
			jl, err := strconv.Atoi(n)
			if err != nil || jl > len(answer) {
				t.Fatalf("answer's Inference-Header-Content-Length %q for a %d-byte answer", n, len(answer))
			}
			answer = answer[:jl]
		}
		if !json.Valid(answer) {
			t.Fatalf("answer is not JSON: %q", answer)
		}
	})
}

// addProtoSeeds adds each message's wire form to f's corpus.
func addProtoSeeds[M proto.Message](f *testing.F, seeds []M) {
	f.Helper()
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}
