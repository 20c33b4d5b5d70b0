"""PCG segmentation accuracy: cross-validated S1/S2 F1 and heart-rate agreement with the ECG.

Runs on all annotated PhysioNet/CinC 2016 training records (sets a, b, c, d, f):

1. leave-one-database-out CV (train on four sets, test on the fifth) and 5 random record
   folds (seed 0): the emission and duration parameters are re-fitted on each training
   split, S1 and S2 are scored on the held-out records (+-60 ms on the sound's centre);
2. heart rate from the PCG (shipped parameters) versus the ECG median-RR rate of records
   a0001-a0100 (R peaks from the project's QRS detector, ECG start-up step skipped),
   agreement within +-5 bpm, on all 99 records with an ECG and on those whose ECG reference
   is reliable (an independent ECG autocorrelation estimate agrees within 5 bpm; decided
   from the ECG alone, never from the PCG);
3. optionally (``--streaming``) the streaming segmenter's held-out F1 on the set-CV folds.

Usage::

    python benchmarks/pcg_accuracy.py --data ../shared/data --cache /tmp/pcg2016_frames.npz \\
        [--json results.json] [--streaming]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [title, f"{'fold':>6} {'recs':>5} {'S1 TP':>7} {'FP':>5} {'FN':>5} {'S1 F1':>7} "
             f"{'S2 TP':>7} {'FP':>5} {'FN':>5} {'S2 F1':>7}"]
    tot = {k: 0 for k in ("s1_tp", "s1_fp", "s1_fn", "s2_tp", "s2_fp", "s2_fn", "n_records")}
    for r in rows:
        lines.append(
            f"{r['fold']:>6} {r['n_records']:>5} {r['s1_tp']:>7} {r['s1_fp']:>5} {r['s1_fn']:>5} "
            f"{100 * r['s1_f1']:>6.2f}% {r['s2_tp']:>7} {r['s2_fp']:>5} {r['s2_fn']:>5} "
            f"{100 * r['s2_f1']:>6.2f}%"
        )
        for k in tot:
            tot[k] += r[k]
    f1 = lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn)  # noqa: E731
    lines.append(
        f"{'pooled':>6} {tot['n_records']:>5} {tot['s1_tp']:>7} {tot['s1_fp']:>5} "
        f"{tot['s1_fn']:>5} {100 * f1(tot['s1_tp'], tot['s1_fp'], tot['s1_fn']):>6.2f}% "
        f"{tot['s2_tp']:>7} {tot['s2_fp']:>5} {tot['s2_fn']:>5} "
        f"{100 * f1(tot['s2_tp'], tot['s2_fp'], tot['s2_fn']):>6.2f}%"
    )
    return "\n".join(lines)



def streaming_cv(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Leave-one-set-out F1 of the streaming :class:`PCGSegmenter` (fed 0.1 s chunks)."""
    from telediag.dsp.pcg import PCGSegmenter
    from telediag.evaluation.pcg_analyze import read_wav
    from telediag.evaluation.pcg_seg import SETS, f1, score_record
    from telediag.models.pcg_segmentation.train import fit_params

    recs = data["records"]
    out = []
    for s in SETS:
        test = [i for i, r in enumerate(recs) if r.set == s]
        if not test:
            continue
        params = fit_params(data, [i for i, r in enumerate(recs) if r.set != s])
        tot = dict.fromkeys(("s1_tp", "s1_fp", "s1_fn", "s2_tp", "s2_fp", "s2_fn"), 0)
        for i in test:
            x, fs = read_wav(recs[i].wav)
            seg = PCGSegmenter(fs, params)
            segs = []
            step = fs // 10
            for a in range(0, x.size, step):
                segs.extend(seg.process(x[a : a + step]))
            segs.extend(seg.flush())
            sc = score_record(segs, data["annotations"][i])
            for k in tot:
                tot[k] += sc[k]
        out.append({"fold": s, "n_records": len(test), **tot,
                    "s1_f1": f1(tot["s1_tp"], tot["s1_fp"], tot["s1_fn"]),
                    "s2_f1": f1(tot["s2_tp"], tot["s2_fp"], tot["s2_fn"])})
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    from telediag.evaluation.pcg_seg import cross_validate, data_root, load_feature_cache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None, help="feature cache .npz (created if missing)")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    ap.add_argument("--streaming", action="store_true", help="also score the streaming path")
    ap.add_argument("--skip-hr", action="store_true")
    args = ap.parse_args(argv)
    root = data_root(args.data)
    t0 = time.perf_counter()
    data = load_feature_cache(root, Path(args.cache) if args.cache else None, verbose=True)
    print(f"features of {len(data['records'])} records in {time.perf_counter() - t0:.1f} s")
    results: dict[str, Any] = {}
    for scheme in ("set", "random"):
        rows = cross_validate(data, scheme=scheme)
        for r in rows:
            r.pop("per_record", None)
        results[f"cv_{scheme}"] = rows
        title = ("Leave-one-database-out CV (train on the other sets)" if scheme == "set"
                 else "5-fold random record CV (seed 0)")
        print(_table(title + ", tolerance +-60 ms", rows), flush=True)
    if args.streaming:
        rows = streaming_cv(data)
        results["cv_set_streaming"] = rows
        print(_table("Streaming segmenter, leave-one-database-out CV", rows), flush=True)
    if not args.skip_hr:
        from telediag.evaluation.pcg_seg import heart_rate_agreement

        hr = heart_rate_agreement(root)
        results["heart_rate"] = hr
        print(f"HR agreement within +-{hr['tolerance_bpm']} bpm of ECG ({hr['n_records']} "
              f"records a0001-a0100): HSMM-selected rate {100 * hr['agree_hr']:.1f}%, "
              f"decoded S1-S1 {100 * hr['agree_segments']:.1f}%")
        print(f"  on the {hr['n_reliable_ecg']} records whose ECG reference is reliable "
              f"(two ECG estimators agree): HSMM-selected rate "
              f"{100 * hr['agree_hr_reliable_ecg']:.1f}%, decoded S1-S1 "
              f"{100 * hr['agree_segments_reliable_ecg']:.1f}%")
        for d in hr["disagreements"]:
            print("   ", d)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
