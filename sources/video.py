"""Video source agent: a file, camera, RTSP or UDP feed to the engine, with PyAV.

The agent decodes its input with FFmpeg (PyAV) and sends one wire chunk per picture:

* ``codec="h264"`` (default): re-encoded with :class:`~telediag.transports.video_codec.H264Encoder`
  (libx264 ``tune=zerolatency``, ``preset=ultrafast``, no B-frames, a keyframe every
  ``keyint`` frames, Annex-B with SPS/PPS repeated before each keyframe), one chunk per
  access unit: ``Chunk.video_packet(stream, seq, t0_ns, packet, VideoSpec("h264", w, h,
  "yuv420p", fps, keyframe))``. An engine or viewer that joins late decodes from the next
  keyframe, at most ``keyint`` frames away.
* ``codec="raw"``: RGB frames as arrays (``VideoSpec("raw", w, h, "rgb24", fps, True)``).

Timing (``t0_ns``, the source clock at capture, Unix ns):

* live inputs (``/dev/videoN``, ``rtsp://``, ``udp://``, any other ``scheme://``): the wall
  clock when the picture is decoded (the closest to capture the agent can know);
* files: paced to real time (``speed=1``) or N x real time, ``t0_ns`` = the wall clock at
  the frame's presentation; with ``speed=inf`` (``--speed max``) as fast as the engine
  accepts, ``t0_ns`` = start time + the frame's media time (the clip's own timeline).

Every chunk's ``meta`` carries ``session`` (random per run, so the engine tells a restarted
agent from a gap), ``sent_ns`` (wall clock at send) and ``frame`` (input frame index).

Video is latest-frame-wins end to end: the agent never queues more than ``hwm`` packets
for a slow or absent engine. When its queue is full it drops the packet, counts it, and
forces the next picture to be a keyframe (non-keyframes are dropped until then), so the
receiver's decoder is never fed a broken reference chain. A dropped packet still takes its
``seq`` number, so the receiver sees the loss as a gap and counts it.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import zmq

from telediag.errors import DataError
from telediag.transports.video_codec import H264Encoder
from telediag.transports.wire import Chunk, VideoSpec, encode

__all__ = ["VideoSourceOptions", "VideoSourceResult", "default_stream_id", "input_kind", "open_input",
           "run_video_source"]

DEFAULT_INGEST = "tcp://127.0.0.1:5555"


@dataclass(frozen=True, slots=True)
class VideoSourceOptions:
    """Options of :func:`run_video_source` (the ``telediag source video`` flags).

    Parameters
    ----------
    input : str
        A file path, ``/dev/videoN``, ``rtsp://...``, ``udp://...`` (any FFmpeg URL).
    connect : str
        Engine ingest address (PUSH connects).
    stream : str, optional
        Stream id (default from the input: :func:`default_stream_id`).
    codec : str
        ``"h264"`` (re-encode) or ``"raw"`` (RGB frames).
    keyint : int
        Keyframe interval in frames (H.264).
    fps : float, optional
        Nominal frame rate (default: the input's; 30 when unknown). For a camera, the rate asked.
    width, height : int, optional
        Scale to this size (one of them keeps the aspect ratio); for a camera, the size asked.
    speed : float
        Files only: 1 real time, N x, ``inf`` as fast as accepted.
    loop : bool
        Files only: start over at the end (timestamps and ``seq`` keep counting).
    duration_s, max_frames : optional
        Stop after this much wall-clock time / this many frames.
    crf : int
        x264 constant rate factor.
    hwm : int
        Packets the agent queues for the engine before dropping (latest-frame-wins).
    open_timeout_s, read_timeout_s : float
        Live inputs: give up opening / reading after this long without data.
    curve_secret, server_key : str, optional
        CurveZMQ: this agent's ``.key_secret`` and the engine's ``.key`` (both or neither).
    """

    input: str
    connect: str = DEFAULT_INGEST
    stream: str | None = None
    codec: str = "h264"
    keyint: int = 30
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    speed: float = 1.0
    loop: bool = False
    duration_s: float | None = None
    max_frames: int | None = None
    crf: int = 23
    hwm: int = 64
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    curve_secret: str | None = None
    server_key: str | None = None

    def __post_init__(self) -> None:
        if self.codec not in ("h264", "raw"):
            raise DataError(f"codec must be 'h264' or 'raw', got {self.codec!r}")
        if not 1 <= self.keyint <= 600:
            raise DataError(f"keyint must be in 1..600 frames, got {self.keyint}")
        if self.fps is not None and not (np.isfinite(self.fps) and 0 < self.fps <= 1000):
            raise DataError(f"fps must be in (0, 1000], got {self.fps}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and not 16 <= v <= 8192:
                raise DataError(f"{name} must be in 16..8192 pixels, got {v}")
        if not self.speed > 0:
            raise DataError(f"speed must be > 0 (inf for max), got {self.speed}")
        if self.hwm < 1:
            raise DataError(f"hwm must be >= 1, got {self.hwm}")
        if (self.curve_secret is None) != (self.server_key is None):
            raise DataError("CurveZMQ needs both --curve-secret (this client's .key_secret) and --server-key "
                            f"(the engine's .key), got {self.curve_secret!r} and {self.server_key!r}")


@dataclass(frozen=True, slots=True)
class VideoSourceResult:
    """What a run sent."""

    frames: int
    packets: int
    bytes_sent: int
    dropped: int
    keyframes: int
    elapsed_s: float
    width: int
    height: int
    fps: float
    interrupted: bool
    error: str = ""
    reached: bool = True  # an engine completed the handshake at some point (else nothing was delivered)


def input_kind(url: str) -> str:
    """``"device"`` (``/dev/video*``), ``"network"`` (``scheme://``) or ``"file"``.

    Examples
    --------
    >>> input_kind("/dev/video0"), input_kind("udp://127.0.0.1:5000"), input_kind("clip.mp4")
    ('device', 'network', 'file')
    """
    if url.startswith("/dev/video"):
        return "device"
    if re.match(r"^[a-z][a-z0-9+.-]*://", url) and not url.startswith("file://"):
        return "network"
    return "file"


def default_stream_id(url: str) -> str:
    """A stream id derived from the input (``clip.mp4`` -> ``clip/endo``).

    Examples
    --------
    >>> default_stream_id("../data/clip 1.mp4"), default_stream_id("udp://127.0.0.1:5000")
    ('clip-1/endo', 'udp-127.0.0.1-5000/endo')
    """
    if input_kind(url) == "file":
        base = Path(url).stem
    else:
        base = re.sub(r"^([a-z0-9+.-]+)://", r"\1-", url.split("?")[0].rstrip("/"))
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "video"
    return f"{base[:100]}/endo"


def open_input(url: str, *, fps: float | None = None, width: int | None = None, height: int | None = None,
               open_timeout_s: float = 10.0, read_timeout_s: float = 5.0) -> Any:
    """Open ``url`` with FFmpeg options suited to it (low-delay for live inputs).

    Raises
    ------
    DataError
        When the input cannot be opened or has no video stream.
    """
    kind = input_kind(url)
    options: dict[str, str] = {}
    fmt = None
    if kind == "device":
        fmt = "v4l2"
        if fps:
            options["framerate"] = f"{fps:g}"
        if width and height:
            options["video_size"] = f"{width}x{height}"
    elif kind == "network":
        options.update({"fflags": "nobuffer", "flags": "low_delay", "probesize": "1000000",
                        "analyzeduration": "1000000"})
        if url.startswith("udp://"):
            options.update({"fifo_size": "100000", "overrun_nonfatal": "1"})
        elif url.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
    try:
        if kind == "file":
            if not Path(url).exists():
                raise DataError(f"video input {url!r} not found")
            container = av.open(url)
        else:
            container = av.open(url, format=fmt, options=options, timeout=(open_timeout_s, read_timeout_s))
    except DataError:
        raise
    except (av.error.FFmpegError, OSError) as e:
        raise DataError(f"cannot open video input {url!r}: {e}") from e
    if not container.streams.video:
        container.close()
        raise DataError(f"video input {url!r} has no video stream")
    st = container.streams.video[0]
    if kind != "file":
        st.codec_context.thread_type = "SLICE"  # frame threads would add a frame of delay each
    return container


def _frames(container: Any) -> Iterator[tuple[av.VideoFrame, float | None]]:
    """Decoded frames and their media time (s), skipping undecodable packets."""
    st = container.streams.video[0]
    for packet in container.demux(st):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue  # a corrupt or reference-less packet (e.g. a feed joined mid-GOP)
        for f in frames:
            yield f, (float(f.time) if f.time is not None else None)


def _target_size(w: int, h: int, width: int | None, height: int | None) -> tuple[int, int]:
    if width and height:
        tw, th = width, height
    elif width:
        tw, th = width, round(h * width / w)
    elif height:
        tw, th = round(w * height / h), height
    else:
        tw, th = w, h
    return max(2, tw & ~1), max(2, th & ~1)


def run_video_source(
    opts: VideoSourceOptions,
    *,
    stop: threading.Event | None = None,
    ctx: zmq.Context | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> VideoSourceResult:
    """Send ``opts.input`` to ``opts.connect`` until it ends, ``stop`` is set or a limit is hit.

    Examples
    --------
    >>> opts = VideoSourceOptions("clip.mp4", connect="tcp://127.0.0.1:5555", speed=float("inf"))
    >>> run_video_source(opts)  # doctest: +SKIP
    """
    stop = stop or threading.Event()
    stream = opts.stream or default_stream_id(opts.input)
    kind = input_kind(opts.input)
    container = open_input(opts.input, fps=opts.fps, width=opts.width, height=opts.height,
                           open_timeout_s=opts.open_timeout_s, read_timeout_s=opts.read_timeout_s)
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, opts.hwm)
    sock.setsockopt(zmq.LINGER, 2000)
    if opts.curve_secret is not None:
        from telediag.transports.security import secure_client_if

        secure_client_if(sock, opts.curve_secret, opts.server_key)
    from telediag.transports.sockets import PeerWatch

    watch = PeerWatch(sock)
    sock.connect(opts.connect)
    session = secrets.token_hex(8)
    vst = container.streams.video[0]
    rate = opts.fps or float(vst.average_rate or vst.guessed_rate or 0) or 30.0
    fps = float(rate)
    t_start = time.monotonic()
    start_ns = time.time_ns()
    frames = packets = bytes_sent = dropped = keyframes = 0
    seq = 0
    size = (0, 0)
    enc: H264Encoder | None = None
    need_key = False
    offset_s = 0.0
    interrupted = False
    error = ""
    paced = kind == "file" and np.isfinite(opts.speed)

    def send(chunk: Chunk, key: bool) -> bool:
        # every packet takes a seq, sent or not: the receiver sees drops as seq gaps
        nonlocal packets, bytes_sent, dropped, keyframes, seq, need_key
        seq += 1
        try:
            sock.send_multipart(encode(chunk), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            dropped += 1
            need_key = True  # the receiver lost a reference: resume with a keyframe
            return False
        packets += 1
        bytes_sent += len(chunk.packet) if chunk.packet is not None else (chunk.data.nbytes if chunk.data is not None else 0)
        keyframes += key
        if on_chunk is not None:
            on_chunk(chunk)
        return True

    try:
        while True:
            t_first: float | None = None
            last_media = 0.0
            try:
                for frame, media_t in _frames(container):
                    if stop.is_set():
                        interrupted = True
                        break
                    if opts.duration_s is not None and time.monotonic() - t_start >= opts.duration_s:
                        break
                    if opts.max_frames is not None and frames >= opts.max_frames:
                        break
                    if media_t is None:
                        media_t = (last_media + 1.0 / fps) if t_first is not None else 0.0
                    if t_first is None:
                        t_first = media_t
                    rel = media_t - t_first
                    last_media = media_t
                    if paced:
                        due = t_start + (offset_s + rel) / opts.speed
                        delay = due - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            interrupted = True
                            break
                    if kind == "file" and not paced:
                        t0 = start_ns + int((offset_s + rel) * 1e9)
                    else:
                        t0 = time.time_ns()
                    w, h = _target_size(frame.width, frame.height, opts.width, opts.height)
                    if (w, h) != size:
                        size = (w, h)
                        enc = None
                    meta = {"session": session, "frame": frames, "sent_ns": 0}
                    if opts.codec == "raw":
                        rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
                        meta["sent_ns"] = time.time_ns()
                        chunk = Chunk(kind="video", stream=stream, seq=seq, t0_ns=t0, data=rgb,
                                      video=VideoSpec("raw", w, h, "rgb24", fps, keyframe=True), meta=meta)
                        send(chunk, True)
                    else:
                        if enc is None:
                            enc = H264Encoder(w, h, fps, keyint=opts.keyint, crf=opts.crf)
                            need_key = False
                        force = need_key
                        for pk in enc.encode(frame, keyframe=force):
                            if need_key and not pk.keyframe:
                                dropped += 1
                                seq += 1
                                continue
                            if pk.keyframe:
                                need_key = False
                            meta = dict(meta, sent_ns=time.time_ns())
                            spec = VideoSpec("h264", w, h, "yuv420p", fps, keyframe=pk.keyframe)
                            send(Chunk.video_packet(stream, seq, t0, pk.data, spec, meta=meta), pk.keyframe)
                    frames += 1
            except (av.error.FFmpegError, OSError) as e:
                error = f"reading {opts.input!r} failed after {frames} frames: {e}"
                break
            if interrupted or not opts.loop or kind != "file":
                break
            if opts.duration_s is not None and time.monotonic() - t_start >= opts.duration_s:
                break
            if opts.max_frames is not None and frames >= opts.max_frames:
                break
            if t_first is None:
                error = f"{opts.input!r} has no decodable frames"
                break
            offset_s += last_media - t_first + 1.0 / fps
            container.close()
            container = open_input(opts.input)
    finally:
        container.close()
        reached = watch.poll() or watch.poll(0.5)  # a handshake may be completing right now
        watch.close(sock)
        sock.close(linger=None if reached else 0)  # never linger for an engine that never answered
        if own_ctx:
            ctx.term()
    return VideoSourceResult(frames, packets, bytes_sent, dropped, keyframes, time.monotonic() - t_start,
                             size[0], size[1], fps, interrupted, error, reached)
