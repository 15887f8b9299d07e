// Package cgroup puts processes into Linux control groups, limits their CPU
// (CFS quota) and memory, and reads their usage the way the kubelet does:
// CPU from cpuacct.usage (v1) or cpu.stat usage_usec (v2), the working set
// as usage minus inactive file pages. The local cluster's node agent runs
// each container in one, and `loadgen tune` limits a model server on
// loopback the same way.
//
// Both hierarchies are supported and detected from /proc/self/mountinfo:
// cgroup v2 when its mount offers the cpu controller, else the v1 cpu,
// cpuacct and memory hierarchies (separate or co-mounted). Groups are made
// below the calling process's own cgroup in v1 (so they stay inside any
// limit the caller is under) and below the v2 root, where controllers can be
// delegated (v2 forbids enabling them under a cgroup that holds processes).
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Version is the cgroup hierarchy in use.
type Version int

const (
	V1 Version = 1
	V2 Version = 2
)

func (v Version) String() string { return "v" + strconv.Itoa(int(v)) }

// PeriodMicros is the CFS period the quota is a share of: the kubelet's
// default (100 ms).
const PeriodMicros = 100000

// Limits is what a group may use; zero fields are unlimited.
type Limits struct {
	// CPUMilli is the CPU limit in millicores (resources.limits.cpu): a
	// CFS quota of CPUMilli/1000 of each period.
	CPUMilli int64
	// CPURequestMilli is the request (resources.requests.cpu): the group's
	// weight against others when the CPUs are contended (cpu.shares or
	// cpu.weight, as the kubelet converts it).
	CPURequestMilli int64
	// MemoryBytes is the memory limit (resources.limits.memory).
	MemoryBytes int64
}

// Usage is what a group has used.
type Usage struct {
	// CPUNanos is the cumulative CPU time of every process that ever ran
	// in the group (or its children).
	CPUNanos uint64
	// WorkingSetBytes is memory usage minus inactive file cache, what the
	// kubelet reports and evicts on; 0 when the memory controller is not
	// in use.
	WorkingSetBytes uint64
	// Periods and ThrottledPeriods count CFS periods with runnable work and
	// those in which the quota ran out.
	Periods, ThrottledPeriods uint64
	// Memory says whether WorkingSetBytes was measured.
	Memory bool
}

// CPUSeconds is CPUNanos in seconds.
func (u Usage) CPUSeconds() float64 { return float64(u.CPUNanos) / 1e9 }

// Manager makes groups under one parent directory per hierarchy.
type Manager struct {
	version Version
	// v1: the parent directory in each controller's hierarchy (cpu and
	// cpuacct may be the same directory when co-mounted); v2: one.
	cpu, cpuacct, memory string
	// memoryErr says why memory is not limited or measured, when not.
	memoryErr error
}

// ErrUnavailable is wrapped by Detect's error when this machine offers no
// writable CPU controller (no cgroup mount, not root, a read-only mount).
var ErrUnavailable = errors.New("cgroup CPU controller unavailable")

// Detect finds the cgroup hierarchies of this machine and prepares the
// parent directory sub (e.g. "mlscale/node-a.1234") in each, creating it.
// It fails (wrapping ErrUnavailable) when no CPU controller can be written.
func Detect(sub string) (*Manager, error) {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("%w: reading mountinfo: %v", ErrUnavailable, err)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("%w: reading /proc/self/cgroup: %v", ErrUnavailable, err)
	}
	return detect(string(mounts), string(own), sub)
}

type mountPoint struct {
	dir, root string
	v2        bool
	opts      []string
}

func parseMountinfo(text string) []mountPoint {
	var out []mountPoint
	for _, line := range strings.Split(text, "\n") {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		p := strings.Fields(post)
		if len(f) < 5 || len(p) < 1 {
			continue
		}
		switch p[0] {
		case "cgroup2":
			out = append(out, mountPoint{dir: unescape(f[4]), root: unescape(f[3]), v2: true})
		case "cgroup":
			var opts []string
			if len(p) >= 3 {
				opts = strings.Split(p[2], ",")
			}
			out = append(out, mountPoint{dir: unescape(f[4]), root: unescape(f[3]), opts: opts})
		}
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownPaths maps a v1 controller (or "" for v2) to this process's cgroup
// path, from /proc/self/cgroup.
func ownPaths(text string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func detect(mountinfo, self, sub string) (*Manager, error) {
	mounts := parseMountinfo(mountinfo)
	own := ownPaths(self)
	for _, m := range mounts {
		if !m.v2 {
			continue
		}
		ctrl, err := os.ReadFile(filepath.Join(m.dir, "cgroup.controllers"))
		if err != nil || !has(strings.Fields(string(ctrl)), "cpu") {
			continue // a hybrid machine's v2 mount without controllers
		}
		return NewV2(filepath.Join(m.dir, sub))
	}
	dirs := map[string]string{}
	for _, m := range mounts {
		if m.v2 {
			continue
		}
		for _, c := range []string{"cpu", "cpuacct", "memory"} {
			if has(m.opts, c) && dirs[c] == "" {
				rel := strings.TrimPrefix(own[c], m.root)
				dirs[c] = filepath.Join(m.dir, rel, sub)
			}
		}
	}
	if dirs["cpu"] == "" || dirs["cpuacct"] == "" {
		return nil, fmt.Errorf("%w: no cgroup v2 mount with the cpu controller and no v1 cpu and cpuacct hierarchies in /proc/self/mountinfo", ErrUnavailable)
	}
	return NewV1(dirs["cpu"], dirs["cpuacct"], dirs["memory"])
}

// NewV1 uses the given parent directories of the v1 hierarchies, creating
// them; memory may be "" (not limited or measured).
func NewV1(cpu, cpuacct, memory string) (*Manager, error) {
	m := &Manager{version: V1, cpu: cpu, cpuacct: cpuacct}
	for _, d := range []string{cpu, cpuacct} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("%w: creating %s: %v", ErrUnavailable, d, err)
		}
	}
	switch {
	case memory == "":
		m.memoryErr = errors.New("no v1 memory hierarchy mounted")
	default:
		if err := os.MkdirAll(memory, 0o755); err != nil {
			m.memoryErr = fmt.Errorf("creating %s: %w", memory, err)
		} else {
			m.memory = memory
		}
	}
	return m, nil
}

// NewV2 uses dir, a directory of a cgroup v2 hierarchy, as the parent,
// creating it and delegating the cpu (and, if offered, memory) controllers
// down to it.
func NewV2(dir string) (*Manager, error) {
	root, err := v2Root(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	m := &Manager{version: V2, cpu: dir, cpuacct: dir}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: creating %s: %v", ErrUnavailable, dir, err)
	}
	ctrl, _ := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	want := []string{"+cpu"}
	memory := has(strings.Fields(string(ctrl)), "memory")
	if memory {
		want = append(want, "+memory")
	} else {
		m.memoryErr = errors.New("the cgroup v2 hierarchy offers no memory controller")
	}
	// Every level from the root down to dir delegates the controllers,
	// so the groups made in dir have them.
	rel, _ := filepath.Rel(root, dir)
	cur := root
	for _, part := range append([]string{""}, strings.Split(rel, string(filepath.Separator))...) {
		cur = filepath.Join(cur, part)
		if err := os.WriteFile(filepath.Join(cur, "cgroup.subtree_control"), []byte(strings.Join(want, " ")), 0o644); err != nil {
			return nil, fmt.Errorf("%w: enabling %v in %s: %v", ErrUnavailable, want, cur, err)
		}
	}
	if memory {
		m.memory = dir
	}
	return m, nil
}

// v2Root walks up from dir to the first existing directory with
// cgroup.controllers whose parent has none: the hierarchy's root.
func v2Root(dir string) (string, error) {
	d := filepath.Clean(dir)
	for {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			parent := filepath.Dir(d)
			if _, err := os.Stat(filepath.Join(parent, "cgroup.controllers")); err != nil || parent == d {
				return d, nil
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("%s is not inside a cgroup v2 hierarchy", dir)
		}
		d = parent
	}
}

// Version is the hierarchy in use.
func (m *Manager) Version() Version { return m.version }

// MemoryError says why memory is neither limited nor measured; nil when it is.
func (m *Manager) MemoryError() error { return m.memoryErr }

// Group is one control group, present in every hierarchy the manager uses.
type Group struct {
	m   *Manager
	rel string
}

// Path is the group's path below the manager's parent.
func (g *Group) Path() string { return g.rel }

func (g *Group) dirs() []string {
	seen := map[string]bool{}
	var out []string
	for _, base := range []string{g.m.cpu, g.m.cpuacct, g.m.memory} {
		if base == "" || seen[base] {
			continue
		}
		seen[base] = true
		out = append(out, filepath.Join(base, g.rel))
	}
	return out
}

// Create makes the group rel (slash-separated, below the parent; parents
// are made as needed) and applies l. An existing group is reused and its
// limits set again.
func (m *Manager) Create(rel string, l Limits) (*Group, error) {
	g := &Group{m: m, rel: filepath.Clean(rel)}
	for _, d := range g.dirs() {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating cgroup %s: %w", d, err)
		}
	}
	if err := g.Set(l); err != nil {
		return nil, err
	}
	return g, nil
}

// Group names an existing (or future) group without creating it.
func (m *Manager) Group(rel string) *Group { return &Group{m: m, rel: filepath.Clean(rel)} }

// Root is the manager's parent directory as a group: what every group made
// by this manager adds up to.
func (m *Manager) Root() *Group { return &Group{m: m, rel: "."} }

// Siblings lists the groups next to the manager's parent whose names start
// with prefix (other agents' parents), not the manager's own.
func (m *Manager) Siblings(prefix string) []string {
	own := filepath.Base(m.cpu)
	entries, err := os.ReadDir(filepath.Dir(m.cpu))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) && e.Name() != own {
			out = append(out, e.Name())
		}
	}
	return out
}

// Sibling names the group next to the manager's parent (see Siblings).
func (m *Manager) Sibling(name string) *Group {
	return &Group{m: m, rel: filepath.Join("..", filepath.Base(name))}
}

func write(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o644); err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, filepath.Join(dir, file), err)
	}
	return nil
}

// Shares converts a CPU request to v1 cpu.shares as the kubelet does
// (1024 per core, at least 2).
func Shares(milli int64) uint64 {
	if milli <= 0 {
		return 2
	}
	s := uint64(milli) * 1024 / 1000
	if s < 2 {
		return 2
	}
	return s
}

// Weight converts v1 shares to v2 cpu.weight (1-10000) with the formula
// of the kubelet and runc.
func Weight(shares uint64) uint64 {
	if shares < 2 {
		shares = 2
	}
	if shares > 262144 {
		shares = 262144
	}
	return 1 + ((shares-2)*9999)/262142
}

// Quota is the CFS quota in microseconds per PeriodMicros for a limit in
// millicores, at least the kernel's 1 ms minimum; 0 means no limit.
func Quota(milli int64) int64 {
	if milli <= 0 {
		return 0
	}
	q := milli * PeriodMicros / 1000
	if q < 1000 {
		q = 1000
	}
	return q
}

// Set applies l to the group.
func (g *Group) Set(l Limits) error {
	cpuDir := filepath.Join(g.m.cpu, g.rel)
	q := Quota(l.CPUMilli)
	switch g.m.version {
	case V1:
		if err := write(cpuDir, "cpu.cfs_period_us", strconv.Itoa(PeriodMicros)); err != nil {
			return err
		}
		quota := "-1"
		if q > 0 {
			quota = strconv.FormatInt(q, 10)
		}
		if err := write(cpuDir, "cpu.cfs_quota_us", quota); err != nil {
			return err
		}
		if l.CPURequestMilli > 0 {
			if err := write(cpuDir, "cpu.shares", strconv.FormatUint(Shares(l.CPURequestMilli), 10)); err != nil {
				return err
			}
		}
	case V2:
		max := "max"
		if q > 0 {
			max = strconv.FormatInt(q, 10)
		}
		if err := write(cpuDir, "cpu.max", max+" "+strconv.Itoa(PeriodMicros)); err != nil {
			return err
		}
		if l.CPURequestMilli > 0 {
			if err := write(cpuDir, "cpu.weight", strconv.FormatUint(Weight(Shares(l.CPURequestMilli)), 10)); err != nil {
				return err
			}
		}
	}
	if g.m.memory == "" {
		return nil
	}
	memDir := filepath.Join(g.m.memory, g.rel)
	switch g.m.version {
	case V1:
		v := "-1"
		if l.MemoryBytes > 0 {
			v = strconv.FormatInt(l.MemoryBytes, 10)
		}
		return write(memDir, "memory.limit_in_bytes", v)
	default:
		v := "max"
		if l.MemoryBytes > 0 {
			v = strconv.FormatInt(l.MemoryBytes, 10)
		}
		return write(memDir, "memory.max", v)
	}
}

// ProcsFiles are the cgroup.procs files a process writes "0" to, or the
// agent writes its pid to, to join the group in every hierarchy.
func (g *Group) ProcsFiles() []string {
	var out []string
	for _, d := range g.dirs() {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	return out
}

// Join moves the calling process into the group (what a container runtime's
// init does before exec, so nothing the program starts escapes).
func Join(procsFiles []string) error {
	for _, f := range procsFiles {
		if err := os.WriteFile(f, []byte("0"), 0o644); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", filepath.Dir(f), err)
		}
	}
	return nil
}

// Add moves process pid (all its threads) into the group.
func (g *Group) Add(pid int) error {
	for _, f := range g.ProcsFiles() {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("adding pid %d to cgroup %s: %w", pid, filepath.Dir(f), err)
		}
	}
	return nil
}

// Procs lists the processes in the group and its children.
func (g *Group) Procs() ([]int, error) {
	var pids []int
	base := filepath.Join(g.m.cpu, g.rel)
	err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing processes of cgroup %s: %w", base, err)
	}
	return pids, nil
}

// Usage reads the group's CPU, memory and throttling.
func (g *Group) Usage() (Usage, error) {
	var u Usage
	cpuDir := filepath.Join(g.m.cpu, g.rel)
	stat, err := readKV(filepath.Join(cpuDir, "cpu.stat"))
	if err != nil {
		return u, err
	}
	u.Periods, u.ThrottledPeriods = stat["nr_periods"], stat["nr_throttled"]
	switch g.m.version {
	case V1:
		b, err := os.ReadFile(filepath.Join(g.m.cpuacct, g.rel, "cpuacct.usage"))
		if err != nil {
			return u, fmt.Errorf("reading CPU usage: %w", err)
		}
		u.CPUNanos, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return u, fmt.Errorf("parsing %s: %w", filepath.Join(g.m.cpuacct, g.rel, "cpuacct.usage"), err)
		}
	case V2:
		usec, ok := stat["usage_usec"]
		if !ok {
			return u, fmt.Errorf("%s has no usage_usec", filepath.Join(cpuDir, "cpu.stat"))
		}
		u.CPUNanos = usec * 1000
	}
	if g.m.memory == "" {
		return u, nil
	}
	memDir := filepath.Join(g.m.memory, g.rel)
	usageFile, inactiveKey := "memory.usage_in_bytes", "total_inactive_file"
	if g.m.version == V2 {
		usageFile, inactiveKey = "memory.current", "inactive_file"
	}
	b, err := os.ReadFile(filepath.Join(memDir, usageFile))
	if err != nil {
		return u, fmt.Errorf("reading memory usage: %w", err)
	}
	usage, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return u, fmt.Errorf("parsing %s: %w", filepath.Join(memDir, usageFile), err)
	}
	ms, err := readKV(filepath.Join(memDir, "memory.stat"))
	if err != nil {
		return u, err
	}
	if inactive := ms[inactiveKey]; inactive < usage {
		u.WorkingSetBytes = usage - inactive
	}
	u.Memory = true
	return u, nil
}

func readKV(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

// Destroy kills every process left in the group and its children (SIGKILL,
// as a runtime does once the grace period is over) and removes the group,
// children first. It gives up after timeout.
func (g *Group) Destroy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := g.Procs()
		if err != nil {
			return err
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		err = g.remove()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w (processes left: %v)", g.rel, err, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// remove deletes the group's directories deepest first in every hierarchy.
func (g *Group) remove() error {
	var firstErr error
	for _, base := range g.dirs() {
		var dirs []string
		_ = filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) && firstErr == nil {
				firstErr = fmt.Errorf("rmdir %s: %w", dirs[i], err)
			}
		}
	}
	return firstErr
}
