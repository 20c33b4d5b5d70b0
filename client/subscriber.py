"""Subscriber client and the ``telediag tail`` summary."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from telediag.errors import ProtocolError
from telediag.transports.wire import Chunk, decode

DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


class Subscriber:
    """Subscribe to an engine's publish endpoint and decode chunks.

    Parameters
    ----------
    addr : str
        The engine's publish address (default ``tcp://127.0.0.1:5556``).
    topics : iterable of str
        Topic prefixes (``"ecg/"``, ``"beats/bed-12"``, ``""`` for everything).
    rcvhwm : int
        Messages queued before this subscriber starts losing messages (the engine
        never waits for a slow subscriber); gaps show up as jumps in ``seq``.

    curve_secret, server_key : str, optional
        With CurveZMQ on: this client's ``.key_secret`` file and the engine's ``.key``.

    Messages that fail to decode are counted in ``bad`` (never raised).
    """

    def __init__(
        self,
        addr: str = DEFAULT_PUBLISH,
        topics: Iterable[str] = ("",),
        *,
        rcvhwm: int = 200_000,
        ctx: zmq.Context | None = None,
        curve_secret: str | None = None,
        server_key: str | None = None,
    ) -> None:
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_secret or server_key:
            from telediag.transports.security import secure_client

            if not (curve_secret and server_key):
                from telediag.errors import ConfigError

                raise ConfigError("CurveZMQ needs both curve_secret (your .key_secret) and server_key (engine .key)")
            secure_client(self.sock, curve_secret, server_key)
        self.sock.connect(addr)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.bad: dict[str, int] = {}
        self.received = 0

    def recv(self, timeout_s: float | None = None) -> Chunk | None:
        """The next decodable chunk, or ``None`` after ``timeout_s`` without one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining is not None and not self.sock.poll(int(remaining * 1000)):
                return None
            frames = self.sock.recv_multipart(copy=False)
            try:
                chunk = decode(frames)
            except ProtocolError as e:
                self.bad[e.reason] = self.bad.get(e.reason, 0) + 1
                continue
            self.received += 1
            return chunk

    def iter(self, timeout_s: float | None = None) -> Iterator[Chunk]:
        """Yield chunks until ``timeout_s`` passes with none (forever if ``None``)."""
        while True:
            c = self.recv(timeout_s)
            if c is None:
                return
            yield c

    def __iter__(self) -> Iterator[Chunk]:
        return self.iter()

    def wait_connected(self, timeout_s: float = 5.0, probe_topic: str = "stats/") -> bool:
        """Block until a message (e.g. periodic engine stats) shows the link is up.

        SUB sockets lose what is published before their subscription reaches the
        engine (the ZeroMQ "slow joiner"); call this before starting sources when
        every message matters. Subscribes to ``probe_topic`` for the duration.
        """
        self.sock.setsockopt(zmq.SUBSCRIBE, probe_topic.encode())
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.sock.poll(50):
                    frames = self.sock.recv_multipart(copy=False)
                    if frames and frames[0].bytes.startswith(probe_topic.encode()):
                        return True
            return False
        finally:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, probe_topic.encode())

    def close(self) -> None:
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(slots=True)
class _TailStream:
    chunks: int = 0
    samples: int = 0
    last_seq: int = -1
    lost: int = 0
    rate_hz: float = 0.0
    shape: tuple[int, ...] = ()
    last_body: Any = None
    latency_ms: list[float] = field(default_factory=list)


class TailSummary:
    """Aggregates chunks into one line per stream per reporting period."""

    def __init__(self) -> None:
        self.streams: dict[str, _TailStream] = {}

    def add(self, c: Chunk) -> None:
        s = self.streams.setdefault(c.topic, _TailStream())
        if s.last_seq >= 0 and c.seq > s.last_seq + 1:
            s.lost += c.seq - s.last_seq - 1
        s.last_seq = c.seq
        s.chunks += 1
        s.samples += c.n_samples
        if c.rate_hz:
            s.rate_hz = c.rate_hz
        if c.data is not None:
            s.shape = tuple(c.data.shape)
        if c.body is not None:
            s.last_body = c.body
        pub = c.meta.get("pub_ns") if c.meta else None
        if isinstance(pub, int):
            s.latency_ms.append((time.time_ns() - pub) / 1e6)

    def lines(self, period_s: float) -> list[str]:
        out = []
        for topic in sorted(self.streams):
            s = self.streams[topic]
            if s.chunks == 0:
                continue
            parts = [f"{topic:<32}", f"{s.chunks / period_s:7.1f} msg/s", f"seq {s.last_seq}"]
            if s.rate_hz:
                parts.append(f"{s.samples / period_s:9.1f} samples/s ({s.rate_hz:g} Hz, {s.shape[1:] if len(s.shape) > 1 else ''})")
            if s.lost:
                parts.append(f"LOST {s.lost}")
            if s.last_body is not None and not s.rate_hz:
                parts.append(_short(s.last_body))
            out.append("  ".join(parts))
            s.chunks = s.samples = 0
            s.latency_ms.clear()
        return out


def _describe(body: Any) -> str | None:
    """A human summary of well-known annotation bodies (None: fall back to the raw text)."""
    if not isinstance(body, dict):
        return None
    if "readings" in body and body["readings"]:
        r = body["readings"][-1]
        hr = r.get("hr_bpm")
        return f"HR {hr:.0f} bpm" if isinstance(hr, (int, float)) else "HR --"
    if "beats" in body:
        beats = body["beats"] or []
        labels = "".join(str(b.get("label") or "?") for b in beats[-12:])
        return f"{len(beats)} beat(s) {labels}"
    if "blocks" in body and body["blocks"]:
        b = body["blocks"][-1]
        sqi = b.get("sqi")
        if isinstance(sqi, list):
            return "SQI " + " ".join(f"{v:.2f}" if isinstance(v, (int, float)) else "--" for v in sqi) + (
                "" if all(b.get("usable", [True])) else "  UNUSABLE")
    if "latency_ms" in body and "streams" in body:
        lat = body["latency_ms"]
        rej = sum((body.get("rejects") or {}).values())
        return (f"worker {body.get('worker')}: {len(body['streams'])} stream(s), latency p50 {lat.get('p50', 0):.1f} "
                f"p99 {lat.get('p99', 0):.1f} ms, rejected {rej}")
    if "type" in body:
        return f"{body['type']} " + ", ".join(f"{k}={v}" for k, v in body.items() if k not in ("type", "worker"))[:80]
    return None


def _short(body: Any, limit: int = 90) -> str:
    described = _describe(body)
    if described is not None:
        body = described
    text = str(body)
    return text if len(text) <= limit else text[: limit - 3] + "..."
