package record

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCSVRoundTrip(t *testing.T) {
	begin := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	in := []Request{
		{Task: 0, Start: begin.Add(time.Millisecond), Latency: 12345 * time.Microsecond, Status: 200},
		{Task: 1, Start: begin.Add(2 * time.Second), Latency: 3 * time.Millisecond, SendDelay: time.Millisecond, Status: 400, Err: "400 Bad Request"},
		{Task: 1, Start: begin.Add(3 * time.Second), Latency: time.Second, Err: `Post "http://127.0.0.1:1/x": dial tcp, refused`},
	}
	var buf bytes.Buffer
	w, err := NewCSVWriter(&buf, begin, []string{"up,500", "down"}, []int{500, 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range in {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "\n2026-11-25T12:00:02Z,2.000000,down,1000,3.000,1.000,400,400 Bad Request\n") {
		t.Errorf("CSV:\n%s", buf.String())
	}
	got, names, err := ReadCSV(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"up,500", "down"}, names); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
}

func TestSummary(t *testing.T) {
	s := NewSummary([]string{"a", "b"}, []int{10, 1}, []int64{100, 5})
	begin := time.Unix(1000, 0)
	// Task a: latencies 1..100 ms, every tenth one a 503.
	for i := 1; i <= 100; i++ {
		r := Request{Task: 0, Latency: time.Duration(i) * time.Millisecond, Status: 200}
		if i%10 == 0 {
			r.Status, r.Err = 503, "503 Service Unavailable"
		}
		s.Add(r)
	}
	s.Add(Request{Task: 1, Latency: 2 * time.Millisecond, Err: `Post "http://127.0.0.1:9/p": dial tcp 127.0.0.1:9: connect: connection refused`})
	s.SetSpan(0, begin, begin.Add(2*time.Second))
	s.SetSpan(1, begin.Add(2*time.Second), begin.Add(3*time.Second))
	s.Finish()
	a := s.Tasks[0]
	want := TaskSummary{
		Name: "a", DataSize: 10, Scheduled: 100, Requests: 100, Errors: 10,
		ErrorKinds: map[string]int64{"503": 10},
		Seconds:    2, ReqPerSec: 50, RowsPerSec: 450,
		P50Ms: 50, P90Ms: 90, P99Ms: 99, MaxMs: 100, MeanMs: 50.5,
		Start: begin, End: begin.Add(2 * time.Second),
	}
	// HDR keeps 3 significant digits: values come back within 0.1%.
	approx := cmp.Comparer(func(x, y float64) bool { return x == y || (x-y)/y < 1e-3 && (y-x)/y < 1e-3 })
	if diff := cmp.Diff(want, *a, approx, cmp.AllowUnexported(TaskSummary{}), cmp.FilterPath(func(p cmp.Path) bool { return p.String() == "hist" }, cmp.Ignore())); diff != "" {
		t.Errorf("task a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int64{"connection refused": 1}, s.Tasks[1].ErrorKinds); diff != "" {
		t.Errorf("task b error kinds (-want +got):\n%s", diff)
	}

	var js bytes.Buffer
	if err := s.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct{ Tasks []TaskSummary }
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Tasks) != 2 || back.Tasks[0].Requests != 100 {
		t.Errorf("JSON %s: %v", js.String(), err)
	}
	var tab bytes.Buffer
	if err := s.WriteTable(&tab); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(tab.String()), "\n"); len(lines) != 3 || !strings.Contains(lines[1], "100/100") {
		t.Errorf("table:\n%s", tab.String())
	}
}

func TestReadCSVRejectsOtherFiles(t *testing.T) {
	for name, in := range map[string]string{
		"header":  "a,b\n",
		"numbers": strings.Join(csvHeader, ",") + "\n2026-11-25T12:00:00Z,0,a,1,x,0,200,\n",
		"time":    strings.Join(csvHeader, ",") + "\nyesterday,0,a,1,1,0,200,\n",
		"empty":   "",
	} {
		if _, _, err := ReadCSV(strings.NewReader(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func FuzzReadCSV(f *testing.F) {
	head := strings.Join(csvHeader, ",") + "\n"
	f.Add(head + "2026-11-25T12:00:00Z,0.000000,a,1,1.000,0.000,200,\n")
	f.Add(head + "2026-11-25T12:00:00Z,0,\"b,c\",1,2,3,0,\"x \"\"y\"\"\"\n")
	f.Add("timestamp\n")
	f.Fuzz(func(t *testing.T, s string) {
		reqs, names, err := ReadCSV(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, r := range reqs {
			if r.Task < 0 || r.Task >= len(names) {
				t.Fatalf("task index %d of %d names", r.Task, len(names))
			}
		}
	})
}
