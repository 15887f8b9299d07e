// Package contract is mlscale's metrics contract (metrics.yaml): the series a
// model server exposes and the metrics the adapter and scaler serve from
// them. The model server, the collector's default rules, the recording rules
// and the Grafana dashboard are tested against it.
package contract

import (
	_ "embed"
	"fmt"
	"regexp"
	"slices"

	"sigs.k8s.io/yaml"
)

//go:embed metrics.yaml
var metricsYAML []byte

// Series is one exposed metric family.
type Series struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"` // counter, gauge or histogram
	Labels  []string `json:"labels"`
	Help    string   `json:"help"`
	Meaning string   `json:"meaning"`
}

// Served is one metric the adapter and the scaler serve by default.
type Served struct {
	Name      string  `json:"name"`
	Series    string  `json:"series"`
	Compute   string  `json:"compute"` // rate, mean, quantile or last
	Quantile  float64 `json:"quantile,omitempty"`
	Aggregate string  `json:"aggregate"`
}

// Contract is metrics.yaml.
type Contract struct {
	Exposed []Series `json:"exposed"`
	Served  []Served `json:"served"`
}

// Metrics returns the contract. metrics.yaml is part of the binary, and
// checked by the package's tests, so an error here is a broken build.
func Metrics() Contract {
	c, err := Parse(metricsYAML)
	if err != nil {
		panic(fmt.Sprintf("contract/metrics.yaml: %v", err))
	}
	return c
}

// Series returns the exposed series named name.
func (c Contract) Series(name string) (Series, bool) {
	i := slices.IndexFunc(c.Exposed, func(s Series) bool { return s.Name == name })
	if i < 0 {
		return Series{}, false
	}
	return c.Exposed[i], true
}

// SeriesNames returns every series name a scrape of a model server carries
// for the exposed families: counters and gauges as named, histograms as
// their _bucket, _sum and _count series.
func (c Contract) SeriesNames() []string {
	var out []string
	for _, s := range c.Exposed {
		if s.Type == "histogram" {
			out = append(out, s.Name+"_bucket", s.Name+"_sum", s.Name+"_count")
			continue
		}
		out = append(out, s.Name)
	}
	return out
}

// ServedNames returns the served metric names in contract order.
func (c Contract) ServedNames() []string {
	var out []string
	for _, s := range c.Served {
		out = append(out, s.Name)
	}
	return out
}

var nameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// computeType is the exposed type each computation reads.
var computeType = map[string]string{"rate": "counter", "mean": "histogram", "quantile": "histogram", "last": "gauge"}

// Parse reads a contract strictly (unknown fields are errors) and checks it
// is consistent: valid unique names, known types, and every served metric
// computed from an exposed series of the type its computation needs.
func Parse(data []byte) (Contract, error) {
	var c Contract
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return c, fmt.Errorf("decoding the metrics contract: %w", err)
	}
	seen := map[string]bool{}
	for i, s := range c.Exposed {
		switch {
		case !nameRE.MatchString(s.Name):
			return c, fmt.Errorf("exposed[%d]: name %q is not a Prometheus metric name", i, s.Name)
		case seen[s.Name]:
			return c, fmt.Errorf("exposed[%d]: %s listed twice", i, s.Name)
		case s.Type != "counter" && s.Type != "gauge" && s.Type != "histogram":
			return c, fmt.Errorf("exposed[%d] %s: type %q, want counter, gauge or histogram", i, s.Name, s.Type)
		case s.Help == "":
			return c, fmt.Errorf("exposed[%d] %s: no help", i, s.Name)
		}
		seen[s.Name] = true
	}
	served := map[string]bool{}
	for i, m := range c.Served {
		s, ok := c.Series(m.Series)
		want, known := computeType[m.Compute]
		switch {
		case m.Name == "" || served[m.Name]:
			return c, fmt.Errorf("served[%d]: name %q empty or listed twice", i, m.Name)
		case !ok:
			return c, fmt.Errorf("served[%d] %s: series %q is not exposed", i, m.Name, m.Series)
		case !known:
			return c, fmt.Errorf("served[%d] %s: compute %q, want rate, mean, quantile or last", i, m.Name, m.Compute)
		case s.Type != want:
			return c, fmt.Errorf("served[%d] %s: compute %s needs a %s, %s is a %s", i, m.Name, m.Compute, want, s.Name, s.Type)
		case (m.Compute == "quantile") != (m.Quantile > 0 && m.Quantile < 1):
			return c, fmt.Errorf("served[%d] %s: quantile %v with compute %s", i, m.Name, m.Quantile, m.Compute)
		}
		served[m.Name] = true
	}
	return c, nil
}
