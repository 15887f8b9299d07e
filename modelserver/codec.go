package modelserver

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/mlscale/mlscale/api/tensorflow"
)

// Request decoding is the server's hot path: a 10,000-row request carries
// 40,000 numbers. The decoders parse the body with fastjson (a reused
// Parser keeps its value cache, so a steady stream of requests allocates
// nothing) and write every number straight into a caller-owned []float32;
// there is no [][]any or [][]float64 in between. BenchmarkDecode compares
// this with encoding/json and json-iterator in the same run.
//
// Numbers are parsed as float64 and then rounded to float32. That is what
// the Seldon python wrapper does with the same bytes (json.loads gives
// float64, XGBoost's DMatrix stores float32), so both servers see the same
// features. null (and the NaN literal Python's json.dumps writes) mean a
// missing value, which XGBoost routes by each split's default direction.

// dataForm is how a Seldon v1 request carried its rows; the answer uses the
// same form, as the python wrapper does.
type dataForm uint8

const (
	formNDArray dataForm = iota
	formTensor
	formTFTensor // TensorFlow's TensorProto
)

// seldonRequest is what the decoder keeps of a Seldon request besides the
// features: the data form to answer in and the meta fields Seldon's python
// wrapper echoes back (values point into the parser; nil when absent).
type seldonRequest struct {
	form                             dataForm
	puid, tags, metrics, requestPath *fastjson.Value
}

// seldonMetaFields are the request meta fields the python wrapper copies
// into its answer's meta, with the JSON type each must have.
var seldonMetaFields = [...]struct {
	key string
	typ fastjson.Type
}{{"tags", fastjson.TypeObject}, {"metrics", fastjson.TypeArray}, {"puid", fastjson.TypeString}, {"requestPath", fastjson.TypeObject}}

// decodeSeldonMeta reads the request's meta fields that are echoed.
func decodeSeldonMeta(root *fastjson.Value, req *seldonRequest) error {
	meta := root.Get("meta")
	if meta == nil || meta.Type() == fastjson.TypeNull {
		return nil
	}
	if meta.Type() != fastjson.TypeObject {
		return badRequest("meta must be an object, got %s", meta.Type())
	}
	dst := [...]**fastjson.Value{&req.tags, &req.metrics, &req.puid, &req.requestPath}
	for i, f := range seldonMetaFields {
		v := meta.Get(f.key)
		if v == nil || v.Type() == fastjson.TypeNull {
			continue
		}
		if v.Type() != f.typ {
			return badRequest("meta.%s must be %s, got %s", f.key, typeName(f.typ), describe(v))
		}
		*dst[i] = v
	}
	return nil
}

func typeName(t fastjson.Type) string {
	switch t {
	case fastjson.TypeObject:
		return "an object"
	case fastjson.TypeArray:
		return "an array"
	case fastjson.TypeString:
		return "a string"
	}
	return t.String()
}

// appendSeldonMeta writes the answer's "meta" object as the python wrapper
// builds it: the request's tags, metrics, puid and requestPath.
func appendSeldonMeta(b []byte, req *seldonRequest) []byte {
	b = append(b, `"meta":{`...)
	n := 0
	for i, v := range [...]*fastjson.Value{req.tags, req.metrics, req.puid, req.requestPath} {
		if v == nil {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, '"')
		b = append(b, seldonMetaFields[i].key...)
		b = append(b, `":`...)
		b = appendJSONValue(b, v)
	}
	return append(b, '}')
}

// appendJSONValue writes v back as JSON. fastjson, like Python's json,
// reads NaN and Infinity as numbers, which JSON cannot carry: they are
// written as null.
func appendJSONValue(b []byte, v *fastjson.Value) []byte {
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		b = append(b, '{')
		n := 0
		o.Visit(func(k []byte, e *fastjson.Value) {
			if n > 0 {
				b = append(b, ',')
			}
			n++
			b = appendJSONString(b, string(k))
			b = append(b, ':')
			b = appendJSONValue(b, e)
		})
		return append(b, '}')
	case fastjson.TypeArray:
		arr, _ := v.Array()
		b = append(b, '[')
		for i, e := range arr {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONValue(b, e)
		}
		return append(b, ']')
	case fastjson.TypeNumber:
		f, err := v.Float64()
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return append(b, "null"...)
		}
	}
	return v.MarshalTo(b)
}

// decodeSeldon parses a Seldon v1 SeldonMessage with data.ndarray or
// data.tensor into x (row-major, nf values per row), reusing x's storage.
func decodeSeldon(p *fastjson.Parser, body []byte, nf int, x []float32) ([]float32, int, seldonRequest, error) {
	var req seldonRequest
	root, err := p.ParseBytes(body)
	if err != nil {
		return x, 0, req, badRequest("malformed JSON: %v", err)
	}
	if root.Type() != fastjson.TypeObject {
		return x, 0, req, badRequest("request must be a JSON object with a \"data\" field, got %s", root.Type())
	}
	if err := decodeSeldonMeta(root, &req); err != nil {
		return x, 0, req, err
	}
	x, rows, form, err := decodeSeldonData(root, len(body), nf, x)
	req.form = form
	return x, rows, req, err
}

func decodeSeldonData(root *fastjson.Value, bodyLen, nf int, x []float32) ([]float32, int, dataForm, error) {
	data := root.Get("data")
	if data == nil {
		for _, k := range []string{"jsonData", "strData", "binData"} {
			if root.Get(k) != nil {
				return x, 0, 0, badRequest("%s is not supported: this model takes numeric rows in data.ndarray, data.tensor or data.tftensor", k)
			}
		}
		return x, 0, 0, badRequest("request has no \"data\" field: send {\"data\": {\"ndarray\": [[...%d features...], ...]}}", nf)
	}
	if data.Type() != fastjson.TypeObject {
		return x, 0, 0, badRequest("\"data\" must be an object, got %s", data.Type())
	}
	if names := data.Get("names"); names != nil {
		// The names are the client's feature names; the model knows its
		// columns by position, as in the python wrapper, so only the type
		// is checked.
		arr, err := names.Array()
		if err != nil {
			return x, 0, 0, badRequest("data.names must be an array of strings, got %s", names.Type())
		}
		for i, n := range arr {
			if n.Type() != fastjson.TypeString {
				return x, 0, 0, badRequest("data.names[%d] must be a string, got %s", i, n.Type())
			}
		}
	}
	var form dataForm
	var v *fastjson.Value
	for _, f := range [...]struct {
		key  string
		form dataForm
	}{{"ndarray", formNDArray}, {"tensor", formTensor}, {"tftensor", formTFTensor}} {
		e := data.Get(f.key)
		if e == nil {
			continue
		}
		if v != nil {
			return x, 0, 0, badRequest("data has both %s and %s; send one", seldonForms[form], f.key)
		}
		v, form = e, f.form
	}
	var rows int
	var err error
	switch {
	case v == nil:
		return x, 0, 0, badRequest("data has no ndarray, tensor or tftensor: send {\"data\": {\"ndarray\": [[...%d features...], ...]}}", nf)
	case form == formNDArray:
		x, rows, err = decodeRows(v, "data.ndarray", nf, x)
	case form == formTensor:
		x, rows, err = decodeTensor(v, nf, bodyLen, x)
	default:
		x, rows, err = decodeTFJSON(v, nf, x)
	}
	return x, rows, form, err
}

// seldonForms names each data form as its SeldonMessage field.
var seldonForms = [...]string{formNDArray: "ndarray", formTensor: "tensor", formTFTensor: "tftensor"}

// decodeTFJSON reads data.tftensor, TensorFlow's TensorProto in protobuf's
// JSON form (what SeldonClient's payload_type="tftensor" sends over REST:
// json_format.MessageToJson of tf.make_tensor_proto), with protobuf's own
// JSON parser, then the same rows as the gRPC tftensor.
func decodeTFJSON(v *fastjson.Value, nf int, x []float32) ([]float32, int, error) {
	if v.Type() != fastjson.TypeObject {
		return x, 0, badRequest("data.tftensor must be an object (a TensorProto), got %s", v.Type())
	}
	var t tensorflow.TensorProto
	if err := protojson.Unmarshal(v.MarshalTo(nil), &t); err != nil {
		return x, 0, badRequest("data.tftensor is not a TensorProto: %v", err)
	}
	return tfRows(&t, nf, x)
}

// appendTFTensorJSON writes out as the python wrapper answers a tftensor
// request: MessageToJson(tf.make_tensor_proto(predictions)), float32.
func appendTFTensorJSON(b []byte, out []float32, rows, no int) []byte {
	b = append(b, `"tftensor":{"dtype":"DT_FLOAT","tensorShape":{"dim":[{"size":"`...)
	b = strconv.AppendInt(b, int64(rows), 10)
	b = append(b, `"},{"size":"`...)
	b = strconv.AppendInt(b, int64(no), 10)
	b = append(b, `"}]},"tensorContent":"`...)
	b = base64.StdEncoding.AppendEncode(b, appendRawFP32(nil, out))
	return append(b, `"}`...)
}

// decodeRows reads an array of rows, each an array of nf numbers.
func decodeRows(v *fastjson.Value, what string, nf int, x []float32) ([]float32, int, error) {
	rows, err := v.Array()
	if err != nil {
		return x, 0, badRequest("%s must be an array of rows, got %s", what, v.Type())
	}
	if len(rows) == 0 {
		return x, 0, badRequest("%s is empty: send at least one row of %d features", what, nf)
	}
	x = grow(x, len(rows)*nf)
	for i, row := range rows {
		vals, err := row.Array()
		if err != nil {
			return x, 0, badRequest("%s[%d] must be an array of %d numbers, got %s", what, i, nf, row.Type())
		}
		if len(vals) != nf {
			return x, 0, badRequest("%s[%d] has %d values; the model takes %d features per row", what, i, len(vals), nf)
		}
		dst := x[i*nf : (i+1)*nf]
		for j, e := range vals {
			f, ok := number(e)
			if !ok {
				return x, 0, badRequest("%s[%d][%d] must be a number or null, got %s", what, i, j, describe(e))
			}
			dst[j] = f
		}
	}
	return x, len(rows), nil
}

// decodeTensor reads Seldon's {"shape": [rows, nf], "values": [...]}.
func decodeTensor(v *fastjson.Value, nf, bodyLen int, x []float32) ([]float32, int, error) {
	if v.Type() != fastjson.TypeObject {
		return x, 0, badRequest("data.tensor must be an object with shape and values, got %s", v.Type())
	}
	shape, err := readShape(v.Get("shape"), "data.tensor.shape", nf, bodyLen)
	if err != nil {
		return x, 0, err
	}
	vv := v.Get("values")
	if vv == nil {
		return x, 0, badRequest("data.tensor has no values")
	}
	vals, err := vv.Array()
	if err != nil {
		return x, 0, badRequest("data.tensor.values must be an array of numbers, got %s", vv.Type())
	}
	if len(vals) != shape*nf {
		return x, 0, badRequest("data.tensor.values has %d numbers; shape [%d, %d] needs %d", len(vals), shape, nf, shape*nf)
	}
	x = grow(x, len(vals))
	for i, e := range vals {
		f, ok := number(e)
		if !ok {
			return x, 0, badRequest("data.tensor.values[%d] must be a number or null, got %s", i, describe(e))
		}
		x[i] = f
	}
	return x, shape, nil
}

// readShape reads a JSON [rows, nf] shape and returns rows. A body of n
// bytes holds at most n/2+1 numbers, which bounds rows.
func readShape(v *fastjson.Value, what string, nf, bodyLen int) (int, error) {
	return readShapeMax(v, what, nf, (bodyLen/2+1)/nf, "a %d-byte request can hold", bodyLen)
}

func readShapeMax(v *fastjson.Value, what string, nf, maxRows int, limitFmt string, limitArg int) (int, error) {
	if v == nil {
		return 0, badRequest("%s is missing: want [rows, %d]", what, nf)
	}
	dims, err := v.Array()
	if err != nil || len(dims) != 2 {
		return 0, badRequest("%s must be [rows, %d], got %s", what, nf, describe(v))
	}
	var d [2]int64
	for i, e := range dims {
		n, err := e.Int64()
		if err != nil || n < 0 {
			return 0, badRequest("%s must be [rows, %d] with non-negative integers, got %s", what, nf, describe(v))
		}
		d[i] = n
	}
	return checkShape(d[0], d[1], what, nf, maxRows, limitFmt, limitArg)
}

// v2Request is what the decoder keeps of an inference request besides
// the features.
type v2Request struct {
	id []byte // request id to echo, nil if none (points into the parser)
	// binaryOut asks for the output as binary data after the JSON (the
	// binary tensor extension: parameters.binary_data_output, or the
	// output's parameters.binary_data).
	binaryOut bool
}

// decodeV2 parses an Open Inference Protocol inference request with one
// input tensor of shape [rows, nf]; data may be flat or nested row-major
// JSON, or, with the binary tensor extension, raw little-endian bytes in
// binary (the body after the Inference-Header-Content-Length JSON header;
// nil when the request has no such header).
func decodeV2(p *fastjson.Parser, body, binary []byte, nf int, x []float32) ([]float32, int, v2Request, error) {
	var req v2Request
	root, err := p.ParseBytes(body)
	if err != nil {
		return x, 0, req, badRequest("malformed JSON: %v", err)
	}
	if root.Type() != fastjson.TypeObject {
		return x, 0, req, badRequest("request must be a JSON object with \"inputs\", got %s", root.Type())
	}
	if id := root.Get("id"); id != nil {
		b, err := id.StringBytes()
		if err != nil {
			return x, 0, req, badRequest("id must be a string, got %s", id.Type())
		}
		req.id = b
	}
	if req.binaryOut, _, err = boolParam(root.Get("parameters"), "binary_data_output", "parameters"); err != nil {
		return x, 0, req, err
	}
	if err := decodeV2Outputs(root.Get("outputs"), &req); err != nil {
		return x, 0, req, err
	}
	iv := root.Get("inputs")
	if iv == nil {
		return x, 0, req, badRequest("request has no \"inputs\": send {\"inputs\": [{\"name\": \"input-0\", \"shape\": [rows, %d], \"datatype\": \"FP32\", \"data\": [...]}]}", nf)
	}
	inputs, err := iv.Array()
	if err != nil {
		return x, 0, req, badRequest("inputs must be an array, got %s", iv.Type())
	}
	if len(inputs) != 1 {
		return x, 0, req, badRequest("the model takes one input tensor of shape [rows, %d], got %d inputs", nf, len(inputs))
	}
	in := inputs[0]
	if in.Type() != fastjson.TypeObject {
		return x, 0, req, badRequest("inputs[0] must be an object, got %s", in.Type())
	}
	// The model has one input, so its name is not used to match it.
	if nv := in.Get("name"); nv != nil && nv.Type() != fastjson.TypeString {
		return x, 0, req, badRequest("inputs[0].name must be a string, got %s", nv.Type())
	}
	dt := in.Get("datatype")
	if dt == nil {
		return x, 0, req, badRequest("inputs[0].datatype is missing (FP32, FP64 or an INT type)")
	}
	dtb, err := dt.StringBytes()
	t, ok := v2Datatypes[string(dtb)]
	if err != nil || !ok {
		return x, 0, req, badRequest("inputs[0].datatype %s is not supported: use FP32, FP64 or an INT/UINT type", describe(dt))
	}

	size, hasSize, err := intParam(in.Get("parameters"), "binary_data_size", "inputs[0].parameters")
	if err != nil {
		return x, 0, req, err
	}
	if hasSize {
		return decodeV2Binary(in, string(dtb), t, size, binary, nf, x, req)
	}
	if len(binary) > 0 {
		return x, 0, req, badRequest("the request has %d bytes of binary data after its JSON header, but inputs[0] has no parameters.binary_data_size", len(binary))
	}
	rows, err := readShape(in.Get("shape"), "inputs[0].shape", nf, len(body))
	if err != nil {
		return x, 0, req, err
	}
	dv := in.Get("data")
	if dv == nil {
		return x, 0, req, badRequest("inputs[0].data is missing")
	}
	if dv.Type() != fastjson.TypeArray {
		return x, 0, req, badRequest("inputs[0].data must be an array, got %s", dv.Type())
	}
	want := rows * nf
	x = grow(x, want)
	f := flattener{x: x, integer: t.integer, unsigned: t.unsigned}
	if err := f.walk(dv, 0); err != nil {
		return x, 0, req, err
	}
	if f.n != want {
		return x, 0, req, badRequest("inputs[0].data has %d values; shape [%d, %d] needs %d", f.n, rows, nf, want)
	}
	return x, rows, req, nil
}

// decodeV2Binary reads the input's data from the binary part of a binary
// tensor extension request.
func decodeV2Binary(in *fastjson.Value, dt string, t dtype, size int64, binary []byte, nf int, x []float32, req v2Request) ([]float32, int, v2Request, error) {
	if binary == nil {
		return x, 0, req, badRequest("inputs[0].parameters.binary_data_size is set but the request has no Inference-Header-Content-Length header to say where its binary data starts")
	}
	if in.Get("data") != nil {
		return x, 0, req, badRequest("inputs[0] has both data and parameters.binary_data_size; send one")
	}
	if size != int64(len(binary)) {
		return x, 0, req, badRequest("inputs[0].parameters.binary_data_size is %d, but %d bytes follow the JSON header", size, len(binary))
	}
	rows, err := readShapeMax(in.Get("shape"), "inputs[0].shape", nf, len(binary)/(t.size*nf), "the %d bytes of binary data hold", len(binary))
	if err != nil {
		return x, 0, req, err
	}
	x = grow(x, rows*nf)
	if err := decodeRaw(dt, binary, x, "inputs[0]'s binary data"); err != nil {
		return x, 0, req, err
	}
	return x, rows, req, nil
}

// decodeV2Outputs checks the requested outputs (the model has one,
// "predict") and reads whether it is asked for as binary data.
func decodeV2Outputs(ov *fastjson.Value, req *v2Request) error {
	if ov == nil {
		return nil
	}
	outs, err := ov.Array()
	if err != nil {
		return badRequest("outputs must be an array, got %s", ov.Type())
	}
	for i, o := range outs {
		if o.Type() != fastjson.TypeObject {
			return badRequest("outputs[%d] must be an object, got %s", i, o.Type())
		}
		if o.Get("name") == nil {
			return badRequest("outputs[%d] has no name; this model has one output, %q", i, v2OutputName)
		}
		name := o.GetStringBytes("name")
		if string(name) != v2OutputName {
			return badRequest("outputs[%d].name %s is not an output of this model; it has one output, %q", i, describe(o.Get("name")), v2OutputName)
		}
		b, set, err := boolParam(o.Get("parameters"), "binary_data", fmt.Sprintf("outputs[%d].parameters", i))
		if err != nil {
			return err
		}
		if set { // the output's own choice overrides binary_data_output
			req.binaryOut = b
		}
	}
	return nil
}

// boolParam reads an optional boolean from a parameters object; set says
// whether it was there.
func boolParam(params *fastjson.Value, key, what string) (b, set bool, err error) {
	if params == nil {
		return false, false, nil
	}
	if params.Type() != fastjson.TypeObject {
		return false, false, badRequest("%s must be an object, got %s", what, params.Type())
	}
	v := params.Get(key)
	if v == nil {
		return false, false, nil
	}
	if b, err = v.Bool(); err != nil {
		return false, false, badRequest("%s.%s must be true or false, got %s", what, key, describe(v))
	}
	return b, true, nil
}

// intParam reads an optional non-negative integer from a parameters object.
func intParam(params *fastjson.Value, key, what string) (int64, bool, error) {
	if params == nil {
		return 0, false, nil
	}
	if params.Type() != fastjson.TypeObject {
		return 0, false, badRequest("%s must be an object, got %s", what, params.Type())
	}
	v := params.Get(key)
	if v == nil {
		return 0, false, nil
	}
	n, err := v.Int64()
	if err != nil || n < 0 {
		return 0, false, badRequest("%s.%s must be a non-negative integer, got %s", what, key, describe(v))
	}
	return n, true, nil
}

// maxV2Depth bounds how deeply inputs[].data may nest; row-major data for
// a rank-2 tensor needs at most 2 levels.
const maxV2Depth = 2

type flattener struct {
	x                 []float32
	n                 int
	integer, unsigned bool
}

func (f *flattener) walk(v *fastjson.Value, depth int) error {
	if depth >= maxV2Depth {
		return badRequest("inputs[0].data nests deeper than the tensor's 2 dimensions")
	}
	arr, _ := v.Array()
	for _, e := range arr {
		if e.Type() == fastjson.TypeArray {
			if err := f.walk(e, depth+1); err != nil {
				return err
			}
			continue
		}
		if f.n >= len(f.x) {
			return badRequest("inputs[0].data has more values than its shape allows (%d)", len(f.x))
		}
		val, ok := number(e)
		if !ok {
			return badRequest("inputs[0].data[%d] must be a number, got %s", f.n, describe(e))
		}
		if f.integer {
			if math.IsNaN(float64(val)) {
				return badRequest("inputs[0].data[%d] is null, which an INT tensor cannot hold", f.n)
			}
			fv, _ := e.Float64()
			if fv != math.Trunc(fv) || (f.unsigned && fv < 0) {
				return badRequest("inputs[0].data[%d] = %s is not a valid value for the input's integer datatype", f.n, describe(e))
			}
		}
		f.x[f.n] = val
		f.n++
	}
	return nil
}

// number reads a feature: a JSON number, or null / NaN for missing.
func number(v *fastjson.Value) (float32, bool) {
	switch v.Type() {
	case fastjson.TypeNumber:
		f, err := v.Float64()
		if err != nil {
			return 0, false
		}
		return float32(f), true
	case fastjson.TypeNull:
		return float32(math.NaN()), true
	}
	return 0, false
}

// describe names a bad value in an error message, shortened so a hostile
// body cannot blow up the answer.
func describe(v *fastjson.Value) string {
	if v == nil {
		return "missing"
	}
	s := v.String()
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return v.Type().String() + " " + s
}

func grow(x []float32, n int) []float32 {
	if cap(x) < n {
		return make([]float32, n)
	}
	return x[:n]
}

// appendJSONString writes s as a JSON string (names from flags, request
// ids); off the per-row path, so encoding/json's escaping is fine here.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// feedback is what the server reads of a Seldon Feedback message.
type feedback struct {
	form dataForm        // of request.data; a tensor when it has none
	puid *fastjson.Value // request.meta.puid, echoed
}

// decodeFeedback checks a Seldon Feedback message ({"request": ...,
// "response": ..., "reward": ..., "truth": ...}) as protobuf's JSON
// parser in the python wrapper would: an object of those fields only,
// messages as objects, the reward a number.
func decodeFeedback(p *fastjson.Parser, body []byte) (feedback, error) {
	fb := feedback{form: formTensor}
	root, err := p.ParseBytes(body)
	if err != nil {
		return fb, badRequest("malformed JSON: %v", err)
	}
	o, err := root.Object()
	if err != nil {
		return fb, badRequest("feedback must be a JSON object with request, response, reward and truth, got %s", root.Type())
	}
	o.Visit(func(k []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		switch key := string(k); key {
		case "request", "response", "truth":
			if v.Type() != fastjson.TypeObject && v.Type() != fastjson.TypeNull {
				err = badRequest("feedback %s must be a SeldonMessage object, got %s", key, describe(v))
			}
		case "reward":
			if _, ok := number(v); !ok {
				err = badRequest("feedback reward must be a number, got %s", describe(v))
			}
		default:
			err = badRequest("feedback has an unknown field %q: it takes request, response, reward and truth", key)
		}
	})
	if err != nil {
		return fb, err
	}
	req := root.Get("request")
	if req == nil || req.Type() != fastjson.TypeObject {
		return fb, nil
	}
	var sr seldonRequest
	if err := decodeSeldonMeta(req, &sr); err != nil {
		return fb, badRequest("feedback request: %v", err)
	}
	fb.puid = sr.puid
	if data := req.Get("data"); data != nil && data.Type() == fastjson.TypeObject && data.Get("ndarray") != nil {
		fb.form = formNDArray
	}
	return fb, nil
}
