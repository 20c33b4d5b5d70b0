"""Cold start: seconds from ``telediag run`` to the first published beat (issue 18 item 3).

Starts ``telediag run`` as its own process with ``NUMBA_CACHE_DIR`` set to an empty folder
(cold) or to a folder a previous run filled (warm). A source starts at the same instant and
sends a real MIT-BIH record (or synthetic ECG when the data is absent) at real-time pace in
100 ms chunks; its PUSH socket queues whatever the engine is not yet reading (lossless). We
record:

- ``first_stats_s``: engine ready (first ``stats/`` message);
- ``first_beat_s``: first ``beats/`` record (the figure the issue targets: <= 10 s cold, <= 2 s warm);
- ``first_beat_source_s``: source time of that beat (a beat needs the samples after it, the 1 s
  quality block it sits in and, with beat labels, the next beats: on MIT-BIH 101 the first beat is
  published after 2.3 s of signal, 2.0 s with ``classify = "off"``);
- ``hot``: a third run whose source starts only once the engine is ready: its ``first_beat_s`` is
  that data floor plus processing, the least any start can reach; ``warm - hot`` is what a warm
  start costs;
- ``engine_cpu_s_at_first_beat``: CPU seconds the engine process used until then (load-robust);
- ``in_order``: every filtered chunk published exactly once, in order (``src_seq`` 0..N-1);
- the engine's own warm-up report from stats: warm-up seconds per kind, the latency of the chunks
  that queued during warm-up, and the run's p99 *without* them.

    python benchmarks/bench_cold_start.py                 # cold then warm, default settings
    python benchmarks/bench_cold_start.py --demo          # ... then `telediag demo` -> traces on screen
    python benchmarks/bench_cold_start.py --no-aot        # kernels JIT (TELEDIAG_AOT=0): the old path
    python benchmarks/bench_cold_start.py --serial        # cold with [engine].warmup_parallel = false
    python benchmarks/bench_cold_start.py --json out.json

"Cold" is an empty ``NUMBA_CACHE_DIR`` (a new temporary folder); "warm" reuses the folder the cold
run filled. The kernels compiled ahead of time by ``make`` (``telediag/engine/aot.py``) do not
live in the Numba cache: every result records whether they were in use (``aot``), and
``--no-aot`` measures the JIT path. ``load_before``/``load_after``: the 1-minute load average
(2 cores; other work on the machine inflates every figure).

``--demo``: ``telediag demo`` started at t = 0, a headless Debian chromium (launched beforehand,
driven by Playwright) opening the viewer as soon as its port accepts: ``viewer_port_s``,
``viewer_page_s``, then
``ecg_on_screen_s`` / ``pcg_on_screen_s`` when the page has drawn samples of the ECG (bed-1) and
heart-sound (bed-2) traces; a screenshot is left in the temp folder.

``pytest benchmarks/bench_cold_start.py`` runs one start with the session's own Numba cache as a
smoke test, and one on an empty cache that must compile nothing (the cache folder stays empty)
when the AOT kernels are built; the cold case without them (minutes of compilation) is left to
the script.
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


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) the process has used so far; None off Linux.

    Under load the wall-clock figures stretch with the machine's other work; the CPU a start needs
    does much less, so it is the figure to compare across runs (an idle machine would then show
    about max(CPU seconds, the data floor) plus a little I/O)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


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


def measure(cache_dir: str | None, *, seconds: float = 12.0, parallel: bool = True, timeout_s: float = 300.0,
            aot: bool = True, hot: bool = False) -> dict[str, Any]:
    """One engine start with ``NUMBA_CACHE_DIR=cache_dir``; see the module doc for the fields.

    ``hot``: the source starts only once the engine is ready (its first stats): then the first beat
    comes after the data floor alone, and times count from the source's start."""
    import zmq

    from telediag.client import Subscriber

    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    sig, fs, name = _signal()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "engine.toml"
        cfg.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 0.5\n'
                       f'warmup_parallel = {"true" if parallel else "false"}\n')
        env = _env(cache_dir, aot)
        res: dict[str, Any] = {"signal": name, "parallel_warmup": parallel, "seconds_sent": seconds,
                               "aot": _aot_status(env), "load_before": os.getloadavg()[0]}
        # reconnect every 10 ms (default 100 ms): with AOT kernels the engine publishes its backlog
        # ~0.1 s after binding, and a SUB that joins later misses what came before (PUB/SUB)
        sub = Subscriber(publish, topics=["beats/cold/", "stats/", "ecg/cold/"], sockopts={zmq.RECONNECT_IVL: 10})
        t_start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "telediag", "run", "--config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if hot:  # wait for the engine, then start the clock with the source
            while time.monotonic() < t_start + timeout_s and proc.poll() is None:
                c = sub.recv(timeout_s=0.1)
                if c is not None and c.kind == "stats":
                    res["engine_ready_s"] = time.monotonic() - t_start
                    break
            t_start = time.monotonic()
        sent: list[int] = []
        clock: dict[str, int] = {}
        done = threading.Event()
        src = threading.Thread(target=_source, args=(ingest, sig, fs, seconds, t_start, sent, clock, done),
                               daemon=True)
        src.start()
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
                        res["engine_cpu_s_at_first_beat"] = _cpu_s(proc.pid)
                        beat_src = (c.t0_ns - clock.get("t0_ns", c.t0_ns)) / 1e9
                elif c.kind == "ecg":
                    seqs.append(int(c.meta["src_seq"]))
        finally:
            done.set()
            sub.close()
            err = _stop(proc)
        res.update(first_stats_s=first_stats, first_beat_s=first_beat, first_beat_source_s=beat_src,
                   chunks_sent=len(sent), chunks_published=len(seqs), in_order=seqs == list(range(len(sent))),
                   engine_exit=proc.returncode)
        warm = last_stats.get("warmup", {})
        res["engine_warmup_s"] = warm.get("s")
        res["engine_warmup_kinds_s"] = warm.get("kinds_s")
        res["engine_aot"] = warm.get("aot")  # what the engine itself reports (stats warmup.aot)
        res["latency_during_warmup_ms"] = warm.get("latency_ms")
        res["latency_after_warmup_ms"] = last_stats.get("latency_ms")
        res["load_after"] = os.getloadavg()[0]
        if proc.returncode not in (0, None):
            res["stderr_tail"] = err.decode(errors="replace")[-2000:]
        return res


def _stop(proc: subprocess.Popen) -> bytes:
    """SIGTERM ``proc`` (SIGKILL after 30 s more) and return its stderr."""
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


def _env(cache_dir: str | None, aot: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TELEDIAG_AOT": "1" if aot else "0"}
    if cache_dir is not None:  # None: the cache the rest of the session uses (warm after the tests)
        env["NUMBA_CACHE_DIR"] = cache_dir
    return env


def _aot_status(env: dict[str, str]) -> str:
    """Whether the engine started with ``env`` will use the AOT kernels (engine/aot.py), and why not."""
    r = subprocess.run([sys.executable, "-m", "telediag.engine.aot", "status"], env=env, capture_output=True,
                       text=True, check=False)
    try:
        st = json.loads(r.stdout)
    except ValueError:
        return f"unknown ({r.stderr.strip()[-200:]})"
    return "ok" if st["aot"] else f"off: {st['reason']}"


def measure_demo(cache_dir: str | None, *, aot: bool = True, timeout_s: float = 300.0) -> dict[str, Any]:
    """``telediag demo`` started at t = 0 with ``NUMBA_CACHE_DIR=cache_dir``; a headless Debian
    chromium (launched before t = 0, Playwright driving it as in tests/test_viewer_browser.py) opens
    the viewer as soon as it answers. Seconds from t = 0 until the viewer page loads, and until the
    ECG (bed-1) and heart-sound (bed-2) traces have samples drawn on the page's canvas."""
    from playwright.sync_api import Error as PwError
    from playwright.sync_api import sync_playwright

    ingest, publish, http = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}", _free_port()
    env = _env(cache_dir, aot)
    res: dict[str, Any] = {"aot": _aot_status(env), "load_before": os.getloadavg()[0]}
    want = {"ecg_on_screen_s": "ecg/bed-1/ecg/filtered", "pcg_on_screen_s": "pcg/bed-2/pcg/filtered"}
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args, timeout=60_000,
                                     chromium_sandbox=False)
        page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "telediag", "demo", "--duration", "0", "--ingest", ingest,
                                 "--publish", publish, "--viewer-port", str(http), "--record-dir", ""],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = t0 + timeout_s
            # wait for the viewer's port with plain TCP connects (a browser retrying navigations burns
            # CPU the starting demo needs: it delayed the viewer ~4 s at load 5), then load the page
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", http), timeout=0.5).close()
                    res["viewer_port_s"] = time.monotonic() - t0
                    break
                except OSError:
                    time.sleep(0.05)
            while "viewer_port_s" in res and time.monotonic() < deadline and proc.poll() is None:
                try:
                    page.goto(f"http://127.0.0.1:{http}/", timeout=10_000)
                    res["viewer_page_s"] = time.monotonic() - t0
                    break
                except PwError:
                    time.sleep(0.1)
            while "viewer_page_s" in res and time.monotonic() < deadline and proc.poll() is None:
                st = page.evaluate("() => window.telediag ? window.telediag.state() : null")
                now = time.monotonic() - t0
                for key, topic in want.items():
                    tr = (st or {}).get("streams", {}).get(topic)
                    if key not in res and tr and tr.get("drawn", 0) > 0:
                        res[key] = now
                        res[key[:-2] + "_demo_cpu_s"] = _cpu_s(proc.pid)
                if all(k in res for k in want):
                    break
                time.sleep(0.05)
            shot = Path(tempfile.gettempdir()) / "bench_cold_start_demo.png"
            page.screenshot(path=str(shot))
            res["screenshot"] = str(shot)
        finally:
            browser.close()
            err = _stop(proc)
    res["demo_exit"] = proc.returncode
    res["load_after"] = os.getloadavg()[0]
    if proc.returncode not in (0, -15, None):
        res["stderr_tail"] = err.decode(errors="replace")[-2000:]
    return res


def test_start_smoke() -> None:
    """The session's own Numba cache (warm once the tests ran): beats flow, nothing lost, in order.

    The cold case compiles every kernel (minutes on a busy 2-core machine) and is left to ``main``.
    """
    r = measure(None, seconds=4.0)
    assert r["first_beat_s"] is not None and r["in_order"], r
    assert r["engine_exit"] == 0, r


def test_cold_start_compiles_nothing(tmp_path: Path) -> None:
    """With the AOT kernels (``make``), a start on an EMPTY Numba cache serves real ECG to its first
    beat without compiling a kernel: the cache folder is still empty afterwards (every JIT compile
    of a ``cache=True`` kernel would have written it). Load-independent, unlike a time. Skipped
    where the AOT kernels are not in use, except under CI, where ``make`` has just built them."""
    env = _env(str(tmp_path / "numba-cache"), True)
    status = _aot_status(env)
    if status != "ok":
        if os.environ.get("CI") == "true":
            raise AssertionError(f"AOT kernels not in use under CI: {status}")
        import pytest

        pytest.skip(f"AOT kernels not in use: {status}")
    r = measure(str(tmp_path / "numba-cache"), seconds=4.0)
    assert r["first_beat_s"] is not None and r["in_order"] and r["engine_exit"] == 0, r
    assert r["engine_aot"]["aot"], r
    written = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert not written, f"kernels compiled at start despite the AOT kernels: {written[:10]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="seconds of ECG the source sends")
    ap.add_argument("--serial", action="store_true", help="cold run with warmup_parallel = false")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on a start after this many seconds")
    ap.add_argument("--no-aot", action="store_true",
                    help="TELEDIAG_AOT=0: the kernels JIT (the state before engine/aot.py, or without a C compiler)")
    ap.add_argument("--demo", action="store_true", help="also measure `telediag demo` -> traces on screen (chromium)")
    ap.add_argument("--demo-only", action="store_true", help="only the demo measurement")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {}
    aot = not a.no_aot
    if not a.demo_only:
        with tempfile.TemporaryDirectory() as cache:
            out["cold"] = measure(cache, seconds=a.seconds, parallel=not a.serial, timeout_s=a.timeout, aot=aot)
            print(json.dumps({"cold": out["cold"]}, indent=1), flush=True)
            out["warm"] = measure(cache, seconds=a.seconds, timeout_s=a.timeout, aot=aot)
            print(json.dumps({"warm": out["warm"]}, indent=1), flush=True)
            # the data floor: engine ready before the source starts (a beat waits for its 1 s quality
            # block and, with labels, for the next beats); warm minus this = what the start costs
            out["hot"] = measure(cache, seconds=a.seconds, timeout_s=a.timeout, aot=aot, hot=True)
            print(json.dumps({"hot": out["hot"]}, indent=1), flush=True)
    if a.demo or a.demo_only:
        with tempfile.TemporaryDirectory() as cache:
            out["demo_cold"] = measure_demo(cache, aot=aot, timeout_s=a.timeout)
            print(json.dumps({"demo_cold": out["demo_cold"]}, indent=1), flush=True)
            out["demo_warm"] = measure_demo(cache, aot=aot, timeout_s=a.timeout)
            print(json.dumps({"demo_warm": out["demo_warm"]}, indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
