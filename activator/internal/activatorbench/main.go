// Command activatorbench measures what the activator adds to a request, on
// loopback, in one run: the real modelserver binary answered directly and
// through the activator (this program re-executed as an activator process
// over a fake clientset holding the model's Service and EndpointSlice, so
// client, proxy and server are three processes as in a cluster), 1-row and
// 10,000-row Seldon requests, 4 and 64 closed-loop connections, the two
// paths interleaved round by round. It reports p50/p99 latency added and
// the throughput ratio, and the first request at zero: a request held by
// the activator while no model server runs, the server started, its /ready
// polled as a kubelet probe would (every 10 ms here), the endpoint
// published the moment it is ready; answer time minus ready time.
//
// Run by `make bench-activator`; writes a Markdown report.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/mlscale/mlscale/activator"
)

func main() {
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "serve-activator":
		err = serveActivator(os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "serve-tcpcopy":
		err = serveTCPCopy(os.Args[2:])
	default:
		err = run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "activatorbench:", err)
		os.Exit(1)
	}
}

// serveActivator runs the activator over a fake clientset fronting
// Service bench/model; POST /endpoint?addr=HOST:PORT on the control
// address publishes its one ready endpoint.
func serveActivator(args []string) error {
	fs := flag.NewFlagSet("serve-activator", flag.ContinueOnError)
	addr := fs.String("endpoint", "", "the model server's HOST:PORT, published at start (empty: none, the model is at zero)")
	netHTTP := fs.Bool("net-http", false, "forward with net/http's Transport instead of the activator's pooled one")
	profile := fs.String("cpuprofile", "", "write the activator's CPU profile of its first -profile-for here")
	profileFor := fs.Duration("profile-for", 20*time.Second, "how long -cpuprofile records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		time.AfterFunc(*profileFor, func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}
	cs := fake.NewClientset(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "model", Namespace: "bench",
		Annotations: map[string]string{activator.AnnotationEnabled: "true"}}})
	publish := func(hostport string) error {
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return err
		}
		p, _ := strconv.Atoi(port)
		_, err = cs.DiscoveryV1().EndpointSlices("bench").Create(context.Background(), &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "model", Namespace: "bench", Labels: map[string]string{discoveryv1.LabelServiceName: "model"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(p)), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}, metav1.CreateOptions{})
		return err
	}
	if *addr != "" {
		if err := publish(*addr); err != nil {
			return err
		}
	}
	cfg := activator.NewConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.NetHTTPTransport = *netHTTP
	factory := informers.NewSharedInformerFactory(cs, 0)
	a, err := activator.New(factory, cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	if err := a.WaitForSync(ctx); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	control, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go http.Serve(control, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := publish(r.URL.Query().Get("addr")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	}))
	fmt.Printf("listening on %s\ncontrol on %s\n", lis.Addr(), control.Addr())
	return a.Serve(ctx, lis, admin, activator.ServeOptions{DrainDelay: 0, ShutdownTimeout: time.Second})
}

// proc is a child process that printed "<key> on HOST:PORT" lines.
type proc struct {
	cmd   *exec.Cmd
	addrs map[string]string
}

func start(name string, args []string, keys ...string) (*proc, error) {
	return startEnv(nil, name, args, keys...)
}

// startEnv is start with extra environment variables (KEY=VALUE).
func startEnv(env []string, name string, args []string, keys ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: cmd, addrs: map[string]string{}}
	sc := bufio.NewScanner(out)
	for len(p.addrs) < len(keys) && sc.Scan() {
		for _, k := range keys {
			if v, ok := strings.CutPrefix(sc.Text(), k+" on "); ok {
				p.addrs[k] = v
			}
		}
	}
	if len(p.addrs) < len(keys) {
		p.stop()
		return nil, fmt.Errorf("%s did not print its addresses %v", name, keys)
	}
	go io.Copy(io.Discard, out)
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

type measurement struct {
	rps      float64
	p50, p99 time.Duration
	failures int64
	n        int64
	// CPU time per answered request, in µs: this process (the load
	// generator), the model server, the activator (0 on the direct path).
	loadCPU, serverCPU, actCPU float64
}

// cpuTime is a process's user+system CPU time from /proc/PID/stat (fields
// 14 and 15, in USER_HZ ticks, 100 per second on Linux).
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; the fields after it do not.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * (time.Second / 100)
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter samples the CPU time of the load generator, the server and the
// activator (act nil on the direct path) around one measurement.
type cpuMeter struct {
	server, act *proc
	l, s, a     time.Duration
}

func startCPU(server, act *proc) *cpuMeter {
	c := &cpuMeter{server: server, act: act, l: selfCPU(), s: cpuTime(server.cmd.Process.Pid)}
	if act != nil {
		c.a = cpuTime(act.cmd.Process.Pid)
	}
	return c
}

func (c *cpuMeter) stop(m *measurement) {
	if m.n == 0 {
		return
	}
	per := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(m.n) }
	m.loadCPU = per(selfCPU() - c.l)
	m.serverCPU = per(cpuTime(c.server.cmd.Process.Pid) - c.s)
	if c.act != nil {
		m.actCPU = per(cpuTime(c.act.cmd.Process.Pid) - c.a)
	}
}

// measure runs load and samples the CPU time of the processes around it.
func measure(server, act *proc, url string, body []byte, conns int, d time.Duration) measurement {
	c := startCPU(server, act)
	m := load(url, body, conns, d)
	c.stop(&m)
	return m
}

// load runs conns closed-loop clients against url for d.
func load(url string, body []byte, conns int, d time.Duration) measurement {
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns, DisableCompression: true}}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	h := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
	var n, failures int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
			var ln, lf int64
			for time.Now().Before(deadline) {
				t0 := time.Now()
				resp, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					lf++
					continue
				}
				_ = local.RecordValue(time.Since(t0).Microseconds())
				ln++
			}
			mu.Lock()
			h.Merge(local)
			n += ln
			failures += lf
			mu.Unlock()
		}()
	}
	wg.Wait()
	return measurement{rps: float64(n) / d.Seconds(), p50: time.Duration(h.ValueAtQuantile(50)) * time.Microsecond,
		p99: time.Duration(h.ValueAtQuantile(99)) * time.Microsecond, failures: failures, n: n}
}

// openLoop sends requests at a fixed rate for d, each on its own goroutine
// whatever the answers before it (an open loop: far below saturation, the
// latency is the path's, not the queue's), and samples CPU time around it.
func openLoop(server, act *proc, url string, body []byte, rate int, d time.Duration) measurement {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
	defer client.CloseIdleConnections()
	// Open the connections first, outside the measurement.
	for range 8 {
		if resp, err := client.Post(url, "application/json", bytes.NewReader(body)); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	var mu sync.Mutex
	h := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
	var n, failures int64
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	total := int(d / interval)
	c := startCPU(server, act)
	start := time.Now()
	for i := range total {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = errors.New(resp.Status)
				}
			}
			took := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures++
				return
			}
			_ = h.RecordValue(took.Microseconds())
			n++
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	m := measurement{rps: float64(n) / elapsed.Seconds(), p50: time.Duration(h.ValueAtQuantile(50)) * time.Microsecond,
		p99: time.Duration(h.ValueAtQuantile(99)) * time.Microsecond, failures: failures, n: n}
	c.stop(&m)
	return m
}

func rowsBody(n int) []byte {
	rows := make([][]float64, n)
	for i := range rows {
		rows[i] = []float64{float64(1 + i%4), float64(1 + (i+1)%4), float64(1 + (i+2)%4), float64(1 + (i+3)%4)}
	}
	b, _ := json.Marshal(map[string]any{"data": map[string]any{"ndarray": rows}})
	return b
}

// median is the round with the median throughput, with each latency and
// CPU figure replaced by its own median over the rounds.
func median(ms []measurement) measurement {
	sort.Slice(ms, func(i, j int) bool { return ms[i].rps < ms[j].rps })
	m := ms[len(ms)/2]
	med := func(get func(measurement) float64) float64 {
		v := make([]float64, len(ms))
		for i, x := range ms {
			v[i] = get(x)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	m.p50 = time.Duration(med(func(x measurement) float64 { return float64(x.p50) }))
	m.p99 = time.Duration(med(func(x measurement) float64 { return float64(x.p99) }))
	m.loadCPU = med(func(x measurement) float64 { return x.loadCPU })
	m.serverCPU = med(func(x measurement) float64 { return x.serverCPU })
	m.actCPU = med(func(x measurement) float64 { return x.actCPU })
	m.failures = 0
	for _, x := range ms {
		m.failures += x.failures
	}
	return m
}

// spread formats the per-round values of f(direct[i], via[i]) as "lo-hi".
func spread(d, v []measurement, f func(d, v measurement) float64, format func(float64) string) string {
	lo, hi := f(d[0], v[0]), f(d[0], v[0])
	for i := range d {
		x := f(d[i], v[i])
		lo, hi = min(lo, x), max(hi, x)
	}
	return format(lo) + " to " + format(hi)
}

func ratio(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }
func usf(x float64) string   { return us(time.Duration(x)) }
func cpu(x float64) string   { return strconv.FormatFloat(x, 'f', 0, 64) }

func run() error {
	var (
		bin      = flag.String("bin", "bin/modelserver", "modelserver binary")
		model    = flag.String("model", "modelserver/xgboost/testdata/iris.json", "model file")
		out      = flag.String("out", "results/bench/activator.md", "Markdown report to write")
		duration = flag.Duration("duration", 4*time.Second, "measured time per run")
		rounds   = flag.Int("rounds", 3, "interleaved rounds per path (median reported)")
		colds    = flag.Int("cold", 5, "first-request-at-zero trials")
		openRate = flag.Int("open-rate", 1000, "open-loop rate, requests per second")
		skipWide = flag.Bool("only-1-row", false, "skip the 10,000-row rows (quick runs while tuning)")
		profile  = flag.String("activator-cpuprofile", "", "write a CPU profile of the activator (its first 20 s) here")
		actProcs = flag.Int("activator-gomaxprocs", 0, "GOMAXPROCS of the proxy processes, the activator and the byte copy (0: the Go default, every CPU; Go sets it from a container's CPU limit)")
		limit    = flag.Int64("server-cpu-milli", 500, "second closed-loop table: the model server under this CFS quota (a pod's limits.cpu), 0 skips it")
	)
	flag.Parse()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	server, err := start(*bin, []string{"--model", *model, "--listen", "127.0.0.1:0", "--drain-delay=0s"}, "listening")
	if err != nil {
		return err
	}
	defer server.stop()
	actArgs := []string{"serve-activator", "--endpoint", server.addrs["listening"]}
	if *profile != "" {
		actArgs = append(actArgs, "--cpuprofile", *profile)
	}
	var actEnv []string
	if *actProcs > 0 {
		actEnv = []string{"GOMAXPROCS=" + strconv.Itoa(*actProcs)}
	}
	act, err := startEnv(actEnv, self, actArgs, "listening", "control")
	if err != nil {
		return err
	}
	defer act.stop()
	actNet, err := startEnv(actEnv, self, []string{"serve-activator", "--net-http", "--endpoint", server.addrs["listening"]}, "listening", "control")
	if err != nil {
		return err
	}
	defer actNet.stop()
	floor, err := startEnv(actEnv, self, []string{"serve-tcpcopy", "--upstream", server.addrs["listening"]}, "listening")
	if err != nil {
		return err
	}
	defer floor.stop()
	direct := "http://" + server.addrs["listening"] + "/api/v1.0/predictions"
	via := "http://" + act.addrs["listening"] + "/seldon/bench/model/api/v1.0/predictions"
	viaNet := "http://" + actNet.addrs["listening"] + "/seldon/bench/model/api/v1.0/predictions"
	viaFloor := "http://" + floor.addrs["listening"] + "/api/v1.0/predictions"

	var md strings.Builder
	fmt.Fprintf(&md, "# bench-activator: %s\n\nLoopback, one run: the modelserver binary directly vs through the activator (its own process, least-outstanding balancing, retries on, its HTTP/1.1 fast path over pooled connections), Seldon REST, closed-loop connections, %d interleaved rounds of %s per path (median; the spread is the lowest and highest of the per-round figures, each round comparing the paths measured back to back). Two more paths in the same rounds: the activator's general path (httputil.ReverseProxy over net/http's Transport), and the floor any user-space proxy stands on, a process that only copies bytes between the two sockets (no HTTP parsing). Machine: %d CPUs, load average %s at the start.\n\n",
		time.Now().UTC().Format(time.RFC3339), *rounds, *duration, numCPU(), loadAvg())
	rowCounts := []int{1, 10000}
	if *skipWide {
		rowCounts = rowCounts[:1]
	}
	paths := benchPaths{direct: direct, via: via, viaNet: viaNet, floor: viaFloor, server: server, act: act, actNet: actNet, floorProc: floor}
	md.WriteString("## Closed loop, all processes sharing the machine's CPUs\n\n")
	closedLoop(&md, paths, rowCounts, *rounds, *duration, true)
	// Open loop: a fixed rate well below what either path sustains.
	body := rowsBody(1)
	fmt.Fprintf(&md, "\n## Open loop, 1 row at %d requests/s\n\nRequests sent at a fixed rate, each on its own goroutine whatever the others do, %d interleaved rounds of %s per path (median, spread over the rounds): far below saturation the added latency is the activator's own, not queueing behind a saturated CPU.\n\n| path | req/s | p50 | p99 | added p50 (spread) | added p99 | failed | CPU µs/request: server | proxy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", *openRate, *rounds, *duration)
	openLoop(server, nil, direct, body, *openRate, time.Second)
	openLoop(server, act, via, body, *openRate, time.Second)
	openLoop(server, floor, viaFloor, body, *openRate, time.Second)
	var od, ov, of []measurement
	for range *rounds {
		od = append(od, openLoop(server, nil, direct, body, *openRate, *duration))
		ov = append(ov, openLoop(server, act, via, body, *openRate, *duration))
		of = append(of, openLoop(server, floor, viaFloor, body, *openRate, *duration))
	}
	added := spread(od, ov, func(d, v measurement) float64 { return float64(v.p50 - d.p50) }, usf)
	addedFloor := spread(od, of, func(d, v measurement) float64 { return float64(v.p50 - d.p50) }, usf)
	odm, ovm, ofm := median(od), median(ov), median(of)
	fmt.Fprintf(&md, "| direct | %.0f | %s | %s | | | %d | %s | |\n", odm.rps, us(odm.p50), us(odm.p99), odm.failures, cpu(odm.serverCPU))
	fmt.Fprintf(&md, "| via activator | %.0f | %s | %s | %s (%s) | %s | %d | %s | %s |\n", ovm.rps, us(ovm.p50), us(ovm.p99), us(ovm.p50-odm.p50), added, us(ovm.p99-odm.p99), ovm.failures, cpu(ovm.serverCPU), cpu(ovm.actCPU))
	fmt.Fprintf(&md, "| via byte copy (floor) | %.0f | %s | %s | %s (%s) | %s | %d | %s | %s |\n", ofm.rps, us(ofm.p50), us(ofm.p99), us(ofm.p50-odm.p50), addedFloor, us(ofm.p99-odm.p99), ofm.failures, cpu(ofm.serverCPU), cpu(ofm.actCPU))
	fmt.Fprintf(os.Stderr, "open loop %d/s: direct p50 %s, via p50 %s (added %s), byte copy p50 %s (added %s); activator %.0f µs/req, byte copy %.0f µs/req, server %.0f µs/req\n",
		*openRate, us(odm.p50), us(ovm.p50), added, us(ofm.p50), addedFloor, ovm.actCPU, ofm.actCPU, ovm.serverCPU)
	if *limit > 0 {
		fmt.Fprintf(&md, "\n## Closed loop, the model server under a %dm CPU limit\n\n", *limit)
		if undo, err := cpuLimit(server.cmd.Process.Pid, *limit); err != nil {
			// Not root, or no writable CPU controller: say so in the
			// report instead of losing the rest of the run.
			fmt.Fprintf(&md, "Not measured: putting the model server under a CFS quota failed (%v). Run as root on a machine with a writable cgroup CPU controller, or -server-cpu-milli=0.\n", err)
			fmt.Fprintf(os.Stderr, "activatorbench: no CPU-limited table: %v\n", err)
		} else {
			fmt.Fprintf(&md, "The same server process, now in a cgroup with a CFS quota of %dm (what `resources.limits.cpu: %dm` gives a model pod); the activator and the load generator use the rest of the machine, as they do in a cluster where the activator is its own Deployment. This is the throughput question a user has: does putting the activator in front take capacity from the model's pods?\n\n", *limit, *limit)
			closedLoop(&md, paths, rowCounts, *rounds, *duration, false)
			undo() // kills the server in the group: it is done
		}
	}
	floor.stop()
	act.stop()
	actNet.stop()
	server.stop()

	if *colds == 0 {
		return write(*out, md.String())
	}
	md.WriteString("\n## First request at zero\n\nA request is held by an activator with no endpoint; then the model server starts, its `/ready` is polled every 10 ms (a kubelet probe, but faster than any pod's `periodSeconds`), and its endpoint is published to the activator's informer the moment it answers 200. Answer time minus that ready time is what the activator adds to a cold start on its own: in a cluster the EndpointSlice controller's and the informer's delays and the probe period come on top.\n\n| trial | held for | answer after ready |\n|---:|---:|---:|\n")
	var worst time.Duration
	for i := range *colds {
		held, after, err := coldStart(self, *bin, *model)
		if err != nil {
			return fmt.Errorf("cold start %d: %w", i, err)
		}
		worst = max(worst, after)
		fmt.Fprintf(&md, "| %d | %s | %s |\n", i+1, held.Round(time.Millisecond), us(after))
	}
	fmt.Fprintf(&md, "\nWorst answer after ready: %s (goal ≤ 0.5 s).\n", us(worst))
	return write(*out, md.String())
}

func write(out, md string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

// coldStart holds one request at an activator with no endpoint, starts the
// model server, publishes its endpoint once /ready answers, and returns how
// long the request waited and its answer time minus the ready time.
func coldStart(self, bin, model string) (held, afterReady time.Duration, err error) {
	act, err := start(self, []string{"serve-activator"}, "listening", "control")
	if err != nil {
		return 0, 0, err
	}
	defer act.stop()
	body := rowsBody(1)
	type answer struct {
		at  time.Time
		err error
	}
	done := make(chan answer, 1)
	sent := time.Now()
	go func() {
		resp, err := http.Post("http://"+act.addrs["listening"]+"/seldon/bench/model/api/v1.0/predictions", "application/json", bytes.NewReader(body))
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = errors.New(resp.Status)
			}
		}
		done <- answer{time.Now(), err}
	}()
	time.Sleep(200 * time.Millisecond) // held for sure
	server, err := start(bin, []string{"--model", model, "--listen", "127.0.0.1:0", "--drain-delay=0s"}, "listening")
	if err != nil {
		return 0, 0, err
	}
	defer server.stop()
	var ready time.Time
	for {
		resp, err := http.Get("http://" + server.addrs["listening"] + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Now()
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Post("http://"+act.addrs["control"]+"/?addr="+server.addrs["listening"], "text/plain", nil)
	if err != nil {
		return 0, 0, err
	}
	resp.Body.Close()
	select {
	case a := <-done:
		if a.err != nil {
			return 0, 0, a.err
		}
		return a.at.Sub(sent), a.at.Sub(ready), nil
	case <-time.After(30 * time.Second):
		return 0, 0, errors.New("the held request was not answered within 30 s of the endpoint")
	}
}

func us(d time.Duration) string {
	if d < 0 {
		return "-" + us(-d)
	}
	if d < 10*time.Millisecond {
		return strconv.FormatFloat(float64(d)/float64(time.Microsecond), 'f', 0, 64) + " µs"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
}

func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}

// benchPaths are the URLs of one run and the processes behind them.
type benchPaths struct {
	direct, via, viaNet, floor     string
	server, act, actNet, floorProc *proc
}

// closedLoop measures every row count at 4 and 64 connections, the paths
// interleaved round by round, and writes the latency/throughput table and
// the CPU-per-request table. withCPUBound adds the column that says what
// ratio the shared CPUs allow (meaningless once the server has a quota).
func closedLoop(md *strings.Builder, p benchPaths, rowCounts []int, rounds int, duration time.Duration, withCPUBound bool) {
	var cpuMD strings.Builder
	cpuMD.WriteString("\nCPU time per request, the same rounds: user+system CPU of each process over a round divided by the requests answered (medians).")
	if withCPUBound {
		cpuMD.WriteString(" The processes share the machine's CPUs, so once the direct path saturates them a closed loop's throughput is at most CPUs / (CPU per request of all processes): through the activator the best possible ratio is (load generator + server, direct) / (load generator + server + activator, via).")
	}
	cpuMD.WriteString("\n\n| rows | connections | direct: load generator | direct: server | via: load generator | via: server | via: activator | byte copy: proxy |")
	if withCPUBound {
		cpuMD.WriteString(" best ratio the CPU allows | measured ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	} else {
		cpuMD.WriteString(" measured ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	}
	md.WriteString("| rows | connections | direct req/s | via activator req/s | throughput ratio (spread) | direct p50 | via p50 | added p50 (spread) | direct p99 | via p99 | added p99 | failed | general path (ReverseProxy): ratio, added p50 | byte copy (floor): ratio, added p50 |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, rows := range rowCounts {
		body := rowsBody(rows)
		for _, conns := range []int{4, 64} {
			load(p.direct, body, conns, time.Second) // warm every path
			load(p.via, body, conns, time.Second)
			load(p.viaNet, body, conns, time.Second)
			load(p.floor, body, conns, time.Second)
			var d, v, vn, vf []measurement
			for range rounds {
				d = append(d, measure(p.server, nil, p.direct, body, conns, duration))
				v = append(v, measure(p.server, p.act, p.via, body, conns, duration))
				vn = append(vn, measure(p.server, p.actNet, p.viaNet, body, conns, duration))
				vf = append(vf, measure(p.server, p.floorProc, p.floor, body, conns, duration))
			}
			ratios := spread(d, v, func(d, v measurement) float64 { return v.rps / d.rps }, ratio)
			added := spread(d, v, func(d, v measurement) float64 { return float64(v.p50 - d.p50) }, usf)
			dm, vm, nm, fm := median(d), median(v), median(vn), median(vf)
			fmt.Fprintf(md, "| %d | %d | %.0f | %.0f | %.2f (%s) | %s | %s | %s (%s) | %s | %s | %s | %d | %.2f, %s | %.2f, %s |\n", rows, conns, dm.rps, vm.rps, vm.rps/dm.rps, ratios,
				us(dm.p50), us(vm.p50), us(vm.p50-dm.p50), added, us(dm.p99), us(vm.p99), us(vm.p99-dm.p99), dm.failures+vm.failures+nm.failures+fm.failures,
				nm.rps/dm.rps, us(nm.p50-dm.p50), fm.rps/dm.rps, us(fm.p50-dm.p50))
			fmt.Fprintf(&cpuMD, "| %d | %d | %s µs | %s µs | %s µs | %s µs | %s µs | %s µs |", rows, conns, cpu(dm.loadCPU), cpu(dm.serverCPU),
				cpu(vm.loadCPU), cpu(vm.serverCPU), cpu(vm.actCPU), cpu(fm.actCPU))
			if withCPUBound {
				fmt.Fprintf(&cpuMD, " %.2f |", (dm.loadCPU+dm.serverCPU)/(vm.loadCPU+vm.serverCPU+vm.actCPU))
			}
			fmt.Fprintf(&cpuMD, " %.2f |\n", vm.rps/dm.rps)
			fmt.Fprintf(os.Stderr, "rows %d conns %d: direct %.0f/s p50 %s, via %.0f/s p50 %s (ratios %s), byte copy %.0f/s p50 %s; CPU µs/req direct load %.0f server %.0f, via load %.0f server %.0f activator %.0f, byte copy %.0f\n",
				rows, conns, dm.rps, us(dm.p50), vm.rps, us(vm.p50), ratios, fm.rps, us(fm.p50), dm.loadCPU, dm.serverCPU, vm.loadCPU, vm.serverCPU, vm.actCPU, fm.actCPU)
		}
	}
	md.WriteString(cpuMD.String())
}
