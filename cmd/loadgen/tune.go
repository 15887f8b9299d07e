package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/mlscale/mlscale/internal/cli"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/tune"
)

const tuneUsage = `Usage: loadgen tune [flags]

Measures one model-server pod's capacity and writes the autoscaling target:
for each rows-per-request mix (--rows) it ramps open-loop load, step by step,
until the latency SLO (--slo at --quantile) breaks for two steps in a row,
finds the knee (the highest load served within the SLO), and reads the pod's
capacity in every signal the adapter serves from the pod's own /metrics:
requests/s, rows/s, in-flight requests and CPU. It recommends the signal
whose capacity moves least with rows per request, and writes into --out:

  steps.csv                 every step (offered, answered, p50, p99, server-side signals)
  capacity-<rows>-rows.png  answered and latency against offered load, SLO and knee marked
  recommendation.txt        the table that explains the choice
  hpa.yaml                  autoscaling/v2 HPA with the target --headroom below capacity
  seldon-hpaspec.yaml       the same as a SeldonDeployment predictor's hpaSpec
  scaledobject.yaml         the same as a KEDA ScaledObject (mlscale's scaler)

Targets:
  --modelserver bin/modelserver --cpu-limit 250m
        start the model server on loopback in a cgroup limited like a pod
        (root; cgroup v1 or v2), and measure it
  --url http://POD_IP:9000 [--metrics-url http://POD_IP:9000/metrics]
        a running pod (one replica: the load must not be shared)

Flags:
`

func runTune(args []string) error {
	fs := cli.FlagSet("loadgen tune", tuneUsage)
	var (
		target     = fs.String("url", "", "the pod's model server (bare address: the protocol's path is added)")
		metricsURL = fs.String("metrics-url", "", "the pod's /metrics (default: --url's host with /metrics; \"none\": client-side figures only, no CPU)")
		modelBin   = fs.String("modelserver", "", "start this model server binary on loopback under --cpu-limit instead of --url")
		modelPath  = fs.String("model", "modelserver/xgboost/testdata/model.joblib", "with --modelserver: the model file")
		cpuLimit   = fs.String("cpu-limit", "250m", "with --modelserver: the CPU limit (a Kubernetes quantity)")
		memLimit   = fs.String("memory-limit", "512Mi", "with --modelserver: the memory limit (a CPU-starved server queues requests, and 10,000-row requests in a queue take memory)")
		cpuRequest = fs.String("cpu-request", "", "the pod's requests.cpu, for a CPU utilisation target (default --cpu-limit)")
		protocol   = fs.String("protocol", "seldon", "seldon (v1 REST) or v2")
		rowsFlag   = fs.String("rows", "500,10000", "rows-per-request mixes, comma-separated (the seed's smallest and largest)")
		slo        = fs.Duration("slo", 500*time.Millisecond, "latency SLO at --quantile")
		quantile   = fs.String("quantile", "p99", "p99 or p50")
		headroom   = fs.Float64("headroom", 0.4, "target this fraction below the measured capacity (the HPA acts only past 1.1x its target and a sync later: at 0.4 a pod is at 66% of its capacity when it does)")
		signalName = fs.String("signal", "", "scale on this metric instead of the recommended one (predicted_rows_per_second, requests_per_second, inflight_requests, cpu)")
		start      = fs.Float64("start-rate", 0, "first step's requests/s (0: half of what four clients reach back to back)")
		factor     = fs.Float64("factor", 1.15, "each step's rate over the last's")
		maxSteps   = fs.Int("max-steps", 25, "most steps per mix")
		stepDur    = fs.Duration("step", 5*time.Second, "how long each rate is held")
		seed       = fs.Uint64("seed", 1, "seed of the random request rows")
		namespace  = fs.String("namespace", "model", "namespace of the manifests")
		name       = fs.String("name", "iris-model-autoscale", "Deployment (and HPA, ScaledObject) name of the manifests")
		minRep     = fs.Int("min-replicas", 1, "manifests' minReplicas")
		maxRep     = fs.Int("max-replicas", 20, "manifests' maxReplicas")
		scalerAddr = fs.String("scaler-address", "mlscale-scaler.mlscale.svc.cluster.local:6000", "the ScaledObject's mlscale scaler")
		out        = fs.String("out", "", "results directory (default results/tune-<UTC time>)")
		fromSteps  = fs.String("from-steps", "", "compute the knees, the choice and the manifests again from a recorded steps.csv (no load sent)")
	)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	var mixes []int
	for _, f := range strings.Split(*rowsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("--rows %q: want positive integers separated by commas", *rowsFlag)
		}
		mixes = append(mixes, n)
	}
	q := map[string]float64{"p99": 0.99, "p50": 0.5}[*quantile]
	if q == 0 {
		return fmt.Errorf("--quantile %q: want p99 or p50", *quantile)
	}
	if *slo <= 0 {
		return fmt.Errorf("--slo %s: want a positive duration", *slo)
	}
	if *signalName != "" {
		if _, ok := tune.SignalByMetric(*signalName); !ok {
			return fmt.Errorf("--signal %q: want one of predicted_rows_per_second, requests_per_second, inflight_requests, cpu", *signalName)
		}
	}
	var recorded []tune.Step
	if *fromSteps != "" {
		f, err := os.Open(*fromSteps)
		if err != nil {
			return err
		}
		recorded, err = tune.ReadStepsCSV(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *fromSteps, err)
		}
		if len(recorded) == 0 {
			return fmt.Errorf("%s: no steps", *fromSteps)
		}
	} else if (*target == "") == (*modelBin == "") {
		return errors.New("give exactly one of --url (a running pod) and --modelserver (start one on loopback)")
	}
	limit, err := resource.ParseQuantity(*cpuLimit)
	if err != nil {
		return fmt.Errorf("--cpu-limit %q: %w", *cpuLimit, err)
	}
	mem, err := resource.ParseQuantity(*memLimit)
	if err != nil {
		return fmt.Errorf("--memory-limit %q: %w", *memLimit, err)
	}
	reqCPU := limit
	if *cpuRequest != "" {
		if reqCPU, err = resource.ParseQuantity(*cpuRequest); err != nil {
			return fmt.Errorf("--cpu-request %q: %w", *cpuRequest, err)
		}
	}
	proto, err := request.ParseProtocol(*protocol)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join("results", "tune-"+time.Now().UTC().Format("20060102T150405Z"))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	base := *target
	if recorded != nil {
		base = "http://recorded"
	} else if *modelBin != "" {
		srv, err := tune.StartServer(ctx, *modelBin, []string{"--model=" + *modelPath, "--model-name=iris", "--drain-delay=0s"},
			limit.MilliValue(), mem.Value(), os.Stderr)
		if err != nil {
			return err
		}
		defer srv.Stop()
		base = "http://" + srv.Addr
		fmt.Fprintf(os.Stderr, "model server on %s, CPU limited to %s (cgroup quota), memory %s\n", srv.Addr, limit.String(), mem.String())
	}
	url, err := endpoint(base, "", "", proto, "iris")
	if err != nil {
		return err
	}
	mURL := *metricsURL
	switch mURL {
	case "none":
		mURL = ""
	case "":
		host := strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
		if i := strings.IndexByte(host, '/'); i >= 0 {
			host = host[:i]
		}
		mURL = "http://" + host + "/metrics"
	}
	if recorded != nil {
		url, mURL = "", ""
	}
	res, err := tune.Run(ctx, tune.Config{
		Recorded: recorded,
		URL:      url, MetricsURL: mURL, Protocol: proto, Rows: request.NewRandom(*seed, 0, 4, 1, 4),
		Mixes: mixes,
		Ramp:  tune.RampConfig{Start: *start, Factor: *factor, MaxSteps: *maxSteps, StepDuration: *stepDur},
		Knee:  tune.KneeOptions{SLO: *slo, Quantile: q}, Headroom: *headroom, Signal: *signalName,
		Target: tune.Target{Namespace: *namespace, Name: *name, MinReplicas: int32(*minRep), MaxReplicas: int32(*maxRep),
			CPURequest: float64(reqCPU.MilliValue()) / 1000, ScalerAddress: *scalerAddr},
		OutDir: *out, Log: os.Stderr,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "results: %s\n", *out)
	for _, f := range res.Files {
		fmt.Fprintf(os.Stdout, "  %s\n", f)
	}
	return nil
}
