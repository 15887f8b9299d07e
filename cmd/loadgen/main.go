// Command loadgen runs a load scenario (scenarios/seed.yaml reproduces the
// seed article's experiment) against a model server and writes every
// request, the replica count over time, a per-task summary and a chart into
// a results directory. See `loadgen --help`.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/internal/cli"
	"github.com/mlscale/mlscale/loadgen"
	"github.com/mlscale/mlscale/loadgen/progress"
	"github.com/mlscale/mlscale/loadgen/replicas"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/run"
	"github.com/mlscale/mlscale/loadgen/scenario"
)

const usage = `Usage: loadgen [flags]
       loadgen tune [flags]   (one pod's capacity and the autoscaling target: loadgen tune --help)
       loadgen compare [flags] NAME=DIR...   (runs of several autoscalers on the same traffic side by side)

Runs the tasks of a scenario against a prediction endpoint and writes
requests.csv, replicas.csv, summary.json, summary.txt and chart.png into --out.

Targets:
  --url http://127.0.0.1:9000                 the model server itself (the protocol's path is added)
  --url http://host:9000/api/v1.0/predictions a full prediction URL, used as is
  --url http://GATEWAY --namespace model --deployment iris-model-autoscale
                                              through Istio/Seldon: /seldon/{ns}/{deployment}/api/v1.0/predictions

Connections: by default each client keeps one connection alive (the pool is
sized to the widest task). Behind a Kubernetes Service, kube-proxy balances
connections, not requests, so kept-alive traffic can stick to the replicas
that existed when the run began and new replicas get nothing; pass
--new-connection-per-request to spread requests as independent callers would
(at the cost of a TCP handshake each).

Replicas: with a kubeconfig (--kubeconfig, $KUBECONFIG or ~/.kube/config) the
scale of --scale-resource/--scale-name and its HPA are sampled every
--sample-every into replicas.csv; without one nothing is sampled.

Ctrl-C stops sending and still writes everything recorded so far; a second
Ctrl-C exits at once.

Flags:
`

func main() { cli.Main("loadgen", runMain) }

func runMain(args []string) error {
	if len(args) > 0 && args[0] == "tune" {
		return runTune(args[1:])
	}
	if len(args) > 0 && args[0] == "compare" {
		return runCompare(args[1:])
	}
	fs := cli.FlagSet("loadgen", usage)
	var (
		scenarioPath = fs.String("scenario", "scenarios/seed.yaml", "scenario YAML")
		scale        = fs.Float64("scale", 1, "multiply data_amount, durations and pauses by this (0.02 turns the seed's 1500 requests per task into 30)")
		seed         = fs.Uint64("seed", 1, "seed of the random request rows; the same seed sends the same rows")
		rowsCSV      = fs.String("rows-csv", "", "send rows from this CSV instead of random ones (overrides the scenario's rows_csv)")
		target       = fs.String("url", "http://127.0.0.1:9000", "model server, full prediction URL, or gateway base URL with --namespace/--deployment")
		namespace    = fs.String("namespace", "", "gateway mode: the SeldonDeployment's namespace")
		deployment   = fs.String("deployment", "", "gateway mode: the SeldonDeployment's name")
		protocol     = fs.String("protocol", "seldon", "seldon (v1 REST) or v2 (Open Inference Protocol)")
		model        = fs.String("model", "iris", "model name for protocol v2")
		newConn      = fs.Bool("new-connection-per-request", false, "disable keep-alive: every request opens its own connection (see Connections above)")
		timeout      = fs.Duration("timeout", 60*time.Second, "per-request timeout")
		maxWorkers   = fs.Uint64("max-workers", run.DefaultMaxWorkers, "open-loop tasks: most requests in flight at once (latency still counts from the intended send time when this limits)")
		out          = fs.String("out", "", "results directory (default results/<UTC time>)")
		kubeconfig   = fs.String("kubeconfig", "", "kubeconfig for replica sampling (default $KUBECONFIG, then ~/.kube/config; none: no sampling)")
		kubeContext  = fs.String("context", "", "kubeconfig context")
		scaleRes     = fs.String("scale-resource", "seldondeployments.v1.machinelearning.seldon.io", "resource.version.group of the scaled object (e.g. deployments.v1.apps)")
		scaleNS      = fs.String("scale-namespace", "", "namespace of the scaled object (default --namespace)")
		scaleName    = fs.String("scale-name", "", "name of the scaled object (default --deployment)")
		hpa          = fs.String("hpa", "", "HPA name (default: the HPA whose scaleTargetRef names the scaled object)")
		sampleEvery  = fs.Duration("sample-every", time.Second, "replica sampling interval")
		chartSize    = fs.String("chart-size", "1400x700", "chart size in pixels, WIDTHxHEIGHT; \"none\" skips the chart")
		progressMode = fs.String("progress", "auto", "auto (a bar on a terminal, log lines otherwise), bar, lines or none")
		slo          = fs.Duration("slo", 0, "latency SLO to mark on the chart, with the p99 of every 5 s (0: none)")
		cpuProfile   = fs.String("cpuprofile", "", "write the load client's own CPU profile here (is the generator the bottleneck?)")
	)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	sc, err := scenario.Load(*scenarioPath)
	if err != nil {
		return err
	}
	if sc.Name == "" {
		sc.Name = strings.TrimSuffix(filepath.Base(*scenarioPath), filepath.Ext(*scenarioPath))
	}
	if *scale != 1 {
		if sc, err = sc.Scaled(*scale); err != nil {
			return err
		}
	}
	var rows request.Rows
	if p := *rowsCSV; p != "" || sc.RowsCSV != "" {
		if p == "" {
			p = sc.RowsCSV
			if !filepath.IsAbs(p) {
				p = filepath.Join(filepath.Dir(*scenarioPath), p)
			}
		}
		if rows, err = request.ReadCSV(p); err != nil {
			return err
		}
	}
	proto, err := request.ParseProtocol(*protocol)
	if err != nil {
		return err
	}
	url, err := endpoint(*target, *namespace, *deployment, proto, *model)
	if err != nil {
		return err
	}
	width, height, err := parseSize(*chartSize)
	if err != nil {
		return err
	}
	conns := 1
	for _, t := range sc.Tasks {
		conns = max(conns, t.ClientNum)
	}
	if *out == "" {
		*out = filepath.Join("results", time.Now().UTC().Format("20060102T150405Z"))
	}

	sampler, err := newSampler(*kubeconfig, *kubeContext, replicas.Target{
		Resource: *scaleRes, Namespace: or(*scaleNS, *namespace), Name: or(*scaleName, *deployment), HPA: *hpa,
	}, log)
	if err != nil {
		return err
	}

	var rep progress.Reporter
	isTerm := term.IsTerminal(int(os.Stderr.Fd()))
	switch *progressMode {
	case "auto":
		rep = progress.New(os.Stderr, isTerm, 5*time.Second)
	case "bar", "lines":
		rep = progress.New(os.Stderr, *progressMode == "bar", 5*time.Second)
	case "none":
	default:
		return fmt.Errorf("--progress %q: want auto, bar, lines or none", *progressMode)
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("creating CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("starting CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C gets the default behaviour: exit now
		log.Warn("interrupted: stopping and writing what was recorded")
	}()

	log.Info("load run", "scenario", sc.Name, "tasks", len(sc.Tasks), "url", url, "protocol", proto, "out", *out,
		"keep_alive", !*newConn, "replica_sampling", sampler != nil)
	_, runErr := loadgen.Run(ctx, loadgen.Config{
		Scenario: sc, Rows: rows, Seed: *seed, URL: url, Protocol: proto,
		Client:     run.ClientOptions{Conns: conns, NewConnPerRequest: *newConn, Timeout: *timeout},
		MaxWorkers: *maxWorkers, OutDir: *out, Sampler: sampler, SampleEvery: *sampleEvery,
		Progress: rep, Table: os.Stdout, ChartWidth: width, ChartHeight: height, SLO: *slo, Log: log,
	})
	fmt.Fprintf(os.Stdout, "results: %s\n", *out)
	return runErr
}

// endpoint picks the prediction URL: gateway form, a bare server address
// (protocol path added) or a full URL.
func endpoint(target, ns, dep string, p request.Protocol, model string) (string, error) {
	if ns != "" || dep != "" {
		return request.Target{URL: target, Namespace: ns, Deployment: dep, Protocol: p, Model: model}.Endpoint()
	}
	u, err := request.Target{URL: target}.Endpoint()
	if err != nil {
		return "", err
	}
	rest := strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://")
	if i := strings.IndexByte(rest, '/'); i < 0 || rest[i:] == "/" {
		return request.DirectEndpoint(u, p, model)
	}
	return u, nil
}

func parseSize(s string) (int, int, error) {
	if s == "none" {
		return -1, 0, nil
	}
	var w, h int
	if _, err := fmt.Sscanf(s, "%dx%d", &w, &h); err != nil || w < 200 || h < 150 {
		return 0, 0, fmt.Errorf("--chart-size %q: want WIDTHxHEIGHT of at least 200x150, or none", s)
	}
	return w, h, nil
}

// newSampler returns nil (no sampling) when no kubeconfig can be found or no
// object is named.
func newSampler(path, kctx string, t replicas.Target, log *slog.Logger) (replicas.Sampler, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	} else if len(rules.Precedence) == 0 || !anyExists(rules.Precedence) {
		log.Info("no kubeconfig: replicas are not sampled")
		return nil, nil
	}
	if t.Name == "" {
		log.Info("no --scale-name or --deployment: replicas are not sampled")
		return nil, nil
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kctx}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	return replicas.NewKube(cfg, t)
}

func anyExists(paths []string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
