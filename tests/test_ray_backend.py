"""Ray backend (issue 17): workers as Ray actors on a local two-node cluster, on loopback only.

Ray binds the machine's external interface by itself, which tests must not use, so the real
tests run in a child pytest inside new network + pid namespaces that have only loopback
(``unshare -n -p``, ``ip link set lo up``): the outer test below starts it and fails if it
fails; the pid namespace ends every Ray process when the child exits (no leaked raylets).
Inside: a two-node cluster (``ray start --head`` / ``ray start --address``, one CPU each),
checked bound to 127.0.0.1 with ``ray.nodes()``, and an engine with two worker actors and a
warm spare. Checked: same outputs as thread mode; adding a worker moves only the streams it
wins, each with one ``stream_moved`` and no lost or repeated chunk; ``kill -9`` of an actor's
process in the middle of live streams: a replacement serves within 5 s, exact gap ranges,
nothing lost on the other workers' streams; removing a worker actor (scale in) moves only its
streams, each with one ``stream_moved``, nothing lost, and the actor is gone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pool_harness import check_removed_worker, check_restarted_streams, live, run_streams

from telediag.engine.config import load_config
from telediag.engine.procs import owner_of
from telediag.engine.runtime import Engine

INSIDE = os.environ.get("TELEDIAG_RAY_NETNS") == "1"
inside = pytest.mark.skipif(not INSIDE, reason="runs inside the loopback namespace (started by "
                            "test_ray_backend_in_a_loopback_namespace)")


def test_ray_backend_in_a_loopback_namespace() -> None:
    if INSIDE:
        pytest.skip("this is the child run")
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("ray is not installed (pip install 'telediag[cluster]')")
    from telediag.engine.cluster import (
        LOCAL_RAY_ENV,
        loopback_namespace_cmd,
        loopback_namespace_unavailable,
    )

    why = loopback_namespace_unavailable()
    if why is not None:
        pytest.skip(f"Ray tests need a loopback-only network namespace: {why}")
    here = Path(__file__)
    cmd = loopback_namespace_cmd([sys.executable, "-m", "pytest", str(here), "-q", "-x", "-s",
                                  "-p", "no:cacheprovider", "--timeout", "180", "-k", "not in_a_loopback_namespace"])
    env = {**os.environ, "TELEDIAG_RAY_NETNS": "1", **LOCAL_RAY_ENV}
    try:
        r = subprocess.run(cmd, cwd=here.parents[1], env=env, capture_output=True, text=True, timeout=330)
    except subprocess.TimeoutExpired as e:  # the pid namespace's processes die with its first process
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"Ray tests timed out:\n{out[-6000:]}")
    lines = [ln[ln.index("RAY "):] for ln in r.stdout.splitlines() if "RAY " in ln]
    print("\n".join(lines))
    assert r.returncode == 0, (r.stdout + r.stderr)[-8000:]
    assert "passed" in r.stdout and " failed" not in r.stdout


# -- inside the namespace -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from telediag.engine.cluster import LOCAL_RAY_ENV, LocalRayCluster

    os.environ.update(LOCAL_RAY_ENV)  # this process is the engine's Ray driver
    tmp = tempfile.mkdtemp(prefix="ray-")
    cl = LocalRayCluster(tmp, nodes=2, cpus_per_node=1)
    try:
        t = time.monotonic()
        cl.start()
        print(f"RAY two-node cluster started in {time.monotonic() - t:.1f} s", flush=True)
        yield cl.address
    finally:
        cl.stop()


def _cfg(mode: str, workers: int, address: str = "") -> Any:
    cfg = load_config()
    return dataclasses.replace(
        cfg, engine=dataclasses.replace(cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                                        stats_interval_s=0.2, workers=workers, worker_mode=mode, spare_workers=1),
        cluster=dataclasses.replace(cfg.cluster, ray_address=address, actor_cpus=0.5))  # 4 actors on 2 CPUs


@pytest.fixture(scope="module")
def ray_engine(cluster: str) -> Iterator[Engine]:
    t = time.monotonic()
    eng = Engine(_cfg("ray", 2, cluster), drain_idle_s=0.2)
    eng.start()
    print(f"RAY engine with 2 worker actors + 1 spare serving after {time.monotonic() - t:.1f} s", flush=True)
    yield eng
    eng.stop()
    eng.join(60)


@inside
def test_the_cluster_is_two_nodes_on_loopback(ray_engine: Engine) -> None:
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    pool = ray_engine.pool
    assert pool is not None and pool.kind == "ray"
    assert all(a.startswith("tcp://127.0.0.1:") for a in pool.inbox_addrs)
    assert pool.out_addr.startswith("tcp://127.0.0.1:")
    # spread placement: the actors (2 workers + spare) use both nodes
    ids = {ray.get(a.info.remote(), timeout=30)["node_id"] for a in pool.actors.values()}  # type: ignore[attr-defined]
    assert len(ids) == 2, ids


@inside
def test_ray_and_thread_modes_publish_the_same_outputs(ray_engine: Engine) -> None:
    streams = [f"same-{i}/ecg" for i in range(4)]
    eng = Engine(_cfg("thread", 2), drain_idle_s=0.2)
    eng.start()
    try:
        thread, _ = run_streams(eng, streams, 8)
    finally:
        eng.stop()
        eng.join(30)
    ray_out, _ = run_streams(ray_engine, streams, 8)
    assert sorted(thread) == sorted(ray_out) == sorted(f"{s}/filtered" for s in streams)
    for s in thread:
        a, b = thread[s], ray_out[s]
        assert [c.seq for c in a] == [c.seq for c in b] == list(range(8))
        np.testing.assert_array_equal(np.concatenate([c.data for c in a]), np.concatenate([c.data for c in b]))
    # every worker actor's stats reach the engine, with the streams the rendezvous hash gives it
    deadline = time.monotonic() + 10
    owned: dict[str, int] = {}
    while time.monotonic() < deadline and not set(streams) <= set(owned):
        time.sleep(0.1)
        owned = {sid: b["worker"] for b in ray_engine.worker_stats() for sid in b["streams"]}
    assert {s: owned[s] for s in streams} == {s: owner_of(s, 2) for s in streams}


@inside
def test_adding_a_worker_moves_only_its_share(ray_engine: Engine) -> None:
    pool = ray_engine.pool
    assert pool is not None
    n = pool.n
    streams = [f"bed-{i}/ecg" for i in range(20)]
    moving = [s for s in streams if owner_of(s, n + 1) == n]
    assert moving and len(moving) < len(streams)
    # the new index goes to a warm spare: wait for one (under load its warm-up outlasts the fixture's)
    deadline = time.monotonic() + 120
    while pool.spares_ready() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool.spares_ready() >= 1, "no warm spare actor after 120 s"
    added: dict[str, int] = {}
    src, out_seq, events, marks = live(ray_engine, streams, 120, 0.05, 30,
                                        lambda: added.setdefault("i", pool.add_worker()))
    assert added["i"] == n and pool.n == n + 1, "the new worker was not serving before the streams ended"
    everything = list(range(120))
    for s in streams:
        mine = [e for e in events if e.get("stream") == s]
        why = (s, sorted(set(everything) - set(src[s])), [e for e in mine if e["type"] not in ("quality",)])
        assert src[s] == everything, why  # nothing lost, nothing twice, in order, on every stream
        assert out_seq[s] == list(range(len(out_seq[s]))), why  # output seq continues across the handover
        assert not [e for e in mine if e["type"] in ("gap", "stream_restarted")], s
        moved = [e for e in mine if e["type"] == "stream_moved"]
        if s in moving:
            assert len(moved) == 1, (s, moved)
            m = moved[0]
            assert (m["from_worker"], m["to_worker"]) == (owner_of(s, n), n)
            assert 0 <= m["last_seq"] < 119
        else:
            assert not moved, s
    print(f"RAY add worker: {len(moving)} of {len(streams)} streams moved to worker {n}, "
          f"the others kept their owner; no chunk lost", flush=True)


@inside
def test_kill_9_of_a_ray_actor_mid_stream(ray_engine: Engine) -> None:
    pool = ray_engine.pool
    assert pool is not None
    n = pool.n
    streams = [f"icu-{i}/ecg" for i in range(20)]
    victim = 1
    mine = [s for s in streams if owner_of(s, n) == victim]
    others = [s for s in streams if owner_of(s, n) != victim]
    assert mine and others
    n_chunks, kill_at = 140, 40  # 7 s of 50 ms chunks per stream, kill after 2 s
    # the spare that add_worker launched must be warm first (restart within 5 s is a warm spare's)
    deadline = time.monotonic() + 120
    while pool.spares_ready() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool.spares_ready() >= 1, "no warm spare actor after 120 s"

    def kill() -> None:
        pid = next(pid for pid, i in pool.index_of.items() if i == victim)
        os.kill(pid, signal.SIGKILL)

    src, _, events, marks = live(ray_engine, streams, n_chunks, 0.05, kill_at, kill)
    restarted_in = pool.assigned_at[victim] - marks["t"]
    print(f"RAY kill -9 of worker actor {victim}: replacement serving after {restarted_in:.3f} s", flush=True)
    assert 0 < restarted_in < 5.0, f"replacement took {restarted_in:.2f} s"
    assert any(e["type"] == "worker_restarted" and e["worker"] == victim for e in events)
    lost_total = check_restarted_streams(src, events, mine, others, n_chunks)
    print(f"RAY kill -9: {len(mine)} streams restarted, {lost_total} chunks reported lost in exact gaps, "
          f"{len(others)} other streams lost nothing", flush=True)


@inside
def test_removing_a_worker_actor_moves_only_its_streams(ray_engine: Engine) -> None:
    pool = ray_engine.pool
    assert pool is not None
    n = pool.n
    assert n >= 3 and pool.active() == list(range(n)), pool.active()  # after the add test
    victim, n_chunks = 1, 120
    streams = [f"ward-{i}/ecg" for i in range(20)]
    slot = next(k for k, (i, _) in pool._slot_index.items() if i == victim)  # type: ignore[attr-defined]
    src, out_seq, events, marks = live(ray_engine, streams, n_chunks, 0.05, 30, lambda: pool.remove_worker(victim))
    moved = check_removed_worker(src, out_seq, events, n, victim, n_chunks)
    assert moved and len(moved) < len(streams)
    deadline = time.monotonic() + 30
    while slot in pool.actors and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert slot not in pool.actors and victim not in pool.active()  # type: ignore[attr-defined]
    print(f"RAY remove worker {victim}: {len(moved)} of {len(streams)} streams moved to the others, "
          "the rest kept their owner; no chunk lost; its actor was released", flush=True)
