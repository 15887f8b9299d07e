package node

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/mlscale/mlscale/internal/cgroup"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/procfs"
	corev1 "k8s.io/api/core/v1"
)

// pidTable knows which container each running process is.
type pidTable struct {
	mu   sync.Mutex
	byID map[int]containerKey
}

type containerKey struct {
	namespace, pod, container string
	start                     time.Time
	// cg is the container's control group, nil when limits are not
	// enforced (usage then comes from /proc).
	cg *cgroup.Group
}

func newPidTable() *pidTable { return &pidTable{byID: map[int]containerKey{}} }

func (t *pidTable) add(pod *corev1.Pod, container string, pid int, start time.Time, cg *cgroup.Group) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byID[pid] = containerKey{pod.Namespace, pod.Name, container, start, cg}
}

func (t *pidTable) remove(pid int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.byID, pid)
}

func (t *pidTable) snapshot() map[int]containerKey {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int]containerKey, len(t.byID))
	for k, v := range t.byID {
		out[k] = v
	}
	return out
}

// Usage is a container's cumulative CPU and current memory.
type Usage struct {
	CPUSeconds float64
	// WorkingSetBytes is the resident set of the process tree: the kubelet
	// uses the cgroup's working set, which processes without a cgroup of
	// their own do not have; RSS is its closest per-process measure.
	WorkingSetBytes float64
}

// TreeUsage sums CPU (including reaped children's, from cutime/cstime) and
// RSS over each root's process tree, read from procfs.
func TreeUsage(fs procfs.FS, roots []int) (map[int]Usage, error) {
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	children := map[int][]int{}
	stats := map[int]procfs.ProcStat{}
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // exited meanwhile
		}
		stats[p.PID] = st
		children[st.PPID] = append(children[st.PPID], p.PID)
	}
	out := map[int]Usage{}
	for _, root := range roots {
		var u Usage
		stack := []int{root}
		for len(stack) > 0 {
			pid := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			st, ok := stats[pid]
			if !ok {
				continue
			}
			u.CPUSeconds += st.CPUTime() + float64(st.CUTime+st.CSTime)/userHZ
			u.WorkingSetBytes += float64(st.ResidentMemory())
			stack = append(stack, children[pid]...)
		}
		if _, ok := stats[root]; ok {
			out[root] = u
		}
	}
	return out, nil
}

// userHZ is the clock tick procfs reports times in (USER_HZ, 100 on Linux).
const userHZ = 100.0

func memTotal() (int64, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, err
	}
	mi, err := fs.Meminfo()
	if err != nil || mi.MemTotalBytes == nil {
		return 0, fmt.Errorf("reading /proc/meminfo: %w", err)
	}
	return int64(*mi.MemTotalBytes), nil
}

// resourceCollector produces the kubelet's /metrics/resource series, with
// the sample timestamps metrics-server uses to compute rates.
type resourceCollector struct {
	a  *Agent
	fs procfs.FS

	nodeCPU, nodeMem, contCPU, contMem, contStart, podCPU, podMem, scrapeErr *prometheus.Desc
}

func (a *Agent) resourceMetricsHandler() http.Handler {
	fs, _ := procfs.NewDefaultFS()
	c := &resourceCollector{a: a, fs: fs,
		nodeCPU:   prometheus.NewDesc("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", nil, nil),
		nodeMem:   prometheus.NewDesc("node_memory_working_set_bytes", "Current working set of the node in bytes", nil, nil),
		contCPU:   prometheus.NewDesc("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", []string{"container", "pod", "namespace"}, nil),
		contMem:   prometheus.NewDesc("container_memory_working_set_bytes", "Current working set of the container in bytes", []string{"container", "pod", "namespace"}, nil),
		contStart: prometheus.NewDesc("container_start_time_seconds", "Start time of the container since unix epoch in seconds", []string{"container", "pod", "namespace"}, nil),
		podCPU:    prometheus.NewDesc("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", []string{"pod", "namespace"}, nil),
		podMem:    prometheus.NewDesc("pod_memory_working_set_bytes", "Current working set of the pod in bytes", []string{"pod", "namespace"}, nil),
		scrapeErr: prometheus.NewDesc("resource_scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", nil, nil),
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

func (c *resourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.nodeCPU, c.nodeMem, c.contCPU, c.contMem, c.contStart, c.podCPU, c.podMem, c.scrapeErr} {
		ch <- d
	}
}

func (c *resourceCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	ts := func(m prometheus.Metric) { ch <- prometheus.NewMetricWithTimestamp(now, m) }
	failed := 0.0
	if st, err := c.fs.Stat(); err == nil {
		t := st.CPUTotal
		ts(prometheus.MustNewConstMetric(c.nodeCPU, prometheus.CounterValue, t.User+t.Nice+t.System+t.IRQ+t.SoftIRQ+t.Steal))
	} else {
		failed = 1
	}
	if mi, err := c.fs.Meminfo(); err == nil && mi.MemTotalBytes != nil && mi.MemAvailableBytes != nil {
		ts(prometheus.MustNewConstMetric(c.nodeMem, prometheus.GaugeValue, float64(*mi.MemTotalBytes-*mi.MemAvailableBytes)))
	} else {
		failed = 1
	}
	pids := c.a.pids.snapshot()
	// /proc for containers without a cgroup, and for memory where the
	// memory controller is not in use.
	var roots []int
	for pid, k := range pids {
		if k.cg == nil || c.a.cg.MemoryError() != nil {
			roots = append(roots, pid)
		}
	}
	tree, err := TreeUsage(c.fs, roots)
	if err != nil {
		failed = 1
	}
	type podKey struct{ ns, name string }
	pods := map[podKey]Usage{}
	podGroups := map[podKey]*cgroup.Group{}
	for pid, k := range pids {
		u, ok := tree[pid]
		if k.cg != nil {
			cu, err := k.cg.Usage()
			if err != nil {
				failed = 1
				continue
			}
			u.CPUSeconds = cu.CPUSeconds()
			if cu.Memory {
				u.WorkingSetBytes = float64(cu.WorkingSetBytes)
			}
			podGroups[podKey{k.namespace, k.pod}] = c.a.cg.Group(filepath.Dir(k.cg.Path()))
		} else if !ok {
			continue // exited meanwhile
		}
		ts(prometheus.MustNewConstMetric(c.contCPU, prometheus.CounterValue, u.CPUSeconds, k.container, k.pod, k.namespace))
		ts(prometheus.MustNewConstMetric(c.contMem, prometheus.GaugeValue, u.WorkingSetBytes, k.container, k.pod, k.namespace))
		ts(prometheus.MustNewConstMetric(c.contStart, prometheus.GaugeValue, float64(k.start.UnixNano())/1e9, k.container, k.pod, k.namespace))
		p := pods[podKey{k.namespace, k.pod}]
		p.CPUSeconds += u.CPUSeconds
		p.WorkingSetBytes += u.WorkingSetBytes
		pods[podKey{k.namespace, k.pod}] = p
	}
	for k, u := range pods {
		// The pod's group also holds what its restarted containers used,
		// as the kubelet's pod cgroup does.
		if g := podGroups[k]; g != nil {
			if pu, err := g.Usage(); err == nil {
				u.CPUSeconds = pu.CPUSeconds()
				if pu.Memory {
					u.WorkingSetBytes = float64(pu.WorkingSetBytes)
				}
			}
		}
		ts(prometheus.MustNewConstMetric(c.podCPU, prometheus.CounterValue, u.CPUSeconds, k.name, k.ns))
		ts(prometheus.MustNewConstMetric(c.podMem, prometheus.GaugeValue, u.WorkingSetBytes, k.name, k.ns))
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErr, prometheus.GaugeValue, failed)
}
