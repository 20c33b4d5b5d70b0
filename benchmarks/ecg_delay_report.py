"""Beat decision delay of the ``ecg_analysis`` stage on real records (MIT-BIH).

For every record the default ``ecg`` pipeline runs offline (the engine's own stages,
:func:`telediag.evaluation.ecg_analyze.analyze_recording`) and the delays of the published
beats are pooled, skipping the detector's learning period (first ``--skip-s`` seconds):
``confirm`` = detector confirmation - R peak, ``end_to_end`` = decision (incl. the quality
hold) - R peak, in seconds of signal time.

Run: ``python benchmarks/ecg_delay_report.py [--hold verdict|none] [--hop-s 1.0] 119 208 ...``

With ``$TELEDIAG_BENCH_LATENCY_DIR`` set (``telediag bench`` does), the pooled delays are also
left there (:func:`telediag.evaluation.bench_cli.record_latency`) for the report's latency CDFs.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from telediag.engine.config import load_config
from telediag.evaluation.bench_cli import record_latency
from telediag.evaluation.ecg_analyze import analyze_recording
from telediag.evaluation.wfdb_io import data_dir
from telediag.sources.readers import read_wfdb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="*", default=["119", "208", "203", "207"])
    ap.add_argument("--hold", default="verdict", choices=["verdict", "none"])
    ap.add_argument("--hop-s", type=float, default=1.0)
    ap.add_argument("--skip-s", type=float, default=3.0)
    a = ap.parse_args()
    cfg = load_config()
    ecg = tuple(
        dataclasses.replace(sc, params=dataclasses.replace(sc.params, quality_hold=a.hold, quality_hop_s=a.hop_s))
        if sc.stage_type.type_name == "ecg_analysis" else sc
        for sc in cfg.pipelines["ecg"]
    )
    cfg = dataclasses.replace(cfg, pipelines={**cfg.pipelines, "ecg": ecg})
    mit = data_dir("mitdb")
    if mit is None:
        raise SystemExit("MIT-BIH data not found (set TELEDIAG_DATA)")
    conf: list[float] = []
    e2e: list[float] = []
    for r in a.records:
        res = analyze_recording(read_wfdb(mit / r), config=cfg)
        beats = [b for b in res["beats"] if b["time_s"] >= a.skip_s]
        conf += [b["confirm_delay_s"] for b in beats]
        e2e += [b["delay_s"] for b in beats]
        print(f"{r}: {len(res['beats'])} beats, {len(res['suppressed'])} suppressed")
    for name, v in (("confirm", conf), ("end_to_end", e2e)):
        x = np.asarray(v)
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        print(f"{name:>10} (hold={a.hold}, hop={a.hop_s:g} s): p50 {p50:.3f} p90 {p90:.3f} "
              f"p99 {p99:.3f} max {x.max():.3f} s (n={x.size})")
        record_latency(f"QRS decision delay: {name}", 1000.0 * x, kind="signal-time",
                       source="ecg_delay_report.py",
                       note=f"R peak -> {'detector confirmation' if name == 'confirm' else 'beat published (incl. quality hold)'}"
                            f", records {' '.join(a.records)}, hold={a.hold}, first {a.skip_s:g} s skipped")


if __name__ == "__main__":
    main()
