// Command modelserver serves an XGBoost model over Seldon's REST protocol
// and the Open Inference Protocol, with Prometheus metrics at /metrics.
//
// It prints "listening on HOST:PORT" on stdout once the socket is open, so
// `--listen 127.0.0.1:0` works for tests; logs go to stderr. SIGTERM or
// SIGINT starts the drain (see modelserver.Options.DrainDelay).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "modelserver:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("modelserver", flag.ContinueOnError)
	var (
		modelPath    = fs.String("model", "", "model file: XGBoost JSON, UBJSON or a joblib-pickled Booster (format detected from content); required")
		listen       = fs.String("listen", ":9000", "address to serve HTTP on (Seldon's REST port is 9000)")
		modelName    = fs.String("model-name", "", "model name for /v2/models/{name} and the metrics' model label (default: the model file's name without extension)")
		modelVersion = fs.String("model-version", "", "model version reported by the v2 protocol (optional)")
		deployment   = fs.String("deployment-name", os.Getenv("SELDON_DEPLOYMENT_ID"), "Seldon deployment name for seldon_api_executor_server_requests_seconds (default $SELDON_DEPLOYMENT_ID)")
		predictor    = fs.String("predictor-name", os.Getenv("PREDICTOR_ID"), "Seldon predictor name for seldon_api_executor_server_requests_seconds (default $PREDICTOR_ID)")
		predictorVer = fs.String("predictor-version", "", "Seldon predictor_version label (the predictor's \"version\" annotation)")
		maxBody      = fs.Int64("max-body-bytes", modelserver.DefaultMaxBodyBytes, "largest request body accepted; larger ones get 413")
		drainDelay   = fs.Duration("drain-delay", 5*time.Second, "after SIGTERM, keep serving this long with readiness false so endpoints stop routing here")
		shutdownTO   = fs.Duration("shutdown-timeout", 20*time.Second, "after the drain delay, wait this long for in-flight requests")
		logFormat    = fs.String("log-format", "text", "log format on stderr: text or json")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
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
	fmt.Printf("listening on %s\n", lis.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return srv.Serve(ctx, lis)
}
