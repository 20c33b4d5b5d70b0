"""Worker processes (``[engine] worker_mode = "process"``): one OS process per worker.

::

    sources --PUSH--> [PULL ingest] --router (HRW owner)--PUSH--> ipc .../w<i>  (PULL, worker process i)
    worker process i --PUSH (outputs, then progress markers)--> ipc .../out (PULL, collector thread)
    collector --PUB--> inproc XSUB ==proxy==> XPUB (publish address) --> subscribers

Each worker process runs the same :class:`~telediag.engine.worker.Worker` code as a thread
worker, with two differences: its outputs go to the engine's *collector* over a PUSH socket
(lossless backpressure, one ordered pipe per worker) instead of a PUB socket, and after the
outputs of each source chunk it sends a *progress marker* ``[b"\\x00P", {stream: seq}]``.
The collector forwards outputs to the publish proxy and keeps, per stream, the last seq whose
outputs it has forwarded, so it knows exactly what subscribers may have seen.

Restart: a supervisor thread watches the processes. When one dies (a crash, ``kill -9``), it
starts a replacement with the same index and inbox address. The replacement warms up, asks the
collector (over the control socket) for the progress of the streams it owns, and only then
binds its inbox; the router's PUSH socket has queued that worker's chunks meanwhile. On the
first chunk of each such stream it publishes ``stream_restarted`` (``reason:
"worker_restarted"``, ``last_seq``: the last chunk fully published before the crash) and, when
chunks were lost in the dead process, the usual ``gap`` event with their exact seq range.
Streams of other workers are untouched (their chunks may wait while the router is blocked on
the dead worker's full inbox, but none is lost). A chunk whose outputs were partly published
when the process died is reported in the gap (its outputs are incomplete).

Children ignore SIGINT (the engine drains them with an in-band STOP) and die with the engine
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of the engine leaves no orphan.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from telediag.engine.config import Config
from telediag.engine.worker import PROGRESS, Worker
from telediag.transports.wire import decode

HELLO = b"H"


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - no libc: the worker still exits when its inbox is gone
        pass


def worker_main(index: int, config: Config, inbox_addr: str, out_addr: str, ctrl_addr: str,
                parent_pid: int, parallel_warmup: bool) -> None:  # pragma: no cover - runs in a child
    """Entry point of a worker process (see the module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    ctx = zmq.Context()
    w = Worker(index, config, ctx, inbox_addr, out_addr)
    w.out_type = zmq.PUSH
    w.progress = True
    w.parallel_warmup = parallel_warmup

    def hello() -> None:
        req = ctx.socket(zmq.DEALER)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(ctrl_addr)
        req.send_multipart([HELLO, str(index).encode()])
        if not req.poll(60_000):
            raise RuntimeError(f"worker {index}: no answer from the engine's control socket")
        reply = req.recv_multipart()
        req.close()
        w.resume = {str(k): int(v) for k, v in json.loads(reply[-1]).items()}

    w.before_serve = hello
    try:
        w.run()
    finally:
        ctx.destroy(linger=2000)


class ProcessPool:
    """Start, watch, restart and stop the worker processes (process mode).

    Parameters
    ----------
    config : Config
        Engine configuration (``[engine].workers`` processes).
    ctx : zmq.Context
        The engine's context (collector and control sockets live in it).
    proxy_in : str
        The publish proxy's XSUB address (inproc) the collector forwards to.
    run_dir : str
        A private folder for the ipc sockets.
    owner : callable
        ``owner(stream_id) -> worker index`` (the router's rule).
    on_stats : callable
        Called by the collector with each worker's stats body (for metrics / aggregation).
    decorate_stats : callable, optional
        May add fields to worker 0's stats body before it is forwarded (socket counts).
    """

    #: More restarts than this within :data:`RESTART_WINDOW_S` ends the engine (a crash loop).
    MAX_RESTARTS = 10
    RESTART_WINDOW_S = 60.0

    def __init__(self, config: Config, ctx: zmq.Context, proxy_in: str, run_dir: str,
                 owner: Callable[[str], int], on_stats: Callable[[int, dict[str, Any]], None],
                 decorate_stats: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.n = config.engine.workers
        self.inbox_addrs = [f"ipc://{run_dir}/w{i}" for i in range(self.n)]
        self.out_addr = f"ipc://{run_dir}/out"
        self.ctrl_addr = f"ipc://{run_dir}/ctrl"
        self.proxy_in = proxy_in
        self.owner = owner
        self.on_stats = on_stats
        self.decorate_stats = decorate_stats
        self.procs: list[Any] = [None] * self.n
        self.progress: dict[str, int] = {}  # stream -> last seq whose outputs were all forwarded
        self.restarts: list[tuple[float, int, int | None]] = []  # (time, worker, exit code)
        self.error: str | None = None
        self.hello = [threading.Event() for _ in range(self.n)]
        self._stopping = threading.Event()
        self._collector_done = threading.Event()
        self._mp = mp.get_context("spawn")
        self._lock = threading.Lock()
        self.forwarded = 0
        self._events: list[dict[str, Any]] = []

    # -- processes -----------------------------------------------------------------------
    def _spawn(self, i: int, parallel_warmup: bool) -> None:
        self.hello[i].clear()
        p = self._mp.Process(target=worker_main, name=f"telediag-w{i}", daemon=True,
                             args=(i, self.config, self.inbox_addrs[i], self.out_addr, self.ctrl_addr, os.getpid(),
                                   parallel_warmup))
        p.start()
        self.procs[i] = p

    def start(self, timeout_s: float = 300.0) -> None:
        """Bind the collector and control sockets, start every worker, wait until all said hello."""
        self._collector = threading.Thread(target=self._collect, name="telediag-collector", daemon=True)
        self._bound = threading.Event()
        self._collector.start()
        if not self._bound.wait(10):
            raise RuntimeError("collector did not start")
        # worker 0 may compile kernels in parallel (cold cache); the others load what it leaves
        for i in range(self.n):
            self._spawn(i, parallel_warmup=i == 0)
        deadline = time.monotonic() + timeout_s
        for i in range(self.n):
            while not self.hello[i].wait(0.2):
                p = self.procs[i]
                if p is not None and not p.is_alive():
                    raise RuntimeError(f"worker process {i} exited during start-up (code {p.exitcode})")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker process {i} did not start within {timeout_s} s")
        self._supervisor = threading.Thread(target=self._supervise, name="telediag-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            sentinels = {p.sentinel: i for i, p in enumerate(self.procs) if p is not None}
            ready = mp.connection.wait(list(sentinels), timeout=0.2)
            if self._stopping.is_set():
                return
            for s in ready:
                i = sentinels[s]  # type: ignore[index]
                p = self.procs[i]
                now = time.monotonic()
                self.restarts.append((now, i, p.exitcode))
                recent = [r for r in self.restarts if now - r[0] < self.RESTART_WINDOW_S]
                if len(recent) > self.MAX_RESTARTS:
                    self.error = (f"worker processes died {len(recent)} times in {self.RESTART_WINDOW_S:g} s "
                                  f"(last: worker {i}, exit code {p.exitcode}); giving up")
                    return
                with self._lock:
                    self._events.append({"type": "worker_restarted", "worker": i, "exitcode": p.exitcode,
                                         "restarts": len(recent)})
                self._spawn(i, parallel_warmup=False)

    def alive(self) -> bool:
        return self.error is None

    # -- collector -----------------------------------------------------------------------
    def _collect(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.config.engine.publish_hwm)
        pull.bind(self.out_addr)
        ctrl = self.ctx.socket(zmq.ROUTER)
        ctrl.bind(self.ctrl_addr)
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.config.engine.publish_hwm)
        pub.setsockopt(zmq.LINGER, 2000)
        pub.connect(self.proxy_in)
        self._bound.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(ctrl, zmq.POLLIN)
        progress = self.progress
        idle_since: float | None = None
        try:
            while True:
                events = dict(poller.poll(100))
                if self._events:
                    with self._lock:
                        evs, self._events = self._events, []
                    for body in evs:
                        self._publish_event(pub, body)
                if ctrl in events:
                    ident, tag, payload = ctrl.recv_multipart()
                    if tag == HELLO:
                        i = int(payload)
                        mine = {s: q for s, q in progress.items() if self.owner(s) == i}
                        ctrl.send_multipart([ident, json.dumps(mine).encode()])
                        self.hello[i].set()
                if pull in events:
                    idle_since = None
                    for _ in range(1000):
                        try:
                            msg = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        first = msg[0].bytes
                        if first == PROGRESS:
                            progress.update(json.loads(msg[1].bytes))
                            continue
                        if first.startswith(b"stats/engine/w"):
                            msg = self._stats(msg, first)
                        pub.send_multipart(msg, copy=False)
                        self.forwarded += 1
                elif self._stopping.is_set():
                    # stop once every worker process has exited and their last messages are read
                    if all(p is None or not p.is_alive() for p in self.procs):
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > 0.2:
                            break
        finally:
            pull.close(0)
            ctrl.close(0)
            pub.close()
            self._collector_done.set()

    def _publish_event(self, pub: zmq.Socket, body: dict[str, Any]) -> None:
        from telediag.transports.wire import Chunk, encode

        body = {**body, "pub_ns": time.time_ns()}
        pub.send_multipart(encode(Chunk.record("event", "engine", 0, time.time_ns(), body)))

    def _stats(self, msg: list[Any], topic: bytes) -> list[Any]:
        try:
            chunk = decode(msg)
            body = dict(chunk.body)
            i = int(body.get("worker", -1))
        except Exception:  # noqa: BLE001 - forward as is; metrics just miss one snapshot
            return msg
        if self.decorate_stats is not None and i == 0:
            self.decorate_stats(body)
            from telediag.transports.wire import Chunk, encode

            msg = list(encode(Chunk.record("stats", chunk.stream, chunk.seq, chunk.t0_ns, body, meta=chunk.meta)))
        body["restarts"] = sum(1 for r in self.restarts if r[1] == i)
        self.on_stats(i, body)
        return msg

    # -- stop ----------------------------------------------------------------------------
    def stop(self, timeout_s: float) -> bool:
        """After the router has sent STOP: wait for the processes to exit (kill stragglers).

        Returns True when every process ended by itself.
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        clean = True
        for p in self.procs:
            if p is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                clean = False
                p.kill()
                p.join(5)
        self._collector_done.wait(max(1.0, deadline - time.monotonic()))
        return clean
