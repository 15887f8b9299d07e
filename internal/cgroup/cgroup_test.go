package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/procfs"

	"github.com/mlscale/mlscale/internal/testenv"
)

// The test binary doubles as the measured process: MLSCALE_CGROUP_HELPER=busy
// spins on every CPU, =alloc touches 256 MiB of memory then sleeps.
func init() {
	switch os.Getenv("MLSCALE_CGROUP_HELPER") {
	case "busy":
		for i := 0; i < runtime.NumCPU(); i++ {
			go func() {
				for {
				}
			}()
		}
		select {}
	case "alloc":
		buf := make([]byte, 256<<20)
		for i := 0; i < len(buf); i += 4096 {
			buf[i] = 1
		}
		fmt.Println("allocated")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
}

func TestParseMountinfo(t *testing.T) {
	text := `22 28 0:20 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
23 22 0:21 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
24 22 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
25 22 0:23 /nested /sys/fs/cgroup/memory\040x rw - cgroup cgroup rw,memory
26 22 0:24 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw
garbage line`
	got := parseMountinfo(text)
	want := []mountPoint{
		{dir: "/sys/fs/cgroup/cpu", root: "/", opts: []string{"rw", "cpu"}},
		{dir: "/sys/fs/cgroup/cpu,cpuacct", root: "/", opts: []string{"rw", "cpu", "cpuacct"}},
		{dir: "/sys/fs/cgroup/memory x", root: "/nested", opts: []string{"rw", "memory"}},
		{dir: "/sys/fs/cgroup/unified", root: "/", v2: true},
	}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(mountPoint{})); d != "" {
		t.Errorf("parseMountinfo (-want +got):\n%s", d)
	}
	own := ownPaths("12:cpu,cpuacct:/a\n4:memory:/process_api/x\n0::/user.slice\n")
	if d := cmp.Diff(map[string]string{"cpu": "/a", "cpuacct": "/a", "memory": "/process_api/x", "": "/user.slice"}, own); d != "" {
		t.Errorf("ownPaths (-want +got):\n%s", d)
	}
}

// detect over fake hierarchies in a temporary directory: which version and
// which parent directories it picks.
func TestDetect(t *testing.T) {
	tmp := t.TempDir()
	mk := func(p string, files map[string]string) string {
		d := filepath.Join(tmp, p)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for f, v := range files {
			if err := os.WriteFile(filepath.Join(d, f), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	v2full := mk("v2full", map[string]string{"cgroup.controllers": "cpuset cpu io memory pids", "cgroup.subtree_control": ""})
	v2bare := mk("v2bare", map[string]string{"cgroup.controllers": "hugetlb"})
	cpu := mk("cpu", nil)
	cpuacct := mk("cpuacct", nil)
	mem := mk("memory", nil)
	both := mk("cpu,cpuacct", nil)
	line := func(dir, root, fstype, opts string) string {
		return fmt.Sprintf("1 1 0:1 %s %s rw - %s %s %s", root, dir, fstype, fstype, opts)
	}
	tests := []struct {
		name, mounts, self string
		wantVersion        Version
		wantCPU, wantMem   string
		wantErr            bool
	}{
		{name: "v2 with cpu", mounts: line(v2full, "/", "cgroup2", "rw"), self: "0::/user.slice/x.scope",
			wantVersion: V2, wantCPU: filepath.Join(v2full, "sub"), wantMem: filepath.Join(v2full, "sub")},
		{name: "hybrid: v2 without cpu, v1 separate mounts, nested own memory cgroup",
			mounts: strings.Join([]string{line(v2bare, "/", "cgroup2", "rw"), line(cpu, "/", "cgroup", "rw,cpu"),
				line(cpuacct, "/", "cgroup", "rw,cpuacct"), line(mem, "/", "cgroup", "rw,memory")}, "\n"),
			self:        "4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/",
			wantVersion: V1, wantCPU: filepath.Join(cpu, "sub"), wantMem: filepath.Join(mem, "process_api/abc/sub")},
		{name: "v1 co-mounted cpu,cpuacct, no memory", mounts: line(both, "/", "cgroup", "rw,cpu,cpuacct"), self: "3:cpu,cpuacct:/",
			wantVersion: V1, wantCPU: filepath.Join(both, "sub")},
		{name: "nothing", mounts: line(v2bare, "/", "cgroup2", "rw"), self: "0::/", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := detect(tc.mounts, tc.self, "sub")
			if tc.wantErr {
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("detect: %v, want ErrUnavailable", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Version() != tc.wantVersion || m.cpu != tc.wantCPU || m.memory != tc.wantMem {
				t.Errorf("got %s cpu=%q memory=%q, want %s cpu=%q memory=%q", m.Version(), m.cpu, m.memory, tc.wantVersion, tc.wantCPU, tc.wantMem)
			}
			if (m.memory == "") != (m.MemoryError() != nil) {
				t.Errorf("memory %q but MemoryError %v", m.memory, m.MemoryError())
			}
		})
	}
}

// The files a v2 group is limited and read through, on a fake tree: the
// kernel's formats as the kubelet and runc write and read them.
func TestV2Files(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu memory\n"), 0o644)
	m, err := NewV2(filepath.Join(root, "mlscale"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "cgroup.subtree_control")); string(b) != "+cpu +memory" {
		t.Errorf("root subtree_control %q, want +cpu +memory delegated", b)
	}
	g, err := m.Create("pod1/c", Limits{CPUMilli: 250, CPURequestMilli: 100, MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "mlscale", "pod1", "c")
	for file, want := range map[string]string{"cpu.max": "25000 100000", "cpu.weight": "4", "memory.max": "67108864"} {
		if b, _ := os.ReadFile(filepath.Join(dir, file)); string(b) != want {
			t.Errorf("%s = %q, want %q", file, b, want)
		}
	}
	os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 1500000\nuser_usec 1000000\nnr_periods 40\nnr_throttled 30\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "memory.current"), []byte("10485760\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "memory.stat"), []byte("anon 8388608\ninactive_file 2097152\n"), 0o644)
	u, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(Usage{CPUNanos: 1.5e9, WorkingSetBytes: 8 << 20, Periods: 40, ThrottledPeriods: 30, Memory: true}, u); d != "" {
		t.Errorf("Usage (-want +got):\n%s", d)
	}
	if err := g.Set(Limits{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cpu.max")); string(b) != "max 100000" {
		t.Errorf("unlimited cpu.max = %q", b)
	}
}

func TestConversions(t *testing.T) {
	for _, tc := range []struct {
		milli          int64
		quota          int64
		shares, weight uint64
	}{
		{0, 0, 2, 1}, {1, 1000, 2, 1}, {5, 1000, 5, 1}, {250, 25000, 256, 10}, {1000, 100000, 1024, 39}, {2500, 250000, 2560, 98},
	} {
		if q := Quota(tc.milli); q != tc.quota {
			t.Errorf("Quota(%d) = %d, want %d", tc.milli, q, tc.quota)
		}
		if s := Shares(tc.milli); s != tc.shares {
			t.Errorf("Shares(%d) = %d, want %d", tc.milli, s, tc.shares)
		}
		if w := Weight(Shares(tc.milli)); w != tc.weight {
			t.Errorf("Weight(Shares(%d)) = %d, want %d", tc.milli, w, tc.weight)
		}
	}
}

// realManager is this machine's cgroups, or a failure under CI (these
// machines run as root with a writable cpu controller) and a logged skip
// elsewhere.
func realManager(t *testing.T) *Manager {
	t.Helper()
	m, err := Detect(fmt.Sprintf("mlscale-test-%d", os.Getpid()))
	if err != nil {
		testenv.RequireOrSkip(t, fmt.Sprintf("no usable cgroup here (needs root and a cgroup cpu controller): %v", err))
	}
	t.Cleanup(func() {
		if err := m.Root().Destroy(10 * time.Second); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return m
}

func helper(t *testing.T, kind string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MLSCALE_CGROUP_HELPER="+kind)
	return cmd
}

func procCPUSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	p, err := procfs.NewProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return st.CPUTime()
}

// A process spinning on both cores, limited to 250m, uses a quarter of a
// core: measured from the cgroup (what the node agent reports) and from
// /proc (what the kernel charged the process), over the same 3 s.
func TestCPULimitOnBusyLoop(t *testing.T) {
	m := realManager(t)
	// The large request (cpu.shares) keeps the machine's other work from
	// starving the helper below its quota, so the lower bound measures the
	// limit rather than contention; the quota is the 250m limit.
	g, err := m.Create("pod/busy", Limits{CPUMilli: 250, CPURequestMilli: 100000})
	if err != nil {
		t.Fatal(err)
	}
	cmd := helper(t, "busy")
	// The helper joins before it runs anything, as the node agent's
	// container helper does; here the test adds it right after start.
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	u0, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	p0, t0 := procCPUSeconds(t, cmd.Process.Pid), time.Now()
	time.Sleep(3 * time.Second)
	u1, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	p1, t1 := procCPUSeconds(t, cmd.Process.Pid), time.Now()
	wall := t1.Sub(t0).Seconds()
	byCgroup := (u1.CPUSeconds() - u0.CPUSeconds()) / wall
	byProc := (p1 - p0) / wall
	t.Logf("limit 250m on %d CPUs: %.3f cores by the cgroup, %.3f by /proc; %d of %d periods throttled",
		runtime.NumCPU(), byCgroup, byProc, u1.ThrottledPeriods-u0.ThrottledPeriods, u1.Periods-u0.Periods)
	for name, v := range map[string]float64{"cgroup": byCgroup, "/proc": byProc} {
		if v < 0.2 || v > 0.3 {
			t.Errorf("by %s the busy loop used %.3f cores, want 0.2-0.3 under a 250m limit", name, v)
		}
	}
	if u1.ThrottledPeriods <= u0.ThrottledPeriods {
		t.Errorf("no throttled periods: the quota did not bind")
	}
	procs, err := g.Procs()
	if err != nil || len(procs) != 1 || procs[0] != cmd.Process.Pid {
		t.Errorf("Procs = %v, %v; want [%d]", procs, err, cmd.Process.Pid)
	}
	// Destroy kills what is left and removes the group.
	if err := m.Group("pod").Destroy(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("the helper ended with %v, want SIGKILL from Destroy", err)
	}
	if _, err := os.Stat(filepath.Join(m.cpu, "pod")); !os.IsNotExist(err) {
		t.Errorf("the pod's cgroup is still there: %v", err)
	}
}

// A process that touches 256 MiB under a 64 MiB limit is killed by the
// kernel's OOM killer, where the memory controller is writable.
func TestMemoryLimit(t *testing.T) {
	m := realManager(t)
	if m.MemoryError() != nil {
		testenv.RequireOrSkip(t, fmt.Sprintf("memory not limited on this machine: %v", m.MemoryError()))
	}
	g, err := m.Create("pod/alloc", Limits{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cmd := helper(t, "alloc")
	// Joining before exec, as the node agent's helper does: the child
	// writes itself into the group; here the shell wrapper does it.
	sh := exec.Command("sh", "-c", "for f in \"$@\"; do echo $$ > $f || exit 99; done; exec "+strconv.Quote(cmd.Path)+" -test.run=^$", "sh")
	sh.Args = append(sh.Args, g.ProcsFiles()...)
	sh.Env = cmd.Env
	out, err := sh.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the 256 MiB helper under a 64 MiB limit ended with %v (%s), want killed by the OOM killer", err, out)
	}
	if strings.Contains(string(out), "allocated") {
		t.Errorf("the helper finished allocating: %s", out)
	}
}
