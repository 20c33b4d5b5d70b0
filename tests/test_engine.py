"""The engine in-process over loopback: order, gaps, rejects, stats, restarts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from scipy.signal import sosfilt, sosfilt_zi

from telediag.client import Subscriber
from telediag.dsp.design import ecg_bandpass
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine, owner_of
from telediag.transports.wire import Chunk, encode

FS = 360.0


@pytest.fixture()
def engine() -> Iterator[Engine]:
    cfg = load_config()
    cfg = dataclasses.replace(
        cfg,
        engine=dataclasses.replace(
            cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.1
        ),
    )
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    yield eng
    eng.stop()
    eng.join(10)


@pytest.fixture()
def sub(engine: Engine) -> Iterator[Subscriber]:
    s = Subscriber(engine.publish_endpoint, topics=["ecg/", "event/", "stats/"])
    assert s.wait_connected(5), "no stats from the engine"
    yield s
    s.close()


@pytest.fixture()
def push(engine: Engine) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 1000)
    s.connect(engine.ingest_endpoint)
    yield s
    s.close()
    ctx.term()


def ecg_chunk(seq: int, data: np.ndarray, stream: str = "t/ecg", session: str = "s1") -> Chunk:
    return Chunk.signal("ecg", stream, seq, int(seq * 1e9), data, FS, ("I", "II"), ("mV", "mV"),
                        meta={"session": session})


def collect(sub: Subscriber, quiet_s: float = 0.6, max_s: float = 15.0) -> tuple[list[Chunk], list[dict], list[dict]]:
    """Everything published until ``quiet_s`` passes without a non-stats message."""
    sig: list[Chunk] = []
    events: list[dict] = []
    stats: list[dict] = []
    end = time.monotonic() + max_s
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet_s:
        c = sub.recv(timeout_s=0.05)
        if c is None:
            continue
        if c.kind != "stats":
            last = time.monotonic()
        if c.kind == "ecg":
            sig.append(c)
        elif c.kind == "event":
            events.append(c.body)
        elif c.kind == "stats":
            stats.append(c.body)
    return sig, events, stats


def test_filtered_stream_equals_one_pass(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 2)).cumsum(axis=0) * 0.01
    splits = np.sort(rng.choice(np.arange(1, 3000), 40, replace=False))
    for seq, part in enumerate(np.split(x, splits)):
        push.send_multipart(encode(ecg_chunk(seq, part)))
    sig, events, _ = collect(sub)
    assert [c.seq for c in sig] == list(range(len(splits) + 1))
    assert all(c.stream == "t/ecg/filtered" for c in sig)
    y = np.concatenate([c.data for c in sig])
    sos = ecg_bandpass(FS, 0.5, 40.0, 4)
    ref, _ = sosfilt(sos, x, axis=0, zi=sosfilt_zi(sos)[:, :, None] * x[0][None, None, :])
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    assert any(e["type"] == "stream_opened" for e in events)


def test_gap_is_published_with_missing_range(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    block = np.zeros((36, 2))
    for seq in (0, 1, 2, 6, 7):
        push.send_multipart(encode(ecg_chunk(seq, block)))
    sig, events, stats = collect(sub)
    gaps = [e for e in events if e["type"] == "gap"]
    assert gaps == [dict(gaps[0], first_missing_seq=3, last_missing_seq=5, missing_chunks=3)]
    assert len(sig) == 5  # every chunk that arrived is processed
    last = stats[-1]["streams"]["t/ecg"]
    assert last["gaps"] == 1 and last["missing_chunks"] == 3 and last["chunks_in"] == 5


def test_duplicate_and_out_of_order_are_dropped_and_counted(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    block = np.ones((10, 2))
    for seq in (0, 1, 1, 0, 2):
        push.send_multipart(encode(ecg_chunk(seq, block)))
    sig, events, stats = collect(sub)
    assert len(sig) == 3
    assert sum(e["type"] == "out_of_order" for e in events) == 2
    assert stats[-1]["streams"]["t/ecg"]["out_of_order"] == 2


def test_new_session_restarts_the_stream(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    block = np.ones((10, 2))
    for seq in range(3):
        push.send_multipart(encode(ecg_chunk(seq, block, session="a")))
    for seq in range(2):
        push.send_multipart(encode(ecg_chunk(seq, block, session="b")))
    sig, events, stats = collect(sub)
    assert len(sig) == 5
    assert [e["type"] for e in events].count("stream_restarted") == 1
    assert stats[-1]["streams"]["t/ecg"]["restarts"] == 1


MALFORMED: list[list[bytes]] = [
    [b"ecg/t/ecg"],  # truncated: one frame
    [b"ecg/t/ecg", b"\x81\xa1v\x01"],  # header without payload frame / fields
    [b"ecg/t/ecg", b"\xff\xfe garbage", b""],
    [b"ecg/t/ecg", b"\x00" * 10000, b""],  # oversized header
]


def _bad_size() -> list[bytes]:
    frames = [bytes(f) for f in encode(ecg_chunk(99, np.zeros((36, 2))))]
    frames[2] = frames[2][:-8]
    return frames


def _bad_version() -> list[bytes]:
    import msgpack

    frames = [bytes(f) for f in encode(ecg_chunk(99, np.zeros((36, 2))))]
    h = msgpack.unpackb(frames[1])
    h["v"] = 2
    frames[1] = msgpack.packb(h)
    return frames


def test_malformed_messages_are_rejected_counted_and_reported(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    x = np.random.default_rng(2).standard_normal((36 * 20, 2))
    bad = [*MALFORMED, _bad_size(), _bad_version()]
    for seq in range(20):
        push.send_multipart(encode(ecg_chunk(seq, x[seq * 36:(seq + 1) * 36])))
        if seq < len(bad):
            push.send_multipart(bad[seq])
    sig, events, stats = collect(sub)
    assert [c.seq for c in sig] == list(range(20))  # not one valid chunk lost
    assert sum(c.n_samples for c in sig) == 36 * 20
    rejects = stats[-1]["rejects"]
    assert sum(rejects.values()) == len(bad)
    assert {"size_mismatch", "bad_version", "header_too_large"} <= set(rejects)
    reasons = {e["reason"] for e in events if e["type"] == "rejected"}
    assert reasons == set(rejects)


def test_spec_change_is_rejected(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    push.send_multipart(encode(ecg_chunk(0, np.zeros((10, 2)))))
    other = Chunk.signal("ecg", "t/ecg", 1, 0, np.zeros((10, 2)), 250.0, ("I", "II"), ("mV", "mV"),
                         meta={"session": "s1"})
    push.send_multipart(encode(other))
    sig, events, stats = collect(sub)
    assert len(sig) == 1
    assert stats[-1]["rejects"].get("spec_changed") == 1


def test_stream_refused_when_stage_cannot_open(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    # 40 Hz high cut-off is above Nyquist at 50 Hz: the stream is refused, the engine lives on
    c = Chunk.signal("ecg", "slow/ecg", 0, 0, np.zeros((5, 1)), 50.0, ("I",), ("mV",))
    push.send_multipart(encode(c))
    push.send_multipart(encode(ecg_chunk(0, np.zeros((10, 2)))))
    sig, events, _ = collect(sub)
    assert any(e["type"] == "stream_refused" and "Nyquist" in e["detail"] for e in events)
    assert len(sig) == 1 and sig[0].stream == "t/ecg/filtered"


def test_latency_is_measured(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    for seq in range(5):
        c = ecg_chunk(seq, np.zeros((36, 2)))
        now = time.time_ns()
        c = dataclasses.replace(c, t0_ns=now - 100_000_000, meta={"session": "s1", "sent_ns": now})
        push.send_multipart(encode(c))
    _, _, stats = collect(sub)
    lat = stats[-1]["streams"]["t/ecg"]["latency_ms"]
    assert lat["count"] == 5 and 0 <= lat["p50"] <= lat["p99"] <= lat["max"] < 5000


def test_owner_is_stable_and_spreads() -> None:
    owners = [owner_of(f"bed-{i}/ecg", 4) for i in range(200)]
    assert owners == [owner_of(f"bed-{i}/ecg", 4) for i in range(200)]
    assert set(owners) == {0, 1, 2, 3}


def test_multiple_workers_merge_into_one_endpoint() -> None:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", workers=3, stats_interval_s=0.1))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    try:
        with Subscriber(eng.publish_endpoint, topics=["ecg/", "stats/"]) as s:
            assert s.wait_connected(5)
            ctx = zmq.Context()
            p = ctx.socket(zmq.PUSH)
            p.connect(eng.ingest_endpoint)
            streams = [f"bed-{i}/ecg" for i in range(12)]
            for seq in range(5):
                for st in streams:
                    p.send_multipart(encode(ecg_chunk(seq, np.zeros((8, 2)), stream=st)))
            sig, _, stats = collect(s)
            p.close()
            ctx.term()
        per_stream: dict[str, list[int]] = {}
        for c in sig:
            per_stream.setdefault(c.stream, []).append(c.seq)
        assert per_stream == {f"{st}/filtered": [0, 1, 2, 3, 4] for st in streams}
        workers = {b["worker"] for b in stats}
        assert workers == {0, 1, 2}
        owned = {sid: b["worker"] for b in stats for sid in b["streams"]}
        assert owned == {st: owner_of(st, 3) for st in streams}
    finally:
        eng.stop()
        eng.join(10)


def test_nan_runs_do_not_poison_the_filter() -> None:
    from telediag.engine.stage import StreamSpec
    from telediag.engine.stages.ecg import EcgFilter, EcgFilterParams

    st = EcgFilter(EcgFilterParams())
    st.open(StreamSpec("n/ecg", "ecg", FS, ("I",), ("mV",)))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 1))
    x[500:560] = np.nan
    outs = []
    for seq, part in enumerate(np.split(x, [100, 530, 1000])):
        c = Chunk.signal("ecg", "n/ecg", seq, 0, part, FS, ("I",), ("mV",))
        outs.append(st.process(c).signal.data)
    y = np.concatenate(outs)
    assert np.isnan(y[500:560]).all()
    assert np.isfinite(y[:500]).all() and np.isfinite(y[560:]).all()
    assert np.abs(y[1500:]).max() < 10  # the state recovered


def test_stats_report_connected_subscribers_and_sources(engine: Engine, sub: Subscriber, push: zmq.Socket) -> None:
    push.send_multipart(encode(ecg_chunk(0, np.zeros((360, 2)))))
    second = Subscriber(engine.publish_endpoint, topics=["stats/"])
    try:
        assert second.wait_connected(5)
        deadline = time.monotonic() + 10
        seen = None
        while time.monotonic() < deadline:
            c = sub.recv(timeout_s=0.5)
            if c is not None and c.kind == "stats" and "sockets" in c.body:
                seen = c.body["sockets"]
                if seen["publish"]["connections"] >= 2 and seen["ingest"]["connections"] >= 1:
                    break
        assert seen is not None, "no socket counts on stats/engine/w0"
        assert seen["publish"]["connections"] >= 2 and seen["ingest"]["connections"] >= 1
    finally:
        second.close()
