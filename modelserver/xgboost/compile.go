package xgboost

import (
	"errors"
	"fmt"
	"math"
)

// rawModel is what every format decodes to: XGBoost's own node arrays and
// learner parameters, not yet checked. compile checks and flattens it.
type rawModel struct {
	objective   string
	booster     string    // "gbtree" or "dart"; anything else is refused
	baseScore   []float32 // one value, or one per output group (3.1+)
	numFeatures int
	numClass    int
	numTarget   int
	trees       []rawTree
	treeInfo    []int32
	weightDrop  []float32 // dart: each tree's weight; nil for gbtree
}

type rawTree struct {
	left, right []int32
	feature     []int32
	cond        []float32 // thresholds, and leaf values at leaves
	defaultLeft []bool
	splitType   []uint8 // nil or all zero: numerical splits only
}

// Limits that keep a hostile file from making compile allocate or loop
// without bound; real models are far below them.
const (
	maxFeatures = 1 << 24
	maxGroups   = marginBuf // PredictBatch keeps one row's margins on its stack
	maxNodes    = 1 << 28
)

func (r *rawModel) compile() (*Model, error) {
	switch r.booster {
	case "gbtree":
		if r.weightDrop != nil {
			return nil, errors.New("gbtree model has dart tree weights")
		}
	case "dart":
		if len(r.weightDrop) != len(r.trees) {
			return nil, fmt.Errorf("dart model has %d tree weights for %d trees", len(r.weightDrop), len(r.trees))
		}
	default:
		return nil, fmt.Errorf("booster %q is not supported (only gbtree and dart)", r.booster)
	}
	if r.numFeatures <= 0 || r.numFeatures > maxFeatures {
		return nil, fmt.Errorf("num_feature %d out of range", r.numFeatures)
	}
	if r.numTarget > 1 {
		return nil, fmt.Errorf("multi-target models (num_target %d) are not supported", r.numTarget)
	}
	if r.numClass < 0 || r.numClass > maxGroups {
		return nil, fmt.Errorf("num_class %d out of range [0,%d]", r.numClass, maxGroups)
	}
	groups := max(r.numClass, 1)
	obj, err := lookupObjective(r.objective, groups)
	if err != nil {
		return nil, err
	}
	if len(r.baseScore) != 1 && len(r.baseScore) != groups {
		return nil, fmt.Errorf("base_score has %d values for %d output groups (want 1 or %d)", len(r.baseScore), groups, groups)
	}
	margin := make([]float32, groups)
	for g := range margin {
		b := r.baseScore[min(g, len(r.baseScore)-1)]
		if math.IsNaN(float64(b)) || math.IsInf(float64(b), 0) {
			return nil, fmt.Errorf("base_score %v is not finite", b)
		}
		if margin[g], err = obj.probToMargin(b); err != nil {
			return nil, err
		}
	}
	if len(r.treeInfo) != len(r.trees) {
		return nil, fmt.Errorf("tree_info has %d entries for %d trees", len(r.treeInfo), len(r.trees))
	}
	m := &Model{
		obj:         obj,
		numFeatures: r.numFeatures,
		numGroups:   groups,
		baseMargin:  margin,
		trees:       make([]tree, len(r.trees)),
	}
	total := 0
	for i := range r.trees {
		total += len(r.trees[i].left)
		if total > maxNodes {
			return nil, errors.New("model has too many nodes")
		}
	}
	m.nodes = make([]node, 0, total)
	m.leaf = make([]float32, 0, total)
	for i := range r.trees {
		g := r.treeInfo[i]
		if g < 0 || int(g) >= groups {
			return nil, fmt.Errorf("tree %d: output group %d out of range [0,%d)", i, g, groups)
		}
		m.trees[i] = tree{root: int32(len(m.nodes)), group: g}
		if m.trees[i].depth, err = r.trees[i].flatten(m, r.numFeatures); err != nil {
			return nil, fmt.Errorf("tree %d: %w", i, err)
		}
		if r.weightDrop != nil {
			// Dart adds leaf*weight, the product rounded to float32, in
			// tree order: the same float32 product made once here.
			w := r.weightDrop[i]
			if math.IsNaN(float64(w)) || math.IsInf(float64(w), 0) {
				return nil, fmt.Errorf("tree %d: dart weight %v is not finite", i, w)
			}
			for j := m.trees[i].root; j < int32(len(m.leaf)); j++ {
				m.leaf[j] = float32(m.leaf[j] * w)
			}
		}
	}
	return m, nil
}

// flatten appends the tree to m.nodes breadth-first from the root, so that
// siblings are adjacent and children follow parents, and returns its depth.
// Walking from the root also proves the tree is a tree: every reachable
// index is in range and is visited once.
func (t *rawTree) flatten(m *Model, numFeatures int) (int32, error) {
	n := len(t.left)
	if n == 0 {
		return 0, errors.New("tree has no nodes")
	}
	if len(t.right) != n || len(t.feature) != n || len(t.cond) != n || len(t.defaultLeft) != n ||
		(t.splitType != nil && len(t.splitType) != n) {
		return 0, fmt.Errorf("node arrays disagree on the node count %d", n)
	}
	base := int32(len(m.nodes))
	seen := make([]bool, n)
	seen[0] = true
	// queue[k] is the original index of the node placed at base+k, at
	// depth depths[k].
	queue := make([]int32, 1, n)
	depths := make([]int32, 1, n)
	maxDepth := int32(0)
	for k := 0; k < len(queue); k++ {
		i, d := queue[k], depths[k]
		self := base + int32(k)
		l, r := t.left[i], t.right[i]
		c := t.cond[i]
		if math.IsNaN(float64(c)) {
			return 0, fmt.Errorf("node %d: NaN split condition or leaf value", i)
		}
		if l == -1 {
			if r != -1 {
				return 0, fmt.Errorf("node %d: has a right child but no left child", i)
			}
			// Nothing is >= NaN, so a leaf's only exit is its left
			// child: itself.
			m.nodes = append(m.nodes, node{cond: float32(math.NaN()), left: self})
			m.leaf = append(m.leaf, c)
			maxDepth = max(maxDepth, d)
			continue
		}
		if l < 0 || int(l) >= n || r < 0 || int(r) >= n {
			return 0, fmt.Errorf("node %d: child index out of range", i)
		}
		if seen[l] || seen[r] || l == r {
			return 0, fmt.Errorf("node %d: child already used (not a tree)", i)
		}
		seen[l], seen[r] = true, true
		if t.splitType != nil && t.splitType[i] != 0 {
			return 0, fmt.Errorf("node %d: categorical splits are not supported", i)
		}
		f := t.feature[i]
		if f < 0 || int(f) >= numFeatures {
			return 0, fmt.Errorf("node %d: split feature %d out of range [0,%d)", i, f, numFeatures)
		}
		feat := uint32(f)
		if !t.defaultLeft[i] {
			feat += uint32(numFeatures) // the copy where missing is +Inf
		}
		m.nodes = append(m.nodes, node{cond: c, feat: feat, left: base + int32(len(queue))})
		m.leaf = append(m.leaf, 0)
		queue = append(queue, l, r)
		depths = append(depths, d+1, d+1)
	}
	return maxDepth, nil
}
