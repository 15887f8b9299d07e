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
	changed chan struct{}
}

func newFakeSource() *fakeSource { return &fakeSource{changed: make(chan struct{})} }

func (f *fakeSource) Snapshot() Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Snapshot{Replica: "r", Time: time.Now(), WindowSeconds: 3, Services: []Demand{{Namespace: "model", Service: "iris", Held: f.held, Inflight: 1, ArrivalsPerSecond: 0.5, ReadyEndpoints: 1}}}
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
