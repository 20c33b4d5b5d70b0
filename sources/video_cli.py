"""Send endoscope video to the engine: a file, a camera, an RTSP or a UDP feed (PyAV).

Examples::

    python -m telediag.sources.synth_endoscopy clip.mp4 --seconds 10   # a synthetic clip
    telediag source video --input clip.mp4 --loop                      # real time, forever
    telediag source video --input /dev/video0 --width 640 --height 480 --fps 30
    telediag source video --input udp://127.0.0.1:5000 --keyint 15
    telediag source video --input rtsp://camera/stream --codec raw

Pictures are re-encoded as low-latency H.264 (libx264 zerolatency, no B-frames, SPS/PPS
before every keyframe) or sent as raw RGB frames; one wire chunk per picture on
``video/<stream>``. See :mod:`telediag.sources.video`.
"""

from __future__ import annotations

import argparse
import sys
import threading

from telediag.errors import DataError
from telediag.transports.sockets import endpoint_arg

DEFAULT_INGEST = "tcp://127.0.0.1:5555"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``telediag source video``."""
    p.add_argument("--input", required=True, metavar="FILE|/dev/videoN|rtsp://…|udp://…",
                   help="video file, V4L2 camera, or network feed (anything FFmpeg opens)")
    p.add_argument("--codec", default="h264", choices=["h264", "raw"],
                   help="h264: re-encode (zerolatency, no B-frames); raw: RGB frames (default h264)")
    p.add_argument("--keyint", type=int, default=30, metavar="N",
                   help="keyframe every N frames: a late joiner waits at most this long (default 30)")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, 0..51, lower is better (default 23)")
    p.add_argument("--fps", type=float, help="nominal frame rate (default: the input's)")
    p.add_argument("--width", type=int, help="scale to this width (alone: keep aspect ratio)")
    p.add_argument("--height", type=int, help="scale to this height (alone: keep aspect ratio)")
    p.add_argument("--speed", default="1", help="files: 1 (real time), N (N x) or max (default 1)")
    p.add_argument("--loop", action="store_true", help="files: start over at the end, forever")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--hwm", type=int, default=64,
                   help="packets queued for a slow engine before dropping (default 64)")
    p.add_argument("--read-timeout", type=float, default=5.0, metavar="S",
                   help="live inputs: give up after S seconds without data (default 5)")
    p.add_argument("--connect", type=endpoint_arg, default=DEFAULT_INGEST, metavar="ADDR",
                   help=f"engine ingest address (default {DEFAULT_INGEST})")
    p.add_argument("--stream", metavar="ID", help="stream id (default <input name>/endo)")
    from telediag.transports.security import add_curve_arguments

    add_curve_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the agent until the input ends, a limit is hit, or SIGINT/SIGTERM."""
    from telediag.sources.replay import install_stop_signals, parse_speed
    from telediag.sources.video import VideoSourceOptions, default_stream_id, run_video_source

    opts = VideoSourceOptions(
        input=args.input, connect=args.connect, stream=args.stream or default_stream_id(args.input),
        codec=args.codec, keyint=args.keyint, fps=args.fps, width=args.width, height=args.height,
        speed=parse_speed(args.speed), loop=args.loop, duration_s=args.duration, max_frames=args.frames,
        crf=args.crf, hwm=args.hwm, read_timeout_s=args.read_timeout,
        curve_secret=args.curve_secret, server_key=args.server_key,
    )
    stop = threading.Event()
    try:
        install_stop_signals(stop)
    except ValueError:  # not the main thread (tests): no signal handlers
        pass
    print(f"telediag source video: {opts.input} -> {opts.connect} as video/{opts.stream} "
          f"({opts.codec}, keyint {opts.keyint}, speed {args.speed})", flush=True)
    res = run_video_source(opts, stop=stop)
    print(f"telediag source video: {res.frames} frames {res.width}x{res.height} @ {res.fps:g} fps, "
          f"{res.packets} packets ({res.keyframes} keyframes, {res.bytes_sent / 1e6:.2f} MB), "
          f"{res.dropped} dropped, {res.elapsed_s:.2f} s{' (interrupted)' if res.interrupted else ''}",
          flush=True)
    if res.error:
        raise DataError(res.error)
    if not res.reached:
        print(f"telediag source video: error: no engine reached at {opts.connect}; nothing was delivered "
              "(is `telediag run` up on that address?)", file=sys.stderr, flush=True)
        return 1
    return 0
