#!/usr/bin/env bash
# The demo on the local cluster: start the real control plane, the process
# node and the gateway (bin/localcluster up), deploy manifests/overlays/local
# (model server + requests-per-second HPA + adapter), run the seed's scenario
# through the gateway with replica sampling, write results/<UTC time>/, and
# tear everything down, also on Ctrl-C. Needs root (pod addresses, mounts).
#
# Environment: SCALING (requests: the adapter's requests_per_second HPA,
# the default; cpu: the seed's 40% CPU HPA through metrics-server; keda: a
# ScaledObject on the scaler's push trigger, down to zero), SCALE (default
# 1), SCENARIO (default scenarios/seed-cluster.yaml), OUT (results directory), OVERLAY (overrides SCALING's overlay), BIN
# (default bin), STATE (cluster state directory). Extra arguments go to
# loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
SCALE=${SCALE:-1}
SCENARIO=${SCENARIO:-scenarios/seed-cluster.yaml}
SCALING=${SCALING:-requests}
case "$SCALING" in
  requests) default_overlay=manifests/overlays/local ;;
  cpu) default_overlay=manifests/overlays/local-cpu ;;
  keda) default_overlay=manifests/overlays/local-keda ;;
  *) echo "SCALING=$SCALING: want requests, cpu or keda" >&2; exit 2 ;;
esac
OVERLAY=${OVERLAY:-$default_overlay}
up_args=()
[ "$SCALING" = keda ] && up_args+=(--keda)
OUT=${OUT:-results/$(date -u +%Y%m%dT%H%M%SZ)}
STATE=${STATE:-$(mktemp -d /tmp/mlscale-demo-XXXXXX)/run}
GATEWAY=${GATEWAY:-127.0.0.1:8080}

mkdir -p "$OUT"
"$BIN/localcluster" up --state-dir "$STATE" --gateway "$GATEWAY" --repo . --bin "$BIN" "${up_args[@]}" \
  >"$OUT/localcluster.log" 2>&1 &
cluster=$!
stop_cluster() {
  if kill -0 "$cluster" 2>/dev/null; then
    echo "stopping the local cluster"
    kill -INT "$cluster" 2>/dev/null || true
    wait "$cluster" 2>/dev/null || true
  fi
}
trap stop_cluster EXIT
trap 'echo "interrupted; results so far in $OUT"; exit 130' INT TERM

echo "starting the local cluster (log: $OUT/localcluster.log)"
for _ in $(seq 600); do
  [ -f "$STATE/ready" ] && break
  kill -0 "$cluster" 2>/dev/null || { echo "localcluster exited:"; tail -n 40 "$OUT/localcluster.log"; exit 1; }
  sleep 0.5
done
[ -f "$STATE/ready" ] || { echo "the local cluster was not ready in 5 minutes"; tail -n 40 "$OUT/localcluster.log"; exit 1; }
export KUBECONFIG=$(cat "$STATE/ready")
KUBECTL=$(ls "${MLSCALE_CACHE:-$HOME/.cache/mlscale}"/kubernetes-*/bin/kubectl | head -n1)

echo "deploying $OVERLAY (SCALING=$SCALING)"
"$KUBECTL" apply -k "$OVERLAY" >"$OUT/apply.log"
"$KUBECTL" -n mlscale rollout status deployment/mlscale-adapter --timeout=180s
"$KUBECTL" -n model rollout status deployment/iris-model-autoscale --timeout=180s
if [ "$SCALING" = keda ]; then
  # Start from zero, so the chart shows the first request waking the model.
  echo "waiting for KEDA to scale the idle model to zero"
  for _ in $(seq 120); do
    [ "$("$KUBECTL" -n model get deployment iris-model-autoscale -o jsonpath='{.spec.replicas}')" = 0 ] && break
    sleep 1
  done
fi

rc=0
"$BIN/loadgen" --url "http://$GATEWAY" --namespace model --deployment iris-model-autoscale \
  --scale-resource deployments.v1.apps --kubeconfig "$KUBECONFIG" \
  --scenario "$SCENARIO" --scale "$SCALE" --out "$OUT" "$@" || rc=$?
"$KUBECTL" get hpa,pods -A -o wide >"$OUT/cluster-state.txt" 2>&1 || true
"$KUBECTL" -n model describe hpa >>"$OUT/cluster-state.txt" 2>&1 || true
stop_cluster
echo "results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$rc"
