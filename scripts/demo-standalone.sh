#!/usr/bin/env bash
# The demo without Kubernetes: build the model server and the load client,
# serve the seed's iris model on loopback, run a shortened seed scenario
# against it and write results/<UTC time>/ (requests.csv, summary.json,
# summary.txt, chart.png, the server's log). The server is stopped at the
# end, also on Ctrl-C (the load client then still writes what it recorded).
#
# Environment: SCALE (default 0.02: 30 requests per task instead of 1500),
# OUT (results directory), MODEL (model file), BIN (binaries, default bin).
# Extra arguments go to loadgen (e.g. --progress lines, --seed 7).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
SCALE=${SCALE:-0.02}
MODEL=${MODEL:-modelserver/xgboost/testdata/iris.json}
OUT=${OUT:-results/$(date -u +%Y%m%dT%H%M%SZ)}
GO=${GO:-go}

mkdir -p "$BIN" "$OUT"
echo "building modelserver and loadgen into $BIN/"
CGO_ENABLED=0 "$GO" build -trimpath -o "$BIN/" ./cmd/modelserver ./cmd/loadgen

# No drain delay: nothing routes to this server but us.
"$BIN/modelserver" --model "$MODEL" --listen 127.0.0.1:0 --drain-delay 0s \
  >"$OUT/modelserver.out" 2>"$OUT/modelserver.log" &
server=$!
stop_server() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
}
trap stop_server EXIT
# Ctrl-C reaches loadgen too (same process group); bash runs this trap once
# loadgen has written its results and exited.
trap 'echo "interrupted; results so far in $OUT"; exit 130' INT TERM

addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's/^listening on \([0-9.]*:[0-9]*\).*/\1/p' "$OUT/modelserver.out" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { echo "modelserver exited:"; cat "$OUT/modelserver.log"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "modelserver did not report its address in 10s"; cat "$OUT/modelserver.log"; exit 1; }
echo "modelserver on $addr (model $MODEL)"

rc=0
"$BIN/loadgen" --url "http://$addr" --scenario scenarios/seed.yaml --scale "$SCALE" --out "$OUT" "$@" || rc=$?
stop_server
echo "results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$rc"
