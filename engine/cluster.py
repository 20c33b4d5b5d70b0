"""Ray backend (``worker_mode = "ray"``, ``[cluster] ray_address``, ``telediag run --ray ADDRESS``).

Workers are Ray actors placed across the cluster's nodes (``SPREAD`` scheduling,
``max_restarts``), each running the same :class:`~telediag.engine.worker.Worker` code as a
thread or process worker. Ray is only the control plane: it places the actors, restarts
them when they die and tells the engine when that happens (an outstanding ``watch`` call
fails). The data plane stays ZeroMQ::

    engine (front end)                                     node A / node B ...
    router --PUSH tcp--> inbox (PULL, tcp://<node ip>:<port>)  WorkerActor k (Worker)
    collector (PULL, tcp://<engine ip>:<port>) <--PUSH tcp-- outputs + progress markers
    control (ROUTER) <--DEALER-- hello {slot, incarnation, endpoint}; reply {index, resume}

Each actor binds its inbox on its own node's address (``ray.util.get_node_ip_address()``) on a
free port and reports the endpoint in its hello on the engine's control socket (endpoint
discovery); no chunk ever goes through Ray's object store. Everything else (warm spares,
exact ``gap`` accounting after a death, ``stream_restarted``, the crash-loop limit, adding a
worker with ``stream_moved`` handovers) is :class:`~telediag.engine.procs.WorkerPool`'s.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import zmq

from telediag.engine.config import Config
from telediag.engine.procs import WorkerPool, pool_worker, say_hello
from telediag.errors import EngineError


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EngineError("worker_mode = 'ray' needs Ray: pip install 'telediag[cluster]'") from e
    return ray


class WorkerActor:
    """One worker as a Ray actor (wrapped with ``ray.remote`` by :class:`RayPool`).

    ``__init__`` (re-run by Ray on every restart, with a new *incarnation* id) starts the worker
    in a thread and returns at once; the worker warms up, binds its inbox on this node and says
    hello to the engine, then waits for an index (a spare waits there). If the worker ends
    abnormally the actor's process exits, so Ray restarts it.
    """

    def __init__(self, config: Config, out_addr: str, ctrl_addr: str, slot: int) -> None:
        ray = _ray()
        self.slot = slot
        self.inc = uuid.uuid4().hex
        self.finished = threading.Event()
        self._give_up = threading.Event()
        host = ray.util.get_node_ip_address()
        self.node = host
        self.ctx = zmq.Context()
        self.w = pool_worker(config, self.ctx, f"tcp://{host}:*", out_addr)
        self.w.parallel_warmup = False
        ctrl = ctrl_addr

        def hello(endpoint: str) -> None:
            info = {"pid": os.getpid(), "slot": slot, "inc": self.inc, "endpoint": endpoint, "node": host}
            reply = say_hello(self.ctx, ctrl, info, self._give_up.is_set)
            if reply is None:
                raise SystemExit(0)
            self.w.index = int(reply["index"])
            self.w.resume = {str(k): int(v) for k, v in reply["resume"].items()}

        self.w.after_bind = hello
        self.thread = threading.Thread(target=self._run, name="telediag-actor-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:  # pragma: no cover - runs in the actor
        try:
            self.w.run()
        except SystemExit:
            pass
        except BaseException:  # noqa: BLE001 - the worker died: let Ray restart this actor
            os._exit(70)
        finally:
            self.ctx.destroy(linger=2000)  # the last outputs reach the collector first
            self.finished.set()

    def watch(self) -> str:
        """Returns when the worker has finished (after STOP); fails if this actor dies (health)."""
        self.finished.wait()
        return "finished"

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "slot": self.slot, "inc": self.inc, "node": self.node}

    def give_up(self) -> None:
        """A spare that will not be needed: stop waiting for an index."""
        self._give_up.set()


class RayPool(WorkerPool):
    """Worker pool of Ray actors (see the module doc).

    Parameters
    ----------
    config, ctx, proxy_in, on_stats, decorate_stats
        As :class:`~telediag.engine.procs.WorkerPool`; ``[cluster]`` gives the Ray address, the
        engine's bind host, the CPUs per actor and ``max_restarts``.
    """

    kind = "ray"

    def __init__(self, config: Config, ctx: zmq.Context, proxy_in: str, on_stats: Any,
                 decorate_stats: Any = None) -> None:
        ray = _ray()
        cl = config.cluster
        if not ray.is_initialized():
            try:
                ray.init(address=cl.ray_address or "auto", namespace="telediag", log_to_driver=False,
                         configure_logging=False)
            except Exception as e:  # noqa: BLE001 - ConnectionError and friends: say which address
                raise EngineError(f"cannot connect to the Ray cluster at {cl.ray_address or 'auto'!r}: {e}") from e
        host = cl.bind_host or ray.util.get_node_ip_address()
        super().__init__(config, ctx, proxy_in, f"tcp://{host}:*", f"tcp://{host}:*", on_stats, decorate_stats)
        self._ray = ray
        self._cls = ray.remote(WorkerActor)
        self.actors: dict[int, Any] = {}  # slot -> actor handle
        self._watch: dict[Any, int] = {}  # outstanding watch ref -> slot
        self._latest: dict[int, str] = {}  # slot -> incarnation of its last hello
        self._dead_incs: set[str] = set()
        self._slot_index: dict[int, tuple[int, str]] = {}  # slot -> (index, incarnation) it serves
        self._finished: set[int] = set()
        self._next_slot = 0
        self._wlock = threading.Lock()

    def _launch(self, parallel_warmup: bool) -> None:
        cl = self.config.cluster
        k = self._next_slot
        self._next_slot += 1
        a = self._cls.options(max_restarts=cl.max_restarts, max_task_retries=0, max_concurrency=4,
                              num_cpus=cl.actor_cpus, scheduling_strategy="SPREAD").remote(
            self.config, self.out_addr, self.ctrl_addr, k)
        with self._wlock:
            self.actors[k] = a
            self._watch[a.watch.remote()] = k

    def _on_hello(self, info: dict[str, Any]) -> None:
        self._latest[int(info["slot"])] = str(info["inc"])

    def _alive(self, info: dict[str, Any]) -> bool:
        inc = str(info["inc"])
        return inc not in self._dead_incs and self._latest.get(int(info["slot"])) == inc

    def _on_assigned(self, i: int, info: dict[str, Any]) -> None:
        self._slot_index[int(info["slot"])] = (i, str(info["inc"]))

    def _all_exited(self) -> bool:
        assigned = {k for k in self._slot_index}
        return assigned <= self._finished

    def _supervise(self) -> None:
        ray = self._ray
        while not self._stopping.is_set():
            with self._wlock:
                refs = list(self._watch)
            if not refs:
                time.sleep(0.2)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
            for r in ready:
                with self._wlock:
                    k = self._watch.pop(r)
                try:
                    ray.get(r)
                    self._finished.add(k)  # STOP reached it: a clean end
                    continue
                except Exception as e:  # noqa: BLE001 - RayActorError & co: this actor's process died
                    err = e
                if self._stopping.is_set():
                    self._finished.add(k)
                    continue
                with self._lock:
                    served = self._slot_index.pop(k, None)
                    inc = self._latest.get(k)
                    if inc is not None:
                        self._dead_incs.add(inc)
                    if served is not None:
                        self._dead_incs.add(served[1])
                        self.index_of = {p: i for p, i in self.index_of.items() if i != served[0]}
                if served is not None and not self._worker_died(served[0], None):
                    return
                permanent = type(err).__name__ == "ActorDiedError" and "restart" not in str(err).lower()
                with self._wlock:
                    if permanent or self.config.cluster.max_restarts == 0:
                        pass
                    else:  # Ray restarts it: watch the next incarnation (it becomes a spare)
                        self._watch[self.actors[k].watch.remote()] = k
                if permanent or self.config.cluster.max_restarts == 0:
                    self._launch(parallel_warmup=False)

    def _start_failed(self) -> str | None:
        ray = self._ray
        with self._wlock:
            refs = list(self._watch)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for r in ready:
            try:
                ray.get(r)
            except Exception as e:  # noqa: BLE001
                return f"a worker actor died during start-up: {type(e).__name__}: {str(e)[:300]}"
        return None

    def nodes_of_workers(self) -> dict[int, str]:
        """Worker index -> the node address its actor runs on (for tests and `telediag status`)."""
        ray = self._ray
        out = {}
        for k, (i, _) in list(self._slot_index.items()):
            try:
                out[i] = ray.get(self.actors[k].info.remote(), timeout=5)["node"]
            except Exception:  # noqa: BLE001 - restarting: unknown for now
                out[i] = "?"
        return out

    def stop(self, timeout_s: float) -> bool:
        """After the router has sent STOP: wait for the assigned actors to finish, then kill every actor."""
        ray = self._ray
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        assigned = set(self._slot_index)
        for k, a in list(self.actors.items()):
            if k not in assigned:
                try:
                    a.give_up.remote()
                except Exception:  # noqa: BLE001 - already gone
                    pass
        with self._wlock:
            pending = {r: k for r, k in self._watch.items() if k in assigned}
        clean = True
        if pending:
            ready, rest = ray.wait(list(pending), num_returns=len(pending),
                                   timeout=max(0.0, deadline - time.monotonic()))
            for r in ready:
                try:
                    ray.get(r)
                except Exception:  # noqa: BLE001
                    clean = False
                self._finished.add(pending[r])
            clean = clean and not rest
        self._finished |= set(self.actors)
        self._collector_done.wait(max(1.0, deadline - time.monotonic()))
        for a in self.actors.values():
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        return clean
