package modelserver

// Predictor is a loaded model. The HTTP layer only needs this much; the
// xgboost package provides the implementation used in production.
type Predictor interface {
	// NumFeatures is the number of input columns per row.
	NumFeatures() int
	// NumOutputs is the number of output values per row (3 class
	// probabilities for the iris model).
	NumOutputs() int
	// PredictBatch evaluates rows laid out row-major in x
	// (len(x) == rows*NumFeatures(), NaN meaning missing) into out
	// (len(out) >= rows*NumOutputs()). It must not allocate per row.
	PredictBatch(x []float32, rows int, out []float32) error
}
