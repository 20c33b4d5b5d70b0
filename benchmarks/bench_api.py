"""Inference API throughput and latency: ``ecg.analyze`` of 10-s segments over loopback.

Workload: 10-s, 2-lead, 360 Hz segments of MIT-BIH record 101 (synthetic ECG-like data when
the shared data is absent; the table says which), float64, sent by 1, 8 and 64 concurrent
clients (one thread and one connection each) to a ``telediag api`` server running in its own
process (2 worker threads), over ZeroMQ (DEALER -> ROUTER, raw payload frame) and over HTTP
(JSON body, base64 payload).  Reported per configuration: requests/s, p50 and p99 latency
(client-side, request sent -> reply decoded), and the server's median run time.  Peers are the
two transports, measured in the same run on the same server and data.

Each configuration runs for ``BENCH_API_SECONDS`` (default 3 s) or ``BENCH_API_MAX`` requests
(default 3000), whichever comes first; in smoke mode (``--benchmark-disable``) each client
sends 2 requests.

Run::

    pytest benchmarks/bench_api.py --benchmark-only -s      # prints the table
    python benchmarks/bench_api.py                          # the same table, no pytest
    pytest benchmarks/bench_api.py --benchmark-disable      # smoke mode (CI)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag.api.client import HttpInferenceClient, InferenceClient
from telediag.api.schema import ApiError

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 64)
TRANSPORTS = ("zmq", "http")
RESULTS: dict[tuple[str, int], dict[str, Any]] = {}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def segments() -> tuple[list[np.ndarray], str]:
    """Ten-second 2-lead segments of mitdb/101 (or a synthetic stand-in) and their origin."""
    env = os.environ.get("TELEDIAG_DATA")
    data = Path(env) if env else ROOT.parent / "shared" / "data"
    fs = 360
    if (data / "mitdb" / "101.hea").exists():
        from telediag.sources.readers import read_wfdb

        x = read_wfdb(data / "mitdb" / "101").signal
        src = "mitdb/101"
    else:
        t = np.arange(fs * 120) / fs
        r = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.012**2))
        x = np.stack([r, 0.5 * r], 1) + 0.01 * np.random.default_rng(0).standard_normal((t.size, 2))
        src = "synthetic (shared data absent)"
    n = 10 * fs
    return [np.ascontiguousarray(x[i : i + n]) for i in range(0, min(x.shape[0], 12 * n) - n + 1, n)], src


class ApiProcess:
    """``telediag api`` in a child process (so client threads do not share its GIL)."""

    def __init__(self, workers: int = 2) -> None:
        self.zmq = f"tcp://127.0.0.1:{_port()}"
        self.http_port = _port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "telediag.api.serve_cli", "--zmq", self.zmq, "--http-port",
             str(self.http_port), "--workers", str(workers), "--watch-s", "0", "--max-pending", "512",
             "--duration", "900"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.monotonic() + 120  # the server may still be importing / binding
        while True:  # an absent server is 'unreachable' at once (not retried by the client): poll
            try:
                with InferenceClient(self.zmq, timeout_s=1.0, retries=0) as c:
                    c.health()
                break
            except ApiError as e:
                if e.code not in ("unreachable", "timeout") or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def run_load(server: ApiProcess, transport: str, clients: int, segs: list[np.ndarray], *,
             seconds: float, max_requests: int, per_client: int | None = None) -> dict[str, Any]:
    """Closed-loop load: each client sends its next request when the previous reply is in."""
    lat: list[float] = []
    runs: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    count = [0]
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        c: Any = (InferenceClient(server.zmq, timeout_s=120, retries=0) if transport == "zmq"
                  else HttpInferenceClient(server.http, timeout_s=120, retries=0))
        try:
            c.analyze_ecg(segs[k % len(segs)], 360.0)  # connect + warm path, not timed
        except Exception as e:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"warm-up: {type(e).__name__}: {e}")
            per_client_done = True
        else:
            per_client_done = False
        start_gate.wait()
        if per_client_done:
            return
        i = k
        sent = 0
        while True:
            with lock:
                if (per_client is not None and sent >= per_client) or (per_client is None and (
                        count[0] >= max_requests or time.perf_counter() >= stop_at[0])):
                    break
                count[0] += 1
            t0 = time.perf_counter()
            try:
                c.analyze_ecg(segs[i % len(segs)], 360.0)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                break
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if transport == "zmq":
                    runs.append(c.last_timing.get("run_ms", 0.0))
            i += clients
            sent += 1
        if hasattr(c, "close"):
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1000.0
    return {
        "transport": transport, "clients": clients, "requests": int(a.size), "errors": len(errors),
        "first_error": errors[0] if errors else None, "seconds": wall,
        "req_per_s": a.size / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(a, 50)) if a.size else float("nan"),
        "p99_ms": float(np.percentile(a, 99)) if a.size else float("nan"),
        "server_run_p50_ms": float(np.median(runs)) if runs else float("nan"),
    }


def table(rows: list[dict[str, Any]], src: str) -> str:
    """Markdown table of the results."""
    out = [f"ecg.analyze, 10-s 2-lead 360 Hz segments of {src}, server: 2 worker threads, own process",
           "", "| transport | clients | requests | req/s | p50 ms | p99 ms | server run p50 ms | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['transport']} | {r['clients']} | {r['requests']} | {r['req_per_s']:.1f} | "
                   f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['server_run_p50_ms']:.1f} | {r['errors']} |")
    return "\n".join(out)


@pytest.fixture(scope="module")
def server() -> Iterator[ApiProcess]:
    srv = ApiProcess()
    yield srv
    srv.close()
    if RESULTS:
        print("\n" + table([RESULTS[k] for k in sorted(RESULTS, key=lambda k: (k[0] != "zmq", k[1]))],
                           segments()[1]))


@pytest.mark.parametrize("clients", CONCURRENCY)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_api_ecg_load(benchmark: Any, server: ApiProcess, transport: str, clients: int) -> None:
    segs, _ = segments()
    smoke = bool(getattr(benchmark, "disabled", False))
    kw: dict[str, Any] = ({"seconds": 60.0, "max_requests": 10**9, "per_client": 2} if smoke else
                          {"seconds": float(os.environ.get("BENCH_API_SECONDS", 3.0)),
                           "max_requests": int(os.environ.get("BENCH_API_MAX", 3000))})
    res: dict[str, Any] = {}

    def once() -> None:
        res.update(run_load(server, transport, clients, segs, **kw))

    benchmark.pedantic(once, rounds=1, iterations=1)
    assert res["errors"] == 0, res["first_error"]
    assert res["requests"] >= (2 * clients if smoke else 1)
    benchmark.extra_info.update(res)
    if not smoke:
        RESULTS[(transport, clients)] = res


if __name__ == "__main__":
    segs, src = segments()
    srv = ApiProcess()
    try:
        rows = [run_load(srv, t, n, segs, seconds=float(os.environ.get("BENCH_API_SECONDS", 3.0)),
                         max_requests=int(os.environ.get("BENCH_API_MAX", 3000)))
                for t in TRANSPORTS for n in CONCURRENCY]
    finally:
        srv.close()
    print(table(rows, src))
