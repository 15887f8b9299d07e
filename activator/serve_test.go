package activator

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mlscale/mlscale/activator/api"
)

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// Serve on loopback: readiness, the demand stream seen through the
// watcher the scaler and the adapter use, and the drain on shutdown.
func TestServeStreamsDemandAndDrains(t *testing.T) {
	be := startBackend(t, "127.0.0.14")
	host, p := hostPort(t, be.addr)
	h := newHarness(t, nil, fronted("iris", map[string]string{AnnotationScaleTarget: "Deployment/iris"}))
	h.waitFronted(t, "iris")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxyURL, adminURL := "http://"+lis.Addr().String(), "http://"+admin.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- h.a.Serve(ctx, lis, admin, ServeOptions{DrainDelay: 500 * time.Millisecond, ShutdownTimeout: 5 * time.Second, Gatherer: h.reg})
	}()
	if code, _, _ := get(t, adminURL+"/ready"); code != http.StatusOK {
		t.Fatalf("/ready: %d", code)
	}

	w := api.NewWatcher(slog.New(slog.DiscardHandler))
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	w.Set(wctx, []string{adminURL + api.Path})
	eventually(t, "the watcher's first snapshot", func() bool { _, ok := w.Demand("model", "iris"); return ok })
	held := send(context.Background(), proxyURL+"/seldon/model/iris/predict")
	eventually(t, "the watcher to see the held request", func() bool { n, _, _ := w.Pending("model", "iris"); return n == 1 })
	h.createSlice(t, httpSlice("s", "iris", p, map[string]bool{host: true}))
	if r := await(t, held); r.code != http.StatusOK {
		t.Fatalf("held request: %+v", r)
	}
	eventually(t, "the watcher to see it answered", func() bool {
		d, _ := w.Demand("model", "iris")
		return d.Held == 0 && d.Inflight == 0 && d.ArrivalsPerSecond > 0 && d.ReadyEndpoints == 1
	})
	code, body, _ := get(t, adminURL+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `mlscale_activator_hold_outcomes_total{namespace="model",outcome="released",service="iris"} 1`) {
		t.Errorf("/metrics: %d, no released outcome in\n%s", code, body)
	}

	cancel() // SIGTERM
	eventually(t, "readiness to turn false", func() bool { c, _, _ := get(t, adminURL+"/ready"); return c == http.StatusServiceUnavailable })
	resp, err := http.Post(proxyURL+"/seldon/model/iris/predict", "application/json", nil)
	if err != nil {
		t.Fatalf("a request during the drain delay: %v", err)
	}
	resp.Body.Close()
	// Go's client moves `Connection: close` into resp.Close.
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("during the drain: %d, close %v; want 200 and Connection: close", resp.StatusCode, resp.Close)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
}
