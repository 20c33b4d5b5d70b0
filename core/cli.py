"""The ``telediag`` command line: one CLI, a subcommand per job, ``--help`` on each."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence

from telediag.errors import TelediagError
from telediag.transports.security import add_curve_arguments  # noqa: F401  (re-export)
from telediag.transports.sockets import endpoint_arg

DEFAULT_INGEST = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"

Handler = Callable[[argparse.Namespace], int]




def _cmd_run(args: argparse.Namespace) -> int:
    from telediag.engine.warmup import import_scipy_signal

    import_scipy_signal()  # before the stages import it: engine start-up time (issue 18)
    from telediag.engine.config import load_config
    from telediag.engine.runtime import Engine

    cfg = load_config(args.config)
    if args.ingest or args.publish:
        import dataclasses

        eng = dataclasses.replace(
            cfg.engine, **{k: v for k, v in (("ingest", args.ingest), ("publish", args.publish)) if v}
        )
        cfg = dataclasses.replace(cfg, engine=eng)
    if args.ray:  # workers as Ray actors (engine/cluster.py; pip install 'telediag[cluster]')
        import dataclasses

        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, worker_mode="ray"),
                                  cluster=dataclasses.replace(cfg.cluster, ray_address=args.ray))
    exporter = None
    if args.config:  # [export.fhir]: a subscriber thread beside the engine, never in its path
        from telediag.exports.fhir import FhirExporter, FhirSettings

        fhir = FhirSettings.from_toml(args.config)
        if fhir is not None:
            exporter = FhirExporter(cfg.engine.publish, fhir)
    if args.check:
        kinds = {k: [s.name for s in v] for k, v in cfg.pipelines.items()}
        print(f"config OK ({cfg.source}): ingest {cfg.engine.ingest}, publish {cfg.engine.publish}, "
              f"workers {cfg.engine.workers} ({cfg.engine.worker_mode}), pipelines {kinds}"
              + (f", FHIR export to {exporter.settings.url}" if exporter else ""))
        return 0
    print(f"telediag engine: ingest {cfg.engine.ingest} (PULL), publish {cfg.engine.publish} (XPUB), "
          f"{cfg.engine.workers} worker(s); config {cfg.source}", flush=True)
    if exporter is not None:
        exporter.start()
        print(f"telediag engine: FHIR export to {exporter.settings.url} every {exporter.settings.interval_s:g} s",
              flush=True)
    try:
        Engine(cfg).run()
    finally:
        if exporter is not None:
            exporter.stop()
            print(f"telediag engine: FHIR export {exporter.stats}", flush=True)
    print("telediag engine: drained and stopped", flush=True)
    return 0


def _cmd_source_ecg(args: argparse.Namespace) -> int:
    from telediag.sources.readers import read_csv, read_edf, read_wfdb
    from telediag.sources.replay import install_stop_signals, parse_speed, replay

    given = [x for x in (args.wfdb, args.edf, args.csv) if x]
    if len(given) != 1:
        raise TelediagError("give exactly one of --wfdb RECORD, --edf FILE, --csv FILE")
    if args.wfdb:
        rec = read_wfdb(args.wfdb)
    elif args.edf:
        rec = read_edf(args.edf)
    else:
        rec = read_csv(args.csv, fs=args.fs)
    if args.leads:
        rec = rec.select([int(x) for x in args.leads.split(",")])
    if args.seconds:
        if args.seconds <= 0:
            raise TelediagError(f"--seconds must be positive, got {args.seconds}")
        from telediag.sources.readers import Recording

        n = max(1, int(round(args.seconds * rec.fs)))
        rec = Recording(rec.signal[:n], rec.fs, rec.channels, rec.units, rec.name)
    speed = parse_speed(args.speed)
    stream = args.stream or f"{rec.name}/ecg"
    stop = threading.Event()
    install_stop_signals(stop)
    print(f"telediag source ecg: {rec.name} {rec.signal.shape[1]} lead(s) {list(rec.channels)} at "
          f"{rec.fs:g} Hz, {rec.duration_s:.1f} s -> {args.connect} as ecg/{stream}, speed {args.speed}",
          flush=True)
    res = replay(rec, kind="ecg", stream=stream, connect=args.connect, speed=speed,
                 chunk_ms=args.chunk_ms, dtype=args.dtype, loop=args.loop, stop=stop,
                 curve_secret=args.curve_secret, server_key=args.server_key,
                 connect_timeout_s=args.connect_timeout or None,
                 on_waiting=lambda s: print(f"telediag source ecg: no engine at {args.connect} yet; "
                                            f"waiting (up to --connect-timeout {args.connect_timeout:g} s)",
                                            file=sys.stderr, flush=True),
                 meta={k: v for k, v in (("patient", args.patient), ("encounter", args.encounter)) if v})
    if not res.reached:
        print(f"telediag source ecg: error: no engine reached at {args.connect}; nothing was delivered "
              "(is `telediag run` up on that address?)", file=sys.stderr, flush=True)
        return 1
    print(f"telediag source ecg: sent {res.chunks} chunks, {res.samples} samples in {res.elapsed_s:.2f} s"
          f"{' (interrupted)' if res.interrupted else ''}", flush=True)
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from telediag.client import Subscriber, TailSummary
    from telediag.transports.sockets import PeerWatch

    summary = TailSummary()
    deadline = time.monotonic() + args.duration if args.duration else None
    # the engine's stats (every stats_interval_s) are the heartbeat, also when the topic is quiet
    heartbeat = [] if "stats/engine".startswith(args.topic) or args.topic.startswith("stats/engine") else ["stats/engine"]
    with Subscriber(args.addr, topics=[args.topic, *heartbeat], curve_secret=args.curve_secret,
                    server_key=args.server_key) as sub:
        watch = PeerWatch(sub.sock)  # the engine's (dis)connections: tail ends when the engine stops
        next_report = time.monotonic() + args.period
        last_msg = time.monotonic()
        seen = False
        try:
            while deadline is None or time.monotonic() < deadline:
                c = sub.recv(timeout_s=max(0.0, min(next_report - time.monotonic(), 0.25)))
                now = time.monotonic()
                if c is not None:
                    if c.topic.startswith(args.topic):
                        summary.add(c)
                    last_msg, seen = now, True
                if watch.poll():
                    seen = True
                if now >= next_report:
                    lines = summary.lines(args.period)
                    stamp = time.strftime("%H:%M:%S")
                    for line in lines or ["(no messages)"]:
                        print(f"{stamp} {line}", flush=True)
                    next_report += args.period
                if watch.up is False and now - watch.changed_at >= args.gone_s:
                    print(f"telediag tail: the engine at {args.addr} went away (disconnected for "
                          f"{args.gone_s:g} s); exiting", file=sys.stderr, flush=True)
                    return 0
                if args.idle_timeout and now - last_msg >= args.idle_timeout:
                    print(f"telediag tail: no message for {args.idle_timeout:g} s from {args.addr}"
                          f"{'' if seen else ' (no engine reached)'}; exiting", file=sys.stderr, flush=True)
                    return 0 if seen else 1
        except KeyboardInterrupt:
            pass
        finally:
            watch.close(sub.sock)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from telediag.client import Subscriber

    seen: dict[str, dict] = {}
    with Subscriber(args.addr, topics=["stats/"], curve_secret=args.curve_secret,
                    server_key=args.server_key) as sub:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            c = sub.recv(timeout_s=max(0.0, deadline - time.monotonic()))
            if c is None:
                break
            seen[c.stream] = c.body
            if args.once and seen:
                # one full round: wait a little for the other workers' stats
                deadline = min(deadline, time.monotonic() + 0.3)
    if not seen:
        print(f"no engine stats on {args.addr} within {args.timeout} s (is `telediag run` up?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(seen, indent=2, default=str))
        return 0
    workers = [b for n, b in seen.items() if n.startswith("engine/w")]
    if len(workers) > 1:  # worker threads or processes: one line for the whole engine
        from telediag.engine.stats import aggregate

        agg = aggregate(workers)
        lat = agg["latency_ms"]
        print(f"engine (all {agg['workers']} workers): {agg['streams']} streams, latency p50 {lat['p50']:.2f} ms "
              f"p99 {lat['p99']:.2f} ms max {lat['max']:.2f} ms (n={lat['count']})"
              f"{', worker process restarts ' + str(agg['process_restarts']) if agg['process_restarts'] else ''}")
    for name, body in sorted(seen.items()):
        lat = body.get("latency_ms", {})
        print(f"{name}: up {body.get('uptime_s', 0):.1f} s, latency p50 {lat.get('p50', 0):.2f} ms "
              f"p99 {lat.get('p99', 0):.2f} ms max {lat.get('max', 0):.2f} ms (n={lat.get('count', 0)})")
        rej = body.get("rejects") or {}
        if rej:
            print(f"  rejected messages: {rej}")
        if body.get("errors"):
            print(f"  stage errors: {body['errors']}")
        for sid, s in sorted((body.get("streams") or {}).items()):
            sl = s.get("latency_ms", {})
            print(f"  {s.get('kind', '?'):5} {sid:<28} chunks {s['chunks_in']:>8} samples {s['samples_in']:>10} "
                  f"out {s['chunks_out']:>8} gaps {s['gaps']} (missing {s['missing_chunks']}) "
                  f"ooo {s['out_of_order']} errors {s['errors']} drops {s['drops']} "
                  f"p50 {sl.get('p50', 0):.2f} p99 {sl.get('p99', 0):.2f} ms")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from telediag.engine.warmup import import_scipy_signal

    import_scipy_signal()  # before the stages import it: engine start-up time (issue 18)
    from telediag.demo import run_demo

    return run_demo(args)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``argv``, only the plugged module that ``argv`` selects is imported."""
    from telediag import __version__

    p = argparse.ArgumentParser(
        prog="telediag",
        description="Real-time signal processing and telediagnosis engine (ECG, heart sounds, endoscopy).",
    )
    p.add_argument("--version", action="version", version=f"telediag {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run the engine", description=(
        "Run the engine: sources PUSH to the ingest address, viewers SUB to the publish address. "
        f"Defaults: ingest {DEFAULT_INGEST}, publish {DEFAULT_PUBLISH}, stats on topic stats/engine/w<N>, "
        "events on event/<stream>. SIGINT/SIGTERM drain queues and exit."))
    r.add_argument("--config", metavar="FILE", help="TOML config (built-in default when omitted)")
    r.add_argument("--ingest", type=endpoint_arg, metavar="ADDR", help="override [engine].ingest")
    r.add_argument("--publish", type=endpoint_arg, metavar="ADDR", help="override [engine].publish")
    r.add_argument("--ray", metavar="ADDRESS", help="workers as Ray actors on this Ray cluster (e.g. 10.0.0.5:6379 "
                   "or auto); sets [cluster].ray_address, needs pip install 'telediag[cluster]'")
    r.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("source", help="source agents (replay recordings or capture devices)")
    ss = s.add_subparsers(dest="source", metavar="KIND")
    ss.required = True
    e = ss.add_parser("ecg", help="replay an ECG recording (WFDB, EDF or CSV)", description=(
        "Replay an ECG recording to the engine at real time (--speed 1), N x real time, or as fast as "
        "the engine accepts (--speed max; lossless: the agent blocks when the engine's queue is full)."))
    e.add_argument("--wfdb", metavar="RECORD", help="WFDB record path without extension (e.g. ../shared/data/mitdb/101)")
    e.add_argument("--edf", metavar="FILE", help="EDF/EDF+ file")
    e.add_argument("--csv", metavar="FILE", help="CSV with a header row; first column 'time' (s) or give --fs")
    e.add_argument("--fs", type=float, help="sample rate for CSV input without a time column")
    e.add_argument("--leads", metavar="I,J", help="channel indices to send (default all)")
    e.add_argument("--speed", default="1", help="1 (real time), N (N x), or max (default 1)")
    e.add_argument("--chunk-ms", type=float, default=100.0, help="chunk length in ms (default 100)")
    e.add_argument("--connect", type=endpoint_arg, default=DEFAULT_INGEST, metavar="ADDR", help=f"engine ingest (default {DEFAULT_INGEST})")
    e.add_argument("--stream", help="stream id (default <record>/ecg)")
    e.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="fail when no engine answers within S seconds (default 60; 0: wait for it)")
    e.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="sample type on the wire")
    e.add_argument("--seconds", type=float, help="send only the first S seconds of the recording")
    e.add_argument("--loop", action="store_true", help="start over at the end, forever")
    e.add_argument("--patient", help="patient id sent in every chunk's meta (FHIR/EDF+ exports and reports use it)")
    e.add_argument("--encounter", help="encounter id sent in every chunk's meta")
    add_curve_arguments(e)
    e.set_defaults(func=_cmd_source_ecg)

    t = sub.add_parser("tail", help="print a one-line-per-second summary per stream", description=(
        "Subscribe to an engine and print, every period, one line per stream: message and sample rates, "
        "last seq, lost messages, and the latest annotation."))
    t.add_argument("addr", type=endpoint_arg, nargs="?", default=DEFAULT_PUBLISH, help=f"publish address (default {DEFAULT_PUBLISH})")
    t.add_argument("topic", nargs="?", default="", help="topic prefix (default: everything)")
    t.add_argument("--period", type=float, default=1.0, help="seconds between summaries")
    t.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: never)")
    t.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="exit when nothing, not even the engine's periodic stats, arrives for S seconds "
                        "(default 30; 0: never)")
    t.add_argument("--gone-s", type=float, default=2.0, metavar="S", help=argparse.SUPPRESS)
    add_curve_arguments(t)
    t.set_defaults(func=_cmd_tail)

    st = sub.add_parser("status", help="show engine counters and latency percentiles", description=(
        "Read the engine's stats topic and print per-stream counters (chunks, samples, gaps, errors, "
        "drops) and source-to-publish latency percentiles."))
    st.add_argument("addr", type=endpoint_arg, nargs="?", default=DEFAULT_PUBLISH, help=f"publish address (default {DEFAULT_PUBLISH})")
    st.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for stats")
    st.add_argument("--json", action="store_true", help="print the raw stats as JSON")
    st.add_argument("--once", action="store_true", default=True, help=argparse.SUPPRESS)
    add_curve_arguments(st)
    st.set_defaults(func=_cmd_status)

    d = sub.add_parser("demo", help="the main job: engine + ECG, heart-sound and video sources + web viewer",
                       description=(
                           "Start the engine (beat classification on) and replay bundled real recordings "
                           "through it as live sources: ECG (MIT-BIH 119 -> ecg/bed-1/ecg), heart sounds with "
                           "simultaneous ECG (PhysioNet 2016 a0020 -> pcg/bed-2/pcg, ecg/bed-2/ecg) and a "
                           "synthetic endoscopy clip (video/room-3/endo, polyp segmentation). Serves the live web "
                           "viewer, prints a per-stream summary every second and records the session. Its own "
                           "ports (ingest 5565, publish 5566, viewer 8080) leave the defaults of `telediag run` "
                           "(5555/5556) free."))
    d.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60; 0: until Ctrl-C)")
    d.add_argument("--ingest", type=endpoint_arg, default="tcp://127.0.0.1:5565",
                   help="engine ingest address for the demo (default tcp://127.0.0.1:5565)")
    d.add_argument("--publish", type=endpoint_arg, default="tcp://127.0.0.1:5566",
                   help="engine publish address for the demo (default tcp://127.0.0.1:5566)")
    d.add_argument("--viewer-port", type=int, default=8080, metavar="PORT",
                   help="web viewer port on 127.0.0.1 (default 8080; any free port when it is taken; 0: any)")
    d.add_argument("--no-viewer", dest="viewer", action="store_false", help="do not start the web viewer")
    d.add_argument("--speed", default="1", help="replay speed (1, N or max)")
    d.add_argument("--record-dir", default="demo-recording", metavar="DIR",
                   help="record the demo here and write EDF+, a FHIR bundle and the report at the end "
                        "(default demo-recording; '' to not record)")
    d.set_defaults(func=_cmd_demo)

    _add_optional(sub, {"source": ss}, argv)
    return p


# Subcommands that live beside their subsystems: (parent, name, module, help).
# Each module provides ``add_arguments(parser)`` and ``run(args) -> int``; a module that
# is not there (a modality not built yet) simply leaves its subcommand out.
PLUGGED: list[tuple[str | None, str, str, str]] = [
    (None, "score", "telediag.evaluation.score_cli", "EC57 beat-by-beat scoring of annotation files"),
    (None, "devices", "telediag.sources.devices_cli", "list audio input devices (stethoscopes)"),
    ("source", "pcg", "telediag.sources.pcg_cli", "capture a stethoscope (PyAudio) or replay WAV/WFDB heart sounds"),
    ("source", "video", "telediag.sources.video_cli", "send endoscope video (file, camera, RTSP, UDP) with PyAV"),
    ("analyze", "ecg", "telediag.evaluation.ecg_cli", "offline ECG analysis (beats, HR, HRV, quality) to JSON/WFDB"),
    ("analyze", "pcg", "telediag.evaluation.pcg_cli", "offline heart-sound analysis (S1/S2 segmentation, HR, abnormality)"),
    ("analyze", "image", "telediag.evaluation.image_cli", "offline polyp segmentation of images"),
    ("analyze", "video", "telediag.evaluation.video_cli", "offline polyp segmentation of a video file"),
    (None, "viewer", "telediag.viewer.cli", "serve the live web viewer"),
    (None, "infer", "telediag.api.cli", "call the inference API"),
    (None, "api", "telediag.api.serve_cli", "serve the inference API (ZeroMQ and HTTP)"),
    (None, "record", "telediag.recorder.cli", "record streams and annotations to WFDB/WAV/MP4"),
    (None, "keys", "telediag.transports.keys_cli", "CurveZMQ key generation and allow-lists"),
    (None, "bench", "telediag.evaluation.bench_cli", "run the benchmark suites and write a report"),
    (None, "harness", "telediag.evaluation.harness_cli", "run any detector on a directory of records and score it (EC57)"),
    (None, "fhir", "telediag.exports.fhir_cli", "FHIR R4 Bundle of a recording or analysis; live exporter"),
    (None, "export", "telediag.exports.edf_cli", "EDF+/BDF+ files of a recording folder (signals + annotations)"),
    (None, "report", "telediag.report.cli", "teleconsultation report (PDF/HTML) of a recorded session"),
    ("source", "lsl", "telediag.sources.lsl", "turn a Lab Streaming Layer stream into a telediag stream"),
    (None, "lsl-out", "telediag.client.lsl_out", "republish engine outputs as Lab Streaming Layer outlets"),
]


def _load(module: str):  # noqa: ANN202
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return None
        raise


def _selected(argv: Sequence[str] | None) -> tuple[str | None, str | None] | None:
    """The ``(parent, name)`` a command line selects, from its first words (no parsing); ``None``
    when unknown (``argv`` not given: every plugged module is loaded)."""
    if argv is None:
        return None
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return (None, None)
    if words[0] in ("source", "analyze"):
        return (words[0], words[1] if len(words) > 1 else None)
    return (None, words[0])


def _add_optional(sub: argparse._SubParsersAction, parents: dict[str, argparse._SubParsersAction],
                  argv: Sequence[str] | None = None) -> None:
    """Add the plugged subcommands. With ``argv``, only the module of the subcommand it selects is
    imported (the others are listed with their help line): ``telediag run`` does not pay for
    importing the viewer's web server, the API or the evaluation tools (cold start, issue 18)."""
    wanted = _selected(argv)
    for parent, name, module, help_text in PLUGGED:
        lazy = wanted is not None and wanted != (parent, name)
        mod = None if lazy else _load(module)
        if mod is None and not lazy:
            continue
        if parent is None:
            target = sub
        else:
            if parent not in parents:
                pp = sub.add_parser(parent, help=f"{parent} subcommands")
                ps = pp.add_subparsers(dest=parent, metavar="KIND")
                ps.required = True
                parents[parent] = ps
            target = parents[parent]
        if mod is None:
            target.add_parser(name, help=help_text)
            continue
        p = target.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().split("\n\n")[0])
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TelediagError as e:
        print(f"telediag: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a socket error (zmq.ZMQError: address in use, ...) or an OSError: one line
        import zmq

        if not isinstance(e, (OSError, zmq.ZMQError)):
            raise
        print(f"telediag: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
