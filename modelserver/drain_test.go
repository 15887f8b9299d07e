package modelserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlscale/mlscale/modelserver"
)

// slowPredictor is the iris model plus a delay, so requests are really in
// flight when the drain starts; a batch of slowRows rows takes much longer,
// to be in flight when Shutdown begins.
type slowPredictor struct {
	modelserver.Predictor
	delay, slow time.Duration
}

const slowRows = 7

func (p slowPredictor) PredictBatch(x []float32, rows int, out []float32) error {
	if rows == slowRows {
		time.Sleep(p.slow)
	} else {
		time.Sleep(p.delay)
	}
	return p.Predictor.PredictBatch(x, rows, out)
}

// TestDrainUnderLoad cancels Serve's context while 4 clients send 500-row
// requests, as a SIGTERM does. It checks that readiness turns false at
// once while liveness stays, that serving continues through the drain
// delay (clients stop when "the endpoint is removed", 500ms in),
// that a request still in flight when Shutdown starts completes, and that
// not one request fails.
func TestDrainUnderLoad(t *testing.T) {
	// Generous, so a loaded CI machine still reaches each step in time.
	const drain = 2 * time.Second
	s, err := modelserver.New(modelserver.Options{
		Predictor:       slowPredictor{Predictor: irisModel(t), delay: 2 * time.Millisecond, slow: 2500 * time.Millisecond},
		ModelName:       "iris",
		DrainDelay:      drain,
		ShutdownTimeout: 5 * time.Second,
		Registry:        prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, lis) }()
	base := "http://" + lis.Addr().String()

	body := func(rows int) []byte {
		return []byte(`{"data":{"ndarray":[` + strings.TrimSuffix(strings.Repeat("[5.1,3.5,1.4,0.2],", rows), ",") + `]}}`)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}, Timeout: 10 * time.Second}
	call := func(b []byte, rows int) error {
		resp, err := client.Post(base+"/api/v1.0/predictions", "application/json", bytes.NewReader(b))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		rb, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("reading answer: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", resp.StatusCode, rb)
		}
		var r struct {
			Data struct {
				NDArray [][]float64 `json:"ndarray"`
			} `json:"data"`
		}
		if err := json.Unmarshal(rb, &r); err != nil || len(r.Data.NDArray) != rows {
			return fmt.Errorf("answer with %d rows (%v), want %d", len(r.Data.NDArray), err, rows)
		}
		return nil
	}

	var (
		routed   atomic.Bool // the endpoint is still in the Service's endpoints
		draining atomic.Bool
		ok       atomic.Int64
		okDrain  atomic.Int64
		mu       sync.Mutex
		failures []error
		wg       sync.WaitGroup
	)
	routed.Store(true)
	fail := func(err error) {
		mu.Lock()
		failures = append(failures, err)
		mu.Unlock()
	}
	req := body(500)
	for c := 0; c < 4; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for routed.Load() {
				if err := call(req, 500); err != nil {
					fail(err)
					continue
				}
				ok.Add(1)
				if draining.Load() {
					okDrain.Add(1)
				}
			}
		}()
	}
	for deadline := time.Now().Add(5 * time.Second); ok.Load() < 20; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d requests succeeded before the drain", ok.Load())
		}
	}

	cancel() // SIGTERM
	draining.Store(true)
	drainStart := time.Now()
	for deadline := time.Now().Add(500 * time.Millisecond); s.Ready(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("readiness still true 500ms after the drain started")
		}
	}
	if code, _ := get(t, base+"/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/ready during drain: %d, want 503", code)
	}
	if code, _ := get(t, base+"/v2/health/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("/v2/health/ready during drain: %d, want 503", code)
	}
	if code, _ := get(t, base+"/live"); code != http.StatusOK {
		t.Errorf("/live during drain: %d, want 200", code)
	}

	// 500ms into the drain delay the endpoint is gone: clients stop
	// starting requests here, and one slow request starts that will still
	// be running when Shutdown begins.
	time.Sleep(time.Until(drainStart.Add(500 * time.Millisecond)))
	routed.Store(false)
	if late := time.Since(drainStart); late > drain-500*time.Millisecond {
		t.Fatalf("the test itself took %v to reach the endpoint removal; too slow to check the drain", late)
	}
	slowDone := make(chan error, 1)
	go func() { slowDone <- call(body(slowRows), slowRows) }()

	wg.Wait()
	if err := <-slowDone; err != nil {
		fail(fmt.Errorf("request in flight at Shutdown: %w", err))
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
	for _, err := range failures {
		t.Errorf("request failed: %v", err)
	}
	if okDrain.Load() == 0 {
		t.Error("no request was served during the drain delay")
	}
	t.Logf("%d requests succeeded, %d of them during the drain, %d failed", ok.Load(), okDrain.Load(), len(failures))
	if _, err := net.DialTimeout("tcp", lis.Addr().String(), time.Second); err == nil {
		t.Error("listener still accepts connections after Serve returned")
	}
}

// TestServeReturnsListenerErrors: a listener that fails is reported, not
// mistaken for a clean shutdown.
func TestServeReturnsListenerErrors(t *testing.T) {
	s, err := modelserver.New(modelserver.Options{Predictor: fixed{}, ModelName: "iris", Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis.Close()
	if err := s.Serve(context.Background(), lis); err == nil || !strings.Contains(err.Error(), "serving on") {
		t.Errorf("Serve on a closed listener: %v, want a serving error", err)
	}
}
