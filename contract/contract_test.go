package contract

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// scrapeModelServer runs the real model server with the seed's iris model
// on loopback, answers one Seldon and one Open Inference Protocol request,
// and returns its /metrics as parsed families.
func scrapeModelServer(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	m, err := xgboost.Load("../modelserver/xgboost/testdata/model.joblib")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := modelserver.New(modelserver.Options{Predictor: m, ModelName: "iris", DeploymentName: "iris", PredictorName: "default"})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	for _, r := range []struct{ path, body string }{
		{"/api/v1.0/predictions", `{"data":{"ndarray":[[5.1,3.5,1.4,0.2],[6,3,5,2]]}}`},
		{"/v2/models/iris/infer", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}`},
	} {
		resp, err := http.Post(hs.URL+r.path, "application/json", strings.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %s", r.path, resp.Status)
		}
	}
	resp, err := http.Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// TestModelServerExposition: the real model server exposes every series of
// the contract with its type, help and label names, and no mlscale_ or
// seldon_ series the contract does not list.
func TestModelServerExposition(t *testing.T) {
	c := Metrics()
	fams := scrapeModelServer(t)
	for _, s := range c.Exposed {
		t.Run(s.Name, func(t *testing.T) {
			f := fams[s.Name]
			if f == nil {
				t.Fatalf("not exposed")
			}
			if got := strings.ToLower(f.GetType().String()); got != s.Type {
				t.Errorf("type %s, contract says %s", got, s.Type)
			}
			if f.GetHelp() != s.Help {
				t.Errorf("help %q, contract says %q", f.GetHelp(), s.Help)
			}
			if len(f.GetMetric()) == 0 {
				t.Fatal("no samples")
			}
			for _, m := range f.GetMetric() {
				var names []string
				for _, l := range m.GetLabel() {
					names = append(names, l.GetName())
				}
				want := slices.Clone(s.Labels)
				slices.Sort(names)
				slices.Sort(want)
				if d := cmp.Diff(want, names, cmpopts.EquateEmpty()); d != "" {
					t.Errorf("label names (-contract +exposed):\n%s", d)
				}
			}
		})
	}
	for name := range fams {
		if _, ok := c.Series(name); !ok && (strings.HasPrefix(name, "mlscale_") || strings.HasPrefix(name, "seldon_")) {
			t.Errorf("%s is exposed but not in the contract", name)
		}
	}
}

// TestDefaultRulesAreTheServedMetrics: the collector's default rules (what
// the adapter and scaler serve without a config) are the contract's served
// list, in order.
func TestDefaultRulesAreTheServedMetrics(t *testing.T) {
	var got []Served
	for _, r := range collector.DefaultRules() {
		got = append(got, Served{Name: r.Name, Series: r.Series, Compute: string(r.Compute), Quantile: r.Quantile, Aggregate: string(r.Aggregate)})
	}
	if d := cmp.Diff(Metrics().Served, got); d != "" {
		t.Errorf("collector.DefaultRules differ from contract/metrics.yaml (-contract +rules):\n%s", d)
	}
}

func TestParseRejects(t *testing.T) {
	ok := "exposed:\n- {name: a_total, type: counter, labels: [], help: h}\n- {name: g, type: gauge, labels: [], help: h}\n"
	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", "exposd: []\n", "unknown field"},
		{"bad type", "exposed:\n- {name: a, type: summary, help: h}\n", `type "summary"`},
		{"bad name", "exposed:\n- {name: a-b, type: counter, help: h}\n", "not a Prometheus metric name"},
		{"twice", "exposed:\n- {name: a, type: counter, help: h}\n- {name: a, type: counter, help: h}\n", "listed twice"},
		{"no help", "exposed:\n- {name: a, type: counter}\n", "no help"},
		{"served from nothing", ok + "served:\n- {name: x, series: nope, compute: rate, aggregate: sum}\n", `"nope" is not exposed`},
		{"rate of a gauge", ok + "served:\n- {name: x, series: g, compute: rate, aggregate: sum}\n", "needs a counter"},
		{"unknown compute", ok + "served:\n- {name: x, series: g, compute: avg, aggregate: sum}\n", `compute "avg"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Parse([]byte(ok)); err != nil {
		t.Errorf("valid contract rejected: %v", err)
	}
}
