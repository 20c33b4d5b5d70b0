"""Cold start: seconds from ``telediag run`` to the first published beat (issue 18 item 3).

Starts ``telediag run`` as its own process with ``NUMBA_CACHE_DIR`` set to an empty folder
(cold) or to a folder a previous run filled (warm). A source starts at the same instant and
sends a real MIT-BIH record (or synthetic ECG when the data is absent) at real-time pace in
100 ms chunks; its PUSH socket queues whatever the engine is not yet reading (lossless). We
record:

- ``first_stats_s``: engine ready (first ``stats/`` message);
- ``first_beat_s``: first ``beats/`` record (the figure the issue targets: <= 10 s cold, <= 2 s warm);
- ``first_beat_source_s``: source time of that beat (the data-limited floor: a beat needs the
  samples after it and the 1 s quality block it sits in);
- ``in_order``: every filtered chunk published exactly once, in order (``src_seq`` 0..N-1);
- the engine's own warm-up report from stats: warm-up seconds per kind, the latency of the chunks
  that queued during warm-up, and the run's p99 *without* them.

    python benchmarks/bench_cold_start.py                 # cold then warm, default settings
    python benchmarks/bench_cold_start.py --serial        # cold with [engine].warmup_parallel = false
    python benchmarks/bench_cold_start.py --json out.json

``pytest benchmarks/bench_cold_start.py`` runs one start with the session's own Numba cache as a
smoke test (the cold case takes a minute or more of compilation and is left to the script).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal() -> tuple[np.ndarray, float, str]:
    data = Path(os.environ.get("TELEDIAG_DATA", ROOT.parent / "shared" / "data")) / "mitdb" / "101"
    if data.with_suffix(".hea").exists():
        from telediag.sources.readers import read_wfdb

        rec = read_wfdb(str(data))
        return rec.signal.astype(np.float32), float(rec.fs), "mitdb/101"
    fs = 360.0  # synthetic: a narrow QRS-like pulse every 0.8 s on a little noise
    t = np.arange(int(fs * 60)) / fs
    x = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.012**2)) + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    return np.stack([x, 0.5 * x], 1).astype(np.float32), fs, "synthetic"


def _source(ingest: str, sig: np.ndarray, fs: float, seconds: float, t_start: float, sent: list[int],
            clock: dict[str, int], done: threading.Event) -> None:
    import zmq

    from telediag.transports.wire import Chunk, encode

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(ingest)  # before the engine binds: ZeroMQ queues and connects when it can
    per = int(fs * 0.1)
    t0 = clock["t0_ns"] = time.time_ns()
    for k in range(int(seconds * 10)):
        due = t_start + (k + 1) * 0.1
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        c = Chunk.signal("ecg", "cold/ecg", k, t0 + int(k * 0.1 * 1e9), sig[k * per:(k + 1) * per], fs,
                         ("MLII", "V1"), ("mV", "mV"), meta={"session": "cold", "sent_ns": time.time_ns()})
        sock.send_multipart(encode(c), copy=False)
        sent.append(k)
    # keep the socket open until the engine has read everything: closing before a connection was ever
    # made drops what is queued (the engine may still be importing on a cold, busy machine)
    done.wait()
    sock.close(linger=5000)
    ctx.term()


def measure(cache_dir: str | None, *, seconds: float = 12.0, parallel: bool = True, timeout_s: float = 300.0) -> dict[str, Any]:
    """One engine start with ``NUMBA_CACHE_DIR=cache_dir``; see the module doc for the fields."""
    from telediag.client import Subscriber

    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    sig, fs, name = _signal()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "engine.toml"
        cfg.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 0.5\n'
                       f'warmup_parallel = {"true" if parallel else "false"}\n')
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if cache_dir is not None:  # None: the cache the rest of the session uses (warm after the tests)
            env["NUMBA_CACHE_DIR"] = cache_dir
        sub = Subscriber(publish, topics=["beats/cold/", "stats/", "ecg/cold/"])
        t_start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "telediag", "run", "--config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sent: list[int] = []
        clock: dict[str, int] = {}
        done = threading.Event()
        src = threading.Thread(target=_source, args=(ingest, sig, fs, seconds, t_start, sent, clock, done),
                               daemon=True)
        src.start()
        res: dict[str, Any] = {"signal": name, "parallel_warmup": parallel, "seconds_sent": seconds}
        first_stats = first_beat = None
        beat_src = None
        seqs: list[int] = []
        last_stats: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        quiet_since = None
        try:
            while time.monotonic() < deadline:
                c = sub.recv(timeout_s=0.1)
                now = time.monotonic() - t_start
                if c is None:
                    if len(sent) == int(seconds * 10) and seqs and seqs[-1] == len(sent) - 1:
                        quiet_since = quiet_since or now
                        if now - quiet_since > 1.0:
                            break
                    continue
                if c.kind == "stats":
                    first_stats = first_stats if first_stats is not None else now
                    last_stats = c.body
                elif c.kind == "beats":
                    if first_beat is None:
                        first_beat = now
                        beat_src = (c.t0_ns - clock.get("t0_ns", c.t0_ns)) / 1e9
                elif c.kind == "ecg":
                    seqs.append(int(c.meta["src_seq"]))
        finally:
            done.set()
            sub.close()
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        res.update(first_stats_s=first_stats, first_beat_s=first_beat, first_beat_source_s=beat_src,
                   chunks_sent=len(sent), chunks_published=len(seqs), in_order=seqs == list(range(len(sent))),
                   engine_exit=proc.returncode)
        warm = last_stats.get("warmup", {})
        res["engine_warmup_s"] = warm.get("s")
        res["engine_warmup_kinds_s"] = warm.get("kinds_s")
        res["latency_during_warmup_ms"] = warm.get("latency_ms")
        res["latency_after_warmup_ms"] = last_stats.get("latency_ms")
        if proc.returncode not in (0, None):
            res["stderr_tail"] = err.decode(errors="replace")[-2000:]
        return res


def test_start_smoke() -> None:
    """The session's own Numba cache (warm once the tests ran): beats flow, nothing lost, in order.

    The cold case compiles every kernel (minutes on a busy 2-core machine) and is left to ``main``.
    """
    r = measure(None, seconds=4.0)
    assert r["first_beat_s"] is not None and r["in_order"], r
    assert r["engine_exit"] == 0, r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="seconds of ECG the source sends")
    ap.add_argument("--serial", action="store_true", help="cold run with warmup_parallel = false")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on a start after this many seconds")
    a = ap.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        out["cold"] = measure(cache, seconds=a.seconds, parallel=not a.serial, timeout_s=a.timeout)
        print(json.dumps({"cold": out["cold"]}, indent=1), flush=True)
        out["warm"] = measure(cache, seconds=a.seconds, timeout_s=a.timeout)
        print(json.dumps({"warm": out["warm"]}, indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
