package scaler

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// GRPCServerOptions returns the options a grpc.Server hosting this scaler
// needs: transport credentials per Config (TLS, mutual TLS, or none) and the
// metrics interceptors. Extra options are appended.
func (s *Server) GRPCServerOptions(extra ...grpc.ServerOption) ([]grpc.ServerOption, error) {
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.metrics.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor()),
	}
	if s.cfg.TLSCertFile != "" {
		tc, err := ServerTLSConfig(s.cfg.TLSCertFile, s.cfg.TLSKeyFile, s.cfg.ClientCAFile, s.log)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	return append(opts, extra...), nil
}

// ListenAndServe listens on cfg.Address and cfg.MetricsAddress and serves
// until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.cfg.Address)
	if err != nil {
		return fmt.Errorf("listening for gRPC on %s: %w", s.cfg.Address, err)
	}
	var mlis net.Listener
	if s.cfg.MetricsAddress != "" && s.cfg.Gatherer != nil {
		if mlis, err = net.Listen("tcp", s.cfg.MetricsAddress); err != nil {
			lis.Close()
			return fmt.Errorf("listening for metrics on %s: %w", s.cfg.MetricsAddress, err)
		}
	}
	return s.Serve(ctx, lis, mlis)
}

// Serve serves gRPC on lis and, when mlis is not nil, /metrics on mlis, until
// ctx ends or a server fails. It then ends the streams, stops gracefully
// within cfg.ShutdownTimeout, and returns the first failure (nil after ctx).
func (s *Server) Serve(ctx context.Context, lis, mlis net.Listener) error {
	opts, err := s.GRPCServerOptions()
	if err == nil && mlis != nil && s.cfg.Gatherer == nil {
		err = errors.New("serving /metrics: no Gatherer configured")
	}
	if err != nil {
		lis.Close()
		if mlis != nil {
			mlis.Close()
		}
		return err
	}
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	errc := make(chan error, 2)
	go func() {
		if err := gs.Serve(lis); err != nil {
			errc <- fmt.Errorf("serving gRPC: %w", err)
		}
	}()
	var hs *http.Server
	if mlis != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.InstrumentMetricHandler(s.cfg.Registerer,
			promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{Registry: s.cfg.Registerer})))
		mux.Handle("/healthz", checkHandler(s.cfg.Healthy))
		mux.Handle("/readyz", checkHandler(s.ready))
		hs = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving metrics: %w", err)
			}
		}()
	}
	go s.followReadiness()
	s.log.Info("KEDA external scaler serving", "address", lis.Addr().String(), "tls", s.cfg.TLSCertFile != "", "mtls", s.cfg.ClientCAFile != "")

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.Shutdown()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	t := time.NewTimer(s.cfg.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
	}
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		defer cancel()
		if serr := hs.Shutdown(sctx); serr != nil && err == nil {
			err = fmt.Errorf("stopping the metrics server: %w", serr)
		}
	}
	return err
}

// ready fails while the collector is not ready or the scaler is stopping.
func (s *Server) ready() error {
	select {
	case <-s.done:
		return errors.New("shutting down")
	default:
	}
	if s.cfg.Ready != nil {
		return s.cfg.Ready()
	}
	return nil
}

// followReadiness mirrors cfg.Ready into the gRPC health status, so a
// health-checking client (or grpc_health_probe) sees NOT_SERVING while the
// collector has no complete window yet.
func (s *Server) followReadiness() {
	if s.cfg.Ready == nil {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		st := healthpb.HealthCheckResponse_SERVING
		if s.cfg.Ready() != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		select {
		case <-s.done:
			return
		default:
		}
		s.health.SetServingStatus("", st)
		s.health.SetServingStatus(ServiceName, st)
		select {
		case <-s.done:
			return
		case <-tick.C:
		}
	}
}

func checkHandler(check func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if check != nil {
			if err := check(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "not ok: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
}
