"""Turn a Lab Streaming Layer (LSL) stream into a telediag stream: ``telediag source lsl``.

``telediag source lsl --name NAME | --type ECG [--kind ecg|pcg] [--stream ID] [--connect ADDR]``

* **Time**: every LSL sample's timestamp (the outlet's ``local_clock``) plus the inlet's
  ``time_correction()`` (the clock offset to this machine, re-measured every
  ``offset_every_s``) is this machine's LSL clock; one reading of ``time.time_ns()`` against
  ``pylsl.local_clock()`` at start maps that to source time in UTC ns. A chunk's ``t0_ns`` is
  its first sample's time on a sample-count timeline (first timestamp + index / rate), so the
  timeline has no jitter and equals what a WFDB replay would send.
* **Chunking**: samples are regrouped into ``chunk_ms`` blocks whatever sizes the outlet
  pushes; nothing is dropped or resampled (lossless, float32 on the wire as LSL delivers it).
* **Gaps**: when a sample's timestamp is more than ``gap_tolerance_s`` later than the
  timeline expects, the samples in between were lost (outlet buffer overrun, network): the
  timeline jumps by that many samples and ``seq`` by as many chunks, so the engine publishes
  a ``gap`` event and the recorder marks the lost range; each gap is also counted and
  printed here.
* Channel labels and units come from the stream's ``desc/channels/channel`` (the XDF
  meta-data convention), else ``ch1..`` and ``--units``.

Needs the ``lsl`` extra (``pip install 'telediag[lsl]'``; the ``pylsl`` wheel ships liblsl).
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from telediag.errors import DataError, TelediagError
from telediag.transports.wire import Chunk

__all__ = ["LslChunker", "GapInfo", "import_pylsl", "run_lsl_source", "add_arguments", "run"]

INSTALL = "pip install 'telediag[lsl]'"


def import_pylsl() -> Any:
    """``pylsl``, or an error that says how to install it."""
    try:
        import pylsl
    except ImportError as e:  # pragma: no cover - the lsl extra installs it
        raise TelediagError(f"the LSL bridge needs pylsl: {INSTALL} ({e})") from e
    return pylsl


@dataclass(slots=True)
class GapInfo:
    """A lost range: ``samples`` missing before sample index ``at`` of the timeline."""

    at: int
    samples: int
    seconds: float


@dataclass
class LslChunker:
    """Regroup LSL samples into telediag chunks on a sample-count timeline (pure, no LSL).

    ``push(samples, times_s)`` takes what ``pull_chunk`` returned (times already on this
    machine's LSL clock) and returns the finished chunks; ``flush()`` the last partial one.
    ``wall0_ns``/``lsl0_s`` map the LSL clock to UTC ns.

    Examples
    --------
    >>> ch = LslChunker("ecg", "lsl/ecg", 100.0, ("I",), ("mV",), chunk_ms=100, wall0_ns=0, lsl0_s=0.0)
    >>> [c.n_samples for c in ch.push(np.zeros((25, 1)), np.arange(25) / 100.0)]
    [10, 10]
    """

    kind: str
    stream: str
    fs: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    chunk_ms: float = 100.0
    wall0_ns: int = 0
    lsl0_s: float = 0.0
    gap_tolerance_s: float = 0.1
    session: str = "lsl"
    seq: int = 0
    gaps: list[GapInfo] = field(default_factory=list)
    samples: int = 0
    _t_first: float | None = None  # LSL-clock time of timeline sample 0
    _index: int = 0  # timeline index of the next sample
    _t_last: float | None = None  # LSL-clock time of the last sample seen
    _buf: list[np.ndarray] = field(default_factory=list)
    _buf_n: int = 0
    _buf_start: int = 0  # timeline index of the buffer's first sample

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fs) and self.fs > 0):
            raise DataError(f"an LSL signal needs a regular sample rate > 0 Hz, got {self.fs!r} "
                            "(irregular-rate marker streams are not signals)")
        if not 0 < self.chunk_ms <= 60_000:
            raise DataError(f"--chunk-ms must be in (0, 60000], got {self.chunk_ms}")
        self.n = max(1, int(round(self.fs * self.chunk_ms / 1000.0)))

    def t_ns(self, index: int) -> int:
        """Source time (UTC ns) of a timeline sample index."""
        assert self._t_first is not None
        return self.wall0_ns + int(round((self._t_first + index / self.fs - self.lsl0_s) * 1e9))

    def push(self, samples: Any, times_s: Any) -> list[Chunk]:
        x = np.asarray(samples, dtype=np.float32)
        t = np.asarray(times_s, dtype=np.float64).reshape(-1)
        if x.ndim == 1:
            x = x.reshape(-1, len(self.channels))
        if x.shape[0] != t.shape[0] or x.shape[1] != len(self.channels):
            raise DataError(f"LSL chunk of shape {x.shape} with {t.shape[0]} timestamps; expected "
                            f"(n, {len(self.channels)}) with n timestamps")
        out: list[Chunk] = []
        if x.shape[0] == 0:
            return out
        if self._t_first is None:
            self._t_first = float(t[0])
        # a gap: consecutive timestamps further apart than one sample period plus the tolerance
        # (differences, not the distance to the timeline: slow clock drift is no gap)
        prev = np.concatenate(([self._t_last if self._t_last is not None else t[0] - 1.0 / self.fs], t[:-1]))
        dt = t - prev
        start = 0
        for i in np.flatnonzero(dt > 1.0 / self.fs + self.gap_tolerance_s):
            lost = int(round(dt[i] * self.fs)) - 1
            if lost <= 0:
                continue
            out.extend(self._append(x[start:i]))
            out.extend(self.flush())
            self.gaps.append(GapInfo(self._index, lost, lost / self.fs))
            self._index += lost
            self._buf_start = self._index
            self.seq += max(1, math.ceil(lost / self.n))  # the engine sees the hole as a seq gap
            start = int(i)
        out.extend(self._append(x[start:]))
        self._t_last = float(t[-1])
        return out

    def _append(self, x: np.ndarray) -> list[Chunk]:
        out: list[Chunk] = []
        if x.shape[0] == 0:
            return out
        self._buf.append(x)
        self._buf_n += x.shape[0]
        self._index += x.shape[0]
        self.samples += x.shape[0]
        while self._buf_n >= self.n:
            allx = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
            out.append(self._chunk(allx[: self.n]))
            rest = allx[self.n:]
            self._buf = [rest] if rest.shape[0] else []
            self._buf_n = rest.shape[0]
        return out

    def _chunk(self, block: np.ndarray) -> Chunk:
        c = Chunk.signal(self.kind, self.stream, self.seq, self.t_ns(self._buf_start),
                         np.ascontiguousarray(block), self.fs, self.channels, self.units,
                         meta={"session": self.session, "sent_ns": time.time_ns()})
        self.seq += 1
        self._buf_start += block.shape[0]
        return c

    def flush(self) -> list[Chunk]:
        """The buffered partial chunk (empty list when none)."""
        if not self._buf_n:
            return []
        allx = np.concatenate(self._buf)
        self._buf, self._buf_n = [], 0
        return [self._chunk(allx)]


def _channels(info: Any, n: int, default_unit: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    labels: list[str] = []
    units: list[str] = []
    try:
        ch = info.desc().child("channels").child("channel")
        while not ch.empty() and len(labels) < n:
            labels.append(ch.child_value("label") or f"ch{len(labels) + 1}")
            units.append(ch.child_value("unit") or default_unit)
            ch = ch.next_sibling()
    except Exception:  # noqa: BLE001 - descriptions are optional
        labels, units = [], []
    if len(labels) != n:
        labels = [f"ch{i + 1}" for i in range(n)]
        units = [default_unit] * n
    return tuple(labels), tuple(units)


_KIND_OF_TYPE = {"ecg": "ecg", "ekg": "ecg", "exg": "ecg", "pcg": "pcg", "audio": "pcg", "phonocardiogram": "pcg"}


@dataclass
class LslSourceResult:
    chunks: int
    samples: int
    gaps: list[GapInfo]
    stream: str
    offset_s: float


def run_lsl_source(*, name: str | None = None, type_: str | None = None, kind: str | None = None,
                   stream: str | None = None, connect: str = "tcp://127.0.0.1:5555", chunk_ms: float = 100.0,
                   units: str = "mV", seconds: float | None = None, resolve_timeout_s: float = 10.0,
                   gap_tolerance_s: float = 0.1, offset_every_s: float = 5.0, stop: threading.Event | None = None,
                   sock: Any = None, on_chunk: Any = None, idle_timeout_s: float | None = None,
                   curve_secret: str | None = None, server_key: str | None = None) -> LslSourceResult:
    """Resolve one LSL stream, read it and PUSH it to the engine until ``stop`` (or ``seconds``).

    ``sock`` may be an already connected PUSH socket (tests); ``idle_timeout_s`` ends the
    run when no sample came for that long (the outlet went away).
    """
    import secrets

    import zmq

    from telediag.sources.replay import _send

    pylsl = import_pylsl()
    if bool(name) == bool(type_):
        raise TelediagError("give exactly one of --name NAME or --type TYPE")
    prop, value = ("name", name) if name else ("type", type_)
    found = pylsl.resolve_byprop(prop, value, 1, resolve_timeout_s)
    if not found:
        raise TelediagError(f"no LSL stream with {prop} {value!r} found within {resolve_timeout_s:g} s "
                            "(is the outlet running, on this network, and allowed by lsl_api.cfg?)")
    info = found[0]
    k = kind or _KIND_OF_TYPE.get(info.type().lower())
    if k not in ("ecg", "pcg"):
        raise TelediagError(f"LSL stream type {info.type()!r}: say --kind ecg or --kind pcg")
    inlet = pylsl.StreamInlet(info, max_buflen=360, max_chunklen=0, recover=True)
    full = inlet.info(timeout=resolve_timeout_s)
    n_ch = full.channel_count()
    chans, unit_names = _channels(full, n_ch, units)
    sid = stream or f"lsl-{''.join(c if c.isalnum() or c in '-_.' else '-' for c in info.name())[:60]}/{k}"
    stop = stop or threading.Event()
    offset = inlet.time_correction(timeout=resolve_timeout_s)
    last_offset_at = time.monotonic()
    chunker = LslChunker(k, sid, float(info.nominal_srate()), chans, unit_names, chunk_ms=chunk_ms,
                         wall0_ns=time.time_ns(), lsl0_s=pylsl.local_clock(), gap_tolerance_s=gap_tolerance_s,
                         session=secrets.token_hex(8))
    own = sock is None
    ctx = None
    if own:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.LINGER, 30_000)
        if curve_secret or server_key:
            from telediag.transports.security import secure_client_if

            secure_client_if(sock, curve_secret, server_key)
        sock.connect(connect)
    sent = 0
    end = time.monotonic() + seconds if seconds else None
    last_data = time.monotonic()
    try:
        inlet.open_stream(timeout=resolve_timeout_s)
        while not stop.is_set() and (end is None or time.monotonic() < end):
            data, ts = inlet.pull_chunk(timeout=0.2, max_samples=4096)
            if time.monotonic() - last_offset_at > offset_every_s:
                offset = inlet.time_correction(timeout=1.0)
                last_offset_at = time.monotonic()
            if not ts:
                if idle_timeout_s and time.monotonic() - last_data > idle_timeout_s:
                    break
                continue
            last_data = time.monotonic()
            before = len(chunker.gaps)
            chunks = chunker.push(data, np.asarray(ts) + offset)
            for g in chunker.gaps[before:]:
                print(f"telediag source lsl: gap of {g.samples} samples ({g.seconds:.3f} s) before sample "
                      f"{g.at} of {sid}", flush=True)
            for c in chunks:
                if not _send(sock, c, stop):
                    break
                if on_chunk is not None:
                    on_chunk(c)
                sent += 1
        for c in chunker.flush():
            if _send(sock, c, stop):
                sent += 1
                if on_chunk is not None:
                    on_chunk(c)
    finally:
        inlet.close_stream()
        if own:
            sock.close()
            assert ctx is not None
            ctx.term()
    return LslSourceResult(sent, chunker.samples, chunker.gaps, sid, offset)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--name", help="LSL stream name to resolve")
    g.add_argument("--type", dest="type_", metavar="TYPE", help="LSL stream type to resolve (e.g. ECG)")
    p.add_argument("--kind", choices=["ecg", "pcg"], help="telediag kind (default from the LSL type)")
    p.add_argument("--stream", help="telediag stream id (default lsl-<name>/<kind>)")
    p.add_argument("--connect", default="tcp://127.0.0.1:5555", metavar="ADDR", help="engine ingest address")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="chunk length in ms (default 100)")
    p.add_argument("--units", default="mV", help="unit when the stream's description has none (default mV)")
    p.add_argument("--seconds", type=float, help="stop after S seconds")
    p.add_argument("--resolve-timeout", type=float, default=10.0, help="seconds to wait for the stream")
    p.add_argument("--gap-tolerance-ms", type=float, default=100.0,
                   help="a timestamp this much later than expected is a gap (default 100)")
    p.add_argument("--curve-secret", metavar="FILE", help="this client's .key_secret (CurveZMQ)")
    p.add_argument("--server-key", metavar="FILE", help="the engine's public .key (CurveZMQ)")


def run(args: argparse.Namespace) -> int:
    from telediag.sources.replay import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)
    res = run_lsl_source(name=args.name, type_=args.type_, kind=args.kind, stream=args.stream, connect=args.connect,
                         chunk_ms=args.chunk_ms, units=args.units, seconds=args.seconds,
                         resolve_timeout_s=args.resolve_timeout, gap_tolerance_s=args.gap_tolerance_ms / 1000.0,
                         stop=stop, curve_secret=args.curve_secret, server_key=args.server_key)
    print(f"telediag source lsl: {res.stream}: sent {res.chunks} chunks, {res.samples} samples, "
          f"{len(res.gaps)} gap(s), clock offset {res.offset_s * 1000:.3f} ms", flush=True)
    return 0
