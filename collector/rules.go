package collector

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
)

// Compute says how a rule turns a pod's window of samples into one value.
type Compute string

const (
	// ComputeRate is the per-second increase of a counter over the window;
	// a counter that goes down has restarted from zero.
	ComputeRate Compute = "rate"
	// ComputeMean is a histogram's mean over the window: Δsum / Δcount.
	ComputeMean Compute = "mean"
	// ComputeQuantile estimates a quantile from the increase of a histogram's
	// buckets over the window, interpolating linearly inside a bucket as
	// PromQL's histogram_quantile does.
	ComputeQuantile Compute = "quantile"
	// ComputeLast is a gauge's newest value.
	ComputeLast Compute = "last"
)

// Rule maps one served metric name to its source series and computation.
type Rule struct {
	// Name is the served metric name (what an HPA names).
	Name string `json:"name"`
	// Series is the exposed metric family: a counter for rate, a histogram
	// (family name, without _bucket/_sum/_count) for mean and quantile, a
	// gauge for last.
	Series string `json:"series"`
	// Compute is rate, mean, quantile or last.
	Compute Compute `json:"compute"`
	// Quantile in (0, 1), only for compute: quantile.
	Quantile float64 `json:"quantile,omitempty"`
	// Labels keeps only the series whose labels equal these; the rest of the
	// series of the family are added up.
	Labels map[string]string `json:"labels,omitempty"`
	// Aggregate combines pods: sum, mean, max or min (the Aggregation
	// vocabulary; avg is accepted for mean); pooled (the default) for mean
	// and quantile. Default for rate and last: sum.
	Aggregate Aggregation `json:"aggregate,omitempty"`
}

// DefaultRules are the metrics served when the config names none, computed
// from the model server's metrics contract (contract/metrics.yaml, which
// contract's tests hold these rules to).
func DefaultRules() []Rule {
	return []Rule{
		{Name: "requests_per_second", Series: "mlscale_requests_total", Compute: ComputeRate, Aggregate: AggSum},
		{Name: "predicted_rows_per_second", Series: "mlscale_predicted_rows_total", Compute: ComputeRate, Aggregate: AggSum},
		{Name: "batch_size", Series: "mlscale_batch_size", Compute: ComputeMean, Aggregate: AggPooled},
		{Name: "inflight_requests", Series: "mlscale_inflight_requests", Compute: ComputeLast, Aggregate: AggSum},
		{Name: "request_duration_p99_seconds", Series: "mlscale_request_duration_seconds", Compute: ComputeQuantile, Quantile: 0.99, Aggregate: AggPooled},
		{Name: "cpu_usage_cores", Series: "process_cpu_seconds_total", Compute: ComputeRate, Aggregate: AggSum},
	}
}

var (
	// Served names become URL path segments and HPA metric names.
	servedNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$`)
	seriesNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// RuleError names the rule and the field a configuration mistake is in.
type RuleError struct {
	Index int    // position in the rules list, from 0
	Rule  string // the rule's name, if it has one
	Field string
	Msg   string
}

func (e *RuleError) Error() string {
	name := e.Rule
	if name == "" {
		name = "(unnamed)"
	}
	return fmt.Sprintf("rules[%d] %q: field %q: %s", e.Index, name, e.Field, e.Msg)
}

// withDefaults fills the aggregation a rule's computation implies and
// spells a given one as the vocabulary does (avg: mean).
func (r Rule) withDefaults() Rule {
	if a, err := ParseAggregation(string(r.Aggregate)); err == nil {
		r.Aggregate = a
	}
	if r.Aggregate == "" {
		switch r.Compute {
		case ComputeMean, ComputeQuantile:
			r.Aggregate = AggPooled
		default:
			r.Aggregate = AggSum
		}
	}
	return r
}

// validate checks one rule; i is its index for the error message.
func (r Rule) validate(i int) error {
	bad := func(field, format string, args ...any) error {
		return &RuleError{Index: i, Rule: r.Name, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if r.Name == "" {
		return bad("name", "required")
	}
	if !servedNameRE.MatchString(r.Name) {
		return bad("name", "%q is not a valid metric name (lower case letters, digits, '_', '-', '.')", r.Name)
	}
	if r.Series == "" {
		return bad("series", "required")
	}
	if !seriesNameRE.MatchString(r.Series) {
		return bad("series", "%q is not a valid Prometheus metric name", r.Series)
	}
	if strings.HasSuffix(r.Series, "_bucket") && (r.Compute == ComputeMean || r.Compute == ComputeQuantile) {
		return bad("series", "name the histogram family (%q), not its _bucket series", strings.TrimSuffix(r.Series, "_bucket"))
	}
	switch r.Compute {
	case ComputeRate, ComputeMean, ComputeLast:
		if r.Quantile != 0 {
			return bad("quantile", "only allowed with compute: quantile")
		}
	case ComputeQuantile:
		if !(r.Quantile > 0 && r.Quantile < 1) || math.IsNaN(r.Quantile) {
			return bad("quantile", "must be in (0, 1), got %v", r.Quantile)
		}
	case "":
		return bad("compute", "required (rate, mean, quantile or last)")
	default:
		return bad("compute", "%q is not one of rate, mean, quantile, last", r.Compute)
	}
	for k := range r.Labels {
		if !labelNameRE.MatchString(k) {
			return bad("labels", "%q is not a valid label name", k)
		}
	}
	if _, err := ParseAggregation(string(r.Aggregate)); err != nil {
		return bad("aggregate", "%v", err)
	}
	if r.Aggregate == AggPooled && r.Compute != ComputeMean && r.Compute != ComputeQuantile {
		return bad("aggregate", "pooled only applies to compute: mean or quantile")
	}
	return nil
}

// ValidateRules fills defaults and checks every rule and that served names
// are unique. The returned rules are sorted by name.
func ValidateRules(rules []Rule) ([]Rule, error) {
	out := make([]Rule, len(rules))
	seen := make(map[string]int, len(rules))
	for i, r := range rules {
		r = r.withDefaults()
		if err := r.validate(i); err != nil {
			return nil, err
		}
		if j, dup := seen[r.Name]; dup {
			return nil, &RuleError{Index: i, Rule: r.Name, Field: "name", Msg: fmt.Sprintf("already served by rules[%d]", j)}
		}
		seen[r.Name] = i
		out[i] = r
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, nil
}

// sourceKey identifies what a rule reads from an exposition: rules that
// read the same family with the same label filter share one stored series.
func (r Rule) sourceKey() string {
	kind := "scalar"
	if r.Compute == ComputeMean || r.Compute == ComputeQuantile {
		kind = "histogram"
	}
	keys := make([]string, 0, len(r.Labels))
	for k := range r.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(kind)
	b.WriteByte('|')
	b.WriteString(r.Series)
	for _, k := range keys {
		fmt.Fprintf(&b, "|%s=%q", k, r.Labels[k])
	}
	return b.String()
}

// Describe is a one-line human description of what the rule serves.
func (r Rule) Describe() string {
	sel := ""
	if len(r.Labels) > 0 {
		keys := make([]string, 0, len(r.Labels))
		for k := range r.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = fmt.Sprintf("%s=%q", k, r.Labels[k])
		}
		sel = "{" + strings.Join(parts, ",") + "}"
	}
	switch r.Compute {
	case ComputeRate:
		return fmt.Sprintf("per-second rate of counter %s%s over the window (resets handled); workloads: %s", r.Series, sel, r.Aggregate)
	case ComputeMean:
		return fmt.Sprintf("mean of histogram %s%s over the window (Δ_sum/Δ_count); workloads: %s", r.Series, sel, r.Aggregate)
	case ComputeQuantile:
		return fmt.Sprintf("q%g of histogram %s%s from bucket increases over the window; workloads: %s", r.Quantile, r.Series, sel, r.Aggregate)
	default:
		return fmt.Sprintf("newest value of gauge %s%s; workloads: %s", r.Series, sel, r.Aggregate)
	}
}
