package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mlscale/mlscale/api/seldon"
)

const model = "../../modelserver/xgboost/testdata/model.joblib"

// bin is this command built once for the package's tests, as `make build`
// builds it.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "modelserver-test")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "modelserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic(fmt.Sprintf("go build: %v\n%s", err, out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestBinary runs the real binary on a loopback port chosen by the kernel:
// it prints the address, serves the seed's model from model.joblib under
// the gateway prefix, labels Seldon's histogram from Seldon's environment,
// and on SIGTERM turns unready, keeps serving through the drain delay and
// exits 0.
func TestBinary(t *testing.T) {
	cmd := exec.Command(bin, "--model", model, "--model-name", "iris", "--listen", "127.0.0.1:0", "--drain-delay", "700ms")
	cmd.Env = append(os.Environ(), "SELDON_DEPLOYMENT_ID=iris-model-autoscale", "PREDICTOR_ID=autoscale")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	defer func() {
		_ = cmd.Process.Kill()
	}()
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the listen address: %v; stderr:\n%s", err, stderr.String())
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok || !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("first stdout line %q, want \"listening on 127.0.0.1:PORT\"", line)
	}
	// --grpc-listen defaults to --listen's host, here on any port.
	line, err = out.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the gRPC address: %v; stderr:\n%s", err, stderr.String())
	}
	gaddr, ok := strings.CutPrefix(strings.TrimSpace(line), "grpc listening on ")
	if !ok || !strings.HasPrefix(gaddr, "127.0.0.1:") || strings.HasSuffix(gaddr, ":0") || gaddr == addr {
		t.Fatalf("second stdout line %q, want \"grpc listening on 127.0.0.1:PORT\"", line)
	}
	go func() { exited <- cmd.Wait() }()
	base := "http://" + addr

	resp, err := http.Post(base+"/seldon/model/iris-model-autoscale/api/v1.0/predictions", "application/json",
		strings.NewReader(`{"data":{"ndarray":[[1,2,3,4]]}}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// XGBoost's own prediction for [1,2,3,4] (iris.golden.json).
	if want := `{"data":{"names":["t:0","t:1","t:2"],"ndarray":[[0.008472068,0.03168793,0.95984]]},"meta":{}}`; resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("prediction: %d %s, want 200 %s", resp.StatusCode, b, want)
	}
	// The same row over gRPC, as SeldonClient(transport="grpc") sends it
	// through Seldon's Istio route.
	conn, err := grpc.NewClient(gaddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "seldon", "iris-model-autoscale", "namespace", "model")
	lv, _ := structpb.NewList([]any{[]any{1, 2, 3, 4}})
	gr, err := seldon.NewSeldonClient(conn).Predict(ctx, &seldon.SeldonMessage{DataOneof: &seldon.SeldonMessage_Data{Data: &seldon.DefaultData{DataOneof: &seldon.DefaultData_Ndarray{Ndarray: lv}}}})
	if err != nil {
		t.Fatalf("gRPC Predict: %v", err)
	}
	var got []float32
	for _, v := range gr.GetData().GetNdarray().GetValues()[0].GetListValue().GetValues() {
		got = append(got, float32(v.GetNumberValue()))
	}
	if diff := cmp.Diff([]float32{0.008472068, 0.03168793, 0.95984}, got); diff != "" {
		t.Errorf("gRPC prediction (-XGBoost +got):\n%s", diff)
	}
	if _, m := httpGet(t, base+"/metrics"); !strings.Contains(m, `mlscale_requests_total{code="200",model="iris",protocol="seldon-grpc"} 1`) {
		t.Errorf("/metrics does not count the gRPC call:\n%s", m)
	}
	if _, m := httpGet(t, base+"/metrics"); !strings.Contains(m,
		`seldon_api_executor_server_requests_seconds_count{code="200",deployment_name="iris-model-autoscale",method="post",predictor_name="autoscale",predictor_version="",service="predictions"} 1`) {
		t.Errorf("/metrics lacks the Seldon histogram labelled from the environment:\n%s", m)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	for {
		code, _ := httpGet(t, base+"/ready")
		if code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready still %d 300ms after SIGTERM", code)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _ := httpGet(t, base+"/live"); code != 200 {
		t.Errorf("/live during the drain: %d, want 200", code)
	}
	if h, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health during the drain: %v %v, want NOT_SERVING", h, err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after SIGTERM; stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "gRPC shut down cleanly") || strings.Count(stderr.String(), "shut down cleanly") != 2 {
		t.Errorf("stderr does not report a clean shutdown:\n%s", stderr.String())
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestBadStart: configuration errors exit 1 with a message that names
// what is wrong, before anything listens.
func TestBadStart(t *testing.T) {
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"no model", []string{"--listen", "127.0.0.1:0"}, "--model is required"},
		{"missing file", []string{"--model", "/nonexistent/model.json", "--listen", "127.0.0.1:0"}, "/nonexistent/model.json"},
		{"not a model", []string{"--model", "main.go", "--listen", "127.0.0.1:0"}, "main.go"},
		{"bad log format", []string{"--model", model, "--log-format", "xml"}, "--log-format"},
		{"bad listen address", []string{"--model", model, "--listen", "127.0.0.1:notaport"}, "listening on 127.0.0.1:notaport"},
		{"bad gRPC address", []string{"--model", model, "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:notaport"}, "listening for gRPC on 127.0.0.1:notaport"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stderr, stdout bytes.Buffer
			cmd.Stderr, cmd.Stdout = &stderr, &stdout
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1; stderr:\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.msg) {
				t.Errorf("stderr %q does not mention %q", stderr.String(), tc.msg)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing (no listen line on failure)", stdout.String())
			}
		})
	}
}

// TestGRPCAddr: --grpc-listen defaults to --listen's host on Seldon's gRPC
// port, so a server bound to one address (a pod IP in the local cluster,
// loopback in tests) binds gRPC there too.
func TestGRPCAddr(t *testing.T) {
	tests := []struct{ flag, listen, want, err string }{
		{"", ":9000", ":5000", ""},
		{"", "198.18.0.7:9000", "198.18.0.7:5000", ""},
		{"", "127.0.0.1:0", "127.0.0.1:0", ""},
		{"", "[::1]:9000", "[::1]:5000", ""},
		{"127.0.0.1:7000", ":9000", "127.0.0.1:7000", ""},
		{"", "9000", "", `--listen "9000"`},
	}
	for _, tc := range tests {
		got, err := grpcAddr(tc.flag, tc.listen)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("grpcAddr(%q, %q) = %q, %v; want %q, error saying %q", tc.flag, tc.listen, got, err, tc.want, tc.err)
		}
	}
}
