// Package loadgentest starts the real model server (the iris XGBoost model
// behind modelserver's HTTP handler) on loopback for the load client's tests.
package loadgentest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// IrisModel is the path of the seed's iris model.
func IrisModel() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "../../../modelserver/xgboost/testdata/iris.json")
}

// ModelServer serves the iris model on 127.0.0.1; wrap (may be nil) sees
// every request first. The server is closed when the test ends.
func ModelServer(t testing.TB, wrap func(http.Handler) http.Handler) *httptest.Server {
	t.Helper()
	m, err := xgboost.Load(IrisModel())
	if err != nil {
		t.Fatal(err)
	}
	s, err := modelserver.New(modelserver.Options{Predictor: m, ModelName: "iris"})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// DeadURL returns a loopback URL nothing listens on.
func DeadURL(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/api/v1.0/predictions"
}

// InFlight counts concurrent requests and remembers the highest count.
type InFlight struct {
	cur, Max atomic.Int64
	// Hold keeps each request in flight at least this long, so concurrent
	// clients overlap whatever the machine's speed.
	Hold time.Duration
}

// Wrap is a middleware for ModelServer.
func (f *InFlight) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.cur.Add(1)
		defer f.cur.Add(-1)
		for {
			m := f.Max.Load()
			if n <= m || f.Max.CompareAndSwap(m, n) {
				break
			}
		}
		if f.Hold > 0 {
			time.Sleep(f.Hold)
		}
		h.ServeHTTP(w, r)
	})
}
