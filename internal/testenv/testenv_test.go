package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRequireOrSkip runs a child test with and without CI=true: it must
// skip outside CI and fail in CI, naming the component.
func TestRequireOrSkip(t *testing.T) {
	if os.Getenv("MLSCALE_TESTENV_CHILD") == "1" {
		RequireOrSkip(t, "the frobnicator is not installed")
		t.Fatal("RequireOrSkip returned")
	}
	for _, tc := range []struct {
		ci       string
		wantFail bool
		want     string
	}{
		{"", false, "--- SKIP: TestRequireOrSkip"},
		{"false", false, "--- SKIP: TestRequireOrSkip"},
		{"true", true, "CI=true and a component this test needs is missing: the frobnicator is not installed"},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestRequireOrSkip$", "-test.v")
			cmd.Env = append(os.Environ(), "MLSCALE_TESTENV_CHILD=1", "CI="+tc.ci)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tc.wantFail {
				t.Errorf("child failed = %v, want %v\n%s", failed, tc.wantFail, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("child output lacks %q:\n%s", tc.want, out)
			}
			if !tc.wantFail && !strings.Contains(string(out), "the frobnicator is not installed") {
				t.Errorf("the skip does not say what is missing:\n%s", out)
			}
		})
	}
}
