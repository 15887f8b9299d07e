package modelserver

import (
	"encoding/json"
	"math"
	"strconv"

	"github.com/valyala/fastjson"
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
)

// decodeSeldon parses a Seldon v1 SeldonMessage with data.ndarray or
// data.tensor into x (row-major, nf values per row), reusing x's storage.
func decodeSeldon(p *fastjson.Parser, body []byte, nf int, x []float32) ([]float32, int, dataForm, error) {
	root, err := p.ParseBytes(body)
	if err != nil {
		return x, 0, 0, badRequest("malformed JSON: %v", err)
	}
	if root.Type() != fastjson.TypeObject {
		return x, 0, 0, badRequest("request must be a JSON object with a \"data\" field, got %s", root.Type())
	}
	data := root.Get("data")
	if data == nil {
		for _, k := range []string{"jsonData", "strData", "binData"} {
			if root.Get(k) != nil {
				return x, 0, 0, badRequest("%s is not supported: this model takes numeric rows in data.ndarray or data.tensor", k)
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
	nd, tn := data.Get("ndarray"), data.Get("tensor")
	switch {
	case nd != nil && tn != nil:
		return x, 0, 0, badRequest("data has both ndarray and tensor; send one")
	case nd != nil:
		x, rows, err := decodeRows(nd, "data.ndarray", nf, x)
		return x, rows, formNDArray, err
	case tn != nil:
		x, rows, err := decodeTensor(tn, nf, len(body), x)
		return x, rows, formTensor, err
	}
	return x, 0, 0, badRequest("data has no ndarray or tensor: send {\"data\": {\"ndarray\": [[...%d features...], ...]}}", nf)
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

// readShape checks a [rows, nf] shape and returns rows. A body of n bytes
// holds at most n/2+1 numbers, so larger shapes are rejected before
// anything is allocated for them (and rows*nf cannot overflow).
func readShape(v *fastjson.Value, what string, nf, bodyLen int) (int, error) {
	if v == nil {
		return 0, badRequest("%s is missing: want [rows, %d]", what, nf)
	}
	dims, err := v.Array()
	if err != nil || len(dims) != 2 {
		return 0, badRequest("%s must be [rows, %d], got %s", what, nf, describe(v))
	}
	var d [2]int
	for i, e := range dims {
		n, err := e.Int()
		if err != nil || n < 0 {
			return 0, badRequest("%s must be [rows, %d] with non-negative integers, got %s", what, nf, describe(v))
		}
		d[i] = n
	}
	if d[1] != nf {
		return 0, badRequest("%s is [%d, %d]; the model takes %d features per row", what, d[0], d[1], nf)
	}
	if d[0] == 0 {
		return 0, badRequest("%s has 0 rows: send at least one row", what)
	}
	if d[0] > (bodyLen/2+1)/nf {
		return 0, badRequest("%s is [%d, %d], more values than a %d-byte request can hold", what, d[0], d[1], bodyLen)
	}
	return d[0], nil
}

// v2Datatypes are the Open Inference Protocol tensor types this model can
// take: all become float32 features, as XGBoost would make them.
var v2Datatypes = map[string]bool{
	"FP16": true, "FP32": true, "FP64": true,
	"INT8": true, "INT16": true, "INT32": true, "INT64": true,
	"UINT8": true, "UINT16": true, "UINT32": true, "UINT64": true,
}

// v2Request is what the decoder keeps of an inference request besides
// the features.
type v2Request struct {
	id []byte // request id to echo, nil if none (points into the parser)
}

// decodeV2 parses an Open Inference Protocol inference request with one
// input tensor of shape [rows, nf]; data may be flat or nested row-major.
func decodeV2(p *fastjson.Parser, body []byte, nf int, x []float32) ([]float32, int, v2Request, error) {
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
	if err != nil || !v2Datatypes[string(dtb)] {
		return x, 0, req, badRequest("inputs[0].datatype %s is not supported: use FP32, FP64 or an INT/UINT type", describe(dt))
	}
	integer := dtb[0] == 'I' || dtb[0] == 'U'
	unsigned := dtb[0] == 'U'
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
	f := flattener{x: x, integer: integer, unsigned: unsigned}
	if err := f.walk(dv, 0); err != nil {
		return x, 0, req, err
	}
	if f.n != want {
		return x, 0, req, badRequest("inputs[0].data has %d values; shape [%d, %d] needs %d", f.n, rows, nf, want)
	}
	return x, rows, req, nil
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

// appendFloat32 writes the shortest text that parses back to the same
// float32. That is half the bytes of the float64 text the python wrapper
// writes for the same float32 values (and what MLServer's orjson writes),
// and a client parsing it as float32 gets exactly the model's output.
// JSON has no NaN or Inf; they become null.
func appendFloat32(b []byte, f float32) []byte {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, float64(f), 'g', -1, 32)
}

// appendRows writes out as [[a,b,c],[d,e,f],...] with no per-row allocation.
func appendRows(b []byte, out []float32, rows, no int) []byte {
	b = append(b, '[')
	for i := 0; i < rows; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		for j, f := range out[i*no : (i+1)*no] {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendFloat32(b, f)
		}
		b = append(b, ']')
	}
	return append(b, ']')
}

// appendFlat writes out as [a,b,c,...].
func appendFlat(b []byte, out []float32) []byte {
	b = append(b, '[')
	for i, f := range out {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendFloat32(b, f)
	}
	return append(b, ']')
}

// appendJSONString writes s as a JSON string (names from flags, request
// ids); off the per-row path, so encoding/json's escaping is fine here.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}
