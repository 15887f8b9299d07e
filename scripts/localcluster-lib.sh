# Sourced by the scripts that run something on the local cluster
# (demo-cluster.sh, tune-cluster.sh): start_cluster starts bin/localcluster
# in the background, waits until it is ready, exports KUBECONFIG and KUBECTL,
# and stops it on exit (also on Ctrl-C).
#
# Uses BIN, OUT (its log goes to $OUT/localcluster.log), STATE, GATEWAY.
start_cluster() { # [localcluster up args]
  "$BIN/localcluster" up --state-dir "$STATE" --gateway "$GATEWAY" --repo . --bin "$BIN" "$@" \
    >"$OUT/localcluster.log" 2>&1 &
  cluster=$!
  trap stop_cluster EXIT
  trap 'echo "interrupted; results so far in $OUT"; exit 130' INT TERM
  echo "starting the local cluster (log: $OUT/localcluster.log)"
  for _ in $(seq 600); do
    [ -f "$STATE/ready" ] && break
    kill -0 "$cluster" 2>/dev/null || { echo "localcluster exited:"; tail -n 40 "$OUT/localcluster.log"; exit 1; }
    sleep 0.5
  done
  [ -f "$STATE/ready" ] || { echo "the local cluster was not ready in 5 minutes"; tail -n 40 "$OUT/localcluster.log"; exit 1; }
  KUBECONFIG=$(cat "$STATE/ready")
  KUBECTL=$(ls "${MLSCALE_CACHE:-$HOME/.cache/mlscale}"/kubernetes-*/bin/kubectl | head -n1)
  export KUBECONFIG KUBECTL
}

stop_cluster() {
  if [ -n "${cluster:-}" ] && kill -0 "$cluster" 2>/dev/null; then
    echo "stopping the local cluster"
    kill -INT "$cluster" 2>/dev/null || true
    wait "$cluster" 2>/dev/null || true
  fi
}

deploy() { # overlay
  echo "deploying $1"
  "$KUBECTL" apply -k "$1" >>"$OUT/apply.log"
  "$KUBECTL" -n mlscale rollout status deployment/mlscale-adapter --timeout=180s
  "$KUBECTL" -n model rollout status deployment/iris-model-autoscale --timeout=180s
}
