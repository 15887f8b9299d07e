package tune

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/internal/crdschema"
	"github.com/mlscale/mlscale/loadgen/internal/loadgentest"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/manifests/crds"
	"github.com/mlscale/mlscale/scaler/trigger"
)

// serialized lets one prediction through at a time and holds each for
// hold: a server whose capacity is 1/hold requests/s whatever the machine's
// CPU, so the knee's position is known.
func serialized(hold time.Duration) func(http.Handler) http.Handler {
	var mu sync.Mutex
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				mu.Lock()
				time.Sleep(hold)
				h.ServeHTTP(w, r)
				mu.Unlock()
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

// A ramp against the real model server held to 100 requests/s finds its
// knee below 100/s and reads the server-side signals from its /metrics.
func TestRampFindsKnownCapacity(t *testing.T) {
	srv := loadgentest.ModelServer(t, serialized(10*time.Millisecond))
	o := KneeOptions{SLO: 300 * time.Millisecond} // 30 service times: scheduling noise on a loaded machine stays under it, a 2 s step above 100/s does not
	var lines []string
	steps, err := Ramp(context.Background(), RampConfig{
		URL: srv.URL + "/api/v1.0/predictions", MetricsURL: srv.URL + "/metrics",
		Protocol: request.Seldon, Rows: request.NewRandom(1, 0, 4, 1, 4), RowsPerRequest: 10,
		Start: 40, Factor: 1.25, MaxSteps: 10, StepDuration: 2 * time.Second, Pause: 300 * time.Millisecond, Knee: o,
		Progress: func(s Step, broken string) {
			lines = append(lines, broken)
			t.Logf("%.1f/s offered: %.1f answered, p99 %s, server %.1f req/s %.0f rows/s in-flight %.2f; %s",
				s.Offered, s.Achieved, s.P99, s.RequestsPerSecond, s.RowsPerSecond, s.Inflight, broken)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != len(steps) {
		t.Errorf("%d progress lines for %d steps", len(lines), len(steps))
	}
	if !o.Stop(steps) {
		t.Fatalf("the ramp ended without a sustained break: %d steps", len(steps))
	}
	k, err := FindKnee(steps, o)
	if err != nil {
		t.Fatal(err)
	}
	at := steps[k.Index]
	if at.Offered < 60 || at.Offered > 100 {
		t.Errorf("knee at %.1f requests/s offered, want 60-100 for a server that serves 100/s", at.Offered)
	}
	if math.Abs(at.RequestsPerSecond-at.Offered)/at.Offered > 0.15 || math.Abs(at.RowsPerSecond-10*at.RequestsPerSecond)/at.RowsPerSecond > 0.01 {
		t.Errorf("server-side %.1f req/s, %.0f rows/s at %.1f offered, 10 rows each", at.RequestsPerSecond, at.RowsPerSecond, at.Offered)
	}
	// The hold is outside the server's own instrumentation, so in-flight
	// (from the server's duration histogram) is only the model's share.
	if !(at.Inflight > 0) || math.IsNaN(at.CPUCores) {
		t.Errorf("in-flight %.2f, CPU %v at %.1f/s offered", at.Inflight, at.CPUCores, at.Offered)
	}
}

func capacities() []Capacity {
	mk := func(rows int, rps, cpu, inflight float64) Capacity {
		return Capacity{Rows: rows, Knee: Knee{Index: 0, Reached: true}, Steps: []Step{{
			Rows: rows, Offered: rps, Achieved: rps, Sent: 100,
			RequestsPerSecond: rps, RowsPerSecond: rps * float64(rows), CPUCores: cpu, Inflight: inflight,
		}}}
	}
	// What a CPU-bound model looks like: rows/s and CPU nearly constant,
	// requests/s 17x apart over a 20x change in rows.
	return []Capacity{mk(500, 270, 0.24, 0.6), mk(10000, 16, 0.25, 2.4)}
}

func TestRecommend(t *testing.T) {
	tests := []struct {
		name, only, want string
		caps             []Capacity
		wantCap          float64
	}{
		{name: "rows/s: steady, and preferred over CPU when both are", caps: capacities(), want: "predicted_rows_per_second", wantCap: 135000},
		{name: "forced CPU", caps: capacities(), only: "cpu", want: "cpu", wantCap: 0.24},
		{name: "forced requests/s: the smaller capacity", caps: capacities(), only: "requests_per_second", want: "requests_per_second", wantCap: 16},
		{name: "rows/s 1.21x apart, CPU 1.02x: CPU is late, rows/s stays", want: "predicted_rows_per_second", wantCap: 41478, caps: func() []Capacity {
			c := capacities()
			c[0].Steps[0].RowsPerSecond, c[1].Steps[0].RowsPerSecond = 41478, 50363 // measured at 100m
			c[0].Steps[0].CPUCores, c[1].Steps[0].CPUCores = 0.0838, 0.0823
			return c
		}()},
		{name: "CPU when clearly steadier than rows/s", want: "cpu", wantCap: 0.2, caps: func() []Capacity {
			c := capacities()
			c[1].Steps[0].RowsPerSecond = 40000 // 3.4x apart
			c[1].Steps[0].CPUCores = 0.2
			return c
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Recommend(tc.caps, 0.2, tc.only)
			if err != nil {
				t.Fatal(err)
			}
			if r.Signal.Metric != tc.want || math.Abs(r.Capacity-tc.wantCap) > 1e-9 {
				t.Errorf("recommended %s at capacity %g, want %s at %g", r.Signal.Metric, r.Capacity, tc.want, tc.wantCap)
			}
			if r.Target > 0.8*r.Capacity || r.Target < 0.79*r.Capacity {
				t.Errorf("target %g for capacity %g at 20%% headroom", r.Target, r.Capacity)
			}
		})
	}
	r, _ := Recommend(capacities(), 0.2, "")
	if sp := r.Spread["requests_per_second"]; math.Abs(sp-270.0/16) > 1e-9 {
		t.Errorf("requests/s spread %g, want %g", sp, 270.0/16)
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"* rows/s", "16.88x", "capacity @10000 rows", "target 108000 (20% headroom)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	if _, err := Recommend(capacities(), 1, ""); err == nil {
		t.Error("headroom 1 accepted")
	}
	noCPU := capacities()
	noCPU[0].Steps[0].CPUCores = math.NaN()
	if _, err := Recommend(noCPU, 0.2, "cpu"); err == nil {
		t.Error("forced CPU without a CPU measurement accepted")
	}
}

func decode(t *testing.T, doc []byte) map[string]any {
	t.Helper()
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := utiljson.Unmarshal(j, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// The manifests are what the API server, KEDA's CRD and mlscale's scaler
// accept, with the target where the recommendation put it.
func TestManifests(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := crds.Write(ctx, dir); err != nil {
		t.Fatalf("fetching KEDA's CRDs: %v", err)
	}
	vs, err := crdschema.Load(filepath.Join(dir, "keda", "keda.sh_scaledobjects.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var served []string
	for _, r := range collector.DefaultRules() {
		served = append(served, r.Name)
	}
	target := Target{Namespace: "model", Name: "iris", MinReplicas: 1, MaxReplicas: 10, CPURequest: 0.25, ScalerAddress: "s:6000"}
	for _, only := range []string{"", "cpu"} {
		r, err := Recommend(capacities(), 0.2, only)
		if err != nil {
			t.Fatal(err)
		}
		t.Run("signal "+r.Signal.Metric, func(t *testing.T) {
			b, err := r.HPA(target)
			if err != nil {
				t.Fatal(err)
			}
			var hpa autoscalingv2.HorizontalPodAutoscaler
			if err := yaml.UnmarshalStrict(b, &hpa); err != nil {
				t.Fatalf("HPA: %v\n%s", err, b)
			}
			m := hpa.Spec.Metrics[0]
			switch r.Signal.Metric {
			case "cpu":
				// 0.8 x 0.24 cores of a 0.25 request: 77%.
				if m.Resource == nil || *m.Resource.Target.AverageUtilization != 77 {
					t.Errorf("CPU HPA metric %+v, want 77%% utilisation", m)
				}
			default:
				if m.Pods == nil || m.Pods.Metric.Name != r.Signal.Metric || m.Pods.Target.AverageValue.Value() != 108000 {
					t.Errorf("HPA metric %+v, want %s averageValue 108000", m.Pods, r.Signal.Metric)
				}
			}
			if hpa.Spec.ScaleTargetRef.Name != "iris" || hpa.Namespace != "model" || *hpa.Spec.MinReplicas != 1 || hpa.Spec.MaxReplicas != 10 {
				t.Errorf("HPA %+v", hpa)
			}

			so, err := r.ScaledObject(target)
			if err != nil {
				t.Fatal(err)
			}
			obj := decode(t, so)
			if errs := vs[0].FieldErrors(obj); len(errs) > 0 {
				t.Errorf("ScaledObject rejected by KEDA's CRD: %v\n%s", errs.ToAggregate(), so)
			}
			tr := obj["spec"].(map[string]any)["triggers"].([]any)[0].(map[string]any)
			if tr["type"] == "external" {
				md := map[string]string{}
				for k, v := range tr["metadata"].(map[string]any) {
					md[k] = v.(string)
				}
				got, err := trigger.Parse(&pb.ScaledObjectRef{Name: "iris", Namespace: "model", ScalerMetadata: md}, served)
				if err != nil {
					t.Errorf("the scaler rejects the trigger: %v", err)
				} else if got.Target != 108000 || got.Metric != r.Signal.Metric {
					t.Errorf("trigger %+v, want %s target 108000", got, r.Signal.Metric)
				}
			}

			sd, err := r.SeldonHPASpec(target)
			if err != nil {
				t.Fatal(err)
			}
			var spec struct {
				HPASpec struct {
					MinReplicas int32                      `json:"minReplicas"`
					MaxReplicas int32                      `json:"maxReplicas"`
					MetricsV2   []autoscalingv2.MetricSpec `json:"metricsv2"`
				} `json:"hpaSpec"`
			}
			if err := yaml.UnmarshalStrict(sd, &spec); err != nil || len(spec.HPASpec.MetricsV2) != 1 || spec.HPASpec.MaxReplicas != 10 {
				t.Errorf("hpaSpec %+v (%v):\n%s", spec, err, sd)
			}
		})
	}
}

func TestStepsCSVRoundTrip(t *testing.T) {
	in := []Step{
		{Rows: 500, Offered: 134.4, Duration: 5 * time.Second, Sent: 672, Failed: 0, Achieved: 134.3, P50: 2400 * time.Microsecond, P99: 77300 * time.Microsecond,
			RequestsPerSecond: 134.1, RowsPerSecond: 67065, Inflight: 0.3, CPUCores: 0.126},
		{Rows: 10000, Offered: 12, Duration: 5 * time.Second, Sent: 60, Failed: 2, Achieved: 9.5, P50: time.Second, P99: 3 * time.Second,
			RequestsPerSecond: nan, RowsPerSecond: nan, Inflight: nan, CPUCores: nan},
	}
	var b bytes.Buffer
	if err := WriteStepsCSV(&b, in, KneeOptions{SLO: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "2 of 60 requests failed") {
		t.Errorf("the broken step is not marked:\n%s", b.String())
	}
	out, err := ReadStepsCSV(&b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Rows != 500 || out[0].P99 != in[0].P99 || out[0].RowsPerSecond != 67065 || !math.IsNaN(out[1].CPUCores) || out[1].Failed != 2 {
		t.Errorf("round trip: %+v", out)
	}
	for _, bad := range []string{"", "rows,offered\n", strings.Join(stepsHeader, ",") + "\nx,1,1,1,0,1,1,1,,,,,\n", strings.Join(stepsHeader, ",") + "\n1.5,1,1,1,0,1,1,1,,,,,\n"} {
		if _, err := ReadStepsCSV(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadStepsCSV(%q) accepted", bad)
		}
	}
}

func FuzzReadStepsCSV(f *testing.F) {
	data, err := os.ReadFile("testdata/steps-250m.csv")
	if err == nil {
		f.Add(string(data))
	}
	f.Add(strings.Join(stepsHeader, ",") + "\n500,1,1,1,0,1,1,1,,,,,\n")
	f.Fuzz(func(t *testing.T, s string) {
		steps, err := ReadStepsCSV(strings.NewReader(s))
		if err != nil {
			return
		}
		_, _ = FindKnee(steps, KneeOptions{SLO: time.Second})
		var b bytes.Buffer
		if err := WriteStepsCSV(&b, steps, KneeOptions{SLO: time.Second}); err != nil {
			t.Fatal(err)
		}
	})
}

// Run on the curves recorded through the local cluster at 200m (`make
// tune-cluster`, no load sent) writes what local-tuned holds:
// predicted_rows_per_second, 53228 per pod at 40% headroom.
func TestRunFromRecordedSteps(t *testing.T) {
	kust, err := os.ReadFile("../../manifests/overlays/local-tuned/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const want = 53228
	if !strings.Contains(string(kust), fmt.Sprintf("averageValue: \"%d\"", want)) {
		t.Fatalf("local-tuned does not hold the target %d measured in testdata/steps-200m-cluster.csv", want)
	}
	f, err := os.Open("testdata/steps-200m-cluster.csv")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := ReadStepsCSV(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	res, err := Run(context.Background(), Config{
		Recorded: steps, Knee: KneeOptions{SLO: 500 * time.Millisecond}, Headroom: 0.4,
		Target: Target{Namespace: "model", Name: "iris-model-autoscale", MinReplicas: 1, MaxReplicas: 20, CPURequest: 0.2},
		OutDir: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Recommendation; r.Signal.Metric != "predicted_rows_per_second" || r.Target != want {
		t.Errorf("recommended %s at %v, want predicted_rows_per_second at %d", r.Signal.Metric, r.Target, want)
	}
	hpa, err := os.ReadFile(filepath.Join(out, HPAYAML))
	if err != nil || !strings.Contains(string(hpa), fmt.Sprintf("averageValue: \"%d\"", want)) {
		t.Errorf("hpa.yaml (%v):\n%s", err, hpa)
	}
	for _, f := range []string{StepsCSV, RecommendationTxt, SeldonYAML, ScaledObjectYAML, "capacity-500-rows.png", "capacity-10000-rows.png"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}
