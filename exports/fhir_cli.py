"""Write a FHIR R4 Bundle of a recorded session or an offline analysis; or export live.

``telediag fhir REC_DIR --out bundle.json`` (a ``telediag record`` folder) or
``telediag fhir ANALYSIS.json --out bundle.json`` (``telediag analyze ecg|pcg`` output).
``telediag fhir --live [ADDR] --url URL`` (or ``--config FILE`` with ``[export.fhir]``) subscribes
to an engine and POSTs one transaction Bundle per ``--interval-s`` until Ctrl-C; see
:mod:`telediag.exports.fhir` for what a bundle holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from telediag.errors import TelediagError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="recording folder (telediag record) or analysis JSON (telediag analyze)")
    p.add_argument("--out", default="-", help="bundle file (default: stdout)")
    p.add_argument("--patient", help="patient identifier (overrides the stream metadata)")
    p.add_argument("--patient-name", help="patient name (overrides the stream metadata)")
    p.add_argument("--encounter", help="encounter identifier (overrides the stream metadata)")
    g = p.add_argument_group("live export (POST one transaction Bundle per interval to a FHIR server)")
    g.add_argument("--live", nargs="?", const="tcp://127.0.0.1:5556", metavar="ADDR",
                   help="subscribe to this engine publish address (default tcp://127.0.0.1:5556)")
    g.add_argument("--url", help="FHIR server base URL (POST target)")
    g.add_argument("--interval-s", type=float, default=60.0, help="seconds per bundle (default 60)")
    g.add_argument("--config", metavar="FILE", help="TOML file with an [export.fhir] section (url, interval_s, ...)")
    g.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: until Ctrl-C)")
    g.add_argument("--curve-secret", metavar="FILE", help="this client's .key_secret (CurveZMQ)")
    g.add_argument("--server-key", metavar="FILE", help="the engine's public .key (CurveZMQ)")


def _patient(args: argparse.Namespace) -> dict[str, str]:
    return {k: v for k, v in (("patient", args.patient), ("patient_name", args.patient_name),
                              ("encounter", args.encounter)) if v}


def run(args: argparse.Namespace) -> int:
    from telediag.exports.fhir import FhirExporter, FhirSettings, analysis_bundle, session_bundle

    if args.live is not None or args.config:
        settings = FhirSettings.from_toml(args.config) if args.config else None
        if settings is None:
            if not args.url:
                raise TelediagError("live export needs --url URL or --config FILE with [export.fhir]")
            settings = FhirSettings(url=args.url, interval_s=args.interval_s)
        exp = FhirExporter(args.live or "tcp://127.0.0.1:5556", settings, patient=_patient(args),
                           curve_secret=args.curve_secret, server_key=args.server_key).start()
        from telediag.sources.replay import install_stop_signals

        stop = threading.Event()
        install_stop_signals(stop)
        print(f"telediag fhir: {exp.publish} -> {settings.url} every {settings.interval_s:g} s", flush=True)
        stop.wait(args.duration or None)
        exp.stop()
        print(f"telediag fhir: {exp.stats}" + (f", last error {exp.last_error}" if exp.last_error else ""))
        return 0 if exp.pending == 0 else 1
    if not args.input:
        raise TelediagError("give a recording folder or an analysis JSON (or --live)")
    src = Path(args.input)
    if src.is_dir():
        from telediag.exports.session import load_session

        bundle = session_bundle(load_session(src), patient=_patient(args))
    elif src.is_file():
        try:
            doc = json.loads(src.read_text())
        except (OSError, ValueError) as e:
            raise TelediagError(f"{src}: not a JSON document ({e})") from e
        if not isinstance(doc, dict):
            raise TelediagError(f"{src}: expected a JSON object (telediag analyze output)")
        bundle = analysis_bundle(doc, name=src.stem, patient=_patient(args))
    else:
        raise TelediagError(f"{src} does not exist")
    text = json.dumps(bundle, indent=1) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        kinds: dict[str, int] = {}
        for entry in bundle["entry"]:
            rt = entry["resource"]["resourceType"]
            kinds[rt] = kinds.get(rt, 0) + 1
        print(f"telediag fhir: {args.out}: Bundle ({bundle['type']}) with "
              + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    return 0
