"""The engine process: ingest -> router -> workers -> XSUB/XPUB proxy -> subscribers.

::

    sources --PUSH--> [PULL ingest] --router (crc32(stream) % workers)--> worker inbox (PULL)
    worker PUB --> inproc XSUB ==proxy==> XPUB (publish address) --> SUB viewers

Each stream is owned by exactly one worker; workers share nothing but sockets, so the
same worker code can later run in other processes or on other machines. Ingest is a
PUSH/PULL pair with a high-water mark, so a source that outruns the engine blocks
instead of losing samples (biosignals are lossless). SIGINT/SIGTERM stop reading new
input, drain what is queued, flush every pipeline, publish final stats and exit.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from types import FrameType
from typing import Any, cast

import zmq

from telediag.engine.config import Config, load_config
from telediag.engine.metrics import SocketMonitor
from telediag.engine.procs import PoolRouter, ProcessPool, WorkerPool, named, owner_of
from telediag.engine.video_proc import VideoProcess
from telediag.engine.video_worker import VIDEO_INBOX_HWM, VideoWorker
from telediag.engine.worker import DATA, INBOX_HWM, STOP, Worker
from telediag.errors import EngineError
from telediag.transports.sockets import recv_frames, send_frames

_ids = itertools.count()
# plain ints: pyzmq's flag enums cost Python-level enum arithmetic on every use (see transports.sockets)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


def _wait(readable: zmq.Socket | None, writable: set[zmq.Socket], timeout_ms: int) -> bool:
    """Sleep until ``readable`` has input (True) or a socket of ``writable`` has room, or the timeout
    (``zmq.select`` without its per-call enum arithmetic)."""
    items = [(s, _POLLOUT) for s in writable]
    if readable is not None:
        items.append((readable, _POLLIN))
    return any(s is readable and ev & _POLLIN for s, ev in zmq.zmq_poll(items, timeout_ms))


class StartCancelled(EngineError):
    """:meth:`Engine.stop` (a signal) arrived while :meth:`Engine.start` was still warming up."""


__all__ = ["Engine", "StartCancelled", "owner_of", "run_engine"]  # owner_of: see engine/procs.py


class Engine:
    """One engine process.

    Parameters
    ----------
    config : Config, optional
        Defaults to the built-in configuration.

    Examples
    --------
    >>> eng = Engine(load_config())          # doctest: +SKIP
    >>> eng.start(); ...; eng.stop(); eng.join()  # doctest: +SKIP
    """

    #: Seconds :meth:`run` waits, beyond the drain, for workers to flush before giving up.
    JOIN_GRACE_S = 15.0
    #: Most ingest messages the router forwards per wake-up before it looks at route changes again.
    ROUTER_BATCH = 64

    def __init__(self, config: Config | None = None, *, drain_idle_s: float = 0.3, drain_max_s: float = 5.0) -> None:
        self.config = config or load_config()
        self.drain_idle_s = drain_idle_s
        self.drain_max_s = drain_max_s
        self.ctx = zmq.Context()
        uid = f"{id(self)}-{next(_ids)}"
        self._out_addr = f"inproc://telediag-out-{uid}"
        # worker pools: processes (engine/procs.py) or Ray actors (engine/cluster.py), started in start()
        self.process_mode = self.config.engine.worker_mode in ("process", "ray")
        self.pool: WorkerPool | None = None
        self._pool_router: PoolRouter | None = None
        self._run_dir: str | None = None
        self._proc_stats: dict[int, dict[str, Any]] = {}  # pool modes: last stats body per worker
        if self.process_mode:
            if self.config.engine.worker_mode == "process":
                self._run_dir = tempfile.mkdtemp(prefix="telediag-")
            self._inbox_addrs: list[str] = []
            self.workers: list[Worker] = []
        else:
            self._inbox_addrs = [f"inproc://telediag-w{i}-{uid}" for i in range(self.config.engine.workers)]
            self.workers = [
                Worker(i, self.config, self.ctx, addr, self._out_addr) for i, addr in enumerate(self._inbox_addrs)
            ]
        self._owners: dict[bytes, int] = {}
        # Video: one dedicated worker with its own small inbox, fed with NOBLOCK by the router
        # (latest-frame-wins; video never delays ECG/PCG). See engine/video_worker.py.
        self._video_addr = f"inproc://telediag-video-{uid}"
        self.video_worker: VideoWorker | VideoProcess
        if self.config.engine.video_worker == "process":  # its own OS process (engine/video_proc.py)
            self.video_worker = VideoProcess(self.config, self.ctx, self._video_addr, self._out_addr)
        else:
            self.video_worker = VideoWorker(self.config, self.ctx, self._video_addr, self._out_addr)
        self.video_dropped: dict[str, int] = {}  # per stream: packets dropped by the router
        self._video_out: zmq.Socket | None = None
        self._stop = threading.Event()
        self._force = threading.Event()
        self._threads: list[threading.Thread] = []
        self._router_thread: threading.Thread | None = None
        self.routed = 0
        # fair scheduling (see _route): per-stream queues of chunks waiting for room in their worker's
        # small inbox, served round-robin; at most [engine].ingest_hwm chunks in all (then ingest waits)
        self._fair: dict[bytes, deque[Any]] = {}
        self._ring: deque[bytes] = deque()
        self._queued = 0
        self._add_requests = 0  # SIGUSR1 (process/ray mode): add one worker
        self._remove_requests = 0  # SIGUSR2 (process/ray mode): remove one worker
        self.started = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.ingest_endpoint = self.config.engine.ingest
        self.publish_endpoint = self.config.engine.publish

    # -- lifecycle ----------------------------------------------------------------------
    def _start_security(self) -> None:
        self.curve = None
        sec = self.config.security
        if sec.curve:
            from telediag.transports.security import CurveServer

            self.curve = CurveServer(self.ctx, sec.server_secret, sec.allow_dir)

    def _secure(self, sock: zmq.Socket) -> None:
        if self.curve is not None:
            self.curve.secure(sock)

    def _start_proxy(self) -> None:
        e = self.config.engine
        xsub = self.ctx.socket(zmq.XSUB)
        xsub.bind(self._out_addr)
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, e.publish_hwm)
        xpub.setsockopt(zmq.LINGER, 2000)
        self._secure(xpub)
        try:
            xpub.bind(e.publish)
        except zmq.ZMQError as err:
            xsub.close(0)
            xpub.close(0)
            raise EngineError(f"cannot bind publish address {e.publish!r}: {err}") from err
        self.publish_endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        # connected subscribers / refused keys from libzmq monitor events (attach before the proxy owns xpub)
        self.monitors = [SocketMonitor(xpub, "publish")]
        ctrl_addr = f"{self._out_addr}-ctrl"
        ctrl_in = self.ctx.socket(zmq.PAIR)
        ctrl_in.bind(ctrl_addr)
        self._proxy_ctrl = self.ctx.socket(zmq.PAIR)
        self._proxy_ctrl.connect(ctrl_addr)

        def proxy() -> None:
            try:
                zmq.proxy_steerable(xsub, xpub, None, ctrl_in)
            except zmq.ZMQError:
                pass
            finally:
                xsub.close(0)
                xpub.close(2000)
                ctrl_in.close(0)

        t = threading.Thread(target=named(proxy, "td-proxy"), name="telediag-proxy", daemon=True)
        t.start()
        self._proxy_thread = t

    def start(self) -> None:
        """Bind sockets and start the proxy, workers and the ingest router (threads)."""
        self._start_security()
        self._start_proxy()
        e = self.config.engine
        self._ingest = self.ctx.socket(zmq.PULL)
        self._ingest.setsockopt(zmq.RCVHWM, e.ingest_hwm)
        self._ingest.setsockopt(zmq.MAXMSGSIZE, 80 << 20)
        self._ingest.setsockopt(zmq.LINGER, 0)
        self._secure(self._ingest)
        try:
            self._ingest.bind(e.ingest)
        except zmq.ZMQError as err:
            self._ingest.close(0)
            self._proxy_ctrl.send(b"TERMINATE")
            raise EngineError(f"cannot bind ingest address {e.ingest!r}: {err}") from err
        self.ingest_endpoint = self._ingest.getsockopt_string(zmq.LAST_ENDPOINT)
        self.monitors.append(SocketMonitor(self._ingest, "ingest"))  # before the router thread owns it
        if self.process_mode:
            if e.worker_mode == "ray":
                from telediag.engine.cluster import RayPool

                self.pool = RayPool(self.config, self.ctx, self._out_addr, on_stats=self._proc_stats.__setitem__,
                                    decorate_stats=self._decorate_w0)
            else:
                assert self._run_dir is not None
                self.pool = ProcessPool(self.config, self.ctx, self._out_addr, self._run_dir,
                                        on_stats=self._proc_stats.__setitem__, decorate_stats=self._decorate_w0)
            try:
                self.pool.start(300, cancel=self._stop)  # warm-up may compile Numba kernels on a cold cache
            except RuntimeError as err:
                self.pool.stop(0)
                if self._stop.is_set():
                    raise StartCancelled("stop requested during start-up") from err
                raise EngineError(str(err)) from err
        else:
            self.workers[0].extra_stats = self.socket_stats  # connected subscribers etc. on stats/engine/w0
        for w in self.workers:
            t = threading.Thread(target=named(w.run, f"td-w{w.index}"), name=f"telediag-w{w.index}", daemon=True)
            t.start()
            self._threads.append(t)
            deadline = time.monotonic() + 300  # warm-up may compile Numba kernels on a cold cache
            while not w.ready.wait(0.2):
                if self._stop.is_set():
                    raise StartCancelled("stop requested during start-up")
                if time.monotonic() > deadline:
                    raise EngineError(f"worker {w.index} did not start")
        vt = threading.Thread(target=named(self.video_worker.run, "td-video"), name="telediag-video", daemon=True)
        vt.start()
        self._threads.append(vt)
        if not self.video_worker.ready.wait(10):
            raise EngineError("video worker did not start")
        self._router_thread = threading.Thread(target=named(self._route, "td-router"), name="telediag-router", daemon=True)
        self._router_thread.start()
        self.metrics = None
        if e.metrics:
            from telediag.engine.metrics import MetricsExporter

            self.metrics = MetricsExporter(self._metrics_stats, e.metrics,
                                           sockets=self.socket_stats)
            self.metrics.start()
        self.started.set()

    def worker_stats(self) -> list[dict[str, Any]]:
        """The last stats body of every biosignal worker (threads or processes)."""
        if self.process_mode:
            gone = self.pool.gone if self.pool is not None else set()
            return [self._proc_stats[i] for i in sorted(self._proc_stats) if i not in gone]
        return [w.last_stats for w in self.workers]

    def _metrics_stats(self) -> list[dict[str, Any]]:
        """Every worker's last stats body for the metrics exporter: the biosignal workers, then video."""
        video = self.video_worker.last_stats
        return [*self.worker_stats(), *([video] if video else [])]

    def _decorate_w0(self, body: dict[str, Any]) -> None:
        body["sockets"] = self.socket_stats()

    def socket_stats(self) -> dict[str, dict[str, int]]:
        """Connected peers and refused handshakes per bound socket (``publish``, ``ingest``)."""
        return {m.name: m.snapshot() for m in getattr(self, "monitors", [])}

    def _route(self) -> None:
        if self.pool is not None:
            self._pool_router = PoolRouter(self.pool, self.ctx)
        n = len(self._inbox_addrs)
        outs = []
        for addr in self._inbox_addrs:
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, INBOX_HWM)  # small: a backlog waits in the per-stream queues below
            s.connect(addr)
            outs.append(s)
        video = self.ctx.socket(zmq.PUSH)  # small HWM + NOBLOCK in _forward: drop, never wait
        video.setsockopt(zmq.SNDHWM, VIDEO_INBOX_HWM)
        video.setsockopt(zmq.SNDTIMEO, 5000)  # bounds the final STOP only
        video.connect(self._video_addr)
        self._video_out = video
        ingest = self._ingest
        pr = self._pool_router
        limit = self.config.engine.ingest_hwm
        try:
            while not self._stop.is_set():
                if pr is not None:
                    pr.tick()  # follow worker restarts / added or removed workers, finish stream handovers
                blocked = self._dispatch(outs, n) if self._queued else set()
                room = self._queued < limit  # full: ingest waits (its sources block, lossless)
                if blocked or not room:
                    # sleep until a full inbox has room again (libzmq wakes us at its low-water mark, so
                    # a backlog is sent in batches, not one chunk per wake-up) or input comes (if room)
                    if not _wait(ingest if room else None, blocked, 20):
                        continue
                elif not ingest.poll(20 if pr is not None else 100):
                    continue
                # a batch per wake-up: one poll (and one GIL hand-back) per ROUTER_BATCH messages, not per message
                for _ in range(self.ROUTER_BATCH):
                    if self._queued >= limit or not cast(int, ingest.get(_EVENTS)) & _POLLIN:
                        break
                    self._forward(ingest, outs, n)
            # drain: keep going while messages still arrive, then stop each worker in-band
            # bounded: a source that never stops sending must not keep the engine alive
            idle_ms = int(self.drain_idle_s * 1000)
            drain_end = time.monotonic() + self.drain_max_s
            while time.monotonic() < drain_end and (self._queued or ingest.poll(idle_ms)):
                blocked = self._dispatch(outs, n) if self._queued else set()
                room = self._queued < limit
                if blocked or not room:
                    _wait(ingest if room else None, blocked, 20)
                if room and ingest.poll(0):
                    self._forward(ingest, outs, n)
            # what is still queued goes to the workers before STOP (in-band: nothing accepted is dropped)
            while self._queued and not self._force.is_set():
                if pr is not None:
                    pr.tick()
                blocked = self._dispatch(outs, n)
                if blocked:
                    _wait(None, blocked, 20)
            if pr is not None:
                pr.finish(time.monotonic() + 2.0)
            self._send_stops(pr.sockets() if pr is not None else outs)
            self._stop_video(video)
        except BaseException as e:  # pragma: no cover - reported by join()
            self.error = e
            self._send_stops(pr.sockets() if pr is not None else outs)
            self._stop_video(video)
        finally:
            ingest.close(0)
            for s in outs:
                s.close(linger=5000)
            if pr is not None:
                pr.close()
            video.close(linger=5000)

    def _send_stops(self, outs: list[zmq.Socket]) -> None:
        """Send STOP to every worker, giving up on a worker whose inbox stays full.

        A dead worker's inbox never drains; a blocking send would hang the router (and so
        the engine's shutdown) for ever.
        """
        deadline = time.monotonic() + self.drain_max_s
        for s in outs:
            while True:
                try:
                    s.send(STOP, flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if time.monotonic() >= deadline or self._force.is_set():
                        break
                    time.sleep(0.01)

    @staticmethod
    def _stop_video(video: zmq.Socket) -> None:
        try:
            video.send(STOP)
        except zmq.ZMQError:  # pragma: no cover - video worker wedged for 5 s; join() times out
            pass

    def _forward(self, ingest: zmq.Socket, outs: list[zmq.Socket], n: int) -> None:
        frames = recv_frames(ingest)
        topic = frames[0].bytes if frames else b""
        _, _, stream = topic.partition(b"/")
        if topic.startswith(b"video/") and self._video_out is not None:
            # latest-frame-wins: never block the router (and so ECG/PCG) on video
            try:
                send_frames(self._video_out, [DATA, *frames], _NOBLOCK, copy=False)
            except zmq.Again:
                key = stream.decode("utf-8", "replace")
                self.video_dropped[key] = self.video_dropped.get(key, 0) + 1
            self.routed += 1
            return
        q = self._fair.get(stream)
        if q is None:
            if self._try_send(stream, frames, outs, n) is None:  # nothing of this stream waits, and it was taken
                return
            q = self._fair[stream] = deque()
            self._ring.append(stream)
        q.append(frames)
        self._queued += 1

    # -- fair scheduling ----------------------------------------------------------------------
    # A worker's inbox holds only INBOX_HWM chunks; what does not fit waits here, one FIFO per
    # stream, and the streams take turns (round-robin), so one stream's backlog (a device uploading
    # what it buffered while offline) delays another stream's chunk by at most an inbox of chunks,
    # not by the whole backlog. Order within a stream is kept; nothing is dropped: when
    # [engine].ingest_hwm chunks wait, the router stops reading ingest and sources block.
    def _owner(self, stream: bytes, n: int) -> int:
        if n <= 1:
            return 0
        i = self._owners.get(stream)
        if i is None:
            i = self._owners[stream] = owner_of(stream, n)
            if len(self._owners) > 100_000:  # bounded: ids come from the network
                self._owners.clear()
        return i

    def _try_send(self, stream: bytes, frames: list[Any], outs: list[zmq.Socket], n: int) -> zmq.Socket | None:
        """Send one chunk of ``stream`` if its worker's inbox has room now: None (sent, or held by the
        pool router), else the full inbox socket (the chunk was not taken; nothing of it was sent).

        One non-blocking send, not a readiness check and then a send: each check (``zmq.EVENTS``) is a
        system call, and the check doubled the router's work per chunk (session 4).
        """
        if self._pool_router is not None:
            s = self._pool_router.try_send(stream, frames)
            if s is not None:
                return s
        else:
            s = outs[self._owner(stream, n)]
            try:
                send_frames(s, [DATA, *frames], _NOBLOCK, copy=False)  # a full inbox refuses the
            except zmq.Again:  # first frame, so nothing of the message is sent (libzmq counts whole messages)
                return s
        self.routed += 1
        return None

    def _dispatch(self, outs: list[zmq.Socket], n: int) -> set[zmq.Socket]:
        """Send queued chunks, one per stream per turn (round-robin), while their workers' inboxes have room.

        Returns the full inbox sockets that streams still wait for (empty when nothing waits). A socket
        found full is not tried again in this call; when every inbox is full the turn stops at the
        stream that was refused, which goes first at the next call (strict round-robin).
        """
        ring, fair, pr = self._ring, self._fair, self._pool_router
        blocked: set[zmq.Socket] = set()
        n_socks = len(outs) if pr is None else len(pr.outs)
        idle = 0  # streams passed over since a chunk was last sent
        while ring and idle < len(ring):
            stream = ring[0]
            hint = outs[self._owner(stream, n)] if pr is None else pr.socket_of(stream)
            if hint is not None and hint in blocked:
                ring.rotate(-1)
                idle += 1
                continue
            q = fair[stream]
            b = self._try_send(stream, q[0], outs, n)
            if b is not None:
                blocked.add(b)
                if len(blocked) >= n_socks:
                    break
                ring.rotate(-1)
                idle += 1
                continue
            q.popleft()
            self._queued -= 1
            idle = 0
            if q:
                ring.rotate(-1)
            else:
                ring.popleft()
                del fair[stream]
        return blocked if ring else set()

    def stop(self) -> None:
        """Ask the engine to drain and stop (thread-safe, idempotent)."""
        self._stop.set()

    def force_stop(self) -> None:
        """Stop now: give up waiting for the drain (a second SIGINT/SIGTERM)."""
        self._force.set()
        self._stop.set()

    def dead_worker(self) -> str | None:
        """A description of the first worker that ended abnormally, or None if all are well."""
        if self.pool is not None and self.pool.failure() is not None:
            return self.pool.failure()
        for w in [*self.workers, self.video_worker]:
            if w.dead.is_set():
                return f"worker {getattr(w, 'stats_stream', w.index)} died: {type(w.error).__name__}: {w.error}"
        if self._router_thread is not None and not self._router_thread.is_alive() and not self._stop.is_set():
            return f"ingest router died: {self.error!r}"
        return None

    def wait(self, poll_s: float = 0.2) -> None:
        """Block until :meth:`stop` is called or a worker dies (then record the failure and stop)."""
        while not self._stop.wait(poll_s):
            if (self._add_requests or self._remove_requests) and self.pool is None:
                self._add_requests = self._remove_requests = 0
                print("telediag engine: SIGUSR1/SIGUSR2 (add/remove a worker) need worker_mode = \"process\" "
                      "or \"ray\"; ignored", flush=True)
            while self._add_requests > 0 and self.pool is not None:  # SIGUSR1: scale out by one worker
                self._add_requests -= 1
                i = self.pool.add_worker()
                print(f"telediag engine: adding worker {i} (a warm spare takes it; its streams move with "
                      "stream_moved)", flush=True)
            while self._remove_requests > 0 and self.pool is not None:  # SIGUSR2: scale in by one worker
                self._remove_requests -= 1
                try:
                    i = self.pool.remove_worker()
                except ValueError as e:
                    print(f"telediag engine: not removing a worker: {e}", flush=True)
                    continue
                print(f"telediag engine: removing worker {i} (its streams move to the others with "
                      "stream_moved, then it exits)", flush=True)
            why = self.dead_worker()
            if why is not None:
                if self.error is None:
                    self.error = EngineError(why)
                self.stop()

    def _join_threads(self, threads: list[threading.Thread], deadline: float | None) -> bool:
        """Join ``threads`` until ``deadline`` or :meth:`force_stop`; True if all ended."""
        for t in threads:
            while t.is_alive():
                if self._force.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    return False
                t.join(0.1)
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the drain to finish, then stop the proxy and free the sockets.

        Bounded by ``timeout`` and by :meth:`force_stop`: threads that are still running then
        are abandoned (they are daemons) and :class:`EngineError` is raised, so the process
        can always exit.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = ([self._router_thread] if self._router_thread is not None else []) + self._threads
        ok = self._join_threads(threads[:1], deadline)  # the router: every STOP has been sent
        stopping = getattr(self.pool, "_stopping", None)
        if ok and stopping is not None:  # a worker process that now exits on STOP is not a crash to replace
            stopping.set()
        ok = ok and self._join_threads(threads, deadline)
        if ok and self.pool is not None:  # the router has sent STOP: the processes drain and exit
            left = 30.0 if deadline is None else max(0.0, deadline - time.monotonic())
            ok = self.pool.stop(left)
            if not ok and self.error is None:
                self.error = EngineError("a worker process did not stop in time and was killed")
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if not ok and self.pool is None:
            self.finished.set()
            stuck = [t.name for t in threads if t.is_alive()]
            raise EngineError(f"engine did not stop in time (still running: {stuck})") from self.error
        time.sleep(0.05)  # let the proxy forward the workers' last messages
        try:
            self._proxy_ctrl.send(b"TERMINATE")
        except zmq.ZMQError:
            pass
        self._proxy_thread.join(5)
        self._proxy_ctrl.close(0)
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.stop()
        curve = getattr(self, "curve", None)
        if curve is not None:
            curve.stop()
        for m in getattr(self, "monitors", []):
            m.stop()
        self.ctx.term()
        self.finished.set()
        if self.error is not None:
            if isinstance(self.error, EngineError):
                raise self.error
            raise EngineError(f"engine router failed: {self.error}") from self.error

    def run(self) -> None:
        """Run in the foreground until SIGINT/SIGTERM (main thread only).

        The first signal drains and stops (bounded by ``drain_max_s`` plus a grace period);
        a second one stops at once. In process and ray modes SIGUSR1 adds one worker (scale out;
        only the streams it wins move, each with ``stream_moved``) and SIGUSR2 removes the highest
        active one (scale in; only its streams move, each with ``stream_moved``, then it exits). A worker that dies ends the run with
        :class:`EngineError`, so ``telediag run`` exits non-zero instead of hanging.
        """

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                self.force_stop()
            self.stop()

        def on_usr1(signum: int, frame: FrameType | None) -> None:
            self._add_requests += 1  # handled in wait(): process and ray modes (refused in thread mode)

        def on_usr2(signum: int, frame: FrameType | None) -> None:
            self._remove_requests += 1  # handled in wait(): process and ray modes (refused in thread mode)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        # in every mode: a scaling signal sent to a thread-mode engine is refused with a message, where
        # the default action (terminate) would have ended the monitoring of every stream
        old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
        old[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, on_usr2)
        try:
            try:
                self.start()
            except StartCancelled:  # SIGTERM while warming up: nothing was served yet; daemon threads die with us
                return
            self.wait()
            self.join(self.drain_max_s + self.JOIN_GRACE_S)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def run_engine(config_path: str | None = None) -> None:
    """Entry point of ``telediag run``."""
    Engine(load_config(config_path)).run()
