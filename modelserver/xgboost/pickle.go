package xgboost

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// A joblib or pickle dump of an xgboost.core.Booster, as the seed saves its
// model: NEWOBJ of the class, then BUILD with the state dict whose "handle"
// is a bytearray of the Booster serialisation (UBJSON from XGBoost 1.6 on,
// "CONFIG-offset:" + legacy binary before). gopickle does the unpickling;
// only the Booster class and bytearray may be named, so a pickle can't make
// this package build anything else.

// maxDecompressed bounds a compressed joblib file's content.
const maxDecompressed = 1 << 30

func isCompressedJoblib(data []byte) bool {
	return len(data) >= 2 && ((data[0] == 0x1f && data[1] == 0x8b) || // gzip
		(data[0] == 0x78 && (uint16(data[0])<<8|uint16(data[1]))%31 == 0)) // zlib
}

func decodePickle(data []byte) (*rawModel, error) {
	if isCompressedJoblib(data) {
		var err error
		if data, err = decompress(data); err != nil {
			return nil, err
		}
	}
	handle, err := unpickleBooster(data)
	if err != nil {
		return nil, err
	}
	f, err := detectHandle(handle)
	if err != nil {
		return nil, fmt.Errorf("booster handle: %w", err)
	}
	raw, err := f.decode(handle)
	if err != nil {
		return nil, fmt.Errorf("booster handle (%s): %w", f, err)
	}
	return raw, nil
}

func decompress(data []byte) ([]byte, error) {
	var r io.ReadCloser
	var err error
	if data[0] == 0x1f {
		r, err = gzip.NewReader(bytes.NewReader(data))
	} else {
		r, err = zlib.NewReader(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("decompress joblib: %w", err)
	}
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, maxDecompressed+1))
	if err != nil {
		return nil, fmt.Errorf("decompress joblib: %w", err)
	}
	if len(out) > maxDecompressed {
		return nil, fmt.Errorf("decompress joblib: content larger than %d bytes", maxDecompressed)
	}
	if len(out) == 0 || out[0] != 0x80 {
		return nil, errors.New("compressed joblib does not hold a pickle")
	}
	return out, nil
}

func unpickleBooster(data []byte) (handle []byte, err error) {
	if err := checkPickle(data); err != nil {
		return nil, err
	}
	// gopickle type-asserts some stack values without checking; a hostile
	// pickle must give an error, not take the process down.
	defer func() {
		if p := recover(); p != nil {
			handle, err = nil, fmt.Errorf("malformed pickle: %v", p)
		}
	}()
	u := pickle.NewUnpickler(bytes.NewReader(data))
	u.FindClass = findClass
	v, err := u.Load()
	if err != nil {
		return nil, fmt.Errorf("unpickle: %w", err)
	}
	b, ok := v.(*booster)
	if !ok {
		return nil, fmt.Errorf("pickle holds %T, not an xgboost.core.Booster", v)
	}
	switch h := b.handle.(type) {
	case *types.ByteArray:
		return []byte(*h), nil
	case []byte:
		return h, nil
	case nil:
		return nil, errors.New("pickled Booster has no handle")
	}
	return nil, fmt.Errorf("pickled Booster handle is %T, want bytes", b.handle)
}

func findClass(module, name string) (any, error) {
	switch module + "." + name {
	case "xgboost.core.Booster":
		return boosterClass{}, nil
	case "builtins.bytearray", "__builtin__.bytearray":
		return bytearrayClass{}, nil
	case "_codecs.encode":
		// Protocol 2 spells bytes as _codecs.encode(str, "latin1").
		return latin1Encode{}, nil
	}
	return nil, fmt.Errorf("pickle refers to %s.%s; only a pickled xgboost.core.Booster is supported", module, name)
}

type boosterClass struct{}

func (boosterClass) PyNew(args ...any) (any, error) { return &booster{}, nil }
func (boosterClass) Call(args ...any) (any, error)  { return &booster{}, nil }

// booster keeps the one attribute of Booster.__getstate__ that matters.
type booster struct{ handle any }

func (b *booster) PyDictSet(key, value any) error {
	if key == "handle" {
		b.handle = value
	}
	return nil
}

type bytearrayClass struct{}

// Call is bytearray(...) as pickles spell it: bytes from protocol 3 on,
// (str, "latin-1") or _codecs.encode's bytes in protocol 2.
func (bytearrayClass) Call(args ...any) (any, error) {
	switch len(args) {
	case 0:
		return types.NewByteArray(), nil
	case 1:
		if b, ok := args[0].([]byte); ok {
			return types.NewByteArrayFromSlice(b), nil
		}
	case 2:
		b, err := latin1Encode{}.Call(args...)
		if err != nil {
			return nil, err
		}
		return types.NewByteArrayFromSlice(b.([]byte)), nil
	}
	return nil, fmt.Errorf("bytearray from %d arguments (%T)", len(args), args[0])
}

type latin1Encode struct{}

// Call turns a str whose characters are all below 256 into those bytes.
func (latin1Encode) Call(args ...any) (any, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("encode: want (str, encoding), got %d arguments", len(args))
	}
	s, ok := args[0].(string)
	if !ok || (args[1] != "latin-1" && args[1] != "latin1") {
		return nil, fmt.Errorf("encode: want a str and latin-1, got %T and %v", args[0], args[1])
	}
	out := make([]byte, 0, len(s))
	for _, c := range s {
		if c > 0xff {
			return nil, errors.New("encode: character outside latin-1")
		}
		out = append(out, byte(c))
	}
	return out, nil
}

// checkPickle walks the opcodes before gopickle sees them and refuses any
// length that runs past the end of the data. gopickle allocates a declared
// length before reading, so without this a few bytes claiming a terabyte
// would exhaust memory. This only measures arguments; it builds nothing.
func checkPickle(data []byte) error {
	pos := 0
	need := func(n uint64) error {
		if n > uint64(len(data)-pos) {
			return fmt.Errorf("pickle opcode at byte %d: length %d runs past the end", pos, n)
		}
		pos += int(n)
		return nil
	}
	line := func() error {
		i := bytes.IndexByte(data[pos:], '\n')
		if i < 0 {
			return fmt.Errorf("pickle opcode at byte %d: unterminated argument", pos)
		}
		pos += i + 1
		return nil
	}
	for pos < len(data) {
		op := data[pos]
		pos++
		var err error
		switch op {
		case '.': // STOP; joblib may append raw array data after it
			return nil
		case '(', ')', ']', '}', 'N', 0x88, 0x89, 'a', 'e', 's', 'u', 't', 0x85, 0x86, 0x87,
			'l', 'd', 'o', 0x81, 0x92, 0x93, 'R', 'b', '0', '1', '2', 0x94, 0x8f, 0x90, 0x91,
			0x97, 0x98, 'Q':
		case 0x80, 'K', 'h', 'q', 0x82:
			err = need(1)
		case 'M', 0x83:
			err = need(2)
		case 'J', 'j', 'r', 0x84:
			err = need(4)
		case 'G':
			err = need(8)
		case 0x95: // FRAME: its content is more opcodes, checked as they come
			if err = need(8); err == nil && binary.LittleEndian.Uint64(data[pos-8:]) > uint64(len(data)-pos) {
				err = fmt.Errorf("pickle frame at byte %d runs past the end", pos-9)
			}
		case 'U', 'C', 0x8c, 0x8a: // 1-byte length
			if err = need(1); err == nil {
				err = need(uint64(data[pos-1]))
			}
		case 'T', 'B', 'X', 0x8b: // 4-byte length
			if err = need(4); err == nil {
				err = need(uint64(binary.LittleEndian.Uint32(data[pos-4:])))
			}
		case 0x8d, 0x8e, 0x96: // 8-byte length
			if err = need(8); err == nil {
				err = need(binary.LittleEndian.Uint64(data[pos-8:]))
			}
		case 'I', 'L', 'F', 'S', 'V', 'g', 'p', 'P':
			err = line()
		case 'c', 'i':
			if err = line(); err == nil {
				err = line()
			}
		default:
			return fmt.Errorf("pickle: unknown opcode 0x%02x at byte %d", op, pos-1)
		}
		if err != nil {
			return err
		}
	}
	return errors.New("pickle: no STOP opcode")
}
