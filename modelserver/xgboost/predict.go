package xgboost

import "fmt"

// blockRows is how many rows are evaluated together, tree by tree, as
// XGBoost's CPU predictor does: a tree's nodes stay in cache across the
// block, and the block's margins stay in a small stack buffer.
const blockRows = 64

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
			m.obj.transform(margins[r*ng:(r+1)*ng], o[r*no:(r+1)*no])
		}
	}
	return nil
}

// margins writes the raw scores of rows rows into margins (rows*groups),
// tree by tree. Each output is the base margin plus the leaf values in tree
// order, added in float32, which is the order and precision XGBoost uses.
func (m *Model) margins(x []float32, rows int, margins []float32) {
	nf, ng := m.numFeatures, m.numGroups
	for i := range margins {
		margins[i] = m.baseMargin
	}
	nodes := m.nodes
	for t, root := range m.roots {
		g := int(m.group[t])
		for r := 0; r < rows; r++ {
			row := x[r*nf : r*nf+nf : r*nf+nf]
			i := root
			for {
				n := nodes[i]
				if n.left == 0 {
					margins[r*ng+g] += n.cond
					break
				}
				v := row[n.feat&featMask]
				i = n.left
				// Right when v >= cond; a NaN compares false both ways
				// and goes right unless its default is left.
				if v >= n.cond || (v != v && n.feat&defaultLeft == 0) {
					i++
				}
			}
		}
	}
}
