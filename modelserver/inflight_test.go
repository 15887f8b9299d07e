package modelserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mlscale/mlscale/api/inference"
	"github.com/mlscale/mlscale/modelserver"
)

// gated is the iris model held at a gate: each batch announces itself on
// entered and waits until open is closed.
type gated struct {
	modelserver.Predictor
	entered chan struct{}
	open    chan struct{}
}

func (g gated) PredictBatch(x []float32, rows int, out []float32) error {
	g.entered <- struct{}{}
	<-g.open
	return g.Predictor.PredictBatch(x, rows, out)
}

const oneRow = `{"data":{"ndarray":[[5.1,3.5,1.4,0.2]]}}`

// postOneRow sends one Seldon prediction in the background and reports its
// status code on codes; wg counts it until it is answered.
func postOneRow(t *testing.T, wg *sync.WaitGroup, url string, codes chan<- int) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, err := http.Post(url+"/api/v1.0/predictions", "application/json", strings.NewReader(oneRow))
		if err != nil {
			t.Error(err)
			return
		}
		resp.Body.Close()
		codes <- resp.StatusCode
	}()
}

// TestMaxInflight: with --max-inflight 3 and 2 workers, two requests held
// in the model and a third admitted but waiting (not running, counted in
// flight), every further prediction request, of every protocol, is refused
// at once with 503 (gRPC UNAVAILABLE), Retry-After and a message naming the
// flag, and counted by code; /metrics still answers; once the held ones
// finish, the waiting one runs and requests are served again. Without a
// bound nothing waits or is refused.
func TestMaxInflight(t *testing.T) {
	for _, tc := range []struct {
		name string
		max  int
		held int // requests held in the model before probing
		shed bool
	}{
		{name: "bounded", max: 3, held: 2, shed: true},
		{name: "unbounded", max: 0, held: 6, shed: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := gated{Predictor: irisModel(t), entered: make(chan struct{}, 16), open: make(chan struct{})}
			s, ts := newServer(t, modelserver.Options{Predictor: g, MaxInflight: tc.max, Workers: 2})
			conn := serveGRPC(t, s)
			var held sync.WaitGroup
			heldCodes := make(chan int, tc.held+1)
			for i := 0; i < tc.held; i++ {
				postOneRow(t, &held, ts.URL, heldCodes)
			}
			for i := 0; i < tc.held; i++ {
				select {
				case <-g.entered:
				case <-time.After(10 * time.Second):
					t.Fatalf("%d of %d requests reached the model", i, tc.held)
				}
			}
			opened := false
			release := func() {
				if !opened {
					opened = true
					close(g.open)
				}
			}
			defer release()

			if !tc.shed {
				// One more is admitted too: it reaches the model.
				go func() {
					resp, err := http.Post(ts.URL+"/api/v1.0/predictions", "application/json", strings.NewReader(oneRow))
					if err == nil {
						resp.Body.Close()
					}
				}()
				select {
				case <-g.entered:
				case <-time.After(10 * time.Second):
					t.Fatal("with no bound, a request beyond the held ones did not reach the model")
				}
				release()
				held.Wait()
				return
			}

			// A third is admitted but waits for a worker: it does not run.
			postOneRow(t, &held, ts.URL, heldCodes)
			waitFor(t, func() bool {
				_, m := get(t, ts.URL+"/metrics")
				return bytes.Contains(m, []byte(`mlscale_inflight_requests{model="iris"} 3`))
			})
			select {
			case <-g.entered:
				t.Fatal("a third request ran with 2 workers")
			case <-time.After(300 * time.Millisecond):
			}

			// Seldon REST and v2 REST: 503 in the protocol's error form.
			for _, p := range []struct{ path, body, field string }{
				{"/api/v1.0/predictions", oneRow, "info"},
				{"/v2/models/iris/infer", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`, "error"},
			} {
				start := time.Now()
				resp, err := http.Post(ts.URL+p.path, "application/json", strings.NewReader(p.body))
				if err != nil {
					t.Fatal(err)
				}
				var body map[string]any
				err = json.NewDecoder(resp.Body).Decode(&body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("%s: answer is not JSON: %v", p.path, err)
				}
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
					t.Errorf("%s while full: %d, Retry-After %q; want 503, 1", p.path, resp.StatusCode, resp.Header.Get("Retry-After"))
				}
				msg := body[p.field]
				if st, ok := body["status"].(map[string]any); ok {
					msg = st[p.field]
					if st["code"] != float64(503) || st["reason"] != "SERVICE_UNAVAILABLE" || st["status"] != "FAILURE" {
						t.Errorf("%s: Seldon status %v", p.path, st)
					}
				}
				if s, _ := msg.(string); !strings.Contains(s, "--max-inflight") || !strings.Contains(s, "3 prediction requests in flight") {
					t.Errorf("%s: message %q does not say what is full", p.path, msg)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("%s: refused after %v, want at once", p.path, d)
				}
			}
			// gRPC: UNAVAILABLE.
			_, err := inference.NewGRPCInferenceServiceClient(conn).ModelInfer(context.Background(), &inference.ModelInferRequest{
				ModelName: "iris",
				Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 4},
					Contents: &inference.InferTensorContents{Fp32Contents: []float32{5.1, 3.5, 1.4, 0.2}}}},
			})
			if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "--max-inflight") {
				t.Errorf("gRPC ModelInfer while full: %v, want UNAVAILABLE naming --max-inflight", err)
			}
			// The pod stays observable while full.
			code, metrics := get(t, ts.URL+"/metrics")
			if code != http.StatusOK {
				t.Fatalf("/metrics while full: %d", code)
			}
			for _, want := range []string{
				`mlscale_requests_total{code="503",model="iris",protocol="seldon"} 1`,
				`mlscale_requests_total{code="503",model="iris",protocol="v2"} 1`,
				`mlscale_requests_total{code="503",model="iris",protocol="v2-grpc"} 1`,
				`mlscale_inflight_requests{model="iris"} 3`,
			} {
				if !bytes.Contains(metrics, []byte(want)) {
					t.Errorf("/metrics while full lacks %s", want)
				}
			}

			release()
			held.Wait()
			close(heldCodes)
			for c := range heldCodes {
				if c != http.StatusOK {
					t.Errorf("a held request was answered %d", c)
				}
			}
			if code, body := post(t, ts.URL+"/api/v1.0/predictions", "application/json", []byte(oneRow)); code != http.StatusOK {
				t.Errorf("after the held requests finished: %d %s, want 200", code, body)
			}
		})
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
	}
}
