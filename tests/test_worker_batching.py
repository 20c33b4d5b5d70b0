"""Cross-stream micro-batching of beat classification in the worker.

The worker runs the deferred model work of queued chunks from many streams in one call;
what it publishes must be exactly what the stage publishes unbatched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from telediag.engine.config import ConfigError, EngineSettings, load_config
from telediag.engine.worker import Worker
from telediag.sources.readers import read_wfdb
from telediag.transports.wire import Chunk, decode, encode

N_STREAMS, N_CHUNKS, FS = 6, 12, 360.0


def _run(record: Path, batch_max: int, flush_every_chunk: bool) -> tuple[dict[str, list[Any]], Worker]:
    cfg = load_config()
    sc = cfg.pipelines["ecg"][0]
    assert sc.name == "analysis"
    ecg = (dataclasses.replace(sc, params=dataclasses.replace(sc.params, classify="on")),) + cfg.pipelines["ecg"][1:]
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, batch_max=batch_max),
                              pipelines={**cfg.pipelines, "ecg": ecg})
    ctx = zmq.Context.instance()
    addr = f"inproc://batching-{batch_max}-{flush_every_chunk}"
    sink = ctx.socket(zmq.SUB)
    sink.setsockopt(zmq.SUBSCRIBE, b"beats/")
    sink.setsockopt(zmq.RCVHWM, 0)
    sink.bind(addr)
    w = Worker(0, cfg, ctx, "inproc://unused-inbox", addr)
    w.out = ctx.socket(zmq.PUB)
    w.out.setsockopt(zmq.SNDHWM, 0)
    w.out.connect(addr)
    for _ in range(100):  # wait until the subscription has reached the PUB socket
        w.out.send_multipart([b"beats/probe", b"", b""])
        if sink.poll(20):
            break
    while sink.poll(50):
        sink.recv_multipart()
    sig = read_wfdb(record).signal.astype(np.float32)
    per = int(FS)
    for k in range(N_CHUNKS):  # every stream's chunk k queued before any chunk k+1
        for i in range(N_STREAMS):
            o = i * 20 * per + k * per
            c = Chunk.signal("ecg", f"s{i}/ecg", k, k * 10**9, sig[o:o + per], FS, ("MLII", "V1"), ("mV", "mV"),
                             meta={"session": "t"})
            w.handle([zmq.Frame(bytes(f)) for f in encode(c)])
            if flush_every_chunk:
                w.flush()
    w.flush()
    for sid, st in list(w.streams.items()):
        w._close(sid, st)
    got: dict[str, list[Any]] = {}
    while sink.poll(200):
        ch = decode(sink.recv_multipart())
        got.setdefault(ch.stream, []).extend(ch.body["beats"])
    w.out.close(0)
    sink.close(0)
    return got, w


@pytest.mark.data
def test_batched_equals_unbatched(mitdb: Path) -> None:
    ref, w1 = _run(mitdb / "119", batch_max=1, flush_every_chunk=False)
    got, w64 = _run(mitdb / "119", batch_max=64, flush_every_chunk=False)
    assert w1.batches_run == 0  # batch_max = 1: the stage classifies synchronously
    # chunk k of all streams shared one model call (a chunk without a classifiable beat adds none)
    assert w64.batches_run <= N_CHUNKS + 1 and w64.batch_largest == N_STREAMS
    assert w64.batch_items > 3 * w64.batches_run
    assert sorted(ref) == sorted(got) == [f"s{i}/ecg" for i in range(N_STREAMS)]
    for sid in ref:
        a, b = ref[sid], got[sid]
        assert [x["sample"] for x in a] == [x["sample"] for x in b]
        assert [x["release_sample"] for x in a] == [x["release_sample"] for x in b]
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert all(x["label"] in {"N", "S", "V", "F", "Q"} for x in b)
        pa = np.array([[x["probs"][c] for c in "NSVFQ"] for x in a])
        pb = np.array([[x["probs"][c] for c in "NSVFQ"] for x in b])
        np.testing.assert_allclose(pa, pb, atol=2e-4)
    assert sum(len(v) for v in ref.values()) > 50


@pytest.mark.data
def test_flush_per_chunk_is_also_identical(mitdb: Path) -> None:
    ref, _ = _run(mitdb / "119", batch_max=1, flush_every_chunk=False)
    got, w = _run(mitdb / "119", batch_max=64, flush_every_chunk=True)
    assert w.batch_largest == 1
    assert {k: [x["label"] for x in v] for k, v in ref.items()} == {k: [x["label"] for x in v] for k, v in got.items()}


def test_batch_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="batch_max"):
        EngineSettings(batch_max=0)
    with pytest.raises(ConfigError, match="batch_wait_ms"):
        EngineSettings(batch_wait_ms=-1.0)
