package node

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/mlscale/mlscale/internal/testenv"
)

func TestMain(m *testing.M) {
	// The container helper is this test binary re-executed.
	MaybeRunHelper()
	os.Exit(m.Run())
}

// helperCommand runs the container helper (this test binary re-executed) on
// spec in a new mount namespace, as the agent starts containers.
func helperCommand(spec []byte) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self, helperArg, string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	return cmd
}

// The helper mounts a volume where the container expects it, read-only when
// asked, and the host does not see the mount.
func TestHelperMountsPrivately(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequireOrSkip(t, "mount namespaces need root")
	}
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "token"), []byte("bound-token"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "var/run/secrets/kubernetes.io/serviceaccount")
	sh, err := exec.LookPath("sh")
	if err != nil {
		testenv.RequireOrSkip(t, "no sh")
	}
	spec, _ := json.Marshal(execSpec{
		Mounts: []Mount{{Source: vol, Target: target, ReadOnly: true}},
		Path:   sh,
		Args:   []string{"-c", "cat " + target + "/token; echo; touch " + target + "/x 2>/dev/null && echo writable || echo read-only"},
	})
	out, err := helperCommand(spec).CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if got, want := string(out), "bound-token\nread-only\n"; got != want {
		t.Errorf("inside the namespace: %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(target, "token")); !os.IsNotExist(err) {
		t.Errorf("the host sees the container's mount (stat: %v)", err)
	}
}

func TestHelperReportsBadSource(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequireOrSkip(t, "mount namespaces need root")
	}
	spec, _ := json.Marshal(execSpec{Mounts: []Mount{{Source: "/nonexistent/volume", Target: t.TempDir() + "/m"}}, Path: "/bin/true"})
	out, err := helperCommand(spec).CombinedOutput()
	if err == nil {
		t.Fatalf("helper succeeded with a missing volume: %s", out)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 127 {
		t.Errorf("exit %v, want 127", err)
	}
}

// A volume mounted over a directory that holds another volume's source and
// the program itself (metrics-server's emptyDir at /tmp while the state
// directory is in /tmp) hides neither, and the deeper mount lands inside the
// shallower one whatever order the pod lists them in.
func TestHelperMountOverSources(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequireOrSkip(t, "mount namespaces need root")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		testenv.RequireOrSkip(t, "no sh")
	}
	base := t.TempDir()
	state := filepath.Join(base, "state")
	token := filepath.Join(state, "token-volume")
	if err := os.MkdirAll(token, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(token, "token"), []byte("bound-token"), 0o644); err != nil {
		t.Fatal(err)
	}
	shData, err := os.ReadFile(sh)
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(state, "sh")
	if err := os.WriteFile(prog, shData, 0o755); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	spec, _ := json.Marshal(execSpec{
		Mounts: []Mount{
			{Source: token, Target: filepath.Join(base, "secrets"), ReadOnly: true},
			{Source: empty, Target: base},
		},
		Path: prog,
		Args: []string{"-c", "cat " + base + "/secrets/token; echo; test -e " + state + " && echo state-visible || echo state-hidden"},
	})
	out, err := helperCommand(spec).CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if got, want := string(out), "bound-token\nstate-hidden\n"; got != want {
		t.Errorf("inside the namespace: %q, want %q", got, want)
	}
}
