package xgboost

import (
	"fmt"
	"math"
)

// objective is the part of an XGBoost objective that prediction needs: how
// base_score becomes a margin and how margins become outputs.
type objective struct {
	name string
	// perClass: one output per output group (softprob); otherwise one per row.
	perClass bool
	// probToMargin turns base_score into the starting margin, as the
	// objective's ProbToMargin does in XGBoost.
	probToMargin func(float32) (float32, error)
	// transform turns one row's margins (len = output groups) into its
	// outputs (len = 1 or groups). A switch, not a func value, so the
	// margin buffer PredictBatch passes stays on its stack.
	transform transform
}

type transform uint8

const (
	transformIdentity transform = iota
	transformSigmoid
	transformSoftmax
	transformArgmax
	transformExp
	transformHinge
)

func (t transform) apply(margins, out []float32) {
	switch t {
	case transformIdentity:
		out[0] = margins[0]
	case transformSigmoid:
		out[0] = sigmoid(margins[0])
	case transformSoftmax:
		softmax(margins, out)
	case transformArgmax:
		argmax(margins, out)
	case transformExp:
		out[0] = expf(margins[0])
	case transformHinge:
		// HingeObj: the class, 1 for a positive margin.
		out[0] = 0
		if margins[0] > 0 {
			out[0] = 1
		}
	}
}

func identityMargin(p float32) (float32, error) { return p, nil }

// logMargin is ProbToMargin of the log-link objectives (poisson, gamma,
// tweedie): logf(base_score).
func logMargin(p float32) (float32, error) {
	if !(p > 0) {
		return 0, fmt.Errorf("base_score must be positive for a log-link objective, got %v", p)
	}
	return logf(p), nil
}

// logisticMargin is LogisticRegression::ProbToMargin: -logf(1/p - 1).
func logisticMargin(p float32) (float32, error) {
	if !(p > 0 && p < 1) {
		return 0, fmt.Errorf("base_score must be in (0,1) for a logistic objective, got %v", p)
	}
	return -logf(1/p - 1), nil
}

// sigmoid is XGBoost's common::Sigmoid in float32, including its overflow
// guard (the 1e-16 it adds to the denominator vanishes in float32).
func sigmoid(x float32) float32 {
	x = min(-x, 88.7)
	return 1 / (expf(x) + 1)
}

// softmax is common::Softmax: subtract the max, exponentiate in float32,
// accumulate the sum in float64, divide by the sum rounded to float32.
func softmax(margins, out []float32) {
	wmax := margins[0]
	for _, v := range margins[1:] {
		wmax = max(wmax, v)
	}
	var wsum float64
	for i, v := range margins {
		e := expf(v - wmax)
		out[i] = e
		wsum += float64(e)
	}
	s := float32(wsum)
	for i := range margins {
		out[i] /= s
	}
}

// argmax is multi:softmax's transform: the index of the first largest margin.
func argmax(margins, out []float32) {
	best := 0
	for i, v := range margins {
		if v > margins[best] {
			best = i
		}
	}
	out[0] = float32(best)
}

// expf and logf are C's float functions; computing in float64 and rounding
// once gives the correctly rounded result glibc returns in practice.
func expf(x float32) float32 { return float32(math.Exp(float64(x))) }
func logf(x float32) float32 { return float32(math.Log(float64(x))) }

// lookupObjective is a switch, not a map filled at init, so the package keeps
// no mutable state.
func lookupObjective(name string, numGroups int) (*objective, error) {
	var o objective
	switch name {
	case "multi:softprob":
		o = objective{perClass: true, probToMargin: identityMargin, transform: transformSoftmax}
	case "multi:softmax":
		o = objective{probToMargin: identityMargin, transform: transformArgmax}
	case "binary:logistic", "reg:logistic":
		o = objective{probToMargin: logisticMargin, transform: transformSigmoid}
	case "binary:logitraw":
		// LogisticRaw overrides ProbToMargin: base_score is the margin.
		o = objective{probToMargin: identityMargin, transform: transformIdentity}
	case "reg:squarederror", "reg:linear", "reg:squaredlogerror", "reg:pseudohubererror",
		"reg:absoluteerror", "rank:pairwise", "rank:ndcg", "rank:map":
		o = objective{probToMargin: identityMargin, transform: transformIdentity}
	case "count:poisson", "reg:gamma", "reg:tweedie":
		o = objective{probToMargin: logMargin, transform: transformExp}
	case "binary:hinge":
		o = objective{probToMargin: identityMargin, transform: transformHinge}
	default:
		return nil, fmt.Errorf("objective %q is not supported", name)
	}
	o.name = name
	multi := name == "multi:softprob" || name == "multi:softmax"
	if multi != (numGroups > 1) {
		return nil, fmt.Errorf("objective %q does not fit %d output groups", name, numGroups)
	}
	return &o, nil
}
