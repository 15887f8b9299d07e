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
	"sort"
	"strconv"
	"strings"
	"sync"
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
	if len(os.Args) > 1 && os.Args[1] == "serve-activator" {
		err = serveActivator(os.Args[2:])
	} else {
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
	if err := fs.Parse(args); err != nil {
		return err
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
	cmd := exec.Command(name, args...)
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
		p99: time.Duration(h.ValueAtQuantile(99)) * time.Microsecond, failures: failures}
}

func rowsBody(n int) []byte {
	rows := make([][]float64, n)
	for i := range rows {
		rows[i] = []float64{float64(1 + i%4), float64(1 + (i+1)%4), float64(1 + (i+2)%4), float64(1 + (i+3)%4)}
	}
	b, _ := json.Marshal(map[string]any{"data": map[string]any{"ndarray": rows}})
	return b
}

func median(ms []measurement) measurement {
	sort.Slice(ms, func(i, j int) bool { return ms[i].rps < ms[j].rps })
	m := ms[len(ms)/2]
	p50s, p99s := make([]time.Duration, len(ms)), make([]time.Duration, len(ms))
	var f int64
	for i, x := range ms {
		p50s[i], p99s[i] = x.p50, x.p99
		f += x.failures
	}
	sort.Slice(p50s, func(i, j int) bool { return p50s[i] < p50s[j] })
	sort.Slice(p99s, func(i, j int) bool { return p99s[i] < p99s[j] })
	m.p50, m.p99, m.failures = p50s[len(ms)/2], p99s[len(ms)/2], f
	return m
}

func run() error {
	var (
		bin      = flag.String("bin", "bin/modelserver", "modelserver binary")
		model    = flag.String("model", "modelserver/xgboost/testdata/iris.json", "model file")
		out      = flag.String("out", "results/bench/activator.md", "Markdown report to write")
		duration = flag.Duration("duration", 4*time.Second, "measured time per run")
		rounds   = flag.Int("rounds", 3, "interleaved rounds per path (median reported)")
		colds    = flag.Int("cold", 5, "first-request-at-zero trials")
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
	act, err := start(self, []string{"serve-activator", "--endpoint", server.addrs["listening"]}, "listening", "control")
	if err != nil {
		return err
	}
	defer act.stop()
	actNet, err := start(self, []string{"serve-activator", "--net-http", "--endpoint", server.addrs["listening"]}, "listening", "control")
	if err != nil {
		return err
	}
	defer actNet.stop()
	direct := "http://" + server.addrs["listening"] + "/api/v1.0/predictions"
	via := "http://" + act.addrs["listening"] + "/seldon/bench/model/api/v1.0/predictions"
	viaNet := "http://" + actNet.addrs["listening"] + "/seldon/bench/model/api/v1.0/predictions"

	var md strings.Builder
	fmt.Fprintf(&md, "# bench-activator: %s\n\nLoopback, one run: the modelserver binary directly vs through the activator (its own process, least-outstanding balancing, retries on, its pooled HTTP/1.1 transport; last column: the same with net/http's Transport), Seldon REST, closed-loop connections, %d interleaved rounds of %s per path (median). Machine: %d CPUs shared with other work, so compare within a row.\n\n",
		time.Now().UTC().Format(time.RFC3339), *rounds, *duration, numCPU())
	md.WriteString("| rows | connections | direct req/s | via activator req/s | throughput ratio | direct p50 | via p50 | added p50 | direct p99 | via p99 | added p99 | failed | with net/http's Transport: ratio, added p50 |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, rows := range []int{1, 10000} {
		body := rowsBody(rows)
		for _, conns := range []int{4, 64} {
			load(direct, body, conns, time.Second) // warm both paths
			load(via, body, conns, time.Second)
			load(viaNet, body, conns, time.Second)
			var d, v, vn []measurement
			for range *rounds {
				d = append(d, load(direct, body, conns, *duration))
				v = append(v, load(via, body, conns, *duration))
				vn = append(vn, load(viaNet, body, conns, *duration))
			}
			dm, vm, nm := median(d), median(v), median(vn)
			fmt.Fprintf(&md, "| %d | %d | %.0f | %.0f | %.2f | %s | %s | %s | %s | %s | %s | %d | %.2f, %s |\n", rows, conns, dm.rps, vm.rps, vm.rps/dm.rps,
				us(dm.p50), us(vm.p50), us(vm.p50-dm.p50), us(dm.p99), us(vm.p99), us(vm.p99-dm.p99), dm.failures+vm.failures+nm.failures, nm.rps/dm.rps, us(nm.p50-dm.p50))
			fmt.Fprintf(os.Stderr, "rows %d conns %d: direct %.0f/s p50 %s, via %.0f/s p50 %s\n", rows, conns, dm.rps, us(dm.p50), vm.rps, us(vm.p50))
		}
	}
	act.stop()
	actNet.stop()
	server.stop()

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
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(md.String())
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

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}
