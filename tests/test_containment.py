"""Containment: no input, however hostile or odd, stops a worker or the engine (issue 18 item 1).

Reproduces the outside check's finding first: a legal source header of ~4,090 bytes made the
engine's output header pass 4,096 bytes, the worker thread died and the engine went silent.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.engine.worker import Worker
from telediag.errors import EngineError
from telediag.transports.wire import MAX_HEADER_BYTES, MAX_STREAM_CHARS, Chunk, encode

FS = 360.0


def _cfg(**engine: object):  # type: ignore[no-untyped-def]
    cfg = load_config()
    return dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.1, **engine))


@pytest.fixture()
def engine() -> Iterator[Engine]:
    eng = Engine(_cfg(), drain_idle_s=0.1)
    eng.start()
    yield eng
    eng.stop()
    try:
        eng.join(10)
    except EngineError:
        pass


@pytest.fixture()
def push(engine: Engine) -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 1000)
    s.connect(engine.ingest_endpoint)
    yield s
    s.close()
    ctx.term()


def ecg(stream: str, seq: int, meta: dict | None = None, channels: tuple[str, ...] = ("I", "II"),
        n: int = 360) -> Chunk:
    return Chunk.signal("ecg", stream, seq, seq * 10**9, np.zeros((n, len(channels)), "<f4"), FS, channels,
                        ("mV",) * len(channels), meta=meta)


def padded(stream: str, seq: int, header_bytes: int) -> Chunk:
    """An ECG chunk whose header is exactly ``header_bytes`` long (legal up to 4,096)."""
    base = len(encode(ecg(stream, seq, {"pad": "x" * 300}))[1]) - 300  # str16 length prefix
    c = ecg(stream, seq, {"pad": "x" * (header_bytes - base)})
    assert len(encode(c)[1]) == header_bytes
    return c


def gather(sub: Subscriber, until: float, stop: object = None) -> list[Chunk]:
    out = []
    while time.monotonic() < until:
        c = sub.recv(timeout_s=0.05)
        if c is not None:
            out.append(c)
            if stop is not None and stop(c):  # type: ignore[operator]
                break
    return out


def test_header_near_the_limit_is_published_with_truncated_meta(engine: Engine, push: zmq.Socket) -> None:
    with Subscriber(engine.publish_endpoint, topics=["ecg/", "event/", "stats/"]) as sub:
        assert sub.wait_connected(5)
        for seq in range(3):
            push.send_multipart(encode(padded("big/ecg", seq, MAX_HEADER_BYTES - 6)))
            push.send_multipart(encode(ecg("ok/ecg", seq, {"session": "a"})))
        got = gather(sub, time.monotonic() + 8,
                     lambda c: c.topic == "ecg/big/ecg/filtered" and c.seq == 2)
        stats_after = gather(sub, time.monotonic() + 0.5)
    got += stats_after
    big = [c for c in got if c.topic == "ecg/big/ecg/filtered"]
    assert [c.seq for c in big] == [0, 1, 2]
    for c in big:  # engine keys kept, the echoed source meta dropped and flagged
        assert c.meta["meta_truncated"] is True and c.meta["src_seq"] == c.seq and "pad" not in c.meta
    ok = [c for c in got if c.topic == "ecg/ok/ecg/filtered"]
    assert [c.seq for c in ok] == [0, 1, 2] and all("meta_truncated" not in c.meta for c in ok)
    assert ok[0].meta["session"] == "a"  # echoed while it fits
    assert any(c.kind == "stats" for c in stats_after), "the worker went silent"


def test_unexpected_exception_resets_only_that_stream(engine: Engine, push: zmq.Socket,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = Worker._source_ref_ns

    def boom(chunk: Chunk) -> int | None:
        if chunk.stream == "bad/ecg" and chunk.seq == 1:
            raise RuntimeError("injected worker bug")
        return real(chunk)

    monkeypatch.setattr(Worker, "_source_ref_ns", staticmethod(boom))
    with Subscriber(engine.publish_endpoint, topics=["ecg/", "event/"]) as sub:
        assert sub.wait_connected(5)
        for seq in range(4):
            push.send_multipart(encode(ecg("bad/ecg", seq)))
            push.send_multipart(encode(ecg("ok/ecg", seq)))
        got = gather(sub, time.monotonic() + 8, lambda c: c.topic == "ecg/bad/ecg/filtered" and c.seq == 2)
        got += gather(sub, time.monotonic() + 0.3)
    events = [c.body for c in got if c.kind == "event"]
    resets = [e for e in events if e["type"] == "stream_reset"]
    assert len(resets) == 1 and resets[0]["stream"] == "bad/ecg" and "injected worker bug" in resets[0]["error"]
    assert [c.seq for c in got if c.topic == "ecg/ok/ecg/filtered"] == [0, 1, 2, 3]
    # the bad stream lost the chunk that failed, and goes on (rebuilt pipeline) with the next ones
    assert [c.meta["src_seq"] for c in got if c.topic == "ecg/bad/ecg/filtered"] == [0, 2, 3]
    w = engine.workers[0]
    assert w.errors.get("internal:RuntimeError") == 1 and not w.dead.is_set()


def test_outputs_that_cannot_fit_refuse_the_stream_with_a_reason(engine: Engine, push: zmq.Socket) -> None:
    long_id = "L" * MAX_STREAM_CHARS  # legal, but "<id>/filtered" is not
    many = tuple(f"channel-with-a-long-name-{i:03d}" for i in range(124))  # 4,074-byte header, no meta
    assert len(encode(ecg("wide/ecg", 0, channels=many, n=2))[1]) <= MAX_HEADER_BYTES
    with Subscriber(engine.publish_endpoint, topics=["ecg/", "event/"]) as sub:
        assert sub.wait_connected(5)
        push.send_multipart(encode(ecg(long_id, 0)))
        push.send_multipart(encode(ecg("wide/ecg", 0, channels=many, n=2)))
        push.send_multipart(encode(ecg("ok/ecg", 0)))
        got = gather(sub, time.monotonic() + 8, lambda c: c.topic == "ecg/ok/ecg/filtered")
        got += gather(sub, time.monotonic() + 0.3)
    refused = {c.body["stream"]: c.body["detail"] for c in got if c.kind == "event"
               and c.body["type"] == "stream_refused"}
    assert set(refused) == {long_id, "wide/ecg"}
    assert all("cannot be published within the wire limits" in d for d in refused.values())
    assert any(c.topic == "ecg/ok/ecg/filtered" for c in got)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_ends_the_engine_with_an_error() -> None:
    eng = Engine(_cfg(), drain_idle_s=0.1)
    eng.start()
    w = eng.workers[0]

    def die() -> None:
        raise KeyboardInterrupt("injected: a BaseException escapes the worker loop")

    w.publish_stats = die  # type: ignore[method-assign]
    waiter = threading.Thread(target=eng.wait, daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "engine.wait() did not notice the dead worker"
    with pytest.raises(EngineError, match="worker 0 died"):
        eng.join(10)


def _engine_cmd(tmp_path: Path) -> tuple[list[str], str, str]:
    ingest, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "engine.toml"
    cfg.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 0.2\n')
    return [sys.executable, "-m", "telediag", "run", "--config", str(cfg)], ingest, publish


def test_sigterm_ends_the_process_after_a_hostile_header(tmp_path: Path) -> None:
    cmd, ingest, publish = _engine_cmd(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        with Subscriber(publish, topics=["stats/", "ecg/"]) as sub:
            assert sub.wait_connected(120), "engine did not start"
            ctx = zmq.Context()
            p = ctx.socket(zmq.PUSH)
            p.setsockopt(zmq.LINGER, 1000)
            p.connect(ingest)
            p.send_multipart(encode(padded("big/ecg", 0, MAX_HEADER_BYTES - 6)))
            p.send_multipart(encode(ecg("ok/ecg", 0)))
            got = gather(sub, time.monotonic() + 10, lambda c: c.topic == "ecg/ok/ecg/filtered")
            assert any(c.topic == "ecg/ok/ecg/filtered" for c in got)
            t = time.monotonic() + 1.0
            assert any(c.kind == "stats" for c in gather(sub, t)), "no stats after the hostile header"
            p.close()
            ctx.term()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert rc == 0, out
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
