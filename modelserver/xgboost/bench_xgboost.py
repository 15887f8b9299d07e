#!/usr/bin/python3
"""Go inference against XGBoost's own predictor, same rows, same run.

    /usr/bin/python3 modelserver/xgboost/bench_xgboost.py [--out FILE]

(`make bench-inference` runs it.) Both sides use one thread: XGBoost's
Booster.inplace_predict with nthread=1 (and OMP_NUM_THREADS=1), Go's
BenchmarkPredictBatch on one goroutine. Rows are the iris golden inputs tiled
to the batch size, exactly as bench_test.go's benchRows builds them. Rounds
alternate between the two so that load from other processes on the machine
hits both alike; rows per CPU-second is the figure compared, since wall time
on a shared machine also measures the neighbours. Prints a table and the
ratio Go/XGBoost.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

os.environ["OMP_NUM_THREADS"] = "1"  # before xgboost loads libgomp

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "./modelserver/xgboost"


def golden_rows(n):
    with open(os.path.join(HERE, "testdata", "iris.golden.json")) as f:
        g = json.load(f)
    x = np.array([[np.nan if v is None else v for v in row] for row in g["inputs"]], dtype=np.float32)
    return np.ascontiguousarray(np.resize(x, (n, x.shape[1])))


def time_xgboost(bst, x, seconds):
    bst.inplace_predict(x)  # warm up
    calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        bst.inplace_predict(x)
        calls += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return calls * len(x) / wall, calls * len(x) / cpu


def time_go(rows, seconds, root):
    cmd = ["go", "test", "-run", "^$", "-bench", "^BenchmarkPredictBatch$/^rows=%d$" % rows,
           "-benchtime", "%gs" % seconds, "-count", "1", PKG]
    out = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True).stdout
    m = re.search(r"rows=%d\S*\s+\d+\s+([\d.]+) ns/op(.*)" % rows, out)
    if not m:
        sys.exit("no benchmark line in go test output:\n" + out)
    metrics = dict((unit, float(v)) for v, unit in re.findall(r"([\d.e+]+) (\S+)", m.group(2)))
    return metrics["rows/s"], metrics["rows/cpu-s"], metrics.get("allocs/op")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 500, 10000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args()
    root = os.path.abspath(os.path.join(HERE, "..", ".."))

    bst = xgb.Booster(model_file=os.path.join(HERE, "testdata", "iris.json"))
    bst.set_param({"nthread": 1})
    lines = [
        "Go PredictBatch vs XGBoost %s inplace_predict (nthread=1), iris model (300 trees)" % xgb.__version__,
        "machine: %s, %d CPUs, %s; load average %s" % (
            cpu_name(), os.cpu_count(), platform.platform(), " ".join("%.1f" % v for v in os.getloadavg())),
        "median of %d alternating rounds of %gs each; rows/cpu-s is compared" % (args.rounds, args.seconds),
        "",
        "%7s  %16s  %16s  %16s  %16s  %7s  %9s" % (
            "rows", "go rows/cpu-s", "xgb rows/cpu-s", "go rows/s", "xgb rows/s", "ratio", "go allocs"),
    ]
    ratios = []
    for rows in args.rows:
        x = golden_rows(rows)
        go, xg = [], []
        allocs = None
        for _ in range(args.rounds):
            gw, gc, allocs = time_go(rows, args.seconds, root)
            go.append((gw, gc))
            xg.append(time_xgboost(bst, x, args.seconds))
        gw, gc = (statistics.median(v) for v in zip(*go))
        xw, xc = (statistics.median(v) for v in zip(*xg))
        ratios.append(gc / xc)
        lines.append("%7d  %16.0f  %16.0f  %16.0f  %16.0f  %6.2fx  %9s" % (
            rows, gc, xc, gw, xw, gc / xc, "%g" % allocs if allocs is not None else "?"))
    lines.append("")
    lines.append("Go/XGBoost rows per CPU-second: %s (goal >= 1.0x)" % ", ".join("%.2fx" % r for r in ratios))
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
