"""Live-stream harness shared by the worker-pool tests (process workers, Ray actors).

Sources push ECG chunks straight to the engine's ingest socket; a :class:`Subscriber` collects what
the engine publishes. Everything is loopback and bounded in time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from telediag.client import Subscriber
from telediag.engine.runtime import Engine
from telediag.transports.outputs import check_body
from telediag.transports.wire import Chunk, encode

FS = 360.0


def chunk(stream: str, seq: int, x: np.ndarray) -> Chunk:
    """A 2-lead ECG chunk ``seq`` of ``stream`` (50 ms apart in source time)."""
    return Chunk.signal("ecg", stream, seq, seq * 50_000_000, x, FS, ("I", "II"), ("mV", "mV"),
                        meta={"session": "p"})


def run_streams(eng: Engine, streams: list[str], n_chunks: int,
                timeout_s: float = 30.0) -> tuple[dict[str, list[Chunk]], list[dict]]:
    """Send ``n_chunks`` seeded random-walk chunks per stream at once; return the ECG outputs per
    output stream and the events, once every chunk has an output or ``timeout_s`` has passed."""
    rng = np.random.default_rng(3)
    data = {s: rng.standard_normal((n_chunks * 30, 2)).cumsum(0) * 0.01 for s in streams}
    got: dict[str, list[Chunk]] = {}
    events: list[dict] = []
    with Subscriber(eng.publish_endpoint, topics=["ecg/", "event/"]) as sub:
        assert sub.wait_connected(10)
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)
        for k in range(n_chunks):
            for s in streams:
                p.send_multipart(encode(chunk(s, k, data[s][k * 30:(k + 1) * 30])))
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and sum(len(v) for v in got.values()) < n_chunks * len(streams):
            c = sub.recv(timeout_s=0.1)
            if c is None:
                continue
            if c.kind == "ecg":
                got.setdefault(c.stream, []).append(c)
            elif c.kind == "event":
                events.append(c.body)
        p.close()
        ctx.term()
    return got, events


def live(eng: Engine, streams: list[str], n_chunks: int, period: float, at: int, action: Callable[[], object],
         quiet_s: float = 3.0) -> tuple[dict[str, list[int]], dict[str, list[int]], list[dict], dict[str, float]]:
    """Send ``n_chunks`` chunks per stream paced ``period`` s apart, call ``action()`` just before chunk
    ``at`` (its time in ``marks["t"]``), and collect until the engine has been quiet for ``quiet_s``.

    Returns (source seqs published per stream, output seqs per stream, events, marks).
    """
    sent = threading.Event()
    marks: dict[str, float] = {}

    def source() -> None:
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)
        x = np.zeros((18, 2), "<f4")
        t0 = time.monotonic()
        for k in range(n_chunks):
            d = t0 + k * period - time.monotonic()
            if d > 0:
                time.sleep(d)
            if k == at:
                action()
                marks["t"] = time.monotonic()
            for s in streams:
                p.send_multipart(encode(chunk(s, k, x)))
        p.close(linger=10000)
        ctx.term()
        sent.set()

    src: dict[str, list[int]] = {s: [] for s in streams}
    out_seq: dict[str, list[int]] = {s: [] for s in streams}
    events: list[dict] = []
    with Subscriber(eng.publish_endpoint, topics=["ecg/", "event/"]) as sub:
        assert sub.wait_connected(10)
        th = threading.Thread(target=source, daemon=True)
        th.start()
        last = time.monotonic()
        while time.monotonic() - last < quiet_s or not sent.is_set():
            c = sub.recv(timeout_s=0.1)
            if c is None:
                continue
            last = time.monotonic()
            if c.kind == "ecg":
                s = c.stream.removesuffix("/filtered")
                src[s].append(int(c.meta["src_seq"]))
                out_seq[s].append(c.seq)
            elif c.kind == "event":
                events.append(c.body)
        th.join(10)
    return src, out_seq, events, marks


def check_restarted_streams(src: dict[str, list[int]], events: list[dict], mine: list[str], others: list[str],
                            n_chunks: int) -> int:
    """Assert the outcome of a worker killed mid-stream; return the number of chunks reported lost.

    The other workers' streams lost nothing and were not restarted; each of the dead worker's streams
    has one ``stream_restarted`` (``worker_restarted``) and at most one ``gap``, and what was
    published plus what the gap reports is every chunk, once, in order. Every event body matches
    its JSON Schema (OUTPUTS.md section 5).
    """
    for e in events:
        check_body("event", e)
    everything = list(range(n_chunks))
    for s in others:
        assert src[s] == everything, s
        assert not [e for e in events if e.get("stream") == s and e["type"] in ("gap", "stream_restarted")], s
    lost_total = 0
    for s in mine:
        restarts = [e for e in events if e.get("stream") == s and e["type"] == "stream_restarted"]
        assert len(restarts) == 1 and restarts[0]["reason"] == "worker_restarted", s
        last_ok = restarts[0]["last_seq"]
        gaps = [e for e in events if e.get("stream") == s and e["type"] == "gap"]
        lost = [q for g in gaps for q in range(g["first_missing_seq"], g["last_missing_seq"] + 1)]
        assert len(gaps) <= 1, (s, gaps)
        assert sorted(src[s] + lost) == everything, (s, last_ok, gaps)
        assert src[s] == sorted(src[s]) and not set(src[s]) & set(lost), s
        assert all(q <= last_ok for q in src[s] if q < (lost[0] if lost else n_chunks)), (s, last_ok)
        lost_total += len(lost)
    return lost_total


def check_removed_worker(src: dict[str, list[int]], out_seq: dict[str, list[int]], events: list[dict],
                         n: int, victim: int, n_chunks: int) -> list[str]:
    """Assert the outcome of removing worker ``victim`` of ``n`` mid-stream; return the moved streams.

    Only the victim's streams moved, each with exactly one ``stream_moved`` to the worker with its
    next-highest rendezvous weight; every stream's outputs cover every chunk once, in order, with
    output ``seq`` contiguous and no ``gap``/``stream_restarted``; ``event/engine`` has one
    ``worker_removed`` for the victim. Every event body matches its JSON Schema (OUTPUTS.md 5).
    """
    for e in events:
        check_body("event", e)
    from telediag.engine.procs import owner_of

    everything = list(range(n_chunks))
    moving = [s for s in src if owner_of(s, n) == victim]
    for s in src:
        mine = [e for e in events if e.get("stream") == s]
        why = (s, sorted(set(everything) - set(src[s])), [e for e in mine if e["type"] != "quality"])
        assert src[s] == everything, why  # nothing lost, nothing twice, in order
        assert out_seq[s] == list(range(len(out_seq[s]))), why  # output seq continues across the handover
        assert not [e for e in mine if e["type"] in ("gap", "stream_restarted")], why
        moved = [e for e in mine if e["type"] == "stream_moved"]
        if s in moving:
            assert len(moved) == 1, why
            m = moved[0]
            assert (m["from_worker"], m["to_worker"]) == (victim, owner_of(s, n, {victim})), m
            assert 0 <= m["last_seq"] < n_chunks - 1, m
        else:
            assert not moved, why
    removed = [e for e in events if e["type"] == "worker_removed"]
    assert [e["worker"] for e in removed] == [victim], removed
    return moving
