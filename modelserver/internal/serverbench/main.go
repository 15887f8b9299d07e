// Command serverbench measures the real modelserver binary end to end on
// loopback, as the seed's client loads it: N concurrent clients (4, the
// seed's client_num) each sending requests of 1, 500 and 10,000 rows of 4
// random integers 1..4 back to back, over each protocol in turn: Seldon
// REST (ndarray JSON, the seed's call), Seldon gRPC (tensor, SeldonClient's
// default payload) and Open Inference Protocol gRPC (raw FP32 tensors, what
// tritonclient sends), each gRPC client on its own connection. For each
// size and protocol it reports requests/s, rows/s and latency p50/p99, next
// to pure inference rows/s (PredictBatch on one goroutine, same model,
// same rows, same run), and the server's RSS idle and under the
// 10,000-row load, read from /proc/PID/status.
//
// It is run by `make bench-server` and writes a Markdown report.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/api/ndarray"
	"github.com/mlscale/mlscale/api/seldon"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "serverbench:", err)
		os.Exit(1)
	}
}

type result struct {
	rows                 int
	protocol             string
	requests, failures   int64
	seconds              float64
	p50, p99             time.Duration
	inferenceRowsPerSec  float64
	inferenceRowsPerCPU  float64
	rssUnderLoadKiB      int64
	serverCPUSecondsUsed float64
}

func run() error {
	var (
		bin      = flag.String("bin", "bin/modelserver", "modelserver binary to run")
		model    = flag.String("model", "modelserver/xgboost/testdata/iris.json", "model file")
		out      = flag.String("out", "results/bench/server.md", "Markdown report to write")
		clients  = flag.Int("clients", 4, "concurrent clients (the seed's client_num)")
		duration = flag.Duration("duration", 5*time.Second, "measured time per batch size")
		warmup   = flag.Duration("warmup", time.Second, "unmeasured load before each measurement")
		sizes    = flag.String("rows", "1,500,10000", "rows per request, comma-separated")
		only     = flag.String("protocol", "", "measure only the protocols whose name contains this (e.g. gRPC, raw)")
	)
	flag.Parse()
	var rowsList []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return fmt.Errorf("-rows %q: want positive integers", *sizes)
		}
		rowsList = append(rowsList, n)
	}
	loadStart := loadavg()

	srv, err := startServer(*bin, *model)
	if err != nil {
		return err
	}
	defer srv.stop()
	time.Sleep(time.Second)
	idleRSS, err := rssKiB(srv.pid(), "VmRSS")
	if err != nil {
		return err
	}

	m, err := xgboost.Load(*model)
	if err != nil {
		return err
	}
	var results []result
	for _, rows := range rowsList {
		body, x := seedRows(rows)
		perSec, perCPU := inferenceRate(m, x, rows)
		for _, proto := range protocols {
			if !strings.Contains(proto.name, *only) {
				continue
			}
			r := result{rows: rows, protocol: proto.name, inferenceRowsPerSec: perSec, inferenceRowsPerCPU: perCPU}
			senders := make([]sender, *clients)
			for c := range senders {
				snd, closeFn, err := proto.sender(srv, body, x, rows)
				if err != nil {
					return fmt.Errorf("%s client: %w", proto.name, err)
				}
				defer closeFn()
				senders[c] = snd
			}
			if err := load(srv, senders, rows, *warmup, *duration, &r); err != nil {
				return fmt.Errorf("%s, %d rows: %w", proto.name, rows, err)
			}
			results = append(results, r)
			fmt.Fprintf(os.Stderr, "rows=%d %s: %.0f req/s, %.0f rows/s (inference %.0f rows/s), p50 %v p99 %v, %d failures, peak RSS %.1f MiB\n",
				rows, proto.name, float64(r.requests)/r.seconds, float64(r.requests)*float64(rows)/r.seconds, r.inferenceRowsPerSec, r.p50, r.p99, r.failures, float64(r.rssUnderLoadKiB)/1024)
		}
	}
	peak, _ := rssKiB(srv.pid(), "VmHWM")
	report := render(results, *clients, *duration, idleRSS, peak, loadStart, loadavg())
	fmt.Print(report)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	for _, r := range results {
		if r.failures > 0 {
			return fmt.Errorf("%d requests of %d rows failed", r.failures, r.rows)
		}
	}
	return nil
}

type server struct {
	cmd            *exec.Cmd
	addr, grpcAddr string
	done           chan error
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func startServer(bin, model string) (*server, error) {
	cmd := exec.Command(bin, "--model", model, "--listen", "127.0.0.1:0", "--drain-delay", "0s", "--log-format", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	s := &server{cmd: cmd, done: make(chan error, 1)}
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("reading the listen address from %s: %w", bin, err)
	}
	s.addr = strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	if line, err = out.ReadString('\n'); err != nil || !strings.HasPrefix(line, "grpc listening on ") {
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("reading the gRPC address from %s: %q, %v", bin, line, err)
	}
	s.grpcAddr = strings.TrimSpace(strings.TrimPrefix(line, "grpc listening on "))
	go func() { _, _ = io.Copy(io.Discard, out); s.done <- cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + s.addr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("%s at %s not ready after 10s", bin, s.addr)
		}
	}
}

func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
	}
}

// seedRows is the seed's request data: rows of 4 random integers 1..4, as
// a Seldon request body and as the row-major features.
func seedRows(rows int) ([]byte, []float32) {
	r := rand.New(rand.NewPCG(42, uint64(rows)))
	x := make([]float32, rows*4)
	for i := range x {
		x[i] = float32(1 + r.IntN(4))
	}
	return ndarray.AppendRequest(nil, x, rows, 4, ndarray.Null), x
}

// inferenceRate is PredictBatch on one goroutine for about 2s: rows per
// wall-clock second and rows per CPU second of this process (which does
// nothing else meanwhile). On a shared machine the second is the one to
// compare, as the server's rows per CPU second are.
func inferenceRate(m *xgboost.Model, x []float32, rows int) (perSec, perCPU float64) {
	out := make([]float32, rows*m.NumOutputs())
	cpu0, _ := cpuSeconds(os.Getpid())
	start := time.Now()
	n := 0
	for time.Since(start) < 2*time.Second {
		if err := m.PredictBatch(x, rows, out); err != nil {
			panic(err)
		}
		n++
	}
	wall := time.Since(start).Seconds()
	cpu1, _ := cpuSeconds(os.Getpid())
	return float64(n*rows) / wall, float64(n*rows) / (cpu1 - cpu0)
}

// sender sends one request and checks that it was answered.
type sender func() error

// protocol makes one client's sender for a batch: its own connection, the
// batch encoded once, the first answer checked for its row count.
type protocol struct {
	name   string
	sender func(s *server, body []byte, x []float32, rows int) (sender, func(), error)
}

var protocols = []protocol{
	{"Seldon REST (ndarray JSON)", restSender},
	{"Seldon gRPC (tensor)", seldonGRPCSender},
	{"v2 gRPC (raw FP32)", v2GRPCSender},
}

func restSender(s *server, body []byte, _ []float32, rows int) (sender, func(), error) {
	url := "http://" + s.addr + "/api/v1.0/predictions"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	if err := checkAnswer(client, url, body, rows); err != nil {
		return nil, nil, err
	}
	return func() error { return post(client, url, body) }, client.CloseIdleConnections, nil
}

func grpcConn(s *server) (*grpc.ClientConn, error) {
	return grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
}

func seldonGRPCSender(s *server, _ []byte, x []float32, rows int) (sender, func(), error) {
	conn, err := grpcConn(s)
	if err != nil {
		return nil, nil, err
	}
	vals := make([]float64, len(x))
	for i, f := range x {
		vals[i] = float64(f)
	}
	req := &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{
		DataOneof: &seldon.DefaultData_Tensor{Tensor: &seldon.Tensor{Shape: []int32{int32(rows), 4}, Values: vals}}}}}
	c := seldon.NewSeldonClient(conn)
	send := func() error {
		resp, err := c.Predict(context.Background(), req)
		if err == nil && len(resp.GetData().GetTensor().GetValues()) != rows*3 {
			err = fmt.Errorf("answer has %d values, want %d", len(resp.GetData().GetTensor().GetValues()), rows*3)
		}
		return err
	}
	if err := send(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return send, func() { conn.Close() }, nil
}

func v2GRPCSender(s *server, _ []byte, x []float32, rows int) (sender, func(), error) {
	conn, err := grpcConn(s)
	if err != nil {
		return nil, nil, err
	}
	raw := make([]byte, 0, 4*len(x))
	for _, f := range x {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	req := &inference.ModelInferRequest{ModelName: "iris",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input-0", Datatype: "FP32", Shape: []int64{int64(rows), 4}}},
		RawInputContents: [][]byte{raw}}
	c := inference.NewGRPCInferenceServiceClient(conn)
	send := func() error {
		resp, err := c.ModelInfer(context.Background(), req)
		if err == nil && (len(resp.GetRawOutputContents()) != 1 || len(resp.GetRawOutputContents()[0]) != rows*3*4) {
			err = fmt.Errorf("answer has no raw output of %d rows", rows)
		}
		return err
	}
	if err := send(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return send, func() { conn.Close() }, nil
}

func load(s *server, senders []sender, rows int, warmup, duration time.Duration, r *result) error {
	var measuring atomic.Bool
	var failures atomic.Int64
	hists := make([]*hdrhistogram.Histogram, len(senders))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for c, send := range senders {
		hists[c] = hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
		wg.Add(1)
		go func(h *hdrhistogram.Histogram) {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				err := send()
				d := time.Since(t0)
				if !measuring.Load() {
					continue
				}
				if err != nil {
					failures.Add(1)
					continue
				}
				_ = h.RecordValue(d.Microseconds())
			}
		}(hists[c])
	}
	time.Sleep(warmup)
	cpu0, _ := cpuSeconds(s.pid())
	measuring.Store(true)
	start := time.Now()
	var peak int64
	if rows >= 10000 {
		for time.Since(start) < duration {
			if v, err := rssKiB(s.pid(), "VmRSS"); err == nil && v > peak {
				peak = v
			}
			time.Sleep(100 * time.Millisecond)
		}
	} else {
		time.Sleep(duration)
	}
	measuring.Store(false)
	r.seconds = time.Since(start).Seconds()
	cpu1, _ := cpuSeconds(s.pid())
	cancel()
	wg.Wait()

	all := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
	for _, h := range hists {
		all.Merge(h)
	}
	r.requests = all.TotalCount()
	r.failures = failures.Load()
	r.p50 = time.Duration(all.ValueAtQuantile(50)) * time.Microsecond
	r.p99 = time.Duration(all.ValueAtQuantile(99)) * time.Microsecond
	r.rssUnderLoadKiB = peak
	r.serverCPUSecondsUsed = cpu1 - cpu0
	return nil
}

func post(c *http.Client, url string, body []byte) error {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

func checkAnswer(c *http.Client, url string, body []byte, rows int) error {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var a struct {
		Data struct {
			NDArray [][]float64 `json:"ndarray"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return fmt.Errorf("answer to %d rows: %w", rows, err)
	}
	if resp.StatusCode != http.StatusOK || len(a.Data.NDArray) != rows {
		return fmt.Errorf("answer to %d rows: status %d with %d rows", rows, resp.StatusCode, len(a.Data.NDArray))
	}
	return nil
}

// rssKiB reads a size field (VmRSS, VmHWM) of /proc/PID/status in KiB.
func rssKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpuSeconds is the process's user+system CPU time from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15, in clock ticks (100 per second on Linux).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100, nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func render(rs []result, clients int, d time.Duration, idle, peak int64, load0, load1 string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Model server end to end (loopback)\n\n")
	fmt.Fprintf(&b, "%s, %d cores (nproc), %s; %s. %d clients back to back (each its own connection), %v measured per size and protocol after warm-up; seed rows (4 random integers 1..4). Load average before/after: %s / %s (the machine is shared).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), cpuModel(), runtime.Version(), clients, d, load0, load1)
	fmt.Fprintf(&b, "| rows/request | protocol | requests/s | rows/s | p50 | p99 | server CPU (cores) | server rows per CPU-s | inference rows/s (1 goroutine) | inference rows per CPU-s | end-to-end / inference, per CPU-s |\n")
	fmt.Fprintf(&b, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	rest := map[int]result{}
	for _, r := range rs {
		rps := float64(r.requests) / r.seconds
		rows := rps * float64(r.rows)
		cores := r.serverCPUSecondsUsed / r.seconds
		perCPU := rows / cores
		if r.protocol == protocols[0].name {
			rest[r.rows] = r
		}
		fmt.Fprintf(&b, "| %d | %s | %.0f | %.0f | %s | %s | %.2f | %.0f | %.0f | %.0f | %.2f |\n",
			r.rows, r.protocol, rps, rows, ms(r.p50), ms(r.p99), cores, perCPU, r.inferenceRowsPerSec, r.inferenceRowsPerCPU, perCPU/r.inferenceRowsPerCPU)
	}
	fmt.Fprintf(&b, "\nEach protocol against Seldon REST at the same size (rows/s; rows per server CPU-s):\n\n")
	for _, r := range rs {
		base, ok := rest[r.rows]
		if !ok || r.protocol == protocols[0].name || base.requests == 0 || r.requests == 0 {
			continue
		}
		rowsPerSec := func(x result) float64 { return float64(x.requests) * float64(x.rows) / x.seconds }
		perCPU := func(x result) float64 { return rowsPerSec(x) / (x.serverCPUSecondsUsed / x.seconds) }
		fmt.Fprintf(&b, "- %d rows, %s: %.2fx rows/s, %.2fx rows per CPU-s\n", r.rows, r.protocol, rowsPerSec(r)/rowsPerSec(base), perCPU(r)/perCPU(base))
	}
	fmt.Fprintf(&b, "\nThe last column of the table is the share of the server's CPU that goes to the model: 1.0 would mean the transport, encoding and metrics cost nothing. It is per CPU second because the wall-clock figures depend on how much of the shared machine each process got.\n")
	var under int64
	for _, r := range rs {
		under = max(under, r.rssUnderLoadKiB)
	}
	fmt.Fprintf(&b, "\nServer RSS: idle %.1f MiB, under the 10,000-row load %.1f MiB (peak sampled VmRSS), VmHWM %.1f MiB.\n",
		float64(idle)/1024, float64(under)/1024, float64(peak)/1024)
	return b.String()
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}
