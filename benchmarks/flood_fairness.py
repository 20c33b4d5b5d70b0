"""One stream floods the engine; how long does another stream's chunk wait? (safety audit)

Usage::

    python benchmarks/flood_fairness.py [--flood 3000] [--seconds 12]

Starts an engine (thread mode, one worker) on loopback, pushes ``--flood`` 1 s ECG chunks of one
stream at once from one source (a backlog upload after a reconnect) while a second source sends
one 1 s chunk of another stream every 0.25 s, and prints that stream's publish latency (sent ->
received). A fair engine keeps it near its usual value; a FIFO worker inbox makes it wait behind
the whole flood.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time

import numpy as np
import zmq

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.transports.wire import Chunk, encode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", type=int, default=3000, help="chunks the flooding stream pushes at once")
    ap.add_argument("--seconds", type=float, default=12.0, help="how long the other stream sends")
    args = ap.parse_args(argv)
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.5))
    eng = Engine(cfg, drain_idle_s=0.2)
    eng.start()
    ctx = zmq.Context()
    x = (np.random.default_rng(0).standard_normal((360, 2)) * 0.1).astype("<f4")

    def flood() -> None:
        q = ctx.socket(zmq.PUSH)
        q.connect(eng.ingest_endpoint)
        for k in range(args.flood):
            q.send_multipart(encode(Chunk.signal("ecg", "flood/ecg", k, k * 10**9, x, 360.0, ("I", "II"),
                                                 ("mV", "mV"))))
        q.close(linger=120_000)

    lat: dict[int, float] = {}
    with Subscriber(eng.publish_endpoint, topics=["ecg/ctl"]) as sub:
        assert sub.wait_connected(10)
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)
        time.sleep(0.5)
        th = threading.Thread(target=flood, daemon=True)
        th.start()
        k = 0
        t_end = time.monotonic() + args.seconds
        while time.monotonic() < t_end or len(lat) < k:
            if time.monotonic() < t_end:
                p.send_multipart(encode(Chunk.signal("ecg", "ctl/ecg", k, k * 10**9, x, 360.0, ("I", "II"),
                                                     ("mV", "mV"), meta={"sent_ns": time.time_ns()})))
                k += 1
            elif time.monotonic() > t_end + 120:
                break
            t1 = time.monotonic() + 0.25
            while time.monotonic() < t1:
                c = sub.recv(timeout_s=0.02)
                if c is not None:
                    lat[int(c.meta["src_seq"])] = (time.time_ns() - int(c.meta["sent_ns"])) / 1e9
        p.close(0)
    eng.stop()
    eng.join(120)
    ctx.term()
    v = np.array([lat[i] for i in sorted(lat)])
    print(f"flood {args.flood} chunks: other stream {len(v)}/{k} chunks, latency p50 {np.median(v):.2f} s, "
          f"max {v.max():.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
