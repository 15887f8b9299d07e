package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/mlscale/mlscale/loadgen/internal/loadgentest"
	"github.com/mlscale/mlscale/loadgen/record"
	"github.com/mlscale/mlscale/loadgen/replicas"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/run"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

const mixed = `
name: mixed
tasks:
  - {name: up-50,   data_size: 50,  data_amount: 40, client_num: 4}
  - {name: up-500,  data_size: 500, data_amount: 20, client_num: 2, pause_after: 100ms}
  - {name: open-1,  data_size: 1,   rate: 100, rate_end: 300, duration: 400ms}
  - {name: down-50, data_size: 50,  data_amount: 25, client_num: 3}
`

// fixedSampler reports a replica count that grows by one per sample.
type fixedSampler struct{ n int32 }

func (f *fixedSampler) Sample(context.Context) (replicas.Sample, error) {
	f.n++
	return replicas.Sample{Time: time.Now(), Spec: f.n, Status: f.n, HPA: "h", Current: f.n, Desire: f.n + 1, Metrics: []string{"cpu=40%"}}, nil
}

func readRequests(t *testing.T, dir string) ([]record.Request, []string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, RequestsCSV))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reqs, names, err := record.ReadCSV(f)
	if err != nil {
		t.Fatal(err)
	}
	return reqs, names
}

func readSummary(t *testing.T, dir string) []record.TaskSummary {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, SummaryJSON))
	if err != nil {
		t.Fatal(err)
	}
	var s struct{ Tasks []record.TaskSummary }
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s.Tasks
}

func checkPNG(t *testing.T, dir string, w, h int) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, ChartPNG))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Errorf("chart %dx%d, want %dx%d", b.Dx(), b.Dy(), w, h)
	}
}

func TestRunAgainstModelServer(t *testing.T) {
	srv := loadgentest.ModelServer(t, nil)
	sc, err := scenario.Parse([]byte(mixed))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var table strings.Builder
	sum, err := Run(context.Background(), Config{
		Scenario: sc, Seed: 7, URL: srv.URL + "/api/v1.0/predictions", Protocol: request.Seldon,
		Client: run0(), OutDir: dir, Sampler: &fixedSampler{}, SampleEvery: 100 * time.Millisecond,
		Table: &table, ChartWidth: 900, ChartHeight: 500,
	})
	if err != nil {
		t.Fatal(err)
	}
	reqs, names := readRequests(t, dir)
	if diff := cmp.Diff([]string{"up-50", "up-500", "open-1", "down-50"}, names); diff != "" {
		t.Errorf("tasks in CSV (-want +got):\n%s", diff)
	}
	counts := make([]int, len(names))
	for _, r := range reqs {
		counts[r.Task]++
		if !r.OK() {
			t.Errorf("failed request %+v", r)
		}
	}
	// Closed-loop counts are exact; the 400ms ramp 100->300/s schedules 80
	// (fewer when a loaded machine makes the pacer fall behind).
	if counts[0] != 40 || counts[1] != 20 || counts[3] != 25 || counts[2] < 40 || counts[2] > 80 {
		t.Errorf("requests per task %v, want [40 20 ~80 25]", counts)
	}
	tasks := readSummary(t, dir)
	for i, ts := range tasks {
		if ts.Requests != int64(counts[i]) || ts.Errors != 0 || ts.P50Ms <= 0 || ts.MaxMs < ts.P99Ms || ts.ReqPerSec <= 0 {
			t.Errorf("summary of %s: %+v (CSV has %d requests)", ts.Name, ts, counts[i])
		}
		if sum.Tasks[i].Requests != ts.Requests {
			t.Errorf("returned summary differs from summary.json for %s", ts.Name)
		}
	}
	// The 500-row task's requests carry 10x the rows of the 50-row ones.
	if tasks[1].RowsPerSec <= tasks[1].ReqPerSec*499 {
		t.Errorf("rows/s %.0f for %.1f req/s of 500 rows", tasks[1].RowsPerSec, tasks[1].ReqPerSec)
	}
	if !strings.Contains(table.String(), "up-500") {
		t.Errorf("table:\n%s", table.String())
	}
	rep, err := os.ReadFile(filepath.Join(dir, ReplicasCSV))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(rep), "\n"); lines < 5 {
		t.Errorf("replicas CSV has %d lines for a run of about a second sampled every 100ms:\n%s", lines, rep)
	}
	checkPNG(t, dir, 900, 500)
}

func run0() run.ClientOptions { return run.ClientOptions{Conns: 4, Timeout: 10 * time.Second} }

func TestRunRecordsErrors(t *testing.T) {
	srv := loadgentest.ModelServer(t, nil)
	sc, err := scenario.Parse([]byte("tasks: [{name: bad, data_size: 3, data_amount: 30, client_num: 3}]"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		url      string
		features int
		kind     string
	}{
		{"400s from the model server", srv.URL + "/api/v1.0/predictions", 5, "400"},
		{"server down", loadgentest.DeadURL(t), 4, "connection refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc.Features = tc.features
			dir := t.TempDir()
			if _, err := Run(context.Background(), Config{Scenario: sc, URL: tc.url, Client: run0(), OutDir: dir, ChartWidth: 640, ChartHeight: 480}); err != nil {
				t.Fatal(err)
			}
			reqs, _ := readRequests(t, dir)
			if len(reqs) != 30 {
				t.Fatalf("%d requests in CSV, want 30", len(reqs))
			}
			for _, r := range reqs {
				if r.OK() {
					t.Fatalf("request recorded as success: %+v", r)
				}
			}
			ts := readSummary(t, dir)[0]
			if ts.Errors != 30 || ts.ErrorKinds[tc.kind] != 30 {
				t.Errorf("summary errors %d by kind %v, want 30 of kind %q", ts.Errors, ts.ErrorKinds, tc.kind)
			}
			checkPNG(t, dir, 640, 480)
		})
	}
}

// Ctrl-C is a cancelled context: the run stops within moments and every
// file is still written, consistent with each other.
func TestRunCancelledStillWritesEverything(t *testing.T) {
	srv := loadgentest.ModelServer(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(20 * time.Millisecond)
			h.ServeHTTP(w, r)
		})
	})
	sc, err := scenario.Parse([]byte(`
tasks:
  - {name: first, data_size: 10, data_amount: 20, client_num: 4}
  - {name: long, data_size: 10, data_amount: 100000, client_num: 4}
  - {name: never, data_size: 10, data_amount: 10, client_num: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	dir := t.TempDir()
	start := time.Now()
	_, err = Run(ctx, Config{Scenario: sc, URL: srv.URL + "/api/v1.0/predictions", Client: run0(), OutDir: dir,
		Sampler: &fixedSampler{}, SampleEvery: 50 * time.Millisecond, ChartWidth: 800, ChartHeight: 400})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the context's", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelled run took %s", took)
	}
	reqs, names := readRequests(t, dir)
	tasks := readSummary(t, dir)
	if len(names) != 2 || len(tasks) != 3 || tasks[0].Requests != 20 || tasks[2].Requests != 0 {
		t.Fatalf("tasks in CSV %v, summary %+v: want first complete, long partial, never not started", names, tasks)
	}
	if got := tasks[0].Requests + tasks[1].Requests; got != int64(len(reqs)) || tasks[1].Requests < 10 {
		t.Errorf("summary counts %d requests, CSV %d", got, len(reqs))
	}
	checkPNG(t, dir, 800, 400)
	if _, err := os.Stat(filepath.Join(dir, ReplicasCSV)); err != nil {
		t.Error(err)
	}
}

// The same run over the Open Inference Protocol and through the gateway
// form of the Seldon route, both answered by the real server.
func TestRunProtocols(t *testing.T) {
	srv := loadgentest.ModelServer(t, nil)
	v2, err := request.DirectEndpoint(srv.URL, request.V2, "iris")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := request.Target{URL: srv.URL, Namespace: "model", Deployment: "iris-model-autoscale", Protocol: request.Seldon}.Endpoint()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := scenario.Parse([]byte("tasks: [{name: p, data_size: 7, data_amount: 12, client_num: 2}]"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, url string
		proto     request.Protocol
	}{{"v2", v2, request.V2}, {"seldon gateway", gw, request.Seldon}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sum, err := Run(context.Background(), Config{Scenario: sc, URL: tc.url, Protocol: tc.proto, Client: run0(), OutDir: dir, ChartWidth: -1})
			if err != nil {
				t.Fatal(err)
			}
			if ts := sum.Tasks[0]; ts.Requests != 12 || ts.Errors != 0 {
				t.Errorf("%d requests, %d errors (%v), want 12 answered", ts.Requests, ts.Errors, ts.ErrorKinds)
			}
			if _, err := os.Stat(filepath.Join(dir, ChartPNG)); !os.IsNotExist(err) {
				t.Errorf("chart written although disabled: %v", err)
			}
		})
	}
}
