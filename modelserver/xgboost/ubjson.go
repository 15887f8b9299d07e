package xgboost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// UBJSON (ubjson.org, draft 12) as XGBoost writes it: big-endian numbers,
// object keys without the 'S' marker, and typed arrays ('[$d#L<count>') for
// the node arrays. No maintained Go UBJSON library is available here and the
// format is small, so this is a strict decoder of the whole spec except
// typed containers of zero-byte types, which XGBoost never writes and which
// would let a few bytes claim a huge array.
//
// Values decode to: map[string]any, []any, string, int64, float32, float64,
// bool, nil; typed arrays decode to []float32 ('d'), []float64 ('D'), []uint8
// ('U'), []int32 ('i', 'I', 'l') or []int64 ('L').

// maxDepth bounds container nesting; XGBoost models nest about 8 deep.
const maxDepth = 64

type ubjDecoder struct {
	buf []byte
	pos int
}

func decodeUBJSON(data []byte) (any, error) {
	d := &ubjDecoder{buf: data}
	v, err := d.value(0)
	if err != nil {
		return nil, fmt.Errorf("ubjson at byte %d: %w", d.pos, err)
	}
	if d.pos != len(data) {
		return nil, fmt.Errorf("ubjson: %d bytes of trailing data", len(data)-d.pos)
	}
	return v, nil
}

var errShort = errors.New("unexpected end of data")

func (d *ubjDecoder) next(n int) ([]byte, error) {
	if n < 0 || n > len(d.buf)-d.pos {
		return nil, errShort
	}
	b := d.buf[d.pos : d.pos+n]
	d.pos += n
	return b, nil
}

func (d *ubjDecoder) marker() (byte, error) {
	for {
		b, err := d.next(1)
		if err != nil {
			return 0, err
		}
		if b[0] != 'N' { // no-op, allowed anywhere a marker is
			return b[0], nil
		}
	}
}

func (d *ubjDecoder) value(depth int) (any, error) {
	m, err := d.marker()
	if err != nil {
		return nil, err
	}
	return d.valueOf(m, depth)
}

func (d *ubjDecoder) valueOf(m byte, depth int) (any, error) {
	switch m {
	case 'Z':
		return nil, nil
	case 'T':
		return true, nil
	case 'F':
		return false, nil
	case 'i', 'U', 'I', 'l', 'L':
		return d.integer(m)
	case 'd':
		b, err := d.next(4)
		if err != nil {
			return nil, err
		}
		return math.Float32frombits(binary.BigEndian.Uint32(b)), nil
	case 'D':
		b, err := d.next(8)
		if err != nil {
			return nil, err
		}
		return math.Float64frombits(binary.BigEndian.Uint64(b)), nil
	case 'C':
		b, err := d.next(1)
		if err != nil {
			return nil, err
		}
		return string(b), nil
	case 'S', 'H': // a high-precision number is kept as its decimal text
		return d.str()
	case '[':
		if depth >= maxDepth {
			return nil, errors.New("containers nested too deeply")
		}
		return d.array(depth + 1)
	case '{':
		if depth >= maxDepth {
			return nil, errors.New("containers nested too deeply")
		}
		return d.object(depth + 1)
	}
	return nil, fmt.Errorf("unknown type marker %q", m)
}

func (d *ubjDecoder) integer(m byte) (int64, error) {
	switch m {
	case 'i':
		b, err := d.next(1)
		if err != nil {
			return 0, err
		}
		return int64(int8(b[0])), nil
	case 'U':
		b, err := d.next(1)
		if err != nil {
			return 0, err
		}
		return int64(b[0]), nil
	case 'I':
		b, err := d.next(2)
		if err != nil {
			return 0, err
		}
		return int64(int16(binary.BigEndian.Uint16(b))), nil
	case 'l':
		b, err := d.next(4)
		if err != nil {
			return 0, err
		}
		return int64(int32(binary.BigEndian.Uint32(b))), nil
	case 'L':
		b, err := d.next(8)
		if err != nil {
			return 0, err
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	return 0, fmt.Errorf("type marker %q is not an integer", m)
}

// length reads a length or count: an integer that must be non-negative and
// no larger than the bytes left, given each element takes at least minSize.
func (d *ubjDecoder) length(minSize int) (int, error) {
	m, err := d.marker()
	if err != nil {
		return 0, err
	}
	n, err := d.integer(m)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("negative length %d", n)
	}
	if n > int64(len(d.buf)-d.pos)/int64(minSize) {
		return 0, fmt.Errorf("length %d runs past the end of the data", n)
	}
	return int(n), nil
}

func (d *ubjDecoder) str() (string, error) {
	n, err := d.length(1)
	if err != nil {
		return "", err
	}
	b, err := d.next(n)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// elemSize is the encoded size of one element of a typed container.
func elemSize(t byte) int {
	switch t {
	case 'i', 'U', 'C':
		return 1
	case 'I':
		return 2
	case 'l', 'd':
		return 4
	case 'L', 'D':
		return 8
	}
	return 1 // strings and containers: at least a length or end marker
}

// header reads the optional '$type' and '#count' after '[' or '{'.
// count is -1 when the container is ended by a marker instead.
func (d *ubjDecoder) header() (typ byte, count int, err error) {
	count = -1
	if d.pos < len(d.buf) && d.buf[d.pos] == '$' {
		d.pos++
		b, err := d.next(1)
		if err != nil {
			return 0, 0, err
		}
		typ = b[0]
		switch typ {
		case 'Z', 'T', 'F', 'N':
			return 0, 0, fmt.Errorf("typed container of zero-size type %q is not supported", typ)
		}
		if d.pos >= len(d.buf) || d.buf[d.pos] != '#' {
			return 0, 0, errors.New("typed container without a count")
		}
	}
	if d.pos < len(d.buf) && d.buf[d.pos] == '#' {
		d.pos++
		if count, err = d.length(elemSize(typ)); err != nil {
			return 0, 0, err
		}
	}
	return typ, count, nil
}

func (d *ubjDecoder) array(depth int) (any, error) {
	typ, count, err := d.header()
	if err != nil {
		return nil, err
	}
	if typ != 0 {
		return d.typedArray(typ, count, depth)
	}
	var out []any
	if count >= 0 {
		out = make([]any, 0, count)
	}
	for i := 0; count < 0 || i < count; i++ {
		m, err := d.marker()
		if err != nil {
			return nil, err
		}
		if count < 0 && m == ']' {
			break
		}
		v, err := d.valueOf(m, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if out == nil {
		out = []any{}
	}
	return out, nil
}

func (d *ubjDecoder) typedArray(typ byte, count, depth int) (any, error) {
	switch typ {
	case 'd':
		b, err := d.next(4 * count)
		if err != nil {
			return nil, err
		}
		out := make([]float32, count)
		for i := range out {
			out[i] = math.Float32frombits(binary.BigEndian.Uint32(b[4*i:]))
		}
		return out, nil
	case 'D':
		b, err := d.next(8 * count)
		if err != nil {
			return nil, err
		}
		out := make([]float64, count)
		for i := range out {
			out[i] = math.Float64frombits(binary.BigEndian.Uint64(b[8*i:]))
		}
		return out, nil
	case 'U':
		b, err := d.next(count)
		if err != nil {
			return nil, err
		}
		return append([]uint8(nil), b...), nil
	case 'i', 'I', 'l':
		out := make([]int32, count)
		for i := range out {
			v, err := d.integer(typ)
			if err != nil {
				return nil, err
			}
			out[i] = int32(v)
		}
		return out, nil
	case 'L':
		out := make([]int64, count)
		for i := range out {
			v, err := d.integer(typ)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	out := make([]any, count)
	for i := range out {
		v, err := d.valueOf(typ, depth)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (d *ubjDecoder) object(depth int) (any, error) {
	typ, count, err := d.header()
	if err != nil {
		return nil, err
	}
	out := map[string]any{}
	for i := 0; count < 0 || i < count; i++ {
		if count < 0 {
			// An untyped, uncounted object ends at '}' where a key's
			// length marker would be.
			for d.pos < len(d.buf) && d.buf[d.pos] == 'N' {
				d.pos++
			}
			if d.pos < len(d.buf) && d.buf[d.pos] == '}' {
				d.pos++
				break
			}
		}
		key, err := d.str()
		if err != nil {
			return nil, fmt.Errorf("object key: %w", err)
		}
		var v any
		if typ != 0 {
			v, err = d.valueOf(typ, depth)
		} else {
			v, err = d.value(depth)
		}
		if err != nil {
			return nil, fmt.Errorf("object value %q: %w", key, err)
		}
		out[key] = v
	}
	return out, nil
}
