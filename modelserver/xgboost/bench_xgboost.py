#!/usr/bin/python3
"""Go inference against XGBoost's own predictor, same rows, same run.

    /usr/bin/python3 modelserver/xgboost/bench_xgboost.py [--out FILE]

(`make bench-inference` runs it.) Both sides use one thread: XGBoost's
Booster.inplace_predict with nthread=1 (and OMP_NUM_THREADS=1), Go's
BenchmarkPredictBatch on one goroutine. Rows are the iris golden inputs tiled
to the batch size, exactly as bench_test.go's benchRows builds them.

The iris model's trees are shallow (depth 0-5), so the script also trains,
at run time and seeded, two larger regression models on 20 synthetic
features with 5% missing values: "deep" (300 trees of depth 8) and
"lossguide" (300 loss-guided trees of up to 64 leaves, depths up to ~20),
checks that Go's predictions are bit-identical to XGBoost's, and times
10,000 rows of each through BenchmarkPredictFile. Rounds
alternate between the two so that load from other processes on the machine
hits both alike; rows per CPU-second is the figure compared, since wall time
on a shared machine also measures the neighbours. Prints a table and the
ratio Go/XGBoost.
"""

import argparse
import json
import tempfile
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


def time_go(rows, seconds, root, env=None):
    bench = "^BenchmarkPredictFile$" if env else "^BenchmarkPredictBatch$/^rows=%d$" % rows
    cmd = ["go", "test", "-run", "^$", "-bench", bench, "-benchtime", "%gs" % seconds, "-count", "1", PKG]
    out = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True,
                         env=dict(os.environ, **(env or {}))).stdout
    m = re.search(r"Benchmark\S*\s+\d+\s+([\d.]+) ns/op(.*)", out)
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
    ap.add_argument("--iris-only", action="store_true", help="skip the larger models trained at run time")
    args = ap.parse_args()
    root = os.path.abspath(os.path.join(HERE, "..", ".."))

    bst = xgb.Booster(model_file=os.path.join(HERE, "testdata", "iris.json"))
    bst.set_param({"nthread": 1})
    lines = [
        "Go PredictBatch vs XGBoost %s inplace_predict (nthread=1), same rows, same run" % xgb.__version__,
        "machine: %s, %d CPUs, %s; load average %s" % (
            cpu_name(), os.cpu_count(), platform.platform(), " ".join("%.1f" % v for v in os.getloadavg())),
        "median of %d alternating rounds of %gs each; rows/cpu-s is compared" % (args.rounds, args.seconds),
        "",
        "%-15s  %16s  %16s  %16s  %16s  %7s  %9s" % (
            "model, rows", "go rows/cpu-s", "xgb rows/cpu-s", "go rows/s", "xgb rows/s", "ratio", "go allocs"),
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
        lines.append("%-15s  %16.0f  %16.0f  %16.0f  %16.0f  %6.2fx  %9s" % (
            "iris, %d" % rows, gc, xc, gw, xw, gc / xc, "%g" % allocs if allocs is not None else "?"))
    if not args.iris_only:
        with tempfile.TemporaryDirectory() as tmp:
            for name, rows, env, bst2 in larger_models(tmp, root):
                x = np.fromfile(env["MLSCALE_BENCH_ROWS"], dtype=np.float32).reshape(rows, -1)
                go, xg = [], []
                for _ in range(args.rounds):
                    gw, gc, allocs = time_go(rows, args.seconds, root, env)
                    go.append((gw, gc))
                    xg.append(time_xgboost(bst2, x, args.seconds))
                gw, gc = (statistics.median(v) for v in zip(*go))
                xw, xc = (statistics.median(v) for v in zip(*xg))
                ratios.append(gc / xc)
                lines.append("%-15s  %16.0f  %16.0f  %16.0f  %16.0f  %6.2fx  %9s" % (
                    "%s, %d" % (name, rows), gc, xc, gw, xw, gc / xc, "%g" % allocs if allocs is not None else "?"))
    lines.append("")
    lines.append("Go/XGBoost rows per CPU-second: %s (goal >= 1.0x)" % ", ".join("%.2fx" % r for r in ratios))
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)


def larger_models(tmp, root, rows=10000):
    """Train the deep and loss-guided models, write them and their rows for
    the Go side, and prove Go predicts them bit-identically first."""
    rng = np.random.default_rng(20211201)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = x @ rng.normal(size=20) + np.sin(3 * x[:, 0]) * x[:, 1] + rng.normal(scale=0.1, size=len(x))
    x[rng.random(x.shape) < 0.05] = np.nan
    dtrain = xgb.DMatrix(x, label=y, missing=np.nan)
    xs = np.ascontiguousarray(x[:rows])
    for name, params in (
        ("deep", {"max_depth": 8}),
        ("lossguide", {"grow_policy": "lossguide", "max_leaves": 64, "max_depth": 0}),
    ):
        # hist trains in seconds where exact takes minutes on 2 cores.
        bst = xgb.train({"objective": "reg:squarederror", "tree_method": "hist", "seed": 1, **params}, dtrain,
                        num_boost_round=300)
        bst.set_param({"nthread": 1})
        model, xfile, yfile = (os.path.join(tmp, name + ext) for ext in (".json", ".x.bin", ".y.bin"))
        bst.save_model(model)
        xs.tofile(xfile)
        bst.predict(xgb.DMatrix(xs, missing=np.nan)).astype(np.float32).tofile(yfile)
        env = {"MLSCALE_BENCH_MODEL": model, "MLSCALE_BENCH_ROWS": xfile, "MLSCALE_BENCH_WANT": yfile}
        # The Go benchmark refuses to time a model it gets wrong.
        time_go(rows, 0.01, root, env)
        yield name, rows, env, bst


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
