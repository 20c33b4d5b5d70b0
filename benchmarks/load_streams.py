"""Capacity: how many real-time ECG streams one engine holds with p99 <= 50 ms and zero loss.

Starts the engine (default pipeline, or ``--config``) as its own process, then a load
generator process that sends N two-lead 360 Hz streams at real-time rate (each stream
one chunk every ``--chunk-ms``, stamped with the source clock), for ``--seconds``.
Reads the engine's stats: per-stream samples in vs. sent, gaps, errors, and the
source-timestamp -> publish latency percentiles. ``--sweep`` doubles N until a target
fails, then bisects.

    python benchmarks/load_streams.py --streams 100 --seconds 20
    python benchmarks/load_streams.py --sweep --seconds 15
    python benchmarks/load_streams.py --sweep --worker-mode process --workers 2
    python benchmarks/load_streams.py --sweep --modes thread:1,process:1,process:2,ray:2
    python benchmarks/load_streams.py --throughput --modes thread:1,process:1,process:2,ray:2 --rounds 2

``ray`` modes run the engine's workers as Ray actors on ``--ray-address``, or, without it, on a
throw-away local two-node cluster (``ray start --head`` + ``ray start --address``, one CPU each)
inside a network + pid namespace with only loopback (the benchmark re-runs itself under
``unshare -n -p``; needs root). CPU time then counts the engine, its worker actors and, apart
(``ray_cpu_s``), Ray's own processes (raylets, GCS).

With ``$TELEDIAG_BENCH_LATENCY_DIR`` set (``telediag bench`` does), a second subscriber also
receives the filtered ECG of the first 8 streams and their per-chunk latencies (publish time -
source time of the chunk's last sample, or its send time if earlier: the engine's own
definition) are left there for the report's latency CDFs
(:func:`telediag.evaluation.bench_cli.record_latency`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: a t0 that msgpack writes as uint64 (0xcf + 8 bytes big-endian), like a real ns timestamp
_T0_PLACEHOLDER = 0x19A5_5A5A_5A5A_5A5A
_T0_PLACEHOLDER_PACKED = b"\xcf" + _T0_PLACEHOLDER.to_bytes(8, "big")


def _generator(ingest: str, n_streams: int, seconds: float, chunk_ms: float, record: str | None,
               ready: mp.Event, result: mp.Queue, stagger: bool = True, paced: bool = True,
               join_spread_s: float = 0.0) -> None:
    import zmq

    from telediag.transports.wire import Chunk, encode

    fs = 360.0
    per = int(round(fs * chunk_ms / 1000))
    if record:
        from telediag.sources.readers import read_wfdb

        sig = read_wfdb(record).signal.astype(np.float32)
    else:
        t = np.arange(int(fs * 60)) / fs
        sig = np.stack([np.sin(2 * np.pi * 1.2 * t), np.cos(2 * np.pi * 1.2 * t)], 1).astype(np.float32)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(ingest)
    n_chunks = int(seconds * 1000 / chunk_ms)
    period = chunk_ms / 1000
    offsets = [(i * 7919) % (len(sig) - per * n_chunks - 1) for i in range(n_streams)]

    def make(i: int, k: int, t0: int, sent: bool) -> list:
        o = offsets[i] + k * per
        meta = {"session": "load", "sent_ns": time.time_ns()} if sent else {"session": "load"}
        return encode(Chunk.signal("ecg", f"load-{i}/ecg", k, t0, sig[o:o + per], fs, ("MLII", "V1"), ("mV", "mV"),
                                   meta=meta))

    # Paced runs: every chunk is encoded before the start, with a placeholder t0 patched in at send
    # time. The generator shares the engine's cores, and encoding on the fly cost ~150 µs of CPU per
    # chunk (~0.14 of a core at 900 streams), which the engine under test would not pay. sent_ns is
    # left out: when paced, the chunk's last sample is always older than its send time, so the
    # engine's latency reference (the earlier of the two) is the same without it.
    pre: list[list[tuple[list, int]]] = []
    if paced:
        for i in range(n_streams):
            row = []
            for k in range(n_chunks):
                frames = make(i, k, _T0_PLACEHOLDER, False)
                at = bytes(frames[1]).find(_T0_PLACEHOLDER_PACKED)
                assert at >= 0, "t0 placeholder not found in the header"
                row.append((frames, at + 1))
            pre.append(row)
    ready.wait()
    cpu0 = time.process_time()
    # Independent sources are not synchronised: stream i sends its chunks at phase i/N of the
    # chunk period (a burst of all N at once is the worst case, not a real ward).
    phase = [i * period / n_streams for i in range(n_streams)] if stagger else [0.0] * n_streams
    # Streams that all start in the same period also do their periodic work (the 1 s quality
    # block, the 5 s HRV tick: counted in samples from each stream's start) in the same period.
    # join_spread_s > 0: stream i joins join[i] periods late (spread evenly over join_spread_s,
    # as monitors connected at different times), so that work is spread too; each stream still
    # sends n_chunks, so the first and last join_spread_s of the run are a ramp.
    m = int(round(join_spread_s / period)) if join_spread_s > 0 else 0
    join = [(i * m) // max(1, n_streams) for i in range(n_streams)]
    start = time.time_ns()
    t_start = time.monotonic()
    late = 0
    for tick in range(n_chunks + m):
        for i in range(n_streams):
            k = tick - join[i]
            if not 0 <= k < n_chunks:
                continue
            if paced:
                due = t_start + (tick + 1) * period + phase[i]
                d = due - time.monotonic()
                if d > 0.0005:
                    time.sleep(d)
                elif d < -0.010:
                    late += 1
            t0 = start + int((tick * period + phase[i]) * 1e9)
            if pre:
                frames, at = pre[i][k]
                header = bytearray(frames[1])
                header[at:at + 8] = t0.to_bytes(8, "big")
                sock.send_multipart([frames[0], header, frames[2]], copy=False)
            else:
                sock.send_multipart(make(i, k, t0, True), copy=False)
    sock.close(linger=10000)
    ctx.term()
    result.put({"chunks_per_stream": n_chunks, "samples_per_stream": n_chunks * per, "late_ticks": late,
                "cpu_s": time.process_time() - cpu0})


CLASSIFY_PIPELINE = """
[pipeline.ecg.analysis]
stage = "ecg_analysis"
classify = "{classify}"
[pipeline.ecg.filter]
stage = "ecg_filter"
low_hz = 0.5
high_hz = 40.0
order = 4
publish = true
"""


class _LatencySampler:
    """Per-chunk latencies of the first ``k`` streams, for ``telediag bench`` (off unless asked)."""

    def __init__(self, publish: str, n_streams: int, k: int = 8) -> None:
        from telediag.client import Subscriber

        self.k = min(k, n_streams) if os.environ.get("TELEDIAG_BENCH_LATENCY_DIR") else 0
        self.sub = Subscriber(publish, topics=[f"ecg/load-{i}/" for i in range(self.k)]) if self.k else None
        self.ms: list[float] = []

    def wait(self) -> None:
        if self.sub is not None and not self.sub.wait_connected(30):
            raise RuntimeError("latency subscriber did not connect")

    def drain(self) -> None:
        while self.sub is not None:
            c = self.sub.recv(timeout_s=0.2)
            if c is None:
                return
            pub = c.meta.get("pub_ns")
            if not isinstance(pub, int) or not c.rate_hz:
                continue
            ref = c.t0_ns + int(max(c.n_samples - 1, 0) * 1e9 / c.rate_hz)
            sent = c.meta.get("sent_ns")
            self.ms.append((pub - (min(ref, sent) if isinstance(sent, int) else ref)) / 1e6)

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()

    def record(self, res: dict, n_streams: int, seconds: float, chunk_ms: float) -> None:
        if not self.k:
            return
        from telediag.evaluation.bench_cli import record_latency

        res["sampled_chunks"] = len(self.ms)
        record_latency(f"engine ECG, {n_streams} real-time streams", self.ms, source="load_streams.py",
                       note=f"{self.k} of {n_streams} streams sampled, {seconds:g} s, {chunk_ms:g} ms chunks, "
                            "engine in its own process")


def _proc_tree(pid: int) -> list[Path]:
    """The ``/proc`` folders of ``pid`` and its live children (worker processes), Linux."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if d.name == str(pid) or stat[stat.rindex(")") + 2:].split()[1] == str(pid):
            out.append(d)
    return out


def _thread_cpu_s(roles: dict[str, list[Path]]) -> dict[str, float]:
    """CPU seconds (user + system) per ``role:thread name`` of the given processes (Linux ``/proc``).

    Thread names are the OS names (``td-router``, ``td-collector``, ``td-proxy``, ``td-w0`` in the
    engine; ``ZMQbg/IO/0`` for libzmq's I/O threads; ``python`` for a process's main thread).
    """
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for role, dirs in roles.items():
        for d in dirs:
            try:
                tasks = list((d / "task").iterdir())
            except OSError:
                continue
            for t in tasks:
                try:
                    comm = (t / "comm").read_text().strip()
                    stat = (t / "stat").read_text()
                except OSError:
                    continue
                f = stat[stat.rindex(")") + 2:].split()
                key = f"{role}:{comm}"
                out[key] = out.get(key, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def _cpu_roles(eng_pid: int, gen_pid: int | None, mode: str) -> dict[str, list[Path]]:
    tree = _proc_tree(eng_pid)
    roles = {"engine": [d for d in tree if d.name == str(eng_pid)],  # front end (+ the workers in thread mode)
             "workers": [d for d in tree if d.name != str(eng_pid)] + (_ray_procs(actors=True) if mode == "ray" else [])}
    if gen_pid is not None:
        roles["generator"] = [Path(f"/proc/{gen_pid}")]
    return roles


def _cpu_report(before: dict[str, float], after: dict[str, float], chunks: int) -> dict[str, object]:
    """µs of CPU per source chunk: per thread, per role (engine process, worker processes, generator)."""
    per = {k: round((after.get(k, 0.0) - before.get(k, 0.0)) / chunks * 1e6, 1) for k in after}
    per = {k: v for k, v in sorted(per.items()) if v > 0}
    roles: dict[str, float] = {}
    for k, v in per.items():
        r = k.partition(":")[0]
        roles[r] = round(roles.get(r, 0.0) + v, 1)
    engine_side = round(roles.get("engine", 0.0) + roles.get("workers", 0.0), 1)
    return {"cpu_us_per_chunk": engine_side, "cpu_us_per_chunk_roles": roles, "cpu_us_per_chunk_threads": per}


def _rss_kb_tree(pid: int) -> int | None:
    """Resident memory of ``pid`` and its children (worker processes), in kB (Linux)."""
    total, found = 0, False
    for d in _proc_tree(pid):
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        rss = dict(line.split(":", 1) for line in status.splitlines() if ":" in line).get("VmRSS", "").split()
        if rss:
            total += int(rss[0])
            found = True
    return total if found else None


#: ``[cluster]`` of the engines this benchmark starts in ray mode (set by :func:`main`)
RAY_ADDRESS = ""
#: ``[engine] batch_wait_ms`` of the engines this benchmark starts (None: the engine's default; set by :func:`main`)
BATCH_WAIT_MS: float | None = None


def _engine_extra() -> str:
    return f"batch_wait_ms = {BATCH_WAIT_MS}\n" if BATCH_WAIT_MS is not None else ""


def _cluster_toml(worker_mode: str) -> str:
    if worker_mode != "ray":
        return ""
    # 2 workers + a warm spare on a two-node, one-CPU-per-node cluster: half a CPU each for placement
    return f'[cluster]\nray_address = "{RAY_ADDRESS}"\nactor_cpus = 0.5\n'


def run_load(n_streams: int, seconds: float, chunk_ms: float = 100.0, config: str | None = None,
             record: str | None = None, verbose: bool = True, classify: str = "on",
             stagger: bool = True, workers: int = 1, worker_mode: str = "thread", cpu_profile: bool = False,
             join_spread_s: float = 0.0) -> dict:
    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cfg_path = Path(f"/tmp/telediag-load-{os.getpid()}.toml")
    extra = Path(config).read_text() if config else CLASSIFY_PIPELINE.format(classify=classify)
    cfg_path.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 1.0\n'
                        f"publish_hwm = 1000000\nworkers = {workers}\nworker_mode = \"{worker_mode}\"\n"
                        + _engine_extra() + _cluster_toml(worker_mode) + extra.replace("[engine]", "#[engine]"))
    eng = subprocess.Popen([sys.executable, "-m", "telediag", "run", "--config", str(cfg_path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from telediag.client import Subscriber

    sub = Subscriber(publish, topics=["stats/"])
    sampler = _LatencySampler(publish, n_streams)
    try:
        if not sub.wait_connected(180):
            raise RuntimeError("engine did not start")
        _wait_idle(eng.pid, worker_mode)
        sampler.wait()
        ready, result = mp.Event(), mp.Queue()
        gen = mp.Process(target=_generator, args=(ingest, n_streams, seconds, chunk_ms, record, ready, result, stagger,
                                                  True, join_spread_s))
        gen.start()
        time.sleep(0.5)
        cpu0 = _thread_cpu_s(_cpu_roles(eng.pid, gen.pid, worker_mode)) if cpu_profile else {}
        cpu1: dict[str, float] = {}
        ready.set()
        gen.join(seconds * 4 + 60)
        sent = result.get(timeout=10)
        # wait for the engine to finish what is queued, then read final stats
        last: dict = {}
        deadline = time.monotonic() + max(30.0, seconds)
        while time.monotonic() < deadline:
            c = sub.recv(timeout_s=1.0)
            if c is None:
                continue
            last[c.stream] = c.body
            streams = {k: v for b in last.values() for k, v in b["streams"].items()}
            if len(streams) == n_streams and all(v["samples_in"] >= sent["samples_per_stream"] for v in streams.values()):
                break
        sampler.drain()
        rss_kb = _rss_kb_tree(eng.pid)
        if cpu_profile:  # the generator has exited: its own process_time() stands in for /proc
            cpu1 = {**_thread_cpu_s(_cpu_roles(eng.pid, None, worker_mode)),
                    "generator:python": cpu0.get("generator:python", 0.0) + sent["cpu_s"]}
    finally:
        sub.close()
        sampler.close()
        eng.send_signal(signal.SIGTERM)
        try:
            eng.wait(30)
        except subprocess.TimeoutExpired:
            eng.kill()
        cfg_path.unlink(missing_ok=True)
    streams = {k: v for b in last.values() for k, v in b["streams"].items()}
    lost = sum(max(0, sent["samples_per_stream"] - v["samples_in"]) for v in streams.values())
    lost += sent["samples_per_stream"] * (n_streams - len(streams))
    p99 = max((v["latency_ms"]["p99"] for v in streams.values()), default=float("nan"))
    # pooled over every chunk of every stream (the workers' histograms)
    pooled = {k: max((b["latency_ms"][k] for b in last.values()), default=float("nan"))
              for k in ("p50", "p99", "max")}
    p50 = float(np.median([v["latency_ms"]["p50"] for v in streams.values()])) if streams else float("nan")
    errors = sum(v["errors"] + v["gaps"] for v in streams.values())
    res = {"streams": n_streams, "seconds": seconds, "chunk_ms": chunk_ms, "classify": classify,
           "stagger": stagger, "join_spread_s": join_spread_s, "workers": workers, "worker_mode": worker_mode, "lost_samples": int(lost),
           "errors_or_gaps": errors, "p50_ms": pooled["p50"], "p99_ms": pooled["p99"], "max_ms": pooled["max"],
           "median_stream_p50_ms": p50, "worst_stream_p99_ms": p99,
           "generator_late_ticks": sent["late_ticks"], "engine_rss_mb": rss_kb / 1024 if rss_kb else None,
           # model work per batched call (cross-stream micro-batching): fewer, larger calls are cheaper
           "batch_items_per_run": round(sum(b.get("batches", {}).get("items", 0) for b in last.values())
                                        / max(1, sum(b.get("batches", {}).get("runs", 0) for b in last.values())), 2),
           "ok": lost == 0 and errors == 0 and pooled["p99"] <= 50.0}
    if cpu_profile:
        res.update(_cpu_report(cpu0, cpu1, n_streams * sent["chunks_per_stream"]))
        res["load_avg"] = os.getloadavg()[0]
    sampler.record(res, n_streams, seconds, chunk_ms)
    if verbose:
        print(json.dumps(res), flush=True)
    return res


def _ray_procs(actors: bool) -> list[Path]:
    """``/proc`` folders of this namespace's Ray worker actors (``actors``) or Ray's own processes."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        is_actor = b"WorkerActor" in cmd
        is_ray = any(k in cmd for k in (b"raylet", b"gcs_server", b"ray::", b"ray/_private", b"log_monitor",
                                        b"dashboard", b"runtime_env"))
        if (actors and is_actor) or (not actors and is_ray and not is_actor):
            out.append(d)
    return out


def _cpu_s_tree(pid: int, mode: str = "thread") -> float:
    """User + system CPU seconds of ``pid`` and its live children (Linux ``/proc``); ray: + worker actors."""
    return _cpu_s(_proc_tree(pid) + (_ray_procs(actors=True) if mode == "ray" else []))


def _cpu_s(dirs: list[Path]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in dirs:
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _wait_idle(pid: int, mode: str, limit_s: float = 180.0) -> None:
    """Wait until the engine (and its workers/actors) is idle: a spare may still be warming up."""
    prev, deadline = _cpu_s_tree(pid, mode), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cur = _cpu_s_tree(pid, mode)
        if cur - prev < 0.05:
            return
        prev = cur


def run_throughput(n_streams: int, seconds: float, chunk_ms: float = 1000.0, record: str | None = None,
                   classify: str = "on", workers: int = 1, worker_mode: str = "thread") -> dict:
    """Saturation: every stream's ``seconds`` of ECG sent at once; wall and CPU time to process it all.

    Load-insensitive figures for a shared machine: ``cpu_us_per_chunk`` (engine process and its
    worker processes together) is the cost of a chunk whatever else runs; ``chunks_per_s`` is the
    wall-clock rate, which other load on the machine lowers.
    """
    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cfg_path = Path(f"/tmp/telediag-thr-{os.getpid()}.toml")
    cfg_path.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 0.5\n'
                        f'ingest_hwm = 1000000\nworkers = {workers}\nworker_mode = "{worker_mode}"\n'
                        + _engine_extra() + _cluster_toml(worker_mode) + CLASSIFY_PIPELINE.format(classify=classify))
    eng = subprocess.Popen([sys.executable, "-m", "telediag", "run", "--config", str(cfg_path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from telediag.client import Subscriber

    sub = Subscriber(publish, topics=["stats/"])
    try:
        if not sub.wait_connected(180):
            raise RuntimeError("engine did not start")
        _wait_idle(eng.pid, worker_mode)
        ready, result = mp.Event(), mp.Queue()
        gen = mp.Process(target=_generator, args=(ingest, n_streams, seconds, chunk_ms, record, ready, result,
                                                  False, False))
        gen.start()
        time.sleep(1.0)
        cpu0, t0 = _cpu_s_tree(eng.pid, worker_mode), time.monotonic()
        fe0 = _cpu_s([Path(f"/proc/{eng.pid}")])  # the engine process alone: front end (+ workers in thread mode)
        ray0 = _cpu_s(_ray_procs(actors=False)) if worker_mode == "ray" else 0.0
        ready.set()
        last: dict = {}
        want = n_streams * int(seconds * 1000 / chunk_ms)
        done_at = None
        while time.monotonic() - t0 < 600:
            c = sub.recv(timeout_s=0.5)
            if c is None:
                continue
            last[c.stream] = c.body
            n = sum(v["chunks_in"] for b in last.values() for v in b["streams"].values())
            if n >= want:
                done_at = time.monotonic()
                break
        cpu1 = _cpu_s_tree(eng.pid, worker_mode)
        fe1 = _cpu_s([Path(f"/proc/{eng.pid}")])
        ray1 = _cpu_s(_ray_procs(actors=False)) if worker_mode == "ray" else 0.0
        gen.join(30)
    finally:
        sub.close()
        eng.send_signal(signal.SIGTERM)
        try:
            eng.wait(30)
        except subprocess.TimeoutExpired:
            eng.kill()
        cfg_path.unlink(missing_ok=True)
    # stats come every 0.5 s: the wall time is an upper bound by up to that much
    wall = (done_at or time.monotonic()) - t0
    res = {"mode": worker_mode, "workers": workers, "streams": n_streams, "chunks": want, "wall_s": round(wall, 2),
           "chunks_per_s": round(want / wall, 1), "cpu_s": round(cpu1 - cpu0, 2),
           "cpu_us_per_chunk": round((cpu1 - cpu0) / want * 1e6, 1),
           "engine_process_us_per_chunk": round((fe1 - fe0) / want * 1e6, 1), "complete": done_at is not None,
           "load_avg": os.getloadavg()[0]}
    if worker_mode == "ray":
        res["ray_cpu_s"] = round(ray1 - ray0, 2)  # raylets, GCS: Ray's control plane, not in cpu_s
    print(json.dumps(res), flush=True)
    return res


def _modes(a: argparse.Namespace) -> list[tuple[str, int]]:
    if not a.modes:
        return [(a.worker_mode, a.workers)]
    out = []
    for item in a.modes.split(","):
        mode, _, n = item.strip().partition(":")
        if mode not in ("thread", "process", "ray") or not n.isdigit():
            raise SystemExit(f"--modes: expected MODE:WORKERS items (thread:1,process:2,ray:2), got {item!r}")
        out.append((mode, int(n)))
    return out


def _sweep(a: argparse.Namespace, mode: str, workers: int) -> int:
    lo, hi, n = 0, None, max(1, a.streams)
    while hi is None or hi - lo > max(1, lo // 10):
        r = run_load(n, a.seconds, a.chunk_ms, a.config, a.record, classify=a.classify, stagger=not a.burst,
                     workers=workers, worker_mode=mode, join_spread_s=a.join_spread_s)
        if r["ok"]:
            lo = n
            n = n * 2 if hi is None else (lo + hi) // 2
        else:
            hi = n
            n = (lo + hi) // 2
        if n <= lo:
            break
    print(f"{mode} x{workers}: most streams held (p99 <= 50 ms, zero loss): {lo}", flush=True)
    return lo


def _in_loopback_namespace(argv: list[str]) -> int:
    """Re-run this benchmark inside a loopback-only network + pid namespace (Ray stays on 127.0.0.1)."""
    from telediag.engine.cluster import (
        LOCAL_RAY_ENV,
        loopback_namespace_cmd,
        loopback_namespace_unavailable,
    )

    why = loopback_namespace_unavailable()
    if why is not None:
        raise SystemExit(f"ray mode without --ray-address needs a loopback-only namespace: {why}")
    env = {**os.environ, "TELEDIAG_RAY_NETNS": "1", **LOCAL_RAY_ENV}
    return subprocess.call(loopback_namespace_cmd([sys.executable, os.path.abspath(__file__), *argv]), env=env)


def main() -> None:
    global RAY_ADDRESS, BATCH_WAIT_MS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--chunk-ms", type=float, default=100.0)
    ap.add_argument("--config", help="extra engine config (pipelines) to load")
    ap.add_argument("--record", help="WFDB record to send (default: synthetic)")
    ap.add_argument("--sweep", action="store_true", help="find the most streams that pass")
    ap.add_argument("--classify", choices=("on", "off"), default="on",
                    help="AAMI beat classification in the ECG pipeline (default on, as the issue asks)")
    ap.add_argument("--burst", action="store_true",
                    help="send every stream's chunk at the same instant (worst case) instead of staggered")
    ap.add_argument("--workers", type=int, default=1, help="engine workers")
    ap.add_argument("--worker-mode", choices=("thread", "process", "ray"), default="thread",
                    help="workers as threads of the engine process, their own processes, or Ray actors")
    ap.add_argument("--modes", help="several MODE:WORKERS runs in turn, e.g. thread:1,process:1,process:2,ray:2 "
                    "(overrides --worker-mode/--workers)")
    ap.add_argument("--rounds", type=int, default=1, help="with --modes: repeat the whole alternation this often")
    ap.add_argument("--ray-address", default="", help="ray modes: an existing Ray cluster (default: a local "
                    "two-node cluster in a loopback-only namespace, started and stopped here)")
    ap.add_argument("--join-spread-s", type=float, default=0.0,
                    help="streams join over this many seconds instead of all in the first period, so their "
                    "periodic work (1 s quality blocks, 5 s HRV ticks) is not synchronised (a ward whose monitors "
                    "were connected at different times); 0 (default): all start together, the worst case, as "
                    "after an engine restart")
    ap.add_argument("--batch-wait-ms", type=float, default=None,
                    help="[engine] batch_wait_ms of the engine under test (default: the engine's own, 2 ms)")
    ap.add_argument("--cpu-profile", action="store_true",
                    help="paced run: CPU µs per source chunk per process role and thread (engine front end, "
                    "worker processes, load generator); a load-insensitive comparison of modes at a fixed load")
    ap.add_argument("--throughput", action="store_true",
                    help="saturation run: all data at once; report chunks/s and CPU per chunk (see run_throughput)")
    a = ap.parse_args()
    BATCH_WAIT_MS = a.batch_wait_ms
    modes = _modes(a)
    cluster = None
    if any(m == "ray" for m, _ in modes):
        if a.ray_address:
            RAY_ADDRESS = a.ray_address
        elif os.environ.get("TELEDIAG_RAY_NETNS") != "1":
            raise SystemExit(_in_loopback_namespace(sys.argv[1:]))
        else:
            import tempfile

            from telediag.engine.cluster import LocalRayCluster

            cluster = LocalRayCluster(tempfile.mkdtemp(prefix="ray-bench-"), nodes=2, cpus_per_node=1)
            RAY_ADDRESS = cluster.start()
            print(f"local two-node Ray cluster at {RAY_ADDRESS} (loopback-only namespace)", flush=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    try:
        results: dict[str, list] = {}
        for _ in range(max(1, a.rounds) if a.modes else 1):
            for mode, workers in modes:
                key = f"{mode} x{workers}"
                if a.throughput:
                    r = run_throughput(a.streams, a.seconds, a.chunk_ms, a.record, a.classify, workers, mode)
                    results.setdefault(key, []).append((r["cpu_us_per_chunk"], r["chunks_per_s"], r["load_avg"]))
                elif a.sweep:
                    results.setdefault(key, []).append(_sweep(a, mode, workers))
                else:
                    r = run_load(a.streams, a.seconds, a.chunk_ms, a.config, a.record, classify=a.classify,
                                 stagger=not a.burst, workers=workers, worker_mode=mode, cpu_profile=a.cpu_profile,
                                 join_spread_s=a.join_spread_s)
                    results.setdefault(key, []).append(
                        (r["cpu_us_per_chunk"], r["cpu_us_per_chunk_roles"]) if a.cpu_profile else r["ok"])
        if len(modes) > 1 or a.rounds > 1:
            what = ("(cpu_us_per_chunk, chunks_per_s, load_avg)" if a.throughput else
                    "most streams held" if a.sweep else "held")
            print(f"summary {what}: " + json.dumps(results), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
