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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pool_harness import check_removed_worker, check_restarted_streams, live, run_streams

from telediag.engine.config import load_config
from telediag.engine.runtime import Engine, owner_of


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


def test_owner_is_rendezvous_hashing() -> None:
    streams = [f"bed-{i}/ecg" for i in range(400)]
    three = [owner_of(s, 3) for s in streams]
    four = [owner_of(s, 4) for s in streams]
    assert set(three) == {0, 1, 2} and min(three.count(i) for i in range(3)) > 100
    # adding a 4th worker moves only the streams it wins; every other stream keeps its owner
    moved = [(a, b) for a, b in zip(three, four, strict=True) if a != b]
    assert all(b == 3 for _, b in moved) and 70 < len(moved) < 130


def test_removing_a_worker_moves_only_its_streams() -> None:
    streams = [f"bed-{i}/ecg" for i in range(400)]
    three = [owner_of(s, 3) for s in streams]
    without_1 = [owner_of(s, 3, {1}) for s in streams]
    for a, b in zip(three, without_1, strict=True):
        assert b == a if a != 1 else b in (0, 2)  # only worker 1's streams move...
    went = [b for a, b in zip(three, without_1, strict=True) if a == 1]
    assert min(went.count(0), went.count(2)) > 40  # ...spread over the workers left


def test_process_and_thread_modes_publish_the_same_outputs(proc_engine: Engine) -> None:
    streams = [f"same-{i}/ecg" for i in range(4)]
    eng = _engine("thread", 2)
    try:
        thread, _ = run_streams(eng, streams, 8, timeout_s=20)
    finally:
        eng.stop()
        eng.join(30)
    process, _ = run_streams(proc_engine, streams, 8, timeout_s=20)
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

    def kill() -> None:
        pid = next(pid for pid, i in pool.index_of.items() if i == victim)
        os.kill(pid, signal.SIGKILL)

    seen, _, events, killed = live(eng, streams, n_chunks, period, kill_at, kill, quiet_s=2.0)
    assert "t" in killed
    restarted_in = pool.assigned_at[victim] - killed["t"]
    print(f"worker {victim} killed; replacement serving after {restarted_in:.3f} s")
    assert 0 < restarted_in < 5.0, f"replacement took {restarted_in:.2f} s"
    restarted = [e for e in events if e["type"] == "worker_restarted" and e["worker"] == victim]
    assert [e["exitcode"] for e in restarted] == [-signal.SIGKILL], restarted  # OUTPUTS.md 5.1
    check_restarted_streams(seen, events, mine, others, n_chunks)


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


def test_remove_a_worker_process_mid_stream(proc_engine: Engine) -> None:
    """Scale in: worker 1 of 3 leaves during 20 live streams; only its streams move, nothing is lost."""
    eng = proc_engine
    pool = eng.pool
    assert pool is not None
    pool.add_worker()  # 3 workers first (a warm spare takes index 2), so a middle one can leave
    deadline = time.monotonic() + 120
    while (pool.n < 3 or 2 not in pool.assigned_at) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.n == 3 and pool.active() == [0, 1, 2], "the third worker did not start"
    victim, n, n_chunks = 1, 3, 120
    streams = [f"ward-{i}/ecg" for i in range(20)]
    pid = next(p for p, i in pool.index_of.items() if i == victim)
    src, out_seq, events, marks = live(eng, streams, n_chunks, 0.05, 30, lambda: pool.remove_worker(victim))
    moved = check_removed_worker(src, out_seq, events, n, victim, n_chunks)
    assert moved and len(moved) < len(streams)
    assert [e["exitcode"] for e in events if e["type"] == "worker_removed"] == [0]  # a clean exit, known
    assert pool.active() == [0, 2] and victim not in pool.index_of.values()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z", "the removed worker process did not exit"
    assert victim not in [b["worker"] for b in eng.worker_stats()]  # its stale stats are not aggregated
    print(f"worker {victim} removed: {len(moved)} of {len(streams)} streams moved, the others kept their owner")


class _FakePool:
    """What PoolRouter reads from a pool, without processes (inproc inboxes)."""

    RELEASE_TIMEOUT_S = 5.0

    def __init__(self, n: int) -> None:
        import threading

        from telediag.engine.config import load_config

        self.config = load_config()
        self._lock = threading.Lock()
        self.inbox_addrs = [f"inproc://fake-w{i}" for i in range(4)]
        self.n, self.dead, self.gone = n, set(), set()
        self.routes_version = 0
        self.released: dict[bytes, dict] = {}
        self.progress: dict[str, int] = {}


FakeRouter = Callable[[int], tuple[_FakePool, Any, Callable[[int], list[list[bytes]]]]]


@pytest.fixture
def fake_router() -> Iterator[FakeRouter]:
    """``make(n)``: a PoolRouter over a :class:`_FakePool` of ``n`` indices, its pool, and ``drain(i)``
    (every message waiting in fake worker ``i``'s inproc inbox); sockets closed after the test."""
    import zmq

    from telediag.engine.procs import PoolRouter

    ctx = zmq.Context()
    inboxes = []
    for i in range(4):
        s = ctx.socket(zmq.PULL)
        s.bind(f"inproc://fake-w{i}")
        inboxes.append(s)
    routers: list[PoolRouter] = []

    def drain(i: int) -> list[list[bytes]]:
        out = []
        while inboxes[i].poll(50):
            out.append(inboxes[i].recv_multipart())
        return out

    def make(n: int) -> tuple[_FakePool, PoolRouter, Callable[[int], list[list[bytes]]]]:
        pool = _FakePool(n)
        r = PoolRouter(pool, ctx)  # type: ignore[arg-type]
        routers.append(r)
        return pool, r, drain

    yield make
    for r in routers:
        r.close()
    for s in inboxes:
        s.close(0)
    ctx.term()


def test_router_moves_on_add_and_remove_and_retargets_a_stream_still_moving(fake_router: FakeRouter) -> None:
    """PoolRouter alone: MOVE to old owners on add, STOP to a removed index, no chunk lost or misrouted."""
    from telediag.engine.procs import MOVE, RESUME

    pool, r, drain = fake_router(2)
    streams = [f"bed-{k}/ecg".encode() for k in range(40)]
    for s in streams:
        r.send(s, [b"ecg/" + s, b"h", b"0"])
    got = {i: drain(i) for i in range(2)}
    assert {m[1] for m in got[0]} | {m[1] for m in got[1]} == {b"ecg/" + s for s in streams}
    # add index 2: MOVE goes to the old owners of the streams it wins; their next chunks are held
    pool.n, pool.routes_version = 3, 1
    r.sync()
    winners = [s for s in streams if owner_of(s, 3) == 2]
    moves = [m for i in range(2) for m in drain(i) if m[0] == MOVE]
    assert sorted(m[1] for m in moves) == sorted(winners) and all(m[2] == b"2" for m in moves)
    for s in winners:
        r.send(s, [b"ecg/" + s, b"h", b"1"])
    assert not drain(2)  # held until the old owner releases
    # before any release, index 2 is removed again: the streams still moving go back (no MOVE to 2),
    # and index 2 gets STOP
    pool.gone, pool.routes_version = {2}, 2
    r.sync()
    assert drain(2) == [[b"S"]]
    for s in winners:  # the old owners release them (stream_moved): they resume where HRW now puts them
        pool.released[s] = {"last_seq": 0, "out_seq": {}}
    r.sync()
    for i in range(2):
        msgs = drain(i)
        mine = [s for s in winners if owner_of(s, 3, {2}) == i]
        assert sorted(m[1] for m in msgs if m[0] == RESUME) == sorted(mine)
        data = [m for m in msgs if m[0] == b"D"]
        assert sorted(m[1] for m in data) == sorted(b"ecg/" + s for s in mine)  # the held chunk, once
        assert all(m[3] == b"1" for m in data)
    assert not r.held


def test_a_scaling_signal_does_not_end_a_thread_mode_engine(tmp_path: Any) -> None:
    """SIGUSR1/SIGUSR2 add/remove workers in process and Ray modes; in thread mode they are refused
    with a message (their default action would terminate the engine and every stream's monitoring)."""
    import subprocess
    import sys

    from conftest import free_port

    from telediag.client import Subscriber

    pub = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[engine]\ningest = "tcp://127.0.0.1:{free_port()}"\npublish = "{pub}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "telediag", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with Subscriber(pub, topics=["stats/"]) as sub:
            assert sub.wait_connected(120), "engine did not start"
            assert sub.recv(timeout_s=30) is not None  # serving (stats published)
        proc.send_signal(signal.SIGUSR2)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None, "a scaling signal ended the thread-mode engine"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out
        assert "ignored" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_router_removing_an_index_whose_link_is_down_resends_its_held_chunks_in_order(
        fake_router: FakeRouter) -> None:
    """Chunks held for an index while its connection was down go to the streams' new owners, in order."""
    from collections import deque

    from telediag.engine.procs import RESUME

    pool, r, drain = fake_router(3)
    streams = [f"bed-{k}/ecg".encode() for k in range(30)]
    for s in streams:
        r.send(s, [b"ecg/" + s, b"h", b"0"])
    for i in range(3):
        drain(i)
    r.link_down.add(1)  # as when ZeroMQ sees worker 1's connection drop: its chunks are held
    r.down[1] = deque()
    for s in streams:
        r.send(s, [b"ecg/" + s, b"h", b"a"])
    pool.gone, pool.routes_version = {1}, 1  # worker 1 removed meanwhile
    r.sync()
    for s in streams:
        r.send(s, [b"ecg/" + s, b"h", b"b"])
    mine = [s for s in streams if owner_of(s, 3) == 1]
    assert mine
    for j in (0, 2):
        msgs = drain(j)
        for s in mine:
            if owner_of(s, 3, {1}) != j:
                continue
            seen = [m[0] if m[0] == RESUME else m[3] for m in msgs if m[1] in (s, b"ecg/" + s)]
            assert seen == [RESUME, b"a", b"b"], (s, seen)  # resumed, then the held chunk, then the next
        others = [s for s in streams if owner_of(s, 3) == j]
        assert all([m[3] for m in msgs if m[1] == b"ecg/" + s] == [b"a", b"b"] for s in others)
