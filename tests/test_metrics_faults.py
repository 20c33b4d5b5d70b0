"""Prometheus endpoint, and faults: a stalled viewer, clock jumps, source restarts."""

from __future__ import annotations

import dataclasses
import time
import urllib.request

import numpy as np
import zmq

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.metrics import render
from telediag.engine.runtime import Engine
from telediag.transports.wire import Chunk, encode


def _engine(**engine_kw: object) -> Engine:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.1, **engine_kw))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    return eng


def _chunk(seq: int, t0_ns: int, stream: str = "m/ecg", n: int = 36) -> Chunk:
    return Chunk.signal("ecg", stream, seq, t0_ns, np.zeros((n, 1)), 360.0, ("I",), ("mV",),
                        meta={"session": "x", "sent_ns": time.time_ns()})


def _drain(sub: Subscriber, quiet_s: float = 0.8) -> list[Chunk]:
    out: list[Chunk] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        c = sub.recv(timeout_s=0.05)
        if c is not None and c.kind != "stats":
            out.append(c)
            last = time.monotonic()
    return out


def test_prometheus_endpoint_exposes_counters_and_histograms() -> None:
    eng = _engine(metrics="127.0.0.1:0")
    try:
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)
        for seq in (0, 1, 2, 5):
            p.send_multipart(encode(_chunk(seq, time.time_ns())))
        p.send_multipart([b"garbage"])
        url = f"http://127.0.0.1:{eng.metrics.port}/metrics"
        deadline = time.monotonic() + 30
        while True:  # stats snapshots refresh every stats_interval_s
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if 'chunks_in_total{stream="m/ecg",kind="ecg"} 4' in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        p.close()
        ctx.term()
    finally:
        eng.stop()
        eng.join(10)
    assert 'telediag_stream_chunks_in_total{stream="m/ecg",kind="ecg"} 4' in text
    assert 'telediag_stream_missing_chunks_total{stream="m/ecg",kind="ecg"} 2' in text
    assert 'telediag_rejected_messages_total{reason="frame_count"} 1' in text
    assert 'telediag_latency_seconds_count{stream="m/ecg"} 4' in text
    assert 'le="+Inf"' in text


def test_render_histogram_buckets_are_cumulative() -> None:
    from telediag.engine.stats import StreamStats

    st = StreamStats(kind="ecg")
    for v in (0.0005, 0.003, 0.003, 0.04, 3.0):
        st.latency.record(v)
    text = render([{"worker": 0, "streams": {"s": st.as_dict()}}])
    buckets = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "_bucket" in line]
    assert buckets == sorted(buckets) and buckets[-1] == 5
    assert 'le="0.001"} 1' in text and 'le="0.05"} 4' in text


def test_a_stalled_viewer_never_stalls_the_engine() -> None:
    eng = _engine(publish_hwm=1000)
    try:
        ctx = zmq.Context()
        stalled = ctx.socket(zmq.SUB)  # subscribes, then never reads
        stalled.setsockopt(zmq.RCVHWM, 10)
        stalled.setsockopt(zmq.RCVBUF, 4096)
        stalled.connect(eng.publish_endpoint)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        with Subscriber(eng.publish_endpoint, ["ecg/", "stats/"]) as live:
            assert live.wait_connected(5)
            p = ctx.socket(zmq.PUSH)
            p.connect(eng.ingest_endpoint)
            n = 3000
            got: list[Chunk] = []
            for seq in range(n):
                p.send_multipart(encode(_chunk(seq, time.time_ns(), n=360)))
                if seq % 20 == 0:  # the live viewer keeps up; the stalled one never reads
                    got += [c for c in _drain(live, 0.0) if c.kind == "ecg"]
            got += [c for c in _drain(live) if c.kind == "ecg"]
            p.close()
        stalled.close(0)
        ctx.term()
        stats = eng.workers[0].stats_body()["streams"]["m/ecg"]
    finally:
        eng.stop()
        eng.join(10)
    assert stats["chunks_in"] == n and stats["chunks_out"] == n  # the engine processed everything
    assert len(got) == n and [c.seq for c in got] == list(range(n))


def test_source_clock_jump_is_processed_and_flagged_in_latency_only() -> None:
    eng = _engine()
    try:
        with Subscriber(eng.publish_endpoint, ["ecg/", "event/", "stats/"]) as sub:
            assert sub.wait_connected(5)
            ctx = zmq.Context()
            p = ctx.socket(zmq.PUSH)
            p.connect(eng.ingest_endpoint)
            now = time.time_ns()
            for seq, t0 in enumerate([now, now + 10**8, now - 3600 * 10**9, now + 3600 * 10**9, now + 2 * 10**8]):
                p.send_multipart(encode(_chunk(seq, t0)))
            out = _drain(sub)
            p.close()
            ctx.term()
    finally:
        eng.stop()
        eng.join(10)
    sig = [c for c in out if c.kind == "ecg"]
    assert [c.seq for c in sig] == [0, 1, 2, 3, 4]  # nothing lost on clock jumps
    assert [c.t0_ns for c in sig][2] == now - 3600 * 10**9  # timestamps pass through unchanged
    assert not [c for c in out if c.kind == "event" and c.body.get("type") == "gap"]
