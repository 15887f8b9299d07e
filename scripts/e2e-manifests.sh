#!/usr/bin/env bash
# Server-side dry-run of every overlay against the local cluster's real
# kube-apiserver (the CRDs of manifests/crds, read from each project's pinned
# Go module, installed first). Starts the
# cluster without metrics-server, runs the manifests e2e test, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
CACHE=${MLSCALE_CACHE:-$HOME/.cache/mlscale}
log=$(mktemp)
"$BIN/localcluster" up --no-metrics-server --bin "$BIN" --repo . --gateway 127.0.0.1:18081 >"$log" 2>&1 &
pid=$!
stop() { kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"; }
trap stop EXIT
for _ in $(seq 1 180); do
  grep -q '^local cluster up' "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "e2e-manifests: the local cluster did not start" >&2; exit 1; }
  sleep 1
done
grep -q '^local cluster up' "$log" || { cat "$log"; echo "e2e-manifests: the local cluster was not up within 180 s" >&2; exit 1; }
MLSCALE_KUBECONFIG="$CACHE/run/pki/admin.kubeconfig" go test -tags e2e -count=1 -timeout 10m -run 'TestServerSideDryRun' -v ./manifests
# The Helm chart's objects, every value set, the same way (charts/e2e_test.go).
MLSCALE_KUBECONFIG="$CACHE/run/pki/admin.kubeconfig" go test -tags e2e -count=1 -timeout 10m -run 'TestChartServerSideDryRun' -v ./charts
