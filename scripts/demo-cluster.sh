#!/usr/bin/env bash
# The demo on the local cluster: start the real control plane, the process
# node and the gateway (bin/localcluster up), deploy an overlay (model server
# limited to 250m CPU by the node's cgroups + autoscaler + adapter), run the
# seed's scenario through the gateway with replica sampling, write
# results/<UTC time>/, and tear everything down, also on Ctrl-C. Needs root
# (pod addresses, mounts, cgroups).
#
# Environment: SCALING:
#   tuned     (default) the HPA `loadgen tune` measured: predicted_rows_per_second (local-tuned)
#   requests  the adapter's requests_per_second HPA, 4 per pod (local)
#   cpu       the seed's 40% CPU HPA through metrics-server (local-cpu)
#   keda      a ScaledObject on the scaler's push trigger, down to zero (local-keda)
#   compare   cpu, requests and tuned one after another on the same traffic in
#             one cluster, each from one replica, then `loadgen compare`:
#             OUT/compare.md (SLO violations, replica-seconds, scale events)
#             and OUT/compare.png
#   closed    the seed's own closed loop (scenarios/seed.yaml: 4 clients,
#             500 -> 10,000 -> 500 rows) on one fixed replica, then with the
#             tuned HPA: OUT/closed.md, throughput and latency per task
# SLO (default 500ms, marked on the charts), SCALE (default 1; closed: 0.3),
# SCENARIO (default scenarios/seed-cluster.yaml), OUT (results directory),
# OVERLAY (overrides SCALING's overlay), BIN (default bin), STATE (cluster
# state directory). Extra arguments go to loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/localcluster-lib.sh

BIN=${BIN:-bin}
SCALING=${SCALING:-tuned}
SLO=${SLO:-500ms}
SCENARIO=${SCENARIO:-scenarios/seed-cluster.yaml}
case "$SCALING" in
  tuned|compare) default_overlay=manifests/overlays/local-tuned ;;
  requests) default_overlay=manifests/overlays/local ;;
  cpu) default_overlay=manifests/overlays/local-cpu ;;
  keda) default_overlay=manifests/overlays/local-keda ;;
  closed) default_overlay=manifests/overlays/local-tuned; SCENARIO=scenarios/seed.yaml; SCALE=${SCALE:-0.3} ;;
  *) echo "SCALING=$SCALING: want tuned, requests, cpu, keda, compare or closed" >&2; exit 2 ;;
esac
SCALE=${SCALE:-1}
OVERLAY=${OVERLAY:-$default_overlay}
up_args=()
[ "$SCALING" = keda ] && up_args+=(--keda)
OUT=${OUT:-results/$(date -u +%Y%m%dT%H%M%SZ)}
STATE=${STATE:-$(mktemp -d /tmp/mlscale-demo-XXXXXX)/run}
GATEWAY=${GATEWAY:-127.0.0.1:8080}

mkdir -p "$OUT"
start_cluster "${up_args[@]}"

# Each configuration starts from one idle replica whose HPA has decided,
# with no memory of the last run: the HPA controller keeps each HPA's
# recommendations of the last 5 minutes (scale-down stabilization) and
# would scale a replica count set by hand straight back up, so the HPA is
# deleted, the controller given a sync (15 s) to forget it, and the
# overlay applied again.
reset_to_one() { # overlay
  "$KUBECTL" -n model delete hpa iris-model-autoscale --ignore-not-found >/dev/null
  "$KUBECTL" -n model scale deployment/iris-model-autoscale --replicas=1 >/dev/null
  sleep 20
  "$KUBECTL" apply -k "$1" >>"$OUT/apply.log"
  for _ in $(seq 180); do
    ready=$("$KUBECTL" -n model get deployment iris-model-autoscale -o jsonpath='{.status.readyReplicas}/{.status.replicas}')
    active=$("$KUBECTL" -n model get hpa iris-model-autoscale -o jsonpath='{.status.conditions[?(@.type=="ScalingActive")].status}' 2>/dev/null || true)
    [ "$ready" = 1/1 ] && [ "$active" = True ] && return 0
    sleep 1
  done
  echo "the model did not settle at one replica: $ready, ScalingActive=$active"
}

run_load() { # out scenario scale [loadgen args]
  local out=$1 scenario=$2 scale=$3
  shift 3
  "$BIN/loadgen" --url "http://$GATEWAY" --namespace model --deployment iris-model-autoscale \
    --scale-resource deployments.v1.apps --kubeconfig "$KUBECONFIG" --slo "$SLO" \
    --scenario "$scenario" --scale "$scale" --out "$out" "$@"
}

snapshot() { # out
  "$KUBECTL" get hpa,pods -A -o wide >"$1/cluster-state.txt" 2>&1 || true
  "$KUBECTL" -n model describe hpa >>"$1/cluster-state.txt" 2>&1 || true
}

rc=0
case "$SCALING" in
compare)
  runs=()
  for cfg in "cpu-40%:manifests/overlays/local-cpu" "requests/s:manifests/overlays/local" "tuned rows/s:manifests/overlays/local-tuned"; do
    name=${cfg%%:*} overlay=${cfg#*:}
    dir="$OUT/$(echo "$name" | tr -c 'a-z0-9\n' '-')"
    deploy "$overlay"
    reset_to_one "$overlay"
    echo "== $name: $SCENARIO x$SCALE"
    run_load "$dir" "$SCENARIO" "$SCALE" "$@" || rc=$?
    snapshot "$dir"
    runs+=("$name=$dir")
  done
  "$BIN/loadgen" compare --slo "$SLO" --goal "tuned rows/s" --baseline "cpu-40%" --out "$OUT" "${runs[@]}" || rc=$?
  ;;
closed)
  # One fixed replica (the HPA removed), then the tuned HPA, same clients.
  deploy "$OVERLAY"
  "$KUBECTL" -n model delete hpa iris-model-autoscale >/dev/null
  "$KUBECTL" -n model scale deployment/iris-model-autoscale --replicas=1 >/dev/null
  "$KUBECTL" -n model rollout status deployment/iris-model-autoscale --timeout=180s
  echo "== one replica, no autoscaler: $SCENARIO x$SCALE"
  run_load "$OUT/fixed-1" "$SCENARIO" "$SCALE" "$@" || rc=$?
  deploy "$OVERLAY"
  reset_to_one "$OVERLAY"
  echo "== the tuned HPA: $SCENARIO x$SCALE"
  run_load "$OUT/tuned" "$SCENARIO" "$SCALE" "$@" || rc=$?
  snapshot "$OUT/tuned"
  {
    echo "# The seed's closed loop ($SCENARIO x$SCALE), $("$KUBECTL" -n model get deployment iris-model-autoscale -o jsonpath='{.spec.template.spec.containers[0].resources.limits.cpu}') pods"
    for r in fixed-1 tuned; do echo; echo "## $r"; echo; echo '```'; cat "$OUT/$r/summary.txt"; echo '```'; done
  } >"$OUT/closed.md"
  cat "$OUT/closed.md"
  ;;
*)
  deploy "$OVERLAY"
  if [ "$SCALING" = keda ]; then
    # Start from zero, so the chart shows the first request waking the model.
    echo "waiting for KEDA to scale the idle model to zero"
    for _ in $(seq 120); do
      [ "$("$KUBECTL" -n model get deployment iris-model-autoscale -o jsonpath='{.spec.replicas}')" = 0 ] && break
      sleep 1
    done
  fi
  run_load "$OUT" "$SCENARIO" "$SCALE" "$@" || rc=$?
  snapshot "$OUT"
  ;;
esac
stop_cluster
echo "results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$rc"
