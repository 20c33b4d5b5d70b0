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
from telediag.engine.procs import WorkerPool, bundle_outputs, pool_worker, say_hello
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
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ctx = zmq.Context()
        self.w = pool_worker(config, self.ctx, f"tcp://{host}:*", out_addr)
        self.w.parallel_warmup = False
        ctrl = ctrl_addr

        def hello(endpoint: str) -> None:
            bundle_outputs(self.w)
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
        return {"pid": os.getpid(), "slot": self.slot, "inc": self.inc, "node": self.node, "node_id": self.node_id}

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
                    self._maybe_retired(k)
                    continue
                except Exception as e:  # noqa: BLE001 - RayActorError & co: this actor's process died
                    err = e
                if self._stopping.is_set():
                    self._finished.add(k)
                    continue
                if self._maybe_retired(k, kill=False):  # removed and died on its way out: no restart
                    continue
                with self._lock:
                    served = self._slot_index.pop(k, None)
                    inc = self._latest.get(k)
                    if inc is not None:
                        self._dead_incs.add(inc)
                    if served is not None:
                        self._dead_incs.add(served[1])
                        for pid in [p for p, i in self.index_of.items() if i == served[0]]:
                            del self.index_of[pid]
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

    def _maybe_retired(self, k: int, kill: bool = True) -> bool:
        """Slot ``k``'s actor ended; if it served a removed index (scale in), account and free it."""
        with self._lock:
            served = self._slot_index.get(k)
            if served is None or served[0] not in self.retiring:
                return False
            del self._slot_index[k]
            self._dead_incs.add(served[1])
            for pid in [p for p, i in self.index_of.items() if i == served[0]]:
                del self.index_of[pid]
        self._finished.add(k)
        self._retired(served[0], None)  # exit codes are not known for actors
        with self._wlock:
            a = self.actors.pop(k, None)
        if a is not None:
            try:  # its CPUs go back to the cluster; Ray must not restart it
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        return True

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


#: Environment of a throw-away local cluster and its drivers: no usage stats, and token auth off
#: explicitly (Ray >= 2.5x turns it on for a new local cluster and leaves ~/.ray/auth_token behind,
#: after which nodes started without the token cannot join). The loopback-only namespace is the
#: isolation here; a real cluster keeps whatever auth its operators set.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class LocalRayCluster:
    """A throw-away Ray cluster of ``nodes`` local nodes (``ray start --head`` / ``ray start --address``).

    For tests and benchmarks on one machine: run it inside a network namespace that has only
    loopback (``unshare -n``, ``ip link set lo up``), so Ray binds 127.0.0.1 rather than the
    machine's external interface. :meth:`stop` runs ``ray stop --force`` (inside a pid namespace
    that only sees this cluster's processes).
    """

    def __init__(self, temp_dir: str, nodes: int = 2, cpus_per_node: float = 1, port: int = 6390) -> None:
        import sys
        from pathlib import Path

        self.ray_cli = str(Path(sys.executable).with_name("ray"))
        self.temp_dir = temp_dir
        self.nodes = nodes
        self.cpus = cpus_per_node
        self.port = port
        self.address = f"127.0.0.1:{port}"

    def _ray_cmd(self, *args: str, timeout: float = 120) -> str:
        import subprocess

        env = {**os.environ, **LOCAL_RAY_ENV}
        r = subprocess.run([self.ray_cli, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            raise EngineError(f"ray {' '.join(args)} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
        return r.stdout

    def start(self) -> str:
        """Start the head and ``nodes - 1`` more nodes; return the address."""
        cpus = f"{self.cpus:g}"
        self._ray_cmd("start", "--head", "--port", str(self.port), "--num-cpus", cpus, "--disable-usage-stats",
                      "--include-dashboard=false", "--temp-dir", self.temp_dir)
        for _ in range(self.nodes - 1):
            self.add_node()
        return self.address

    def add_node(self, attempts: int = 3) -> None:
        """Start one more node; retried, since on a busy machine joining can time out on the GCS."""
        for k in range(attempts):
            try:
                self._ray_cmd("start", "--address", self.address, "--num-cpus", f"{self.cpus:g}",
                              "--disable-usage-stats")
                return
            except EngineError:
                if k == attempts - 1:
                    raise
                time.sleep(2.0)

    def stop(self) -> None:
        try:
            self._ray_cmd("stop", "--force", "--grace-period", "2", timeout=60)
        except Exception:  # noqa: BLE001 - best effort; the pid namespace ends the rest
            pass


def loopback_namespace_cmd(argv: list[str]) -> list[str]:
    """``argv`` run inside new network + pid namespaces with only loopback up.

    The network namespace keeps Ray on 127.0.0.1 (it has no other interface to pick); the pid
    namespace ends every process started inside (raylets, actors) when ``argv`` exits, so a
    failed test can leak none. Needs root (or user namespaces), ``unshare`` and ``ip``.
    """
    return ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def loopback_namespace_unavailable() -> str | None:
    """Why :func:`loopback_namespace_cmd` cannot run here (None when it can)."""
    import shutil
    import subprocess

    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool!r} not found (apt-get install util-linux iproute2)"
    try:
        r = subprocess.run(loopback_namespace_cmd(["true"]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run unshare: {e}"
    if r.returncode != 0:
        return f"network/pid namespaces not allowed here (unshare -n -p: {r.stderr.strip()[:200]})"
    return None
