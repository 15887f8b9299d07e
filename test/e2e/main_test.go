//go:build e2e

// Package e2e runs mlscale on the local cluster: `make e2e` builds the
// binaries, starts `localcluster up` once for the whole package, and the
// tests deploy to it with client-go and the cached kubectl.
package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var (
	keep       = flag.Bool("keep", false, "leave the cluster's state directory behind")
	gatewayURL = "http://127.0.0.1:18080"

	env struct {
		repo, bin, state, kubeconfig, kubectl string
		client                                kubernetes.Interface
	}
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	repo, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env.repo, env.bin = repo, filepath.Join(repo, "bin")
	for _, b := range []string{"localcluster", "modelserver"} {
		if _, err := os.Stat(filepath.Join(env.bin, b)); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v: run `make build` first (make e2e does)\n", err)
			return 1
		}
	}
	state, err := os.MkdirTemp("", "mlscale-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	env.state = filepath.Join(state, "run")
	logPath := filepath.Join(state, "localcluster.log")
	logf, err := os.Create(logPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	args := []string{"up", "--state-dir", env.state, "--gateway", strings.TrimPrefix(gatewayURL, "http://"),
		"--repo", env.repo, "--bin", env.bin}
	// For a quick run of the tests that do not need it (TestSmoke).
	if os.Getenv("MLSCALE_E2E_NO_METRICS_SERVER") == "1" {
		args = append(args, "--no-metrics-server")
	}
	// KEDA for TestKEDAThroughActivator; MLSCALE_E2E_NO_KEDA=1 leaves it out.
	if os.Getenv("MLSCALE_E2E_NO_KEDA") != "1" {
		args = append(args, "--keda")
	}
	cmd := exec.Command(filepath.Join(env.bin, "localcluster"), args...)
	cmd.Dir = repo
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting localcluster:", err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(90 * time.Second):
			fmt.Fprintln(os.Stderr, "e2e: localcluster did not stop within 90s after SIGINT; killing it")
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if !*keep {
			os.RemoveAll(state)
		} else {
			fmt.Fprintln(os.Stderr, "e2e: state kept in", state)
		}
	}
	// The components are built by `make cluster-build` before this; a cold
	// cache still works, it only takes as long as the build.
	ready := filepath.Join(env.state, "ready")
	for {
		if data, err := os.ReadFile(ready); err == nil {
			env.kubeconfig = strings.TrimSpace(string(data))
			break
		}
		select {
		case err := <-exited:
			exited <- err
			fmt.Fprintf(os.Stderr, "e2e: localcluster exited before it was ready (%v); its log:\n%s\n", err, tail(logPath))
			stop()
			return 1
		case <-time.After(500 * time.Millisecond):
		}
		if time.Since(start) > 45*time.Minute {
			fmt.Fprintf(os.Stderr, "e2e: localcluster not ready after 45m; its log:\n%s\n", tail(logPath))
			stop()
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "e2e: local cluster ready in %s\n", time.Since(start).Round(time.Second))
	cfg, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		stop()
		return 1
	}
	env.client = kubernetes.NewForConfigOrDie(cfg)
	kc, err := filepath.Glob(filepath.Join(cacheDir(), "kubernetes-*", "bin", "kubectl"))
	if err == nil && len(kc) > 0 {
		env.kubectl = kc[0]
	} else if p, err := exec.LookPath("kubectl"); err == nil {
		env.kubectl = p
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: localcluster log tail:\n%s\n", tail(logPath))
		printComponentLogs()
	}
	stop()
	return code
}

func cacheDir() string {
	if d := os.Getenv("MLSCALE_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "mlscale")
}

func tail(path string) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(string(bytes.TrimRight(data, "\n")), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	return strings.Join(lines, "\n")
}

// kubectl runs the cached kubectl against the cluster.
func kubectl(t *testing.T, ctx context.Context, stdin []byte, args ...string) string {
	t.Helper()
	if env.kubectl == "" {
		t.Fatal("kubectl is not in the cache")
	}
	cmd := exec.CommandContext(ctx, env.kubectl, append([]string{"--kubeconfig", env.kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// printComponentLogs prints, after a failure, the tail of every container
// log of KEDA's operator and metrics server and of mlscale's adapter and
// scaler that ran in this cluster (deleted pods included: the node agent
// keeps each pod's <container>.log, appended across restarts, under
// node/pods/<namespace>_<pod>_<uid>/).
func printComponentLogs() {
	for _, pattern := range []string{"keda_keda-operator-*", "keda_keda-metrics-apiserver-*", "mlscale_mlscale-adapter-*", "mlscale_mlscale-scaler-*"} {
		for _, l := range containerLogs(pattern, "*") {
			fmt.Fprintf(os.Stderr, "e2e: %s (tail):\n%s\n", strings.TrimPrefix(l, env.state+"/"), tail(l))
		}
	}
}

// containerLogs lists the container logs the node agent kept for the pods
// whose <namespace>_<pod>_<uid> directory matches pod (deleted pods
// included), for containers matching container.
func containerLogs(pod, container string) []string {
	logs, _ := filepath.Glob(filepath.Join(env.state, "node", "pods", pod, container+".log"))
	return logs
}
