#!/usr/bin/python3
"""Train the iris model the seed serves, plus small models for the other
objectives, and record XGBoost's own predictions as golden data.

Run with Debian's python3-xgboost (1.7) and python3-sklearn:

    /usr/bin/python3 modelserver/xgboost/testdata/train.py modelserver/xgboost/testdata

(`make fixtures` does exactly that). Everything is seeded, so a rerun with the
same XGBoost gives the same files.

Outputs, per model NAME:
  NAME.json            XGBoost JSON (Booster.save_model)
  NAME.golden.json     inputs and Booster.predict outputs, float32 values in
                       shortest round-trip form, NaN written as null
and for the iris model (and "tiny", a 2-round model used as fuzz seeds) also
the other containers the loader must read:
  iris.ubj             UBJSON (Booster.save_model)
  model.joblib         joblib.dump(Booster), exactly as the seed saves it
  iris.deprecated      XGBoost's legacy binary format (Booster.save_raw("deprecated"))
  model-xgb15.joblib   a joblib pickle whose handle uses the serialisation
                       format of XGBoost 1.0-1.5 (the seed ran 1.5.1); built
                       here and checked by loading it back with XGBoost
  tiny.joblib.gz/.z    joblib.dump(..., compress=gzip/zlib) of the tiny model
  tiny-p2/p5.pkl       pickle.dump of the tiny model, protocols 2 and 5
"""

import copyreg
import json
import os
import pickle
import struct
import sys
import warnings

import joblib
import numpy as np
import xgboost as xgb
from sklearn import datasets

SEED = 20211201


def f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def fmt(v):
    """Shortest text that parses back to the same float32; NaN as null."""
    v = np.float32(v)
    if np.isnan(v):
        return "null"
    if np.isinf(v):
        raise ValueError("golden data must not hold infinities (not JSON)")
    return np.format_float_positional(v, unique=True, trim="-") if abs(v) < 1e16 and (v == 0 or abs(v) >= 1e-6) \
        else np.format_float_scientific(v, unique=True, trim="-")


def split_values(bst):
    """Every split threshold in the model, so rows can sit exactly on them."""
    model = json.loads(bst.save_raw("json"))
    out = {}
    gb = model["learner"]["gradient_booster"]
    gb = gb.get("gbtree", gb)  # dart wraps the gbtree
    for tree in gb["model"]["trees"]:
        for i, left in enumerate(tree["left_children"]):
            if left != -1:
                out.setdefault(tree["split_indices"][i], set()).add(np.float32(tree["split_conditions"][i]))
    return {k: sorted(v) for k, v in out.items()}


def threshold_rows(bst, base, rng, n):
    """Rows whose features sit on split thresholds or one float32 step either
    side: this is where float32 vs float64 comparison, and < vs <=, differ."""
    splits = split_values(bst)
    rows = base[rng.integers(0, len(base), size=n)].copy()
    for r in range(n):
        for feat, values in splits.items():
            if rng.random() < 0.7:
                v = values[rng.integers(0, len(values))]
                step = rng.integers(-1, 2)
                if step < 0:
                    v = np.nextafter(v, np.float32(-np.inf), dtype=np.float32)
                elif step > 0:
                    v = np.nextafter(v, np.float32(np.inf), dtype=np.float32)
                rows[r, feat] = v
    return f32(rows)


def with_missing(rows, rng, p=0.35):
    rows = rows.copy()
    mask = rng.random(rows.shape) < p
    mask[0, :] = True  # one row with every feature missing
    rows[mask] = np.nan
    return f32(rows)


def write_golden(path, name, bst, sets, objective):
    x = f32(np.vstack([rows for _, rows in sets]))
    pred = bst.predict(xgb.DMatrix(x, missing=np.nan))
    pred = np.asarray(pred, dtype=np.float32).reshape(len(x), -1)
    # The benchmark uses inplace_predict; it must agree with predict.
    inplace = np.asarray(bst.inplace_predict(x), dtype=np.float32).reshape(len(x), -1)
    assert np.array_equal(pred, inplace), "predict and inplace_predict disagree"
    with open(path, "w") as f:
        f.write("{\n")
        f.write('  "model": %s,\n' % json.dumps(name + ".json"))
        f.write('  "objective": %s,\n' % json.dumps(objective))
        f.write('  "xgboost_version": %s,\n' % json.dumps(xgb.__version__))
        f.write('  "num_features": %d,\n' % x.shape[1])
        f.write('  "num_outputs": %d,\n' % pred.shape[1])
        f.write('  "sets": [%s],\n' % ", ".join(
            '{"name": %s, "rows": %d}' % (json.dumps(n), len(r)) for n, r in sets))
        f.write('  "inputs": [\n')
        f.write(",\n".join("    [" + ", ".join(fmt(v) for v in row) + "]" for row in x))
        f.write("\n  ],\n")
        f.write('  "outputs": [\n')
        f.write(",\n".join("    [" + ", ".join(fmt(v) for v in row) + "]" for row in pred))
        f.write("\n  ]\n}\n")
    return len(x)


def uniform(rng, n, lo, hi):
    return f32(rng.uniform(lo, hi, size=(n, len(lo))))


def train_iris(out, rng):
    iris = datasets.load_iris()
    # The seed's training, unchanged: all 150 rows, default parameters.
    dtrain = xgb.DMatrix(iris.data, label=iris.target)
    params = {"objective": "multi:softprob", "num_class": 3, "eval_metric": "mlogloss"}
    bst = xgb.train(params, dtrain, num_boost_round=100)

    bst.save_model(os.path.join(out, "iris.json"))
    bst.save_model(os.path.join(out, "iris.ubj"))
    joblib.dump(bst, os.path.join(out, "model.joblib"))
    with open(os.path.join(out, "iris.deprecated"), "wb") as f:
        f.write(bst.save_raw("deprecated"))
    write_xgb15_joblib(bst, os.path.join(out, "model-xgb15.joblib"))

    x = f32(iris.data)
    lo, hi = x.min(axis=0), x.max(axis=0)
    sets = [
        # The seed's benchmark rows: random integers 1..4.
        ("seed-ints-1-4", f32(rng.integers(1, 5, size=(800, 4)))),
        # Reals well outside the training range on both sides.
        ("uniform-wide", uniform(rng, 500, lo - 3, hi + 3)),
        ("iris", x),
        ("missing", with_missing(np.vstack([x, uniform(rng, 250, lo, hi)]), rng)),
        ("thresholds", threshold_rows(bst, x, rng, 400)),
    ]
    return write_golden(os.path.join(out, "iris.golden.json"), "iris", bst, sets, "multi:softprob")


def write_xgb15_joblib(bst, path):
    """XGBoost 1.0-1.5 pickled a Booster's handle as
    "CONFIG-offset:" + int64 length + legacy binary model + JSON config.
    XGBoost 1.7 still reads that; check it does, so the fixture is real."""
    raw = bytes(bst.save_raw("deprecated"))
    config = bst.save_config().encode()
    handle = b"CONFIG-offset:" + struct.pack("<q", len(raw)) + raw + config
    state = {"handle": bytearray(handle)}

    # joblib.dump would call Booster.__getstate__, which re-serialises in the
    # 1.7 format, so write the same pickle (protocol 4, NEWOBJ + BUILD of the
    # state dict) with the old handle directly.
    class OldBoosterPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, xgb.Booster):
                return copyreg.__newobj__, (xgb.Booster,), state
            return NotImplemented

    with open(path, "wb") as f:
        OldBoosterPickler(f, protocol=4).dump(bst)
    loaded = joblib.load(path)
    probe = f32([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [np.nan, 2.0, 4.0, np.nan]])
    np.testing.assert_array_equal(loaded.predict(xgb.DMatrix(probe)), bst.predict(xgb.DMatrix(probe)))
    with open(path, "rb") as f:
        assert b"CONFIG-offset:" in f.read(), "pickle lost the 1.5 handle"


def train_extra(out, rng):
    n = 0
    iris = datasets.load_iris()
    x_iris = f32(iris.data)

    # multi:softmax: the class index, one output per row.
    bst = xgb.train({"objective": "multi:softmax", "num_class": 3, "max_depth": 3, "seed": SEED},
                    xgb.DMatrix(x_iris, label=iris.target), num_boost_round=20)
    bst.save_model(os.path.join(out, "iris_softmax.json"))
    lo, hi = x_iris.min(axis=0), x_iris.max(axis=0)
    n += write_golden(os.path.join(out, "iris_softmax.golden.json"), "iris_softmax", bst, [
        ("iris", x_iris),
        ("uniform-wide", uniform(rng, 200, lo - 2, hi + 2)),
        ("missing", with_missing(x_iris, rng)),
        ("thresholds", threshold_rows(bst, x_iris, rng, 150)),
    ], "multi:softmax")

    # A small random forest inside boosting: 4 parallel trees per class and
    # round, so tree_info repeats groups.
    bst = xgb.train({"objective": "multi:softprob", "num_class": 3, "num_parallel_tree": 4,
                     "subsample": 0.8, "colsample_bynode": 0.8, "max_depth": 4, "seed": SEED},
                    xgb.DMatrix(x_iris, label=iris.target), num_boost_round=5)
    bst.save_model(os.path.join(out, "iris_forest.json"))
    n += write_golden(os.path.join(out, "iris_forest.golden.json"), "iris_forest", bst, [
        ("iris", x_iris),
        ("missing", with_missing(x_iris, rng)),
        ("thresholds", threshold_rows(bst, x_iris, rng, 150)),
    ], "multi:softprob")

    # binary:logistic on 30 features, trained with missing values so that
    # default_left is learned both ways; default base_score and a
    # non-default one (the margin is logit(base_score)).
    cancer = datasets.load_breast_cancer()
    xc = f32(cancer.data)
    xc_train = with_missing(xc, np.random.default_rng(SEED + 1), p=0.15)
    lo, hi = xc.min(axis=0), xc.max(axis=0)
    for name, extra in (("cancer_logistic", {}), ("cancer_logistic_base", {"base_score": 0.3})):
        params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "seed": SEED, **extra}
        bst = xgb.train(params, xgb.DMatrix(xc_train, label=cancer.target, missing=np.nan),
                        num_boost_round=30)
        bst.save_model(os.path.join(out, name + ".json"))
        n += write_golden(os.path.join(out, name + ".golden.json"), name, bst, [
            ("cancer", xc),
            ("uniform", uniform(rng, 200, lo, hi)),
            ("missing", with_missing(xc[:200], rng)),
            ("thresholds", threshold_rows(bst, xc, rng, 150)),
        ], "binary:logistic")

    # The other objectives the Go evaluator accepts: logitraw (the margin
    # itself) and reg:logistic (sigmoid, like binary:logistic, on a target
    # scaled into [0,1]).
    bst = xgb.train({"objective": "binary:logitraw", "max_depth": 3, "seed": SEED},
                    xgb.DMatrix(xc_train, label=cancer.target, missing=np.nan), num_boost_round=10)
    bst.save_model(os.path.join(out, "cancer_logitraw.json"))
    n += write_golden(os.path.join(out, "cancer_logitraw.golden.json"), "cancer_logitraw", bst, [
        ("cancer", xc[:200]),
        ("missing", with_missing(xc[200:300], rng)),
        ("thresholds", threshold_rows(bst, xc, rng, 100)),
    ], "binary:logitraw")

    # dart: each tree's leaves weighed by weight_drop at prediction time.
    bst = xgb.train({"objective": "binary:logistic", "booster": "dart", "rate_drop": 0.2,
                     "max_depth": 3, "seed": SEED},
                    xgb.DMatrix(xc_train, label=cancer.target, missing=np.nan), num_boost_round=15)
    bst.save_model(os.path.join(out, "cancer_dart.json"))
    with open(os.path.join(out, "cancer_dart.deprecated"), "wb") as f:
        f.write(bst.save_raw("deprecated"))
    n += write_golden(os.path.join(out, "cancer_dart.golden.json"), "cancer_dart", bst, [
        ("cancer", xc[:200]),
        ("missing", with_missing(xc[200:300], rng)),
        ("thresholds", threshold_rows(bst, xc, rng, 100)),
    ], "binary:logistic")

    # reg:squarederror on the diabetes targets (25..346) with base_score set
    # to their mean, trained with missing values.
    diabetes = datasets.load_diabetes()
    xd = f32(diabetes.data)
    xd_train = with_missing(xd, np.random.default_rng(SEED + 2), p=0.1)
    params = {"objective": "reg:squarederror", "max_depth": 5, "eta": 0.1,
              "base_score": float(np.mean(diabetes.target)), "seed": SEED}
    bst = xgb.train(params, xgb.DMatrix(xd_train, label=diabetes.target, missing=np.nan),
                    num_boost_round=50)
    bst.save_model(os.path.join(out, "diabetes_squarederror.json"))
    lo, hi = xd.min(axis=0), xd.max(axis=0)
    n += write_golden(os.path.join(out, "diabetes_squarederror.golden.json"), "diabetes_squarederror", bst, [
        ("diabetes", xd),
        ("uniform-wide", uniform(rng, 200, lo - 0.1, hi + 0.1)),
        ("missing", with_missing(xd[:200], rng)),
        ("thresholds", threshold_rows(bst, xd, rng, 150)),
    ], "reg:squarederror")

    y01 = (diabetes.target - diabetes.target.min()) / (diabetes.target.max() - diabetes.target.min())
    bst = xgb.train({"objective": "reg:logistic", "max_depth": 3, "base_score": 0.4, "seed": SEED},
                    xgb.DMatrix(xd_train, label=y01, missing=np.nan), num_boost_round=10)
    bst.save_model(os.path.join(out, "diabetes_logistic.json"))
    n += write_golden(os.path.join(out, "diabetes_logistic.golden.json"), "diabetes_logistic", bst, [
        ("diabetes", xd[:200]),
        ("missing", with_missing(xd[200:300], rng)),
        ("thresholds", threshold_rows(bst, xd, rng, 100)),
    ], "reg:logistic")
    return n


def train_objectives(out):
    """One small model per remaining objective the evaluator accepts, each
    checked against XGBoost like the rest (only transforms and base_score
    differ between them)."""
    rng = np.random.default_rng(SEED + 4)
    diabetes = datasets.load_diabetes()
    xd = f32(diabetes.data)
    xd_train = with_missing(xd, np.random.default_rng(SEED + 5), p=0.1)
    y = diabetes.target
    counts = np.floor(y / 25.0)  # non-negative counts for poisson
    groups = [len(xd) // 4] * 3 + [len(xd) - 3 * (len(xd) // 4)]
    n = 0
    for objective, label, extra in (
        ("count:poisson", counts, {}),
        ("reg:gamma", y, {"base_score": float(np.mean(y)), "min_child_weight": 0}),
        ("reg:tweedie", y, {"tweedie_variance_power": 1.3}),
        ("binary:hinge", (y > np.median(y)).astype(float), {}),
        ("reg:pseudohubererror", y, {"huber_slope": 20.0}),
        ("reg:squaredlogerror", y, {"base_score": float(np.mean(y)), "min_child_weight": 0}),
        ("reg:absoluteerror", y, {}),
        ("rank:pairwise", counts, {}),
    ):
        name = "obj_" + objective.replace(":", "_")
        dtrain = xgb.DMatrix(xd_train, label=label, missing=np.nan)
        if objective.startswith("rank:"):
            dtrain.set_group(groups)
        bst = xgb.train({"objective": objective, "max_depth": 3, "seed": SEED, **extra},
                        dtrain, num_boost_round=8)
        bst.save_model(os.path.join(out, name + ".json"))
        n += write_golden(os.path.join(out, name + ".golden.json"), name, bst, [
            ("diabetes", xd[:150]),
            ("missing", with_missing(xd[150:250], rng)),
            ("thresholds", threshold_rows(bst, xd, rng, 100)),
        ], objective)
    return n


def train_tiny(out):
    """A two-round, depth-2 iris model in every container: small seeds for
    the loader fuzz targets, where mutations of a 200 KB file go nowhere."""
    rng = np.random.default_rng(SEED + 3)
    iris = datasets.load_iris()
    x = f32(iris.data)
    bst = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 2},
                    xgb.DMatrix(x, label=iris.target), num_boost_round=2)
    bst.save_model(os.path.join(out, "tiny.json"))
    bst.save_model(os.path.join(out, "tiny.ubj"))
    joblib.dump(bst, os.path.join(out, "tiny.joblib"))
    joblib.dump(bst, os.path.join(out, "tiny.joblib.gz"), compress=("gzip", 3))
    joblib.dump(bst, os.path.join(out, "tiny.joblib.z"), compress=("zlib", 3))
    with open(os.path.join(out, "tiny.deprecated"), "wb") as f:
        f.write(bst.save_raw("deprecated"))
    # Plain pickle at the oldest and newest protocols: 2 spells bytearray as
    # bytearray(str, "latin-1"), 5 has its own BYTEARRAY8 opcode.
    for proto in (2, 5):
        with open(os.path.join(out, "tiny-p%d.pkl" % proto), "wb") as f:
            pickle.dump(bst, f, protocol=proto)
    write_xgb15_joblib(bst, os.path.join(out, "tiny-xgb15.joblib"))
    return write_golden(os.path.join(out, "tiny.golden.json"), "tiny", bst, [
        ("iris", x),
        ("missing", with_missing(x[:50], rng)),
    ], "multi:softprob")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: train.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    warnings.simplefilter("ignore")  # save_raw("deprecated") warns by design
    rng = np.random.default_rng(SEED)
    n = train_iris(out, rng)
    n += train_extra(out, rng)
    n += train_tiny(out)
    n += train_objectives(out)
    print("xgboost %s: wrote models and %d golden rows to %s" % (xgb.__version__, n, out))


if __name__ == "__main__":
    main()
