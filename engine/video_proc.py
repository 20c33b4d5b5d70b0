"""The video worker in its own OS process (``[engine] video_worker = "process"``).

::

    router --PUSH, NOBLOCK (the video inbox, inproc: as in thread mode)--> host thread (here)
    host --PUSH, NOBLOCK (ipc .../in)--> video process: VideoWorker (decode, model, overlay, encode)
    video process --PUSH (outputs, then progress markers)--> ipc .../out --> host --PUB--> publish proxy

Model inference (ONNX Runtime, NumPy, the H.264 codec) then runs in a process of its own and
never holds the interpreter lock of the engine's biosignal workers (issue 21). The router is
unchanged: it still sends every ``video/...`` message with ``NOBLOCK`` to a small inbox, now
read by a light **host** thread that only forwards packets and outputs; the video process runs
the same :class:`~telediag.engine.video_worker.VideoWorker` code (latest-frame-wins, the
polyp stage's adaptation, redraws), so the outputs are the thread mode's: ``polyp/<stream>``,
``video/<stream>/annotated``, events and ``stats/engine/video``.

* **Start**: the process starts with the engine (its imports take a second or more), and the
  engine does not wait for it: packets wait in the forward queue (up to
  :data:`~telediag.engine.video_worker.VIDEO_INBOX_HWM`) until it serves
  (:attr:`VideoProcess.serving`), like frames behind a model that loads in thread mode; beyond
  that they are dropped (latest-frame-wins) and counted (``forward_drops`` in
  ``stats/engine/video``); the video process sees them as ``seq`` gaps.
* **Restart**: when the process dies (a crash, ``kill -9``), the host reads what it had already
  sent, publishes ``worker_restarted`` (``worker: "video"``) on ``event/engine`` and hands the
  inbox to a replacement (a warm spare when ``[engine] spare_workers > 0``), telling it, per
  stream, the last packet whose outputs were all forwarded (the progress markers of
  :mod:`telediag.engine.procs`). On the first packet of each such stream the
  replacement publishes ``stream_restarted`` (``reason: "worker_restarted"``, ``last_seq``)
  and, when packets were lost with the dead process, ``video_gap``; its decoder waits for the
  next keyframe. More than :attr:`VideoProcess.MAX_RESTARTS` deaths within
  :attr:`VideoProcess.RESTART_WINDOW_S` end the engine (a crash loop).
* **Stats**: the host adds ``pid``, ``process_restarts`` and ``forward_drops`` to the video
  process's ``stats/engine/video`` and keeps the last body for the metrics exporter.
* Output ``seq`` of the video topics start again at 0 in a replacement process, as for a
  biosignal worker process that is replaced.

The process ignores SIGINT (the engine stops it in-band with STOP after the router's drain) and
dies with the engine (``PR_SET_PDEATHSIG``, :func:`telediag.engine.procs._die_with_parent`).
Segmenters and stages registered at run time (tests) are found in the child by importing the
modules that registered them.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any

import zmq

from telediag.engine.config import Config
from telediag.engine.procs import _die_with_parent
from telediag.engine.video_worker import VIDEO_INBOX_HWM, VideoWorker
from telediag.engine.worker import PROGRESS, STOP
from telediag.errors import EngineError
from telediag.transports.wire import Chunk, decode, encode

__all__ = ["VideoProcess", "video_main"]

#: First frame of the message a video process sends once it serves (never a topic).
HELLO = b"\x00H"


def video_main(config: Config, inbox_addr: str, out_addr: str, conn: Any, parent_pid: int,
               modules: list[str]) -> None:  # pragma: no cover - runs in the child process
    """Entry point of a video process: a :class:`VideoWorker` with a PUSH output and progress markers.

    Imports everything first, then waits on ``conn`` for its assignment (the resume progress;
    a warm spare waits here until the video process it replaces dies), then serves and says
    :data:`HELLO` on its output once its inbox is bound.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    for name in modules:  # run-time registrations (segmenters, stages) of the parent
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - the stream is refused later with a clear reason
            continue
    _warm(config)
    try:
        conn.send("warm")  # (read by VideoProcess.spare_warm)
    except OSError:  # already assigned: the host closed its end after sending the assignment
        pass
    try:
        resume = conn.recv()
    except (EOFError, OSError):  # the host went away before assigning this spare
        return
    ctx = zmq.Context()
    w = VideoWorker(config, ctx, inbox_addr, out_addr)
    w.out_type = zmq.PUSH
    w.progress = True
    w.resume = {str(k): int(v) for k, v in resume.items()}

    def hello() -> None:
        assert w.out is not None
        w.out.send_multipart([HELLO])

    w.before_serve = hello
    try:
        w.run()
    finally:
        ctx.destroy(linger=2000)


def _warm(config: Config) -> None:  # pragma: no cover - runs in the child process
    """Load the video pipeline's polyp models before serving (so a stream, or the streams a
    replacement takes over, do not wait for ONNX Runtime and the kernels); failures are left to
    the stream's open, which reports them."""
    from telediag.engine.stages.video import load_segmenter

    for sc in config.pipelines.get("video", ()):
        if getattr(sc.stage_type, "type_name", "") != "polyp_seg":
            continue
        p: Any = sc.params
        if p.model != "polyp_seg":
            continue  # registered stand-ins are built per stream
        try:
            load_segmenter(p.model, p.variant, p.threads)
        except Exception:  # noqa: BLE001, S112 - reported when a stream opens
            continue


def _registered_modules(config: Config) -> list[str]:
    """Modules outside telediag that registered the video pipeline's stages or segmenters."""
    from telediag.engine.stages import video as video_stages

    mods = {sc.stage_type.__module__ for sc in config.pipelines.get("video", ())}
    mods |= {getattr(f, "__module__", "") for f in video_stages._SEGMENTERS.values()}
    return sorted(m for m in mods if m and not m.startswith("telediag.") and m != "__main__")


class VideoProcess:
    """Host of the video process: the same ``run``/``ready``/``dead`` interface as a :class:`VideoWorker`.

    Parameters
    ----------
    config : Config
        Engine configuration (passed to the video process; ``[engine] spare_workers > 0`` keeps
        one warm spare video process).
    ctx : zmq.Context
        The engine's context (the inbox is inproc).
    inbox_addr, out_addr : str
        The video inbox the router pushes to (bound here) and the publish proxy's XSUB address.
    stop_timeout_s : float
        After STOP, how long the video process may take to drain before it is killed.
    """

    stats_stream = "engine/video"
    #: More deaths than this within :attr:`RESTART_WINDOW_S` end the engine (a crash loop).
    MAX_RESTARTS = 10
    RESTART_WINDOW_S = 60.0
    #: After a death, the host reads the dead process's last outputs until the pipe was quiet this long.
    QUIET_S = 0.05

    def __init__(self, config: Config, ctx: zmq.Context, inbox_addr: str, out_addr: str, *,
                 stop_timeout_s: float = 20.0) -> None:
        self.config = config
        self.ctx = ctx
        self.inbox_addr = inbox_addr
        self.out_addr = out_addr
        self.stop_timeout_s = stop_timeout_s
        self.index = "video"
        self.ready = threading.Event()
        self.serving = threading.Event()  # the current video process has bound its inbox (HELLO)
        self.dead = threading.Event()
        self.error: BaseException | None = None
        self.run_dir = tempfile.mkdtemp(prefix="telediag-video-")
        self.child_in = f"ipc://{self.run_dir}/in"
        self.child_out = f"ipc://{self.run_dir}/out"
        self.proc: Any = None  # the video process serving the inbox
        self._spare: tuple[Any, Any] | None = None  # (process, connection): warm, waiting for an assignment
        self.progress: dict[str, int] = {}  # stream -> last packet whose outputs were all forwarded
        self.restarts: list[tuple[float, int | None]] = []  # (monotonic time, exit code)
        self.forwarded = 0  # packets handed to the video process
        self.forward_drops = 0  # packets dropped because its queue was full (it was starting or behind)
        self.last_stats: dict[str, Any] = {}
        self._mp = mp.get_context("spawn")
        self._event_seq = 0

    @property
    def pid(self) -> int | None:
        """The serving video process's pid."""
        return None if self.proc is None else int(self.proc.pid)

    def spare_warm(self) -> bool:
        """Whether a warm spare video process has finished its imports and waits for an assignment."""
        spare = self._spare
        try:
            return spare is not None and spare[0].is_alive() and bool(spare[1].poll())
        except (OSError, EOFError):
            return False

    # -- the process ---------------------------------------------------------------------
    def _spawn(self) -> tuple[Any, Any]:
        recv, send = self._mp.Pipe()
        p = self._mp.Process(target=video_main, name="telediag-video", daemon=True,
                             args=(self.config, self.child_in, self.child_out, recv, os.getpid(),
                                   _registered_modules(self.config)))
        p.start()
        recv.close()
        return p, send

    def _assign(self, resume: dict[str, int]) -> None:
        """Make the warm spare (or a new process) the serving one, resuming ``resume``."""
        spare, self._spare = self._spare, None
        if spare is None or not spare[0].is_alive():
            spare = self._spawn()
        p, conn = spare
        self.serving.clear()
        conn.send(resume)
        conn.close()
        self.proc = p

    def _restart(self, pull: zmq.Socket, pub: zmq.Socket) -> None:
        """The video process died: forward what it sent, report, hand its streams to a replacement."""
        code = self.proc.exitcode
        self._drain(pull, pub, quiet_s=self.QUIET_S, max_s=1.0)  # progress must be complete first
        now = time.monotonic()
        self.restarts.append((now, code))
        recent = [r for r in self.restarts if now - r[0] < self.RESTART_WINDOW_S]
        if len(recent) > self.MAX_RESTARTS:
            raise EngineError(f"the video process died {len(recent)} times in {self.RESTART_WINDOW_S:g} s "
                              f"(last exit code {code}); giving up")
        self._publish_event(pub, {"type": "worker_restarted", "worker": "video", "exitcode": code,
                                  "restarts": len(recent)})
        self._assign(dict(self.progress))

    # -- messages ------------------------------------------------------------------------
    def _publish_event(self, pub: zmq.Socket, body: dict[str, Any]) -> None:
        now = time.time_ns()
        pub.send_multipart(encode(Chunk.record("event", "engine", 0, now, body), seq=self._event_seq,
                                  meta={"pub_ns": now}))
        self._event_seq += 1

    def _stats(self, msg: list[bytes]) -> list[bytes]:
        try:
            chunk = decode(msg)
            body = dict(chunk.body)
        except Exception:  # noqa: BLE001 - forward as is; metrics just miss one snapshot
            return msg
        body["pid"] = self.pid
        body["process_restarts"] = len(self.restarts)
        body["forward_drops"] = self.forward_drops
        self.last_stats = body
        return list(encode(Chunk.record("stats", chunk.stream, chunk.seq, chunk.t0_ns, body, meta=chunk.meta)))

    def _forward_outputs(self, pull: zmq.Socket, pub: zmq.Socket) -> int:
        """Forward the video process's queued outputs; read its progress markers. Returns the count read."""
        n = 0
        for _ in range(1000):
            try:
                msg = pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            first = msg[0]
            if first == PROGRESS:
                for k in range(1, len(msg) - 1, 2):
                    self.progress[msg[k].decode()] = int.from_bytes(msg[k + 1], "little")
                continue
            if first == HELLO:
                self.serving.set()
                if self._spare is None and self.config.engine.spare_workers > 0:
                    self._spare = self._spawn()  # after the serving one is up: not two imports at once
                continue
            if first.startswith(b"stats/engine/video"):
                msg = self._stats(msg)
            pub.send_multipart(msg)
        return n

    def _drain(self, pull: zmq.Socket, pub: zmq.Socket, *, quiet_s: float, max_s: float) -> None:
        """Forward outputs until none came for ``quiet_s`` (at most ``max_s``)."""
        end = time.monotonic() + max_s
        while time.monotonic() < end:
            if not pull.poll(int(quiet_s * 1000)):
                return
            self._forward_outputs(pull, pub)

    # -- loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until STOP (see the module doc); on an abnormal end set :attr:`error` and :attr:`dead`."""
        try:
            self._serve()
        except BaseException as e:
            self.error = e
            self.dead.set()
            self.ready.set()
            raise
        finally:
            for p in (self.proc, self._spare[0] if self._spare else None):
                if p is not None and p.is_alive():
                    p.kill()
                    p.join(5)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _serve(self) -> None:
        inbox = self.ctx.socket(zmq.PULL)
        inbox.setsockopt(zmq.RCVHWM, VIDEO_INBOX_HWM)
        inbox.bind(self.inbox_addr)
        pull = self.ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, self.config.engine.publish_hwm)
        pull.bind(self.child_out)
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, self.config.engine.publish_hwm)
        pub.setsockopt(zmq.LINGER, 2000)
        pub.connect(self.out_addr)
        fwd = self.ctx.socket(zmq.PUSH)  # queues while the process starts; NOBLOCK: drop when full
        fwd.setsockopt(zmq.SNDHWM, VIDEO_INBOX_HWM)
        fwd.setsockopt(zmq.LINGER, 0)
        fwd.setsockopt(zmq.RECONNECT_IVL, 20)  # a replacement binds the same path: reach it at once
        fwd.connect(self.child_in)
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        self._assign({})  # started with the engine (imports take seconds), not on the first packet
        self.ready.set()
        stop_at: float | None = None
        try:
            while True:
                events = dict(poller.poll(100))
                if pull in events:
                    self._forward_outputs(pull, pub)
                if inbox in events and stop_at is None:
                    for _ in range(256):
                        try:
                            msg = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if msg[0].bytes == STOP:
                            stop_at = time.monotonic()
                            self._send_stop(fwd)
                            break
                        try:
                            fwd.send_multipart(msg, zmq.NOBLOCK, copy=False)
                            self.forwarded += 1
                        except zmq.Again:
                            self.forward_drops += 1
                p = self.proc
                if stop_at is not None:
                    if not p.is_alive():
                        self._drain(pull, pub, quiet_s=0.2, max_s=5.0)
                        break
                    if time.monotonic() - stop_at > self.stop_timeout_s:
                        raise EngineError(f"the video process did not stop within {self.stop_timeout_s:g} s")
                elif not p.is_alive():
                    self._restart(pull, pub)
        finally:
            inbox.close(linger=0)
            pull.close(linger=0)
            fwd.close(linger=0)
            pub.close()

    def _send_stop(self, fwd: zmq.Socket) -> None:
        """STOP after everything queued (waits for room: the queue may be full)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare[1].close()  # EOF: the spare exits without serving
            spare[0].terminate()
        end = time.monotonic() + 5.0
        while True:
            try:
                fwd.send(STOP, zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() > end or not self.proc.is_alive():
                    self.proc.terminate()  # wedged: it cannot drain; stop it
                    return
                time.sleep(0.01)
