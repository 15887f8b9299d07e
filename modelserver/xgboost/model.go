// Package xgboost loads XGBoost gradient-boosted tree ensembles (gbtree) and
// evaluates them in pure Go with XGBoost's own float32 arithmetic, so that a
// model trained in Python serves the same numbers from a static Go binary.
//
// Load reads every container XGBoost 1.x writes for a Booster: the JSON and
// UBJSON model files (Booster.save_model), the legacy binary format, and a
// joblib/pickle dump of a Booster (the seed's model.joblib), whose handle is
// either 1.6+ UBJSON serialisation or the 1.0-1.5 "CONFIG-offset:" layout.
//
// Evaluation matches XGBoost's CPU predictor: features and thresholds are
// compared as float32 (x < threshold goes left), a missing value (NaN) follows
// the node's default direction, leaf values are added in float32 in tree
// order onto the base margin, and the objective's transform (softmax,
// sigmoid, ...) is applied as XGBoost computes it. Objectives: multi:softprob,
// multi:softmax, binary:logistic, reg:logistic, binary:logitraw,
// binary:hinge, reg:squarederror (reg:linear), reg:squaredlogerror,
// reg:pseudohubererror, reg:absoluteerror, count:poisson, reg:gamma,
// reg:tweedie, rank:pairwise/ndcg/map. Boosters: gbtree and dart (whose
// tree weights are folded into the leaves at load). Not supported, with an
// error that says so: gblinear, categorical splits, vector leaves
// (multi-target trees) and survival objectives.
//
// testdata/train.py trains the models and records XGBoost's own predictions;
// the tests hold every format and objective to them.
package xgboost

import (
	"fmt"
	"os"
)

// Model is a loaded tree ensemble. It is immutable after Load and safe for
// concurrent use by any number of goroutines.
type Model struct {
	obj         *objective
	numFeatures int
	numGroups   int       // output groups: num_class, or 1
	baseMargin  []float32 // base_score as a margin (objective's ProbToMargin), one per output group

	// nodes holds every tree, each laid out breadth-first so that a node's
	// right child is always left+1: one 12-byte record per node, one array
	// for the whole ensemble. A step is one comparison, v >= cond, against
	// a row expanded so that missing values already point the node's
	// default way (see expand). A leaf's threshold is NaN and its left
	// child is itself, so every row walks exactly its tree's depth with no
	// leaf test and no data-dependent branch (see margins).
	nodes []node
	leaf  []float32 // leaf values, by node index
	trees []tree    // in boosting order
}

// node is one flattened tree node.
type node struct {
	cond float32 // split threshold; NaN for a leaf, so no value moves it
	feat uint32  // index into the row as expanded by expand: the feature, or numFeatures+feature when missing goes right
	left int32   // index of the left child; the right child is left+1
}

type tree struct {
	root  int32 // index of the root in Model.nodes
	depth int32 // longest root-to-leaf path
	group int32 // output group (XGBoost's tree_info)
}

// Load reads a model file, detecting the format from its content (XGBoost
// JSON, UBJSON, legacy binary, or a joblib/pickle dump of a Booster).
func Load(path string) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load xgboost model: %w", err)
	}
	m, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("load xgboost model %s: %w", path, err)
	}
	return m, nil
}

// Decode parses a model held in memory; see Load.
func Decode(data []byte) (*Model, error) {
	f, err := detect(data)
	if err != nil {
		return nil, err
	}
	raw, err := f.decode(data)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f, err)
	}
	m, err := raw.compile()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f, err)
	}
	return m, nil
}

// NumFeatures is the number of input columns per row.
func (m *Model) NumFeatures() int { return m.numFeatures }

// NumOutputs is the number of values PredictBatch writes per row: the class
// probabilities for multi:softprob, one value otherwise.
func (m *Model) NumOutputs() int {
	if m.obj.perClass {
		return m.numGroups
	}
	return 1
}

// Objective is XGBoost's name for the model's objective, e.g. "multi:softprob".
func (m *Model) Objective() string { return m.obj.name }

// NumTrees is the number of trees in the ensemble.
func (m *Model) NumTrees() int { return len(m.trees) }
