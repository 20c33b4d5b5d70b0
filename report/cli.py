"""Write the teleconsultation report (PDF or HTML) of one recorded session.

``telediag report RECORDING_DIR --out report.pdf`` (or ``.html``; give ``--out`` twice for
both); see :mod:`telediag.report.build` for what it shows. Needs the ``report`` extra
(matplotlib): ``pip install 'telediag[report]'``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from telediag.errors import TelediagError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="recording folder (telediag record --out-dir)")
    p.add_argument("--out", action="append", default=None,
                   help="report.pdf or report.html (repeatable; default RECORDING_DIR/report.pdf and .html)")
    p.add_argument("--max-alarm-strips", type=int, default=12, help="ECG strips around alarms, at most (default 12)")


def run(args: argparse.Namespace) -> int:
    from telediag.exports.session import load_session
    from telediag.report.build import build_report, write_html, write_pdf

    outs = [Path(o) for o in (args.out or [Path(args.recording) / "report.pdf", Path(args.recording) / "report.html"])]
    for o in outs:
        if o.suffix.lower() not in (".pdf", ".html", ".htm"):
            raise TelediagError(f"--out {o}: expected a .pdf or .html file name")
    if args.max_alarm_strips < 0:
        raise TelediagError(f"--max-alarm-strips must be >= 0, got {args.max_alarm_strips}")
    rep = build_report(load_session(args.recording), max_alarm_strips=args.max_alarm_strips)
    rec = Path(args.recording)
    for o in outs:
        o.parent.mkdir(parents=True, exist_ok=True)
        if o.suffix.lower() == ".pdf":
            n = write_pdf(rep, o)
            print(f"telediag report: {o} ({n} pages)")
        else:
            links = [(f.name, os.path.relpath(f.resolve(), o.parent.resolve()))
                     for f in sorted(rec.glob("*.edf")) + sorted(rec.glob("*bundle*.json")) + sorted(rec.glob("report.pdf"))]
            n = write_html(rep, o, links=links)
            print(f"telediag report: {o} ({n} sections)")
    return 0
