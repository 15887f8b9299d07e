package xgboost

import (
	"fmt"
	"unsafe"
)

// blockRows is how many rows share one stack buffer of margins before the
// objective's transform runs over them.
const blockRows = 256

// marginBuf is the stack buffer for one block's margins; models with more
// output groups than fit at blockRows rows use smaller blocks.
const marginBuf = 4096

// PredictBatch evaluates rows laid out row-major in x (len(x) must be
// rows*NumFeatures(); NaN means missing) into out (len(out) must be at least
// rows*NumOutputs()). It allocates nothing.
func (m *Model) PredictBatch(x []float32, rows int, out []float32) error {
	nf, ng, no := m.numFeatures, m.numGroups, m.NumOutputs()
	if rows < 0 {
		return fmt.Errorf("rows must not be negative, got %d", rows)
	}
	if len(x) != rows*nf {
		return fmt.Errorf("got %d values for %d rows of %d features", len(x), rows, nf)
	}
	if len(out) < rows*no {
		return fmt.Errorf("output has room for %d values, need %d", len(out), rows*no)
	}
	if ng > marginBuf {
		return fmt.Errorf("model has %d output groups, more than %d supported", ng, marginBuf)
	}
	block := min(blockRows, marginBuf/ng)
	var buf [marginBuf]float32
	for start := 0; start < rows; start += block {
		n := min(block, rows-start)
		margins := buf[:n*ng]
		m.margins(x[start*nf:(start+n)*nf], n, margins)
		o := out[start*no : (start+n)*no]
		for r := 0; r < n; r++ {
			m.obj.transform.apply(margins[r*ng:(r+1)*ng], o[r*no:(r+1)*no])
		}
	}
	return nil
}

// lanes is how many rows walk each tree side by side. A step is a chain of
// dependent loads (node, then feature, then the next node); eight
// independent chains keep the CPU busy while each waits. Eight beat four by
// about a fifth on the iris model; more would run out of registers.
const lanes = 8

// margins writes the raw scores of rows rows into margins (rows*groups).
// Each output is the base margin plus the leaf values in tree order, added
// in float32: the order and precision XGBoost uses, so results are
// bit-identical to its predictor. len(x) must be rows*numFeatures.
func (m *Model) margins(x []float32, rows int, margins []float32) {
	nf, ng := m.numFeatures, m.numGroups
	for i := range margins {
		margins[i] = m.baseMargin
	}
	if rows == 0 {
		return
	}
	// Every child and feature index was proven in range at load (compile)
	// and x holds exactly rows*nf values, so the hot loop reads through
	// unsafe pointers instead of paying three bounds checks per step.
	nodes := unsafe.Pointer(unsafe.SliceData(m.nodes))
	leaves := unsafe.Pointer(unsafe.SliceData(m.leaf))
	at := func(i int32) *node { return (*node)(unsafe.Add(nodes, uintptr(i)*unsafe.Sizeof(node{}))) }
	leaf := func(i int32) float32 { return *(*float32)(unsafe.Add(leaves, uintptr(i)*4)) }
	feat := func(row unsafe.Pointer, n *node) float32 {
		return *(*float32)(unsafe.Add(row, uintptr(n.feat&featMask)*4))
	}
	stride := uintptr(nf) * 4
	r := 0
	for ; r+lanes <= rows; r += lanes {
		x0 := unsafe.Pointer(&x[r*nf])
		x1, x2, x3 := unsafe.Add(x0, stride), unsafe.Add(x0, 2*stride), unsafe.Add(x0, 3*stride)
		x4, x5, x6, x7 := unsafe.Add(x0, 4*stride), unsafe.Add(x0, 5*stride), unsafe.Add(x0, 6*stride), unsafe.Add(x0, 7*stride)
		acc := margins[r*ng : (r+lanes)*ng]
		for _, t := range m.trees {
			i0, i1, i2, i3, i4, i5, i6, i7 := t.root, t.root, t.root, t.root, t.root, t.root, t.root, t.root
			// A leaf points to itself, so every lane takes exactly the
			// tree's depth in steps and lanes that land early stay put.
			for d := t.depth; d > 0; d-- {
				n0, n1, n2, n3 := at(i0), at(i1), at(i2), at(i3)
				n4, n5, n6, n7 := at(i4), at(i5), at(i6), at(i7)
				i0 = n0.left + n0.right(feat(x0, n0))
				i1 = n1.left + n1.right(feat(x1, n1))
				i2 = n2.left + n2.right(feat(x2, n2))
				i3 = n3.left + n3.right(feat(x3, n3))
				i4 = n4.left + n4.right(feat(x4, n4))
				i5 = n5.left + n5.right(feat(x5, n5))
				i6 = n6.left + n6.right(feat(x6, n6))
				i7 = n7.left + n7.right(feat(x7, n7))
			}
			g := int(t.group)
			acc[g] += leaf(i0)
			acc[ng+g] += leaf(i1)
			acc[2*ng+g] += leaf(i2)
			acc[3*ng+g] += leaf(i3)
			acc[4*ng+g] += leaf(i4)
			acc[5*ng+g] += leaf(i5)
			acc[6*ng+g] += leaf(i6)
			acc[7*ng+g] += leaf(i7)
		}
	}
	for ; r < rows; r++ {
		xr := unsafe.Pointer(&x[r*nf])
		acc := margins[r*ng : (r+1)*ng]
		for _, t := range m.trees {
			i := t.root
			for d := t.depth; d > 0; d-- {
				n := at(i)
				i = n.left + n.right(feat(xr, n))
			}
			acc[t.group] += leaf(i)
		}
	}
}

// right is 1 when v goes to the right child: v >= cond, or v is missing
// (NaN compares false both ways) and the default direction is right. It is
// arithmetic on the comparison results, not a branch: which way a row goes
// is data and would be mispredicted half the time.
func (n *node) right(v float32) int32 {
	return int32(b2u(!(v < n.cond)) & (b2u(v >= n.cond) | n.feat>>31))
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
