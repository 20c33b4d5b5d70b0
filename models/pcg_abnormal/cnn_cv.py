"""Experiment: Potes-style per-cycle CNN, alone and ensembled with the feature model.

Cross-validated like ``benchmarks/pcg_classifier_cv.py`` (leave one training set out, and
stratified 5-fold by recording, seed 0): the CNN sees the cycles of the training recordings
only; a recording's probability is the mean of its cycles' probabilities (Potes et al. 2016);
recordings without a complete cycle get 0.5.  The ensemble averages the CNN probability with
the out-of-fold probability of a feature model (``--feature-model``: ``final``, the shipped
logistic regression, or ``previous_mlp``, the MLP ensemble shipped before issue 5).  Needs the
``train`` extra (torch).  Not shipped: see the model card for the figures.

Usage::

    OMP_NUM_THREADS=1 nice -n 15 python -m telediag.models.pcg_abnormal.cnn_cv \\
        --data ../shared/data --cache /tmp/pcg_abnormal_cycles.npz \\
        --feature-cache /tmp/pcg_abnormal_features.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.models.pcg_abnormal.cycles import CYCLE_FRAMES, cycle_inputs, normalise_cycles
from telediag.models.pcg_abnormal.train import (
    FINAL,
    PREVIOUS_MLP,
    SETS,
    FitConfig,
    _data_dir,
    _torch,
    cross_validate,
    list_records,
    load_features,
    macc,
    read_wav,
    stratified_folds,
)

__all__ = ["FEATURE_MODELS", "fit_cnn", "load_cycles", "main", "predict_cnn"]

FEATURE_MODELS: dict[str, FitConfig] = {
    "final": FINAL,
    "previous_mlp": PREVIOUS_MLP,
}


def load_cycles(data: Path, cache: Path | None) -> dict[str, Any]:
    """Per-cycle inputs of every training recording: ``C`` (n_cycles, 4, 125) float32,
    ``rec`` (n_cycles,) recording index, ``y``, ``sets`` per recording."""
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in ("C", "rec", "y", "sets")}
    recs = list_records(data)
    cs, idx = [], []
    t0 = time.time()
    for i, r in enumerate(recs):
        x, fs = read_wav(r[3])
        c = cycle_inputs(x, fs, norm="none")
        cs.append(c)
        idx.append(np.full(c.shape[0], i, dtype=np.int64))
        if (i + 1) % 200 == 0:
            print(f"  cycles {i + 1}/{len(recs)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    out = {"C": np.concatenate(cs), "rec": np.concatenate(idx),
           "y": np.array([r[2] for r in recs], dtype=np.int64),
           "sets": np.array([r[0] for r in recs])}
    if cache is not None:
        np.savez_compressed(cache, C=out["C"], rec=out["rec"], y=out["y"], sets=out["sets"])
    return out


def _net(torch: Any) -> Any:
    nn = torch.nn
    # two conv layers (8 and 4 filters) and a 20-unit dense layer, after Potes et al. 2016
    return nn.Sequential(
        nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 4, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(4 * (CYCLE_FRAMES // 4), 20), nn.ReLU(),
        nn.Dropout(0.25), nn.Linear(20, 1),
    )


def fit_cnn(C: NDArray[np.float32], rec: NDArray[np.int64], y: NDArray[np.int64],
            sets: NDArray[Any], train_recs: NDArray[np.bool_], seed: int = 0,
            epochs: int = 12, per_epoch: int = 8000) -> Any:
    """Train one CNN on the cycles of ``train_recs``; sampling balances (set, class)
    groups of recordings and weighs the cycles of a recording equally."""
    torch = _torch()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sel = np.flatnonzero(train_recs[rec])
    r = rec[sel]
    ncyc = np.bincount(r, minlength=y.size).astype(np.float64)
    grp = np.char.add(sets.astype(str), y.astype(str))
    gsize = {g: int(np.sum(train_recs & (grp == g))) for g in np.unique(grp[train_recs])}
    p = np.array([1.0 / (ncyc[i] * gsize[grp[i]]) for i in r])
    p /= p.sum()
    net = _net(torch)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    Ct = torch.from_numpy(np.ascontiguousarray(C))
    yt = torch.from_numpy(y.astype(np.float32))
    for _ in range(epochs):
        net.train()
        draw = sel[rng.choice(sel.size, size=per_epoch, p=p)]
        for b in range(0, per_epoch, 64):
            ib = torch.from_numpy(draw[b : b + 64])
            xb = Ct[ib]
            yb = yt[torch.from_numpy(rec[draw[b : b + 64]])]
            opt.zero_grad()
            loss = bce(net(xb)[:, 0], yb)
            loss.backward()
            opt.step()
    net.eval()
    return net


def predict_cnn(net: Any, C: NDArray[np.float32], rec: NDArray[np.int64],
                recs: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Recording probabilities (mean over cycles; 0.5 without cycles) for ``recs``."""
    torch = _torch()
    out = np.full(recs.size, 0.5)
    sel = np.flatnonzero(recs[rec])
    with torch.no_grad():
        pc = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(C[sel])))[:, 0]).numpy()
    s = np.bincount(rec[sel], weights=pc, minlength=recs.size)
    n = np.bincount(rec[sel], minlength=recs.size)
    has = n > 0
    out[has] = s[has] / n[has]
    return out[recs]


def _rows(y: NDArray[np.int64], p: NDArray[np.float64], folds: list[tuple[str, Any]]
          ) -> list[dict[str, Any]]:
    rows = []
    for name, te in folds:
        se, sp, ma = macc(y[te], p[te], 0.5)
        rows.append({"fold": name, "n": int(te.sum()), "n_abnormal": int(y[te].sum()),
                     "se": se, "sp": sp, "macc": ma})
    se, sp, ma = macc(y, p, 0.5)
    rows.append({"fold": "pooled", "n": int(y.size), "n_abnormal": int(y.sum()), "se": se,
                 "sp": sp, "macc": ma})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None, help="cycle-input cache (.npz)")
    ap.add_argument("--feature-cache", default=None)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--norm", default="cycle", choices=("cycle", "recording", "recording_log"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="first CNN seed")
    ap.add_argument("--feature-model", default="previous_mlp", choices=tuple(FEATURE_MODELS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    data = _data_dir(a.data)
    cy = load_cycles(data, Path(a.cache) if a.cache else None)
    rec, y, sets = cy["rec"], cy["y"], cy["sets"]
    C = np.concatenate([normalise_cycles(cy["C"][rec == i], a.norm) for i in range(y.size)])
    print(f"{y.size} recordings, {C.shape[0]} cycles", flush=True)
    fe = load_features(data, Path(a.feature_cache) if a.feature_cache else None)
    assert np.array_equal(fe["y"], y)
    res: dict[str, Any] = {}
    for scheme in ("set", "random"):
        if scheme == "set":
            folds = [(s, sets == s) for s in SETS]
        else:
            fi = stratified_folds(y, 5, 0)
            folds = [(str(i + 1), fi == i) for i in range(5)]
        t0 = time.time()
        p_cnn = np.zeros(y.size)
        for name, te in folds:
            for sd in range(a.seeds):
                net = fit_cnn(C, rec, y, sets, ~te, seed=a.seed + sd, epochs=a.epochs)
                p_cnn[te] += predict_cnn(net, C, rec, te) / a.seeds
            print(f"  {scheme} fold {name} done ({time.time() - t0:.0f} s)", flush=True)
        _, p_feat, thr = cross_validate(fe["X"], y, sets,
                                         FEATURE_MODELS[a.feature_model], scheme)
        p_ens = 0.5 * (p_cnn + p_feat)
        for label, p in (("cnn", p_cnn), ("features", p_feat), ("ensemble", p_ens)):
            rows = _rows(y, p, folds)
            res[f"{scheme}/{label}"] = rows
            pr = rows[-1]
            per = " ".join(f"{r['fold']}:{r['macc']:.3f}" for r in rows[:-1])
            print(f"{scheme:>6} {label:<9} pooled Se {pr['se']:.3f} Sp {pr['sp']:.3f} "
                  f"MAcc {pr['macc']:.3f} | {per}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
