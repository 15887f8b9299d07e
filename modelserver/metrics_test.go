package modelserver_test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/seldon"
	"github.com/mlscale/mlscale/modelserver"
)

func gatherAndCompare(g prometheus.Gatherer, want string, names ...string) error {
	return testutil.GatherAndCompare(g, strings.NewReader(want), names...)
}

// eventuallyGatherAndCompare is gatherAndCompare retried for up to 2 s:
// for series counted after the answer is on the wire (gRPC's stats
// handler sees a refused call's end after its status was sent), a client
// can hold the answer before the count moved.
func eventuallyGatherAndCompare(g prometheus.Gatherer, want string, names ...string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := gatherAndCompare(g, want, names...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMetricsExposition drives known traffic and compares the exposition
// text of the deterministic series; for latency histograms, whose buckets
// depend on timing, it compares the label sets and counts.
func TestMetricsExposition(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, ts := newServer(t, modelserver.Options{
		Registry: reg, DeploymentName: "iris-model-autoscale", PredictorName: "autoscale", PredictorVersion: "v1",
	})
	conn := serveGRPC(t, srv)
	send := func(path, body string, want int) {
		t.Helper()
		if code, b := post(t, ts.URL+path, "application/json", []byte(body)); code != want {
			t.Fatalf("POST %s: status %d, want %d: %s", path, code, want, b)
		}
	}
	rows := func(n int) string {
		return "[" + strings.TrimSuffix(strings.Repeat("[5.1,3.5,1.4,0.2],", n), ",") + "]"
	}
	send("/api/v1.0/predictions", `{"data":{"ndarray":`+rows(1)+`}}`, 200)
	send("/seldon/model/iris-model-autoscale/api/v1.0/predictions", `{"data":{"ndarray":`+rows(500)+`}}`, 200)
	send("/api/v1.0/predictions", `{"data":{"ndarray":`+rows(10000)+`}}`, 200)
	send("/api/v1.0/predictions", `{"data":{"ndarray":[[1,2]]}}`, 400)
	send("/v2/models/iris/infer", `{"inputs":[{"name":"x","shape":[3,4],"datatype":"FP32","data":`+rows(3)+`}]}`, 200)
	send("/v2/models/nope/infer", `{}`, 404)
	if code, _ := get(t, ts.URL+"/ready"); code != 200 { // probes are not prediction requests
		t.Fatalf("/ready: %d", code)
	}
	// The same contract over gRPC: 2 rows through Seldon, 5 through v2,
	// and an unknown model.
	ctx := context.Background()
	vals := []float64{5.1, 3.5, 1.4, 0.2, 5.1, 3.5, 1.4, 0.2}
	if _, err := seldon.NewSeldonClient(conn).Predict(ctx, seldonMsg(&seldon.DefaultData{DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{2, 4}, Values: vals}}})); err != nil {
		t.Fatal(err)
	}
	v2 := inference.NewGRPCInferenceServiceClient(conn)
	if _, err := v2.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "iris",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Datatype: "FP32", Shape: []int64{5, 4}}},
		RawInputContents: [][]byte{make([]byte, 5*4*4)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := v2.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("ModelInfer of an unknown model: %v, want NotFound", err)
	}
	if _, err := seldon.NewModelClient(conn).SendFeedback(ctx, &seldon.Feedback{Reward: 1}); err != nil {
		t.Fatal(err)
	}

	want := `
# HELP mlscale_batch_size Rows per successful prediction request.
# TYPE mlscale_batch_size histogram
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="1"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="2"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="5"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="10"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="20"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="50"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="100"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="200"} 1
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="500"} 2
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="1000"} 2
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="2000"} 2
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="5000"} 2
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="10000"} 3
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="20000"} 3
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="50000"} 3
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="100000"} 3
mlscale_batch_size_bucket{model="iris",protocol="seldon",le="+Inf"} 3
mlscale_batch_size_sum{model="iris",protocol="seldon"} 10501
mlscale_batch_size_count{model="iris",protocol="seldon"} 3
mlscale_batch_size_bucket{model="iris",protocol="v2",le="1"} 0
mlscale_batch_size_bucket{model="iris",protocol="v2",le="2"} 0
mlscale_batch_size_bucket{model="iris",protocol="v2",le="5"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="10"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="20"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="50"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="100"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="200"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="500"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="1000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="2000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="5000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="10000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="20000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="50000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="100000"} 1
mlscale_batch_size_bucket{model="iris",protocol="v2",le="+Inf"} 1
mlscale_batch_size_sum{model="iris",protocol="v2"} 3
mlscale_batch_size_count{model="iris",protocol="v2"} 1
` + batchBuckets("seldon-grpc", 2) + batchBuckets("v2-grpc", 5) + `# HELP mlscale_inflight_requests Prediction requests being served.
# TYPE mlscale_inflight_requests gauge
mlscale_inflight_requests{model="iris"} 0
# HELP mlscale_predicted_rows_total Rows predicted.
# TYPE mlscale_predicted_rows_total counter
mlscale_predicted_rows_total{model="iris"} 10511
# HELP mlscale_requests_total Prediction requests answered, by protocol and HTTP status code.
# TYPE mlscale_requests_total counter
mlscale_requests_total{code="200",model="iris",protocol="seldon"} 3
mlscale_requests_total{code="200",model="iris",protocol="seldon-grpc"} 1
mlscale_requests_total{code="200",model="iris",protocol="v2"} 1
mlscale_requests_total{code="200",model="iris",protocol="v2-grpc"} 1
mlscale_requests_total{code="400",model="iris",protocol="seldon"} 1
mlscale_requests_total{code="404",model="iris",protocol="v2"} 1
mlscale_requests_total{code="404",model="iris",protocol="v2-grpc"} 1
`
	if err := gatherAndCompare(reg, want, "mlscale_batch_size", "mlscale_inflight_requests", "mlscale_predicted_rows_total", "mlscale_requests_total"); err != nil {
		t.Error(err)
	}

	got := histogramCounts(t, reg)
	wantCounts := map[string]uint64{
		`mlscale_request_duration_seconds{model="iris",protocol="seldon"}`:      4,
		`mlscale_request_duration_seconds{model="iris",protocol="v2"}`:          2,
		`mlscale_request_duration_seconds{model="iris",protocol="seldon-grpc"}`: 1,
		`mlscale_request_duration_seconds{model="iris",protocol="v2-grpc"}`:     2,
		// Seldon's executor labels gRPC calls with the full method, "unary"
		// and the gRPC code.
		`seldon_api_executor_server_requests_seconds{code="OK",deployment_name="iris-model-autoscale",method="unary",predictor_name="autoscale",predictor_version="v1",service="/seldon.protos.Seldon/Predict"}`:                    1,
		`seldon_api_executor_server_requests_seconds{code="OK",deployment_name="iris-model-autoscale",method="unary",predictor_name="autoscale",predictor_version="v1",service="/inference.GRPCInferenceService/ModelInfer"}`:       1,
		`seldon_api_executor_server_requests_seconds{code="NotFound",deployment_name="iris-model-autoscale",method="unary",predictor_name="autoscale",predictor_version="v1",service="/inference.GRPCInferenceService/ModelInfer"}`: 1,
		`seldon_api_executor_server_requests_seconds{code="OK",deployment_name="iris-model-autoscale",method="unary",predictor_name="autoscale",predictor_version="v1",service="/seldon.protos.Model/SendFeedback"}`:                1,
		`seldon_api_executor_server_requests_seconds{code="200",deployment_name="iris-model-autoscale",method="post",predictor_name="autoscale",predictor_version="v1",service="predictions"}`:                                      4,
		`seldon_api_executor_server_requests_seconds{code="400",deployment_name="iris-model-autoscale",method="post",predictor_name="autoscale",predictor_version="v1",service="predictions"}`:                                      1,
		`seldon_api_executor_server_requests_seconds{code="404",deployment_name="iris-model-autoscale",method="post",predictor_name="autoscale",predictor_version="v1",service="predictions"}`:                                      1,
	}
	if diff := cmp.Diff(wantCounts, got); diff != "" {
		t.Errorf("latency histogram series and counts (-want +got):\n%s", diff)
	}

	// Seldon's buckets, so its dashboards' histogram_quantile queries work.
	var les []string
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "seldon_api_executor_server_requests_seconds" {
			for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
				les = append(les, fmt.Sprint(b.GetUpperBound()))
			}
		}
	}
	if diff := cmp.Diff(strings.Fields("0.005 0.01 0.025 0.05 0.075 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10"), les); diff != "" {
		t.Errorf("seldon histogram buckets (-want +got):\n%s", diff)
	}

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// batchBuckets is the exposition of mlscale_batch_size for one request
// of n rows.
func batchBuckets(protocol string, n int) string {
	var b strings.Builder
	for _, le := range []int{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000} {
		fmt.Fprintf(&b, "mlscale_batch_size_bucket{model=\"iris\",protocol=%q,le=\"%d\"} %d\n", protocol, le, min(1, max(0, le-n+1)))
	}
	fmt.Fprintf(&b, "mlscale_batch_size_bucket{model=\"iris\",protocol=%q,le=\"+Inf\"} 1\n", protocol)
	fmt.Fprintf(&b, "mlscale_batch_size_sum{model=\"iris\",protocol=%q} %d\n", protocol, n)
	fmt.Fprintf(&b, "mlscale_batch_size_count{model=\"iris\",protocol=%q} 1\n", protocol)
	return b.String()
}

// histogramCounts maps each latency histogram series to its sample count.
func histogramCounts(t *testing.T, g prometheus.Gatherer) map[string]uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "mlscale_request_duration_seconds" && mf.GetName() != "seldon_api_executor_server_requests_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[seriesName(mf.GetName(), m)] = m.GetHistogram().GetSampleCount()
		}
	}
	return out
}

func seriesName(name string, m *dto.Metric) string {
	var ls []string
	for _, l := range m.GetLabel() {
		ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(ls)
	return name + "{" + strings.Join(ls, ",") + "}"
}

// TestMetricsEndpoints scrapes /metrics and /prometheus over HTTP as a
// Prometheus server would: both serve the private registry with the
// server's series and the Go and process collectors, and parse as
// exposition text.
func TestMetricsEndpoints(t *testing.T) {
	_, ts := newServer(t, modelserver.Options{})
	if code, b := post(t, ts.URL+"/api/v1.0/predictions", "application/json", []byte(`{"data":{"ndarray":[[1,2,3,4]]}}`)); code != 200 {
		t.Fatalf("predict: %d %s", code, b)
	}
	for _, path := range []string{"/metrics", "/prometheus", "/seldon/model/iris/prometheus"} {
		t.Run(path, func(t *testing.T) {
			resp, err := http.Get(ts.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			p := expfmt.NewTextParser(model.UTF8Validation)
			mfs, err := p.TextToMetricFamilies(resp.Body)
			if err != nil {
				t.Fatalf("exposition does not parse: %v", err)
			}
			for _, name := range []string{
				"mlscale_requests_total", "mlscale_request_duration_seconds", "mlscale_batch_size",
				"mlscale_predicted_rows_total", "mlscale_inflight_requests", "seldon_api_executor_server_requests_seconds",
				"process_cpu_seconds_total", "go_goroutines",
			} {
				if _, ok := mfs[name]; !ok {
					t.Errorf("%s is missing", name)
				}
			}
			if got := mfs["mlscale_predicted_rows_total"].GetMetric()[0].GetCounter().GetValue(); got != 1 {
				t.Errorf("mlscale_predicted_rows_total = %v, want 1", got)
			}
		})
	}
}
