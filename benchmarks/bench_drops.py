"""Cost of per-subscriber drop counting, next to what a subscriber does anyway.

Per received message, :class:`telediag.client.Subscriber` now runs
:meth:`telediag.client.SeqTracker.observe`; the viewer bridge's per-browser queue counts drops
per topic in :meth:`telediag.viewer.bridge.Client.put`. Peers measured in the same run:

* ``decode``: :func:`telediag.transports.wire.decode` of one 100-ms, 2-lead ECG chunk (the
  work every subscriber does per message);
* ``decode+observe``: the same plus seq tracking (what ``Subscriber.recv`` does now);
* ``observe``: seq tracking alone, 16 interleaved topics;
* ``client_put``: one message into a full bridge queue (drop-oldest, counted per topic).

Run::

    pytest benchmarks/bench_drops.py --benchmark-only       # timings
    pytest benchmarks/bench_drops.py --benchmark-disable    # smoke mode (CI)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from telediag.client import SeqTracker
from telediag.transports.wire import Chunk, decode, encode
from telediag.viewer.bridge import Client

N = 1000


def _frames() -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((36, 2)).astype(np.float32)
    return [list(encode(Chunk.signal("ecg", f"bed-{i % 16}/ecg", i // 16, i * 10**8, x, 360.0, ("MLII", "V1"),
                                     ("mV", "mV")))) for i in range(N)]


@pytest.fixture(scope="module")
def frames() -> list[list[bytes]]:
    return _frames()


def test_decode(benchmark: Any, frames: list[list[bytes]]) -> None:
    def run() -> int:
        return sum(decode(f).seq for f in frames)

    assert benchmark(run) == sum(i // 16 for i in range(N))


def test_decode_and_observe(benchmark: Any, frames: list[list[bytes]]) -> None:
    def run() -> int:
        t = SeqTracker()
        for f in frames:
            c = decode(f)
            t.observe(c.topic, c.seq)
        return t.drops

    assert benchmark(run) == 0


def test_observe(benchmark: Any) -> None:
    topics = [f"ecg/bed-{i % 16}/ecg" for i in range(N)]
    seqs = [i // 16 for i in range(N)]

    def run() -> int:
        t = SeqTracker()
        for topic, seq in zip(topics, seqs, strict=True):
            t.observe(topic, seq)
        return t.received

    assert benchmark(run) == N


def test_client_put_full_queue(benchmark: Any) -> None:
    msg = b"x" * 512

    def run() -> int:
        c = Client(maxlen=64)
        for _ in range(N):
            c.put(msg, "ecg/bed-1/ecg")
        return c.dropped

    assert benchmark(run) == N - 64
