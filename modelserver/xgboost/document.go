package xgboost

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// JSON and UBJSON models share one schema (XGBoost's model JSON schema), so
// both decode to a generic document and one function reads the schema.

func decodeJSONModel(data []byte) (*rawModel, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	// Numbers stay text so thresholds parse straight to float32: going
	// through float64 first would round twice.
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("parse json: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parse json: trailing data after the model")
	}
	return fromDocument(doc)
}

func decodeUBJSONModel(data []byte) (*rawModel, error) {
	doc, err := decodeUBJSON(data)
	if err != nil {
		return nil, err
	}
	return fromDocument(doc)
}

func fromDocument(doc any) (*rawModel, error) {
	root, err := object(doc, "document")
	if err != nil {
		return nil, err
	}
	// Booster serialisation (pickles, 1.6+) wraps the model with its
	// training configuration: {"Config": ..., "Model": {...}}.
	if inner, ok := root["Model"]; ok {
		if root, err = object(inner, "Model"); err != nil {
			return nil, err
		}
	}
	if v, ok := root["version"]; ok {
		if err := checkVersion(v); err != nil {
			return nil, err
		}
	}
	learner, err := field[map[string]any](root, "learner", object)
	if err != nil {
		return nil, err
	}
	params, err := field[map[string]any](learner, "learner_model_param", object)
	if err != nil {
		return nil, err
	}
	r := &rawModel{}
	if r.baseScore, err = baseScores(params["base_score"]); err != nil {
		return nil, fmt.Errorf("base_score: %w", err)
	}
	if r.numFeatures, err = intField(params, "num_feature", true); err != nil {
		return nil, err
	}
	if r.numClass, err = intField(params, "num_class", true); err != nil {
		return nil, err
	}
	if r.numTarget, err = intField(params, "num_target", false); err != nil {
		return nil, err
	}
	obj, err := field[map[string]any](learner, "objective", object)
	if err != nil {
		return nil, err
	}
	if r.objective, err = field[string](obj, "name", str); err != nil {
		return nil, err
	}
	gb, err := field[map[string]any](learner, "gradient_booster", object)
	if err != nil {
		return nil, err
	}
	if r.booster, err = field[string](gb, "name", str); err != nil {
		return nil, err
	}
	switch r.booster {
	case "gbtree":
	case "dart":
		// Dart wraps a gbtree and weighs each tree.
		if r.weightDrop, err = field[[]float32](gb, "weight_drop", float32s); err != nil {
			return nil, err
		}
		if gb, err = field[map[string]any](gb, "gbtree", object); err != nil {
			return nil, err
		}
	default:
		return r, nil // compile names the unsupported booster
	}
	model, err := field[map[string]any](gb, "model", object)
	if err != nil {
		return nil, err
	}
	if r.treeInfo, err = field[[]int32](model, "tree_info", int32s); err != nil {
		return nil, err
	}
	trees, err := field[[]any](model, "trees", array)
	if err != nil {
		return nil, err
	}
	r.trees = make([]rawTree, len(trees))
	for i, t := range trees {
		tree, err := object(t, "tree")
		if err != nil {
			return nil, fmt.Errorf("tree %d: %w", i, err)
		}
		if r.trees[i], err = treeFromDocument(tree); err != nil {
			return nil, fmt.Errorf("tree %d: %w", i, err)
		}
	}
	return r, nil
}

func treeFromDocument(tree map[string]any) (rawTree, error) {
	var t rawTree
	var err error
	// Vector leaves (XGBoost 2.0's multi_strategy=multi_output_tree) hold
	// one value per target in each leaf; 1.x writes 0 here, later releases 1
	// for scalar leaves.
	if tp, ok := tree["tree_param"].(map[string]any); ok {
		n, err := intField(tp, "size_leaf_vector", false)
		if err != nil {
			return t, fmt.Errorf("tree_param: %w", err)
		}
		if n > 1 {
			return t, fmt.Errorf("size_leaf_vector %d: vector leaves (multi_strategy=multi_output_tree) are not supported", n)
		}
	}
	if t.left, err = field[[]int32](tree, "left_children", int32s); err != nil {
		return t, err
	}
	if t.right, err = field[[]int32](tree, "right_children", int32s); err != nil {
		return t, err
	}
	if t.feature, err = field[[]int32](tree, "split_indices", int32s); err != nil {
		return t, err
	}
	if t.cond, err = field[[]float32](tree, "split_conditions", float32s); err != nil {
		return t, err
	}
	dl, err := field[[]int32](tree, "default_left", int32s)
	if err != nil {
		return t, err
	}
	t.defaultLeft = make([]bool, len(dl))
	for i, v := range dl {
		t.defaultLeft[i] = v != 0
	}
	if _, ok := tree["split_type"]; ok {
		st, err := field[[]int32](tree, "split_type", int32s)
		if err != nil {
			return t, err
		}
		t.splitType = make([]uint8, len(st))
		for i, v := range st {
			if v != 0 {
				t.splitType[i] = 1
			}
		}
	}
	return t, nil
}

// field reads key from obj with conv, naming the key in errors.
func field[T any](obj map[string]any, key string, conv func(any, string) (T, error)) (T, error) {
	v, ok := obj[key]
	if !ok {
		var zero T
		return zero, fmt.Errorf("missing %q", key)
	}
	out, err := conv(v, key)
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

func object(v any, what string) (map[string]any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: want an object, got %s", what, kind(v))
	}
	return m, nil
}

func array(v any, what string) ([]any, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: want an array, got %s", what, kind(v))
	}
	return a, nil
}

func str(v any, what string) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: want a string, got %s", what, kind(v))
	}
	return s, nil
}

func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any, []float32, []float64, []int32, []int64, []uint8:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	}
	return "a number"
}

// intField reads learner parameters, which XGBoost writes as strings ("3").
func intField(obj map[string]any, key string, required bool) (int, error) {
	v, ok := obj[key]
	if !ok {
		if required {
			return 0, fmt.Errorf("missing %q", key)
		}
		return 0, nil
	}
	n, err := toInt(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	if n < math.MinInt32 || n > math.MaxInt32 {
		return 0, fmt.Errorf("%s: %d out of range", key, n)
	}
	return int(n), nil
}

// Model format versions read here: XGBoost writes its release as
// "version": [major, minor, patch] beside "learner". The schema of 1.x, 2.x
// and 3.x is the one this package reads (2.0 made base_score a vector
// string, 3.1 one value per output group); a later major release may not
// be, so it is refused rather than misread.
const minMajor, maxMajor = 1, 3

// checkVersion reads the document's version and refuses releases whose
// format is not known here.
func checkVersion(v any) error {
	var parts []int64
	switch a := v.(type) {
	case []any:
		for _, x := range a {
			if _, ok := x.(string); ok {
				return fmt.Errorf("version: want [major, minor, patch] numbers, got a string in it")
			}
			n, err := toInt(x)
			if err != nil {
				return fmt.Errorf("version: %w", err)
			}
			parts = append(parts, n)
		}
	case []int32:
		for _, x := range a {
			parts = append(parts, int64(x))
		}
	case []int64:
		parts = a
	case []uint8:
		for _, x := range a {
			parts = append(parts, int64(x))
		}
	default:
		return fmt.Errorf("version: want [major, minor, patch], got %s", kind(v))
	}
	if len(parts) != 3 {
		return fmt.Errorf("version: want [major, minor, patch], got %d numbers", len(parts))
	}
	if parts[0] < minMajor || parts[0] > maxMajor {
		return fmt.Errorf("model written by XGBoost %d.%d.%d: only the model formats of XGBoost %d.x to %d.x are supported", parts[0], parts[1], parts[2], minMajor, maxMajor)
	}
	return nil
}

// baseScores reads base_score: "5E-1" in 1.x, "[5E-1]" from 2.0, and from
// 3.1 one value per output group, "[1E-1,3E-1,6E-1]" (compile checks the
// count against the model's groups).
func baseScores(v any) ([]float32, error) {
	s, ok := v.(string)
	if !ok || !strings.HasPrefix(s, "[") {
		f, err := toFloat32(v)
		if err != nil {
			return nil, err
		}
		return []float32{f}, nil
	}
	if !strings.HasSuffix(s, "]") {
		return nil, fmt.Errorf("%q: a vector must end with ]", s)
	}
	items := strings.Split(s[1:len(s)-1], ",")
	if len(items) > maxGroups {
		return nil, fmt.Errorf("%d values, more than %d output groups", len(items), maxGroups)
	}
	out := make([]float32, len(items))
	for i, it := range items {
		f, err := toFloat32(strings.TrimSpace(it))
		if err != nil {
			return nil, fmt.Errorf("value %d of %q: %w", i, s, err)
		}
		out[i] = f
	}
	return out, nil
}

func toInt(v any) (int64, error) {
	switch x := v.(type) {
	case json.Number:
		return strconv.ParseInt(string(x), 10, 64)
	case string:
		return strconv.ParseInt(x, 10, 64)
	case int64:
		return x, nil
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	case float32:
		if x == float32(int32(x)) {
			return int64(x), nil
		}
	case float64:
		if x == float64(int32(x)) {
			return int64(x), nil
		}
	}
	return 0, fmt.Errorf("want an integer, got %s", kind(v))
}

func toFloat32(v any) (float32, error) {
	switch x := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 32)
		return float32(f), err
	case string:
		f, err := strconv.ParseFloat(x, 32)
		return float32(f), err
	case float32:
		return x, nil
	case float64:
		return float32(x), nil
	case int64:
		return float32(x), nil
	}
	return 0, fmt.Errorf("want a number, got %s", kind(v))
}

func int32s(v any, what string) ([]int32, error) {
	switch x := v.(type) {
	case []int32:
		return x, nil
	case []uint8:
		out := make([]int32, len(x))
		for i, b := range x {
			out[i] = int32(b)
		}
		return out, nil
	case []int64:
		out := make([]int32, len(x))
		for i, n := range x {
			if n < math.MinInt32 || n > math.MaxInt32 {
				return nil, fmt.Errorf("%s[%d]: %d out of range", what, i, n)
			}
			out[i] = int32(n)
		}
		return out, nil
	case []any:
		out := make([]int32, len(x))
		for i, e := range x {
			n, err := toInt(e)
			if err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", what, i, err)
			}
			if n < math.MinInt32 || n > math.MaxInt32 {
				return nil, fmt.Errorf("%s[%d]: %d out of range", what, i, n)
			}
			out[i] = int32(n)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s: want an array of integers, got %s", what, kind(v))
}

func float32s(v any, what string) ([]float32, error) {
	switch x := v.(type) {
	case []float32:
		return x, nil
	case []float64:
		out := make([]float32, len(x))
		for i, f := range x {
			out[i] = float32(f)
		}
		return out, nil
	case []any:
		out := make([]float32, len(x))
		for i, e := range x {
			f, err := toFloat32(e)
			if err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", what, i, err)
			}
			out[i] = f
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s: want an array of numbers, got %s", what, kind(v))
}
