#!/usr/bin/env bash
# make bench-loadgen: how fast is our load generator? In one run, against the
# same 1-row Seldon prediction endpoint of the real model server on
# loopback, with the same number of connections and the same duration,
# measure the requests/s achieved by loadgen (closed loop, every request
# recorded to CSV), hey and wrk, interleaved ROUNDS times, and report each
# and the ratios. Goal: loadgen >= hey and >= 0.7x wrk.
#
# Environment: CONNS (default 16), DURATION seconds (default 8), ROUNDS
# (default 2), OUT (default results/bench/loadgen.md), BIN (default bin).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-16}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-2}
BIN=${BIN:-bin}
OUT=${OUT:-results/bench/loadgen.md}
GO=${GO:-go}
work=$(mktemp -d)

for tool in hey wrk; do
  command -v "$tool" >/dev/null || {
    echo "installing $tool (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
  }
done
mkdir -p "$BIN" "$(dirname "$OUT")"
CGO_ENABLED=0 "$GO" build -trimpath -o "$BIN/" ./cmd/modelserver ./cmd/loadgen

"$BIN/modelserver" --model modelserver/xgboost/testdata/iris.json --listen 127.0.0.1:0 --drain-delay 0s \
  >"$work/ms.out" 2>"$work/ms.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's/^listening on \([0-9.]*:[0-9]*\).*/\1/p' "$work/ms.out" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "modelserver did not start"; cat "$work/ms.log"; exit 1; }
url="http://$addr/api/v1.0/predictions"

body='{"data":{"ndarray":[[1,2,3,4]]}}'
printf '%s' "$body" >"$work/body.json"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
# loadgen: one closed-loop task of 1-row requests from CONNS clients for
# DURATION seconds, rows drawn like the seed's (integers 1..4).
cat >"$work/bench.yaml" <<YAML
name: bench
tasks:
  - {name: one-row, data_size: 1, client_num: $CONNS, duration: ${DURATION}s}
YAML

run_loadgen() {
  "$BIN/loadgen" --url "$url" --scenario "$work/bench.yaml" --out "$work/lg" --progress none --chart-size none >/dev/null 2>"$work/lg.log"
  sed -n 's/.*"requests_per_second": \([0-9.]*\).*/\1/p' "$work/lg/summary.json" | head -n1
}
run_hey() {
  hey -z "${DURATION}s" -c "$CONNS" -m POST -T application/json -D "$work/body.json" "$url" |
    sed -n 's/^[[:space:]]*Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p'
}
run_wrk() {
  wrk -t 2 -c "$CONNS" -d "${DURATION}s" -s "$work/post.lua" "$url" |
    sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p'
}

# Warm the server (JIT-free Go, but page cache, pools and CPU frequency).
hey -z 2s -c "$CONNS" -m POST -T application/json -D "$work/body.json" "$url" >/dev/null

declare -a lg hy wk
for r in $(seq "$ROUNDS"); do
  lg+=("$(run_loadgen)"); hy+=("$(run_hey)"); wk+=("$(run_wrk)")
  echo "round $r: loadgen ${lg[-1]} req/s, hey ${hy[-1]} req/s, wrk ${wk[-1]} req/s"
done
# Errors would flatter a generator: loadgen's summary says how many.
errors=$(sed -n 's/.*"errors": \([0-9]*\).*/\1/p' "$work/lg/summary.json" | head -n1)

python3 - "$OUT" "$CONNS" "$DURATION" "$errors" "${lg[*]}" "${hy[*]}" "${wk[*]}" <<'PY'
import sys, statistics, datetime, os
out, conns, dur, errors = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
lg, hy, wk = ([float(x) for x in a.split()] for a in sys.argv[5:8])
m = {k: statistics.mean(v) for k, v in (("loadgen", lg), ("hey", hy), ("wrk", wk))}
lines = [
    "# Load generator speed (make bench-loadgen)",
    "",
    f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {os.cpu_count()} CPUs shared with the model server and anything else running.",
    f"Same endpoint (1-row Seldon prediction, iris model, real modelserver on loopback), {conns} connections, {dur} s each, interleaved rounds.",
    "",
    "| generator | req/s per round | mean req/s | loadgen / this |",
    "|---|---|---|---|",
]
for k, v in (("loadgen", lg), ("hey", hy), ("wrk", wk)):
    lines.append(f"| {k} | {', '.join(f'{x:.0f}' for x in v)} | {m[k]:.0f} | {m['loadgen']/m[k]:.2f}x |")
lines += ["",
    f"loadgen vs hey: {m['loadgen']/m['hey']:.2f}x (goal >= 1.0); vs wrk: {m['loadgen']/m['wrk']:.2f}x (goal >= 0.7).",
    f"loadgen errors in its last round: {errors}. loadgen records every request to CSV and an HDR histogram while it runs; hey and wrk keep only aggregates.",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
