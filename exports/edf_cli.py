"""Write EDF+ (or BDF+) files of a recording folder: one per signal stream, analysis as annotations.

``telediag export REC_DIR [--out DIR] [--bits auto|16|24]`` (what ``telediag record --format edf``
does when the recording stops); see :mod:`telediag.exports.edf`.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="recording folder (telediag record --out-dir)")
    p.add_argument("--out", help="output folder (default: the recording folder)")
    p.add_argument("--bits", default="auto", choices=["auto", "16", "24"],
                   help="16 (EDF+), 24 (BDF+) or auto: 16 when it keeps the signal's resolution")
    p.add_argument("--discontinuous", action="store_true",
                   help="leave out wholly lost data records (EDF+D; many readers cannot open it)")


def run(args: argparse.Namespace) -> int:
    from telediag.exports.edf import session_to_edf
    from telediag.exports.session import load_session

    for info in session_to_edf(load_session(args.recording), args.out or args.recording, bits=args.bits,
                               discontinuous=args.discontinuous):
        print(f"{info.path}: {info.file_type}, {info.records} x {info.record_s:g} s records, "
              f"{info.annotations} annotations")
    return 0
