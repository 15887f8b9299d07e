package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mlscale/mlscale/internal/cgroup"
	corev1 "k8s.io/api/core/v1"
)

// cgroupPrefix names the node's parent group in each hierarchy; the agent's
// pid follows, so agents of several tests on one machine keep apart, and a
// group whose agent is gone is known to be stale.
const cgroupPrefix = "mlscale-node-"

// setupCgroups prepares the node's parent group: the kubelet's kubepods,
// with the node's allocatable CPU as its weight against the rest of the
// machine (the kubelet sets kubepods' cpu.shares from allocatable too).
func (a *Agent) setupCgroups() error {
	if a.cfg.Cgroups == CgroupsOff {
		return nil
	}
	name := fmt.Sprintf("%s%s-%d", cgroupPrefix, a.cfg.NodeName, os.Getpid())
	m, err := cgroup.Detect(name)
	if err != nil {
		if a.cfg.Cgroups == CgroupsRequired {
			return fmt.Errorf("node agent: enforcing resource limits: %w", err)
		}
		a.logf("resource limits are NOT enforced and CPU is read from /proc: %v", err)
		return nil
	}
	removeStaleGroups(m)
	cpus := a.cfg.CPUs
	if cpus <= 0 {
		cpus = runtime.NumCPU()
	}
	if err := m.Root().Set(cgroup.Limits{CPURequestMilli: int64(cpus) * 1000}); err != nil {
		return fmt.Errorf("node agent: setting the node's cgroup weight: %w", err)
	}
	a.cg = m
	mem := "memory limits enforced"
	if err := m.MemoryError(); err != nil {
		mem = fmt.Sprintf("memory limits NOT enforced (%v), memory read from /proc", err)
	}
	a.logf("cgroup %s: each container in its own group, limits.cpu as a CFS quota; %s", m.Version(), mem)
	return nil
}

// removeStaleGroups removes the groups of agents that are gone (killed
// without cleaning up), with whatever processes they left.
func removeStaleGroups(m *cgroup.Manager) {
	for _, name := range m.Siblings(cgroupPrefix) {
		i := strings.LastIndexByte(name, '-')
		pid, err := strconv.Atoi(name[i+1:])
		if err != nil || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		_ = m.Sibling(name).Destroy(5 * time.Second)
	}
}

// podGroupPath is the pod's group below the node's, as the kubelet's
// kubepods/pod<uid>.
func podGroupPath(pod *corev1.Pod) string { return "pod" + string(pod.UID) }

// containerLimits reads the container's CPU and memory resources.
func containerLimits(c *corev1.Container) cgroup.Limits {
	var l cgroup.Limits
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		l.CPUMilli = q.MilliValue()
	}
	if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
		l.CPURequestMilli = q.MilliValue()
	} else if l.CPUMilli > 0 {
		l.CPURequestMilli = l.CPUMilli // the API server defaults requests to limits
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		l.MemoryBytes = q.Value()
	}
	return l
}

// containerGroup makes a fresh group for one start of a container: a
// restarted container gets a new one (its counters start again, as the
// kubelet's do), after whatever the last one left is killed.
func (r *podRunner) containerGroup(c *corev1.Container) (*cgroup.Group, error) {
	if r.a.cg == nil {
		return nil, nil
	}
	path := filepath.Join(podGroupPath(r.pod), c.Name)
	if err := r.a.cg.Group(path).Destroy(5 * time.Second); err != nil {
		return nil, fmt.Errorf("removing the last cgroup of container %s: %w", c.Name, err)
	}
	g, err := r.a.cg.Create(path, containerLimits(c))
	if err != nil {
		return nil, fmt.Errorf("creating the cgroup of container %s: %w", c.Name, err)
	}
	return g, nil
}

// removePodGroup kills what is left of the pod and removes its groups.
func (r *podRunner) removePodGroup() {
	if r.a.cg == nil {
		return
	}
	if err := r.a.cg.Group(podGroupPath(r.pod)).Destroy(10 * time.Second); err != nil {
		r.logf("%v", err)
	}
}
