"""Record every stream and its annotations (WFDB, JSON lines, MP4) until stopped.

Signals are written as WFDB format-32 records, beats as WFDB annotations, video as MP4,
every other annotation as JSON lines; lost ranges are marked and listed. The recorder
keeps going across engine restarts.
"""

from __future__ import annotations

import argparse
import threading
import time

from telediag.client import Subscriber
from telediag.recorder.writer import Recorder
from telediag.transports.sockets import endpoint_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("addr", type=endpoint_arg, nargs="?", default="tcp://127.0.0.1:5556", help="engine publish address")
    p.add_argument("--out-dir", required=True, help="folder for the recording")
    p.add_argument("--topic", action="append", default=None, help="topic prefix to record (repeatable; default all)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: until Ctrl-C)")
    p.add_argument("--format", choices=["wfdb", "edf"], default="wfdb",
                   help="edf: also write one EDF+ (or BDF+ where 16 bits lose precision) file per signal "
                        "stream, with beats, alarms, AF episodes, quality spans and heart-sound segments "
                        "as annotations, when the recording stops (WFDB stays the crash-safe working copy)")
    p.add_argument("--curve-secret", metavar="FILE", help="this client's .key_secret (CurveZMQ)")
    p.add_argument("--server-key", metavar="FILE", help="the engine's public .key (CurveZMQ)")


def run(args: argparse.Namespace) -> int:
    from telediag.sources.replay import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)
    rec = Recorder(args.out_dir)
    end = time.monotonic() + args.duration if args.duration else None
    with Subscriber(args.addr, topics=args.topic or [""], curve_secret=args.curve_secret,
                    server_key=args.server_key) as sub:
        print(f"telediag record: {args.addr} -> {args.out_dir}", flush=True)
        try:
            while not stop.is_set() and (end is None or time.monotonic() < end):
                c = sub.recv(timeout_s=0.2)
                if c is not None:
                    rec.add(c)
        finally:
            rec.close()
    total = sum(rec.counts.values())
    print(f"telediag record: {total} messages, {len(rec.signals)} signal record(s): "
          + ", ".join(f"{w.path.name} ({w.n} samples, {len(w.gaps)} gap(s))" for w in rec.signals.values()))
    if getattr(args, "format", "wfdb") == "edf" and rec.signals:
        from telediag.exports.edf import session_to_edf
        from telediag.exports.session import load_session

        for info in session_to_edf(load_session(args.out_dir), args.out_dir):
            print(f"telediag record: {info.path} ({info.file_type}, {info.records} x {info.record_s:g} s records, "
                  f"{info.annotations} annotations)")
    return 0
