"""Bounded soak: many ECG streams through the default pipeline; memory must not grow."""

from __future__ import annotations

import dataclasses
import gc
import time

import numpy as np
import pytest
import zmq

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.sources.readers import read_wfdb
from telediag.transports.wire import Chunk, encode

pytestmark = [pytest.mark.slow]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_soak_memory_is_flat(mitdb) -> None:  # noqa: ANN001
    rec = read_wfdb(mitdb / "208")  # frequent ectopy: beats, HR and quality all busy
    sig = rec.signal.astype(np.float32)
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.5))
    eng = Engine(cfg, drain_idle_s=0.2)
    eng.start()
    n_streams, per = 8, 360  # 1 s chunks, sent at 20x real time: 8 streams x 20 min of ECG each
    ctx = zmq.Context()
    p = ctx.socket(zmq.PUSH)
    p.connect(eng.ingest_endpoint)
    samples: list[tuple[float, float]] = []
    received = 0
    try:
        with Subscriber(eng.publish_endpoint, topics=["beats/", "hr/", "stats/"]) as sub:
            assert sub.wait_connected(30)
            t_start = time.monotonic()
            k = 0
            t0 = time.time_ns()
            while time.monotonic() - t_start < 60:
                for i in range(n_streams):
                    o = ((k + 97 * i) * per) % (len(sig) - per)
                    c = Chunk.signal("ecg", f"soak-{i}/ecg", k, t0 + k * 10**9, sig[o:o + per], rec.fs,
                                     rec.channels, rec.units, meta={"session": "soak"})
                    p.send_multipart(encode(c))
                k += 1
                while sub.recv(timeout_s=0) is not None:
                    received += 1
                time.sleep(0.05)
                if k % 100 == 0:
                    gc.collect()
                    samples.append((time.monotonic() - t_start, _rss_mb()))
            stats = eng.workers[0].stats_body()
    finally:
        p.close()
        ctx.term()
        eng.stop()
        eng.join(20)
    assert received > 0
    assert all(s["errors"] == 0 and s["gaps"] == 0 for s in stats["streams"].values())
    # after warm-up (first third), resident memory must stay flat
    later = [m for t, m in samples if t > 20]
    assert len(later) >= 3, samples
    growth = later[-1] - later[0]
    assert growth < 25.0, f"RSS grew {growth:.1f} MB over the soak: {samples}"
