package run

import (
	"context"
	"testing"

	"github.com/mlscale/mlscale/loadgen/internal/loadgentest"
	"github.com/mlscale/mlscale/loadgen/record"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

// BenchmarkClosedLoop1Row is the generator's per-request cost (plus the
// in-process model server's) for 1-row requests from 16 clients; compare
// with make bench-loadgen for hey and wrk on the same endpoint.
func BenchmarkClosedLoop1Row(b *testing.B) {
	srv := loadgentest.ModelServer(b, nil)
	task := scenario.Task{Name: "b", DataSize: 1, DataAmount: b.N, ClientNum: 16}
	p := plan(task, 4)
	o := Options{URL: srv.URL + "/api/v1.0/predictions", Client: NewClient(ClientOptions{Conns: 16})}
	n := 0
	b.ReportAllocs()
	b.ResetTimer()
	if _, _, err := Task(context.Background(), o, p, func(r record.Request) {
		if !r.OK() {
			b.Fatalf("request failed: %+v", r)
		}
		n++
	}); err != nil {
		b.Fatal(err)
	}
	if n != b.N {
		b.Fatalf("%d requests, want %d", n, b.N)
	}
}
