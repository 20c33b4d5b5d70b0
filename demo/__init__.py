"""``telediag demo``: the main job on built-in defaults and bundled data.

Starts the engine (built-in config) in this process, replays the bundled real
recordings through it as a live source would, serves the live web viewer (port 8080, or
any free port when it is taken; the URL is printed) and prints a live per-stream summary.
Modalities that are not built yet are simply absent.
"""

from __future__ import annotations

import argparse
import threading
import time
from importlib import resources
from pathlib import Path

from telediag.client import Subscriber, TailSummary
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.sources.readers import read_wfdb
from telediag.sources.replay import install_stop_signals, parse_speed, replay


def data_path(name: str) -> Path:
    """Path of a bundled demo file."""
    return Path(str(resources.files("telediag.demo").joinpath("data", name)))


def _start_viewer(publish: str, port: int):  # noqa: ANN202 - ViewerThread, imported lazily
    """The live web viewer on ``port`` (any free port when taken), or ``None`` without aiohttp."""
    try:
        from telediag.viewer.server import ViewerThread
    except ImportError as e:  # pragma: no cover - aiohttp is a dependency
        print(f"  viewer   unavailable ({e}); pip install aiohttp")
        return None
    from telediag.errors import TelediagError

    for p in (port, 0):
        v = ViewerThread(publish, host="127.0.0.1", port=p)
        try:
            v.start()
            return v
        except TelediagError:
            continue
    return None


def run_demo(args: argparse.Namespace) -> int:
    import dataclasses

    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, ingest=args.ingest, publish=args.publish))
    engine = Engine(cfg)
    engine.start()
    stop = threading.Event()
    install_stop_signals(stop)
    speed = parse_speed(args.speed)
    rec = read_wfdb(data_path("mitdb119_5min"))
    print("telediag demo")
    print(f"  engine   ingest {args.ingest}  publish {args.publish}")
    print(f"  ECG      MIT-BIH record 119 (first 5 min, looped), 2 leads at {rec.fs:g} Hz -> ecg/bed-1/ecg")
    viewer = _start_viewer(args.publish, getattr(args, "viewer_port", 8080))
    if viewer is not None:
        print(f"  viewer   {viewer.url}   (live web viewer: open it in a browser)")
    print(f"  watch    telediag tail {args.publish}     or     telediag status {args.publish}")
    print(f"  running  {'until Ctrl-C' if not args.duration else f'{args.duration:g} s'}", flush=True)
    sources = [
        threading.Thread(
            target=replay, daemon=True,
            kwargs=dict(rec=rec, kind="ecg", stream="bed-1/ecg", connect=args.ingest, speed=speed,
                        chunk_ms=100.0, loop=True, stop=stop, linger_s=1.0),
        )
    ]
    summary = TailSummary()
    with Subscriber(args.publish, topics=[""]) as sub:
        for s in sources:
            s.start()
        t_end = time.monotonic() + args.duration if args.duration else None
        next_report = time.monotonic() + 1.0
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            c = sub.recv(timeout_s=max(0.0, next_report - time.monotonic()))
            if c is not None:
                summary.add(c)
            if time.monotonic() >= next_report:
                stamp = time.strftime("%H:%M:%S")
                for line in summary.lines(1.0):
                    print(f"{stamp} {line}", flush=True)
                next_report += 1.0
    stop.set()
    for s in sources:
        s.join(5)
    if viewer is not None:
        viewer.stop()
    engine.stop()
    engine.join(10)
    print("telediag demo: stopped cleanly")
    return 0
