"""``telediag demo``: the main job on built-in defaults and bundled data.

Starts the engine (built-in config, beat classification on) in this process on its own ports
(ingest ``tcp://127.0.0.1:5565``, publish ``tcp://127.0.0.1:5566``, so it does not clash with a
``telediag run`` on the defaults), replays the bundled real recordings through it as live
sources would (ECG: MIT-BIH 119; heart sounds with simultaneous ECG: PhysioNet 2016 a0020;
video: a synthetic endoscopy clip), serves the live web viewer (``--viewer-port``, default 8080,
or any free port when that one is taken; the URL is printed) and prints a live per-stream summary.
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
from telediag.errors import EngineError
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
            if p != port:
                print(f"  viewer   port {port} is taken; using a free one")
            return v
        except TelediagError:
            continue
    return None


def _video_source(args: argparse.Namespace, stop: threading.Event, speed: float) -> threading.Thread | None:
    """The bundled synthetic endoscopy clip sent by the video agent (absent if unavailable)."""
    try:
        from telediag.sources.video import VideoSourceOptions, run_video_source
    except ImportError:
        return None
    clip = data_path("endoscopy_synth.mp4")
    if not clip.exists():
        return None
    opts = VideoSourceOptions(input=str(clip), connect=args.ingest, stream="room-3/endo", loop=True,
                              speed=1.0 if speed == float("inf") else speed, keyint=25)

    def run() -> None:
        try:
            run_video_source(opts, stop=stop)
        except Exception as e:  # noqa: BLE001 - the demo degrades gracefully
            print(f"  video    stopped ({e})", flush=True)

    print(f"  video    synthetic endoscopy clip {clip.name} (640x480, 25 fps, looped) -> video/room-3/endo")
    return threading.Thread(target=run, daemon=True)


def _bind_hint(e: EngineError, args: argparse.Namespace) -> str:
    """One clear line for an engine that could not start (e.g. a port taken by another demo)."""
    import errno

    import zmq

    cause = e.__cause__
    if isinstance(cause, zmq.ZMQError) and cause.errno == errno.EADDRINUSE:
        which = "--ingest" if "ingest" in str(e) else "--publish"
        addr = args.ingest if which == "--ingest" else args.publish
        return (f"demo engine cannot start: {addr} is already in use (another `telediag demo` or "
                f"`telediag run` on it?); stop it or choose another address with {which}")
    return f"demo engine cannot start: {e}"


def run_demo(args: argparse.Namespace) -> int:
    import dataclasses

    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, ingest=args.ingest, publish=args.publish))
    # the demo shows beat classes (colour-coded in the viewer): classification on when the model loads
    ecg = tuple(dataclasses.replace(sc, params=dataclasses.replace(sc.params, classify="auto"))
                if sc.stage_type.type_name == "ecg_analysis" else sc for sc in cfg.pipelines.get("ecg", ()))
    cfg = dataclasses.replace(cfg, pipelines={**cfg.pipelines, "ecg": ecg})
    engine = Engine(cfg)
    try:
        engine.start()
    except EngineError as e:
        raise EngineError(_bind_hint(e, args)) from None
    stop = threading.Event()
    install_stop_signals(stop)
    speed = parse_speed(args.speed)
    rec = read_wfdb(data_path("mitdb119_5min"))
    heart = read_wfdb(data_path("a0020"))  # PCG (signal 0) and its simultaneous ECG (signal 1)
    print("telediag demo")
    print(f"  engine   ingest {args.ingest}  publish {args.publish}")
    print(f"  ECG      MIT-BIH record 119 (first 5 min, looped), 2 leads at {rec.fs:g} Hz -> ecg/bed-1/ecg")
    print(f"  PCG+ECG  PhysioNet 2016 a0020 (heart sounds with simultaneous ECG, looped), {heart.fs:g} Hz"
          " -> pcg/bed-2/pcg, ecg/bed-2/ecg")
    viewer = _start_viewer(args.publish, getattr(args, "viewer_port", 8080)) if getattr(args, "viewer", True) else None
    if viewer is not None:
        print(f"  viewer   {viewer.url}   (live web viewer: open it in a browser)")
    print(f"  watch    telediag tail {args.publish}     or     telediag status {args.publish}")
    print(f"  running  {'until Ctrl-C' if not args.duration else f'{args.duration:g} s'}", flush=True)
    common = dict(connect=args.ingest, speed=speed, chunk_ms=100.0, loop=True, stop=stop, linger_s=1.0)
    t0 = time.time_ns()
    sources = [
        threading.Thread(target=replay, daemon=True,
                         kwargs=dict(rec=rec, kind="ecg", stream="bed-1/ecg", **common)),
        threading.Thread(target=replay, daemon=True,
                         kwargs=dict(rec=heart.select([0]), kind="pcg", stream="bed-2/pcg", start_ns=t0, **common)),
        threading.Thread(target=replay, daemon=True,
                         kwargs=dict(rec=heart.select([1]), kind="ecg", stream="bed-2/ecg", start_ns=t0, **common)),
    ]
    video = _video_source(args, stop, speed)
    if video is not None:
        sources.append(video)
    summary = TailSummary()
    recorder = _demo_recorder(getattr(args, "record_dir", "demo-recording"))
    if recorder is not None and viewer is not None and hasattr(viewer, "set_recording_dir"):
        viewer.set_recording_dir(recorder.out)  # the viewer links to the live report and FHIR bundle
    with Subscriber(args.publish, topics=[""]) as sub:
        for s in sources:
            s.start()
        t_end = time.monotonic() + args.duration if args.duration else None
        next_report = time.monotonic() + 1.0
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            c = sub.recv(timeout_s=max(0.0, next_report - time.monotonic()))
            if c is not None:
                summary.add(c)
                if recorder is not None:
                    recorder.add(c)
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
    try:
        engine.stop()
        engine.join(10)
    finally:  # the recording is finished (EDF+, bundle, report) even if the engine is slow to stop
        if recorder is not None:
            _finish_recording(recorder)
    print("telediag demo: stopped cleanly")
    return 0


def _demo_recorder(path: str | None):  # noqa: ANN202 - Recorder or None
    """The demo's recording folder (replaced on every run), or ``None`` with ``--record-dir ''``."""
    if not path:
        return None
    import shutil

    from telediag.recorder import Recorder

    out = Path(path)
    if (out / "session.json").exists():  # a previous demo's recording: start afresh
        shutil.rmtree(out)
    print(f"  record   {out}/  (WFDB + JSON lines + MP4; EDF+, FHIR bundle and report written at the end)")
    return Recorder(out)


def _finish_recording(recorder) -> None:  # noqa: ANN001 - Recorder
    """Close the recording and write its EDF+ files, FHIR bundle and teleconsultation report."""
    import json

    from telediag.errors import TelediagError

    recorder.close()
    out = recorder.out
    try:
        from telediag.exports.edf import session_to_edf
        from telediag.exports.fhir import session_bundle
        from telediag.exports.session import load_session

        session = load_session(out)
        edfs = session_to_edf(session, out)
        (out / "bundle.json").write_text(json.dumps(session_bundle(session), indent=1) + "\n")
        print(f"  saved    {out}/: {len(edfs)} EDF+ file(s), bundle.json (FHIR R4)")
        from telediag.report.build import build_report, write_html, write_pdf

        rep = build_report(session)
        write_pdf(rep, out / "report.pdf")
        links = [(p.name, p.name) for p in [*sorted(out.glob("*.edf")), out / "bundle.json", out / "report.pdf"]]
        write_html(rep, out / "report.html", links=links)
        print(f"  report   {(out / 'report.pdf').resolve()}  and  {(out / 'report.html').resolve()}")
    except TelediagError as e:  # e.g. the report extra is missing: say how to get it
        print(f"  report   not written: {e}")
