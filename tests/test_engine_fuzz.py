"""Engine-level fuzz (issue 18 item 1): hostile and odd messages on live streams.

Hypothesis draws batches of messages - valid chunks with odd specs, sessions, seq jumps, NaN,
headers near the 4,096-byte limit, annotation kinds, garbage video, random frames and mutated
valid messages - and pushes them into a running engine between chunks of a *control* stream.
After every batch the control stream's next output must arrive (the engine is responsive) and,
at the end, the control stream must have lost nothing and the workers must still be alive and
publishing stats. Bounded: a few dozen examples, a few seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.errors import EngineError, ProtocolError
from telediag.transports.wire import Chunk, VideoSpec, encode

FS = 360.0
STREAMS = ("f/a", "f/b", "f/c")


class Harness:
    def __init__(self) -> None:
        cfg = load_config()
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
            cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.2,
            max_events_per_s=5))
        self.eng = Engine(cfg, drain_idle_s=0.1)
        self.eng.start()
        self.sub = Subscriber(self.eng.publish_endpoint, topics=["ecg/ctl/", "stats/"])
        assert self.sub.wait_connected(10)
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 1000)
        self.push.connect(self.eng.ingest_endpoint)
        self.ctl_seq = 0
        self.ctl_out: list[int] = []
        self.stats_seen = 0
        self.rng = np.random.default_rng(0)
        self.ctl_data: list[np.ndarray] = []

    def control_roundtrip(self, timeout_s: float = 10.0) -> None:
        """Send the control stream's next chunk and wait for its filtered output."""
        x = self.rng.standard_normal((90, 2)).astype("<f4")
        self.ctl_data.append(x)
        self.push.send_multipart(encode(Chunk.signal("ecg", "ctl/ecg", self.ctl_seq, self.ctl_seq * 250_000_000, x,
                                                     FS, ("I", "II"), ("mV", "mV"), meta={"session": "ctl"})))
        want = self.ctl_seq
        self.ctl_seq += 1
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            c = self.sub.recv(timeout_s=0.05)
            if c is None:
                continue
            if c.kind == "stats":
                self.stats_seen += 1
            elif c.topic == "ecg/ctl/ecg/filtered":
                self.ctl_out.append(int(c.meta["src_seq"]))
                if c.meta["src_seq"] == want:
                    return
        raise AssertionError(f"engine unresponsive: control chunk {want} not published within {timeout_s} s")

    def close(self) -> None:
        self.push.close()
        self.ctx.term()
        self.sub.close()
        self.eng.stop()
        try:
            self.eng.join(15)
        except EngineError:
            pass


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


# -- message strategies ---------------------------------------------------------------------
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
odd_values = st.sampled_from([0.0, np.nan, np.inf, -np.inf, 1e30, -1e-30])


@st.composite
def signal_chunks(draw: st.DrawFn) -> list[Any]:
    kind = draw(st.sampled_from(["ecg", "ecg", "pcg"]))
    n_ch = draw(st.integers(1, 3))
    n = draw(st.integers(0, 400))
    dtype = draw(st.sampled_from(["<f4", "<f8", "<i2", "<i4"]))
    data = np.full((n, n_ch), draw(finite)).astype(dtype)
    if n and dtype in ("<f4", "<f8") and draw(st.booleans()):
        data[draw(st.integers(0, n - 1))] = draw(odd_values)  # NaN/inf: rejected or carried, never fatal
    rate = draw(st.sampled_from([360.0, 250.0, 4000.0, 1.0, 0.5, 1e6]))
    meta: dict[str, Any] = {}
    if draw(st.booleans()):
        meta["session"] = draw(st.sampled_from(["s1", "s2", 7]))
    pad = draw(st.sampled_from([0, 0, 100, 3900, 3950, 4000]))
    if pad:
        meta["pad"] = "p" * pad
    c = Chunk.signal(kind, draw(st.sampled_from(STREAMS)), draw(st.integers(0, 12)), draw(st.integers(-2**40, 2**62)),
                     data, rate, [f"c{i}" for i in range(n_ch)], ["mV"] * n_ch, meta=meta)
    try:
        return list(encode(c))
    except ProtocolError:  # over the limit on the sender's side: send its frames mangled instead
        return [c.topic.encode(), b"\x80" * 8, b""]


@st.composite
def other_chunks(draw: st.DrawFn) -> list[Any]:
    which = draw(st.sampled_from(["hr", "event", "video"]))
    stream = draw(st.sampled_from(STREAMS))
    if which == "video":
        spec = VideoSpec("h264", 64, 48, "yuv420p", 25.0, keyframe=draw(st.booleans()))
        return list(encode(Chunk.video_packet(stream, draw(st.integers(0, 5)), 0, draw(st.binary(max_size=64)), spec)))
    return list(encode(Chunk.record(which, stream, draw(st.integers(0, 5)), 0, {"bpm": draw(finite)})))


@st.composite
def mutated(draw: st.DrawFn) -> list[Any]:
    frames = [bytearray(bytes(f)) for f in draw(signal_chunks())]
    i = draw(st.integers(0, len(frames) - 1))
    if frames[i]:
        j = draw(st.integers(0, len(frames[i]) - 1))
        frames[i][j] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frames[-1] = frames[-1][: draw(st.integers(0, len(frames[-1])))]
    return [bytes(f) for f in frames]


garbage = st.lists(st.binary(max_size=64), min_size=1, max_size=4)
messages = st.lists(st.one_of(signal_chunks(), other_chunks(), mutated(), garbage), min_size=1, max_size=12)

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _header_limit_chunk() -> list[Any]:
    """A valid 360 Hz ECG chunk whose meta is just under the header limit: its outputs must drop the echoed
    meta (``meta_truncated``), not the output or the worker. Always run, whatever Hypothesis draws."""
    x = np.zeros((100, 2), "<f4")
    return list(encode(Chunk.signal("ecg", "f/a", 0, 0, x, FS, ("c0", "c1"), ("mV", "mV"), meta={"pad": "p" * 3950})))


@FUZZ
@example(batch=[_header_limit_chunk()])
@given(batch=messages)
def test_engine_survives_any_message_sequence(harness: Harness, batch: list[list[bytes]]) -> None:
    for frames in batch:
        harness.push.send_multipart(frames)
    harness.control_roundtrip()
    assert not any(w.dead.is_set() for w in harness.eng.workers)
    assert not harness.eng.video_worker.dead.is_set()


def test_control_stream_lost_nothing_and_stats_kept_coming(harness: Harness) -> None:
    # runs after the fuzz test (same module-scoped engine); alone it still checks a clean run
    harness.control_roundtrip()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        c = harness.sub.recv(timeout_s=0.05)
        if c is not None and c.kind == "stats":
            harness.stats_seen += 1
    assert harness.ctl_out == list(range(harness.ctl_seq)), "the control stream lost or reordered chunks"
    assert harness.stats_seen >= 2
    assert harness.eng.dead_worker() is None
    if harness.ctl_seq > 10:  # the fuzz ran: it reached the cases that used to kill a worker
        w = harness.eng.workers[0]
        print("fuzz coverage:", {"meta_truncated": w.meta_truncated, "rejects": w.rejects, "errors": w.errors,
                                 "streams": {k: v.stats.as_dict()["errors"] for k, v in w.streams.items()}})
        assert w.meta_truncated > 0 and w.rejects
