"""PCG abnormality classifier: cross-validated Se / Sp / MAcc on PhysioNet/CinC 2016 (a-f).

Two schemes, every threshold chosen inside the training folds (never on the test fold):

1. leave-one-database-out (train on four of a, b, c, d, f - and CirCor unless the variant
   trains on PhysioNet only, like the shipped one - test on the held-out database; CirCor,
   murmur present = abnormal, is held out too) - much harder than the challenge's own split,
   the databases differ in device, site and prevalence;
2. stratified 5-fold by recording (seed 0), PhysioNet a-f.

Per-fold and pooled Se, Sp, MAcc = (Se + Sp) / 2 (Liu et al. 2016).  ``--variants`` also runs
the alternatives that were tried (logistic regression, feature subsets, weighting, fixed
threshold) and prints one summary line each.  Needs the ``train`` extra (torch).

Usage::

    nice -n 5 python benchmarks/pcg_classifier_cv.py --data ../shared/data \\
        --cache /tmp/pcg_abnormal_features.npz [--variants] [--json cv.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from telediag.models.pcg_abnormal.train import (
    DEVICE_SPECTRA,
    FINAL,
    PREVIOUS_MLP,
    FitConfig,
    _data_dir,
    cross_validate,
    format_table,
    load_features,
)

_INVARIANT = DEVICE_SPECTRA
"""Feature groups that depend on the absolute spectrum (device); the rest are ratios/timing."""

_M = PREVIOUS_MLP
VARIANTS: dict[str, FitConfig] = {
    "final (shipped)": FINAL,
    "previous mlp ensemble": _M,
    "mlp, set-balanced weights": replace(_M, weighting="set"),
    "mlp h16 wd0.1 150 ep (3)": replace(_M, n_models=3, hidden=16, weight_decay=0.1,
                                        epochs=150),
    "mlp, device-invariant feats": replace(_M, exclude=_INVARIANT),
    "lr l2=0.1": replace(_M, kind="lr", l2=0.1),
    "lr l2=1": replace(_M, kind="lr", l2=1.0),
    "lr l2=0.1, inner threshold": replace(_M, kind="lr", l2=0.1, threshold="inner"),
    "lr l2=1, set weights": replace(_M, kind="lr", l2=1.0, weighting="set"),
    "lr l2=0.1, invariant feats": replace(_M, kind="lr", l2=0.1, exclude=_INVARIANT),
    "lr l2=1, invariant feats": replace(_M, kind="lr", l2=1.0, exclude=_INVARIANT),
    "lr, timing+amplitude only": replace(_M, kind="lr", l2=1.0,
                                         exclude=(*_INVARIANT, "murmur_")),
}


def _summary(name: str, res: dict[str, list[dict[str, Any]]]) -> str:
    s, r = res["set"][-1], res["random"][-1]
    mean_set = float(np.mean([x["macc"] for x in res["set"][:-1]]))
    return (f"{name:<30} set-CV pooled Se {s['se']:.3f} Sp {s['sp']:.3f} MAcc {s['macc']:.3f} "
            f"(fold mean {mean_set:.3f}) | 5-fold pooled Se {r['se']:.3f} Sp {r['sp']:.3f} "
            f"MAcc {r['macc']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--variants", action="store_true", help="also run the alternatives tried")
    ap.add_argument("--only", default=None, help="run only the named variant")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    d = load_features(_data_dir(a.data), Path(a.cache) if a.cache else None)
    X, y, sets = d["X"], d["y"], d["sets"]
    print(f"{y.size} recordings, {int(y.sum())} abnormal, {X.shape[1]} features")
    todo = dict(VARIANTS) if a.variants else {"final (shipped)": FINAL}
    if a.only:
        todo = {a.only: VARIANTS[a.only]}
    out: dict[str, Any] = {}
    lines = []
    for name, cfg in todo.items():
        t0 = time.time()
        res = {}
        for scheme in ("set", "random"):
            if scheme == "random":  # the training population: PhysioNet a-f
                af = sets != "circor"
                rows, _, _ = cross_validate(X[af], y[af], sets[af], cfg, scheme)
            else:  # leave one database out: a-f and CirCor (murmur labels)
                rows, _, _ = cross_validate(X, y, sets, cfg, scheme)
            res[scheme] = rows
            if name == "final (shipped)" or len(todo) == 1:
                title = (f"[{name}] leave-one-training-set-out" if scheme == "set"
                         else f"[{name}] stratified 5-fold by recording (seed 0)")
                print(format_table(title, rows))
        lines.append(_summary(name, res))
        print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
        out[name] = {"config": asdict(cfg), **res}
    if len(lines) > 1:
        print("\nsummary")
        print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
