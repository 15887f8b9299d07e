// Package testenv holds what tests share about their environment: a test
// that proves something with a real component (a binary, an address, a
// cluster) may skip where that component is missing on a developer's
// machine, but never silently in CI.
package testenv

import (
	"os"
	"testing"
)

// CI reports whether the run is CI's: CI=true, as .ci/run sets it.
func CI() bool { return os.Getenv("CI") == "true" }

// RequireOrSkip is called when a real component the test needs is missing;
// what says which and how to get it. Under CI=true the test fails (a
// component CI should have is missing, so what the test proves went
// unproved); elsewhere it skips.
func RequireOrSkip(t testing.TB, what string) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true and a component this test needs is missing: %s", what)
	}
	t.Skip(what)
}

// SkipIfShort skips a long test under -short, which developers pass for a
// quick loop. CI does not pass -short; if it ever does under CI=true, the
// test fails rather than leave what it proves unproved.
func SkipIfShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		RequireOrSkip(t, "-short leaves it out: "+what)
	}
}
