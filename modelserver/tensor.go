package modelserver

import (
	"encoding/binary"
	"math"
)

// What every protocol shares about tensors: the shape a model input must
// have, the Open Inference Protocol's datatypes, and raw little-endian
// tensor bytes (the binary tensor extension over REST, raw_input_contents
// and raw_output_contents over gRPC, TensorFlow's tensor_content).

// dtype is an Open Inference Protocol datatype this model can take: all
// become float32 features, as XGBoost would make them.
type dtype struct {
	size              int // bytes per element in raw form
	integer, unsigned bool
}

var v2Datatypes = map[string]dtype{
	"FP16": {size: 2}, "FP32": {size: 4}, "FP64": {size: 8},
	"INT8": {1, true, false}, "INT16": {2, true, false}, "INT32": {4, true, false}, "INT64": {8, true, false},
	"UINT8": {1, true, true}, "UINT16": {2, true, true}, "UINT32": {4, true, true}, "UINT64": {8, true, true},
}

// checkShape checks a [rows, nf] tensor shape and returns rows. maxRows
// bounds rows by what the request can actually carry, so that nothing is
// allocated for a shape the data cannot fill (and rows*nf cannot
// overflow); limitFmt with limitArg says what that bound is, formatted only
// on error.
func checkShape(d0, d1 int64, what string, nf, maxRows int, limitFmt string, limitArg int) (int, error) {
	if d0 < 0 || d1 < 0 {
		return 0, badRequest("%s must be [rows, %d] with non-negative sizes, got [%d, %d]", what, nf, d0, d1)
	}
	if d1 != int64(nf) {
		return 0, badRequest("%s is [%d, %d]; the model takes %d features per row", what, d0, d1, nf)
	}
	if d0 == 0 {
		return 0, badRequest("%s has 0 rows: send at least one row", what)
	}
	if d0 > int64(maxRows) {
		return 0, badRequest("%s is [%d, %d], more values than "+limitFmt, what, d0, d1, limitArg)
	}
	return int(d0), nil
}

// checkShapeDims is checkShape for a shape given as a list of dimensions.
func checkShapeDims(dims []int64, what string, nf, maxRows int, limitFmt string, limitArg int) (int, error) {
	if len(dims) != 2 {
		return 0, badRequest("%s must be [rows, %d], got %v", what, nf, dims)
	}
	return checkShape(dims[0], dims[1], what, nf, maxRows, limitFmt, limitArg)
}

// decodeRaw converts len(x) little-endian elements of datatype dt from raw
// into x. raw must hold exactly that many.
func decodeRaw(dt string, raw []byte, x []float32, what string) error {
	t, ok := v2Datatypes[dt]
	if !ok {
		return badRequest("%s: datatype %q is not supported: use FP32, FP64, FP16 or an INT/UINT type", what, dt)
	}
	if len(raw) != len(x)*t.size {
		return badRequest("%s has %d bytes; %d %s values need %d", what, len(raw), len(x), dt, len(x)*t.size)
	}
	le := binary.LittleEndian
	switch dt {
	case "FP32":
		for i := range x {
			x[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
	case "FP64":
		for i := range x {
			x[i] = float32(math.Float64frombits(le.Uint64(raw[8*i:])))
		}
	case "FP16":
		for i := range x {
			x[i] = halfToFloat32(le.Uint16(raw[2*i:]))
		}
	case "INT8":
		for i := range x {
			x[i] = float32(int8(raw[i]))
		}
	case "INT16":
		for i := range x {
			x[i] = float32(int16(le.Uint16(raw[2*i:])))
		}
	case "INT32":
		for i := range x {
			x[i] = float32(int32(le.Uint32(raw[4*i:])))
		}
	case "INT64":
		for i := range x {
			x[i] = float32(int64(le.Uint64(raw[8*i:])))
		}
	case "UINT8":
		for i := range x {
			x[i] = float32(raw[i])
		}
	case "UINT16":
		for i := range x {
			x[i] = float32(le.Uint16(raw[2*i:]))
		}
	case "UINT32":
		for i := range x {
			x[i] = float32(le.Uint32(raw[4*i:]))
		}
	case "UINT64":
		for i := range x {
			x[i] = float32(le.Uint64(raw[8*i:]))
		}
	}
	return nil
}

// halfToFloat32 widens an IEEE 754 binary16 value exactly.
func halfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	case frac == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: frac * 2^-24, exact in float32.
	f := float32(frac) * (1.0 / (1 << 24))
	if sign != 0 {
		f = -f
	}
	return f
}

// appendRawFP32 appends out as little-endian FP32 bytes.
func appendRawFP32(b []byte, out []float32) []byte {
	for _, f := range out {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}
