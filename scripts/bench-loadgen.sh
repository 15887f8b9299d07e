#!/usr/bin/env bash
# make bench-loadgen: how fast is our load generator? In one run, against the
# same 1-row Seldon prediction endpoint of the real model server on
# loopback, with the same number of connections and the same duration,
# measure the requests/s achieved by loadgen (closed loop, every request
# recorded to CSV), hey and wrk, interleaved ROUNDS times, and report each,
# the medians and the ratios. Goal: loadgen >= hey and >= 0.7x wrk.
# On a shared 2-CPU machine the achieved rates swing with whatever else runs,
# so each generator's own CPU time per request (user+sys, /usr/bin/time) is
# reported too: it is what the generator takes away from the server.
#
# Environment: CONNS (default 16), DURATION seconds (default 8), ROUNDS
# (default 3), OUT (default results/bench/loadgen.md), BIN (default bin).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-16}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
BIN=${BIN:-bin}
OUT=${OUT:-results/bench/loadgen.md}
GO=${GO:-go}
work=$(mktemp -d)

for tool in hey wrk /usr/bin/time; do
  command -v "$tool" >/dev/null || {
    echo "installing $(basename "$tool") (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$(basename "$tool")" >/dev/null
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

# Each prints "REQ_PER_S CPU_SECONDS" (CPU: the generator's user+sys).
cputime() { /usr/bin/time -f '%U %S' -o "$work/cpu" "$@"; }
cpu() { awk '{print $1 + $2}' "$work/cpu"; }
run_loadgen() {
  cputime "$BIN/loadgen" --url "$url" --scenario "$work/bench.yaml" --out "$work/lg" --progress none --chart-size none >/dev/null 2>"$work/lg.log"
  echo "$(sed -n 's/.*"requests_per_second": \([0-9.]*\).*/\1/p' "$work/lg/summary.json" | head -n1) $(cpu)"
}
run_hey() {
  cputime hey -z "${DURATION}s" -c "$CONNS" -m POST -T application/json -D "$work/body.json" "$url" >"$work/hey.out"
  echo "$(sed -n 's/^[[:space:]]*Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' "$work/hey.out") $(cpu)"
}
run_wrk() {
  cputime wrk -t 2 -c "$CONNS" -d "${DURATION}s" -s "$work/post.lua" "$url" >"$work/wrk.out"
  echo "$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$work/wrk.out") $(cpu)"
}

# Warm the server (JIT-free Go, but page cache, pools and CPU frequency).
hey -z 2s -c "$CONNS" -m POST -T application/json -D "$work/body.json" "$url" >/dev/null

: >"$work/rounds"
for r in $(seq "$ROUNDS"); do
  for g in loadgen hey wrk; do
    res=$("run_$g")
    echo "$g $res" >>"$work/rounds"
    echo "round $r: $g $res (req/s, CPU s)"
  done
done
# Errors would flatter a generator: loadgen's summary says how many.
errors=$(sed -n 's/.*"errors": \([0-9]*\).*/\1/p' "$work/lg/summary.json" | head -n1)

python3 - "$OUT" "$CONNS" "$DURATION" "$errors" "$work/rounds" <<'PY'
import sys, statistics, datetime, os
out, conns, dur, errors, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
rate, cpu = {}, {}
for line in open(rounds):
    g, r, c = line.split()
    rate.setdefault(g, []).append(float(r))
    # CPU microseconds per request: the generator's CPU over the requests it sent.
    cpu.setdefault(g, []).append(float(c) / (float(r) * dur) * 1e6)
med = {g: statistics.median(v) for g, v in rate.items()}
cmed = {g: statistics.median(v) for g, v in cpu.items()}
lines = [
    "# Load generator speed (make bench-loadgen)",
    "",
    f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {os.cpu_count()} CPUs shared with the model server and anything else running.",
    f"Same endpoint (1-row Seldon prediction, iris model, real modelserver on loopback), {conns} connections, {dur:g} s each, rounds interleaved.",
    "",
    "| generator | req/s per round | median req/s | loadgen / this | CPU µs per request (median) |",
    "|---|---|---|---|---|",
]
for g in ("loadgen", "hey", "wrk"):
    lines.append(f"| {g} | {', '.join(f'{x:.0f}' for x in rate[g])} | {med[g]:.0f} | {med['loadgen']/med[g]:.2f}x | {cmed[g]:.1f} |")
lines += ["",
    f"loadgen vs hey: {med['loadgen']/med['hey']:.2f}x (goal >= 1.0); vs wrk: {med['loadgen']/med['wrk']:.2f}x (goal >= 0.7).",
    f"loadgen errors in its last round: {errors}. loadgen records every request to CSV and an HDR histogram while it runs; hey and wrk keep only aggregates.",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
