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
	if s.cfg.MetricsAddress != "" {
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
		mux.Handle("/metrics", promhttp.InstrumentMetricHandler(s.cfg.Registry,
			promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{Registry: s.cfg.Registry})))
		hs = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := hs.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving metrics: %w", err)
			}
		}()
	}
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
