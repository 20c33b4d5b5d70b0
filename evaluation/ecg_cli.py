"""``telediag analyze ecg``: offline ECG analysis (beats, HR, HRV, quality) to JSON/WFDB.

Usage::

    telediag analyze ecg INPUT... [--lead N] [--out-dir DIR] [--wfdb-ann EXT]
                         [--chunk-s S] [--config FILE] [--fs HZ]

``INPUT`` is a WFDB record (path without extension, or its ``.hea``/``.dat``), an ``.edf``
file or a ``.csv`` table (``--fs`` when it has no time column).  Every input is run through
the engine's own ``ecg`` pipeline (the built-in configuration or ``--config FILE``), fed in
``--chunk-s`` chunks, so the results equal what the engine publishes live
(:mod:`telediag.evaluation.ecg_analyze`).  Writes ``DIR/<record>.json`` and, with
``--wfdb-ann EXT``, ``DIR/<record>.<EXT>`` (``wfdb.wrann``: every detected beat with its
label as symbol, ``N`` when unclassified; ``~`` noise annotations over unusable spans, subtype
= bit mask of the unusable leads; ``+`` rhythm annotations ``(AFIB``/``(N``), which
``telediag score`` compares with the reference (beats only)::

    telediag analyze ecg ../shared/data/mitdb/119 --out-dir out --wfdb-ann qrs
    telediag score ../shared/data/mitdb/119 --test-ext qrs --test-dir out

Exit status: 0 when every input was analysed, 2 when any failed (each failure is reported
on stderr and the other inputs are still analysed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from telediag.errors import TelediagError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``analyze ecg`` arguments to ``parser``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> a = p.parse_args(["rec", "--wfdb-ann", "qrs"])
    >>> a.inputs, a.wfdb_ann, a.chunk_s, a.lead
    (['rec'], 'qrs', 1.0, None)
    """
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="WFDB record path (without extension), .edf or .csv file")
    parser.add_argument("--lead", type=int, default=None,
                        help="detection lead index (default: the config's lead, 0)")
    parser.add_argument("--out-dir", type=Path, default=Path("."),
                        help="output directory (default: current directory)")
    parser.add_argument("--wfdb-ann", default=None, metavar="EXT",
                        help="also write the beats as a WFDB annotation file <record>.<EXT>")
    parser.add_argument("--chunk-s", type=float, default=1.0,
                        help="chunk length fed to the stages, seconds (results do not depend on it)")
    parser.add_argument("--config", type=Path, default=None,
                        help="engine config file (TOML) whose ecg pipeline is run (default: built-in)")
    parser.add_argument("--fs", type=float, default=None,
                        help="sample rate of CSV inputs without a time column (Hz)")
    parser.add_argument("--edf", default=None, metavar="OUT",
                        help="also write the record with beats, alarms and unusable spans as EDF+ "
                             "annotations (BDF+ where 16 bits lose precision): OUT file, or OUT/<record>.edf "
                             "for several inputs (telediag.exports.edf)")


def run(args: argparse.Namespace) -> int:
    """Analyse every input; return 0 when all succeeded, 2 otherwise.

    Examples
    --------
    >>> ns = argparse.Namespace(inputs=["/nonexistent/rec"], lead=None, out_dir=Path("."),
    ...                         wfdb_ann=None, chunk_s=1.0, config=None, fs=None)
    >>> run(ns)
    2
    """
    from telediag.engine.config import load_config
    from telediag.evaluation.ecg_analyze import (
        analyze_recording,
        write_json,
        write_wfdb_annotations,
    )
    from telediag.sources.readers import read_any

    try:
        config = load_config(args.config)
    except TelediagError as e:
        print(f"telediag analyze ecg: {e}", file=sys.stderr)
        return 2
    failed = 0
    for inp in args.inputs:
        try:
            rec = read_any(inp, fs=args.fs)
            res = analyze_recording(rec, config=config, lead=args.lead, chunk_s=args.chunk_s,
                                    source=str(inp))
            out = write_json(res, args.out_dir)
            ann = (write_wfdb_annotations(res, args.out_dir, args.wfdb_ann)
                   if args.wfdb_ann else None)
            if getattr(args, "edf", None):
                from telediag.exports.edf import ecg_analysis_to_edf, edf_target

                edf = ecg_analysis_to_edf(rec, res, edf_target(args.edf, res["record"], len(args.inputs)))
                ann = f"{ann}, {edf.path} ({edf.file_type})" if ann else f"{edf.path} ({edf.file_type})"
        except TelediagError as e:
            print(f"{inp}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        except OSError as e:
            print(f"{inp}: error: cannot write output: {e}", file=sys.stderr)
            failed += 1
            continue
        if res["classifier"]["error"]:
            print(f"{inp}: warning: beats are unlabelled: {res['classifier']['error']}", file=sys.stderr)
        hr = [r["hr_bpm"] for r in res["heart_rate"]["readings"] if r["on_beat"] and r["hr_bpm"]]
        d = res["delay"]["end_to_end"]
        print(
            f"{res['record']}: {len(res['beats'])} beats on lead {res['lead']['name']} "
            f"({res['counters']['unusable']} in unusable signal), {len(res['rhythm']['episodes'])} AF "
            f"episode(s), {len(res['quality']['events'])} quality "
            f"event(s), median HR {sorted(hr)[len(hr) // 2] if hr else float('nan'):.1f} bpm, "
            f"decision delay p50 {d['p50'] or 0:.3f} s max {d['max'] or 0:.3f} s -> {out}"
            + (f", {ann}" if ann else "")
        )
    return 2 if failed else 0
