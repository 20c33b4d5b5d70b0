"""One stream's backlog must not delay the other streams of its worker (safety: fair router).

A device that reconnects uploads what it buffered at once; before the fair router, those chunks went
straight into the worker's FIFO inbox and another patient's chunks waited behind all of them (8 s
for 3,000 one-second chunks, ``benchmarks/flood_fairness.py``). Now a worker's inbox is small and
the backlog waits in the router's per-stream queues, where streams take turns. Checked by order,
not by time: the other stream's chunks, sent after the whole backlog, are published long before
the backlog's end, and nothing is lost or reordered within a stream.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import zmq

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.transports.wire import Chunk, encode


def test_a_backlog_of_one_stream_does_not_delay_another() -> None:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.5))
    eng = Engine(cfg, drain_idle_s=0.2)
    eng.start()
    n_flood, n_other = 600, 5
    x = (np.random.default_rng(0).standard_normal((360, 2)) * 0.1).astype("<f4")
    order: list[tuple[str, int]] = []
    ctx = zmq.Context()
    try:
        with Subscriber(eng.publish_endpoint, topics=["ecg/"]) as sub:
            assert sub.wait_connected(10)
            flood = ctx.socket(zmq.PUSH)
            flood.connect(eng.ingest_endpoint)
            other = ctx.socket(zmq.PUSH)
            other.connect(eng.ingest_endpoint)
            for k in range(n_flood):  # the backlog: every chunk at once
                flood.send_multipart(encode(Chunk.signal("ecg", "flood/ecg", k, k * 10**9, x, 360.0, ("I", "II"),
                                                         ("mV", "mV"))))
            time.sleep(0.05)
            for k in range(n_other):  # another patient, in real time, after the whole backlog was sent
                other.send_multipart(encode(Chunk.signal("ecg", "other/ecg", k, k * 10**9, x, 360.0, ("I", "II"),
                                                         ("mV", "mV"))))
                time.sleep(0.02)
            end = time.monotonic() + 120
            while len(order) < n_flood + n_other and time.monotonic() < end:
                c = sub.recv(timeout_s=0.2)
                if c is not None and c.kind == "ecg":
                    order.append((c.stream.split("/")[0], int(c.meta["src_seq"])))
            flood.close(0)
            other.close(0)
    finally:
        eng.stop()
        eng.join(60)
        ctx.term()
    got_flood = [q for s, q in order if s == "flood"]
    got_other = [q for s, q in order if s == "other"]
    assert got_flood == list(range(n_flood)), "backlog chunks lost or reordered"
    assert got_other == list(range(n_other)), "the other stream's chunks lost or reordered"
    first_other = order.index(("other", 0))
    last_other = order.index(("other", n_other - 1))
    after = sum(1 for s, _ in order[last_other:] if s == "flood")
    print(f"the other stream's first chunk came out after {first_other} backlog chunks; "
          f"{after} of {n_flood} backlog chunks were still behind its last")
    # FIFO inbox: 0 backlog chunks behind the other stream; fair: most of the backlog is
    assert after >= n_flood // 2, (first_other, after)
