"""Subscriber client, per-topic drop counting, and the ``telediag tail`` summary.

ZeroMQ PUB sockets drop silently, per subscriber, when that subscriber's queue is at its
high-water mark (the engine never waits for a slow reader). The publisher cannot see those
drops, but the subscriber can: every published message carries a per-topic ``seq`` that
counts up by one, so a jump of ``k`` is ``k`` lost messages. :class:`SeqTracker` counts them
per topic; :class:`Subscriber` runs one on everything it receives (``stats()``), and
``telediag tail`` prints them.

A loss at the very end of a topic (its last messages) shows only when a later message of
that topic arrives; periodic topics such as ``stats/`` reveal a stalled link at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq

from telediag.errors import ProtocolError
from telediag.transports.wire import Chunk, decode, to_physical

DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


@dataclass(slots=True)
class TopicCounters:
    """Sequence bookkeeping of one topic as seen by one subscriber.

    Attributes
    ----------
    received : int
        Messages received.
    drops : int
        Messages missing in ``seq`` gaps (lost between publisher and this subscriber).
    gaps : int
        Number of jumps in ``seq`` (each jump holds one or more drops).
    restarts : int
        Times ``seq`` went back (the publisher restarted and counts from 0 again); the
        count restarts there and nothing is counted as dropped.
    last_seq : int
        Latest ``seq`` (-1 before the first message).
    """

    received: int = 0
    drops: int = 0
    gaps: int = 0
    restarts: int = 0
    last_seq: int = -1

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "drops": self.drops, "gaps": self.gaps,
                "restarts": self.restarts, "last_seq": self.last_seq}


class SeqTracker:
    """Count drops and gaps per topic from the per-topic ``seq`` of received messages.

    Examples
    --------
    >>> t = SeqTracker()
    >>> [t.observe("hr/bed-1", s) for s in (0, 1, 4, 5, 9)]
    [0, 0, 2, 0, 3]
    >>> t.drops, t.gaps, t.topics["hr/bed-1"].received
    (5, 2, 5)
    >>> t.observe("hr/bed-1", 0)  # publisher restarted: not a drop
    0
    >>> t.topics["hr/bed-1"].restarts
    1
    """

    __slots__ = ("topics",)

    def __init__(self) -> None:
        self.topics: dict[str, TopicCounters] = {}

    def observe(self, topic: str, seq: int) -> int:
        """Account one message; return how many messages were missing right before it."""
        t = self.topics.get(topic)
        if t is None:
            t = self.topics[topic] = TopicCounters()
        t.received += 1
        missing = 0
        if t.last_seq >= 0:
            if seq > t.last_seq + 1:
                missing = seq - t.last_seq - 1
                t.drops += missing
                t.gaps += 1
            elif seq <= t.last_seq:
                t.restarts += 1
        t.last_seq = seq
        return missing

    @property
    def drops(self) -> int:
        """Messages lost, all topics."""
        return sum(t.drops for t in self.topics.values())

    @property
    def gaps(self) -> int:
        """Seq gaps, all topics."""
        return sum(t.gaps for t in self.topics.values())

    @property
    def received(self) -> int:
        return sum(t.received for t in self.topics.values())

    def stats(self) -> dict[str, Any]:
        """Totals and the per-topic counters as plain data."""
        return {"received": self.received, "drops": self.drops, "gaps": self.gaps,
                "restarts": sum(t.restarts for t in self.topics.values()),
                "topics": {k: v.as_dict() for k, v in sorted(self.topics.items())}}


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
    sockopts : mapping of int to int, optional
        Extra socket options set before connecting (e.g. ``{zmq.RCVBUF: 65536}``).
    physical : bool
        Deliver integer signal chunks that carry ``meta.gain`` (and ``meta.baseline``) in
        physical units: float64 ``(adu - baseline) / gain`` (:func:`telediag.transports.wire.physical`),
        with ``gain``/``baseline`` removed from ``meta``. A chunk whose gain is malformed is
        counted in ``bad`` (reason ``bad_field``) and skipped.

    Messages that fail to decode are counted in ``bad`` (never raised). Every decoded
    message goes through a :class:`SeqTracker` (:attr:`seq`): :meth:`stats` gives the
    messages this subscriber lost (``drops``) and in how many ``gaps``, per topic.

    Examples
    --------
    >>> with Subscriber("tcp://127.0.0.1:5556", ["ecg/"]) as sub:  # doctest: +SKIP
    ...     chunks = list(sub.iter(timeout_s=2))
    ...     print(sub.stats()["drops"], sub.drops, sub.gaps)
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
        sockopts: Mapping[int, int] | None = None,
        physical: bool = False,
    ) -> None:
        self._own_ctx = ctx is None
        self.physical = physical
        from telediag.transports.sockets import endpoint

        addr = endpoint(addr)  # "host:port" = tcp://host:port; anything else unclear is a ConfigError
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        for opt, value in (sockopts or {}).items():
            self.sock.setsockopt(opt, value)
        if curve_secret or server_key:
            from telediag.transports.security import secure_client

            if not (curve_secret and server_key):
                from telediag.errors import ConfigError

                raise ConfigError("CurveZMQ needs both curve_secret (your .key_secret) and server_key (engine .key)")
            secure_client(self.sock, curve_secret, server_key)
        self.sock.connect(addr)
        self.topics = [t.encode() for t in topics]
        for t in self.topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t)
        self.bad: dict[str, int] = {}
        self.received = 0
        self.seq = SeqTracker()
        self._pending: deque[list[zmq.Frame]] = deque()

    def recv(self, timeout_s: float | None = None) -> Chunk | None:
        """The next decodable chunk, or ``None`` after ``timeout_s`` without one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._pending:
                frames = self._pending.popleft()
            else:
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
            self.seq.observe(chunk.topic, chunk.seq)
            if self.physical and chunk.data is not None and "gain" in chunk.meta and chunk.kind in ("ecg", "pcg"):
                try:
                    chunk = to_physical(chunk)
                except ProtocolError as e:
                    self.bad[e.reason] = self.bad.get(e.reason, 0) + 1
                    continue
            return chunk

    @property
    def drops(self) -> int:
        """Messages this subscriber lost (seq gaps), all topics."""
        return self.seq.drops

    @property
    def gaps(self) -> int:
        """Seq gaps seen, all topics."""
        return self.seq.gaps

    def stats(self) -> dict[str, Any]:
        """``received``, ``drops``, ``gaps``, ``restarts``, ``bad`` and per-topic counters.

        Examples
        --------
        >>> sub = Subscriber("inproc://doc-nothing")
        >>> sub.stats()["drops"], sub.stats()["topics"]
        (0, {})
        >>> sub.close()
        """
        out = self.seq.stats()
        out["bad"] = dict(self.bad)
        return out

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
        probe = probe_topic.encode()
        self.sock.setsockopt(zmq.SUBSCRIBE, probe)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.sock.poll(50):
                    frames = self.sock.recv_multipart(copy=False)
                    topic = frames[0].bytes if frames else b""
                    if any(topic.startswith(t) for t in self.topics):
                        self._pending.append(frames)  # ours: keep it for recv(), nothing lost
                    if topic.startswith(probe):
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
    rate_hz: float = 0.0
    shape: tuple[int, ...] = ()
    last_body: Any = None
    latency_ms: list[float] = field(default_factory=list)


class TailSummary:
    """Aggregates chunks into one line per stream per reporting period.

    Each line ends with the messages this subscriber lost on that topic so far
    (``DROPPED n in g gap(s)``, from ``seq`` gaps); a last line gives the totals.

    Examples
    --------
    >>> s = TailSummary()
    >>> for seq in (0, 1, 5):
    ...     s.add(Chunk.record("hr", "bed-1/ecg", seq, 0, {"bpm": 60}))
    >>> for line in s.lines(1.0):
    ...     print(line)  # doctest: +NORMALIZE_WHITESPACE
    hr/bed-1/ecg        3.0 msg/s  seq 5  DROPPED 3 in 1 gap(s)  {'bpm': 60}
    subscriber: 3 received, 3 dropped in 1 gap(s), 0 publisher restart(s)
    """

    def __init__(self) -> None:
        self.streams: dict[str, _TailStream] = {}
        self.seq = SeqTracker()

    def add(self, c: Chunk) -> None:
        s = self.streams.setdefault(c.topic, _TailStream())
        self.seq.observe(c.topic, c.seq)
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
            counters = self.seq.topics[topic]
            parts = [f"{topic:<32}", f"{s.chunks / period_s:7.1f} msg/s", f"seq {counters.last_seq}"]
            if s.rate_hz:
                parts.append(f"{s.samples / period_s:9.1f} samples/s ({s.rate_hz:g} Hz, {s.shape[1:] if len(s.shape) > 1 else ''})")
            if counters.drops:
                parts.append(f"DROPPED {counters.drops} in {counters.gaps} gap(s)")
            if s.last_body is not None and not s.rate_hz:
                parts.append(_short(s.last_body))
            out.append("  ".join(parts))
            s.chunks = s.samples = 0
            s.latency_ms.clear()
        if out:
            st = self.seq.stats()
            out.append(f"subscriber: {st['received']} received, {st['drops']} dropped in {st['gaps']} gap(s), "
                       f"{st['restarts']} publisher restart(s)")
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

