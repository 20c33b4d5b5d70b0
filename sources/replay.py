"""Replay agent: stream a recording to the engine at real time, N x, or max speed.

The agent PUSHes wire-v1 chunks to the engine's ingest address. PUSH/PULL has a
high-water mark, so at ``speed="max"`` the agent sends exactly as fast as the engine
accepts and nothing is dropped. Timestamps follow the record's own timeline
(``t0_ns = start_ns + index / fs``), so annotations line up with the signal whatever
the replay speed; ``meta.sent_ns`` carries the wall-clock send time and
``meta.session`` a random id so the engine can tell a restarted source from a gap.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq

from telediag.errors import DataError, EngineError
from telediag.sources.readers import Recording
from telediag.transports.sockets import PeerWatch
from telediag.transports.wire import Chunk, encode

DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay sent. ``reached``: a peer (the engine) completed the ZMTP handshake at some
    point; when it is false nothing was delivered (chunks queued for an absent engine are
    discarded at close instead of lingering)."""

    chunks: int
    samples: int
    elapsed_s: float
    interrupted: bool
    reached: bool = True


def parse_speed(text: str) -> float:
    """``"1"``, ``"10"``, ``"2.5"`` or ``"max"`` (returned as ``inf``)."""
    if text.strip().lower() == "max":
        return float("inf")
    try:
        v = float(text)
    except ValueError as e:
        raise DataError(f"--speed must be a positive number or 'max', got {text!r}") from e
    if not np.isfinite(v) or v <= 0:
        raise DataError(f"--speed must be a positive number or 'max', got {text!r}")
    return v


def chunks_of(
    rec: Recording,
    kind: str,
    stream: str,
    *,
    chunk_ms: float = 100.0,
    start_ns: int | None = None,
    dtype: str = "float32",
    session: str | None = None,
    first_seq: int = 0,
):
    """Yield ``(end_index, Chunk)`` for consecutive blocks of ``rec`` (send time unset)."""
    if not 0 < chunk_ms <= 60_000:
        raise DataError(f"--chunk-ms must be in (0, 60000], got {chunk_ms}")
    if dtype not in DTYPES:
        raise DataError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    n = max(1, int(round(rec.fs * chunk_ms / 1000.0)))
    start_ns = time.time_ns() if start_ns is None else start_ns
    session = session or secrets.token_hex(8)
    sig = rec.signal.astype(DTYPES[dtype], copy=False)
    seq = first_seq
    for i in range(0, sig.shape[0], n):
        block = np.ascontiguousarray(sig[i : i + n])
        t0 = start_ns + int(round(i * 1e9 / rec.fs))
        yield i + block.shape[0], Chunk.signal(
            kind, stream, seq, t0, block, rec.fs, rec.channels, rec.units,
            meta={"session": session, "source": rec.name},
        )
        seq += 1


def replay(
    rec: Recording,
    *,
    kind: str,
    stream: str,
    connect: str,
    speed: float = 1.0,
    chunk_ms: float = 100.0,
    dtype: str = "float32",
    loop: bool = False,
    stop: threading.Event | None = None,
    ctx: zmq.Context | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
    linger_s: float = 30.0,
    curve_secret: str | None = None,
    server_key: str | None = None,
    start_ns: int | None = None,
    connect_timeout_s: float | None = None,
    meta: dict[str, str] | None = None,
    on_waiting: Callable[[float], None] | None = None,
) -> ReplayResult:
    """Stream ``rec`` to ``connect`` (an engine ingest address).

    Parameters
    ----------
    speed : float
        1.0 for real time, N for N x real time, ``inf`` for as fast as accepted.
    loop : bool
        Start over at the end (timestamps and sequence numbers keep counting up).
    stop : threading.Event, optional
        Set it to stop early; SIGINT/SIGTERM set it when run from the CLI.
    start_ns : int, optional
        Source time of the first sample (default: now). Give several replays of one
        recording the same value so their streams stay aligned.
    connect_timeout_s : float, optional
        Raise :class:`~telediag.errors.EngineError` when no engine has completed a handshake
        this long after the start (``None``: wait as long as the replay runs). Whatever the
        value, a replay that never reached an engine returns ``reached=False`` and drops what it
        queued (it waits, after the last chunk, up to ``linger_s`` or what is left of
        ``connect_timeout_s`` for an engine that is still starting).
    on_waiting : callable, optional
        Called once (with the seconds waited) when no engine has answered 5 s after the start,
        e.g. to tell the user the replay is waiting for one.
    meta : dict, optional
        Extra header ``meta`` on every chunk, e.g. ``{"patient": "MRN-1", "encounter": "E-7"}``;
        the engine echoes it on its outputs, the recorder keeps it, FHIR/EDF+ exports use it.
    """
    extra_meta = dict(meta or {})
    from telediag.transports.sockets import endpoint

    connect = endpoint(connect)  # a clear ConfigError for "localhost" etc. ("host:port" = tcp://)
    own_ctx = ctx is None
    ctx = ctx or zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
    if curve_secret or server_key:
        from telediag.transports.security import secure_client_if

        try:
            secure_client_if(sock, curve_secret, server_key)
        except Exception:
            sock.close(0)
            if own_ctx:
                ctx.term()
            raise
    watch = PeerWatch(sock)
    sock.connect(connect)
    stop = stop or threading.Event()
    session = secrets.token_hex(8)
    t_start = time.monotonic()
    if start_ns is None:
        start_ns = time.time_ns()
    else:  # a shared origin (several signals of one recording): pace from that instant
        t_start -= (time.time_ns() - start_ns) / 1e9
    sent = samples = 0
    seq = 0
    offset_s = 0.0
    interrupted = False
    deadline = None if connect_timeout_s is None else time.monotonic() + connect_timeout_s

    t_watch = time.monotonic()
    noticed = on_waiting is None

    def notice() -> None:
        nonlocal noticed
        if not noticed and time.monotonic() - t_watch >= 5.0:
            noticed = True
            assert on_waiting is not None
            on_waiting(time.monotonic() - t_watch)

    def check_reached() -> None:
        if watch.poll():
            return
        notice()
        if deadline is None or time.monotonic() < deadline:
            return
        raise EngineError(f"no engine reached at {connect} within {connect_timeout_s:g} s (is `telediag run` up, "
                          f"on that address{', and is this key allowed' if curve_secret else ''}?); nothing was delivered")

    try:
        while True:
            for end, chunk in chunks_of(
                rec, kind, stream, chunk_ms=chunk_ms, start_ns=start_ns + int(offset_s * 1e9),
                dtype=dtype, session=session, first_seq=seq,
            ):
                if stop.is_set():
                    interrupted = True
                    break
                if np.isfinite(speed):
                    due = t_start + (offset_s + end / rec.fs) / speed
                    delay = due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        interrupted = True
                        break
                meta = {**chunk.meta, **(extra_meta or {})}
                meta["sent_ns"] = time.time_ns()
                chunk = Chunk.signal(chunk.kind, chunk.stream, chunk.seq, chunk.t0_ns, chunk.data,
                                     chunk.rate_hz, chunk.channels, chunk.units, meta=meta)
                if not _send(sock, chunk, stop, check_reached):
                    interrupted = True
                    break
                if on_chunk is not None:
                    on_chunk(chunk)
                sent += 1
                samples += chunk.n_samples
                seq = chunk.seq + 1
            if interrupted or not loop:
                break
            offset_s += rec.duration_s
        if not watch.poll():  # everything is queued: give a slow (cold-starting) engine the time left
            left = linger_s if deadline is None else min(linger_s, max(0.0, deadline - time.monotonic()))
            end = time.monotonic() + max(left, 0.2)
            while not watch.poll(0.1) and time.monotonic() < end and not stop.is_set():
                notice()
    finally:
        reached = watch.poll()
        watch.close(sock)
        sock.close(linger=None if reached else 0)  # never linger for an engine that never answered
        if own_ctx:
            ctx.term()
    return ReplayResult(sent, samples, time.monotonic() - t_start, interrupted, reached)


def _send(sock: zmq.Socket, chunk: Chunk, stop: threading.Event,
          check: Callable[[], None] | None = None) -> bool:
    """Send, blocking on backpressure but staying responsive to ``stop`` (and ``check``)."""
    frames = encode(chunk)
    if check is not None:
        check()
    while True:
        try:
            sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            if check is not None:
                check()
            if stop.wait(0.002):
                return False


def install_stop_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM set ``stop`` (main thread only)."""

    def handler(signum, frame):  # noqa: ANN001
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
