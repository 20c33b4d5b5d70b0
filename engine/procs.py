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


def worker_main(config: Config, inbox_addrs: list[str], out_addr: str, ctrl_addr: str,
                parent_pid: int, parallel_warmup: bool) -> None:  # pragma: no cover - runs in a child
    """Entry point of a worker process (see the module doc).

    The process warms up first, then says hello on the control socket and waits for its
    assignment: a worker index (hence its inbox address) and the progress of the streams it
    takes over. A process that is not needed yet waits there as a warm *spare*.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    ctx = zmq.Context()
    w = Worker(-1, config, ctx, "", out_addr)
    w.out_type = zmq.PUSH
    w.progress = True
    w.parallel_warmup = parallel_warmup

    def hello() -> None:
        req = ctx.socket(zmq.DEALER)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(ctrl_addr)
        req.send_multipart([HELLO, str(os.getpid()).encode()])
        while not req.poll(1000):  # a spare waits here until a worker dies
            if os.getppid() != parent_pid:
                raise SystemExit(0)
        reply = json.loads(req.recv_multipart()[-1])
        req.close()
        w.index = int(reply["index"])
        w.inbox_addr = inbox_addrs[w.index]
        w.resume = {str(k): int(v) for k, v in reply["resume"].items()}

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
        Engine configuration (``[engine].workers`` processes, ``[engine].spare_workers`` spares).
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
    #: The collector answers a replacement only after the dead worker's pipe was quiet this long.
    QUIET_S = 0.05
    #: at most this long after a death before its index is handed on, even when the output queue
    #: never runs empty (a busy engine): the gap it reports may then be a little too long, never short
    MAX_HANDOVER_WAIT_S = 1.0

    def __init__(self, config: Config, ctx: zmq.Context, proxy_in: str, run_dir: str,
                 owner: Callable[[str], int], on_stats: Callable[[int, dict[str, Any]], None],
                 decorate_stats: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.n = config.engine.workers
        self.spares = config.engine.spare_workers
        self.inbox_addrs = [f"ipc://{run_dir}/w{i}" for i in range(self.n)]
        self.out_addr = f"ipc://{run_dir}/out"
        self.ctrl_addr = f"ipc://{run_dir}/ctrl"
        self.proxy_in = proxy_in
        self.owner = owner
        self.on_stats = on_stats
        self.decorate_stats = decorate_stats
        self.procs: list[Any] = []  # every live process (assigned or spare)
        self.index_of: dict[int, int] = {}  # pid -> worker index (assigned processes)
        self.assigned_at: dict[int, float] = {}  # worker index -> monotonic time of its last assignment
        self.progress: dict[str, int] = {}  # stream -> last seq whose outputs were all forwarded
        self.restarts: list[tuple[float, int, int | None]] = []  # (time, worker, exit code)
        self.error: str | None = None
        self._unassigned: list[int] = list(range(self.n))  # worker indices waiting for a process
        self._died_at: dict[int, float] = {}
        self._stopping = threading.Event()
        self._collector_done = threading.Event()
        self._mp = mp.get_context("spawn")
        self._lock = threading.Lock()
        self.forwarded = 0
        self._events: list[dict[str, Any]] = []

    # -- processes -----------------------------------------------------------------------
    def _spawn(self, parallel_warmup: bool) -> None:
        p = self._mp.Process(target=worker_main, name="telediag-worker", daemon=True,
                             args=(self.config, self.inbox_addrs, self.out_addr, self.ctrl_addr, os.getpid(),
                                   parallel_warmup))
        p.start()
        with self._lock:
            self.procs.append(p)

    def start(self, timeout_s: float = 300.0, cancel: threading.Event | None = None) -> None:
        """Bind the collector and control sockets, start the processes, wait until every index is served.

        Raises RuntimeError on failure, timeout or when ``cancel`` is set meanwhile.
        """
        self._collector = threading.Thread(target=self._collect, name="telediag-collector", daemon=True)
        self._bound = threading.Event()
        self._collector.start()
        if not self._bound.wait(10):
            raise RuntimeError("collector did not start")
        # the first may compile kernels in parallel (cold cache); the others load what it leaves
        for k in range(self.n + self.spares):
            self._spawn(parallel_warmup=k == 0)
        deadline = time.monotonic() + timeout_s
        while len(self.assigned_at) < self.n:
            time.sleep(0.05)
            dead = [p for p in self.procs if not p.is_alive()]
            if dead:
                raise RuntimeError(f"a worker process exited during start-up (code {dead[0].exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker processes did not start within {timeout_s} s")
            if cancel is not None and cancel.is_set():
                raise RuntimeError("start-up cancelled")
        self._supervisor = threading.Thread(target=self._supervise, name="telediag-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {p.sentinel: p for p in self.procs}
            ready = mp.connection.wait(list(sentinels), timeout=0.2)
            if self._stopping.is_set():
                return
            for s in ready:
                p = sentinels[s]  # type: ignore[index]
                with self._lock:
                    self.procs.remove(p)
                    i = self.index_of.pop(p.pid, None)
                now = time.monotonic()
                if i is not None:
                    self.restarts.append((now, i, p.exitcode))
                    recent = [r for r in self.restarts if now - r[0] < self.RESTART_WINDOW_S]
                    if len(recent) > self.MAX_RESTARTS:
                        self.error = (f"worker processes died {len(recent)} times in {self.RESTART_WINDOW_S:g} s "
                                      f"(last: worker {i}, exit code {p.exitcode}); giving up")
                        return
                    with self._lock:
                        self._died_at[i] = now
                        self._unassigned.append(i)
                        self._events.append({"type": "worker_restarted", "worker": i, "exitcode": p.exitcode,
                                             "restarts": len(recent)})
                self._spawn(parallel_warmup=False)  # the next spare (or this index's replacement)

    def failure(self) -> str | None:
        """Why the pool can no longer serve (a crash loop, its collector or supervisor gone), or None."""
        if self.error is not None:
            return self.error
        if self._stopping.is_set():
            return None
        for t in (getattr(self, "_collector", None), getattr(self, "_supervisor", None)):
            if t is not None and not t.is_alive():
                return f"engine thread {t.name} died"
        return None

    # -- collector -----------------------------------------------------------------------
    def _assign(self, ctrl: zmq.Socket, waiting: list[tuple[bytes, int]], last_empty: float) -> None:
        """Give each unassigned worker index to a waiting process, with its streams' progress."""
        while waiting:
            with self._lock:
                if not self._unassigned:
                    return
                i = self._unassigned[0]
                died = self._died_at.get(i)
            now = time.monotonic()
            if died is not None and now - died < self.MAX_HANDOVER_WAIT_S and (
                    now - died < self.QUIET_S or last_empty < died + self.QUIET_S):
                # let the dead worker's last messages through first (progress must be complete): wait
                # until the output queue has been read empty once, QUIET_S after the death. Not
                # "until every worker is quiet": the other workers' traffic never stops on a busy
                # engine, and the dead worker's streams would stay silent meanwhile.
                return
            ident, pid = waiting.pop(0)
            if not any(p.pid == pid and p.is_alive() for p in self.procs):
                continue  # that spare is gone
            with self._lock:
                self._unassigned.pop(0)
                self.index_of[pid] = i
                self.assigned_at[i] = now
            mine = {s: q for s, q in self.progress.items() if self.owner(s) == i}
            ctrl.send_multipart([ident, json.dumps({"index": i, "resume": mine}).encode()])

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
        waiting: list[tuple[bytes, int]] = []  # (routing id, pid) of processes waiting for an index
        idle_since: float | None = None
        last_empty = 0.0  # when the output queue was last read empty
        try:
            while True:
                events = dict(poller.poll(20 if self._unassigned else 100))
                if self._events:
                    with self._lock:
                        evs, self._events = self._events, []
                    for body in evs:
                        self._publish_event(pub, body)
                if ctrl in events:
                    ident, tag, payload = ctrl.recv_multipart()
                    if tag == HELLO:
                        waiting.append((ident, int(payload)))
                if pull not in events:
                    last_empty = time.monotonic()
                if pull in events:
                    idle_since = None
                    for _ in range(1000):
                        try:  # copy=True: bytes are cheaper than zmq.Frame objects for small messages
                            msg = pull.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            last_empty = time.monotonic()
                            break
                        first = msg[0]
                        if first == PROGRESS:
                            for k in range(1, len(msg) - 1, 2):
                                progress[msg[k].decode()] = int.from_bytes(msg[k + 1], "little")
                            continue
                        if first.startswith(b"stats/engine/w"):
                            msg = self._stats(msg)
                        pub.send_multipart(msg)
                        self.forwarded += 1
                elif self._stopping.is_set():
                    # stop once every worker process has exited and their last messages are read
                    if all(not p.is_alive() for p in list(self.procs)):
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > 0.2:
                            break
                if waiting and self._unassigned and not self._stopping.is_set():
                    self._assign(ctrl, waiting, last_empty)
        finally:
            pull.close(0)
            ctrl.close(0)
            pub.close()
            self._collector_done.set()

    def _publish_event(self, pub: zmq.Socket, body: dict[str, Any]) -> None:
        from telediag.transports.wire import Chunk, encode

        pub.send_multipart(encode(Chunk.record("event", "engine", 0, time.time_ns(), body),
                                  meta={"pub_ns": time.time_ns()}))

    def _stats(self, msg: list[Any]) -> list[Any]:
        try:
            chunk = decode(msg)
            body = dict(chunk.body)
            i = int(body.get("worker", -1))
        except Exception:  # noqa: BLE001 - forward as is; metrics just miss one snapshot
            return msg
        body["process_restarts"] = sum(1 for r in self.restarts if r[1] == i)
        if self.decorate_stats is not None and i == 0:
            self.decorate_stats(body)
            from telediag.transports.wire import Chunk, encode

            msg = list(encode(Chunk.record("stats", chunk.stream, chunk.seq, chunk.t0_ns, body, meta=chunk.meta)))
        self.on_stats(i, body)
        return msg

    # -- stop ----------------------------------------------------------------------------
    def stop(self, timeout_s: float) -> bool:
        """After the router has sent STOP: wait for the assigned processes to exit, end the spares.

        Returns True when every assigned process ended by itself.
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        clean = True
        with self._lock:
            procs = list(self.procs)
            assigned = set(self.index_of)
        for p in procs:
            if p.pid not in assigned:  # a spare: nothing to drain
                p.terminate()
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                clean = clean and p.pid not in assigned
                p.kill()
                p.join(5)
        self._collector_done.wait(max(1.0, deadline - time.monotonic()))
        return clean
