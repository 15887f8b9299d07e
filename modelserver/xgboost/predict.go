package xgboost

import (
	"fmt"
	"math"
	"unsafe"
)

// blockRows is how many rows share the stack buffers before the objective's
// transform runs over them.
const blockRows = 256

// marginBuf and expandBuf size the stack buffers for one block's margins and
// expanded rows; models with many output groups or features use smaller
// blocks, and only models with more than expandBuf/(2*lanes) features need
// a heap buffer (once per batch, never per row).
const (
	marginBuf = 4096
	expandBuf = 8192
	wideBuf   = 1 << 20
)

// PredictBatch evaluates rows laid out row-major in x (len(x) must be
// rows*NumFeatures(); NaN means missing) into out (len(out) must be at least
// rows*NumOutputs()). It allocates nothing for models of up to 512 features.
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
	var mbuf [marginBuf]float32 // compile refuses more groups than this
	var ebuf [expandBuf]float32
	block := min(blockRows, marginBuf/ng, expandBuf/(2*nf))
	expanded := ebuf[:]
	if block < lanes {
		// Too wide for the stack: a heap buffer for one lane group, or
		// for one row when even that would pass a few MiB.
		block = min(lanes, marginBuf/ng)
		if 2*nf*block > wideBuf {
			block = 1
		}
		expanded = make([]float32, 2*nf*block)
	}
	for start := 0; start < rows; start += block {
		n := min(block, rows-start)
		margins := mbuf[:n*ng]
		ex := expanded[:2*nf*n]
		expand(x[start*nf:(start+n)*nf], nf, ex)
		m.margins(ex, n, margins)
		o := out[start*no : (start+n)*no]
		for r := 0; r < n; r++ {
			m.obj.transform.apply(margins[r*ng:(r+1)*ng], o[r*no:(r+1)*no])
		}
	}
	return nil
}

// expand writes each row twice: as given, and with missing values (NaN) as
// +Inf. A node whose missing values go left reads the first copy, where
// NaN >= cond is false; one whose missing values go right reads the second,
// where +Inf >= cond is true. So XGBoost's "missing ? default : (v < cond ?
// left : right)" becomes a single comparison per step.
func expand(x []float32, nf int, ex []float32) {
	inf := float32(math.Inf(1))
	for r := 0; r*nf < len(x); r++ {
		row := x[r*nf : (r+1)*nf]
		lo := ex[2*r*nf : (2*r+1)*nf]
		hi := ex[(2*r+1)*nf : (2*r+2)*nf]
		copy(lo, row)
		for i, v := range row {
			if v != v {
				v = inf
			}
			hi[i] = v
		}
	}
}

// lanes is how many rows walk each tree side by side. A step is a chain of
// dependent loads (node, then feature, then the next node); eight
// independent chains keep the CPU busy while each waits. Eight beat four by
// about a fifth on the iris model; more would run out of registers.
const lanes = 8

// margins writes the raw scores of rows expanded rows (see expand) into
// margins (rows*groups). Each output is the base margin plus the leaf
// values in tree order, added in float32: the order and precision XGBoost
// uses, so results are bit-identical to its predictor.
func (m *Model) margins(ex []float32, rows int, margins []float32) {
	nf2, ng := 2*m.numFeatures, m.numGroups
	for r := 0; r+ng <= len(margins); r += ng {
		copy(margins[r:r+ng], m.baseMargin)
	}
	if rows == 0 {
		return
	}
	// Every child and feature index was proven in range at load (compile)
	// and ex holds exactly rows expanded rows, so the hot loop reads through
	// unsafe pointers instead of paying three bounds checks per step.
	nodes := unsafe.Pointer(unsafe.SliceData(m.nodes))
	leaves := unsafe.Pointer(unsafe.SliceData(m.leaf))
	at := func(i int32) *node { return (*node)(unsafe.Add(nodes, uintptr(i)*unsafe.Sizeof(node{}))) }
	leaf := func(i int32) float32 { return *(*float32)(unsafe.Add(leaves, uintptr(i)*4)) }
	step := func(row unsafe.Pointer, n *node) int32 {
		v := *(*float32)(unsafe.Add(row, uintptr(n.feat)*4))
		return n.left + int32(b2u(v >= n.cond))
	}
	stride := uintptr(nf2) * 4
	r := 0
	for ; r+lanes <= rows; r += lanes {
		x0 := unsafe.Pointer(&ex[r*nf2])
		x1, x2, x3 := unsafe.Add(x0, stride), unsafe.Add(x0, 2*stride), unsafe.Add(x0, 3*stride)
		x4, x5, x6, x7 := unsafe.Add(x0, 4*stride), unsafe.Add(x0, 5*stride), unsafe.Add(x0, 6*stride), unsafe.Add(x0, 7*stride)
		acc := margins[r*ng : (r+lanes)*ng]
		for _, t := range m.trees {
			i0, i1, i2, i3, i4, i5, i6, i7 := t.root, t.root, t.root, t.root, t.root, t.root, t.root, t.root
			// A leaf points to itself, so every lane takes exactly the
			// tree's depth in steps and lanes that land early stay put.
			for d := t.depth; d > 0; d-- {
				i0 = step(x0, at(i0))
				i1 = step(x1, at(i1))
				i2 = step(x2, at(i2))
				i3 = step(x3, at(i3))
				i4 = step(x4, at(i4))
				i5 = step(x5, at(i5))
				i6 = step(x6, at(i6))
				i7 = step(x7, at(i7))
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
		xr := unsafe.Pointer(&ex[r*nf2])
		acc := margins[r*ng : (r+1)*ng]
		for _, t := range m.trees {
			i := t.root
			for d := t.depth; d > 0; d-- {
				i = step(xr, at(i))
			}
			acc[t.group] += leaf(i)
		}
	}
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
