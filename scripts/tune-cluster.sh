#!/usr/bin/env bash
# `loadgen tune` through the local cluster: start it, deploy an overlay's
# model server (default manifests/overlays/local-tuned) with its autoscaler
# removed and one replica, and ramp load through the gateway and the
# activator to that one pod, reading its own /metrics, so the capacity is
# what a pod delivers with the cluster's request path and processes sharing
# the machine (not a server alone on loopback). Results in OUT (default
# results/tune-<UTC time>/); the cluster is torn down at the end, also on
# Ctrl-C. Needs root.
#
# Environment: OVERLAY, CPU_LIMIT and CPU_REQUEST (what the overlay's pods
# have, for the CPU figures; default 200m), OUT, BIN (default bin), STATE,
# GATEWAY. Extra arguments go to `loadgen tune` (e.g. --rows, --slo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/localcluster-lib.sh

BIN=${BIN:-bin}
OVERLAY=${OVERLAY:-manifests/overlays/local-tuned}
CPU_LIMIT=${CPU_LIMIT:-200m}
CPU_REQUEST=${CPU_REQUEST:-$CPU_LIMIT}
OUT=${OUT:-results/tune-$(date -u +%Y%m%dT%H%M%SZ)}
STATE=${STATE:-$(mktemp -d /tmp/mlscale-tune-XXXXXX)/run}
GATEWAY=${GATEWAY:-127.0.0.1:8080}

mkdir -p "$OUT"
start_cluster
deploy "$OVERLAY"
# One replica, held: the load must reach exactly one pod.
"$KUBECTL" -n model delete hpa --all >/dev/null
"$KUBECTL" -n model scale deployment/iris-model-autoscale --replicas=1 >/dev/null
for _ in $(seq 120); do
  [ "$("$KUBECTL" -n model get pods -l app.kubernetes.io/instance=iris-model-autoscale --no-headers 2>/dev/null | wc -l)" = 1 ] && break
  sleep 1
done
"$KUBECTL" -n model rollout status deployment/iris-model-autoscale --timeout=180s
pod_ip=$("$KUBECTL" -n model get pods -l app.kubernetes.io/instance=iris-model-autoscale -o jsonpath='{.items[0].status.podIP}')
echo "tuning pod $pod_ip (limit $CPU_LIMIT) through the gateway $GATEWAY"
"$BIN/loadgen" tune --url "http://$GATEWAY/seldon/model/iris-model-autoscale/api/v1.0/predictions" \
  --metrics-url "http://$pod_ip:9000/metrics" --cpu-limit "$CPU_LIMIT" --cpu-request "$CPU_REQUEST" \
  --out "$OUT" "$@"
