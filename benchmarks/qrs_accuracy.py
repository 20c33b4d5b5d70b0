"""QRS detection accuracy (EC57 beat-by-beat) of telediag and, optionally, peer detectors.

Usage::

    python benchmarks/qrs_accuracy.py [--data DIR] [--peers] [--records 101,106] [--lead 0]

Scores lead ``--lead`` of every MIT-BIH record in ``DIR/mitdb`` (whole records and skipping
the first 5 minutes, 150 ms window, every beat annotation counted; test beats in VF episodes
are not FP, as EC57 says - the figures with them counted are printed too) and the noise stress
records ``DIR/nstdb/118e*``.  Prints Markdown tables and samples/s of each detector (one
core, measured in this process, excluding file I/O).  Peers (``--peers``): sleepecg,
NeuroKit2 (``nk.ecg_peaks`` default), wfdb XQRS, py-ecg-detectors Pan-Tompkins; a peer that
is not installed is reported and skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from telediag.dsp.qrs import detect
from telediag.evaluation.ec57 import (
    BeatScore,
    format_table,
    gross,
    match_beats,
    reference_beats,
    vf_intervals,
)
from telediag.evaluation.wfdb_io import data_dir, list_records, read_annotation, read_record

Detector = Callable[[np.ndarray, float], np.ndarray]


def _ours(x: np.ndarray, fs: float) -> np.ndarray:
    return detect(x, fs)


def _peers() -> dict[str, Detector]:
    out: dict[str, Detector] = {}
    try:
        import sleepecg

        def _sleepecg(x: np.ndarray, fs: float) -> np.ndarray:
            return np.asarray(sleepecg.detect_heartbeats(x, fs), dtype=np.int64)

        out["sleepecg"] = _sleepecg
    except ImportError:
        print("peer sleepecg not installed (pip install sleepecg)", file=sys.stderr)
    try:
        import neurokit2 as nk

        def _nk(x: np.ndarray, fs: float) -> np.ndarray:
            _, info = nk.ecg_peaks(x, sampling_rate=int(round(fs)))
            return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)

        out["neurokit2"] = _nk
    except ImportError:
        print("peer neurokit2 not installed (pip install neurokit2)", file=sys.stderr)
    try:
        from wfdb import processing

        def _xqrs(x: np.ndarray, fs: float) -> np.ndarray:
            return np.asarray(processing.xqrs_detect(x, fs=fs, verbose=False), dtype=np.int64)

        out["xqrs"] = _xqrs
    except ImportError:
        print("peer wfdb.processing not available", file=sys.stderr)
    try:
        from ecgdetectors import Detectors

        def _pt(x: np.ndarray, fs: float) -> np.ndarray:
            return np.asarray(Detectors(fs).pan_tompkins_detector(x), dtype=np.int64)

        out["pan_tompkins"] = _pt
    except ImportError:
        print("peer py-ecg-detectors not installed (pip install py-ecg-detectors)", file=sys.stderr)
    return out


def _clean(x: np.ndarray) -> np.ndarray:
    """Peers do not accept NaN: hold the last finite value (the records have none)."""
    if np.all(np.isfinite(x)):
        return x
    y = x.copy()
    bad = ~np.isfinite(y)
    idx = np.where(~bad, np.arange(y.size), 0)
    np.maximum.accumulate(idx, out=idx)
    y = y[idx]
    y[~np.isfinite(y)] = 0.0
    return y


def evaluate(
    name: str,
    fn: Detector,
    recs: list[tuple[str, np.ndarray, float, np.ndarray, np.ndarray]],
) -> tuple[dict[str, BeatScore], dict[str, BeatScore], dict[str, BeatScore], float]:
    """Run ``fn`` on every record; return whole, skip-5-min, VF-counted scores and samples/s."""
    whole: dict[str, BeatScore] = {}
    skip: dict[str, BeatScore] = {}
    novf: dict[str, BeatScore] = {}
    n_samples = 0
    elapsed = 0.0
    for rec, x, fs, ref, vf in recs:
        xx = _clean(x) if name != "telediag" else x
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            beats = fn(xx, fs)
        elapsed += time.perf_counter() - t0
        n_samples += x.size
        whole[rec] = match_beats(ref, beats, fs, exclude=vf)
        skip[rec] = match_beats(ref, beats, fs, start_s=300.0, exclude=vf)
        novf[rec] = match_beats(ref, beats, fs)
    return whole, skip, novf, n_samples / elapsed if elapsed > 0 else float("nan")


def _load(directory: Path, names: list[str], lead: int) -> list[tuple[str, np.ndarray, float, np.ndarray, np.ndarray]]:
    out = []
    for r in names:
        rec = read_record(directory / r, channel=lead)
        ann = read_annotation(directory / r, "atr")
        out.append((r, rec.signal, rec.fs, reference_beats(ann), vf_intervals(ann, rec.signal.size)))
    return out


def _summary_row(name: str, s: BeatScore, sps: float, fs: float) -> str:
    return (
        f"| {name} | {s.tp} | {s.fn} | {s.fp} | {100 * s.se:.2f} | {100 * s.ppv:.2f} | "
        f"{100 * s.f1:.2f} | {s.mean_err_ms:.1f} | {s.sd_err_ms:.1f} | {sps:,.0f} | {sps / fs:,.0f}x |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="data dir holding mitdb/ and nstdb/")
    ap.add_argument("--peers", action="store_true", help="also score the peer detectors")
    ap.add_argument("--records", default=None, help="comma-separated mitdb records (default all)")
    ap.add_argument("--lead", type=int, default=0)
    ap.add_argument("--per-record", action="store_true", help="print per-record tables for peers too")
    args = ap.parse_args(argv)
    base = args.data if args.data is not None else data_dir()
    if base is None or not (Path(base) / "mitdb").is_dir():
        print("no data: pass --data DIR or set TELEDIAG_DATA (needs DIR/mitdb)", file=sys.stderr)
        return 2
    base = Path(base)
    mit = base / "mitdb"
    names = args.records.split(",") if args.records else list_records(mit)
    recs = _load(mit, names, args.lead)
    nst = base / "nstdb"
    nst_names = [r for r in ("118e24", "118e12", "118e00", "118e_6") if (nst / f"{r}.atr").exists()]
    nrecs = _load(nst, nst_names, args.lead) if nst_names else []
    fs = recs[0][2]

    detectors: dict[str, Detector] = {"telediag": _ours}
    _ours(recs[0][1][:5000], fs)  # warm the Numba kernels
    if args.peers:
        detectors.update(_peers())

    summary_whole = []
    summary_skip = []
    summary_novf = []
    summary_nst = []
    for name, fn in detectors.items():
        whole, skip, novf, sps = evaluate(name, fn, recs)
        if name == "telediag" or args.per_record:
            print(format_table(whole, title=f"{name}: mitdb lead {args.lead}, whole records"))
            print()
        summary_whole.append(_summary_row(name, gross(whole), sps, fs))
        summary_skip.append(_summary_row(name, gross(skip), sps, fs))
        summary_novf.append(_summary_row(name, gross(novf), sps, fs))
        if nrecs:
            nw, _, _, nsps = evaluate(name, fn, nrecs)
            cells = " | ".join(
                f"{100 * s.se:.2f} / {100 * s.ppv:.2f} / {100 * s.f1:.2f}" for s in nw.values()
            )
            summary_nst.append(f"| {name} | {cells} |")

    head = "| detector | TP | FN | FP | Se % | +P % | F1 % | err mean ms | err SD ms | samples/s | x real time |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    print(f"**Gross, mitdb ({len(recs)} records), lead {args.lead}, whole records, VF episodes excluded**\n")
    print("\n".join([head, sep, *summary_whole]))
    print(f"\n**Gross, mitdb ({len(recs)} records), skipping the first 5 min, VF episodes excluded**\n")
    print("\n".join([head, sep, *summary_skip]))
    print(f"\n**Gross, mitdb ({len(recs)} records), whole records, test beats in VF counted as FP**\n")
    print("\n".join([head, sep, *summary_novf]))
    if nrecs:
        print(f"\n**nstdb (whole records, lead {args.lead}): Se / +P / F1 %**\n")
        print("| detector | " + " | ".join(nst_names) + " |")
        print("|---|" + "---:|" * len(nst_names))
        print("\n".join(summary_nst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
