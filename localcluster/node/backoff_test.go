package node

import (
	"testing"
	"time"
)

func TestNextBackoff(t *testing.T) {
	const base = 10 * time.Second
	// Each step: how long the container ran before exiting, and the delay
	// the kubelet would wait before restarting it.
	steps := []struct {
		ran, want time.Duration
	}{
		// A crash loop at start-up: 10, 20, 40, 80 s.
		{time.Second, 10 * time.Second},
		{time.Second, 20 * time.Second},
		{2 * time.Second, 40 * time.Second},
		{time.Second, 80 * time.Second},
		// Then an hour of running: stable, back to 10 s...
		{time.Hour, 10 * time.Second},
		// ...and the next quick exit doubles that, not 10 s x 2^5.
		{time.Second, 20 * time.Second},
		{time.Second, 40 * time.Second},
		{time.Second, 80 * time.Second},
		{time.Second, 160 * time.Second},
		{time.Second, 5 * time.Minute},
		{time.Second, 5 * time.Minute},
		// Nine minutes is not stable (the kubelet's threshold is twice
		// the 5 minute cap).
		{9 * time.Minute, 5 * time.Minute},
		{11 * time.Minute, 10 * time.Second},
	}
	var prev time.Duration
	for i, s := range steps {
		got := nextBackoff(prev, base, s.ran)
		if got != s.want {
			t.Fatalf("step %d (ran %s after a %s back-off): %s, want %s", i, s.ran, prev, got, s.want)
		}
		prev = got
	}
}
