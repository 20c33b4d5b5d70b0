"""The transport-independent core of the API: admission, deadlines, worker pool, counters.

:class:`Service` owns the operations (:mod:`telediag.api.ops`), the model registry and a pool
of worker threads (ONNX Runtime and the Numba kernels release the GIL, so analyses overlap).
:meth:`Service.submit` never blocks: it validates the call, answers inline operations
(``health``, ``models.list``) at once, refuses what cannot be served (``busy`` when
``max_pending`` calls are queued, ``deadline_exceeded`` when the deadline has passed or the
predicted finish is after it) and otherwise queues the call; ``done(outcome)`` is called
exactly once, from the caller's thread or a worker.

Deadlines are relative (``deadline_ms`` from the moment the server received the request), so
client and server clocks never need to agree.  A call is checked when it is admitted, when a
worker picks it up and when it finishes; running analyses are never interrupted.

Examples
--------
>>> svc = Service(workers=1)
>>> out = svc.call(Call("health", "1", {}, None))
>>> out.output.result["status"]
'ok'
>>> svc.close()
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from telediag.api.ops import Context, Inputs, OpOutput, OpSpec, default_ops
from telediag.api.registry import ModelRegistry
from telediag.api.schema import API_VERSION, ApiError, Limits, Timing, short, validate_params
from telediag.errors import ModelError, TelediagError

__all__ = ["Call", "Outcome", "Service"]

DEFAULT_DEADLINE_MS = 30_000.0
MAX_DEADLINE_MS = 600_000.0


@dataclass(slots=True)
class Call:
    """One request after transport decoding.

    Attributes
    ----------
    op, id : str, Any
        Operation name and the client's request id (echoed).
    params : Any
        The raw ``params`` map (validated by :meth:`Service.submit`).
    inputs : Inputs or None
        Arrays / image decoded from the payload frames or the JSON body.
    deadline_ms : float or None
        Budget from ``received``; None: the server default.
    received : float
        ``time.monotonic()`` when the transport got the request.
    keep : Any
        Objects to keep alive while the call runs (zero-copy frames).
    """

    op: str
    id: Any
    params: Any
    inputs: Inputs | None
    deadline_ms: float | None = None
    received: float = field(default_factory=time.monotonic)
    keep: Any = None


@dataclass(slots=True)
class Outcome:
    """What a call produced: ``output`` or ``error``, and its timing."""

    id: Any
    output: OpOutput | None
    error: ApiError | None
    timing: Timing


class _Ewma:
    __slots__ = ("n", "value")

    def __init__(self) -> None:
        self.n = 0
        self.value = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.value = x if self.n == 1 else 0.8 * self.value + 0.2 * x


class Service:
    """Operations + registry + worker pool, shared by the ZeroMQ server and the HTTP gateway.

    Parameters
    ----------
    registry : ModelRegistry, optional
        Default: the package and user model directories.
    workers : int, optional
        Worker threads (default: CPU count, at least 2).
    max_pending : int
        Calls admitted (queued + running) before new ones get ``busy``.
    default_deadline_ms, max_deadline_ms : float
        Deadline when a request gives none; the largest accepted.
    limits : Limits
        Size limits.
    engine_config : telediag.engine.config.Config, optional
        Engine configuration for ``ecg.analyze`` (default: the built-in one).
    ops : dict, optional
        Operations (default :func:`telediag.api.ops.default_ops`); tests add their own.
    """

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        *,
        workers: int | None = None,
        max_pending: int = 256,
        default_deadline_ms: float = DEFAULT_DEADLINE_MS,
        max_deadline_ms: float = MAX_DEADLINE_MS,
        limits: Limits | None = None,
        engine_config: Any = None,
        ops: dict[str, OpSpec] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else ModelRegistry()
        self.workers = int(workers) if workers else max(2, os.cpu_count() or 2)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_pending = int(max_pending)
        self.default_deadline_ms = float(default_deadline_ms)
        self.max_deadline_ms = float(max_deadline_ms)
        self.limits = limits or Limits()
        self.ops = dict(ops) if ops is not None else default_ops()
        self._unavailable = {name: spec.requires() for name, spec in self.ops.items()}
        self.ctx = Context(self.registry, engine_config, self.health, self.limits.max_image_pixels)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="telediag-api")
        self._lock = threading.Lock()
        self._pending = 0
        self._waiting = 0
        self._run_ewma: dict[str, _Ewma] = {}
        self._started = time.monotonic()
        self.counters: dict[str, Any] = {"requests": 0, "ok": 0, "errors": {}, "ops": {}}
        self._closed = False

    # ------------------------------------------------------------------ info

    def available(self) -> dict[str, str | None]:
        """Operation -> None when it can run here, else why not."""
        return dict(self._unavailable)

    def health(self) -> dict[str, Any]:
        """The ``health`` result: status, versions, ops, pool, counters."""
        from telediag import __version__

        with self._lock:
            counters = {"requests": self.counters["requests"], "ok": self.counters["ok"],
                        "errors": dict(self.counters["errors"]), "ops": dict(self.counters["ops"])}
            pending, waiting = self._pending, self._waiting
        return {
            "status": "ok",
            "api_version": API_VERSION,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "ops": {n: ("available" if why is None else f"unavailable: {why}") for n, why in self._unavailable.items()},
            "workers": self.workers,
            "pending": pending,
            "queued": waiting,
            "max_pending": self.max_pending,
            "counters": counters,
            "models": self.registry.names(),
            "model_reloads": self.registry.reloads,
        }

    # ------------------------------------------------------------------ dispatch

    def resolve(self, op: Any) -> OpSpec:
        """The spec of ``op`` or ``unknown_op`` / ``unavailable``."""
        if not isinstance(op, str):
            raise ApiError("bad_request", f"header.op must be a string, got {short(op)}")
        spec = self.ops.get(op)
        if spec is None:
            raise ApiError("unknown_op", f"no operation {short(op, 80)}; operations are {sorted(self.ops)}")
        why = self._unavailable.get(op)
        if why is not None:
            raise ApiError("unavailable", f"{op} is not available on this server: {why}")
        return spec

    def _deadline_ms(self, value: Any) -> float:
        if value is None:
            return self.default_deadline_ms
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
                or value > self.max_deadline_ms:
            raise ApiError("bad_request", f"deadline_ms must be a number in (0, {self.max_deadline_ms:g}] ms, "
                                          f"got {short(value)}")
        return float(value)

    def _count(self, op: str, err: ApiError | None) -> None:
        with self._lock:
            c = self.counters
            c["requests"] += 1
            if op in self.ops:
                c["ops"][op] = c["ops"].get(op, 0) + 1
            if err is None:
                c["ok"] += 1
            else:
                c["errors"][err.code] = c["errors"].get(err.code, 0) + 1

    def submit(self, call: Call, done: Callable[[Outcome], None]) -> None:
        """Admit, queue and run ``call``; ``done(outcome)`` is called exactly once. Never blocks."""
        timing = Timing()
        try:
            spec = self.resolve(call.op)
            params = validate_params(call.params, spec.params)
            budget = self._deadline_ms(call.deadline_ms)
            deadline = call.received + budget / 1000.0
            inputs = call.inputs or Inputs()
            if spec.inline:
                out = self._execute(spec, params, inputs)
                timing.run_ms = (time.monotonic() - call.received) * 1000.0
                self._finish(call, spec.name, out, None, timing, done)
                return
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    raise ApiError("unavailable", "the server is shutting down")
                if self._pending >= self.max_pending:
                    raise ApiError("busy", f"{self._pending} requests pending, the limit is {self.max_pending}; "
                                           "retry later")
                predicted = self._predict_s(spec.name)
                if now >= deadline or (predicted is not None and now + predicted > deadline):
                    left = (deadline - now) * 1000.0
                    raise ApiError("deadline_exceeded", (
                        f"deadline_ms {budget:g} cannot be met: {max(left, 0):.1f} ms left"
                        + (f", predicted queue + run {predicted * 1000:.1f} ms" if predicted else "")))
                self._pending += 1
                self._waiting += 1
            self._pool.submit(self._work, call, spec, params, inputs, deadline, budget, done)
        except ApiError as e:
            self._finish(call, call.op if isinstance(call.op, str) else "?", None, e, timing, done)

    def _predict_s(self, op: str) -> float | None:
        """Expected queue wait + run time (lock held); None until 3 runs of ``op`` are known."""
        e = self._run_ewma.get(op)
        if e is None or e.n < 3:
            return None
        mean_all = sum(x.value for x in self._run_ewma.values()) / max(1, len(self._run_ewma))
        return (self._waiting / self.workers) * mean_all + e.value

    def _work(self, call: Call, spec: OpSpec, params: dict[str, Any], inputs: Inputs, deadline: float,
              budget: float, done: Callable[[Outcome], None]) -> None:
        start = time.monotonic()
        with self._lock:
            self._waiting -= 1
        timing = Timing(queue_ms=(start - call.received) * 1000.0)
        out: OpOutput | None = None
        err: ApiError | None = None
        try:
            if start >= deadline:
                raise ApiError("deadline_exceeded", f"deadline_ms {budget:g} passed while queued "
                                                    f"({timing.queue_ms:.1f} ms in the queue)")
            out = self._execute(spec, params, inputs)
            end = time.monotonic()
            timing.run_ms = (end - start) * 1000.0
            with self._lock:
                self._run_ewma.setdefault(spec.name, _Ewma()).add(end - start)
            if end > deadline:
                out = None
                raise ApiError("deadline_exceeded", f"finished {(end - deadline) * 1000:.1f} ms after its "
                                                    f"deadline_ms {budget:g} (ran {timing.run_ms:.1f} ms)")
        except ApiError as e:
            err = e
        finally:
            with self._lock:
                self._pending -= 1
        self._finish(call, spec.name, out, err, timing, done)

    def _execute(self, spec: OpSpec, params: dict[str, Any], inputs: Inputs) -> OpOutput:
        try:
            return spec.run(self.ctx, params, inputs)
        except ApiError:
            raise
        except ModelError as e:
            raise ApiError("model_error", str(e)) from e
        except TelediagError as e:
            raise ApiError("invalid_input", str(e)) from e
        except MemoryError as e:
            raise ApiError("payload_too_large", "out of memory while processing the request") from e
        except Exception as e:  # noqa: BLE001 - a bug must become a reply, never kill the server
            raise ApiError("internal", f"{spec.name} failed: {type(e).__name__}: {short(str(e), 200)}") from e

    def _finish(self, call: Call, op: str, out: OpOutput | None, err: ApiError | None, timing: Timing,
                done: Callable[[Outcome], None]) -> None:
        self._count(op, err)
        call.keep = None
        try:
            done(Outcome(call.id, out, err, timing))
        except Exception:  # noqa: BLE001 - a transport failure must not kill a worker
            pass

    def call(self, call: Call, timeout_s: float | None = None) -> Outcome:
        """Blocking :meth:`submit` (for the HTTP gateway's handler threads and tests)."""
        box: list[Outcome] = []
        ev = threading.Event()

        def done(o: Outcome) -> None:
            box.append(o)
            ev.set()

        self.submit(call, done)
        if not ev.wait(timeout_s):
            return Outcome(call.id, None, ApiError("deadline_exceeded", "no result in time"), Timing())
        return box[0]

    def close(self) -> None:
        """Refuse new calls, let running ones finish, stop the pool."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=False)
