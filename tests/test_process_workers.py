"""Worker processes (issue 17): same outputs as threads; kill -9 of a worker mid-stream.

The fault test runs 20 live streams on two worker processes, kills one with SIGKILL, and checks:
a replacement serves its index within 5 s; each of its streams reports ``stream_restarted`` and,
where chunks were lost in the dead process, one ``gap`` whose range is exactly the chunks no
output was seen for; the other worker's streams lose nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine, owner_of
from telediag.transports.wire import Chunk, encode

FS = 360.0


def _engine(mode: str, workers: int, **kw: Any) -> Engine:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.2,
        workers=workers, worker_mode=mode, **kw))
    eng = Engine(cfg, drain_idle_s=0.2)
    eng.start()
    return eng


@pytest.fixture(scope="module")
def proc_engine() -> Iterator[Engine]:
    """Two worker processes and a warm spare, shared by the tests below (starting them is the slow part)."""
    eng = _engine("process", 2)
    yield eng
    eng.stop()
    eng.join(30)


def _chunk(stream: str, seq: int, x: np.ndarray) -> Chunk:
    return Chunk.signal("ecg", stream, seq, seq * 50_000_000, x, FS, ("I", "II"), ("mV", "mV"),
                        meta={"session": "p"})


def test_owner_is_rendezvous_hashing() -> None:
    streams = [f"bed-{i}/ecg" for i in range(400)]
    three = [owner_of(s, 3) for s in streams]
    four = [owner_of(s, 4) for s in streams]
    assert set(three) == {0, 1, 2} and min(three.count(i) for i in range(3)) > 100
    # adding a 4th worker moves only the streams it wins; every other stream keeps its owner
    moved = [(a, b) for a, b in zip(three, four, strict=True) if a != b]
    assert all(b == 3 for _, b in moved) and 70 < len(moved) < 130


def _run_streams(eng: Engine, streams: list[str], n_chunks: int) -> tuple[dict[str, list[Chunk]], list[dict]]:
    rng = np.random.default_rng(3)
    data = {s: rng.standard_normal((n_chunks * 30, 2)).cumsum(0) * 0.01 for s in streams}
    with Subscriber(eng.publish_endpoint, topics=["ecg/", "event/"]) as sub:
        assert sub.wait_connected(10)
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)
        for k in range(n_chunks):
            for s in streams:
                p.send_multipart(encode(_chunk(s, k, data[s][k * 30:(k + 1) * 30])))
        got: dict[str, list[Chunk]] = {}
        events: list[dict] = []
        end = time.monotonic() + 20
        while time.monotonic() < end and sum(len(v) for v in got.values()) < n_chunks * len(streams):
            c = sub.recv(timeout_s=0.1)
            if c is None:
                continue
            if c.kind == "ecg":
                got.setdefault(c.stream, []).append(c)
            elif c.kind == "event":
                events.append(c.body)
        p.close()
        ctx.term()
    return got, events


def test_process_and_thread_modes_publish_the_same_outputs(proc_engine: Engine) -> None:
    streams = [f"same-{i}/ecg" for i in range(4)]
    eng = _engine("thread", 2)
    try:
        thread, _ = _run_streams(eng, streams, 8)
    finally:
        eng.stop()
        eng.join(30)
    process, _ = _run_streams(proc_engine, streams, 8)
    assert sorted(thread) == sorted(process) == sorted(f"{s}/filtered" for s in streams)
    for s in thread:
        a, b = thread[s], process[s]
        assert [c.seq for c in a] == [c.seq for c in b] == list(range(8))
        np.testing.assert_array_equal(np.concatenate([c.data for c in a]), np.concatenate([c.data for c in b]))
    # stats of both processes reach the engine (Prometheus and `telediag status` aggregate them)
    deadline = time.monotonic() + 5
    owned: dict[str, int] = {}
    while time.monotonic() < deadline and not set(streams) <= set(owned):
        time.sleep(0.1)
        owned = {sid: b["worker"] for b in proc_engine.worker_stats() for sid in b["streams"]}
    assert {s: owned[s] for s in streams} == {s: owner_of(s, 2) for s in streams}


def test_kill_9_of_a_worker_process_mid_stream(proc_engine: Engine) -> None:
    eng = proc_engine
    pool = eng.pool
    assert pool is not None
    streams = [f"bed-{i}/ecg" for i in range(20)]
    victim = 1
    mine = [s for s in streams if owner_of(s, 2) == victim]
    others = [s for s in streams if owner_of(s, 2) != victim]
    assert mine and others
    period, n_chunks, kill_at = 0.05, 140, 40  # 7 s of 50 ms chunks per stream, kill after 2 s
    sent = threading.Event()
    killed: dict[str, float] = {}

    def source() -> None:
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)
        x = np.zeros((18, 2), "<f4")
        t0 = time.monotonic()
        for k in range(n_chunks):
            d = t0 + k * period - time.monotonic()
            if d > 0:
                time.sleep(d)
            if k == kill_at:
                pid = next(pid for pid, i in pool.index_of.items() if i == victim)
                os.kill(pid, signal.SIGKILL)
                killed["t"] = time.monotonic()
            for s in streams:
                p.send_multipart(encode(_chunk(s, k, x)))
        p.close(linger=10000)
        ctx.term()
        sent.set()

    seen: dict[str, list[int]] = {s: [] for s in streams}
    events: list[dict] = []
    with Subscriber(eng.publish_endpoint, topics=["ecg/", "event/"]) as sub:
        assert sub.wait_connected(10)
        th = threading.Thread(target=source, daemon=True)
        th.start()
        last = time.monotonic()
        while time.monotonic() - last < 2.0 or not sent.is_set():
            c = sub.recv(timeout_s=0.1)
            if c is None:
                continue
            last = time.monotonic()
            if c.kind == "ecg":
                seen[c.stream.removesuffix("/filtered")].append(int(c.meta["src_seq"]))
            elif c.kind == "event":
                events.append(c.body)
        th.join(5)
    assert "t" in killed
    restarted_in = pool.assigned_at[victim] - killed["t"]
    print(f"worker {victim} killed; replacement serving after {restarted_in:.3f} s")
    assert 0 < restarted_in < 5.0, f"replacement took {restarted_in:.2f} s"
    assert any(e["type"] == "worker_restarted" and e["worker"] == victim for e in events)
    everything = list(range(n_chunks))
    for s in others:  # not a sample lost, no restart
        assert seen[s] == everything, s
        assert not [e for e in events if e.get("stream") == s and e["type"] in ("gap", "stream_restarted")]
    for s in mine:
        restarts = [e for e in events if e.get("stream") == s and e["type"] == "stream_restarted"]
        assert len(restarts) == 1 and restarts[0]["reason"] == "worker_restarted", s
        last_ok = restarts[0]["last_seq"]
        gaps = [e for e in events if e.get("stream") == s and e["type"] == "gap"]
        lost = [q for g in gaps for q in range(g["first_missing_seq"], g["last_missing_seq"] + 1)]
        assert len(gaps) <= 1
        # exact: what was published plus what the gap reports is every chunk, once, in order
        assert sorted(seen[s] + lost) == everything, (s, last_ok, gaps)
        assert seen[s] == sorted(seen[s]) and not set(seen[s]) & set(lost)
        assert all(q <= last_ok for q in seen[s] if q < (lost[0] if lost else n_chunks))


def test_sigterm_during_start_up_ends_the_engine_and_its_processes(tmp_path: Any) -> None:
    import subprocess
    import sys

    from conftest import free_port

    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[engine]\ningest = "tcp://127.0.0.1:{free_port()}"\npublish = "tcp://127.0.0.1:{free_port()}"\n'
                   'worker_mode = "process"\nworkers = 2\n')
    proc = subprocess.Popen([sys.executable, "-m", "telediag", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        children: set[int] = set()
        end = time.monotonic() + 30
        while time.monotonic() < end and len(children) < 3:  # 2 workers + 1 spare being started
            time.sleep(0.2)
            children = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid}
        assert len(children) >= 1, "no worker process was started"
        proc.send_signal(signal.SIGTERM)  # still warming up
        rc = proc.wait(30)
        assert rc == 0, proc.stdout.read().decode() if proc.stdout else ""
        time.sleep(0.5)
        assert not [c for c in children if Path(f"/proc/{c}").exists() and _state(c) != "Z"], "orphan workers"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _ppid(p: Any) -> int:
    try:
        return int(next(ln for ln in (p / "status").read_text().splitlines() if ln.startswith("PPid:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return -1


def _state(pid: int) -> str:
    try:
        return next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ln.startswith("State:")).split()[1]
    except (OSError, StopIteration):
        return "?"


def test_aggregate_pools_the_workers_histograms() -> None:
    from telediag.engine.stats import LatencyHistogram, StreamStats, aggregate

    rng = np.random.default_rng(0)
    pooled = LatencyHistogram()
    bodies = []
    for w in range(3):
        streams = {}
        for k in range(4):
            st = StreamStats(kind="ecg", chunks_in=10)
            for v in rng.lognormal(-5 + w, 0.5, 200):  # workers with different latency levels
                st.latency.record(float(v))
                pooled.record(float(v))
            streams[f"w{w}-s{k}"] = st.as_dict()
        bodies.append({"worker": w, "streams": streams, "rejects": {"topic": w}, "process_restarts": w})
    agg = aggregate(bodies)
    assert agg["streams"] == 12 and agg["chunks_in"] == 120 and agg["rejects"] == {"topic": 3}
    assert agg["process_restarts"] == 3
    assert agg["latency_ms"] == pooled.summary_ms()
