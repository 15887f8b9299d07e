package activator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mlscale/mlscale/activator/api"
)

// ServeOptions are the server side of a running activator.
type ServeOptions struct {
	// DrainDelay: after ctx ends, keep serving this long with readiness
	// false and `Connection: close` on answers, so the ingress stops
	// sending here before the listener closes (the model server's drain).
	DrainDelay time.Duration
	// ShutdownTimeout then bounds the wait for requests in flight and held.
	ShutdownTimeout time.Duration
	// Gatherer is served at /metrics on the admin listener.
	Gatherer prometheus.Gatherer
}

// Serve serves the proxy on lis (HTTP/1.1 and h2c) and /metrics, /ready,
// /live and the demand stream (api.Path) on admin until ctx ends, then
// drains. It returns nil after a clean drain.
func (a *Activator) Serve(ctx context.Context, lis, admin net.Listener, o ServeOptions) error {
	var draining atomic.Bool
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	proxy := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if draining.Load() && r.ProtoMajor == 1 {
				w.Header().Set("Connection", "close")
			}
			a.ServeHTTP(w, r)
		}),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	mux := http.NewServeMux()
	if o.Gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.Handle(api.Path, api.Handler(a, a.done))
	mux.HandleFunc("/live", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case !a.Synced():
			http.Error(w, "Service and EndpointSlice caches not synced yet", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	adminSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	go func() {
		if err := proxy.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serving the proxy: %w", err)
		}
	}()
	go func() {
		if err := adminSrv.Serve(admin); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serving the admin endpoints: %w", err)
		}
	}()
	var err error
	select {
	case <-ctx.Done():
		draining.Store(true)
		a.log.Info("draining", "delay", o.DrainDelay)
		select {
		case <-time.After(o.DrainDelay):
		case err = <-errc:
		}
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if serr := proxy.Shutdown(sctx); serr != nil {
		proxy.Close()
		if err == nil {
			err = fmt.Errorf("requests still in flight after %s: %w", o.ShutdownTimeout, serr)
		}
	}
	a.Close() // ends the demand streams and wake loops
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	if adminSrv.Shutdown(actx) != nil {
		adminSrv.Close()
	}
	return err
}
