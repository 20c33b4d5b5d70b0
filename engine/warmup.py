"""Cold start: load or compile every pipeline's Numba kernels before serving, in parallel.

With a warm Numba cache (``cache=True`` kernels, stored in ``__pycache__`` beside the
package or in ``$NUMBA_CACHE_DIR``) a worker's warm-up only loads machine code: about a
second. With an empty cache every kernel compiles first, and Numba compiles on one core
(the ECG kernels alone take tens of seconds). :func:`warm_pipelines` therefore warms the
first pipeline kind (ECG) in the calling thread and, if that has not finished after
:data:`SPAWN_AFTER_S` (the sign of a cold cache), compiles the other kinds' kernels in
child processes at the same time, on the other cores; the caller then loads their
kernels from the cache the children wrote. A warm start spawns nothing.

Before any of that, :func:`telediag.engine.aot.install` registers the kernels compiled ahead of
time at install (``make``) with their dispatchers: with them nothing compiles at all, whatever the
Numba cache holds, and the warm-up only runs the synthetic signal once through each pipeline (its
calls with other argument types, if any, still compile or load from the cache).

Children only compile: they run the same synthetic warm-up through the same stages
(:func:`warm_kind`) and exit; they open no socket and see no patient data.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from telediag.engine import aot
from telediag.engine.config import Config
from telediag.engine.stage import StreamSpec
from telediag.transports.wire import Chunk, decode, encode

#: Synthetic stream used to warm each signal kind: (rate, channels, units).
WARMUP_SPECS: dict[str, tuple[float, tuple[str, ...], tuple[str, ...]]] = {
    "ecg": (360.0, ("I", "II"), ("mV", "mV")),
    "pcg": (4000.0, ("stetho",), ("adu",)),
}

#: A first kind still warming after this long means a cold cache: compile the rest in parallel.
SPAWN_AFTER_S = 1.0
#: ... and after this long without AOT kernels, say (once) that the start compiles and why.
NOTICE_AFTER_S = 3.0
_NOTICED = False


class _PlainDoc:
    """Stand-in for SciPy's ``FunctionDoc`` while :func:`import_scipy_signal` runs: the docstring
    unchanged (what ``str(FunctionDoc(f))`` gives after its first line), no sections parsed."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __getitem__(self, key: str) -> list[str]:
        return []

    def __str__(self) -> str:
        return "\n" + (getattr(self.f, "__doc__", None) or "")


def import_scipy_signal() -> None:
    """Import :mod:`scipy.signal` without SciPy's import-time docstring rewriting (engine start).

    SciPy >= 1.15 decorates each public function with ``xp_capabilities``, which parses its
    numpydoc docstring (``scipy._lib._docscrape``) at import to append an array-API support table:
    ~30 % of ``import scipy.signal`` (0.28 of 1.0 CPU seconds measured), on the critical path of
    every engine start (the ECG filter designs need scipy.signal). Here that one import runs with
    the parser swapped for :class:`_PlainDoc` (docstrings stay as written, without the table), and
    the parser is put back at once, so later imports are unchanged. Called by ``telediag run`` and
    ``telediag demo`` only, before anything imports scipy.signal; a no-op if it is already imported
    or SciPy's internals differ.
    """
    import sys

    if "scipy.signal" in sys.modules:
        return
    try:
        import scipy._lib._array_api as xa
    except ImportError:
        return
    orig = getattr(xa, "FunctionDoc", None)
    if orig is None:
        return
    xa.FunctionDoc = _PlainDoc
    try:
        import scipy.signal  # noqa: F401
    finally:
        xa.FunctionDoc = orig


def warm_kind(config: Config, kind: str) -> None:
    """Run eight seconds of synthetic signal through the ``kind`` pipeline (best effort).

    Float32 and float64 chunks, through the wire codec so kernels see read-only arrays
    exactly as with real chunks. A stage that fails here fails again, and is reported,
    on real data.
    """
    configs = config.pipelines.get(kind, ())
    if not configs or kind not in WARMUP_SPECS:
        return
    fs, channels, units = WARMUP_SPECS[kind]
    rng = np.random.default_rng(0)
    try:
        stages = [sc.build() for sc in configs]
        spec = StreamSpec("warmup", kind, fs, channels, units)
        for stage in stages:
            spec = stage.open(spec)
        n = int(fs)
        sig = _synthetic(kind, fs, 8 * n, len(channels), rng)
        for seq in range(8):  # float32 (what agents send) and float64
            dtype = np.float32 if seq % 2 else np.float64
            c = Chunk.signal(kind, "warmup", seq, seq * 10**9, sig[seq * n:(seq + 1) * n].astype(dtype), fs,
                             channels, units)
            x: Chunk | None = decode(encode(c))
            for stage in stages:
                if x is None:
                    break
                x = stage.process(x).signal
        for stage in stages:
            stage.close()
    except Exception:  # noqa: BLE001 - warm-up is best effort
        return


def _synthetic(kind: str, fs: float, n: int, n_ch: int, rng: np.random.Generator) -> np.ndarray:
    """Warm-up signal that drives every code path: ECG gets QRS-like pulses at 75/min (so beat
    detection, features, the classifier, HR and HRV all run and compile), PCG gets noise bursts."""
    t = np.arange(n) / fs
    if kind == "ecg":
        phase = (t % 0.8) - 0.4
        x = 1.2 * np.exp(-(phase**2) / (2 * 0.012**2)) - 0.2 * np.exp(-((phase - 0.05) ** 2) / (2 * 0.02**2))
        x = x + 0.25 * np.exp(-((phase - 0.25) ** 2) / (2 * 0.05**2))  # a T wave
        x = x[:, None] + 0.02 * rng.standard_normal((n, n_ch))
        return x * np.linspace(1.0, 0.6, n_ch)[None, :]
    bursts = (np.abs((t % 0.8) - 0.1) < 0.05) | (np.abs((t % 0.8) - 0.4) < 0.04)
    return (rng.standard_normal((n, n_ch)) * (0.05 + bursts[:, None])) * 0.1


def _compiling_notice(reason: str) -> None:
    global _NOTICED
    if not _NOTICED:
        _NOTICED = True
        logging.getLogger("telediag.engine").warning(
            "telediag: compiling Numba kernels before serving (ahead-of-time kernels not in use: %s); "
            "on an empty Numba cache this takes about a minute, several on a busy machine. "
            "`make aot` (python -m telediag.engine.aot build) compiles them once.", reason)


def _child(config: Config, kind: str) -> None:  # pragma: no cover - runs in a child process
    warm_kind(config, kind)


def warm_pipelines(config: Config, *, parallel: bool = True, background: bool = False,
                   on_kind: Callable[[str, float], None] | None = None) -> dict[str, float]:
    """Warm every signal pipeline of ``config``; return seconds spent per kind.

    With ``background`` the call returns once the first kind is warm and the other kinds finish
    in a daemon thread (the returned dict is filled in as they do).

    Parameters
    ----------
    config : Config
        The engine configuration (its pipelines are warmed).
    parallel : bool
        Allow compiling the other kinds in child processes on a cold cache.
    background : bool
        Return after the first kind; warm the others in a thread.
    on_kind : callable, optional
        Called with ``(kind, seconds)`` as each kind becomes warm.
    """
    status = aot.install()
    notice: threading.Timer | None = None
    if status["aot"]:
        # the kernels are compiled already: a slow first kind is busy importing and loading models,
        # not compiling, and a child process would only repeat that work on the other core
        parallel = False
    else:  # say why a start may take minutes, once per process, if it does
        notice = threading.Timer(NOTICE_AFTER_S, _compiling_notice, args=(str(status.get("reason")),))
        notice.daemon = True
        notice.start()
    kinds: Sequence[str] = [k for k in WARMUP_SPECS if config.pipelines.get(k)]
    spent: dict[str, float] = {}
    if not kinds:
        return spent
    first, rest = kinds[0], list(kinds[1:])
    children: dict[str, Any] = {}
    lock = threading.Lock()
    first_done = threading.Event()

    def spawn() -> None:
        with lock:
            if first_done.is_set():
                return
            ctx = mp.get_context("spawn")
            for k in rest:
                p = ctx.Process(target=_child, args=(config, k), name=f"telediag-precompile-{k}", daemon=True)
                try:
                    p.start()
                except Exception:  # noqa: BLE001 - no child: the kind warms (compiles) here instead
                    continue
                children[k] = p

    timer = threading.Timer(SPAWN_AFTER_S, spawn) if parallel and rest else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    t = time.perf_counter()
    warm_kind(config, first)
    with lock:
        first_done.set()
    for tm in (timer, notice):
        if tm is not None:
            tm.cancel()
    spent[first] = time.perf_counter() - t
    if on_kind is not None:
        on_kind(first, spent[first])

    def warm_rest() -> None:
        for k in rest:
            t = time.perf_counter()
            p = children.get(k)
            if p is not None:
                p.join()  # its kernels are in the cache now: the warm-up below only loads them
            warm_kind(config, k)
            spent[k] = time.perf_counter() - t
            if on_kind is not None:
                on_kind(k, spent[k])

    if background and rest:
        # the first kind (ECG) is served at once; the others load beside it (a stream of theirs
        # that comes meanwhile compiles or loads on demand: Numba's compiler lock keeps it safe)
        threading.Thread(target=warm_rest, name="telediag-warmup", daemon=True).start()
    else:
        warm_rest()
    return spent
