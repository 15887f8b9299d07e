package run

import (
	"context"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/mlscale/mlscale/loadgen/internal/loadgentest"
	"github.com/mlscale/mlscale/loadgen/record"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

func plan(t scenario.Task, features int) Plan {
	src := request.NewRandom(1, 0, features, 1, 4)
	return Plan{Task: t, Bodies: request.Bodies(src, request.Seldon, t.DataSize, 8, request.PoolBytes)}
}

func collect(t *testing.T, ctx context.Context, url string, p Plan, maxWorkers uint64) ([]record.Request, error) {
	t.Helper()
	var got []record.Request
	o := Options{URL: url, Client: NewClient(ClientOptions{Conns: 8, Timeout: 10 * time.Second}), MaxWorkers: maxWorkers}
	_, _, err := Task(ctx, o, p, func(r record.Request) { got = append(got, r) })
	return got, err
}

func TestClosedLoopAgainstModelServer(t *testing.T) {
	// Each request held 20 ms: three closed-loop clients must overlap (a
	// fast machine answered 50 rows before the next client sent, and the
	// server never saw two at once).
	inflight := loadgentest.InFlight{Hold: 20 * time.Millisecond}
	srv := loadgentest.ModelServer(t, inflight.Wrap)
	task := scenario.Task{Name: "c", DataSize: 50, DataAmount: 120, ClientNum: 3}
	got, err := collect(t, context.Background(), srv.URL+"/api/v1.0/predictions", plan(task, 4), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 120 {
		t.Fatalf("%d requests recorded, want data_amount 120", len(got))
	}
	for _, r := range got {
		if !r.OK() || r.Status != 200 || r.Latency <= 0 || r.SendDelay != 0 {
			t.Fatalf("request %+v: want a 200 with a positive latency and no send delay", r)
		}
	}
	// Closed loop: never more requests in flight than clients.
	if m := inflight.Max.Load(); m > 3 || m < 2 {
		t.Errorf("server saw at most %d requests at once, want 3 clients' worth (2..3)", m)
	}
}

func TestClosedLoopBoundedByDuration(t *testing.T) {
	srv := loadgentest.ModelServer(t, nil)
	task := scenario.Task{Name: "d", DataSize: 1, ClientNum: 2, Duration: scenario.Duration{Duration: 300 * time.Millisecond}}
	start := time.Now()
	got, err := collect(t, context.Background(), srv.URL+"/api/v1.0/predictions", plan(task, 4), 0)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a 300ms task took %s", took)
	}
	if len(got) < 10 {
		t.Errorf("%d requests in 300ms against loopback", len(got))
	}
}

func TestOpenLoopRate(t *testing.T) {
	srv := loadgentest.ModelServer(t, nil)
	task := scenario.Task{Name: "o", DataSize: 5, Rate: 200, Duration: scenario.Duration{Duration: 500 * time.Millisecond}}
	got, err := collect(t, context.Background(), srv.URL+"/api/v1.0/predictions", plan(task, 4), 0)
	if err != nil {
		t.Fatal(err)
	}
	// vegeta sends hit n at (n+1)/rate: at most 100 fit in 500ms; on a
	// loaded machine the pacer can fall behind and drop the rest (the
	// summary then shows fewer requests than scheduled).
	if n := len(got); n < 50 || n > 100 {
		t.Errorf("%d requests at 200/s for 500ms, want about %d", n, Scheduled(task))
	}
	for _, r := range got {
		if !r.OK() {
			t.Fatalf("request failed: %+v", r)
		}
	}
}

// A server that takes 100ms per request and a generator allowed one request
// at a time fall behind a 50/s schedule: latency measured from the intended
// send time must grow with the backlog instead of staying at 100ms.
func TestOpenLoopNoCoordinatedOmission(t *testing.T) {
	srv := loadgentest.ModelServer(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(100 * time.Millisecond)
			h.ServeHTTP(w, r)
		})
	})
	task := scenario.Task{Name: "co", DataSize: 1, Rate: 50, Duration: scenario.Duration{Duration: time.Second}}
	got, err := collect(t, context.Background(), srv.URL+"/api/v1.0/predictions", plan(task, 4), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 5 {
		t.Fatalf("%d requests", len(got))
	}
	last := got[len(got)-1]
	// The last request went out ~1s in but was due at about (n)/50 s.
	if last.SendDelay < 500*time.Millisecond || last.Latency < last.SendDelay+90*time.Millisecond {
		t.Errorf("last request %+v: want a send delay of several hundred ms included in its latency", last)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Start.Before(got[i-1].Start) {
			t.Fatalf("intended start times go backwards at %d", i)
		}
	}
}

func TestErrorsRecorded(t *testing.T) {
	srv := loadgentest.ModelServer(t, nil)
	tests := []struct {
		name     string
		url      string
		features int
		status   int
		errText  string
	}{
		// The iris model has 4 features: 3 is a client error.
		{"bad request", srv.URL + "/api/v1.0/predictions", 3, 400, "400"},
		{"server down", loadgentest.DeadURL(t), 4, 0, "connection refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			task := scenario.Task{Name: "e", DataSize: 2, DataAmount: 20, ClientNum: 2}
			got, err := collect(t, context.Background(), tc.url, plan(task, tc.features), 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 20 {
				t.Fatalf("%d requests recorded, want 20", len(got))
			}
			for _, r := range got {
				if r.OK() || r.Status != tc.status || !strings.Contains(r.Err, tc.errText) {
					t.Fatalf("request %+v: want status %d and an error containing %q", r, tc.status, tc.errText)
				}
			}
		})
	}
}

func TestCancelAbortsInFlight(t *testing.T) {
	release := make(chan struct{})
	srv := loadgentest.ModelServer(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// With the body read, the server notices the client hanging up.
			_, _ = io.Copy(io.Discard, r.Body)
			select { // hang until the client gives up
			case <-release:
			case <-r.Context().Done():
			}
		})
	})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	task := scenario.Task{Name: "hang", DataSize: 1, DataAmount: 100, ClientNum: 4}
	start := time.Now()
	got, err := collect(t, ctx, srv.URL+"/api/v1.0/predictions", plan(task, 4), 0)
	if err == nil {
		t.Fatal("no error from a cancelled task")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("cancelled task took %s to return", took)
	}
	if len(got) != 4 {
		t.Fatalf("%d requests recorded, want the 4 in flight", len(got))
	}
	for _, r := range got {
		if !strings.HasPrefix(r.Err, "cancelled: ") {
			t.Errorf("in-flight request recorded as %+v, want a cancelled error", r)
		}
	}
}

// hide stops Intended from taking the ConstantPacer shortcut.
type hide struct{ vegeta.Pacer }

func TestIntended(t *testing.T) {
	cp := rate(40)
	for _, n := range []uint64{0, 1, 39, 40, 1000} {
		fast, slow := Intended(cp, n), Intended(hide{cp}, n)
		if d := fast - slow; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("hit %d: closed form %s, search %s", n, fast, slow)
		}
		if want := time.Duration(n+1) * 25 * time.Millisecond; fast != want {
			t.Errorf("hit %d at %s, want %s", n, fast, want)
		}
	}
	// Linear ramp 10 -> 110 req/s over 10s: hits(t) = 10t + 5t², and vegeta
	// sends hit n when hits(t) reaches n+1.
	lp := OpenPacer(scenario.Task{Rate: 10, RateEnd: 110, Duration: scenario.Duration{Duration: 10 * time.Second}})
	prev := time.Duration(-1)
	for _, n := range []uint64{1, 2, 10, 100, 500} {
		got := Intended(lp, n)
		k := float64(n + 1)
		want := (-10 + math.Sqrt(100+20*k)) / 10
		if math.Abs(got.Seconds()-want) > 2e-3 {
			t.Errorf("ramp hit %d at %s, want %.4fs", n, got, want)
		}
		if got <= prev {
			t.Errorf("ramp schedule not increasing at hit %d", n)
		}
		prev = got
	}
}

func TestOpenPacer(t *testing.T) {
	if p, ok := OpenPacer(scenario.Task{Rate: 0.5, Duration: scenario.Duration{Duration: time.Second}}).(vegeta.ConstantPacer); !ok || p.Rate(0) != 0.5 {
		t.Errorf("fractional rate: %v", p)
	}
	if got := Scheduled(scenario.Task{Rate: 10, RateEnd: 30, Duration: scenario.Duration{Duration: 10 * time.Second}}); got != 200 {
		t.Errorf("ramp 10->30 for 10s schedules %d, want 200", got)
	}
}
