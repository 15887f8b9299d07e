package xgboost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// XGBoost's legacy binary format (Booster.save_raw("deprecated"), models
// saved without a .json/.ubj name before 2.0), and the 1.0-1.5 Booster
// serialisation that wraps it, which is what pickles from those releases
// (the seed's xgboost 1.5.1 model.joblib) hold. The structs are written raw,
// little-endian, by the C++ code; the sizes below are theirs.

const (
	legacyMagic       = "binf"
	configOffsetMagic = "CONFIG-offset:"

	learnerParamSize = 136 // LearnerModelParamLegacy
	gbtreeParamSize  = 160 // GBTreeModelParam
	treeParamSize    = 148 // TreeParam
	nodeSize         = 20  // RegTree::Node
	nodeStatSize     = 16  // RTreeNodeStat
)

type leReader struct {
	buf []byte
	pos int
}

func (r *leReader) next(n int) ([]byte, error) {
	if n < 0 || n > len(r.buf)-r.pos {
		return nil, fmt.Errorf("truncated at byte %d (wanted %d more bytes)", r.pos, n)
	}
	b := r.buf[r.pos : r.pos+n]
	r.pos += n
	return b, nil
}

func (r *leReader) str() (string, error) {
	b, err := r.next(8)
	if err != nil {
		return "", err
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(len(r.buf)-r.pos) {
		return "", fmt.Errorf("string length %d at byte %d runs past the end", n, r.pos-8)
	}
	b, _ = r.next(int(n))
	return string(b), nil
}

func u32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func i32(b []byte, off int) int32  { return int32(u32(b, off)) }

func decodeLegacy(data []byte) (*rawModel, error) {
	r := &leReader{buf: data}
	if len(data) >= 4 && string(data[:4]) == legacyMagic {
		r.pos = 4
	}
	p, err := r.next(learnerParamSize)
	if err != nil {
		return nil, fmt.Errorf("learner parameters: %w", err)
	}
	m := &rawModel{
		baseScore:   []float32{math.Float32frombits(u32(p, 0))},
		numFeatures: int(min(u32(p, 4), math.MaxInt32)),
		numClass:    int(i32(p, 8)),
		numTarget:   int(min(u32(p, 28), math.MaxInt32)),
	}
	if major := u32(p, 20); major < 1 {
		// Before 1.0 the file has no version and base_score's meaning
		// changed; XGBoost itself converts such files on load.
		return nil, errors.New("models written by XGBoost before 1.0 are not supported; load and re-save it with Booster.save_model(\"model.json\")")
	}
	if m.objective, err = r.str(); err != nil {
		return nil, fmt.Errorf("objective name: %w", err)
	}
	if m.booster, err = r.str(); err != nil {
		return nil, fmt.Errorf("booster name: %w", err)
	}
	if m.booster != "gbtree" && m.booster != "dart" {
		return m, nil // compile names the unsupported booster
	}
	g, err := r.next(gbtreeParamSize)
	if err != nil {
		return nil, fmt.Errorf("gbtree parameters: %w", err)
	}
	numTrees := i32(g, 0)
	if numTrees < 0 || int(numTrees) > (len(data)-r.pos)/treeParamSize {
		return nil, fmt.Errorf("tree count %d does not fit the file", numTrees)
	}
	if leaf := i32(g, 28); leaf != 0 {
		return nil, fmt.Errorf("size_leaf_vector %d: vector leaves are not supported", leaf)
	}
	m.trees = make([]rawTree, numTrees)
	for i := range m.trees {
		if m.trees[i], err = legacyTree(r); err != nil {
			return nil, fmt.Errorf("tree %d: %w", i, err)
		}
	}
	info, err := r.next(4 * int(numTrees))
	if err != nil {
		return nil, fmt.Errorf("tree_info: %w", err)
	}
	m.treeInfo = make([]int32, numTrees)
	for i := range m.treeInfo {
		m.treeInfo[i] = i32(info, 4*i)
	}
	if m.booster == "dart" && numTrees > 0 {
		// Dart::Load: the tree weights, a std::vector<float>.
		b, err := r.next(8)
		if err != nil {
			return nil, fmt.Errorf("dart weights: %w", err)
		}
		n := binary.LittleEndian.Uint64(b)
		if n > uint64(len(data)-r.pos)/4 {
			return nil, fmt.Errorf("dart weight count %d does not fit the file", n)
		}
		w, _ := r.next(4 * int(n))
		m.weightDrop = make([]float32, n)
		for i := range m.weightDrop {
			m.weightDrop[i] = math.Float32frombits(u32(w, 4*i))
		}
	}
	// Attributes and evaluation metric names follow; prediction needs
	// neither.
	return m, nil
}

func legacyTree(r *leReader) (rawTree, error) {
	var t rawTree
	p, err := r.next(treeParamSize)
	if err != nil {
		return t, fmt.Errorf("tree parameters: %w", err)
	}
	n := i32(p, 4)
	if n <= 0 || int(n) > (len(r.buf)-r.pos)/(nodeSize+nodeStatSize) {
		return t, fmt.Errorf("node count %d does not fit the file", n)
	}
	if leaf := i32(p, 20); leaf != 0 {
		return t, fmt.Errorf("size_leaf_vector %d: vector leaves are not supported", leaf)
	}
	nodes, _ := r.next(int(n) * nodeSize)
	if _, err := r.next(int(n) * nodeStatSize); err != nil { // gain, hessian: unused
		return t, err
	}
	t.left = make([]int32, n)
	t.right = make([]int32, n)
	t.feature = make([]int32, n)
	t.cond = make([]float32, n)
	t.defaultLeft = make([]bool, n)
	for i := range t.left {
		b := nodes[i*nodeSize:]
		t.left[i] = i32(b, 4)
		t.right[i] = i32(b, 8)
		sindex := u32(b, 12)
		t.feature[i] = int32(sindex & (1<<31 - 1))
		t.defaultLeft[i] = sindex>>31 != 0
		t.cond[i] = math.Float32frombits(u32(b, 16))
	}
	return t, nil
}

// decodeConfigOffset reads "CONFIG-offset:" + int64 n + n bytes of legacy
// binary model + the JSON training configuration (ignored: prediction needs
// only the model).
func decodeConfigOffset(data []byte) (*rawModel, error) {
	r := &leReader{buf: data, pos: len(configOffsetMagic)}
	b, err := r.next(8)
	if err != nil {
		return nil, err
	}
	n := int64(binary.LittleEndian.Uint64(b))
	if n <= 0 || n > int64(len(data)-r.pos) {
		return nil, fmt.Errorf("model length %d does not fit the %d bytes after the header", n, len(data)-r.pos)
	}
	return decodeLegacy(data[r.pos : r.pos+int(n)])
}
