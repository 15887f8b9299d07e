// Package ndarray writes numbers as the JSON arrays prediction bodies carry:
// Seldon v1's data.ndarray (a list of rows, [[a,b],[c,d]]) and the flat list
// of data.tensor.values and Open Inference Protocol data ([a,b,c,d]).
//
// It is the one encoder of those bodies: the model server writes its answers
// with it, the load client and the benchmarks their requests. Every function
// appends to a caller's buffer, so a reused buffer costs no allocation per
// request or row, and it imports only strconv and math, so a client that
// uses it pulls in nothing else.
package ndarray

import (
	"math"
	"strconv"
)

// NonFinite says how NaN and ±Inf are written: JSON has no numbers for them.
type NonFinite uint8

const (
	// Null writes them as null: strict JSON, what the model server answers
	// (a client reads null as a missing value).
	Null NonFinite = iota
	// Bare writes them as strconv does (NaN, +Inf, -Inf): not strict JSON,
	// but what the load client sends from a rows CSV that holds them, so the
	// model server reads each as that value (Python's json, and so Seldon's
	// python wrapper, reads NaN).
	Bare
)

// Float is a number type this package writes.
type Float interface{ float32 | float64 }

// AppendNumber appends v as the shortest text that parses back to the same
// F (float32 text is half the bytes of float64 text for the same value, and
// a client parsing it as float32 gets exactly that value).
func AppendNumber[F Float](b []byte, v F, nf NonFinite) []byte {
	f := float64(v)
	if nf == Null && (math.IsNaN(f) || math.IsInf(f, 0)) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, bitSize[F]())
}

// AppendFlat appends x as one list: [a,b,c].
func AppendFlat[F Float](b []byte, x []F, nf NonFinite) []byte {
	b = append(b, '[')
	for i, v := range x {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendNumber(b, v, nf)
	}
	return append(b, ']')
}

// AppendRows appends the first rows*cols values of x (row-major) as a list
// of rows of cols values each: [[a,b],[c,d]].
func AppendRows[F Float](b []byte, x []F, rows, cols int, nf NonFinite) []byte {
	b = append(b, '[')
	for r := range rows {
		if r > 0 {
			b = append(b, ',')
		}
		b = AppendFlat(b, x[r*cols:(r+1)*cols], nf)
	}
	return append(b, ']')
}

// AppendRequest appends a Seldon v1 prediction request as the seed's client
// sent it: {"data":{"ndarray":ROWS}} with ROWS as AppendRows writes them.
func AppendRequest[F Float](b []byte, x []F, rows, cols int, nf NonFinite) []byte {
	b = append(b, `{"data":{"ndarray":`...)
	b = AppendRows(b, x, rows, cols, nf)
	return append(b, "}}"...)
}

// bitSize is strconv's bit size of F.
func bitSize[F Float]() int {
	var z F
	if _, ok := any(z).(float32); ok {
		return 32
	}
	return 64
}
