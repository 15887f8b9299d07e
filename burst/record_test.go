//go:build burstrecord

package burst

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/loadgen"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/scenario"
	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// TestRecordDemand writes testdata/demand.csv: what the collector serves as
// one model server's requests_per_second, read every 250 ms, while loadgen
// sends (open loop, 1-row requests) 1/s, a step to 24/s, 1/s, a one-second
// spike of 60/s, 1/s, and a plateau at 8/s (200% of one pod's 4/s target,
// where the threshold would flap if anything could). The decision's tests
// replay it.
//
//	go test -tags burstrecord -run TestRecordDemand ./burst/
func TestRecordDemand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	model, err := xgboost.Load("../modelserver/xgboost/testdata/iris.json")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := modelserver.New(modelserver.Options{Predictor: model, ModelName: "iris"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln) //nolint:errcheck // ends with Close
	defer hs.Close()

	col, err := collector.New(collector.NewOptions(), collector.DefaultRules(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	col.Upsert(collector.Target{Namespace: "m", Name: "p", Labels: labels.Set{"app": "iris"},
		URL: "http://" + ln.Addr().String() + "/metrics", ReadySince: time.Now().Add(-time.Hour)})
	go col.Run(ctx)
	time.Sleep(4 * time.Second)

	sc, err := scenario.Parse([]byte(`tasks:
- {name: base, data_size: 1, rate: 1, duration: 10s}
- {name: step, data_size: 1, rate: 24, duration: 30s}
- {name: quiet, data_size: 1, rate: 1, duration: 12s}
- {name: spike, data_size: 1, rate: 60, duration: 1s}
- {name: after, data_size: 1, rate: 1, duration: 12s}
- {name: plateau, data_size: 1, rate: 8, duration: 30s}
`))
	if err != nil {
		t.Fatal(err)
	}
	endpoint, err := request.DirectEndpoint("http://"+ln.Addr().String(), request.Seldon, "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := loadgen.Run(ctx, loadgen.Config{Scenario: sc, URL: endpoint, Protocol: request.Seldon, OutDir: t.TempDir(), ChartWidth: -1})
		done <- err
	}()
	out := "# collector requests_per_second of one pod, read every 250 ms; load (s from t=0): 1/s 0-10, 24/s 10-40, 1/s 40-52, 60/s 52-53, 1/s 53-65, 8/s 65-95\n# t_s,value,age_ms\n"
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join("testdata", "demand.csv"), []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		case now := <-tick.C:
			a, err := col.AggregateValue(ctx, "requests_per_second", "m", labels.Everything())
			if err != nil {
				out += fmt.Sprintf("%.2f,,\n", now.Sub(start).Seconds())
				continue
			}
			out += fmt.Sprintf("%.2f,%.3f,%d\n", now.Sub(start).Seconds(), a.Value, now.Sub(a.Timestamp).Milliseconds())
		}
	}
}
