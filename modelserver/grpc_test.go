package modelserver_test

import (
	"context"
	"encoding/binary"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/seldon"
	"github.com/mlscale/mlscale/api/tensorflow"
	"github.com/mlscale/mlscale/modelserver"
)

// serveGRPC runs s's gRPC server on a loopback port until the test ends
// and returns a client connection to it (the generated clients' channel).
func serveGRPC(t testing.TB, s *modelserver.Server) *grpc.ClientConn {
	t.Helper()
	conn, drain, done := startGRPC(t, s)
	t.Cleanup(func() {
		conn.Close()
		drain()
		if err := <-done; err != nil {
			t.Errorf("ServeGRPC: %v", err)
		}
	})
	return conn
}

// startGRPC runs s's gRPC server on a loopback port and returns a client
// connection to it, the cancel that starts its drain and the channel
// ServeGRPC's result arrives on.
func startGRPC(t testing.TB, s *modelserver.Server) (*grpc.ClientConn, context.CancelFunc, <-chan error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeGRPC(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return conn, cancel, done
}

func newGRPCServer(t testing.TB, opts modelserver.Options) (*modelserver.Server, *grpc.ClientConn) {
	t.Helper()
	s, _ := newServer(t, opts)
	return s, serveGRPC(t, s)
}

// goldenMatrix is the golden inputs row-major as float32 (NaN missing).
func goldenMatrix(g *golden) []float32 {
	var x []float32
	for _, r := range g.rows {
		for _, v := range r {
			if v == nil {
				x = append(x, float32(math.NaN()))
			} else {
				x = append(x, float32(*v))
			}
		}
	}
	return x
}

func rawFP32(x []float32) []byte {
	b := make([]byte, 0, 4*len(x))
	for _, f := range x {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

func rawFP64(x []float32) []byte {
	b := make([]byte, 0, 8*len(x))
	for _, f := range x {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(float64(f)))
	}
	return b
}

func fromRawFP32(t *testing.T, b []byte) []float64 {
	t.Helper()
	if len(b)%4 != 0 {
		t.Fatalf("raw FP32 output of %d bytes", len(b))
	}
	out := make([]float64, len(b)/4)
	for i := range out {
		out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return out
}

func ndarray(t *testing.T, g *golden) *structpb.ListValue {
	t.Helper()
	rows := make([]any, len(g.rows))
	for i, r := range g.rows {
		row := make([]any, len(r))
		for j, v := range r {
			if v != nil {
				row[j] = *v
			}
		}
		rows[i] = row
	}
	lv, err := structpb.NewList(rows)
	if err != nil {
		t.Fatal(err)
	}
	return lv
}

func seldonMsg(dd *seldon.DefaultData) *seldon.SeldonMessage {
	return &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_Data{Data: dd}}
}

// inProcess is the model's own prediction for x: what every protocol must
// hand back bit for bit.
func inProcess(t *testing.T, x []float32) []float32 {
	t.Helper()
	m := irisModel(t)
	rows := len(x) / m.NumFeatures()
	out := make([]float32, rows*m.NumOutputs())
	if err := m.PredictBatch(x, rows, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkBits: the answer carries exactly the model's float32 outputs (read
// back as float32, as a client casting the answer does: JSON text is the
// shortest decimal that parses to the same float32).
func checkBits(t *testing.T, want []float32, got []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d values, want %d", len(got), len(want))
	}
	bad := 0
	for i := range want {
		if g := float32(got[i]); math.Float32bits(g) != math.Float32bits(want[i]) {
			if bad++; bad <= 3 {
				t.Errorf("value %d: %v, the model's float32 %v", i, got[i], want[i])
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d values are not the model's float32 bits", bad, len(want))
	}
}

// TestGRPCGolden sends every golden row through each gRPC service and data
// form with the generated clients and compares the answers with XGBoost's
// predictions, as TestGolden does over REST, and with the model's own
// float32 outputs bit for bit.
func TestGRPCGolden(t *testing.T) {
	g := irisGolden(t)
	_, conn := newGRPCServer(t, modelserver.Options{})
	x := goldenMatrix(g)
	want := inProcess(t, x)
	n := len(g.rows)
	values := make([]float64, len(x))
	for i, f := range x {
		values[i] = float64(f)
	}
	tfShape := &tensorflow.TensorShapeProto{Dim: []*tensorflow.TensorShapeProto_Dim{{Size: int64(n)}, {Size: 4}}}
	// As Seldon's Istio route sends them.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "seldon", "iris-model-autoscale", "namespace", "model")

	seldonCases := []struct {
		name string
		call func(context.Context, *seldon.SeldonMessage, ...grpc.CallOption) (*seldon.SeldonMessage, error)
		req  *seldon.SeldonMessage
	}{
		{"Seldon/Predict ndarray", seldon.NewSeldonClient(conn).Predict,
			seldonMsg(&seldon.DefaultData{Names: []string{"sepal_length", "sepal_width", "petal_length", "petal_width"}, DataOneof: &seldon.DefaultData_Ndarray{Ndarray: ndarray(t, g)}})},
		{"Model/Predict tensor", seldon.NewModelClient(conn).Predict,
			seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{int32(n), 4}, Values: values}}})},
		{"Seldon/Predict tftensor content", seldon.NewSeldonClient(conn).Predict,
			seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{Dtype: tensorflow.DataType_DT_DOUBLE, TensorShape: tfShape, TensorContent: rawFP64(x)}}})},
		{"Seldon/Predict tftensor float_val", seldon.NewSeldonClient(conn).Predict,
			seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{Dtype: tensorflow.DataType_DT_FLOAT, TensorShape: tfShape, FloatVal: x}}})},
	}
	for _, tc := range seldonCases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.call(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			d := resp.GetData()
			if diff := cmp.Diff([]string{"t:0", "t:1", "t:2"}, d.GetNames()); diff != "" {
				t.Errorf("names (-want +got):\n%s", diff)
			}
			var got []float64
			switch {
			case d.GetNdarray() != nil:
				if tc.req.GetData().GetNdarray() == nil {
					t.Errorf("answered ndarray to a %T request", tc.req.GetData().GetDataOneof())
				}
				for _, row := range d.GetNdarray().GetValues() {
					var r []float64
					for _, v := range row.GetListValue().GetValues() {
						r = append(r, v.GetNumberValue())
					}
					if len(r) != 3 {
						t.Fatalf("ndarray row of %d values, want 3", len(r))
					}
					got = append(got, r...)
				}
			case d.GetTensor() != nil:
				if diff := cmp.Diff([]int32{int32(n), 3}, d.GetTensor().GetShape()); diff != "" {
					t.Errorf("tensor shape (-want +got):\n%s", diff)
				}
				got = d.GetTensor().GetValues()
			case d.GetTftensor() != nil:
				tf := d.GetTftensor()
				if tf.GetDtype() != tensorflow.DataType_DT_FLOAT || len(tf.GetTensorShape().GetDim()) != 2 || tf.GetTensorShape().GetDim()[0].GetSize() != int64(n) {
					t.Errorf("tftensor answer %v, want DT_FLOAT [%d, 3]", tf.GetDtype(), n)
				}
				got = fromRawFP32(t, tf.GetTensorContent())
			default:
				t.Fatalf("answer has no data: %v", resp)
			}
			checkGolden(t, g, reshape(got, 3))
			checkBits(t, want, got)
		})
	}

	v2 := inference.NewGRPCInferenceServiceClient(conn)
	v2Cases := []struct {
		name string
		req  *inference.ModelInferRequest
		raw  bool
	}{
		{"ModelInfer raw FP32", &inference.ModelInferRequest{ModelName: "iris", Id: "r1",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input-0", Datatype: "FP32", Shape: []int64{int64(n), 4}}},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "predict"}},
			RawInputContents: [][]byte{rawFP32(x)}}, true},
		{"ModelInfer raw FP64", &inference.ModelInferRequest{ModelName: "iris",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input-0", Datatype: "FP64", Shape: []int64{int64(n), 4}}},
			RawInputContents: [][]byte{rawFP64(x)}}, true},
		{"ModelInfer fp32_contents", &inference.ModelInferRequest{ModelName: "iris",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input-0", Datatype: "FP32", Shape: []int64{int64(n), 4},
				Contents: &inference.InferTensorContents{Fp32Contents: x}}}}, false},
	}
	for _, tc := range v2Cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := v2.ModelInfer(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetOutputs()) != 1 {
				t.Fatalf("%d outputs, want 1", len(resp.GetOutputs()))
			}
			o := resp.GetOutputs()[0]
			if diff := cmp.Diff([]any{"iris", tc.req.GetId(), "predict", "FP32", []int64{int64(n), 3}}, []any{resp.GetModelName(), resp.GetId(), o.GetName(), o.GetDatatype(), o.GetShape()}); diff != "" {
				t.Errorf("answer header (-want +got):\n%s", diff)
			}
			var got []float64
			if tc.raw {
				if len(resp.GetRawOutputContents()) != 1 || o.GetContents() != nil {
					t.Fatalf("raw request: want one raw_output_contents and no contents, got %d and %v", len(resp.GetRawOutputContents()), o.GetContents())
				}
				got = fromRawFP32(t, resp.GetRawOutputContents()[0])
			} else {
				if len(resp.GetRawOutputContents()) != 0 {
					t.Fatal("typed request answered with raw_output_contents")
				}
				for _, f := range o.GetContents().GetFp32Contents() {
					got = append(got, float64(f))
				}
			}
			checkGolden(t, g, reshape(got, 3))
			checkBits(t, want, got)
		})
	}
}

// TestGRPCProbesAndMetadata covers the v2 health and metadata calls, the
// gRPC health service, Seldon's metadata calls and SendFeedback.
func TestGRPCProbesAndMetadata(t *testing.T) {
	_, conn := newGRPCServer(t, modelserver.Options{ModelVersion: "3", Platform: "xgboost"})
	ctx := context.Background()
	v2 := inference.NewGRPCInferenceServiceClient(conn)
	tensorMD := func(name string, cols int64) []*inference.ModelMetadataResponse_TensorMetadata {
		return []*inference.ModelMetadataResponse_TensorMetadata{{Name: name, Datatype: "FP32", Shape: []int64{-1, cols}}}
	}
	tests := []struct {
		name string
		call func() (proto.Message, error)
		want proto.Message
	}{
		{"ServerLive", func() (proto.Message, error) { return v2.ServerLive(ctx, &inference.ServerLiveRequest{}) }, &inference.ServerLiveResponse{Live: true}},
		{"ServerReady", func() (proto.Message, error) { return v2.ServerReady(ctx, &inference.ServerReadyRequest{}) }, &inference.ServerReadyResponse{Ready: true}},
		{"ModelReady", func() (proto.Message, error) {
			return v2.ModelReady(ctx, &inference.ModelReadyRequest{Name: "iris", Version: "3"})
		}, &inference.ModelReadyResponse{Ready: true}},
		{"ServerMetadata", func() (proto.Message, error) { return v2.ServerMetadata(ctx, &inference.ServerMetadataRequest{}) },
			&inference.ServerMetadataResponse{Name: "mlscale-modelserver", Version: "1", Extensions: []string{"binary_tensor_data"}}},
		{"ModelMetadata", func() (proto.Message, error) {
			return v2.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "iris"})
		},
			&inference.ModelMetadataResponse{Name: "iris", Versions: []string{"3"}, Platform: "xgboost", Inputs: tensorMD("input-0", 4), Outputs: tensorMD("predict", 3)}},
		{"health", func() (proto.Message, error) {
			return healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "inference.GRPCInferenceService"})
		}, &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}},
		{"Model/Metadata", func() (proto.Message, error) { return seldon.NewModelClient(conn).Metadata(ctx, &emptypb.Empty{}) },
			&seldon.SeldonModelMetadata{Name: "iris", Versions: []string{"3"}, Platform: "xgboost",
				Inputs:  []*seldon.SeldonMessageMetadata{{Name: "input-0", Datatype: "FP32", Shape: []int64{-1, 4}}},
				Outputs: []*seldon.SeldonMessageMetadata{{Name: "predict", Datatype: "FP32", Shape: []int64{-1, 3}}}}},
		{"SendFeedback ndarray", func() (proto.Message, error) {
			return seldon.NewSeldonClient(conn).SendFeedback(ctx, &seldon.Feedback{Reward: 1,
				Request: &seldon.SeldonMessage{Meta: &seldon.Meta{Puid: "p1"}, DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Ndarray{Ndarray: &structpb.ListValue{}}}}}})
		}, &seldon.SeldonMessage{Meta: &seldon.Meta{Puid: "p1"}, DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Ndarray{Ndarray: &structpb.ListValue{}}}}}},
		{"SendFeedback no data", func() (proto.Message, error) {
			return seldon.NewModelClient(conn).SendFeedback(ctx, &seldon.Feedback{Reward: 0.5})
		}, &seldon.SeldonMessage{Meta: &seldon.Meta{}, DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{0}}}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.call()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGRPCMetaEcho: the answer's meta carries the request's puid, tags,
// metrics and requestPath, as the python wrapper's does.
func TestGRPCMetaEcho(t *testing.T) {
	_, conn := newGRPCServer(t, modelserver.Options{Predictor: fixed{}})
	tags := map[string]*structpb.Value{"a": structpb.NewNumberValue(1), "b": structpb.NewStringValue("x")}
	meta := &seldon.Meta{Puid: "p1", Tags: tags, RequestPath: map[string]string{"c": "img"},
		Metrics: []*seldon.Metric{{Key: "k", Type: seldon.Metric_GAUGE, Value: 2}}, Routing: map[string]int32{"r": 1}}
	req := seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{1, 4}, Values: []float64{1, 2, 3, 4}}}})
	req.Meta = meta
	resp, err := seldon.NewSeldonClient(conn).Predict(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := &seldon.SeldonMessage{
		Meta: &seldon.Meta{Puid: "p1", Tags: tags, RequestPath: map[string]string{"c": "img"}, Metrics: meta.Metrics},
		DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{Names: []string{"t:0", "t:1", "t:2"},
			DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{1, 3}, Values: []float64{10, 0.25, float64(float32(-1e-7))}}}}},
	}
	if diff := cmp.Diff(want, resp, protocmp.Transform()); diff != "" {
		t.Errorf("answer (-want +got):\n%s", diff)
	}
}

// TestGRPCBadInput sends each kind of bad call with the generated clients:
// the code is InvalidArgument (NotFound for an unknown model,
// ResourceExhausted over the size limit), never Internal, the message
// says what is wrong, and each is counted by its REST status.
func TestGRPCBadInput(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, conn := newGRPCServer(t, modelserver.Options{Registry: reg, MaxBodyBytes: 4096})
	sc := seldon.NewSeldonClient(conn)
	v2 := inference.NewGRPCInferenceServiceClient(conn)
	ctx := context.Background()
	tensor := func(shape []int32, vals ...float64) *seldon.SeldonMessage {
		return seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: shape, Values: vals}}})
	}
	list := func(rows ...[]any) *seldon.SeldonMessage {
		r := make([]any, len(rows))
		for i := range rows {
			r[i] = rows[i]
		}
		lv, err := structpb.NewList(r)
		if err != nil {
			t.Fatal(err)
		}
		return seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Ndarray{Ndarray: lv}})
	}
	infer := func(dt string, shape []int64, c *inference.InferTensorContents, raw ...[]byte) *inference.ModelInferRequest {
		return &inference.ModelInferRequest{ModelName: "iris",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: dt, Shape: shape, Contents: c}},
			RawInputContents: raw}
	}
	big := make([]byte, 8000)
	tests := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"no data", func() error { _, err := sc.Predict(ctx, &seldon.SeldonMessage{}); return err }, codes.InvalidArgument, "request has no data"},
		{"strData", func() error {
			_, err := sc.Predict(ctx, &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_StrData{StrData: "x"}})
			return err
		}, codes.InvalidArgument, "strData is not supported"},
		{"no ndarray or tensor", func() error { _, err := sc.Predict(ctx, seldonMsg(&seldon.DefaultData{})); return err }, codes.InvalidArgument, "no ndarray, tensor or tftensor"},
		{"ndarray wrong width", func() error { _, err := sc.Predict(ctx, list([]any{1.0, 2.0, 3.0})); return err }, codes.InvalidArgument, "data.ndarray[0] has 3 values; the model takes 4 features"},
		{"ndarray string", func() error { _, err := sc.Predict(ctx, list([]any{1.0, "2", 3.0, 4.0})); return err }, codes.InvalidArgument, "data.ndarray[0][1] must be a number or null, got string"},
		{"ndarray flat", func() error {
			lv, _ := structpb.NewList([]any{1.0, 2.0, 3.0, 4.0})
			_, err := sc.Predict(ctx, seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Ndarray{Ndarray: lv}}))
			return err
		}, codes.InvalidArgument, "data.ndarray[0] must be an array of 4 numbers, got number"},
		{"ndarray empty", func() error { _, err := sc.Predict(ctx, list()); return err }, codes.InvalidArgument, "data.ndarray is empty"},
		{"tensor count", func() error { _, err := sc.Predict(ctx, tensor([]int32{2, 4}, 1, 2, 3, 4)); return err }, codes.InvalidArgument, "more values than the 4 numbers in data.tensor.values"},
		{"tensor width", func() error { _, err := sc.Predict(ctx, tensor([]int32{1, 3}, 1, 2, 3)); return err }, codes.InvalidArgument, "the model takes 4 features"},
		{"tensor rank", func() error { _, err := sc.Predict(ctx, tensor([]int32{4}, 1, 2, 3, 4)); return err }, codes.InvalidArgument, "data.tensor.shape must be [rows, 4]"},
		{"tensor negative", func() error { _, err := sc.Predict(ctx, tensor([]int32{-1, 4}, 1, 2, 3, 4)); return err }, codes.InvalidArgument, "non-negative"},
		{"tftensor string dtype", func() error {
			_, err := sc.Predict(ctx, seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{Dtype: tensorflow.DataType_DT_STRING}}}))
			return err
		}, codes.InvalidArgument, "data.tftensor.dtype DT_STRING is not supported"},
		{"tftensor short content", func() error {
			_, err := sc.Predict(ctx, seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{Dtype: tensorflow.DataType_DT_FLOAT,
				TensorShape: &tensorflow.TensorShapeProto{Dim: []*tensorflow.TensorShapeProto_Dim{{Size: 1}, {Size: 4}}}, TensorContent: make([]byte, 15)}}}))
			return err
		}, codes.InvalidArgument, "more values than the 15 bytes of data.tftensor.tensor_content hold"},
		{"message over the limit", func() error {
			_, err := sc.Predict(ctx, &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_BinData{BinData: big}})
			return err
		}, codes.ResourceExhausted, "larger than max"},
		{"v2 unknown model", func() error {
			_, err := v2.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "resnet"})
			return err
		}, codes.NotFound, `model "resnet" not found`},
		{"v2 unknown version", func() error {
			_, err := v2.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "iris", ModelVersion: "7"})
			return err
		}, codes.NotFound, `model "iris" version "7" not found`},
		{"v2 no inputs", func() error {
			_, err := v2.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "iris"})
			return err
		}, codes.InvalidArgument, "got 0 inputs"},
		{"v2 bad datatype", func() error {
			_, err := v2.ModelInfer(ctx, infer("BYTES", []int64{1, 4}, &inference.InferTensorContents{BytesContents: [][]byte{{1}}}))
			return err
		}, codes.InvalidArgument, `datatype "BYTES" is not supported`},
		{"v2 wrong width", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP32", []int64{1, 3}, &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3}}))
			return err
		}, codes.InvalidArgument, "the model takes 4 features"},
		{"v2 wrong contents field", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP32", []int64{1, 4}, &inference.InferTensorContents{IntContents: []int32{1, 2, 3, 4}}))
			return err
		}, codes.InvalidArgument, "inputs[0].contents.fp32_contents is empty"},
		{"v2 contents count", func() error {
			_, err := v2.ModelInfer(ctx, infer("INT64", []int64{1, 4}, &inference.InferTensorContents{Int64Contents: []int64{1, 2, 3, 4, 5, 6, 7, 8}}))
			return err
		}, codes.InvalidArgument, "int64_contents has 8 values; shape [1, 4] needs 4"},
		{"v2 raw short", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP32", []int64{2, 4}, nil, make([]byte, 31)))
			return err
		}, codes.InvalidArgument, "more values than the 31 bytes of raw_input_contents[0] hold"},
		{"v2 raw long", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP32", []int64{1, 4}, nil, make([]byte, 17)))
			return err
		}, codes.InvalidArgument, "raw_input_contents[0] has 17 bytes; 4 FP32 values need 16"},
		{"v2 raw and contents", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP32", []int64{1, 4}, &inference.InferTensorContents{}, make([]byte, 16)))
			return err
		}, codes.InvalidArgument, "send one"},
		{"v2 two raw", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP32", []int64{1, 4}, nil, make([]byte, 16), nil))
			return err
		}, codes.InvalidArgument, "raw_input_contents has 2 entries"},
		{"v2 FP16 typed", func() error {
			_, err := v2.ModelInfer(ctx, infer("FP16", []int64{1, 4}, &inference.InferTensorContents{}))
			return err
		}, codes.InvalidArgument, "send it in raw_input_contents"},
		{"v2 unknown output", func() error {
			r := infer("FP32", []int64{1, 4}, nil, make([]byte, 16))
			r.Outputs = []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "probabilities"}}
			_, err := v2.ModelInfer(ctx, r)
			return err
		}, codes.InvalidArgument, `outputs[0].name "probabilities" is not an output of this model`},
		{"v2 ModelReady unknown", func() error {
			_, err := v2.ModelReady(ctx, &inference.ModelReadyRequest{Name: "resnet"})
			return err
		}, codes.NotFound, `model "resnet" not found`},
		{"v2 GraphMetadata unimplemented", func() error { _, err := sc.GraphMetadata(ctx, &emptypb.Empty{}); return err }, codes.Unimplemented, "GraphMetadata"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			st, _ := status.FromError(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %v %q, want %v with a message saying %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}

	// Every bad prediction call is counted under the status the same
	// failure gets over REST, the one grpc-go refused for its size too.
	want := `
# HELP mlscale_requests_total Prediction requests answered, by protocol and HTTP status code.
# TYPE mlscale_requests_total counter
mlscale_requests_total{code="200",model="iris",protocol="seldon"} 0
mlscale_requests_total{code="200",model="iris",protocol="seldon-grpc"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2-grpc"} 0
mlscale_requests_total{code="400",model="iris",protocol="seldon-grpc"} 13
mlscale_requests_total{code="400",model="iris",protocol="v2-grpc"} 11
mlscale_requests_total{code="404",model="iris",protocol="v2-grpc"} 2
mlscale_requests_total{code="413",model="iris",protocol="seldon-grpc"} 1
`
	if err := eventuallyGatherAndCompare(reg, want, "mlscale_requests_total"); err != nil {
		t.Error(err)
	}
}

// TestGRPCDrain: on cancel, readiness and the health service turn false
// at once while calls are still answered through the drain delay; then
// ServeGRPC returns nil.
func TestGRPCDrain(t *testing.T) {
	s, _ := newServer(t, modelserver.Options{DrainDelay: 500 * time.Millisecond})
	conn, cancel, done := startGRPC(t, s)
	defer conn.Close()
	v2 := inference.NewGRPCInferenceServiceClient(conn)
	hc := healthpb.NewHealthClient(conn)
	call := context.Background()
	if r, err := v2.ServerReady(call, &inference.ServerReadyRequest{}); err != nil || !r.Ready {
		t.Fatalf("ServerReady before the drain: %v %v", r, err)
	}
	cancel()
	deadline := time.Now().Add(300 * time.Millisecond)
	for {
		r, err := v2.ServerReady(call, &inference.ServerReadyRequest{})
		h, herr := hc.Check(call, &healthpb.HealthCheckRequest{})
		if err == nil && !r.Ready && herr == nil && h.Status == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("300ms into the drain: ServerReady %v %v, health %v %v", r, err, h, herr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	req := &inference.ModelInferRequest{ModelName: "iris",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{1, 4}}},
		RawInputContents: [][]byte{rawFP32([]float32{1, 2, 3, 4})}}
	if _, err := v2.ModelInfer(call, req); err != nil {
		t.Errorf("ModelInfer during the drain delay: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeGRPC: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeGRPC still running 10s after cancel")
	}
}

// TestGRPCCompression: gzip and deflate compressed calls (tritonclient's
// compression_algorithm) are answered with the model's outputs; a message
// that decompresses past --max-body-bytes is ResourceExhausted, not memory.
func TestGRPCCompression(t *testing.T) {
	g := irisGolden(t)
	reg := prometheus.NewRegistry()
	_, conn := newGRPCServer(t, modelserver.Options{Registry: reg, MaxBodyBytes: 1 << 20})
	x := goldenMatrix(g)
	want := inProcess(t, x)
	n := len(g.rows)
	v2 := inference.NewGRPCInferenceServiceClient(conn)
	req := &inference.ModelInferRequest{ModelName: "iris",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{int64(n), 4}}},
		RawInputContents: [][]byte{rawFP32(x)}}
	for _, c := range []string{"gzip", "deflate"} {
		t.Run(c, func(t *testing.T) {
			resp, err := v2.ModelInfer(context.Background(), req, grpc.UseCompressor(c))
			if err != nil {
				t.Fatal(err)
			}
			checkBits(t, want, fromRawFP32(t, resp.GetRawOutputContents()[0]))
		})
	}
	// 4 MiB of zeros compress to a few KiB.
	bomb := &inference.ModelInferRequest{ModelName: "iris",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{1 << 18, 4}}},
		RawInputContents: [][]byte{make([]byte, 4<<20)}}
	_, err := v2.ModelInfer(context.Background(), bomb, grpc.UseCompressor("gzip"))
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted {
		t.Errorf("4 MiB decompressed against a 1 MiB limit: %v, want ResourceExhausted", err)
	}
	if err := eventuallyGatherAndCompare(reg, `
# HELP mlscale_requests_total Prediction requests answered, by protocol and HTTP status code.
# TYPE mlscale_requests_total counter
mlscale_requests_total{code="200",model="iris",protocol="seldon"} 0
mlscale_requests_total{code="200",model="iris",protocol="seldon-grpc"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2"} 0
mlscale_requests_total{code="200",model="iris",protocol="v2-grpc"} 2
mlscale_requests_total{code="413",model="iris",protocol="v2-grpc"} 1
`, "mlscale_requests_total"); err != nil {
		t.Error(err)
	}
}
