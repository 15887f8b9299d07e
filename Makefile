# mlscale: request-driven autoscaling for ML model servers on Kubernetes.
# `make help` lists the targets.

SHELL := /bin/bash
GO ?= go
BIN ?= bin
# The same flags build the binaries here and in the Dockerfile.
GOFLAGS_BUILD := -trimpath -ldflags='-s -w'
export CGO_ENABLED ?= 0
PYTHON := /usr/bin/python3
FUZZTIME ?= 8s
# Go's default minimisation budget (60 s) outlasts a brief run, and a
# minimisation cut off by -fuzztime reports "context deadline exceeded".
FUZZMINIMIZETIME ?= 2s
CMDS := $(notdir $(wildcard cmd/*))

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build every binary into ./bin (static, CGO_ENABLED=0).
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/ ./cmd/...

.PHONY: test
test: deps-helm deps-prometheus ## Run the unit and integration tests (the PromQL source against Debian's real Prometheus), then each fuzz target briefly.
	$(GO) vet ./...
	$(GO) test -count=1 ./...
	@$(MAKE) --no-print-directory fuzz

.PHONY: fuzz
fuzz: ## Run every Go fuzz target for FUZZTIME (default 8s) each; a failing input fails the run.
	@GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZMINIMIZETIME=$(FUZZMINIMIZETIME) scripts/fuzz.sh

.PHONY: demo
demo: demo-cluster ## The seed's experiment on the local cluster (root): SCALING=tuned|requests|cpu|keda|compare|closed, results/<time>/.

.PHONY: demo-standalone
demo-standalone: ## Build, serve the iris model on loopback, run the seed scenario at SCALE (0.02), write results/<time>/.
	scripts/demo-standalone.sh

.PHONY: cluster-build
cluster-build: ## Build the local cluster's pinned components (Kubernetes, etcd, metrics-server, CLUSTER_WITH: keda) into ~/.cache/mlscale or MLSCALE_CACHE (once).
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/localcluster ./cmd/localcluster
	@# One build at a time per cache: two makes on one machine would compile the
	@# same components twice into the same files.
	@mkdir -p "$${MLSCALE_CACHE:-$$HOME/.cache/mlscale}"
	flock "$${MLSCALE_CACHE:-$$HOME/.cache/mlscale}/.build.lock" $(BIN)/localcluster build --with '$(CLUSTER_WITH)'

.PHONY: cluster-up
cluster-up: build cluster-build ## Start the local cluster in the foreground (root; Ctrl-C stops it; gateway on 127.0.0.1:8080).
	$(BIN)/localcluster up --repo . --bin $(BIN)

.PHONY: demo-cluster
demo-cluster: build certs ## The seed's experiment on the local cluster (root): SCALING=tuned|requests|cpu|keda|compare|closed, loadgen through the gateway, results/<time>/.
	@$(MAKE) --no-print-directory cluster-build CLUSTER_WITH='$(if $(filter keda,$(SCALING)),keda)'
	SCALING='$(SCALING)' scripts/demo-cluster.sh

.PHONY: tune-cluster
tune-cluster: build certs ## `loadgen tune` through the local cluster's gateway against one pod of local-tuned (root; CPU_LIMIT, the pods' limit, default 200m), results/tune-<time>/.
	@$(MAKE) --no-print-directory cluster-build CLUSTER_WITH=
	scripts/tune-cluster.sh

E2E_TIMEOUT ?= 60m
# What `make demo` scales on: tuned (the rows/s HPA `loadgen tune`
# measured), requests (requests_per_second, 4 per pod), cpu (the seed's 40%
# CPU HPA), keda (a ScaledObject, down to zero); compare runs cpu, requests
# and tuned on the same traffic; closed the seed's closed loop, fixed vs tuned.
SCALING ?= tuned
# Extra components `make cluster-build` builds: KEDA for the ScaledObject
# path (e2e, SCALING=keda); bench-scaling adds prometheus-adapter.
CLUSTER_WITH ?= keda
E2E_RUN ?= .
# Tests to leave out (go test -skip), e.g. one known to fail on this machine.
# TestBenchScaling is the benchmark (make bench-scaling), not a test: make e2e leaves it out.
E2E_SKIP ?= ^TestBenchScaling$$
.PHONY: e2e
e2e: build cluster-build certs deps-helm ## End-to-end tests on the local cluster (go test -tags e2e ./test/e2e/..., root; E2E_RUN selects tests, E2E_SKIP leaves some out).
	$(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -run '$(E2E_RUN)' $(if $(E2E_SKIP),-skip '$(E2E_SKIP)') -v ./test/e2e/...

.PHONY: e2e-manifests
e2e-manifests: build cluster-build certs deps-helm ## Server-side dry-run of every overlay and of the Helm chart on the local cluster's kube-apiserver (root).
	scripts/e2e-manifests.sh

.PHONY: bench
bench: deps-python bench-inference bench-server bench-loadgen bench-scaler bench-collector ## Run the benchmarks and comparisons; report in results/bench/.
	@mkdir -p results/bench
	$(GO) test -run='^$$' -bench=. -benchmem ./... | tee results/bench/go-bench.txt

.PHONY: bench-collector
bench-collector: ## Collector + adapter: scrape cycle over 1,000 loopback targets (protobuf vs text), GetMetricBySelector p99 over 1,000 pods, freshness after a load step vs the Prometheus path (15 s scrape, 1 m rate).
	@mkdir -p results/bench
	set -o pipefail; $(GO) test -run='^$$' -bench='^BenchmarkScrapeCycle1000$$' -benchtime=5x -benchmem ./collector 2>&1 | grep -v '^[EIW][0-9]\{4\} ' | tee results/bench/collector.txt
	set -o pipefail; $(GO) test -run='^$$' -bench='^BenchmarkGetMetricBySelector1000$$' -benchtime=300x ./adapter 2>&1 | grep -v '^[EIW][0-9]\{4\} ' | tee -a results/bench/collector.txt
	set -o pipefail; MLSCALE_BENCH_PROMETHEUS=1 $(GO) test -run='^$$' -bench='^BenchmarkFreshness$$' -benchtime=1x -timeout=10m ./adapter 2>&1 | grep -v '^[EIW][0-9]\{4\} ' | tee -a results/bench/collector.txt

.PHONY: bench-scaler
bench-scaler: ## KEDA scaler: GetMetrics from 100 ScaledObjects at once (p99 vs collector read and in-process handler), StreamIsActive push latency.
	@mkdir -p results/bench
	set -o pipefail; $(GO) test -run='^$$' -bench='^BenchmarkGetMetrics$$' -benchtime=300x ./scaler | tee results/bench/scaler.txt
	set -o pipefail; $(GO) test -run='^$$' -bench='^BenchmarkStreamIsActivePush$$' -benchtime=40x ./scaler | tee -a results/bench/scaler.txt

.PHONY: bench-loadgen
bench-loadgen: ## loadgen vs hey vs wrk: req/s on the same 1-row endpoint, same connections, one run (apt-installs hey/wrk if missing).
	scripts/bench-loadgen.sh

.PHONY: bench-activator
bench-activator: ## Activator on loopback: direct vs through it vs a byte-copying proxy (the floor), 1 and 10,000 rows, 4 and 64 connections, CPUs shared and the server under a 500m quota (root): added p50/p99, throughput ratio, CPU per request; open loop; first request at zero; results/bench/activator.md.
	@mkdir -p results/bench $(BIN)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/modelserver ./cmd/modelserver
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/activatorbench ./activator/internal/activatorbench
	$(BIN)/activatorbench -bin $(BIN)/modelserver -model modelserver/xgboost/testdata/iris.json -out results/bench/activator.md

.PHONY: bench-inference
bench-inference: deps-python ## Go tree inference vs XGBoost inplace_predict (1 thread, same rows, same run).
	$(PYTHON) modelserver/xgboost/bench_xgboost.py --out results/bench/inference.txt

.PHONY: bench-server
bench-server: ## Model server end to end on loopback (4 clients; 1, 500, 10,000 rows; Seldon REST, Seldon gRPC, v2 gRPC raw) vs pure inference, and RSS.
	@mkdir -p results/bench $(BIN)
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/modelserver ./cmd/modelserver
	$(GO) run ./modelserver/internal/serverbench -bin $(BIN)/modelserver -model modelserver/xgboost/testdata/iris.json -out results/bench/server.md

# make proto: protoc from Debian's protobuf-compiler; the Go plugins from the
# module proxy, protoc-gen-go at go.mod's google.golang.org/protobuf version
# (protoc-gen-go-grpc is versioned apart from grpc-go; v1.6.2's output needs
# grpc >= 1.64, go.mod has 1.85). The generated code is committed, so
# building and testing need neither.
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTOS := api/seldon/prediction.proto api/tensorflow/tensor.proto api/inference/grpc_predict_v2.proto
.PHONY: proto
proto: ## Regenerate the gRPC code in api/ from its .proto files (Seldon v1, Open Inference Protocol v2).
	@command -v protoc >/dev/null || { echo "installing protobuf-compiler (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null; }
	@mkdir -p $(BIN)/tools
	GOBIN=$(abspath $(BIN))/tools $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$$($(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
	GOBIN=$(abspath $(BIN))/tools $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(abspath $(BIN))/tools:$$PATH protoc -I api --go_out=. --go_opt=module=github.com/mlscale/mlscale \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/mlscale/mlscale $(PROTOS)

.PHONY: lint
lint: ## gofmt and go vet.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: deps-python
deps-python: ## Install Debian's python3-xgboost and python3-sklearn (fixtures, benchmarks).
	@$(PYTHON) -c 'import xgboost, sklearn, joblib' 2>/dev/null || { \
	  echo "installing python3-xgboost python3-sklearn (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-xgboost python3-sklearn python3-joblib >/dev/null; }

.PHONY: deps-prometheus
deps-prometheus: ## Install Debian's Prometheus (make test's PromQL-source test; bench-scaling's configuration (c)).
	@command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || { \
	  if [ "$$(id -u)" != 0 ]; then echo "deps-prometheus: prometheus is missing and installing it needs root (apt-get install prometheus); its test skips, and fails under CI=true" >&2; exit 0; fi; \
	  echo "installing prometheus (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# Helm for the chart's tests (charts/): built from the Go module proxy into
# the cache, not added to go.mod (its Kubernetes modules would pin ours). The
# version check reads the binary's module version (`helm version` says v3.22).
HELM_VERSION := v3.22.0
MLSCALE_CACHE ?= $(HOME)/.cache/mlscale
export MLSCALE_HELM ?= $(MLSCALE_CACHE)/bin/helm
.PHONY: deps-helm
deps-helm: ## Build helm $(HELM_VERSION) into $(MLSCALE_CACHE)/bin (skipped when that version is there).
	@if [ "$$($(GO) version -m $(MLSCALE_HELM) 2>/dev/null | awk '$$1 == "mod" {print $$3}')" != "$(HELM_VERSION)" ]; then \
	  echo "building helm $(HELM_VERSION) into $(dir $(MLSCALE_HELM)) (go install)"; \
	  GOBIN=$(abspath $(dir $(MLSCALE_HELM))) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	fi

.PHONY: bench-scaling
bench-scaling: build certs deps-prometheus ## How fast each autoscaler reacts to the same load step on the local cluster (root; ~4 min per configuration and run; MLSCALE_BENCH_REPEAT=3 at three sync phases, MLSCALE_BENCH_ONLY=a,e to rerun some): results/bench/scaling.{md,json,png}.
	$(MAKE) --no-print-directory cluster-build CLUSTER_WITH=keda,prometheus-adapter
	MLSCALE_BENCH_SCALING=1 $(GO) test -tags e2e -count=1 -timeout 90m -run 'TestBenchScaling' -v ./test/e2e/...

.PHONY: fixtures
fixtures: deps-python ## Retrain the iris model and regenerate golden predictions.
	$(PYTHON) modelserver/xgboost/testdata/train.py modelserver/xgboost/testdata

.PHONY: certs
certs: ## Write the CA and the adapter/scaler/KEDA certificates for manifests/components/certs (keys stay git-ignored).
	$(GO) run ./scripts/certs -out manifests/components/certs/generated

.PHONY: clean
clean: ## Remove build outputs.
	rm -rf $(BIN)
