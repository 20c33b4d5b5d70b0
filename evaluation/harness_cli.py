"""``telediag harness``: run any QRS detector on a directory of WFDB records and score it (EC57).

Usage::

    telediag harness DETECTOR --data DIR [--records 100,101] [--lead 0] [--peers]
                     [--max-seconds S] [--cache DIR | --no-cache] [--out DIR]

``DETECTOR`` is ``telediag`` (built-in), a peer (``sleepecg``, ``neurokit2``, ``xqrs``,
``pan_tompkins``), ``package.module:function`` or ``path/file.py:function``; the function
takes ``(signal: 1-D float64 ndarray, fs: float)`` and returns R-peak sample indices.  Every
record in ``DIR`` with ``.hea``, ``.dat`` and ``.atr`` files is scored (EC57 beat-by-beat,
150 ms window, VF episodes excluded from FP) and compared with the built-in detector (and the
installed peers with ``--peers``).  Detections are cached (``~/.cache/telediag/harness``), so a
re-run is instant; editing the detector's source file invalidates its entries.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from telediag.errors import ConfigError

from .ec57 import format_table
from .harness import PEERS, HarnessResult, default_cache_dir, evaluate, resolve_detector

__all__ = ["add_arguments", "comparison_tables", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``harness`` sub-command's arguments to ``parser``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["telediag", "--data", "mitdb"]).lead
    0
    """
    parser.add_argument("detector", metavar="DETECTOR",
                        help=f"telediag, {', '.join(PEERS)}, module:function or file.py:function")
    parser.add_argument("--data", type=Path, required=True, help="directory of WFDB records with .atr files")
    parser.add_argument("--records", default=None, help="comma-separated record names (default: all)")
    parser.add_argument("--lead", type=int, default=0, help="channel scored (0 = first)")
    parser.add_argument("--peers", action="store_true", help="also score the installed peer detectors")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="score only the first S seconds of each record")
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"detections cache (default {default_cache_dir()})")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--out", type=Path, default=None, help="write report.md and results.json here")


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def comparison_tables(results: list[HarnessResult]) -> str:
    """Markdown: gross scores per detector, then per-record F1 side by side.

    Examples
    --------
    >>> from telediag.evaluation.ec57 import BeatScore
    >>> r = HarnessResult("a", {"100": BeatScore(9, 1, 0)}, {"100": False}, 60.0, 0.01, 60.0)
    >>> print(comparison_tables([r]).splitlines()[2])
    | a | 9 | 1 | 0 | 90.00 | 100.00 | 94.74 | 0.0 | 0.0 | 6,000 |
    """
    lines = ["| detector | TP | FN | FP | Se % | +P % | F1 % | err mean ms | err SD ms | x real time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        g = r.gross
        xr = "cached" if math.isnan(r.x_realtime) else f"{r.x_realtime:,.0f}"
        err = "n/a" if math.isnan(g.mean_err_ms) else f"{g.mean_err_ms:.1f}"
        sd = "n/a" if math.isnan(g.sd_err_ms) else f"{g.sd_err_ms:.1f}"
        lines.append(f"| {r.detector} | {g.tp} | {g.fn} | {g.fp} | {_pct(g.se)} | {_pct(g.ppv)} | "
                     f"{_pct(g.f1)} | {err} | {sd} | {xr} |")
    if len(results) > 1:
        lines += ["", "**F1 % per record**", "",
                  "| record | " + " | ".join(r.detector for r in results) + " |",
                  "|---|" + "---:|" * len(results)]
        for rec in results[0].per_record:
            cells = " | ".join(_pct(r.per_record[rec].f1) if rec in r.per_record else "n/a" for r in results)
            lines.append(f"| {rec} | {cells} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the harness from parsed arguments; print Markdown tables; return 0."""
    names = [n.strip() for n in args.records.split(",") if n.strip()] if args.records else None
    main = resolve_detector(args.detector)
    others = [] if main.name == "telediag" else ["telediag"]
    if args.peers:
        others += [p for p in PEERS if p != main.name]
    detectors = [main]
    for spec in others:
        try:
            detectors.append(resolve_detector(spec))
        except ConfigError as e:
            print(f"skipping {spec}: {e}", file=sys.stderr)
    results = []
    for det in detectors:
        results.append(evaluate(det, args.data, names=names, lead=args.lead, max_seconds=args.max_seconds,
                                cache_dir=args.cache, use_cache=not args.no_cache, progress=sys.stderr))
    span = f", first {args.max_seconds:g} s" if args.max_seconds else ""
    title = f"{main.name}: {args.data} lead {args.lead}{span} (EC57, 150 ms, VF excluded)"
    text = format_table(results[0].per_record, title=title) + "\n\n"
    text += f"**Gross, {len(results[0].per_record)} records{span}**\n\n" + comparison_tables(results) + "\n"
    print(text)
    hits = sum(results[0].cached.values())
    print(f"{main.name}: {hits}/{len(results[0].cached)} records from the cache", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        (args.out / "results.json").write_text(
            json.dumps({"detectors": [r.to_dict() for r in results], "data": str(args.data),
                        "lead": args.lead, "max_seconds": args.max_seconds}, indent=1, default=str))
    return 0
