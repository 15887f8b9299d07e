package manifests

import (
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mlscale/mlscale/contract"
)

// TestRecordingRules parses every PrometheusRule expression with Prometheus's
// parser, checks it reads only series the model server exports by the
// metrics contract (contract/metrics.yaml), keeps the namespace and pod
// labels (the per-pod values are what the PromQL source serves), and that
// every served metric of the contract has a recording rule.
func TestRecordingRules(t *testing.T) {
	objs := renderAll(t)["prometheus"]
	rules := ofKind(objs, "PrometheusRule")
	if len(rules) == 0 {
		t.Fatal("the prometheus overlay has no PrometheusRule")
	}
	c := contract.Metrics()
	exported := map[string]bool{}
	for _, s := range c.SeriesNames() {
		exported[s] = true
	}
	p := parser.NewParser(parser.Options{})
	recorded := map[string]bool{}
	for _, o := range rules {
		groups, _, _ := unstructured.NestedSlice(o.Object, "spec", "groups")
		for _, g := range groups {
			rs, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
			for _, r := range rs {
				rm := r.(map[string]any)
				name, _ := rm["record"].(string)
				expr, _ := rm["expr"].(string)
				t.Run(name, func(t *testing.T) {
					if !strings.HasPrefix(name, "namespace_pod:") {
						t.Errorf("record %q: want level namespace_pod: (the labels it keeps)", name)
					}
					e, err := p.ParseExpr(expr)
					if err != nil {
						t.Fatalf("%q: %v", expr, err)
					}
					// The outermost aggregation must keep namespace and pod.
					var agg *parser.AggregateExpr
					parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
						switch n := n.(type) {
						case *parser.VectorSelector:
							if !exported[n.Name] {
								t.Errorf("reads %q, which the model server does not export", n.Name)
							}
						case *parser.AggregateExpr:
							if agg == nil {
								agg = n
							}
						}
						return nil
					})
					if agg == nil || agg.Without || !containsAll(agg.Grouping, "namespace", "pod") {
						t.Errorf("%q does not aggregate by (namespace, pod)", expr)
					}
					for _, r := range c.Served {
						if strings.Contains(expr, r.Series) {
							recorded[r.Name] = true
						}
					}
				})
			}
		}
	}
	for _, r := range c.Served {
		if !recorded[r.Name] {
			t.Errorf("served metric %s has no recording rule", r.Name)
		}
	}
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}
