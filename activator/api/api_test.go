package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDecode(t *testing.T) {
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	good := Snapshot{Replica: "a-0", Time: now, WindowSeconds: 3, Services: []Demand{{Namespace: "model", Service: "iris", ArrivalsPerSecond: 2.5, Held: 1, Inflight: 3, ReadyEndpoints: 2}}}
	line, _ := json.Marshal(good)
	tests := []struct {
		name    string
		line    string
		want    Snapshot
		wantErr string
	}{
		{"valid", string(line), good, ""},
		{"not JSON", "{", Snapshot{}, "decoding a demand snapshot"},
		{"no time", `{"windowSeconds":3}`, Snapshot{}, "time is missing"},
		{"no window", `{"time":"2026-11-30T08:00:00Z"}`, Snapshot{}, "windowSeconds must be positive"},
		{"empty name", `{"time":"2026-11-30T08:00:00Z","windowSeconds":3,"services":[{"namespace":"model"}]}`, Snapshot{}, "services[0]: namespace and service must not be empty"},
		{"negative rate", `{"time":"2026-11-30T08:00:00Z","windowSeconds":3,"services":[{"namespace":"m","service":"s","arrivalsPerSecond":-1}]}`, Snapshot{}, "services[0] (m/s): arrivalsPerSecond must be a finite number >= 0"},
		{"negative held", `{"time":"2026-11-30T08:00:00Z","windowSeconds":3,"services":[{"namespace":"m","service":"s","held":-2}]}`, Snapshot{}, "held, inflight and readyEndpoints must be >= 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode([]byte(tc.line))
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("snapshot (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"replica":"a","time":"2026-11-30T08:00:00Z","windowSeconds":3,"services":[{"namespace":"m","service":"s","arrivalsPerSecond":1,"held":1}]}`))
	f.Add([]byte(`{"windowSeconds":1e400}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		s, err := Decode(line)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Decode accepted what Validate rejects: %v", err)
		}
	})
}

// fakeSource is a Source whose demand the test sets.
type fakeSource struct {
	mu      sync.Mutex
	held    int64
	recent  float64
	changed chan struct{}
}

func newFakeSource() *fakeSource { return &fakeSource{changed: make(chan struct{})} }

func (f *fakeSource) Snapshot() Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Snapshot{Replica: "r", Time: time.Now(), WindowSeconds: 3, Services: []Demand{{Namespace: "model", Service: "iris", Held: f.held, Inflight: 1, ArrivalsPerSecond: 0.5, RecentArrivalsPerSecond: f.recent, ReadyEndpoints: 1}}}
}

// setRecent changes the recent rate without a Changed notification, as
// arrivals do.
func (f *fakeSource) setRecent(v float64) {
	f.mu.Lock()
	f.recent = v
	f.mu.Unlock()
}

func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *fakeSource) set(held int64) {
	f.mu.Lock()
	f.held = held
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Two replicas on loopback: the watcher sums them, sees a change well
// before the next heartbeat, and drops a replica that is removed.
func TestWatcherSumsReplicas(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	a, b := newFakeSource(), newFakeSource()
	sa := httptest.NewServer(Handler(a, done))
	defer sa.Close()
	sb := httptest.NewServer(Handler(b, done))
	defer sb.Close()
	w := NewWatcher(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, ok := w.Demand("model", "iris"); ok {
		t.Fatal("demand known before any replica answered")
	}
	w.Set(ctx, []string{sa.URL + Path, sb.URL + Path})
	waitFor(t, "both replicas", func() bool { return len(w.Replicas()) == 2 })
	d, ok := w.Demand("model", "iris")
	want := Demand{Namespace: "model", Service: "iris", ArrivalsPerSecond: 1, Inflight: 2, ReadyEndpoints: 1}
	if diff := cmp.Diff(want, d); !ok || diff != "" {
		t.Errorf("summed demand (ok %v, -want +got):\n%s", ok, diff)
	}
	updated := w.Updated()
	start := time.Now()
	a.set(3)
	<-updated
	waitFor(t, "the held change", func() bool { h, _, _ := w.Pending("model", "iris"); return h == 3 })
	// Reported as the change happens, not at the next heartbeat: logged,
	// not asserted (no timing assertions in tests).
	t.Logf("held change seen after %v (heartbeat %v)", time.Since(start), Heartbeat)
	w.Set(ctx, []string{sa.URL + Path})
	if h, in, ok := w.Pending("model", "iris"); !ok || h != 3 || in != 1 {
		t.Errorf("after removing replica b: held %d inflight %d ok %v, want 3 1 true", h, in, ok)
	}
	if d, ok := w.Demand("model", "other"); ok {
		t.Errorf("a Service no replica reports: %+v, want unknown", d)
	}
}

func TestHandlerRefusesPost(t *testing.T) {
	srv := httptest.NewServer(Handler(newFakeSource(), nil))
	defer srv.Close()
	resp, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", resp.StatusCode)
	}
}

// A stream that sends something that is not a snapshot is an error naming
// the URL and the problem.
func TestWatchRejectsBadLine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"time":"2026-11-30T08:00:00Z","windowSeconds":0}` + "\n"))
	}))
	defer srv.Close()
	err := Watch(context.Background(), srv.Client(), srv.URL, func(Snapshot) { t.Error("called with an invalid snapshot") })
	if err == nil || !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), "windowSeconds must be positive") {
		t.Errorf("error %v", err)
	}
}

func TestArrivalsWindows(t *testing.T) {
	step := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	a := NewArrivals(3 * time.Second)
	// 1/s for 10 s, then 24/s from the step, evenly spaced; read as they
	// happen (the ring holds only the window).
	var events []time.Time
	for t0 := step.Add(-10 * time.Second); t0.Before(step); t0 = t0.Add(time.Second) {
		events = append(events, t0)
	}
	for i := range 24 * 3 {
		events = append(events, step.Add(time.Duration(i)*time.Second/24))
	}
	tests := []struct {
		after          time.Duration
		stable, recent float64
	}{
		// Before the step: 3 arrivals in 3 s, 1 in the last second.
		{-time.Millisecond, 1, 1},
		// The step's first bucket (3 arrivals) counts in both; the recent
		// window weighs it three times as much.
		{99 * time.Millisecond, (2 + 3) / 3.0, 3},
		// A second after the step the recent window holds only the new
		// rate; the stable one is a third of the way up.
		{999 * time.Millisecond, (2 + 24) / 3.0, 24},
		{2999 * time.Millisecond, 72 / 3.0, 24},
	}
	for _, tc := range tests {
		now := step.Add(tc.after)
		for len(events) > 0 && !events[0].After(now) {
			a.Add(events[0])
			events = events[1:]
		}
		if got := a.Rate(now); got != tc.stable {
			t.Errorf("%s after the step: stable rate %v, want %v", tc.after, got, tc.stable)
		}
		if got := a.RateOver(now, RecentWindow); got != tc.recent {
			t.Errorf("%s after the step: recent rate %v, want %v", tc.after, got, tc.recent)
		}
	}
	if got := NewArrivals(50 * time.Millisecond).Window(); got != BucketWidth {
		t.Errorf("a window under one bucket is %s, want one bucket", got)
	}
}

func TestMoved(t *testing.T) {
	snap := func(ds ...Demand) Snapshot { return Snapshot{Time: time.Now(), WindowSeconds: 3, Services: ds} }
	d := func(svc string, stable, recent float64) Demand {
		return Demand{Namespace: "m", Service: svc, ArrivalsPerSecond: stable, RecentArrivalsPerSecond: recent}
	}
	tests := []struct {
		name      string
		prev, cur Snapshot
		wantMoved bool
	}{
		{"same", snap(d("a", 24, 24)), snap(d("a", 24, 24)), false},
		{"jitter under 10%", snap(d("a", 24, 24)), snap(d("a", 24, 22)), false},
		{"recent up 10%+", snap(d("a", 24, 20)), snap(d("a", 24, 23)), true},
		{"stable up 10%+", snap(d("a", 4, 24)), snap(d("a", 5, 24)), true},
		{"small rates under 0.5/s", snap(d("a", 0.1, 0)), snap(d("a", 0.3, 0)), false},
		{"step from 1/s", snap(d("a", 1, 1)), snap(d("a", 1.7, 3)), true},
		{"service added", snap(d("a", 1, 1)), snap(d("a", 1, 1), d("b", 0, 0)), true},
		{"service renamed", snap(d("a", 1, 1)), snap(d("b", 1, 1)), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Moved(tc.prev, tc.cur); got != tc.wantMoved {
				t.Errorf("Moved = %v, want %v", got, tc.wantMoved)
			}
		})
	}
}

// A rate that moves without a held-count change is streamed at the next
// Poll, not at the next Heartbeat.
func TestHandlerSendsMovedRate(t *testing.T) {
	src := newFakeSource()
	srv := httptest.NewServer(Handler(src, nil))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Snapshot, 64)
	go func() { _ = Watch(ctx, srv.Client(), srv.URL, func(s Snapshot) { got <- s }) }()
	first := <-got
	src.setRecent(24)
	set := time.Now()
	for s := range got {
		if s.Services[0].RecentArrivalsPerSecond == 24 {
			if lag := time.Since(set); lag >= Heartbeat-Poll {
				t.Errorf("the moved rate arrived %s after it moved: on the heartbeat, not the poll", lag)
			}
			if !s.Time.After(first.Time) {
				t.Errorf("snapshot time %s not after the first %s", s.Time, first.Time)
			}
			return
		}
	}
}
