package modelserver

import (
	"math"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/seldon"
	"github.com/mlscale/mlscale/api/tensorflow"
)

// The gRPC messages arrive already parsed by protobuf, so decoding them
// is reading rows out of typed fields. Shapes and raw tensor bytes go
// through the same checks as the REST decoders (checkShape, decodeRaw),
// and the errors name fields the way the REST ones do.

// seldonRows reads a SeldonMessage's data (ndarray, tensor or tftensor)
// into x, row-major, nf values per row.
func seldonRows(m *seldon.SeldonMessage, nf int, x []float32) ([]float32, int, dataForm, error) {
	switch d := m.GetDataOneof().(type) {
	case *seldon.SeldonMessage_Data:
	case nil:
		return x, 0, 0, badRequest("request has no data: send data.ndarray, data.tensor or data.tftensor with rows of %d features", nf)
	default:
		return x, 0, 0, badRequest("%s is not supported: this model takes numeric rows in data.ndarray, data.tensor or data.tftensor", seldonDataName(d))
	}
	switch d := m.GetData().GetDataOneof().(type) {
	case *seldon.DefaultData_Ndarray:
		x, rows, err := listRows(d.Ndarray, nf, x)
		return x, rows, formNDArray, err
	case *seldon.DefaultData_Tensor:
		x, rows, err := seldonTensorRows(d.Tensor, nf, x)
		return x, rows, formTensor, err
	case *seldon.DefaultData_Tftensor:
		x, rows, err := tfRows(d.Tftensor, nf, x)
		return x, rows, formTFTensor, err
	}
	return x, 0, 0, badRequest("data has no ndarray, tensor or tftensor: send rows of %d features in one of them", nf)
}

func seldonDataName(d any) string {
	switch d.(type) {
	case *seldon.SeldonMessage_BinData:
		return "binData"
	case *seldon.SeldonMessage_StrData:
		return "strData"
	case *seldon.SeldonMessage_JsonData:
		return "jsonData"
	case *seldon.SeldonMessage_CustomData:
		return "customData"
	}
	return "this data"
}

// listRows reads data.ndarray: a list of rows, each a list of nf numbers
// or nulls.
func listRows(lv *structpb.ListValue, nf int, x []float32) ([]float32, int, error) {
	const what = "data.ndarray"
	rows := lv.GetValues()
	if len(rows) == 0 {
		return x, 0, badRequest("%s is empty: send at least one row of %d features", what, nf)
	}
	x = grow(x, len(rows)*nf)
	for i, row := range rows {
		vals := row.GetListValue()
		if vals == nil {
			return x, 0, badRequest("%s[%d] must be an array of %d numbers, got %s", what, i, nf, kindName(row))
		}
		if len(vals.Values) != nf {
			return x, 0, badRequest("%s[%d] has %d values; the model takes %d features per row", what, i, len(vals.Values), nf)
		}
		dst := x[i*nf : (i+1)*nf]
		for j, e := range vals.Values {
			switch k := e.GetKind().(type) {
			case *structpb.Value_NumberValue:
				dst[j] = float32(k.NumberValue)
			case *structpb.Value_NullValue:
				dst[j] = float32(math.NaN())
			default:
				return x, 0, badRequest("%s[%d][%d] must be a number or null, got %s", what, i, j, kindName(e))
			}
		}
	}
	return x, len(rows), nil
}

func kindName(v *structpb.Value) string {
	switch v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		return "number"
	case *structpb.Value_NullValue:
		return "null"
	case *structpb.Value_StringValue:
		return "string"
	case *structpb.Value_BoolValue:
		return "bool"
	case *structpb.Value_StructValue:
		return "object"
	case *structpb.Value_ListValue:
		return "array"
	}
	return "nothing"
}

// seldonTensorRows reads data.tensor: {shape: [rows, nf], values}.
func seldonTensorRows(t *seldon.Tensor, nf int, x []float32) ([]float32, int, error) {
	const what = "data.tensor.shape"
	if len(t.Shape) != 2 {
		return x, 0, badRequest("%s must be [rows, %d], got %v", what, nf, t.Shape)
	}
	rows, err := checkShape(int64(t.Shape[0]), int64(t.Shape[1]), what, nf, len(t.Values)/nf, "the %d numbers in data.tensor.values", len(t.Values))
	if err != nil {
		return x, 0, err
	}
	if rows*nf != len(t.Values) {
		return x, 0, badRequest("data.tensor.values has %d numbers; shape [%d, %d] needs %d", len(t.Values), rows, nf, rows*nf)
	}
	x = grow(x, rows*nf)
	fill(x, t.Values)
	return x, rows, nil
}

// tfDatatypes are the TensorFlow dtypes a tftensor can carry, as the
// Open Inference Protocol datatypes with the same raw layout.
var tfDatatypes = map[tensorflow.DataType]string{
	tensorflow.DataType_DT_FLOAT: "FP32", tensorflow.DataType_DT_DOUBLE: "FP64", tensorflow.DataType_DT_HALF: "FP16",
	tensorflow.DataType_DT_INT8: "INT8", tensorflow.DataType_DT_INT16: "INT16", tensorflow.DataType_DT_INT32: "INT32", tensorflow.DataType_DT_INT64: "INT64",
	tensorflow.DataType_DT_UINT8: "UINT8", tensorflow.DataType_DT_UINT16: "UINT16", tensorflow.DataType_DT_UINT32: "UINT32", tensorflow.DataType_DT_UINT64: "UINT64",
}

// tfRows reads data.tftensor, a TensorProto as tf.make_tensor_proto
// writes it: tensor_content bytes, or the typed *_val field of its dtype.
func tfRows(t *tensorflow.TensorProto, nf int, x []float32) ([]float32, int, error) {
	const what = "data.tftensor.tensor_shape"
	dt, ok := tfDatatypes[t.GetDtype()]
	if !ok {
		return x, 0, badRequest("data.tftensor.dtype %s is not supported: use a float or integer dtype", t.GetDtype())
	}
	dims := t.GetTensorShape().GetDim()
	if len(dims) != 2 {
		return x, 0, badRequest("%s must be [rows, %d], got %d dimensions", what, nf, len(dims))
	}
	if c := t.GetTensorContent(); len(c) > 0 {
		size := v2Datatypes[dt].size
		rows, err := checkShape(dims[0].GetSize(), dims[1].GetSize(), what, nf, len(c)/(size*nf), "the %d bytes of data.tftensor.tensor_content hold", len(c))
		if err != nil {
			return x, 0, err
		}
		x = grow(x, rows*nf)
		return x, rows, decodeRaw(dt, c, x, "data.tftensor.tensor_content")
	}
	var n int
	var field string
	switch dt {
	case "FP32":
		n, field = len(t.FloatVal), "float_val"
	case "FP64":
		n, field = len(t.DoubleVal), "double_val"
	case "FP16":
		n, field = len(t.HalfVal), "half_val"
	case "INT64":
		n, field = len(t.Int64Val), "int64_val"
	case "UINT32":
		n, field = len(t.Uint32Val), "uint32_val"
	case "UINT64":
		n, field = len(t.Uint64Val), "uint64_val"
	default:
		n, field = len(t.IntVal), "int_val"
	}
	rows, err := checkShape(dims[0].GetSize(), dims[1].GetSize(), what, nf, n/nf, "the %d values in data.tftensor."+field, n)
	if err != nil {
		return x, 0, err
	}
	if rows*nf != n {
		return x, 0, badRequest("data.tftensor.%s has %d values; shape [%d, %d] needs %d", field, n, rows, nf, rows*nf)
	}
	x = grow(x, n)
	switch dt {
	case "FP32":
		fill(x, t.FloatVal)
	case "FP64":
		fill(x, t.DoubleVal)
	case "FP16":
		for i, h := range t.HalfVal {
			x[i] = halfToFloat32(uint16(h))
		}
	case "INT64":
		fill(x, t.Int64Val)
	case "UINT32":
		fill(x, t.Uint32Val)
	case "UINT64":
		fill(x, t.Uint64Val)
	default:
		fill(x, t.IntVal)
	}
	return x, rows, nil
}

type numeric interface {
	~int32 | ~int64 | ~uint32 | ~uint64 | ~float32 | ~float64
}

// fill converts src into x (len(x) == len(src)).
func fill[T numeric](x []float32, src []T) {
	for i, v := range src {
		x[i] = float32(v)
	}
}

// inferRows reads a ModelInferRequest's one input, from
// raw_input_contents or from the contents field of its datatype. raw says
// which, so the answer comes back the same way.
func inferRows(req *inference.ModelInferRequest, nf int, x []float32) (_ []float32, rows int, raw bool, _ error) {
	ins := req.GetInputs()
	if len(ins) != 1 {
		return x, 0, false, badRequest("the model takes one input tensor of shape [rows, %d], got %d inputs", nf, len(ins))
	}
	in := ins[0]
	t, ok := v2Datatypes[in.GetDatatype()]
	if !ok {
		return x, 0, false, badRequest("inputs[0].datatype %q is not supported: use FP32, FP64 or an INT/UINT type", in.GetDatatype())
	}
	if len(in.GetShape()) != 2 {
		return x, 0, false, badRequest("inputs[0].shape must be [rows, %d], got %v", nf, in.GetShape())
	}
	if rc := req.GetRawInputContents(); len(rc) > 0 {
		if len(rc) != 1 {
			return x, 0, true, badRequest("raw_input_contents has %d entries; the request has 1 input", len(rc))
		}
		if in.GetContents() != nil {
			return x, 0, true, badRequest("inputs[0] has contents and the request has raw_input_contents; send one")
		}
		b := rc[0]
		rows, err := checkShape(in.Shape[0], in.Shape[1], "inputs[0].shape", nf, len(b)/(t.size*nf), "the %d bytes of raw_input_contents[0] hold", len(b))
		if err != nil {
			return x, 0, true, err
		}
		x = grow(x, rows*nf)
		return x, rows, true, decodeRaw(in.GetDatatype(), b, x, "raw_input_contents[0]")
	}
	c := in.GetContents()
	var n int
	var field string
	switch in.GetDatatype() {
	case "FP32":
		n, field = len(c.GetFp32Contents()), "fp32_contents"
	case "FP64":
		n, field = len(c.GetFp64Contents()), "fp64_contents"
	case "INT8", "INT16", "INT32":
		n, field = len(c.GetIntContents()), "int_contents"
	case "INT64":
		n, field = len(c.GetInt64Contents()), "int64_contents"
	case "UINT8", "UINT16", "UINT32":
		n, field = len(c.GetUintContents()), "uint_contents"
	case "UINT64":
		n, field = len(c.GetUint64Contents()), "uint64_contents"
	default: // FP16 has no typed field
		return x, 0, false, badRequest("inputs[0] is %s, which has no contents field: send it in raw_input_contents", in.GetDatatype())
	}
	if n == 0 {
		return x, 0, false, badRequest("inputs[0].contents.%s is empty: a %s input's values go there, or in raw_input_contents", field, in.GetDatatype())
	}
	rows, err := checkShape(in.Shape[0], in.Shape[1], "inputs[0].shape", nf, n/nf, "the %d values in inputs[0].contents."+field, n)
	if err != nil {
		return x, 0, false, err
	}
	if rows*nf != n {
		return x, 0, false, badRequest("inputs[0].contents.%s has %d values; shape [%d, %d] needs %d", field, n, rows, nf, rows*nf)
	}
	x = grow(x, n)
	switch field {
	case "fp32_contents":
		copy(x, c.Fp32Contents)
	case "fp64_contents":
		fill(x, c.Fp64Contents)
	case "int_contents":
		fill(x, c.IntContents)
	case "int64_contents":
		fill(x, c.Int64Contents)
	case "uint_contents":
		fill(x, c.UintContents)
	case "uint64_contents":
		fill(x, c.Uint64Contents)
	}
	return x, rows, false, nil
}

// checkRequestedOutputs: the model has one output, "predict".
func checkRequestedOutputs(outs []*inference.ModelInferRequest_InferRequestedOutputTensor) error {
	for i, o := range outs {
		if o.GetName() != v2OutputName {
			return badRequest("outputs[%d].name %q is not an output of this model; it has one output, %q", i, o.GetName(), v2OutputName)
		}
	}
	return nil
}

// seldonAnswer is the python wrapper's answer to a prediction: the output
// names t:0.., the predictions in the request's data form, and the
// request's meta (puid, tags, metrics, requestPath) echoed.
func (s *Server) seldonAnswer(form dataForm, out []float32, n int, meta *seldon.Meta) *seldon.SeldonMessage {
	dd := &seldon.DefaultData{Names: s.outNames}
	switch form {
	case formTensor:
		vals := make([]float64, len(out))
		for i, f := range out {
			vals[i] = float64(f)
		}
		dd.DataOneof = &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{int32(n), int32(s.no)}, Values: vals}}
	case formTFTensor:
		dd.DataOneof = &seldon.DefaultData_Tftensor{Tftensor: &tensorflow.TensorProto{
			Dtype: tensorflow.DataType_DT_FLOAT,
			TensorShape: &tensorflow.TensorShapeProto{Dim: []*tensorflow.TensorShapeProto_Dim{
				{Size: int64(n)}, {Size: int64(s.no)},
			}},
			TensorContent: appendRawFP32(make([]byte, 0, 4*len(out)), out),
		}}
	default:
		dd.DataOneof = &seldon.DefaultData_Ndarray{Ndarray: listValue(out, n, s.no)}
	}
	return &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_Data{Data: dd}, Meta: echoMeta(meta)}
}

// listValue builds [[a,b,c],...] as a ListValue, with every Value taken
// from a few slabs rather than allocated one by one.
func listValue(out []float32, rows, no int) *structpb.ListValue {
	cells := make([]structpb.Value, len(out))
	nums := make([]structpb.Value_NumberValue, len(out))
	cellPtrs := make([]*structpb.Value, len(out))
	rowVals := make([]structpb.Value, rows)
	rowLists := make([]structpb.ListValue, rows)
	rowKinds := make([]structpb.Value_ListValue, rows)
	rowPtrs := make([]*structpb.Value, rows)
	for i, f := range out {
		nums[i].NumberValue = float64(f)
		cells[i].Kind = &nums[i]
		cellPtrs[i] = &cells[i]
	}
	for r := range rows {
		rowLists[r].Values = cellPtrs[r*no : (r+1)*no : (r+1)*no]
		rowKinds[r].ListValue = &rowLists[r]
		rowVals[r].Kind = &rowKinds[r]
		rowPtrs[r] = &rowVals[r]
	}
	return &structpb.ListValue{Values: rowPtrs}
}

// echoMeta is the answer's meta as the python wrapper builds it from the
// request's.
func echoMeta(m *seldon.Meta) *seldon.Meta {
	return &seldon.Meta{Puid: m.GetPuid(), Tags: m.GetTags(), Metrics: m.GetMetrics(), RequestPath: m.GetRequestPath()}
}

// feedbackAnswer is the python wrapper's answer to SendFeedback for a
// model without a send_feedback method: an empty prediction in the form
// of the feedback request's data (a tensor when it has none) and the
// request's puid.
func feedbackAnswer(f *seldon.Feedback) *seldon.SeldonMessage {
	dd := &seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{0}}}}
	if f.GetRequest().GetData().GetNdarray() != nil {
		dd.DataOneof = &seldon.DefaultData_Ndarray{Ndarray: &structpb.ListValue{}}
	}
	return &seldon.SeldonMessage{
		DataOneof: &seldon.SeldonMessage_Data{Data: dd},
		Meta:      &seldon.Meta{Puid: f.GetRequest().GetMeta().GetPuid()},
	}
}
