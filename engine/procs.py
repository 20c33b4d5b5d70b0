"""Worker pools: worker processes (``worker_mode = "process"``) and the machinery Ray actors share.

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

The pool is transport-agnostic (:class:`WorkerPool`): the collector, the control socket that
hands indices to warm workers, the progress bookkeeping, crash-loop limits and the router side
(:class:`PoolRouter`) are shared by :class:`ProcessPool` (processes on ipc) and
:class:`telediag.engine.cluster.RayPool` (Ray actors on tcp), which differ only in how workers
are launched, watched and stopped.

Adding a worker (:meth:`WorkerPool.add_worker`) moves only the streams the new index wins under
rendezvous hashing, each with a clean handover: the router sends ``MOVE`` to the old owner
in-band (after that stream's earlier chunks) and holds the stream's new chunks; the old owner
runs its pending model work, closes the stream's pipeline (publishing its last results),
publishes ``stream_moved`` and a *release* marker carrying the last seq and the output seq
numbers; the router then sends ``RESUME`` and the held chunks to the new owner, which reopens
the stream from there (no gap, output ``seq`` continues).
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
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgpack
import zmq

from telediag.engine.config import Config
from telediag.engine.worker import DATA, INBOX_HWM, PROGRESS, STOP, Worker
from telediag.transports.sockets import send_frames

_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: see transports.sockets.send_frames
HELLO = b"H"
#: router -> old owner, in-band: ``[MOVE, stream, new owner index]``
MOVE = b"M"
#: router -> new owner, in-band: ``[RESUME, stream, json {last_seq, moved, out_seq}]``
RESUME = b"R"
#: old owner -> collector, on the output pipe: ``[RELEASED, stream, json {last_seq, out_seq}]``
RELEASED = b"\x00M"
#: worker -> collector: several messages in one ``[BUNDLE, n1 (2 bytes LE), frames1..., n2, ...]``
BUNDLE = b"\x00B"

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash of a 64-bit integer."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _M64
    return x ^ (x >> 31)


def owner_of(stream: bytes | str, n_workers: int, gone: frozenset[int] | set[int] = frozenset()) -> int:
    """The worker that owns ``stream``: rendezvous (highest-random-weight) hashing.

    Every worker ``i`` in ``range(n_workers)`` but not in ``gone`` (removed workers) gets the
    weight ``mix64(crc32(stream) << 8 | i)`` and the highest wins, so the choice is stable across
    processes and machines, spreads evenly, and changing the set of workers moves only the
    streams of the worker that joined or left: going from ``n`` to ``n + 1`` workers moves only
    the streams the new worker wins (about ``1 / (n + 1)`` of them), removing worker ``k`` moves
    only ``k``'s streams (each to the worker with its next-highest weight); every other stream
    keeps its owner (Thaler & Ravishankar 1998).
    """
    if n_workers <= 1:
        return 0
    b = stream.encode() if isinstance(stream, str) else stream
    h = zlib.crc32(b) << 8
    best, best_w = 0, -1
    for i in range(n_workers):
        if gone and i in gone:
            continue
        w = _mix64(h | i)
        if w > best_w:
            best, best_w = i, w
    return best


# -- worker side (runs in a worker process or a Ray actor) ---------------------------------
def _topic_of_stream(topic: str, sid: str) -> bool:
    """Whether output/event topic ``kind/<stream...>`` belongs to source stream ``sid``."""
    rest = topic.partition("/")[2]
    return rest == sid or rest.startswith(sid + "/")


def hand_over(w: Worker, sid: str, to: int) -> None:
    """Old owner's side of a move: flush, close the stream, publish ``stream_moved``, release it."""
    w._safe_flush()  # pending model work of every stream, then a progress marker
    st = w.streams.pop(sid, None)
    last = -1
    if st is not None:
        last = st.stats.last_seq
        if not st.refused:
            try:
                w._close(sid, st)  # the pipeline's last results, as at the end of a stream
            except Exception as e:  # noqa: BLE001 - containment: report, still hand the stream over
                w._contain_stream(sid, e)
    w.event(sid, {"type": "stream_moved", "stream": sid, "from_worker": w.index, "to_worker": to,
                  "last_seq": last})
    out_seq = {t: q for t, q in w._out_seq.items() if _topic_of_stream(t, sid)}
    for t in out_seq:
        del w._out_seq[t]
    w._done.pop(sid, None)
    assert w.out is not None
    w.out.send_multipart([RELEASED, sid.encode(), json.dumps({"last_seq": last, "out_seq": out_seq}).encode()])


def on_control(w: Worker, tag: bytes, frames: Sequence[Any]) -> None:
    """In-band control messages of a pool worker (``MOVE`` / ``RESUME``; others are ignored)."""
    def b(f: Any) -> bytes:
        return f.bytes if hasattr(f, "bytes") else bytes(f)

    if tag == MOVE:
        hand_over(w, b(frames[0]).decode(), int(b(frames[1])))
    elif tag == RESUME:
        sid = b(frames[0]).decode()
        info = json.loads(b(frames[1]))
        w.resume[sid] = int(info["last_seq"])
        if info.get("moved"):
            w.moved.add(sid)
        for t, q in dict(info.get("out_seq", {})).items():
            w._out_seq[str(t)] = max(w._out_seq.get(str(t), 0), int(q))


class _Bundler:
    """A pool worker's output socket: one message to the collector per source chunk, not per output.

    Outputs are queued and sent together with the progress marker that follows them, as one
    multipart ``BUNDLE`` message (ZeroMQ delivers it whole or not at all, so a chunk is never
    half-published when a worker dies), which saves the collector a receive, and both sides an I/O
    wake-up, per output. Markers, release markers and stats flush at once; so does anything the
    worker sends outside a chunk (see :func:`bundle_outputs`).
    """

    MAX_FRAMES = 4096

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.frames: list[Any] = []

    def send_multipart(self, frames: Sequence[Any], flags: int = 0, copy: bool = True) -> None:
        fl = list(frames)
        self.frames.append(len(fl).to_bytes(2, "little"))
        self.frames.extend(fl)
        first = fl[0]
        first = first.bytes if hasattr(first, "bytes") else bytes(first)
        if first in (PROGRESS, RELEASED) or first.startswith(b"stats/") or len(self.frames) > self.MAX_FRAMES:
            self.flush()

    def flush(self) -> None:
        if self.frames:
            frames, self.frames = self.frames, []
            send_frames(self.sock, [BUNDLE, *frames], copy=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def bundle_outputs(w: Worker) -> None:
    """Wrap ``w.out`` in a :class:`_Bundler` (call once the socket exists: in before_serve/after_bind)."""
    if w.out is None or isinstance(w.out, _Bundler):
        return
    b = _Bundler(w.out)
    w.out = b  # type: ignore[assignment]
    handle, safe_flush = w.handle, w._safe_flush

    def handle_then_flush(frames: Sequence[Any]) -> None:
        handle(frames)
        if not w._pending and not w._done:  # no progress marker follows (e.g. a rejected message): send now
            b.flush()

    def safe_flush_then_flush() -> None:
        safe_flush()
        b.flush()

    w.handle = handle_then_flush  # type: ignore[method-assign]
    w._safe_flush = safe_flush_then_flush  # type: ignore[method-assign]


def pool_worker(config: Config, ctx: zmq.Context, inbox_addr: str, out_addr: str) -> Worker:
    """A :class:`Worker` set up for a pool: outputs PUSHed to the collector, progress markers, control tags."""
    w = Worker(-1, config, ctx, inbox_addr, out_addr)
    w.out_type = zmq.PUSH
    w.progress = True
    w.on_control = lambda tag, frames: on_control(w, tag, frames)
    return w


def name_os_thread(name: str) -> None:
    """Give the calling thread an OS-visible name (``/proc/<pid>/task/<tid>/comm``, top, py-spy).

    Lets a profiler or the capacity benchmark (``load_streams.py --cpu-profile``) charge CPU time
    to the engine's router, collector, proxy and worker threads. At most 15 bytes are kept. No-op
    outside Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except OSError:  # pragma: no cover
        pass


def named(target: Callable[[], None], name: str) -> Callable[[], None]:
    """``target`` run under the OS thread name ``name`` (see :func:`name_os_thread`)."""
    def run() -> None:
        name_os_thread(name)
        target()

    return run


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - no libc: the worker still exits when its inbox is gone
        pass


def say_hello(ctx: zmq.Context, ctrl_addr: str, info: dict[str, Any],
              give_up: Callable[[], bool]) -> dict[str, Any] | None:
    """Tell the engine a warm worker is here; wait for its assignment (a spare waits here).

    Returns the reply (``index``, ``resume``, ``inbox``) or None when ``give_up()`` turns true.
    """
    req = ctx.socket(zmq.DEALER)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(ctrl_addr)
    try:
        req.send_multipart([HELLO, json.dumps(info).encode()])
        while not req.poll(500):
            if give_up():
                return None
        reply: dict[str, Any] = json.loads(req.recv_multipart()[-1])
        return reply
    finally:
        req.close()


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
    w = pool_worker(config, ctx, "", out_addr)
    w.parallel_warmup = parallel_warmup

    def hello() -> None:
        bundle_outputs(w)
        reply = say_hello(ctx, ctrl_addr, {"pid": os.getpid(), "slot": os.getpid(), "inc": str(os.getpid())},
                          lambda: os.getppid() != parent_pid)
        if reply is None:
            raise SystemExit(0)
        w.index = int(reply["index"])
        w.inbox_addr = str(reply.get("inbox") or inbox_addrs[w.index])
        w.resume = {str(k): int(v) for k, v in reply["resume"].items()}

    w.before_serve = hello
    try:
        w.run()
    finally:
        ctx.destroy(linger=2000)


class WorkerPool:
    """Transport-agnostic supervisor of worker processes/actors (see the module doc).

    Subclasses launch workers (:meth:`_launch`), tell whether a hello comes from a live one
    (:meth:`_alive`), watch them (:meth:`_supervise`, calling :meth:`_worker_died`) and stop them.

    Parameters
    ----------
    config : Config
        Engine configuration (``[engine].workers`` workers, ``[engine].spare_workers`` spares).
    ctx : zmq.Context
        The engine's context (collector and control sockets live in it).
    proxy_in : str
        The publish proxy's XSUB address (inproc) the collector forwards to.
    out_addr, ctrl_addr : str
        Where the collector (PULL) and the control socket (ROUTER) bind; ``tcp://host:*`` is
        resolved to the bound port before any worker is launched.
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
    #: a moved stream whose old owner has not released it after this long is resumed from the
    #: collector's progress (``stream_restarted`` + exact ``gap`` instead of ``stream_moved``)
    RELEASE_TIMEOUT_S = 5.0
    kind = "pool"

    def __init__(self, config: Config, ctx: zmq.Context, proxy_in: str, out_addr: str, ctrl_addr: str,
                 on_stats: Callable[[int, dict[str, Any]], None],
                 decorate_stats: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.n = 0  # indices served so far (grows to [engine].workers at start, +1 per add_worker)
        self.n_target = config.engine.workers
        self.spares = config.engine.spare_workers
        self.inbox_addrs: list[str] = []  # worker index -> its inbox address (the router connects there)
        self.routes_version = 0  # bumped whenever inbox_addrs, n or dead change (the router re-reads them)
        self.dead: set[int] = set()  # indices whose worker died and has no replacement yet
        # scale-in: removed indices (owner_of skips them); those whose worker is still handing its
        # streams over and has not exited yet are also in ``retiring`` (index -> time asked)
        self.gone: set[int] = set()
        self.retiring: dict[int, float] = {}
        self.released: dict[bytes, dict[str, Any]] = {}  # stream -> release info from its old owner
        self.out_addr = out_addr
        self.ctrl_addr = ctrl_addr
        self.proxy_in = proxy_in
        self.on_stats = on_stats
        self.decorate_stats = decorate_stats
        self.index_of: dict[int, int] = {}  # pid -> worker index (assigned workers)
        self.assigned_at: dict[int, float] = {}  # worker index -> monotonic time of its last assignment
        self.progress: dict[str, int] = {}  # stream -> last seq whose outputs were all forwarded
        self.restarts: list[tuple[float, int, int | None]] = []  # (time, worker, exit code)
        self.error: str | None = None
        self._unassigned: list[int] = list(range(self.n_target))  # worker indices waiting for a worker
        self._died_at: dict[int, float] = {}
        self._stopping = threading.Event()
        self._collector_done = threading.Event()
        self._lock = threading.Lock()
        self.forwarded = 0
        self._events: list[dict[str, Any]] = []
        self._waiting: list[tuple[bytes, dict[str, Any]]] = []

    def spares_ready(self) -> int:
        """Warm workers waiting for an index (a dead worker's replacement is one of them)."""
        return sum(1 for _, info in list(self._waiting) if self._alive(info))

    def owner(self, stream: str | bytes) -> int:
        """The index that owns ``stream`` among the indices served now."""
        return owner_of(stream, self.n, self.gone)

    def active(self) -> list[int]:
        """The worker indices that own streams now (served, not removed)."""
        with self._lock:
            return [i for i in range(self.n) if i not in self.gone]

    # -- to be provided by a launcher ----------------------------------------------------------
    def _launch(self, parallel_warmup: bool) -> None:
        raise NotImplementedError

    def _alive(self, info: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _all_exited(self) -> bool:
        raise NotImplementedError

    def _start_failed(self) -> str | None:
        return None

    def _supervise(self) -> None:
        raise NotImplementedError

    def stop(self, timeout_s: float) -> bool:
        raise NotImplementedError

    def _inbox_for(self, i: int, info: dict[str, Any]) -> str:
        """The inbox address of index ``i`` when the worker that said ``info`` serves it."""
        return str(info.get("endpoint") or "")

    # -- shared ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 300.0, cancel: threading.Event | None = None) -> None:
        """Bind the collector and control sockets, launch the workers, wait until every index is served.

        Raises RuntimeError on failure, timeout or when ``cancel`` is set meanwhile.
        """
        self._collector = threading.Thread(target=named(self._collect, "td-collector"), name="telediag-collector", daemon=True)
        self._bound = threading.Event()
        self._collector.start()
        if not self._bound.wait(10):
            raise RuntimeError("collector did not start")
        # the first may compile kernels in parallel (cold cache); the others load what it leaves
        for k in range(self.n_target + self.spares):
            self._launch(parallel_warmup=k == 0)
        deadline = time.monotonic() + timeout_s
        while len(self.assigned_at) < self.n_target:
            time.sleep(0.05)
            why = self._start_failed()
            if why:
                raise RuntimeError(why)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} workers did not start within {timeout_s} s")
            if cancel is not None and cancel.is_set():
                raise RuntimeError("start-up cancelled")
        self._supervisor = threading.Thread(target=named(self._supervise, "td-supervisor"), name="telediag-supervisor", daemon=True)
        self._supervisor.start()

    def add_worker(self) -> int:
        """Serve one more index (scale out): a warm spare takes it, a new spare is launched.

        The router then moves to it only the streams it wins under rendezvous hashing, each with
        a clean handover (``stream_moved``). Returns the new index.
        """
        with self._lock:
            reuse = sorted(i for i in self.gone if i not in self.retiring and i not in self._unassigned)
            if reuse:  # a removed index comes back (its worker has left): the layout stays compact
                i = reuse[0]
            else:
                i = self.n_target
                self.n_target += 1
            self._unassigned.append(i)
        self._launch(parallel_warmup=False)
        return i

    def remove_worker(self, index: int | None = None) -> int:
        """Take one worker out (scale in) with a clean handover of its streams; returns its index.

        ``index`` defaults to the highest active one. Only that worker's streams move: rendezvous
        hashing gives each the worker with its next-highest weight, every other stream keeps its
        owner. The router sends the worker ``MOVE`` for each of its streams (then ``STOP``), so it
        runs their pending model work, closes their pipelines and publishes ``stream_moved``
        before the new owners resume them from ``last_seq + 1`` (no chunk lost or repeated); then
        it exits and ``event/engine`` gets ``worker_removed``. No replacement is started (a warm
        spare stays a spare); :meth:`add_worker` later serves the index again.

        Raises ValueError for an index that is not active, is dead (its replacement pending),
        or is the last active one.
        """
        with self._lock:
            active = [i for i in range(self.n) if i not in self.gone]
            i = active[-1] if index is None and active else index
            if i not in active:
                raise ValueError(f"worker {i} is not an active worker index (active: {active})")
            if len(active) < 2:
                raise ValueError("cannot remove the last worker")
            if i in self.dead or i in self._unassigned:
                raise ValueError(f"worker {i} is being replaced after a crash; remove it once it serves")
            self.gone.add(i)
            self.retiring[i] = time.monotonic()
            self.routes_version += 1
        return i

    def _retired(self, i: int, exitcode: int | None) -> None:
        """The worker of removed index ``i`` has exited (after its handovers): say so, no restart."""
        with self._lock:
            asked = self.retiring.pop(i, None)
            self.assigned_at.pop(i, None)
            self.routes_version += 1
            self._events.append({"type": "worker_removed", "worker": i, "exitcode": exitcode,
                                 "after_s": round(time.monotonic() - asked, 3) if asked is not None else None})

    def _worker_died(self, i: int, exitcode: int | None) -> bool:
        """Account a dead worker that served index ``i``; False when it is a crash loop (give up)."""
        now = time.monotonic()
        self.restarts.append((now, i, exitcode))
        recent = [r for r in self.restarts if now - r[0] < self.RESTART_WINDOW_S]
        if len(recent) > self.MAX_RESTARTS:
            self.error = (f"{self.kind} workers died {len(recent)} times in {self.RESTART_WINDOW_S:g} s "
                          f"(last: worker {i}, exit code {exitcode}); giving up")
            return False
        with self._lock:
            self._died_at[i] = now
            self._unassigned.append(i)
            self.dead.add(i)
            self.routes_version += 1
            self._events.append({"type": "worker_restarted", "worker": i, "exitcode": exitcode,
                                 "restarts": len(recent)})
        return True

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
    def _assign(self, ctrl: zmq.Socket, waiting: list[tuple[bytes, dict[str, Any]]], last_empty: float) -> None:
        """Give each unassigned worker index to a waiting worker, with its streams' progress."""
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
            ident, info = waiting.pop(0)
            if not self._alive(info):
                continue  # that spare is gone
            inbox = self._inbox_for(i, info)
            with self._lock:
                self._unassigned.pop(0)
                self.index_of[int(info["pid"])] = i
                self.assigned_at[i] = now
                new = i >= self.n
                while len(self.inbox_addrs) <= i:
                    self.inbox_addrs.append("")
                self.inbox_addrs[i] = inbox
                self.dead.discard(i)
                if i in self.gone:  # a removed index served again (add_worker): its streams arrive by handover
                    self.gone.discard(i)
                    new = True
                if new:
                    self.n = max(self.n, i + 1)
                self.routes_version += 1
                self._on_assigned(i, info)
            # a new index starts empty (its streams arrive by handover); a replacement resumes the dead one's
            mine = {} if new else {s: q for s, q in self.progress.items() if owner_of(s, self.n, self.gone) == i}
            ctrl.send_multipart([ident, json.dumps({"index": i, "resume": mine, "inbox": inbox}).encode()])

    def _on_assigned(self, i: int, info: dict[str, Any]) -> None:
        """Hook (under the lock): worker ``info`` now serves index ``i``."""

    def _collect(self) -> None:
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.config.engine.publish_hwm)
        pull.bind(self.out_addr)
        self.out_addr = pull.getsockopt_string(zmq.LAST_ENDPOINT)
        ctrl = self.ctx.socket(zmq.ROUTER)
        ctrl.bind(self.ctrl_addr)
        self.ctrl_addr = ctrl.getsockopt_string(zmq.LAST_ENDPOINT)
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.config.engine.publish_hwm)
        pub.setsockopt(zmq.LINGER, 2000)
        pub.connect(self.proxy_in)
        self._bound.set()
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(ctrl, zmq.POLLIN)
        waiting = self._waiting  # (routing id, hello) of workers waiting for an index
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
                        try:
                            info = json.loads(payload)
                            waiting.append((ident, info))
                            self._on_hello(info)
                        except (ValueError, TypeError, KeyError):  # not one of ours: ignore
                            pass
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
                        if msg[0] == BUNDLE:
                            i, end = 1, len(msg)
                            while i < end:
                                n = int.from_bytes(msg[i], "little")
                                self._one(pub, msg[i + 1:i + 1 + n])
                                i += 1 + n
                        else:
                            self._one(pub, msg)
                elif self._stopping.is_set():
                    # stop once every worker has exited and their last messages are read
                    if self._all_exited():
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

    def _one(self, pub: zmq.Socket, msg: list[Any]) -> None:
        """One message from a worker: a progress or release marker, or an output to forward."""
        first = msg[0]
        if first == PROGRESS:
            progress = self.progress
            for k in range(1, len(msg) - 1, 2):
                progress[msg[k].decode()] = int.from_bytes(msg[k + 1], "little")
            return
        if first == RELEASED:
            rel = json.loads(msg[2])
            self.progress[msg[1].decode()] = int(rel["last_seq"])
            self.released[msg[1]] = rel
            return
        if first.startswith(b"stats/engine/w"):
            msg = self._stats(msg)
        send_frames(pub, msg)
        self.forwarded += 1

    def _on_hello(self, info: dict[str, Any]) -> None:
        """Hook: a worker said hello (collector thread)."""

    def _publish_event(self, pub: zmq.Socket, body: dict[str, Any]) -> None:
        from telediag.transports.wire import Chunk, encode

        pub.send_multipart(encode(Chunk.record("event", "engine", 0, time.time_ns(), body),
                                  meta={"pub_ns": time.time_ns()}))

    def _stats(self, msg: list[Any]) -> list[Any]:
        """A worker's stats message: keep its body for metrics; worker 0's gets the engine's socket counts.

        The body is read with plain msgpack, not :func:`~telediag.transports.wire.decode`: it
        comes from one of the engine's own workers over the pool's private pipe (msgpack, never
        pickle), and the wire checks walked the whole body (every stream's stats and histogram),
        which cost the collector ~10 % of its time at 400 streams. Subscribers still get, and
        check, the message as published. Only the body frame is re-packed for worker 0 (the
        header does not depend on the body).
        """
        try:
            body = msgpack.unpackb(msg[2], raw=False)
            i = int(body.get("worker", -1))
        except Exception:  # noqa: BLE001 - forward as is; metrics just miss one snapshot
            return msg
        body["process_restarts"] = sum(1 for r in self.restarts if r[1] == i)
        if self.decorate_stats is not None and i == 0:
            self.decorate_stats(body)
            msg = [msg[0], msg[1], msgpack.packb(body, use_bin_type=True)]
        self.on_stats(i, body)
        return msg


class ProcessPool(WorkerPool):
    """Start, watch, restart and stop the worker processes (process mode).

    Parameters
    ----------
    config, ctx, proxy_in, on_stats, decorate_stats
        As :class:`WorkerPool`.
    run_dir : str
        A private folder for the ipc sockets.
    """

    kind = "process"

    def __init__(self, config: Config, ctx: zmq.Context, proxy_in: str, run_dir: str,
                 on_stats: Callable[[int, dict[str, Any]], None],
                 decorate_stats: Callable[[dict[str, Any]], None] | None = None,
                 owner: Callable[[str], int] | None = None) -> None:
        # owner: accepted for compatibility; ownership is always owner_of(stream, served indices)
        super().__init__(config, ctx, proxy_in, f"ipc://{run_dir}/out", f"ipc://{run_dir}/ctrl", on_stats,
                         decorate_stats)
        self.run_dir = run_dir
        self.procs: list[Any] = []  # every live process (assigned or spare)
        self._mp = mp.get_context("spawn")

    def _inbox_for(self, i: int, info: dict[str, Any]) -> str:
        return f"ipc://{self.run_dir}/w{i}"

    def _launch(self, parallel_warmup: bool) -> None:
        addrs = [f"ipc://{self.run_dir}/w{i}" for i in range(self.n_target)]
        p = self._mp.Process(target=worker_main, name="telediag-worker", daemon=True,
                             args=(self.config, addrs, self.out_addr, self.ctrl_addr, os.getpid(),
                                   parallel_warmup))
        p.start()
        with self._lock:
            self.procs.append(p)

    def _alive(self, info: dict[str, Any]) -> bool:
        pid = int(info["pid"])
        return any(p.pid == pid and p.is_alive() for p in self.procs)

    def _all_exited(self) -> bool:
        return all(not p.is_alive() for p in list(self.procs))

    def _start_failed(self) -> str | None:
        dead = [p for p in self.procs if not p.is_alive()]
        return f"a worker process exited during start-up (code {dead[0].exitcode})" if dead else None

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {p.sentinel: p for p in self.procs}
            ready = mp.connection.wait(list(sentinels), timeout=0.2)
            if self._stopping.is_set():
                return
            for s in ready:
                p = sentinels[s]  # type: ignore[index]
                p.join(1.0)  # reap it: the sentinel can fire before exitcode is known (it read None)
                with self._lock:
                    self.procs.remove(p)
                    i = self.index_of.pop(p.pid, None)
                if i is not None and i in self.retiring:  # removed (scale in): it left after its handovers
                    self._retired(i, p.exitcode)
                    continue
                if i is not None and not self._worker_died(i, p.exitcode):
                    return
                self._launch(parallel_warmup=False)  # the next spare (or this index's replacement)

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


class PoolRouter:
    """The router's side of a worker pool (runs in the engine's router thread only).

    Keeps one PUSH socket per worker index, re-reads the pool's routes when they change (a
    replacement on another address, a new index), holds the chunks of an index whose worker is
    dead until its replacement serves it (bounded by ``[engine].ingest_hwm`` messages per index;
    beyond that the oldest are dropped and reported as a gap by the replacement), and runs the
    move protocol when an index is added (see the module doc).
    """

    def __init__(self, pool: WorkerPool, ctx: zmq.Context) -> None:
        self.pool = pool
        self.ctx = ctx
        self.hwm = pool.config.engine.ingest_hwm
        self.outs: dict[int, zmq.Socket] = {}
        self.addrs: dict[int, str] = {}
        self.n = 0
        self.gone: frozenset[int] = frozenset()  # removed indices (pool.gone as last read)
        self.version = -1
        self.owners: dict[bytes, int] = {}
        self.held: dict[bytes, tuple[int, float, deque[Any]]] = {}  # moving stream -> (new owner, since, chunks)
        self.down: dict[int, deque[Any]] = {}  # dead index -> chunks held for its replacement
        # ZeroMQ sees a dead worker's connection drop at once (the kernel closes its sockets), well
        # before the pool learns it (Ray: ~2 s): hold that index's chunks from then on, not lose them
        self.monitors: dict[int, zmq.Socket] = {}
        self.link_down: set[int] = set()
        self._next_check = 0.0
        self.dropped_while_down = 0
        self.moved = 0
        self.sync()

    def _connect(self, i: int, addr: str) -> None:
        old = self.outs.pop(i, None)
        if old is not None:
            mon = self.monitors.pop(i, None)
            if mon is not None:
                old.disable_monitor()
                mon.close(0)
            old.close(linger=0)  # chunks still queued for a dead worker die with it (reported as a gap)
        s = self.ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, INBOX_HWM)  # small: a backlog waits in the router's per-stream queues
        self.monitors[i] = s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        s.connect(addr)
        self.outs[i] = s
        self.addrs[i] = addr
        self.link_down.discard(i)

    def _check_links(self) -> None:
        """Hold an index's chunks while its connection is down; send them when it is back."""
        from zmq.utils.monitor import recv_monitor_message

        for i, mon in list(self.monitors.items()):
            while cast(int, mon.get(zmq.EVENTS)) & zmq.POLLIN:  # cheaper than a NOBLOCK receive raising Again each time
                try:
                    ev = recv_monitor_message(mon, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if ev["event"] == zmq.EVENT_DISCONNECTED:
                    self.link_down.add(i)
                    self.down.setdefault(i, deque())
                elif ev["event"] == zmq.EVENT_CONNECTED and i in self.link_down:
                    self.link_down.discard(i)
                    if i not in self.pool.dead and i in self.down:
                        for msg in self.down.pop(i):
                            self._send(i, msg)

    def sync(self) -> None:
        """Re-read the pool's routes if they changed; release moved streams whose old owner is done."""
        pool = self.pool
        if pool.routes_version != self.version:
            with pool._lock:
                self.version = pool.routes_version
                addrs = list(pool.inbox_addrs[:pool.n])
                n = pool.n
                dead = set(pool.dead)
                gone = frozenset(pool.gone)
            for i in dead:
                if i not in self.down:
                    self.down[i] = deque()
            for i, a in enumerate(addrs):
                if a and i not in dead and i not in gone and self.addrs.get(i) != a:
                    self._connect(i, a)
            for i in [i for i in self.down if i not in dead and i in self.outs and i not in self.link_down]:
                for msg in self.down.pop(i):
                    self._send(i, msg)
            if n != self.n or gone != self.gone:
                old_n, old_gone = self.n, self.gone
                self.n, self.gone = n, gone
                if old_n:
                    self._move(n)
                for i in sorted(gone - old_gone):  # removed: after its MOVEs, STOP it and let it go
                    self._retire(i)
        if self.held:
            self._release()

    def _move(self, n: int) -> None:
        now = time.monotonic()
        for s, i in list(self.owners.items()):
            j = owner_of(s, n, self.gone)
            if j == i:
                continue
            self.owners[s] = j
            self.moved += 1
            if s in self.held:  # still on its way to i (not resumed there yet): send it on to j instead
                _, since, q = self.held[s]
                self.held[s] = (j, since, q)
                continue
            if i in self.down:  # the old owner is dead: resume from the collector's progress
                self.held[s] = (j, now - self.pool.RELEASE_TIMEOUT_S, deque())
            else:
                self._send(i, [MOVE, s, str(j).encode()])
                self.held[s] = (j, now, deque())

    def _retire(self, i: int) -> None:
        """A removed index: STOP after the MOVEs already queued to it, then drop its socket.

        The worker hands over the streams it was told to move, closes any others, publishes its
        last stats and exits (the pool counts that as a removal, not a crash). Chunks held for it
        while its link was down (it died meanwhile; its streams then resume from the collector's
        progress on their new owners) go to those owners first, ahead of the chunks that came after.
        """
        def stream_of(msg: list[Any]) -> bytes:
            topic = msg[1].bytes if hasattr(msg[1], "bytes") else bytes(msg[1])
            return topic.partition(b"/")[2]

        data = [m for m in self.down.pop(i, None) or () if m[0] == DATA]
        for msg in reversed(data):  # oldest ends up first in each held queue
            h = self.held.get(stream_of(msg))
            if h is not None:
                h[2].appendleft(msg[1:])
        for msg in data:
            st = stream_of(msg)
            if st not in self.held and st in self.owners:
                self._send(self.owners[st], msg)
        s = self.outs.pop(i, None)
        self.addrs.pop(i, None)
        mon = self.monitors.pop(i, None)
        self.link_down.discard(i)
        if s is None:
            return
        try:
            s.send(STOP, flags=zmq.NOBLOCK)
        except zmq.Again:  # its inbox is full: it will have read everything before it sees STOP anyway
            s.poll(2000, zmq.POLLOUT)
            try:
                s.send(STOP, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        if mon is not None:
            s.disable_monitor()
            mon.close(0)
        s.close(linger=5000)

    def _release(self) -> None:
        now = time.monotonic()
        for s, (j, since, q) in list(self.held.items()):
            rel = self.pool.released.pop(s, None)
            if rel is not None:
                info = {**rel, "moved": True}
            elif now - since >= self.pool.RELEASE_TIMEOUT_S:
                info = {"last_seq": self.pool.progress.get(s.decode("utf-8", "replace"), -1), "moved": False}
            else:
                continue
            del self.held[s]
            self._send(j, [RESUME, s, json.dumps(info).encode()])
            for frames in q:
                self._send(j, [DATA, *frames])

    def socket_of(self, stream: bytes) -> zmq.Socket | None:
        """The inbox socket ``stream``'s chunks went to last (a hint for the fair scheduler: no route
        update here), or None when not known."""
        i = self.owners.get(stream)
        return None if i is None else self.outs.get(i)

    def try_send(self, stream: bytes, frames: list[Any]) -> zmq.Socket | None:
        """:meth:`send` without waiting: None when the chunk was taken (sent, or held here because the
        stream is moving or its owner is down), else the full inbox socket (the chunk was not taken).

        The engine's fair scheduler keeps a refused chunk in its per-stream queue and waits on that socket.
        """
        if self.pool.routes_version != self.version or self.held:
            self.sync()
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + 0.002
            self._check_links()
        i = self.owners.get(stream)
        if i is None:
            i = self.owners[stream] = owner_of(stream, self.n, self.gone)
            if len(self.owners) > 100_000:  # bounded: ids come from the network
                self.owners.clear()
        if self.held and stream in self.held:
            self.held[stream][2].append(frames)
            return None
        if i in self.down:
            self._send(i, [DATA, *frames])  # held for the replacement
            return None
        s = self.outs.get(i)
        if s is None:  # not connected yet: the waiting send (as before)
            self._send(i, [DATA, *frames])
            return None
        try:
            send_frames(s, [DATA, *frames], _NOBLOCK, copy=False)
        except zmq.Again:
            return s
        return None

    def send(self, stream: bytes, frames: list[Any]) -> None:
        """Route one source chunk (``frames`` as read from ingest) to its owner."""
        if self.pool.routes_version != self.version or self.held:
            self.sync()
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + 0.002
            self._check_links()
        i = self.owners.get(stream)
        if i is None:
            i = self.owners[stream] = owner_of(stream, self.n, self.gone)
            if len(self.owners) > 100_000:  # bounded: ids come from the network
                self.owners.clear()
        if self.held and stream in self.held:
            self.held[stream][2].append(frames)
            return
        self._send(i, [DATA, *frames])

    def _send(self, i: int, msg: list[Any]) -> None:
        while True:
            q = self.down.get(i)
            if q is not None:
                if len(q) >= self.hwm and q[0][0] == DATA:
                    q.popleft()
                    self.dropped_while_down += 1
                q.append(msg)
                return
            s = self.outs[i]
            try:
                send_frames(s, msg, _NOBLOCK, copy=False)
                return
            except zmq.Again:  # backpressure (or a dead worker): wait a little, re-read the routes
                s.poll(20, zmq.POLLOUT)
                self.sync()

    def tick(self) -> None:
        """Called by the router loop between batches: follow route changes and finish handovers."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + 0.002
            self._check_links()
        if self.pool.routes_version != self.version or self.held:
            self.sync()

    def finish(self, deadline: float) -> None:
        """Before STOP: finish pending handovers (bounded by ``deadline``)."""
        while self.held and time.monotonic() < deadline:
            self.sync()
            time.sleep(0.01)
        for s, (j, _, q) in list(self.held.items()):
            info = {"last_seq": self.pool.progress.get(s.decode("utf-8", "replace"), -1), "moved": False}
            self._send(j, [RESUME, s, json.dumps(info).encode()])
            for frames in q:
                self._send(j, [DATA, *frames])
        self.held.clear()

    def sockets(self) -> list[zmq.Socket]:
        return [self.outs[i] for i in sorted(self.outs)]

    def close(self) -> None:
        for i, s in self.outs.items():
            mon = self.monitors.pop(i, None)
            if not s.closed:
                if mon is not None:
                    s.disable_monitor()
                s.close(linger=5000)
            if mon is not None:
                mon.close(0)


__all__ = ["HELLO", "MOVE", "RELEASED", "RESUME", "STOP", "PoolRouter", "ProcessPool", "WorkerPool", "owner_of"]
