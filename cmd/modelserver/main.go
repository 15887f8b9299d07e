// Command modelserver serves an XGBoost model over Seldon's protocol and
// the Open Inference Protocol, REST and gRPC, with Prometheus metrics at
// /metrics.
//
// It prints "listening on HOST:PORT" and then "grpc listening on HOST:PORT"
// on stdout once the sockets are open, so `--listen 127.0.0.1:0
// --grpc-listen 127.0.0.1:0` works for tests; logs go to stderr. SIGTERM or
// SIGINT starts the drain of both (see modelserver.Options.DrainDelay).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mlscale/mlscale/internal/cli"
	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

func main() { cli.Main("modelserver", run) }

func run(args []string) error {
	fs := cli.FlagSet("modelserver", "")
	var (
		modelPath    = fs.String("model", "", "model file: XGBoost JSON, UBJSON or a joblib-pickled Booster (format detected from content); required")
		listen       = fs.String("listen", ":9000", "address to serve HTTP on (Seldon's REST port is 9000)")
		grpcListen   = fs.String("grpc-listen", "", "address to serve gRPC on (default: --listen's host on port 5000, Seldon's gRPC port, or port 0 when --listen's port is 0); \"off\": no gRPC")
		modelName    = fs.String("model-name", "", "model name for /v2/models/{name} and the metrics' model label (default: the model file's name without extension)")
		modelVersion = fs.String("model-version", "", "model version reported by the v2 protocol (optional)")
		deployment   = fs.String("deployment-name", os.Getenv("SELDON_DEPLOYMENT_ID"), "Seldon deployment name for seldon_api_executor_server_requests_seconds (default $SELDON_DEPLOYMENT_ID)")
		predictor    = fs.String("predictor-name", os.Getenv("PREDICTOR_ID"), "Seldon predictor name for seldon_api_executor_server_requests_seconds (default $PREDICTOR_ID)")
		predictorVer = fs.String("predictor-version", "", "Seldon predictor_version label (the predictor's \"version\" annotation)")
		maxBody      = fs.Int64("max-body-bytes", modelserver.DefaultMaxBodyBytes, "largest request body (also after decompression) or gRPC message accepted; larger ones get 413 / RESOURCE_EXHAUSTED")
		maxInflight  = fs.Int("max-inflight", 0, "most prediction requests admitted at once (REST and gRPC), GOMAXPROCS of them running and the rest waiting with their bodies unread; one more is refused at once with 503 / UNAVAILABLE and Retry-After, so an overloaded server sheds load instead of queueing it out of memory, and its /metrics is not queued behind it all; 0: no bound")
		drainDelay   = fs.Duration("drain-delay", 5*time.Second, "after SIGTERM, keep serving this long with readiness false so endpoints stop routing here")
		shutdownTO   = fs.Duration("shutdown-timeout", 20*time.Second, "after the drain delay, wait this long for in-flight requests")
		logFormat    = fs.String("log-format", "text", "log format on stderr: text or json")
	)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *modelPath == "" {
		return errors.New("--model is required")
	}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(os.Stderr, nil)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, nil)
	default:
		return fmt.Errorf("--log-format %q: want text or json", *logFormat)
	}
	log := slog.New(h)

	start := time.Now()
	model, err := xgboost.Load(*modelPath)
	if err != nil {
		return err // Load says which file and why
	}
	name := *modelName
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(*modelPath), filepath.Ext(*modelPath))
	}
	srv, err := modelserver.New(modelserver.Options{
		Predictor:        model,
		ModelName:        name,
		ModelVersion:     *modelVersion,
		Platform:         "xgboost",
		DeploymentName:   *deployment,
		PredictorName:    *predictor,
		PredictorVersion: *predictorVer,
		MaxBodyBytes:     *maxBody,
		MaxInflight:      *maxInflight,
		DrainDelay:       *drainDelay,
		ShutdownTimeout:  *shutdownTO,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	log.Info("model loaded", "path", *modelPath, "name", name, "objective", model.Objective(),
		"features", model.NumFeatures(), "outputs", model.NumOutputs(), "took", time.Since(start))

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	var glis net.Listener
	if *grpcListen != "off" {
		addr, err := grpcAddr(*grpcListen, *listen)
		if err == nil {
			glis, err = net.Listen("tcp", addr)
		}
		if err != nil {
			lis.Close()
			return fmt.Errorf("listening for gRPC on %s: %w", addr, err)
		}
	}
	fmt.Printf("listening on %s\n", lis.Addr())
	if glis != nil {
		fmt.Printf("grpc listening on %s\n", glis.Addr())
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if glis == nil {
		return srv.Serve(ctx, lis)
	}
	// Both drain on the signal; if either fails, the other is stopped too.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ctx, lis) }()
	go func() { errc <- srv.ServeGRPC(ctx, glis) }()
	first := <-errc
	cancel()
	return errors.Join(first, <-errc)
}

// grpcAddr is --grpc-listen, or by default --listen's host on Seldon's gRPC
// port 5000 (port 0 when --listen asks for any port), so that a server
// bound to one address (a pod's IP, loopback in tests) binds gRPC there
// too.
func grpcAddr(flagValue, listen string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("--listen %q: %w", listen, err)
	}
	if port == "0" {
		return net.JoinHostPort(host, "0"), nil
	}
	return net.JoinHostPort(host, "5000"), nil
}
