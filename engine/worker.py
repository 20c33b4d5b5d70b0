"""A worker owns a set of streams: decode, check order, run pipelines, publish.

Workers share nothing but ZeroMQ sockets: each reads its inbox (a PULL socket the
ingest router pushes to) and publishes on its own PUB socket, connected to the
engine's XSUB/XPUB proxy, so subscribers see one endpoint however many workers run.
The inbox protocol is ``[b"D", *wire_frames]`` for data and ``[b"S"]`` for "drain and
stop" (sent after the last data message, so everything queued is processed first).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from telediag.engine import aot
from telediag.engine.config import Config
from telediag.engine.stage import Deferred, Outputs, Stage, StreamSpec
from telediag.engine.stats import LatencyHistogram, StreamStats
from telediag.engine.warmup import warm_pipelines
from telediag.errors import EngineError, ProtocolError, TelediagError
from telediag.transports.sockets import recv_frames, send_frames
from telediag.transports.wire import (
    MAX_HEADER_BYTES,
    MAX_STREAM_CHARS,
    SIGNAL_KINDS,
    VIDEO_KINDS,
    Chunk,
    decode,
    encode,
    to_physical,
)

#: Kinds the ingest socket accepts (PROTOCOL.md section 5); others are rejected ``not_ingestible``.
INGEST_KINDS = SIGNAL_KINDS | VIDEO_KINDS

DATA = b"D"
STOP = b"S"
#: Messages a worker's inbox holds. Small on purpose: a backlog then waits in the router's per-stream
#: queues, where streams take turns (engine/runtime.py), instead of in this FIFO, where one stream's
#: flood would delay every other stream of the worker by the whole flood.
INBOX_HWM = 8
#: First frame of a progress marker (never a topic: topics start with a kind name).
PROGRESS = b"\x00P"

_I64_MAX = (1 << 63) - 1

#: Longest biosignal chunk the engine analyses (PROTOCOL.md section 8, reason ``chunk_too_long``): a
#: chunk is handled in one go, so a longer one would stall every other stream of its worker (a 16 MB
#: chunk of 360 Hz ECG: ~1 min, alarms of the other patients held back) and its beats and quality
#: would pass the 1 MiB body limit and be dropped.
MAX_CHUNK_S = 60.0
MAX_CHUNK_SAMPLES = 1 << 22
_SHAPE_SLACK = 8  # the probe's shape (1, n) packs smaller than a real chunk's (n_samples, n)

#: ``meta`` keys the engine adds to what it publishes; they survive header truncation
#: (see :meth:`Worker.publish`), the source's echoed keys do not.
ENGINE_META_KEYS = ("pub_ns", "src_seq")


@dataclass(slots=True)
class _Stream:
    spec: StreamSpec
    stages: list[Stage]
    stats: StreamStats
    session: Any = None
    refused: str = ""


@dataclass(slots=True)
class _RateLimit:
    per_s: int
    window_start: float = 0.0
    used: dict[str, int] = field(default_factory=dict)

    def allow(self, key: str, now: float) -> bool:
        if now - self.window_start >= 1.0:
            self.window_start = now
            self.used.clear()
        n = self.used.get(key, 0)
        if n >= self.per_s:
            return False
        self.used[key] = n + 1
        return True


def _check_publishable(spec: StreamSpec, stage: str) -> None:
    """Raise :class:`EngineError` if outputs on ``spec`` could never be published."""
    try:
        if spec.kind in SIGNAL_KINDS and spec.channels:
            probe = Chunk.signal(spec.kind, spec.stream, _I64_MAX, -_I64_MAX,
                                 np.zeros((1, len(spec.channels)), "<f8"), spec.rate_hz or 1.0,
                                 spec.channels, spec.units)
            frames = encode(probe, meta={"pub_ns": _I64_MAX, "src_seq": _I64_MAX, "meta_truncated": True})
            if len(frames[1]) > MAX_HEADER_BYTES - _SHAPE_SLACK:
                raise ProtocolError("header_too_large", f"header would be {len(frames[1])} bytes")
        else:
            Chunk.record("event", spec.stream, 0, 0, {})  # the stream id alone must be valid
    except ProtocolError as e:
        raise EngineError(
            f"{stage}: its output stream {spec.kind}/{spec.stream} cannot be published within the wire "
            f"limits (stream id <= {MAX_STREAM_CHARS} chars, header <= {MAX_HEADER_BYTES} bytes "
            f"with the engine's meta keys): {e.detail}") from e


class Worker:
    """Runs the pipelines of the streams routed to it.

    Parameters
    ----------
    index : int
        Worker number (its stats topic is ``stats/engine/w<index>``).
    config : Config
        Engine configuration (pipelines per kind, limits).
    ctx : zmq.Context
        Context shared with the engine (inproc sockets need it).
    inbox_addr, out_addr : str
        Where to bind the inbox and where to connect the PUB socket.
    """

    def __init__(self, index: int, config: Config, ctx: zmq.Context, inbox_addr: str, out_addr: str) -> None:
        self.index = index
        self.config = config
        self.ctx = ctx
        self.inbox_addr = inbox_addr
        self.out_addr = out_addr
        self.streams: dict[str, _Stream] = {}
        self.rejects: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self._out_seq: dict[str, int] = {}
        self.meta_truncated = 0  # outputs published without the source's echoed meta (header limit)
        self.output_errors = 0  # outputs that could not be encoded at all (reported per stream)
        self.error: BaseException | None = None  # what ended run() abnormally (the engine exits or restarts)
        self.dead = threading.Event()  # set when run() ended abnormally
        self._current: str | None = None  # the stream being handled (for containment)
        # process mode (engine/procs.py): outputs go to the engine's collector on a PUSH socket,
        # followed by progress markers; a replacement worker resumes the dead one's streams
        self.out_type = zmq.PUB
        self.progress = False
        self._done: dict[str, int] = {}
        self.resume: dict[str, int] = {}  # stream -> last seq fully published by the previous worker
        self.before_serve: Callable[[], None] | None = None
        # worker pools (engine/procs.py, engine/cluster.py): called with the bound inbox endpoint before
        # serving (a Ray actor reports it to the engine); in-band control messages (tag != DATA, STOP)
        self.after_bind: Callable[[str], None] | None = None
        self.on_control: Callable[[bytes, Sequence[Any]], None] | None = None
        self.moved: set[str] = set()  # streams handed over by another worker (no stream_restarted on reopen)
        # cold start: warm-up time, and latency of what queued meanwhile, reported apart
        self.parallel_warmup = config.engine.warmup_parallel
        self.warmup_s = 0.0
        self.warmup_kinds_s: dict[str, float] = {}
        self.latency_warmup = LatencyHistogram()
        # A chunk is a warm-up chunk when its source/send time is before this worker was ready, or
        # when it was handled behind such chunks before the worker first caught up (empty inbox).
        self.warming = True  # until the inbox is first found empty after the warm-up (caught up)
        self._ready_ns = 1 << 62  # wall-clock time the worker became ready (set in _serve)
        self._backlog = False  # a chunk from before ready was seen
        self._fresh = False  # a chunk sent after ready was published
        self.caught_up_s: float | None = None
        self._limit = _RateLimit(config.engine.max_events_per_s)
        self._started = time.time()
        self.ready = threading.Event()
        self.out: zmq.Socket | None = None
        self.last_stats: dict[str, Any] = {}
        self.latency_counts = self.latency.counts  # exposed for histogram export
        # cross-stream micro-batching of deferred model work (see Outputs.deferred)
        self._pending: list[tuple[str, _Stream, Stage, Deferred, int | None]] = []
        self._pending_streams: set[str] = set()
        self._pending_since = 0.0
        self.batches_run = 0
        self.batch_items = 0
        self.batch_largest = 0
        self.extra_stats: Callable[[], dict[str, Any]] | None = None  # e.g. the engine's socket counts

    # -- publishing -------------------------------------------------------------------
    def publish(self, chunk: Chunk, *, src_seq: int | None = None, check_body: bool = True) -> int:
        """Publish ``chunk`` with the next seq of its output stream; return publish time.

        Signal outputs carry ``meta.src_seq``, the source chunk they came from, so a
        subscriber or recorder can tell exactly which source ranges it never saw (for
        example across an engine restart, when output ``seq`` starts again at 0).

        Output header layout (``meta``): the engine's own keys (``pub_ns``, ``src_seq``)
        always win, and the source's ``meta`` is echoed beside them *only while the
        whole header fits* :data:`~telediag.transports.wire.MAX_HEADER_BYTES`. When it
        does not (a source header close to the limit, legal on input), the echoed source
        keys are dropped, the engine keys are kept and ``meta_truncated: true`` is set,
        so an engine-added key can never push an output past the limit. An output that
        still cannot be encoded raises :class:`ProtocolError` to the caller, which
        reports it per stream; its ``seq`` is not consumed.
        """
        assert self.out is not None
        pub_ns = time.time_ns()
        meta = dict(chunk.meta)
        meta["pub_ns"] = pub_ns
        if src_seq is not None:
            meta["src_seq"] = src_seq
        topic = chunk.topic
        seq = self._out_seq.get(topic, 0)
        try:
            frames = encode(chunk, seq=seq, meta=meta, check_body=check_body)
        except ProtocolError as e:
            if e.reason != "header_too_large":
                raise
            slim: dict[str, Any] = {k: meta[k] for k in ENGINE_META_KEYS if k in meta}
            slim["meta_truncated"] = True
            frames = encode(chunk, seq=seq, meta=slim, check_body=check_body)
            self.meta_truncated += 1
        out = self.out
        if type(out) is zmq.Socket:
            send_frames(out, frames, copy=False)  # cheaper than send_multipart (no enum arithmetic per frame)
        else:  # a wrapper (process mode bundles a chunk's outputs)
            out.send_multipart(frames, copy=False)
        self._out_seq[topic] = seq + 1
        return pub_ns

    def event(self, stream: str, body: dict[str, Any], *, limit_key: str | None = None) -> None:
        """Publish an event on ``event/<stream>`` (rate-limited per ``limit_key``)."""
        if limit_key is not None and not self._limit.allow(limit_key, time.monotonic()):
            return
        body = dict(body)
        body.setdefault("worker", self.index)
        self.publish(Chunk.record("event", stream, 0, time.time_ns(), body))

    def reject(self, reason: str, detail: str, stream: str | None = None, seq: int | None = None,
               *, topic_stream: str = "engine") -> None:
        """Count a refused message and publish a ``rejected`` event (transports/OUTPUTS.md 5.2).

        ``stream``/``seq`` are the message's when known (else null in the body); the event goes
        to ``event/<topic_stream>``: ``engine`` for messages that did not decode, the stream's
        own id for valid chunks refused (``spec_changed``, ``not_ingestible``).
        """
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        self.event(
            topic_stream,
            {"type": "rejected", "reason": reason, "detail": detail[:500], "stream": stream, "seq": seq,
             "count": self.rejects[reason]},
            limit_key=f"reject:{reason}",
        )

    def stats_body(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "uptime_s": round(time.time() - self._started, 3),
            "streams": {sid: s.stats.as_dict() for sid, s in self.streams.items()},
            "rejects": dict(self.rejects),
            "errors": dict(self.errors),
            "latency_ms": self.latency.summary_ms(),
            # warm-up apart: its seconds, and the latency of chunks handled before the worker caught up
            "warmup": {"s": round(self.warmup_s, 3), "kinds_s": {k: round(v, 3) for k, v in self.warmup_kinds_s.items()},
                       "warming": self.warming, "caught_up_s": self.caught_up_s,
                       "latency_ms": self.latency_warmup.summary_ms(),
                       "aot": {k: aot.STATUS.get(k) for k in ("aot", "overloads", "reason")}},
            "batches": {"runs": self.batches_run, "items": self.batch_items, "largest": self.batch_largest},
            **({"sockets": self.extra_stats()} if self.extra_stats is not None else {}),
        }

    def publish_stats(self) -> None:
        body = self.stats_body()
        self.last_stats = body  # snapshot for the in-process metrics exporter (reference swap)
        # built here from counters only: skip the body walk (subscribers still check it)
        self.publish(Chunk.record("stats", f"engine/w{self.index}", 0, time.time_ns(), body), check_body=False)

    # -- streams ------------------------------------------------------------------------
    def _build(self, spec: StreamSpec) -> list[Stage]:
        """Build and open the pipeline of ``spec.kind``; raise if a stage refuses the stream.

        Every output stream a stage declares must be publishable: its id within the wire's
        limits and its header, with the engine's own ``meta`` keys, within
        ``MAX_HEADER_BYTES`` (a source whose channel names fill the header leaves no room
        for the engine's keys, so it is refused here rather than failing on every chunk).
        """
        stages: list[Stage] = []
        for sc in self.config.pipelines.get(spec.kind, ()):
            stage = sc.build()
            stage.batching = self.config.engine.batch_max > 1
            spec = stage.open(spec)
            _check_publishable(spec, stage.name)
            stages.append(stage)
        return stages

    def _open(self, chunk: Chunk) -> _Stream:
        spec = StreamSpec.of(chunk)
        stats = StreamStats(kind=chunk.kind)
        st = _Stream(spec=spec, stages=[], stats=stats, session=chunk.meta.get("session"))
        try:
            st.stages = self._build(spec)
        except Exception as e:  # TelediagError from a stage's open, or a stage bug: refuse, never crash
            st.refused = str(e) if isinstance(e, TelediagError) else f"{type(e).__name__}: {e}"
            self.event(chunk.stream, {"type": "stream_refused", "stream": chunk.stream, "detail": st.refused[:500]})
            return st
        self.event(
            chunk.stream,
            {"type": "stream_opened", "stream": chunk.stream, "kind": chunk.kind,
             "rate_hz": st.spec.rate_hz, "channels": list(st.spec.channels), "first_seq": chunk.seq,
             "first_t0_ns": chunk.t0_ns,
             "stages": [s.name for s in st.stages]},
        )
        return st

    def _reset(self, sid: str, e: BaseException) -> None:
        """Contain an unexpected exception while handling ``sid``: reset that stream only.

        The stream's pipeline state is thrown away (it may be inconsistent) and rebuilt;
        its counters and ``last_seq`` are kept, so gap detection goes on. Consumers see a
        ``stream_reset`` event (reason ``internal_error``); other streams are untouched.
        """
        key = f"internal:{type(e).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1
        st = self.streams.get(sid)
        if self._pending_streams and sid in self._pending_streams:
            self._pending = [p for p in self._pending if p[0] != sid]
            self._pending_streams.discard(sid)
        if st is None:
            self.reject("internal_error", f"{type(e).__name__}: {e}", sid, topic_stream=sid)
            return
        st.stats.errors += 1
        self.event(sid, {"type": "stream_reset", "stream": sid, "reason": "internal_error",
                         "error": f"{type(e).__name__}: {e}"[:500], "last_seq": st.stats.last_seq},
                   limit_key=f"reset:{sid}")
        try:
            st.stages = self._build(st.spec)
        except Exception as e2:  # noqa: BLE001 - cannot rebuild: refuse the stream from now on
            st.stages = []
            st.refused = f"{type(e2).__name__}: {e2}"
            self.event(sid, {"type": "stream_refused", "stream": sid, "detail": st.refused[:500]})

    def _close(self, sid: str, st: _Stream) -> None:
        if sid in self._pending_streams:
            self.flush()
        for stage in st.stages:
            try:
                out = stage.close()
            except Exception as e:  # a stage bug must not take the engine down
                self._stage_error(sid, st, stage, e)
                continue
            self._emit(st, stage, out, None, None)

    def _stage_error(self, sid: str, st: _Stream, stage: Stage, e: BaseException) -> None:
        st.stats.errors += 1
        key = f"{stage.name}:{type(e).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1
        self.event(sid, {"type": "stage_error", "stream": sid, "stage": stage.name,
                         "error": f"{type(e).__name__}: {e}"[:500]}, limit_key=f"stage:{sid}")

    def _output_error(self, st: _Stream, stage: Stage, chunk: Chunk, e: ProtocolError) -> None:
        """An output that cannot be encoded (body or header past a limit): count, report, go on."""
        self.output_errors += 1
        st.stats.errors += 1
        key = f"output:{e.reason}"
        self.errors[key] = self.errors.get(key, 0) + 1
        sid = st.spec.stream
        self.event(sid, {"type": "output_dropped", "stream": sid, "stage": stage.name, "topic": chunk.topic,
                         "reason": e.reason, "detail": e.detail[:300]}, limit_key=f"output:{sid}")

    def _emit(self, st: _Stream, stage: Stage, out: Outputs, sent_ref: int | None, src_seq: int | None) -> None:
        for rec in out.records:
            try:
                self.publish(rec)
            except ProtocolError as e:
                self._output_error(st, stage, rec, e)
                continue
            st.stats.records_out += 1
        if out.signal is not None and getattr(stage.params, "publish", False):
            try:
                pub_ns = self.publish(out.signal, src_seq=src_seq)
            except ProtocolError as e:
                self._output_error(st, stage, out.signal, e)
                return
            st.stats.chunks_out += 1
            if sent_ref is not None:
                lat = (pub_ns - sent_ref) * 1e-9
                if sent_ref >= self._ready_ns:
                    self._fresh = True
                if self.warming and (self._backlog or sent_ref < self._ready_ns):
                    # queued during (or behind) the warm-up: reported apart, not in the run's percentiles
                    self._backlog = True
                    self.latency_warmup.record(lat)
                else:
                    st.stats.latency.record(lat)
                    self.latency.record(lat)

    def handle(self, frames: Sequence[Any]) -> None:
        """Process one wire message; never raises (per-stream containment).

        Bad input is rejected with an event; an unexpected exception anywhere in decode,
        a stage, encode or publish resets the stream it happened on (see :meth:`_reset`)
        and the worker goes on with every other stream.
        """
        self._current = None
        try:
            self._handle(frames)
        except Exception as e:  # noqa: BLE001 - containment: one stream, never the worker
            self._contain(e)

    def _contain(self, e: BaseException) -> None:
        sid = self._current
        try:
            if sid is None:
                key = f"internal:{type(e).__name__}"
                self.errors[key] = self.errors.get(key, 0) + 1
                self.reject("internal_error", f"{type(e).__name__}: {e}")
            else:
                self._reset(sid, e)
        except Exception:  # noqa: BLE001 - reporting failed too (socket gone?): counted above
            pass

    def _handle(self, frames: Sequence[Any]) -> None:
        try:
            chunk = decode(frames)
        except ProtocolError as e:
            self.reject(e.reason, e.detail, e.stream, e.seq)
            return
        sid = chunk.stream
        self._current = sid
        if chunk.kind not in INGEST_KINDS:  # annotation kinds are outputs: never open a stream for one
            self.reject("not_ingestible", f"kind {chunk.kind!r} is not ingestible (the engine ingests "
                        f"{sorted(INGEST_KINDS)}; annotation kinds are its outputs)", sid, chunk.seq,
                        topic_stream=sid)
            return
        if sid in self._pending_streams:  # a stage sees a stream's chunks strictly one after another
            self.flush()
        st = self.streams.get(sid)
        session = chunk.meta.get("session")
        if st is not None and session is not None and session != st.session:
            self._close(sid, st)
            self.event(sid, {"type": "stream_restarted", "stream": sid, "last_seq": st.stats.last_seq})
            restarts = st.stats.restarts + 1
            st = None
            self.streams.pop(sid, None)
        else:
            restarts = None
        if st is None:
            st = self._open(chunk)
            if restarts is not None:
                st.stats.restarts = restarts
            self.streams[sid] = st
            resumed = self.resume.pop(sid, None)
            if resumed is not None and sid in self.moved:  # a handover: the old owner published stream_moved
                self.moved.discard(sid)
                st.stats.last_seq = resumed
            elif resumed is not None:  # this worker replaces one that died: the stream goes on from there
                st.stats.restarts += 1
                st.stats.last_seq = resumed
                st.session = session if session is not None else st.session
                self.event(sid, {"type": "stream_restarted", "stream": sid, "reason": "worker_restarted",
                                 "last_seq": resumed})
        stats = st.stats
        if st.refused:
            stats.errors += 1
            return
        if StreamSpec.of(chunk) != st.spec:
            stats.errors += 1
            self.reject("spec_changed", f"stream {sid!r} opened as {st.spec}, chunk declares {StreamSpec.of(chunk)}",
                        sid, chunk.seq, topic_stream=sid)
            return
        if chunk.kind in SIGNAL_KINDS and chunk.data is not None and chunk.rate_hz is not None and (
                chunk.data.shape[0] > MAX_CHUNK_SAMPLES or chunk.data.shape[0] > MAX_CHUNK_S * chunk.rate_hz):
            stats.errors += 1  # not analysed: the next chunk reports the gap (its seq is missing)
            self.reject("chunk_too_long", f"chunk has {chunk.data.shape[0]} samples at {chunk.rate_hz} Hz; the engine "
                        f"analyses at most {MAX_CHUNK_S:g} s and {MAX_CHUNK_SAMPLES} samples per chunk: send it "
                        f"in shorter chunks", sid, chunk.seq, topic_stream=sid)
            return
        if chunk.kind == "ecg" and chunk.data is not None and chunk.data.dtype.kind in "iu" and (
                "gain" in chunk.meta or "baseline" in chunk.meta):
            try:  # integer ECG with meta.gain/baseline: the stages work in physical units (PROTOCOL.md 6.1)
                chunk = to_physical(chunk)
            except ProtocolError as e:
                stats.errors += 1
                self.reject(e.reason, e.detail, sid, chunk.seq, topic_stream=sid)
                return
        last = stats.last_seq
        if last >= 0 and chunk.seq != last + 1:
            if chunk.seq <= last:
                stats.out_of_order += 1
                self.event(sid, {"type": "out_of_order", "stream": sid, "seq": chunk.seq, "expected": last + 1},
                           limit_key=f"ooo:{sid}")
                return
            missing = chunk.seq - last - 1
            stats.gaps += 1
            stats.missing_chunks += missing
            self.event(sid, {"type": "gap", "stream": sid, "first_missing_seq": last + 1,
                             "last_missing_seq": chunk.seq - 1, "missing_chunks": missing,
                             "resumed_t0_ns": chunk.t0_ns})
        stats.last_seq = chunk.seq
        if self.progress:
            self._done[sid] = chunk.seq
        stats.chunks_in += 1
        stats.samples_in += chunk.n_samples
        sent_ref = self._source_ref_ns(chunk)
        x: Chunk | None = chunk
        for stage in st.stages:
            if x is None:
                break
            try:
                out = stage.process(x)
            except Exception as e:  # count, report, keep serving other chunks and streams
                self._stage_error(sid, st, stage, e)
                break
            self._emit(st, stage, out, sent_ref, chunk.seq)
            if out.deferred is not None:
                self._defer(sid, st, stage, out.deferred, chunk.seq)
            x = out.signal

    # -- cross-stream batching ----------------------------------------------------------
    def _defer(self, sid: str, st: _Stream, stage: Stage, d: Deferred, src_seq: int | None) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append((sid, st, stage, d, src_seq))
        self._pending_streams.add(sid)

    def flush(self) -> None:
        """Run the deferred model work, one call per key, and publish what it completes."""
        pending, self._pending = self._pending, []
        self._pending_streams.clear()
        groups: dict[Any, list[int]] = {}
        for i, (_, _, _, d, _) in enumerate(pending):
            groups.setdefault(d.key, []).append(i)
        results: list[Any] = [None] * len(pending)
        for idx in groups.values():
            run = pending[idx[0]][3].run
            try:
                res = run([pending[i][3].item for i in idx])
                if len(res) != len(idx):
                    raise RuntimeError(f"batched run returned {len(res)} results for {len(idx)} items")
            except Exception as e:  # noqa: BLE001 - each stage decides how to degrade
                res = [e] * len(idx)
            for i, r in zip(idx, res, strict=True):
                results[i] = r
            self.batches_run += 1
            self.batch_items += len(idx)
            self.batch_largest = max(self.batch_largest, len(idx))
        for (sid, st, stage, d, src_seq), r in zip(pending, results, strict=True):
            try:
                out = d.resume(r)
            except Exception as e:  # a stage bug must not take the engine down
                self._stage_error(sid, st, stage, e)
                continue
            self._emit(st, stage, out, None, src_seq)

    @staticmethod
    def _source_ref_ns(chunk: Chunk) -> int | None:
        """Source time of the chunk's last sample, or its send time if earlier.

        A live source sends a chunk once its last sample is acquired, so latency is
        measured from ``t0 + (n - 1) / rate``; a replay faster than real time stamps
        record time, which runs ahead of the wall clock, so its send time is used.
        """
        t_end: int | None = None
        if chunk.kind in SIGNAL_KINDS and chunk.rate_hz:
            t_end = chunk.t0_ns + int(max(chunk.n_samples - 1, 0) * 1e9 / chunk.rate_hz)
        sent = chunk.meta.get("sent_ns")
        if isinstance(sent, int):
            return sent if t_end is None else min(t_end, sent)
        return t_end

    # -- loop ---------------------------------------------------------------------------
    def warmup(self) -> None:
        """Load (or, on a cold cache, compile in parallel) every pipeline's kernels before serving.

        So the first real chunk of every stream is not charged the start-up cost; see
        :mod:`telediag.engine.warmup`. The seconds spent are reported in stats (``warmup``).
        """
        t = time.perf_counter()
        self.warmup_kinds_s = warm_pipelines(self.config, parallel=self.parallel_warmup, background=True)
        self.warmup_s = time.perf_counter() - t

    def run(self) -> None:
        """Serve the inbox until STOP; on an abnormal end set :attr:`error` and :attr:`dead`.

        Per-message failures never get here (:meth:`handle` contains them); what does
        (a socket torn down under the worker, a ``BaseException`` from a stage) ends the
        loop, and the engine, which watches :attr:`dead`, exits non-zero or restarts the
        worker instead of hanging.
        """
        try:
            self._serve()
        except BaseException as e:
            self.error = e
            self.dead.set()
            self.ready.set()  # never leave a starter waiting on a worker that is gone
            raise

    def _serve(self) -> None:
        out = self.ctx.socket(self.out_type)
        out.setsockopt(zmq.SNDHWM, self.config.engine.publish_hwm)
        out.setsockopt(zmq.LINGER, 2000)
        out.connect(self.out_addr)
        self.out = out
        self.warmup()
        if self.before_serve is not None:
            self.before_serve()
        inbox = self.ctx.socket(zmq.PULL)
        inbox.setsockopt(zmq.RCVHWM, INBOX_HWM)
        inbox.bind(self.inbox_addr)
        if self.after_bind is not None:
            self.after_bind(inbox.getsockopt_string(zmq.LAST_ENDPOINT))
        self._ready_ns = time.time_ns()
        self.ready.set()
        interval = self.config.engine.stats_interval_s
        batch_max = self.config.engine.batch_max
        batch_wait = self.config.engine.batch_wait_ms / 1000.0
        next_stats = time.monotonic() + interval
        try:
            while True:
                now = time.monotonic()
                until = next_stats
                if self._pending:  # the oldest deferred item waits at most batch_wait for batch-mates
                    until = min(until, self._pending_since + batch_wait)
                if inbox.poll(max(0, math.ceil((until - now) * 1000))):
                    msg = recv_frames(inbox)
                    tag = msg[0].bytes
                    if tag == STOP:
                        break
                    if tag != DATA and self.on_control is not None:
                        self.on_control(tag, msg[1:])
                        continue
                    self.handle(msg[1:])
                    if self.progress and not self._pending:
                        self._send_progress()
                # caught up: nothing queued and a chunk sent after ready handled; else 2 s after ready
                # with no backlog (an idle engine), 30 s with one (sources whose clocks run late). An
                # inbox empty only because the router has not forwarded the ingest backlog yet is not.
                if self.warming and not inbox.poll(0) and (
                        self._fresh or time.time_ns() - self._ready_ns > (30 if self._backlog else 2) * 10**9):
                    self.warming = False
                    self.caught_up_s = round(time.time() - self._started, 3)
                if self._pending and (len(self._pending) >= batch_max
                                      or time.monotonic() >= self._pending_since + batch_wait):
                    self._safe_flush()
                if time.monotonic() >= next_stats:
                    self.publish_stats()
                    next_stats = time.monotonic() + interval
            self._safe_flush()
            for sid, st in list(self.streams.items()):
                if not st.refused:
                    try:
                        self._close(sid, st)
                    except Exception as e:  # noqa: BLE001 - one stream's close must not skip the others
                        self._contain_stream(sid, e)
            self.publish_stats()
        finally:
            inbox.close(linger=0)
            out.close()

    def _safe_flush(self) -> None:
        """:meth:`flush`, with anything it raises contained like a message's failure."""
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - containment (flush already guards each stage)
            self._contain_stream(None, e)
        if self.progress:
            self._send_progress()

    def _send_progress(self) -> None:
        """Tell the engine which source chunks are fully published (process mode).

        Sent on the same socket, after those chunks' outputs, so when the engine reads it
        it has forwarded every output of every chunk it lists: after a crash the restarted
        worker reports exactly the chunks after these as lost (see ``engine/procs.py``).
        """
        if not self._done or self.out is None:
            return
        done, self._done = self._done, {}
        # [PROGRESS, stream, seq (8 bytes LE), stream, seq, ...]: cheap to build and to read
        frames: list[bytes] = [PROGRESS]
        for sid, seq in done.items():
            frames += (sid.encode(), seq.to_bytes(8, "little"))
        self.out.send_multipart(frames)

    def _contain_stream(self, sid: str | None, e: BaseException) -> None:
        self._current = sid
        self._contain(e)
