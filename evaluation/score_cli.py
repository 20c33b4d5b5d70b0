"""``telediag score``: EC57 beat-by-beat comparison of WFDB annotation files.

Usage (once hooked into the ``telediag`` CLI)::

    telediag score REF_DIR_OR_RECORDS --ref-ext atr --test-ext EXT [--test-dir DIR]
                   [--window-ms 150] [--skip-s 300] [--count-vf]

``REF_DIR_OR_RECORDS`` is a directory (every record with a ``.hea`` and a reference
annotation file is scored) or one or more record paths without extension.  Test annotations
are read from ``--test-dir`` (default: beside the reference) with extension ``--test-ext``.
Prints a Markdown table for the whole records and one skipping the first ``--skip-s``
seconds (bxb's default learning period).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .ec57 import BeatScore, format_table, match_beats, reference_beats, vf_intervals

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``score`` sub-command's arguments to ``parser``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["data/mitdb", "--test-ext", "qrs"]).window_ms
    150.0
    """
    parser.add_argument(
        "refs", nargs="+", metavar="REF_DIR_OR_RECORDS",
        help="directory of WFDB records, or record paths without extension",
    )
    parser.add_argument("--ref-ext", default="atr", help="reference annotation extension (atr)")
    parser.add_argument("--test-ext", required=True, help="test annotation extension")
    parser.add_argument(
        "--test-dir", type=Path, default=None,
        help="directory of the test annotation files (default: beside the references)",
    )
    parser.add_argument("--window-ms", type=float, default=150.0, help="match window (150 ms)")
    parser.add_argument(
        "--skip-s", type=float, default=300.0,
        help="seconds skipped in the second table (bxb default 300)",
    )
    parser.add_argument(
        "--count-vf", action="store_true",
        help="count test beats inside VF episodes ([ ... ]) as false positives",
    )


def _records(refs: list[str], ref_ext: str) -> list[Path]:
    out: list[Path] = []
    for r in refs:
        p = Path(r)
        if p.is_dir():
            out.extend(
                sorted(h.with_suffix("") for h in p.glob("*.hea") if h.with_suffix(f".{ref_ext}").exists())
            )
        else:
            out.append(p.with_suffix("") if p.suffix in (".hea", ".dat", f".{ref_ext}") else p)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the comparison; print the tables; return a process exit code (0 ok, 2 bad input).

    Examples
    --------
    >>> ns = argparse.Namespace(refs=["/nonexistent"], ref_ext="atr", test_ext="qrs",
    ...                         test_dir=None, window_ms=150.0, skip_s=300.0, count_vf=False)
    >>> run(ns)
    2
    """
    import wfdb

    recs = _records(list(args.refs), args.ref_ext)
    if not recs:
        print(f"no records with .{args.ref_ext} annotations found in {args.refs}", file=sys.stderr)
        return 2
    whole: dict[str, BeatScore] = {}
    skip: dict[str, BeatScore] = {}
    for rec in recs:
        test_base = (args.test_dir / rec.name) if args.test_dir is not None else rec
        try:
            ref = wfdb.rdann(str(rec), args.ref_ext)
            test = wfdb.rdann(str(test_base), args.test_ext)
        except Exception as e:  # unreadable or missing file: report and go on
            print(f"{rec.name}: cannot read annotations: {e}", file=sys.stderr)
            return 2
        fs = float(ref.fs) if ref.fs else None
        if fs is None:
            try:
                fs = float(wfdb.rdheader(str(rec)).fs)
            except Exception as e:
                print(f"{rec.name}: no sampling frequency: {e}", file=sys.stderr)
                return 2
        rb = reference_beats(ref)
        tb = reference_beats(test)
        ex = None if args.count_vf else vf_intervals(ref)
        w = args.window_ms / 1000.0
        whole[rec.name] = match_beats(rb, tb, fs, window_s=w, exclude=ex)
        skip[rec.name] = match_beats(rb, tb, fs, window_s=w, start_s=args.skip_s, exclude=ex)
    print(format_table(whole, title=f"whole records, window {args.window_ms:g} ms"))
    print()
    print(format_table(skip, title=f"skipping the first {args.skip_s:g} s, window {args.window_ms:g} ms"))
    return 0
