//go:build e2e

package manifests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mlscale/mlscale/internal/testenv"
)

// These tests build the binaries (`go build`, minutes on a busy machine), so
// they run with the e2e tag: go test -tags e2e ./manifests/.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// buildBinaries builds every cmd/<name> the manifests run, once per test
// binary, the way `make build` does.
func buildBinaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "mlscale-manifests-bin-")
		if buildErr != nil {
			return
		}
		var pkgs []string
		for _, b := range binaries {
			if _, err := os.Stat(filepath.Join("..", "cmd", strings.TrimPrefix(b, "/"), "main.go")); err == nil {
				pkgs = append(pkgs, "./cmd/"+strings.TrimPrefix(b, "/"))
			}
		}
		cmd := exec.Command("go", append([]string{"build", "-o", binDir + "/"}, pkgs...)...)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build %v: %v\n%s", pkgs, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// unknownFlag is how Go's flag package and pflag (the adapter's, via
// custom-metrics-apiserver) report a flag they do not define.
var unknownFlag = regexp.MustCompile(`flag provided but not defined|unknown flag|unknown shorthand flag`)

// TestArgsAreFlagsTheBinariesDefine runs every container's command with its
// manifest arguments followed by --help: both flag packages parse left to
// right and stop at --help, so an argument the binary does not define (a
// renamed flag, a typo) is reported before the help text.
func TestArgsAreFlagsTheBinariesDefine(t *testing.T) {
	dir := buildBinaries(t)
	seen := map[string]bool{}
	for name, objs := range renderAll(t) {
		for _, pt := range podTemplates(t, objs) {
			for _, c := range pt.spec.Containers {
				bin := filepath.Join(dir, strings.TrimPrefix(c.Command[0], "/"))
				key := c.Command[0] + " " + strings.Join(c.Args, " ")
				if seen[key] {
					continue
				}
				seen[key] = true
				t.Run(name+"/"+pt.where+"/"+c.Name, func(t *testing.T) {
					if _, err := os.Stat(bin); err != nil {
						testenv.RequireOrSkip(t, fmt.Sprintf("%s is not built (cmd/%s missing)", c.Command[0], filepath.Base(bin)))
					}
					args := append(expandArgs(c, "127.0.0.1"), "--help")
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput()
					if m := unknownFlag.Find(out); m != nil {
						line := string(out)
						if i := strings.Index(line, string(m)); i >= 0 {
							line = line[i:]
							if j := strings.IndexByte(line, '\n'); j >= 0 {
								line = line[:j]
							}
						}
						t.Errorf("%s rejects the manifest's arguments: %s", c.Command[0], line)
					}
				})
			}
		}
	}
}

// expandArgs does the kubelet's $(VAR) expansion for the variables the
// manifests use.
func expandArgs(c corev1.Container, podIP string) []string {
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = strings.ReplaceAll(a, "$(POD_IP)", podIP)
	}
	return out
}

// TestModelServerAnswersItsProbes starts the real model server with each
// overlay's arguments (the image's model path mapped to the repository's,
// the listen address to loopback) and requests every probe path and the
// prometheus.io path the manifests name: each must answer 200.
func TestModelServerAnswersItsProbes(t *testing.T) {
	dir := buildBinaries(t)
	for _, name := range []string{"local", "seldon", "eks"} {
		t.Run(name, func(t *testing.T) {
			for _, pt := range podTemplates(t, renderAll(t)[name]) {
				for _, c := range pt.spec.Containers {
					if c.Command[0] != "/modelserver" {
						continue
					}
					var args []string
					for _, a := range expandArgs(c, "127.0.0.1") {
						switch {
						case strings.HasPrefix(a, "--listen="):
							a = "--listen=127.0.0.1:0"
						case a == "--model=/models/iris/model.joblib":
							a = "--model=modelserver/xgboost/testdata/model.joblib"
						}
						args = append(args, a)
					}
					base := startModelServer(t, filepath.Join(dir, "modelserver"), args)
					paths := []string{pt.meta["prometheus.io/path"]}
					for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
						if p != nil && p.HTTPGet != nil {
							paths = append(paths, p.HTTPGet.Path)
						}
					}
					for _, p := range paths {
						resp, err := http.Get(base + p)
						if err != nil {
							t.Fatal(err)
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							t.Errorf("GET %s: %s, want 200", p, resp.Status)
						}
					}
				}
			}
		})
	}
}

// startModelServer runs bin from the repository root and returns its base URL
// once it prints "listening on ADDR".
func startModelServer(t *testing.T, bin string, args []string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = ".."
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				addr <- a
			}
		}
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("model server exited: %s", stderr.String())
		}
		return "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatalf("model server did not start: %s", stderr.String())
	}
	return ""
}
