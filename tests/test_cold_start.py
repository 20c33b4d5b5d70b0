"""Cold start (issue 18 item 3): data sent during warm-up is processed in order, and its latency is
reported apart so it does not weigh on the run's percentiles.

The warm-up is made slow on purpose (a 2 s sleep on top of loading the kernels), a source sends
real-time chunks from the first instant, and the engine's stats must then show: every chunk
published once and in order, the queued ones counted in ``warmup.latency_ms``, the later ones in
``latency_ms`` with a p99 far below the warm-up's.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from conftest import free_port

from telediag.client import Subscriber
from telediag.engine import worker as worker_mod
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.transports.wire import Chunk, encode

FS = 360.0
SLOW_S = 2.0


@pytest.mark.parametrize("router_delay_s", [0.0, 0.6])
def test_warm_up_backlog_is_in_order_and_reported_apart(monkeypatch: pytest.MonkeyPatch,
                                                        router_delay_s: float) -> None:
    """``router_delay_s``: the ingest router forwards the backlog only that long after the worker is
    ready (a busy machine); an empty inbox meanwhile is not "caught up" (it was, before: the whole
    backlog then weighed on the run's percentiles, seen in the cold-start benchmark)."""
    real = worker_mod.warm_pipelines
    if router_delay_s:
        real_route = Engine._route

        def late_route(self: Engine) -> None:
            time.sleep(router_delay_s)
            real_route(self)

        monkeypatch.setattr(Engine, "_route", late_route)

    def slow(*a: object, **k: object) -> dict[str, float]:
        time.sleep(SLOW_S)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(worker_mod, "warm_pipelines", slow)
    ingest, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, ingest=ingest, publish=publish,
                                                              stats_interval_s=0.2))
    eng = Engine(cfg, drain_idle_s=0.1)
    sub = Subscriber(publish, topics=["ecg/", "stats/"])
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(ingest)
    period = 0.1  # 100 ms chunks in real time, from before the engine is up until 2 s after it is
    starter = threading.Thread(target=eng.start, daemon=True)
    t0 = time.monotonic()
    starter.start()
    n, after = 0, 0
    try:
        for k in range(100_000):
            if not starter.is_alive():
                after += 1
                if after > 20:
                    break
            d = t0 + k * period - time.monotonic()
            if d > 0:
                time.sleep(d)
            n = k + 1
            now = time.time_ns()
            c = Chunk.signal("ecg", "cold/ecg", k, now - 100_000_000, np.zeros((36, 2), "<f4"), FS, ("I", "II"),
                             ("mV", "mV"), meta={"session": "c", "sent_ns": now})
            push.send_multipart(encode(c))
        starter.join(300)
        seqs: list[int] = []
        stats: dict = {}
        end = time.monotonic() + 20
        while time.monotonic() < end:
            c = sub.recv(timeout_s=0.1)
            if c is None:
                continue
            if c.kind == "ecg":
                seqs.append(int(c.meta["src_seq"]))
            elif c.kind == "stats":
                stats = c.body
                if len(seqs) == n and not stats["warmup"]["warming"]:
                    break
    finally:
        push.close()
        ctx.term()
        sub.close()
        eng.stop()
        eng.join(15)
    assert seqs == list(range(n)), "chunks sent during warm-up lost or reordered"
    warm, steady = stats["warmup"]["latency_ms"], stats["latency_ms"]
    assert stats["warmup"]["s"] >= SLOW_S and stats["warmup"]["caught_up_s"] is not None
    assert warm["count"] >= 5 and steady["count"] >= 5 and warm["count"] + steady["count"] == n
    assert warm["max"] > 1000 * (SLOW_S - 0.5)  # the backlog waited for the warm-up ...
    assert steady["p99"] < warm["max"] / 4  # ... and the run's percentiles do not carry it


def test_scipy_signal_fast_import_restores_scipy_and_keeps_docstrings() -> None:
    """``telediag run``/``demo`` import scipy.signal without SciPy's docstring rewriting; the parser
    is put back afterwards, the functions work and keep their own docstrings. In a fresh process:
    this one has imported scipy.signal long ago."""
    code = (
        "import sys\n"
        "from telediag.engine.warmup import import_scipy_signal\n"
        "import scipy._lib._array_api as xa\n"
        "orig = xa.FunctionDoc\n"
        "import_scipy_signal()\n"
        "import scipy.signal as s\n"
        "assert xa.FunctionDoc is orig, xa.FunctionDoc\n"
        "assert 'Butterworth' in s.butter.__doc__\n"
        "sos = s.butter(4, [5.0, 15.0], btype='bandpass', fs=360.0, output='sos')\n"
        "print(repr(sos.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    import scipy.signal

    ref = scipy.signal.butter(4, [5.0, 15.0], btype="bandpass", fs=360.0, output="sos").tolist()
    assert out.stdout.strip() == repr(ref)
