package grafana

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/mlscale/mlscale/contract"
)

// kubeStateMetricsHPA are the kube-state-metrics series of HPAs the dashboard
// may read (kube-state-metrics docs, horizontalpodautoscaler-metrics.md).
var kubeStateMetricsHPA = []string{
	"kube_horizontalpodautoscaler_info",
	"kube_horizontalpodautoscaler_spec_max_replicas",
	"kube_horizontalpodautoscaler_spec_min_replicas",
	"kube_horizontalpodautoscaler_spec_target_metric",
	"kube_horizontalpodautoscaler_status_target_metric",
	"kube_horizontalpodautoscaler_status_current_replicas",
	"kube_horizontalpodautoscaler_status_desired_replicas",
}

// exposedSeries are the series names a model server exposes by the metrics
// contract (contract/metrics.yaml: counters and gauges as named, histograms
// as their _bucket, _sum and _count series), and kube-state-metrics' HPA
// series.
func exposedSeries() map[string]bool {
	out := map[string]bool{}
	for _, s := range contract.Metrics().SeriesNames() {
		out[s] = true
	}
	for _, s := range kubeStateMetricsHPA {
		out[s] = true
	}
	return out
}

func TestCommittedJSONIsCurrent(t *testing.T) {
	want, err := JSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("mlscale.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("mlscale.json is stale; run go generate ./manifests/grafana/\n%s", cmp.Diff(string(want), string(got)))
	}
}

// grafanaVars replaces the dashboard's template variables and Grafana's
// macros with values PromQL accepts, as Grafana does before sending a query.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$namespace", "model", "$pod", ".*", "$hpa", ".*")

// labelValues matches Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.+), *([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

type jsonDashboard struct {
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ H, W, X, Y int } `json:"gridPos"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
		FieldConfig struct {
			Defaults struct {
				Unit string `json:"unit"`
			} `json:"defaults"`
		} `json:"fieldConfig"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// TestEveryQueryParses parses every PromQL query in the committed JSON with
// Prometheus's own parser and checks each series it selects exists: in the
// model server's metrics contract (via the collector's default rules) or in
// kube-state-metrics. A typo in a metric name fails here, not on a blank
// chart in production.
func TestEveryQueryParses(t *testing.T) {
	raw, err := os.ReadFile("mlscale.json")
	if err != nil {
		t.Fatal(err)
	}
	var d jsonDashboard
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	known := exposedSeries()
	p := parser.NewParser(parser.Options{})
	used := map[string]bool{}
	check := func(where, expr string) {
		e, err := p.ParseExpr(grafanaVars.Replace(expr))
		if err != nil {
			t.Errorf("%s: %q: %v", where, expr, err)
			return
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				used[vs.Name] = true
				if !known[vs.Name] {
					t.Errorf("%s: selects %q, which neither the model server nor kube-state-metrics exports", where, vs.Name)
				}
			}
			return nil
		})
	}
	var queries int
	ids := map[int]bool{}
	for _, pn := range d.Panels {
		if ids[pn.ID] || pn.ID == 0 {
			t.Errorf("panel %q: id %d is zero or repeated", pn.Title, pn.ID)
		}
		ids[pn.ID] = true
		if pn.Type == "row" {
			continue
		}
		if pn.Datasource == nil || pn.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource is not the dashboard's $datasource", pn.Title)
		}
		if pn.FieldConfig.Defaults.Unit == "" {
			t.Errorf("panel %q: no unit", pn.Title)
		}
		if len(pn.Targets) == 0 {
			t.Errorf("panel %q: no queries", pn.Title)
		}
		for _, tg := range pn.Targets {
			queries++
			check(fmt.Sprintf("panel %q query %s", pn.Title, tg.RefID), tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		q, ok := v.Query.(string)
		if v.Type != "query" || !ok {
			continue
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, q)
			continue
		}
		queries++
		check("variable "+v.Name, m[1])
	}
	if queries < 10 {
		t.Errorf("parsed %d queries; the dashboard has lost panels", queries)
	}
	// Every series behind a served metric of the contract has a panel.
	for _, r := range contract.Metrics().Served {
		if !used[r.Series] && !used[r.Series+"_bucket"] && !used[r.Series+"_sum"] {
			t.Errorf("served metric %s (series %s) has no panel", r.Name, r.Series)
		}
	}
	for _, s := range []string{"kube_horizontalpodautoscaler_status_current_replicas", "kube_horizontalpodautoscaler_status_desired_replicas", "kube_horizontalpodautoscaler_status_target_metric", "kube_horizontalpodautoscaler_spec_target_metric"} {
		if !used[s] {
			t.Errorf("no panel reads %s", s)
		}
	}
}

// TestPanelsDoNotOverlap: Grafana stacks overlapping panels unpredictably.
func TestPanelsDoNotOverlap(t *testing.T) {
	raw, err := os.ReadFile("mlscale.json")
	if err != nil {
		t.Fatal(err)
	}
	var d jsonDashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	for i, a := range d.Panels {
		if a.GridPos.X+a.GridPos.W > 24 {
			t.Errorf("panel %q is wider than the grid", a.Title)
		}
		for _, b := range d.Panels[i+1:] {
			ga, gb := a.GridPos, b.GridPos
			if ga.X < gb.X+gb.W && gb.X < ga.X+ga.W && ga.Y < gb.Y+gb.H && gb.Y < ga.Y+ga.H {
				t.Errorf("panels %q and %q overlap", a.Title, b.Title)
			}
		}
	}
	titles := []string{}
	for _, p := range d.Panels {
		titles = append(titles, p.Title)
	}
	if !slices.Contains(titles, "Server latency p50 / p99") {
		t.Errorf("no latency panel in %q", titles)
	}
}
