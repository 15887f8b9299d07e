// Package api is the one wire contract between the activator and the
// processes that act on its demand signal (the KEDA scaler, the metrics
// adapter): the Go types of a per-Service demand snapshot and the watch
// stream that carries them, imported by both sides (as Knative's
// autoscaler and activator share stat.proto), never two structs that
// happen to agree.
//
// The stream is HTTP: GET Path on an activator's admin port answers
// newline-delimited JSON, one Snapshot per line: the current state at once,
// then a new Snapshot within MinGap of every change in held requests (a
// request held at zero endpoints reaches the watcher at once, so KEDA can
// be told "active" without waiting for a poll), within Poll of an arrival
// rate that Moved (a load step reaches the adapter's burst controller in
// about 100 ms, not on the next heartbeat), and at least every Heartbeat
// otherwise. A watcher treats a replica silent for longer than StaleAfter
// as gone.
package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"
)

// Path is where an activator serves its demand stream.
const Path = "/demand"

// Stream timing.
const (
	// Heartbeat is the longest gap between two snapshots of one stream.
	Heartbeat = time.Second
	// MinGap is the shortest gap between two snapshots: held counts that
	// change on every request under a flood are coalesced.
	MinGap = 20 * time.Millisecond
	// StaleAfter is how long a watcher keeps a replica's last snapshot.
	StaleAfter = 5 * Heartbeat
	// MaxLine bounds one snapshot on the wire (about 20,000 Services).
	MaxLine = 4 << 20
	// Poll is how often a stream checks whether the arrival rates Moved;
	// the rates move in BucketWidth steps.
	Poll = BucketWidth
	// RateStep and MinRateStep: a rate that moved by this fraction and
	// this many requests/s is sent at the next Poll (Moved).
	RateStep    = 0.1
	MinRateStep = 0.5
)

// Demand is one Service's demand at one activator replica.
type Demand struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// ArrivalsPerSecond is requests received for the Service over the
	// snapshot's window, per second: forwarded, held and refused alike,
	// so it measures demand, not what the pods managed to serve.
	ArrivalsPerSecond float64 `json:"arrivalsPerSecond"`
	// RecentArrivalsPerSecond is the same count over the snapshot's
	// shorter RecentWindowSeconds (Knative's panic window beside its
	// stable one): it follows a step within a few hundred milliseconds
	// where the long window ramps over seconds. Absent (0) from an
	// activator that does not measure it.
	RecentArrivalsPerSecond float64 `json:"recentArrivalsPerSecond,omitempty"`
	// Held requests wait for a ready endpoint (the Service is at zero).
	Held int64 `json:"held"`
	// Inflight requests have been forwarded and not yet answered.
	Inflight int64 `json:"inflight"`
	// ReadyEndpoints is how many ready endpoints the replica sees.
	ReadyEndpoints int `json:"readyEndpoints"`
}

// Key is "namespace/service".
func (d Demand) Key() string { return d.Namespace + "/" + d.Service }

// Snapshot is every fronted Service's demand at one activator replica.
type Snapshot struct {
	// Replica names the activator replica (its pod name).
	Replica string `json:"replica"`
	// Time the snapshot was taken.
	Time time.Time `json:"time"`
	// WindowSeconds is the window ArrivalsPerSecond is averaged over.
	WindowSeconds float64 `json:"windowSeconds"`
	// RecentWindowSeconds is the window of RecentArrivalsPerSecond (0:
	// not measured).
	RecentWindowSeconds float64  `json:"recentWindowSeconds,omitempty"`
	Services            []Demand `json:"services"`
}

// Validate reports the first field that cannot be right.
func (s *Snapshot) Validate() error {
	if s.Time.IsZero() {
		return errors.New("snapshot: time is missing")
	}
	if !(s.WindowSeconds > 0) || math.IsInf(s.WindowSeconds, 0) {
		return fmt.Errorf("snapshot: windowSeconds must be positive, got %v", s.WindowSeconds)
	}
	if !(s.RecentWindowSeconds >= 0) || math.IsInf(s.RecentWindowSeconds, 0) || s.RecentWindowSeconds > s.WindowSeconds {
		return fmt.Errorf("snapshot: recentWindowSeconds must be between 0 and windowSeconds (%v), got %v", s.WindowSeconds, s.RecentWindowSeconds)
	}
	for i, d := range s.Services {
		switch {
		case d.Namespace == "" || d.Service == "":
			return fmt.Errorf("snapshot: services[%d]: namespace and service must not be empty", i)
		case !(d.ArrivalsPerSecond >= 0) || math.IsInf(d.ArrivalsPerSecond, 0):
			return fmt.Errorf("snapshot: services[%d] (%s): arrivalsPerSecond must be a finite number >= 0, got %v", i, d.Key(), d.ArrivalsPerSecond)
		case !(d.RecentArrivalsPerSecond >= 0) || math.IsInf(d.RecentArrivalsPerSecond, 0):
			return fmt.Errorf("snapshot: services[%d] (%s): recentArrivalsPerSecond must be a finite number >= 0, got %v", i, d.Key(), d.RecentArrivalsPerSecond)
		case d.Held < 0 || d.Inflight < 0 || d.ReadyEndpoints < 0:
			return fmt.Errorf("snapshot: services[%d] (%s): held, inflight and readyEndpoints must be >= 0", i, d.Key())
		}
	}
	return nil
}

// Decode parses and validates one snapshot line.
func Decode(line []byte) (Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(line, &s); err != nil {
		return Snapshot{}, fmt.Errorf("decoding a demand snapshot: %w", err)
	}
	if err := s.Validate(); err != nil {
		return Snapshot{}, err
	}
	return s, nil
}

// Source is what an activator serves the stream from.
type Source interface {
	// Snapshot returns the current demand.
	Snapshot() Snapshot
	// Changed returns a channel closed at the next change worth sending
	// at once (a request held or released).
	Changed() <-chan struct{}
}

// Handler serves src's stream until the client goes away or done is
// closed (the server shutting down).
func Handler(src Source, done <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "the demand stream answers GET", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		rc := http.NewResponseController(w)
		enc := json.NewEncoder(w)
		heartbeat := time.NewTimer(0)
		defer heartbeat.Stop()
		poll := time.NewTicker(Poll)
		defer poll.Stop()
		var last Snapshot
		send := func(s Snapshot) bool {
			if err := enc.Encode(s); err != nil {
				return false
			}
			if err := rc.Flush(); err != nil {
				return false
			}
			last = s
			heartbeat.Reset(Heartbeat)
			return true
		}
		changed := src.Changed()
		if !send(src.Snapshot()) {
			return
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case <-done:
				return
			case <-poll.C:
				// The arrival rate moves continuously: sent when it
				// moved enough to matter, not only on the heartbeat.
				if !Moved(last, src.Snapshot()) {
					continue
				}
			case <-heartbeat.C:
			case <-changed:
				// Coalesce a burst of changes into one snapshot.
				select {
				case <-r.Context().Done():
					return
				case <-done:
					return
				case <-time.After(MinGap):
				}
			}
			changed = src.Changed()
			if !send(src.Snapshot()) {
				return
			}
		}
	})
}

// Moved reports whether cur's arrival rates differ enough from prev's to
// send cur before the heartbeat: a Service added or gone, or either rate
// of one moved by at least RateStep of the larger value and at least
// MinRateStep requests/s. A step from 1 to 24 requests/s is then sent every
// Poll while it ramps through the windows; a steady rate's jitter is not.
func Moved(prev, cur Snapshot) bool {
	if len(prev.Services) != len(cur.Services) {
		return true
	}
	for i, c := range cur.Services {
		p := prev.Services[i]
		if p.Key() != c.Key() {
			return true
		}
		if rateMoved(p.ArrivalsPerSecond, c.ArrivalsPerSecond) || rateMoved(p.RecentArrivalsPerSecond, c.RecentArrivalsPerSecond) {
			return true
		}
	}
	return false
}

func rateMoved(a, b float64) bool {
	d := math.Abs(a - b)
	return d >= MinRateStep && d >= RateStep*max(a, b)
}

// Watch reads the stream at url, calling fn with every snapshot, until ctx
// ends, the stream ends, or a line is not a valid snapshot (the error says
// which). A stream silent for StaleAfter is an error too.
func Watch(ctx context.Context, client *http.Client, url string, fn func(Snapshot)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("watching demand at %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("watching demand at %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("watching demand at %s: HTTP %s: %s", url, resp.Status, b)
	}
	// A stalled stream (a replica frozen, a half-open connection) must not
	// keep its last snapshot alive: the read is cut after StaleAfter.
	alive := make(chan struct{}, 1)
	go func() {
		t := time.NewTimer(StaleAfter)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-alive:
				t.Reset(StaleAfter)
			case <-t.C:
				cancel()
				return
			}
		}
	}()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLine)
	for sc.Scan() {
		select {
		case alive <- struct{}{}:
		default:
		}
		s, err := Decode(sc.Bytes())
		if err != nil {
			return fmt.Errorf("watching demand at %s: %w", url, err)
		}
		fn(s)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watching demand at %s: %w", url, err)
	}
	return fmt.Errorf("watching demand at %s: stream ended", url)
}
