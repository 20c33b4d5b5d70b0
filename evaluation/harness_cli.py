"""``telediag harness``: run any detector, classifier or segmenter on annotated data and score it.

Usage::

    telediag harness [--task qrs|beats|pcg-seg|polyp] SPEC --data DIR [--records A,B] [--limit N]
                     [--lead I] [--peers] [--max-seconds S] [--cache DIR | --no-cache] [--out DIR]

``SPEC`` is ``telediag`` (the built-in algorithm of the task), ``package.module:function`` or
``path/file.py:function`` (for ``qrs`` also a peer: ``sleepecg``, ``neurokit2``, ``xqrs``,
``pan_tompkins``).  What the function takes and returns, per ``--task``:

* ``qrs`` (default): ``f(signal: 1-D float64, fs: float) -> R-peak sample indices``, on WFDB
  records with ``.atr`` files; EC57 beat-by-beat tables (150 ms, VF excluded from FP).
* ``beats``: ``f(signal: 1-D float64, fs: float, beats: 1-D int64) -> one AAMI label per beat``
  (``"N"``, ``"S"``, ``"V"``, ``"F"``, ``"Q"`` or 0-4; ``beats`` = reference beat samples), on
  WFDB records; EC57 class tables: VEB/SVEB Se, +P, F1 and the confusion matrix.
* ``pcg-seg``: ``f(audio: 1-D float64 in [-1, 1], fs: int) -> [(start_s, end_s, state), ...]``
  (state ``S1``/``systole``/``S2``/``diastole``), on WAV files with PhysioNet/CinC 2016
  ``*_StateAns.mat`` annotations under DIR; S1/S2 Se, +P, F1 at +-60 ms.
* ``polyp``: ``f(rgb: (H, W, 3) uint8) -> (H, W) bool mask``, on DIR/images + DIR/masks
  (Kvasir-SEG layout); Dice and IoU per image and their means.

Each item is scored per record/image and gross, next to the built-in algorithm (and, for
``qrs`` with ``--peers``, the installed peers).  Outputs are cached per algorithm version
(its file, the sibling and local modules it imports, its ``version`` attribute, the telediag
version) and input content in ``~/.cache/telediag/harness``: a re-run with nothing changed is
instant, editing the plug-in or a helper it imports recomputes.  A progress bar is drawn on
stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from telediag.errors import ConfigError

from .ec57 import format_table
from .harness import PEERS, HarnessResult, default_cache_dir, evaluate, resolve_detector
from .harness_tasks import TASKS, comparison_table, evaluate_task, item_table, resolve_plugin

__all__ = ["add_arguments", "comparison_tables", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``harness`` sub-command's arguments to ``parser``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> a = p.parse_args(["telediag", "--data", "mitdb"])
    >>> a.task, a.lead
    ('qrs', None)
    """
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Usage::")[1].split("\n\n", 2)[2] if __doc__ else None
    parser.add_argument("--task", choices=TASKS, default="qrs",
                        help="what SPEC does: qrs detector (default), beats classifier, pcg-seg "
                             "heart-sound segmenter, polyp image segmenter")
    parser.add_argument("detector", metavar="SPEC",
                        help=f"telediag, module:function or file.py:function (qrs also: {', '.join(PEERS)})")
    parser.add_argument("--data", type=Path, required=True,
                        help="WFDB records (qrs, beats), WAVs + *_StateAns.mat (pcg-seg), images/ + masks/ (polyp)")
    parser.add_argument("--records", default=None,
                        help="comma-separated record / recording / image file names (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="beats, pcg-seg, polyp: only the first N items")
    parser.add_argument("--lead", type=int, default=None,
                        help="channel scored (qrs: default 0; beats: default MLII, else 0)")
    parser.add_argument("--peers", action="store_true", help="qrs: also score the installed peer detectors")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="qrs, beats: score only the first S seconds of each record")
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"results cache (default {default_cache_dir()})")
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
    if args.task != "qrs":
        return _run_task(args, names)
    if args.limit is not None:
        raise ConfigError("--limit is for beats, pcg-seg and polyp; for qrs use --records")
    if args.lead is None:
        args.lead = 0
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
    _report(args, text, main.name, results[0].cached, "records",
            {"detectors": [r.to_dict() for r in results]})
    return 0


def _run_task(args: argparse.Namespace, names: list[str] | None) -> int:
    if args.peers:
        print(f"--peers: no peer {args.task} algorithms are wired in; comparing with the built-in only",
              file=sys.stderr)
    if args.max_seconds is not None and args.task != "beats":
        raise ConfigError(f"--max-seconds is for qrs and beats, not {args.task}")
    if args.lead is not None and args.task != "beats":
        raise ConfigError(f"--lead is for qrs and beats, not {args.task}")
    main = resolve_plugin(args.task, args.detector)
    plugins = [main] if main.builtin else [main, resolve_plugin(args.task, "telediag")]
    results = [evaluate_task(args.task, p, args.data, names=names, limit=args.limit, lead=args.lead,
                             max_seconds=args.max_seconds, cache_dir=args.cache, use_cache=not args.no_cache,
                             progress=sys.stderr) for p in plugins]
    span = f", first {args.max_seconds:g} s" if args.max_seconds else ""
    what = {"beats": "EC57 beat classes, reference beat positions", "pcg-seg": "S1/S2 centres within +-60 ms",
            "polyp": "Dice/IoU per image"}[args.task]
    title = f"**{main.name}: {args.task} on {args.data}{span} ({what})**"
    unit = "images" if args.task == "polyp" else "records"
    text = (f"{title}\n\n{item_table(results[0])}\n\n**Gross, {len(results[0].per_item)} {unit}{span}**\n\n"
            + comparison_table(results) + "\n")
    _report(args, text, main.name, results[0].cached, unit,
            {"task": args.task, "algorithms": [r.to_dict() for r in results]})
    return 0


def _report(args: argparse.Namespace, text: str, name: str, cached: dict[str, bool], unit: str,
            doc: dict[str, Any]) -> None:
    """Print the report and the cache hits; with ``--out``, write ``report.md`` and ``results.json``."""
    print(text)
    print(f"{name}: {sum(cached.values())}/{len(cached)} {unit} from the cache", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(text)
        (args.out / "results.json").write_text(json.dumps(
            {**doc, "data": str(args.data), "lead": args.lead, "max_seconds": args.max_seconds},
            indent=1, default=str))
