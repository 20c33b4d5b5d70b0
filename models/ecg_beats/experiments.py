"""Screening experiments of issue 15 (sessions 3 and 4) on the 2.1.0 training cache (not shipped).

Each variant changes the 2.1.0 inputs or training (same LightGBM settings otherwise: 150
rounds x 5 classes, 15 leaves, lr 0.1, 25 % of N rows, second-lead rows) and is scored
cross-database both ways (train DS1 -> test svdb, train svdb -> test DS1), by patient, gross
EC57 statistics; with ``--af`` also on the labels the engine publishes (after its rhythm
monitor turns S into N inside detected AF, :func:`.train.rhythm_labels`).  Selection is
meant to be *cross-database*: a variant is worth shipping only if it beats the baseline in
both directions by more than the seed-to-seed spread (variants ``seed1``, ``seed2``).

The prototype features below are NumPy/Numba sketches computed from the cached beats
(``morph`` channels 0-1 of the detection lead, ``det``); a variant that won would be moved
into :mod:`._feature_kernels` with streaming state and oracle tests.  None did (model card,
"Experiment log (session 3)").

* ``pwave``: an explicit P-wave measure per beat.  The previous beat's tail (its T wave) is
  cancelled from the P region (-0.24..-0.06 s) by subtracting the running template shifted by
  the beat's own RR (so a P wave hidden in the preceding T of a premature beat shows), the
  template's own P region likewise with the 20-RR median; then correlation with the
  template's P wave, best correlation over +-60 ms lags (PR change) and that lag, P
  peak-to-peak ratio, residual RMS, and the size of the cancelled overlap.  (de Chazal et al.
  2004 use P-wave presence and duration; here the patient's own P template is the reference.)
* ``ectopy``: label-free rhythm context that tells frequent ectopy from AF: over the last 32
  RRs, the fraction outside +-20 % of their median (ectopy load or AF), the median successive
  difference of the accepted RR pairs / median (sinus irregularity once ectopic RRs are
  removed: low in frequent ectopy, high in AF), and the fraction of short-then-long pairs
  (premature beat + compensatory pause).
* ``gated``: a baseline RR that only follows RRs within +-20 % of itself (EMA), so it is held
  through an abruptly entered run (paroxysmal SVT) and follows gradual sinus changes; RR /
  held baseline and the beats since an RR was last accepted (reset after ``reset`` misses).
* ``prior``: label-free per-patient prior adaptation of the held-out probabilities (Saerens
  et al. 2002, one EM step, causal): p(y|x) * (pi_patient / pi_train)^a with pi_patient the mean
  posterior of the patient's last 300 beats.
* ``wp*``: class weights (1/frequency)^p; ``l31``: 31 leaves x 100 rounds; ``noirr``: the AF
  irregularity columns (and their d_ copies) removed (the engine's AF rule then decides AF).

Session 4:

* ``rp*``: record-balanced weights: within each class, a row of a record with ``n`` rows of
  that class weighs ``n^-p`` (class totals unchanged), so a few records (DS1 209: 383 of DS1's
  884 SVEB) do not define a class for everyone.
* ``two``: two-stage trees: V against the rest on every column, then S against N on the RR,
  RR-context and irregularity columns, the P-region template columns and the two
  correlations only (no QRS-shape columns, which carry lead and sampling-rate differences).
* ``normonly``: the raw columns zeroed, only their per-patient ``d_`` copies left.
* ``rs128``: DS1 also resampled to 128 Hz (``resample_poly``, detection and features redone,
  reference samples rescaled) as extra training records (both leads) in DS1 -> svdb.
* ``afout``: the N and S beats inside reference AF/flutter of DS1 201 and 203 left out of
  *training* (2.2.0's data; scored on every beat). Withdrawn in session 3 because the AF
  detector then did not start (S-label gate); that gate went with ff7eef7.
* ``rule``: a physiological override after the trees (post-hoc, label-free): a beat called N
  or V becomes S when it is premature against its local rhythm (``c_pre`` < 0.85), followed by
  at least its local median RR (``c_post`` > 1), has the template's QRS (``t_corr_qrs`` > 0.95),
  and the local rhythm is regular apart from it (``c_mad`` < 0.12: not AF).

Usage (about 2-4 minutes per variant on one busy core)::

    OMP_NUM_THREADS=1 nice -n 10 python -m telediag.models.ecg_beats.experiments \\
        --cache /tmp/ecg_beats_v21.npz --af base seed1 seed2 wp0.25 wp1 pwave ectopy gated prior
    # session 4
    ... --cache /tmp/ecg_beats_v21.npz --af base rp0.5 rp1 rp1+seed1 rp1+seed2 two normonly rs128 rule

Saerens M, Latinne P, Decaestecker C. Adjusting the outputs of a classifier to new a priori
probabilities: a simple procedure. Neural Computation 14(1):21-41, 2002.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from telediag.models.ecg_beats import train as T
from telediag.models.ecg_beats.features import ABSOLUTE_RATE, POST_S, PRE_S, RR_FEATURES

TG = np.linspace(-PRE_S, POST_S, 96)
DT = float(TG[1] - TG[0])
P_IDX = np.flatnonzero((TG >= -0.24) & (TG <= -0.06))
IRR = ["local_cv", "irr_rmssd", "irr_pnn50", "irr_sd1sd2", "irr_mad", "c_mad"]


# --------------------------------------------------------------------------------------
# Prototype features
# --------------------------------------------------------------------------------------
def _shifted(tp: NDArray[np.float64], shift_s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows of ``tp`` read at ``TG + shift`` (per row), tapered to 0 from 0.40 to 0.45 s
    (the template ends there)."""
    n = tp.shape[0]
    q = TG[None, :] + shift_s[:, None]
    pos = (q + PRE_S) / DT
    j = np.clip(np.floor(pos).astype(np.int64), 0, tp.shape[1] - 2)
    f = np.clip(pos - j, 0.0, 1.0)
    rows = np.arange(n)[:, None]
    v = tp[rows, j] * (1.0 - f) + tp[rows, j + 1] * f
    return np.asarray(v * np.clip((POST_S - q) / 0.05, 0.0, 1.0))


def _corr(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return np.asarray((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12))


def pwave_features(morph: NDArray[Any], det: NDArray[np.int64], fs: float) -> NDArray[np.float32]:
    """Six P-wave columns per beat (see the module docstring, ``pwave``)."""
    x = morph[:, 0].astype(np.float64)
    tp = x - morph[:, 1].astype(np.float64)
    rr = np.diff(det) / fs
    pre = np.concatenate([[rr[0] if rr.size else 1.0], rr])
    med = np.array([np.median(pre[max(0, i - 19): i + 1]) for i in range(pre.size)])
    xc = x - _shifted(tp, pre)
    tc = tp - _shifted(tp, med)
    xp, tpp = xc[:, P_IDX], tc[:, P_IDX]
    best = np.full(x.shape[0], -2.0)
    lag = np.zeros(x.shape[0])
    for k in range(-8, 9):
        idx = P_IDX + k
        ok = (idx >= 0) & (idx < x.shape[1])
        c = _corr(xc[:, P_IDX[ok]], tc[:, idx[ok]])
        better = c > best
        best[better] = c[better]
        lag[better] = k * DT
    xz = xp - xp.mean(1, keepdims=True)
    tz = tpp - tpp.mean(1, keepdims=True)
    amp = (np.ptp(xp, 1)) / (np.ptp(tpp, 1) + 1e-3)
    res = np.sqrt(((xz - tz) ** 2).mean(1)) / (np.sqrt((tz * tz).mean(1)) + 1e-3)
    overlap = np.abs(_shifted(tp, pre)[:, P_IDX]).mean(1)
    out = np.stack([_corr(xp, tpp), best, lag, np.clip(amp, 0, 5), np.clip(res, 0, 20), overlap], 1)
    return np.nan_to_num(out).astype(np.float32)


@njit(cache=True)
def ectopy_features(det: NDArray[np.int64], fs: float, w_len: int = 32, tol: float = 0.2) -> NDArray[np.float32]:
    """Three ectopy-versus-AF columns per beat (module docstring, ``ectopy``)."""
    n = det.size
    out = np.zeros((n, 3), np.float32)
    rr = np.empty(max(n - 1, 1))
    for i in range(1, n):
        rr[i - 1] = (det[i] - det[i - 1]) / fs
    for i in range(n):
        hi = max(i, 1)
        w = rr[max(0, hi - w_len): hi].copy()
        m = np.median(w)
        diffs = np.empty(w.size)
        n_acc = 0
        n_pair = 0
        n_pp = 0
        for k in range(w.size):
            acc = abs(w[k] - m) < tol * m
            n_acc += acc
            if k > 0:
                if acc and abs(w[k - 1] - m) < tol * m:
                    diffs[n_pair] = abs(w[k] - w[k - 1])
                    n_pair += 1
                if w[k - 1] < (1 - tol) * m and w[k] > (1 + 0.5 * tol) * m:
                    n_pp += 1
        out[i, 0] = 1.0 - n_acc / w.size
        out[i, 1] = np.median(diffs[:n_pair]) / m if n_pair > 0 else 0.0
        out[i, 2] = n_pp / max(w.size - 1, 1)
    return out


@njit(cache=True)
def gated_features(
    det: NDArray[np.int64], fs: float, band: float = 0.2, alpha: float = 0.05, reset: int = 150
) -> NDArray[np.float32]:
    """Two held-baseline columns per beat (module docstring, ``gated``)."""
    n = det.size
    out = np.zeros((n, 2), np.float32)
    base = -1.0
    miss = 0
    for i in range(n):
        r = (det[i] - det[i - 1]) / fs if i > 0 else ((det[1] - det[0]) / fs if n > 1 else 1.0)
        if base < 0:
            base = r
        out[i, 0] = min(r / base, 5.0)
        out[i, 1] = min(miss / 50.0, 5.0)
        if abs(r - base) < band * base:
            base += alpha * (r - base)
            miss = 0
        else:
            miss += 1
            if miss >= reset:
                base = r
                miss = 0
    return out


def prior_adapt(p: NDArray[np.float64], pi_train: NDArray[np.float64], k: int = 300,
                a: float = 0.5) -> NDArray[np.float64]:
    """Causal per-patient prior adaptation of one record's probabilities (``prior``)."""
    c = np.cumsum(p, 0)
    out = np.empty_like(p)
    for i in range(p.shape[0]):
        lo = max(0, i - k)
        pi = np.maximum((c[i] - (c[lo - 1] if lo > 0 else 0.0)) / (i - lo + 1), 1e-3)
        q = p[i] * (pi / pi_train) ** a
        out[i] = q / q.sum()
    return out


RULE = {"c_pre": 0.85, "c_post": 1.0, "t_corr_qrs": 0.95, "c_mad": 0.12}


def rule_override(rr: NDArray[Any], lab: NDArray[np.int64]) -> NDArray[np.int64]:
    """``lab`` with the N/V beats that meet :data:`RULE` turned into S (``rule``)."""
    c = {n: RR_FEATURES.index(n) for n in RULE}
    hit = ((rr[:, c["c_pre"]] < RULE["c_pre"]) & (rr[:, c["c_post"]] > RULE["c_post"])
           & (rr[:, c["t_corr_qrs"]] > RULE["t_corr_qrs"]) & (rr[:, c["c_mad"]] < RULE["c_mad"])
           & ((lab == 0) | (lab == 2)))
    out = lab.copy()
    out[hit] = 1
    return out


def resampled_records(data: Path, recs: list[str], fs_new: float) -> dict[str, dict[str, Any]]:
    """``recs`` resampled to ``fs_new`` then detected and featured as :func:`.train.load_record`
    (``rs128``); keys ``rs<fs>/<record>``, the absolute-rate columns zeroed as in training."""
    from fractions import Fraction

    import wfdb
    from scipy.signal import resample_poly

    from telediag.dsp.qrs import detect
    from telediag.models.ecg_beats import _feature_kernels as _fk
    from telediag.models.ecg_beats.features import N_RAW, PatientNorm, aami_label, beat_features

    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        rec = wfdb.rdrecord(str(data / r))
        ann = wfdb.rdann(str(data / r), "atr")
        names = list(rec.sig_name)
        lead = names.index("MLII") if "MLII" in names else 0
        lead2 = next(i for i in range(len(names)) if i != lead)
        fr = Fraction(int(fs_new), int(rec.fs))
        sig = resample_poly(np.nan_to_num(np.asarray(rec.p_signal, np.float64)), fr.numerator,
                            fr.denominator, axis=0)
        det = detect(sig[:, lead], fs_new)
        feats = beat_features(np.stack([sig[:, lead], sig[:, lead2]], axis=1), fs_new, det)
        rr2 = feats.rr.copy()
        _fk.template_rows(np.ascontiguousarray(feats.morph[:, 2:4]), 20.0, rr2[:, T._T0:N_RAW])
        PatientNorm().fill(rr2)
        lab = np.array([aami_label(s_) for s_ in ann.symbol], np.int64)
        keep = lab >= 0
        ref = np.round(np.asarray(ann.sample, np.float64)[keep] * fs_new / rec.fs).astype(np.int64)
        m = T.match(det, ref, int(round(T.MATCH_S * fs_new)))
        y = np.where(m >= 0, lab[keep][np.maximum(m, 0)], -1)
        key = f"rs{int(fs_new)}/{r.split('/')[1]}"
        out[key] = {"rr": feats.rr, "rr2": rr2, "y": y, "fs": np.array(fs_new), "det": det}
    T.exclude_columns(out, ",".join(ABSOLUTE_RATE))
    return out


def af_train_labels(d: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``afout``: records whose training labels (``y``; scoring keeps ``y_all``) have the N and
    S beats inside the reference AF/flutter episodes of their ``.atr`` removed (-1)."""
    import wfdb

    out = {}
    for r, v in d.items():
        y = v["y"]
        if "src" in v and r.startswith("mitdb"):
            ann = wfdb.rdann(str(v["src"]), "atr")
            spans, cur = [], None
            for s_, aux in zip(ann.sample, ann.aux_note, strict=True):
                if aux.startswith("("):
                    if cur is not None:
                        spans.append((cur, int(s_)))
                        cur = None
                    if aux.startswith(("(AFIB", "(AFL")):
                        cur = int(s_)
            if cur is not None:
                spans.append((cur, np.iinfo(np.int64).max))
            inside = np.zeros(v["det"].size, bool)
            for a_, b_ in spans:
                inside |= (v["det"] >= a_) & (v["det"] < b_)
            y = np.where(inside & ((y == 0) | (y == 1)), -1, y)
        out[r] = {**v, "y": y, "y_all": v["y"]}
    return out


def fit(x: NDArray[np.float32], y: NDArray[np.int64], g: NDArray[np.int64], a: argparse.Namespace) -> Any:
    """:func:`.train.fit_gbt`, or with record-balanced weights (``rp``), or two-stage (``two``)."""
    import lightgbm as lgb

    params = {"num_leaves": a.leaves, "learning_rate": a.lr, "min_data_in_leaf": 100,
              "feature_fraction": 0.7, "bagging_fraction": 0.7, "bagging_freq": 1, "lambda_l2": 1.0,
              "num_threads": 1, "max_bin": 63, "verbose": -1, "seed": a.seed, "deterministic": True,
              "force_row_wise": True}
    if getattr(a, "two", False):
        keep_t = {"t_corr", "t_corr_qrs", "t_corr_p", "t_res_p", "t_p_ptp", "t_p_ratio"}
        cols = [i for i, n in enumerate(RR_FEATURES) if not n.removeprefix("d_").startswith("t_")
                or n.removeprefix("d_") in keep_t]
        mv = lgb.train({**params, "objective": "binary"}, lgb.Dataset(x, (y == 2).astype(float)), a.rounds)
        sn = (y == 0) | (y == 1)
        ms = lgb.train({**params, "objective": "binary"},
                       lgb.Dataset(x[sn][:, cols], (y[sn] == 1).astype(float)), a.rounds)

        class TwoStage:
            def predict(self, xx: NDArray[np.float32]) -> NDArray[np.float64]:
                pv = np.asarray(mv.predict(xx), np.float64)
                ps = np.asarray(ms.predict(xx[:, cols]), np.float64)
                p = np.zeros((xx.shape[0], T.N_CLASSES))
                p[:, 0], p[:, 1], p[:, 2] = (1 - pv) * (1 - ps), (1 - pv) * ps, pv
                return p

        return TwoStage()
    rp = getattr(a, "rec_power", 0.0)
    if not rp:
        return T.fit_gbt(x, y, a)
    w = np.ones(y.size)
    for cl in range(T.N_CLASSES):
        m = y == cl
        if m.any():
            wc = np.bincount(g[m])[g[m]].astype(np.float64) ** -rp
            w[m] = wc * m.sum() / wc.sum()
    w *= T.class_weights(y, a.weight_power)
    return lgb.train({**params, "objective": "multiclass", "num_class": T.N_CLASSES},
                     lgb.Dataset(x, y, weight=w), a.rounds)


# --------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------
def _append(d: dict[str, dict[str, Any]], extra: dict[str, NDArray[np.float32]]) -> dict[str, dict[str, Any]]:
    """Records with ``extra[r]`` appended to both ``rr`` and ``rr2`` (the prototypes are
    computed on the detection lead only)."""
    return {r: {**v, "rr": np.concatenate([v["rr"], extra[r]], 1),
                "rr2": np.concatenate([v["rr2"], extra[r]], 1)} for r, v in d.items()}


def _drop(d: dict[str, dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    cols = [RR_FEATURES.index(n) for n in names]
    out = {}
    for r, v in d.items():
        a, b = v["rr"].copy(), v["rr2"].copy()
        a[:, cols] = 0.0
        b[:, cols] = 0.0
        out[r] = {**v, "rr": a, "rr2": b}
    return out


def variant(name: str, d: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The data and training overrides of a named variant."""
    opts: dict[str, Any] = {}
    for part in name.split("+"):
        if part == "base" or part == "prior":
            pass
        elif part.startswith("seed"):
            opts["seed"] = int(part[4:])
        elif part.startswith("wp"):
            opts["weight_power"] = float(part[2:])
        elif part.startswith("rp"):
            opts["rec_power"] = float(part[2:])
        elif part == "two":
            opts["two"] = True
        elif part == "rule":
            opts["rule"] = True
        elif part == "afout":
            d = af_train_labels(d)
        elif part == "rs128":
            opts["extra_ds1"] = 128.0
        elif part == "normonly":
            d = _drop(d, [n for n in RR_FEATURES[:len(RR_FEATURES)] if "d_" + n in RR_FEATURES])
        elif part == "l31":
            opts.update(leaves=31, rounds=100)
        elif part == "pwave":
            d = _append(d, {r: pwave_features(v["morph"], v["det"], float(v["fs"])) for r, v in d.items()})
        elif part == "ectopy":
            d = _append(d, {r: ectopy_features(v["det"], float(v["fs"])) for r, v in d.items()})
        elif part == "gated":
            d = _append(d, {r: gated_features(v["det"], float(v["fs"])) for r, v in d.items()})
        elif part == "noirr":
            d = _drop(d, IRR + ["d_" + c for c in IRR])
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    return d, opts


def cross(d: dict[str, dict[str, Any]], a: argparse.Namespace, label: str, prior: bool, af: bool,
          data: Path | None = None) -> None:
    """Both cross-database directions of one variant; one line per direction (and per AF)."""
    recs = T.record_ids()
    ds1 = [r for r in recs if r.startswith("mitdb")]
    sv = [r for r in recs if r.startswith("svdb")]
    extra: dict[str, dict[str, Any]] = {}
    if getattr(a, "extra_ds1", 0.0) and data is not None:
        extra = resampled_records(data, ds1, a.extra_ds1)
    for name, train, test in (("DS1->svdb", ds1, sv), ("svdb->DS1", sv, ds1)):
        t0 = time.time()
        dd, tr = d, train
        if extra and name == "DS1->svdb":
            dd, tr = {**d, **extra}, train + sorted(extra)
        x, y, g = T.stack(dd, tr, a.lead2, a.n_keep, a.seed)
        model = fit(x, y, g, a)
        cnt = np.bincount(y, minlength=T.N_CLASSES).astype(np.float64)
        pi_train = np.maximum(T.merge_f((cnt / cnt.sum())[None])[0], 1e-3)
        cm = np.zeros((T.N_CLASSES, T.N_CLASSES), np.int64)
        cm_af = cm.copy()
        for r in test:
            y_true = d[r].get("y_all", d[r]["y"])  # afout: scored on every beat
            keep = y_true >= 0
            p = T.predict(model, d[r]["rr"])
            if prior:
                p = prior_adapt(p, pi_train)
            lab = p.argmax(1)
            if getattr(a, "rule", False):
                lab = rule_override(d[r]["rr"], lab)
            cm += T.confusion(y_true[keep], lab[keep])
            if af:
                src = d[r].get("src")  # the P-wave input, as the engine (train.rhythm_labels)
                lab = T.rhythm_labels(d[r]["det"], float(d[r]["fs"]), lab,
                                      T.detection_lead(str(src)) if src is not None else None)
                cm_af += T.confusion(y_true[keep], lab[keep])
        print(T.format_row(f"{label} {name}", T.metrics(cm)), f"({time.time() - t0:.0f} s)", flush=True)
        if af:
            print(T.format_row(f"{label}+AF {name}", T.metrics(cm_af)), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help="base, seedN, wpP, l31, pwave, ectopy, gated, "
                    "noirr, prior, rpP, two, normonly, rs128, rule; combine with '+' (e.g. pwave+wp0.25)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--cache", type=Path, required=True, help="train.py's feature cache")
    ap.add_argument("--af", action="store_true", help="also score the engine's labels (AF rule)")
    a = ap.parse_args(argv)
    d = T.load_all(a.data, a.cache)
    T.exclude_columns(d, ",".join(ABSOLUTE_RATE))
    for name in a.variants:
        dv, opts = variant(name, d)
        ns = argparse.Namespace(rounds=150, leaves=15, lr=0.1, weight_power=0.0, lead2=True,
                                n_keep=0.25, seed=0)
        for k, v in opts.items():
            setattr(ns, k, v)
        print(f"== {name}", file=sys.stderr, flush=True)
        cross(dv, ns, name, "prior" in name.split("+"), a.af, a.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
