package xgboost

import (
	"bytes"
	"errors"
	"fmt"
)

// format is one container a model can arrive in.
type format int

const (
	formatUnknown format = iota
	formatJSON
	formatUBJSON
	formatLegacy
	formatConfig
	formatPickle
)

func (f format) String() string {
	switch f {
	case formatJSON:
		return "xgboost json"
	case formatUBJSON:
		return "xgboost ubjson"
	case formatLegacy:
		return "xgboost legacy binary"
	case formatConfig:
		return "xgboost 1.0-1.5 serialisation"
	case formatPickle:
		return "pickle"
	}
	return "unknown format"
}

func (f format) decode(data []byte) (*rawModel, error) {
	switch f {
	case formatJSON:
		return decodeJSONModel(data)
	case formatUBJSON:
		return decodeUBJSONModel(data)
	case formatLegacy:
		return decodeLegacy(data)
	case formatConfig:
		return decodeConfigOffset(data)
	case formatPickle:
		return decodePickle(data)
	}
	return nil, errors.New("unknown format")
}

// detect picks the format from the first bytes, never from a file name:
// operators copy models around under any name (the seed's model.joblib).
func detect(data []byte) (format, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	switch {
	case len(data) == 0:
		return formatUnknown, errors.New("file is empty")
	case len(trimmed) > 0 && trimmed[0] == '{' && (len(trimmed) == 1 || isJSONAfterBrace(trimmed[1])):
		return formatJSON, nil
	case data[0] == '{':
		return formatUBJSON, nil
	case bytes.HasPrefix(data, []byte(legacyMagic)):
		return formatLegacy, nil
	case bytes.HasPrefix(data, []byte(configOffsetMagic)):
		return formatConfig, nil
	case data[0] == 0x80 || isCompressedJoblib(data):
		return formatPickle, nil
	case bytes.HasPrefix(data, []byte("bs64")):
		return formatUnknown, fmt.Errorf("base64-wrapped legacy models are not supported; re-save with Booster.save_model(\"model.json\")")
	}
	return formatUnknown, fmt.Errorf("unrecognised model format (want XGBoost JSON, UBJSON, legacy binary, or a joblib/pickle dump of a Booster); file starts with %q", data[:min(len(data), 8)])
}

// isJSONAfterBrace tells JSON from UBJSON after '{': JSON has whitespace,
// a quote or '}', UBJSON a type marker for the first key's length.
func isJSONAfterBrace(b byte) bool {
	switch b {
	case ' ', '\t', '\r', '\n', '"', '}':
		return true
	}
	return false
}

// detectHandle is detect for a pickled Booster's handle, which holds a
// model, never another pickle (so decoding cannot recurse).
func detectHandle(data []byte) (format, error) {
	f, err := detect(data)
	if err != nil {
		return formatUnknown, err
	}
	if f == formatPickle {
		return formatUnknown, fmt.Errorf("booster handle is itself a pickle")
	}
	return f, nil
}
