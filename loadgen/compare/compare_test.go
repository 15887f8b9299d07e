package compare

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/mlscale/mlscale/loadgen/record"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func req(at float64, latMs float64, status int) record.Request {
	return record.Request{Start: t0.Add(time.Duration(at * float64(time.Second))), Latency: time.Duration(latMs * float64(time.Millisecond)), Status: status}
}

func TestEvaluate(t *testing.T) {
	var reqs []record.Request
	// 0-10 s: 10 requests a second at 100 ms; 10-15 s: at 900 ms (one
	// 5 s window over the SLO); one failed request at 17 s.
	for i := 0; i < 150; i++ {
		lat := 100.0
		if i >= 100 {
			lat = 900
		}
		reqs = append(reqs, req(float64(i)/10, lat, 200))
	}
	reqs = append(reqs, req(17, 5, 503))
	reps := []Replica{
		{Time: t0.Add(-5 * time.Second), Spec: 1, Status: 1}, // before the first request: counted from it
		{Time: t0.Add(4 * time.Second), Spec: 2, Status: 1},
		{Time: t0.Add(6 * time.Second), Spec: 2, Status: 2},
		{Time: t0.Add(12 * time.Second), Spec: 1, Status: 1},
		{Time: t0.Add(20 * time.Second), Spec: 1, Status: 1},
	}
	r := Evaluate(Run{Name: "x", Requests: reqs, Replicas: reps}, 500*time.Millisecond, 5*time.Second)
	// 1 x 6 s + 2 x 6 s + 1 x 8 s = 26 replica-seconds.
	want := Result{Name: "x", Requests: 151, Failed: 1, OverSLO: 51, Windows: 4, ViolatingWindows: 2, Window: 5 * time.Second,
		ReplicaSeconds: 26, Peak: 2, ScaleEvents: 2, Duration: 20 * time.Second}
	if r != want {
		t.Errorf("Evaluate = %+v\nwant       %+v", r, want)
	}
	if r.WithinSLO() != 0.5 {
		t.Errorf("WithinSLO = %v", r.WithinSLO())
	}
	if !math.IsNaN(Evaluate(Run{}, time.Second, time.Second).WithinSLO()) {
		t.Error("no traffic is not NaN within the SLO")
	}
}

func TestWriteMarkdownGoal(t *testing.T) {
	res := []Result{
		{Name: "cpu-40%", Requests: 100, Windows: 20, ViolatingWindows: 5, Window: 5 * time.Second, ReplicaSeconds: 900},
		{Name: "tuned", Requests: 100, Windows: 20, ViolatingWindows: 1, Window: 5 * time.Second, ReplicaSeconds: 700},
	}
	var b bytes.Buffer
	if err := WriteMarkdown(&b, res, 500*time.Millisecond, "tuned", "cpu-40%", 0.95); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "): met: 95.0% of windows within, 700 vs 900") {
		t.Errorf("goal line:\n%s", b.String())
	}
	res[1].ReplicaSeconds = 901
	b.Reset()
	_ = WriteMarkdown(&b, res, 500*time.Millisecond, "tuned", "cpu-40%", 0.95)
	if !strings.Contains(b.String(), "NOT met") {
		t.Errorf("more replica-seconds than the baseline is met:\n%s", b.String())
	}
}

func TestReadReplicasCSV(t *testing.T) {
	in := "timestamp,elapsed_s,spec_replicas,status_replicas,hpa,hpa_current_replicas,hpa_desired_replicas,hpa_metrics\n" +
		"2026-01-01T00:00:01.5Z,1.500,2,1,h,1,2,cpu=41%;pods/x=1\n" +
		"2026-01-01T00:00:02.5Z,2.500,2,2,h,0,,\"a,b\"\n"
	got, err := ReadReplicasCSV(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Status != 2 || got[0].Spec != 2 || !got[0].Time.Equal(t0.Add(1500*time.Millisecond)) {
		t.Errorf("got %+v", got)
	}
	for _, bad := range []string{"", "a,b\n", "timestamp,elapsed_s,spec_replicas,status_replicas\nx,1,1,1\n",
		"timestamp,elapsed_s,spec_replicas,status_replicas\n2026-01-01T00:00:01Z,1,-1,1\n"} {
		if _, err := ReadReplicasCSV(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzReadReplicasCSV(f *testing.F) {
	f.Add("timestamp,elapsed_s,spec_replicas,status_replicas,hpa\n2026-01-01T00:00:01.5Z,1.500,2,1,h\n")
	f.Fuzz(func(t *testing.T, s string) {
		reps, err := ReadReplicasCSV(strings.NewReader(s))
		if err != nil {
			return
		}
		r := Evaluate(Run{Requests: []record.Request{req(0, 1, 200)}, Replicas: reps}, time.Second, time.Second)
		if r.ReplicaSeconds < 0 {
			t.Fatalf("negative replica-seconds %v", r.ReplicaSeconds)
		}
	})
}
