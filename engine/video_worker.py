"""The video worker: latest-frame-wins video pipelines that never delay biosignals.

The ingest router sends every ``video/...`` message to this worker's own inbox (not to a
biosignal worker) with ``NOBLOCK`` on a socket with a small high-water mark
(:data:`VIDEO_INBOX_HWM`): when the video worker is far behind, the router drops the
packet instead of blocking, so ECG/PCG routing never waits for video. The worker runs in its
own thread and shares nothing with the biosignal workers but sockets (its outputs merge
through the same XSUB/XPUB proxy).

Scheduling, per wake-up:

1. read every message already queued (up to ``max_batch``) and run the stages that must see
   **every** packet (``every_chunk = True``: the decoder, since H.264 needs every packet to
   stay in sync) on each of them; packets followed by a newer one of the same stream in that
   batch are only decoded (``advance``: no RGB conversion) and their pictures are drops;
2. keep only the newest decoded frame per stream; each frame that was decoded but replaced
   before it could be analysed counts as a **drop** in the stream's stats;
3. run the remaining stages (segmentation, overlay, encoder) on those newest frames only.

A ``seq`` gap (packets lost in the router or in transit) is counted as drops and makes the
decoder wait for the next keyframe. A stream that sends nothing for ``stall_s`` gets a
``video_stalled`` event, and ``video_resumed`` when packets come back. Latency per analysed
frame is measured from the frame's source time (``t0_ns``, or the sender's ``sent_ns`` when
the two clocks disagree by more than 10 s) to the publication of its ``polyp`` record.
Statistics are published on ``stats/engine/video`` once a video stream has been seen.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from telediag.engine.config import Config
from telediag.engine.stage import Outputs, Stage
from telediag.engine.worker import STOP, Worker, _Stream
from telediag.errors import ProtocolError
from telediag.transports.wire import Chunk, decode

#: Messages the router may queue for the video worker (on each side of the inproc pipe)
#: before it drops video packets rather than wait: about half a second of one 30 fps stream.
VIDEO_INBOX_HWM = 16

_CLOCK_AGREE_NS = 10_000_000_000


@dataclass(slots=True)
class _Pending:
    st: _Stream
    frame: Chunk
    start: int  # index of the first latest-only stage
    ref_ns: int | None


class VideoWorker(Worker):
    """Runs the ``video`` pipelines with latest-frame-wins scheduling (see the module doc).

    Parameters
    ----------
    config : Config
        Engine configuration (``[pipeline.video.*]`` sections).
    ctx : zmq.Context
        The engine's context.
    inbox_addr, out_addr : str
        Its inbox (bound here, PULL) and the proxy's XSUB address (PUB connects).
    stall_s : float
        Silence after which a stream is reported as stalled.
    max_batch : int
        Messages read per wake-up before the newest frames are analysed.
    """

    stats_stream = "engine/video"
    #: Per wake-up and stream, at most this many frames dropped for a newer one are still decoded
    #: and given the last overlay (:meth:`_redraw`); older ones are only decoded (the worker is far
    #: behind and must catch up first).
    redraw_max = 4

    def __init__(self, config: Config, ctx: zmq.Context, inbox_addr: str, out_addr: str, *,
                 stall_s: float = 1.0, max_batch: int = 256) -> None:
        super().__init__(0, config, ctx, inbox_addr, out_addr)
        self.stall_s = stall_s
        self.max_batch = max_batch
        self._pending: dict[str, _Pending] = {}
        self._last_rx: dict[str, float] = {}
        self._stalled: dict[str, float] = {}
        self.analysed = 0
        self.redrawn = 0  # frames dropped for a newer one that still got the last overlay
        self.warming = False  # no kernel warm-up here (the decoder and model load on the first stream)

    # -- reporting ----------------------------------------------------------------------
    def event(self, stream: str, body: dict[str, Any], *, limit_key: str | None = None) -> None:
        body = dict(body)
        body.setdefault("worker", "video")
        super().event(stream, body, limit_key=limit_key)

    def stats_body(self) -> dict[str, Any]:
        body = super().stats_body()
        body["worker"] = "video"
        body["analysed_frames"] = self.analysed
        body["redrawn_frames"] = self.redrawn
        return body

    def publish_stats(self) -> None:
        if not self.streams and not self.rejects:
            return  # quiet until video shows up (biosignal-only engines see no change)
        body = self.stats_body()
        self.last_stats = body  # for the engine's metrics exporter (thread mode)
        self.publish(Chunk.record("stats", self.stats_stream, 0, time.time_ns(), body))

    @staticmethod
    def _source_ref_ns(chunk: Chunk) -> int | None:
        sent = chunk.meta.get("sent_ns")
        if not isinstance(sent, int):
            return chunk.t0_ns
        if abs(sent - chunk.t0_ns) < _CLOCK_AGREE_NS:
            return min(sent, chunk.t0_ns)
        return sent

    # -- packets --------------------------------------------------------------------------
    def handle(self, frames: Sequence[Any], superseded: bool = False, redraw: bool = False) -> None:
        """Decode one wire message and run the every-packet stages (never raises).

        ``superseded``: a newer packet of the same stream is already queued, so a stage that
        has ``advance(chunk)`` (the decoder) is asked to keep its state without producing a
        frame; a picture it completes counts as a drop. With ``redraw`` (one of the last
        :attr:`redraw_max` superseded packets of its stream) and a first latest-only stage that
        can ``reuse(frame)``, the frame is decoded instead and given the stream's last analysis
        (:meth:`_redraw`): not analysed (still a drop), but the annotated stream keeps every
        frame. An unexpected exception resets that stream only (:meth:`Worker._reset`).
        """
        self._current = None
        try:
            self._handle_video(frames, superseded, redraw)
        except Exception as e:  # noqa: BLE001 - containment: one stream, never the worker
            self._pending.pop(self._current or "", None)
            self._contain(e)

    def _handle_video(self, frames: Sequence[Any], superseded: bool, redraw: bool = False) -> None:
        try:
            chunk = decode(frames)
        except ProtocolError as e:
            self.reject(e.reason, e.detail, e.stream, e.seq)
            return
        sid = chunk.stream
        self._current = sid
        if chunk.kind != "video":
            self.reject("misrouted", f"video worker got a {chunk.kind!r} chunk", sid, chunk.seq, topic_stream=sid)
            return
        now = time.monotonic()
        st = self.streams.get(sid)
        session = chunk.meta.get("session")
        restarts = None
        if st is not None and session is not None and session != st.session:
            self._pending.pop(sid, None)
            self._close(sid, st)
            self.event(sid, {"type": "stream_restarted", "stream": sid, "last_seq": st.stats.last_seq})
            restarts = st.stats.restarts + 1
            st = None
        if st is None:
            st = self._open(chunk)
            if restarts is not None:
                st.stats.restarts = restarts
            self.streams[sid] = st
            resumed = self.resume.pop(sid, None)
            if resumed is not None:  # this process replaces a video process that died (engine/video_proc.py)
                st.stats.restarts += 1
                st.stats.last_seq = resumed
                self.event(sid, {"type": "stream_restarted", "stream": sid, "reason": "worker_restarted",
                                 "last_seq": resumed})
        stats = st.stats
        if st.refused:
            stats.errors += 1
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
            stats.drops += missing  # video is latest-frame-wins: lost packets are drops
            for stage in st.stages:
                resync = getattr(stage, "resync", None)
                if resync is not None:
                    resync()
            self.event(sid, {"type": "video_gap", "stream": sid, "first_missing_seq": last + 1,
                             "missing_chunks": missing, "drops": stats.drops}, limit_key=f"vgap:{sid}")
        stats.last_seq = chunk.seq
        if self.progress:
            self._done[sid] = chunk.seq
        stats.chunks_in += 1
        stats.samples_in += 1
        self._last_rx[sid] = now
        stalled_at = self._stalled.pop(sid, None)
        if stalled_at is not None:
            self.event(sid, {"type": "video_resumed", "stream": sid, "seq": chunk.seq,
                             "silent_s": round(now - stalled_at + self.stall_s, 3)})
        x: Chunk | None = chunk
        start = len(st.stages)
        for i, stage in enumerate(st.stages):
            if not getattr(stage, "every_chunk", False):
                start = i
                break
        if superseded and redraw and start < len(st.stages) and hasattr(st.stages[start], "reuse"):
            superseded = False  # decode it to a frame: it gets the last analysis below
        else:
            redraw = False
        for i, stage in enumerate(st.stages[:start]):
            advance = getattr(stage, "advance", None) if superseded else None
            try:
                out = advance(x) if advance is not None else stage.process(x)  # type: ignore[arg-type]
            except Exception as e:  # count, report, keep serving
                self._stage_error(sid, st, stage, e)
                return
            self._emit(st, stage, out, None, i)
            if advance is not None:
                stats.drops += int(getattr(stage, "last_decoded", 0))
                return
            x = out.signal
            if x is None:
                return
        if x is None or start >= len(st.stages):
            return
        if redraw:
            stats.drops += 1  # not analysed: a newer frame is queued
            self._redraw(st, x, start)
            return
        if sid in self._pending:
            stats.drops += 1  # decoded, then replaced by a newer frame before analysis
        self._pending[sid] = _Pending(st, x, start, self._source_ref_ns(x))

    def _redraw(self, st: _Stream, frame: Chunk, start: int) -> None:
        """Run the latest-only stages on a frame dropped for a newer one, re-using the last analysis.

        Stages that have ``reuse(frame)`` (the polyp stage: its last overlay on this frame and a
        ``reused: true`` record) are called with it, the others (the encoder) with ``process``, so
        the annotated stream gets this frame too. Not counted in the latency figures.
        """
        x: Chunk | None = frame
        for i in range(start, len(st.stages)):
            stage = st.stages[i]
            reuse = getattr(stage, "reuse", None)
            try:
                out = reuse(x) if reuse is not None else stage.process(x)  # type: ignore[arg-type]
            except Exception as e:
                self._stage_error(st.spec.stream, st, stage, e)
                return
            self._emit_video(st, stage, out, None)
            x = out.signal
            if x is None:
                return
        self.redrawn += 1

    def analyse_pending(self) -> None:
        """Run the latest-only stages on the newest frame of each stream."""
        pending, self._pending = self._pending, {}
        for sid, p in pending.items():
            if self.streams.get(sid) is not p.st:
                continue  # the stream restarted meanwhile
            x: Chunk | None = p.frame
            measured = False
            for i in range(p.start, len(p.st.stages)):
                stage = p.st.stages[i]
                try:
                    out = stage.process(x)  # type: ignore[arg-type]
                except Exception as e:
                    self._stage_error(sid, p.st, stage, e)
                    break
                measured |= self._emit_video(p.st, stage, out, None if measured else p.ref_ns)
                x = out.signal
                if x is None:
                    break
            self.analysed += 1

    def _emit_video(self, st: _Stream, stage: Stage, out: Outputs, ref_ns: int | None) -> bool:
        """Publish a latest-only stage's outputs; record latency at the first record published."""
        measured = False
        for rec in out.records:
            try:
                pub_ns = self.publish(rec)
            except ProtocolError as e:
                self._output_error(st, stage, rec, e)
                continue
            st.stats.records_out += 1
            if ref_ns is not None and not measured:
                lat = (pub_ns - ref_ns) * 1e-9
                st.stats.latency.record(lat)
                self.latency.record(lat)
                measured = True
        if out.signal is not None and getattr(stage.params, "publish", False):
            try:
                pub_ns = self.publish(out.signal)
            except ProtocolError as e:
                self._output_error(st, stage, out.signal, e)
                return measured
            st.stats.chunks_out += 1
            if ref_ns is not None and not measured:
                lat = (pub_ns - ref_ns) * 1e-9
                st.stats.latency.record(lat)
                self.latency.record(lat)
                measured = True
        return measured

    def _check_stalls(self, now: float) -> None:
        for sid, t in self._last_rx.items():
            if sid not in self._stalled and now - t > self.stall_s:
                self._stalled[sid] = now
                st = self.streams.get(sid)
                self.event(sid, {"type": "video_stalled", "stream": sid, "silent_s": round(now - t, 3),
                                 "last_seq": st.stats.last_seq if st else -1})

    # -- loop ---------------------------------------------------------------------------
    def _serve(self) -> None:
        inbox = self.ctx.socket(zmq.PULL)
        inbox.setsockopt(zmq.RCVHWM, VIDEO_INBOX_HWM)
        inbox.bind(self.inbox_addr)
        out = self.ctx.socket(self.out_type)
        out.setsockopt(zmq.SNDHWM, self.config.engine.publish_hwm)
        out.setsockopt(zmq.LINGER, 2000)
        out.connect(self.out_addr)
        self.out = out
        self.ready.set()
        if self.before_serve is not None:  # a video process tells its host it is serving (engine/video_proc.py)
            self.before_serve()
        interval = self.config.engine.stats_interval_s
        next_stats = time.monotonic() + interval
        tick = min(0.25, self.stall_s / 2)
        stop = False
        try:
            while not stop:
                timeout_ms = max(0, int(min(next_stats - time.monotonic(), tick) * 1000))
                if inbox.poll(timeout_ms):
                    batch = []
                    for _ in range(self.max_batch):
                        try:
                            msg = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if msg[0].bytes == STOP:
                            stop = True
                            break
                        batch.append(msg)
                    topics = [m[1].bytes if len(m) > 1 else b"" for m in batch]
                    left = dict.fromkeys(topics, 0)  # per topic: packets of it still to come in this batch
                    for t in topics:
                        left[t] += 1
                    for msg, topic in zip(batch, topics, strict=True):
                        left[topic] -= 1
                        n = left[topic]
                        self.handle(msg[1:], superseded=n > 0, redraw=0 < n <= self.redraw_max)
                    try:
                        self.analyse_pending()
                    except Exception as e:  # noqa: BLE001 - containment (stages are guarded one by one)
                        self._contain_stream(None, e)
                    if self.progress:
                        self._send_progress()
                now = time.monotonic()
                self._check_stalls(now)
                if now >= next_stats:
                    self.publish_stats()
                    next_stats = time.monotonic() + interval
            for sid, st in list(self.streams.items()):
                if not st.refused:
                    self._close(sid, st)
            self.publish_stats()
        finally:
            inbox.close(linger=0)
            out.close()
