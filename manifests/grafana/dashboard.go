// Package grafana builds mlscale's Grafana dashboard with the typed
// grafana-foundation-sdk, so panels, units and variables are checked by the
// compiler rather than by eye in a JSON file. mlscale.json beside this file is
// its output (go generate ./manifests/grafana/); a test keeps them equal.
package grafana

//go:generate go run ./gen -out mlscale.json

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// UID is the dashboard's stable identifier (links and provisioning use it).
const UID = "mlscale-autoscaling"

// Selectors used by every model-server query. The namespace and pod labels
// are the ones the Prometheus Operator's PodMonitor (components/prometheus)
// and the usual kubernetes-pods scrape config attach.
const (
	podSel = `namespace="$namespace", pod=~"$pod"`
	hpaSel = `namespace="$namespace", horizontalpodautoscaler=~"$hpa"`
)

// Queries returns every panel's PromQL by panel title, in panel order. The
// test parses each one; the dashboard is built from the same list.
func Queries() []Panel {
	return []Panel{
		{Title: "Requests per second, per pod", Unit: "reqps", Description: "What the HPA's requests_per_second reads, per pod (the adapter averages it over the workload's pods).",
			Targets: []Target{{`sum by (pod) (rate(mlscale_requests_total{` + podSel + `}[$__rate_interval]))`, "{{pod}}"}}},
		{Title: "Rows predicted per second, per pod", Unit: "short", Description: "Work, not requests: a 10000-row request costs 20 times a 500-row one.",
			Targets: []Target{{`sum by (pod) (rate(mlscale_predicted_rows_total{` + podSel + `}[$__rate_interval]))`, "{{pod}}"}}},
		{Title: "Batch size (mean rows per request)", Unit: "short",
			Targets: []Target{{`sum by (pod) (rate(mlscale_batch_size_sum{` + podSel + `}[$__rate_interval])) / sum by (pod) (rate(mlscale_batch_size_count{` + podSel + `}[$__rate_interval]))`, "{{pod}}"}}},
		{Title: "Server latency p50 / p99", Unit: "s", Description: "Server-side time per request, all pods pooled.",
			Targets: []Target{
				{`histogram_quantile(0.5, sum by (le) (rate(mlscale_request_duration_seconds_bucket{` + podSel + `}[$__rate_interval])))`, "p50"},
				{`histogram_quantile(0.99, sum by (le) (rate(mlscale_request_duration_seconds_bucket{` + podSel + `}[$__rate_interval])))`, "p99"},
			}},
		{Title: "In-flight requests, per pod", Unit: "short",
			Targets: []Target{{`sum by (pod) (mlscale_inflight_requests{` + podSel + `})`, "{{pod}}"}}},
		{Title: "Errors per second, by code", Unit: "reqps", Description: "Non-2xx answers; should stay at zero through scale-out and scale-in.",
			Targets: []Target{{`sum by (code) (rate(mlscale_requests_total{` + podSel + `, code!~"2.."}[$__rate_interval]))`, "{{code}}"}}},
		{Title: "CPU cores, per pod", Unit: "short", Description: "cpu_usage_cores from process_cpu_seconds_total; compare with the 0.5-core request the seed's CPU HPA divides by.",
			Targets: []Target{{`sum by (pod) (rate(process_cpu_seconds_total{` + podSel + `}[$__rate_interval]))`, "{{pod}}"}}},
		{Title: "Replicas: current and desired", Unit: "short", Description: "kube-state-metrics' view of each HPA: what runs, what the controller wants, and the bounds.",
			Targets: []Target{
				{`sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas{` + hpaSel + `})`, "{{horizontalpodautoscaler}} current"},
				{`sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas{` + hpaSel + `})`, "{{horizontalpodautoscaler}} desired"},
				{`sum by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_max_replicas{` + hpaSel + `})`, "{{horizontalpodautoscaler}} max"},
			}},
		{Title: "HPA metrics against their targets", Unit: "short", Description: "Each metric the HPA scales on (status) next to its target (spec); desired = ceil(current replicas * value / target).",
			Targets: []Target{
				{`sum by (horizontalpodautoscaler, metric_name, metric_target_type) (kube_horizontalpodautoscaler_status_target_metric{` + hpaSel + `})`, "{{horizontalpodautoscaler}} {{metric_name}} ({{metric_target_type}})"},
				{`sum by (horizontalpodautoscaler, metric_name, metric_target_type) (kube_horizontalpodautoscaler_spec_target_metric{` + hpaSel + `})`, "{{horizontalpodautoscaler}} {{metric_name}} target ({{metric_target_type}})"},
			}},
	}
}

// Panel is one time-series panel.
type Panel struct {
	Title, Unit, Description string
	Targets                  []Target
}

// Target is one query and its legend.
type Target struct {
	Expr, Legend string
}

// Dashboard builds the dashboard.
func Dashboard() (dashboard.Dashboard, error) {
	ds := common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
	label := func(q string) dashboard.StringOrMap { return dashboard.StringOrMap{String: cog.ToPtr(q)} }
	b := dashboard.NewDashboardBuilder("mlscale: model-server autoscaling").
		Uid(UID).
		Description("Load, latency and replicas of model servers scaled by mlscale, with each HPA metric against its target.").
		Tags([]string{"mlscale", "autoscaling", "seldon"}).
		Refresh("10s").
		Time("now-30m", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("namespace").Label("Namespace").Datasource(ds).
			Query(label(`label_values(mlscale_requests_total, namespace)`)).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged)).
		WithVariable(dashboard.NewQueryVariableBuilder("pod").Label("Pod").Datasource(ds).
			Query(label(`label_values(mlscale_requests_total{namespace="$namespace"}, pod)`)).
			Multi(true).IncludeAll(true).AllValue(".*").
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged)).
		WithVariable(dashboard.NewQueryVariableBuilder("hpa").Label("HPA").Datasource(ds).
			Query(label(`label_values(kube_horizontalpodautoscaler_info{namespace="$namespace"}, horizontalpodautoscaler)`)).
			Multi(true).IncludeAll(true).AllValue(".*").
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged))

	// Explicit, stable panel ids: Grafana links and alerts refer to them.
	id := uint32(0)
	next := func() uint32 { id++; return id }
	for i, p := range Queries() {
		if i == 0 {
			b = b.WithRow(dashboard.NewRowBuilder("Load and latency").Id(next()))
		}
		if p.Title == "Replicas: current and desired" {
			b = b.WithRow(dashboard.NewRowBuilder("Scaling").Id(next()))
		}
		tp := timeseries.NewPanelBuilder().
			Id(next()).
			Title(p.Title).
			Description(p.Description).
			Datasource(ds).
			Unit(p.Unit).
			Min(0).
			Height(8).
			Span(12).
			Legend(common.NewVizLegendOptionsBuilder().
				DisplayMode(common.LegendDisplayModeTable).
				Placement(common.LegendPlacementBottom).
				ShowLegend(true).
				Calcs([]string{"mean", "max", "lastNotNull"}))
		for j, t := range p.Targets {
			tp = tp.WithTarget(prometheus.NewDataqueryBuilder().
				Expr(t.Expr).
				LegendFormat(t.Legend).
				Range().
				RefId(string(rune('A' + j))))
		}
		b = b.WithPanel(tp)
	}
	d, err := b.Build()
	if err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("building the dashboard: %w", err)
	}
	return d, nil
}

// JSON is the dashboard as Grafana imports it.
func JSON() ([]byte, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the dashboard: %w", err)
	}
	return append(b, '\n'), nil
}
