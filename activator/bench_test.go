package activator

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkForward1Row: one-row requests through the activator to a
// loopback backend, 8 clients (the proxy's own cost is in the profile:
// go test -bench Forward -cpuprofile cpu.out ./activator).
func BenchmarkForward1Row(b *testing.B) {
	be := startBackend(b, "127.0.0.30")
	host, p := hostPort(b, be.addr)
	h := newHarness(b, nil, fronted("iris", nil), httpSlice("s", "iris", p, map[string]bool{host: true}))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	url := h.url + "/seldon/model/iris/api/v1.0/predictions"
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/json", strings.NewReader(`{"data":{"ndarray":[[1,2,3,4]]}}`))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
