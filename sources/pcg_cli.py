"""Send heart sounds to the engine: capture a stethoscope on a sound card, or replay a file.

Live capture (PyAudio, the ``audio`` extra)::

    telediag devices                                   # find the input device
    telediag source pcg --device stetho --rate 4000    # capture, stream as pcg/<stream>

Replay a recording at real time, N x, or as fast as the engine accepts::

    telediag source pcg --wav ../shared/data/pcg2016/training-a/a0001.wav --speed max
    telediag source pcg --wfdb ../shared/data/pcg2016/training-a/a0001

Capture counters (input overflows, dropped buffers, device losses and reopens, clipped
samples) travel in every chunk's ``meta`` and are republished by the engine's PCG stage.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import numpy as np

from telediag.errors import TelediagError
from telediag.transports.sockets import endpoint_arg

DEFAULT_INGEST = "tcp://127.0.0.1:5555"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``telediag source pcg``."""
    src = p.add_argument_group("source (exactly one)")
    src.add_argument("--device", metavar="NAME|INDEX", help="audio input device (see `telediag devices`)")
    src.add_argument("--wav", metavar="FILE", help="replay a WAV file")
    src.add_argument("--wfdb", metavar="RECORD", help="replay a WFDB record (path without extension)")
    cap = p.add_argument_group("capture")
    cap.add_argument("--rate", type=int, default=4000, help="sample rate asked of the device, Hz (default 4000)")
    cap.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    cap.add_argument("--frames-per-buffer", type=int, default=None, metavar="N",
                     help="PortAudio buffer = wire chunk size in frames (default 50 ms)")
    cap.add_argument("--format", dest="sample_format", default="int16", choices=["int16", "float32"],
                     help="sample format asked of the device and sent on the wire (default int16, units adu)")
    cap.add_argument("--queue-buffers", type=int, default=None, metavar="N",
                     help="capture ring capacity in buffers (default 10 s of audio)")
    cap.add_argument("--duration", type=float, default=None, metavar="S",
                     help="stop after exactly S seconds of samples (default: until Ctrl-C)")
    cap.add_argument("--verbose", action="store_true", help="keep ALSA's diagnostics on stderr")
    cap.add_argument("--stall-s", type=float, default=2.0,
                     help="a device silent for this long is treated as lost and reopened (default 2)")
    rep = p.add_argument_group("replay")
    rep.add_argument("--speed", default="1", help="1 (real time), N (N x), or max (default 1)")
    rep.add_argument("--chunk-ms", type=float, default=100.0, help="chunk length in ms (default 100)")
    rep.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="sample type on the wire")
    rep.add_argument("--loop", action="store_true", help="start over at the end, forever")
    p.add_argument("--connect", type=endpoint_arg, default=DEFAULT_INGEST, metavar="ADDR",
                   help=f"engine ingest address (default {DEFAULT_INGEST})")
    p.add_argument("--stream", metavar="ID", help="stream id (default <device or record>/pcg)")
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="replay: fail when no engine answers within S seconds (default 60; 0: wait)")
    from telediag.transports.security import add_curve_arguments

    add_curve_arguments(p)


def _stream_id(text: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text).strip("-") or "stetho"
    return f"{safe}/pcg"


def recording_of(path: str, wfdb: bool = False):  # noqa: ANN201 - Recording, imported lazily
    """A :class:`~telediag.sources.readers.Recording` of a WAV file or WFDB record (one channel).

    WAV samples are scaled to full scale (units ``FS``, in [-1, 1]); WFDB keeps its physical
    units as read by ``wfdb`` (labelled ``FS`` too when the header gives none).

    Examples
    --------
    >>> rec = recording_of("../shared/data/pcg2016/training-a/a0001.wav")  # doctest: +SKIP
    >>> rec.fs, rec.channels
    (2000.0, ('PCG',))
    """
    from telediag.sources.readers import Recording, read_pcg, read_wav

    if wfdb:
        p = Path(path)
        stem = p.with_suffix("") if p.suffix.lower() in (".hea", ".dat") else p
        if not stem.with_suffix(".hea").is_file():
            raise TelediagError(f"--wfdb {path}: no WFDB header {stem.with_suffix('.hea')}")
        x, fs = read_pcg(stem)
        name = stem.name
    else:
        x, fs = read_wav(path)
        name = Path(path).stem
    if x.size == 0:
        raise TelediagError(f"{path}: no samples")
    return Recording(np.ascontiguousarray(x[:, None]), float(fs), ("PCG",), ("FS",), name)


def run(args: argparse.Namespace) -> int:
    """Run ``telediag source pcg``."""
    from telediag.sources.replay import install_stop_signals, parse_speed, replay

    given = [x for x in (args.device, args.wav, args.wfdb) if x is not None]
    if len(given) != 1:
        raise TelediagError("give exactly one of --device NAME|INDEX, --wav FILE, --wfdb RECORD")
    stop = threading.Event()
    install_stop_signals(stop)
    if args.device is not None:
        from telediag.sources.audio import AudioCapture, quiet_alsa

        if not args.verbose:
            quiet_alsa()
        cap = AudioCapture(
            args.device, args.connect, args.stream or _stream_id(str(args.device)),
            rate_hz=args.rate, channels=args.channels, frames_per_buffer=args.frames_per_buffer,
            sample_format=args.sample_format, queue_buffers=args.queue_buffers,
            duration_s=args.duration, stall_s=args.stall_s,
            curve_secret=args.curve_secret, server_key=args.server_key,
        )
        res = cap.run(stop)
        if not res.reached:
            print(f"telediag source pcg: error: no engine reached at {args.connect}; nothing was delivered "
                  "(is `telediag run` up on that address?)", file=sys.stderr, flush=True)
            return 1
        c = res.counters
        print(f"telediag source pcg: sent {res.chunks} chunks, {res.frames} frames in {res.elapsed_s:.2f} s; "
              f"overflows {c.overflows}, dropped buffers {c.dropped_buffers} ({c.dropped_frames} frames), "
              f"device lost {c.device_lost}, reopens {c.reopens}, clipped {c.clipped}"
              f"{' (interrupted)' if res.interrupted else ''}", flush=True)
        return 0
    rec = recording_of(args.wfdb, wfdb=True) if args.wfdb else recording_of(args.wav)
    speed = parse_speed(args.speed)
    stream = args.stream or _stream_id(rec.name)
    print(f"telediag source pcg: {rec.name} at {rec.fs:g} Hz, {rec.duration_s:.1f} s -> {args.connect} "
          f"as pcg/{stream}, speed {args.speed}", flush=True)
    r = replay(rec, kind="pcg", stream=stream, connect=args.connect, speed=speed,
               chunk_ms=args.chunk_ms, dtype=args.dtype, loop=args.loop, stop=stop,
               curve_secret=args.curve_secret, server_key=args.server_key,
               connect_timeout_s=args.connect_timeout or None,
               on_waiting=lambda s: print(f"telediag source pcg: no engine at {args.connect} yet; "
                                          f"waiting (up to --connect-timeout {args.connect_timeout:g} s)",
                                          file=sys.stderr, flush=True))
    if not r.reached:
        print(f"telediag source pcg: error: no engine reached at {args.connect}; nothing was delivered "
              "(is `telediag run` up on that address?)", file=sys.stderr, flush=True)
        return 1
    print(f"telediag source pcg: sent {r.chunks} chunks, {r.samples} samples in {r.elapsed_s:.2f} s"
          f"{' (interrupted)' if r.interrupted else ''}", flush=True)
    return 0
