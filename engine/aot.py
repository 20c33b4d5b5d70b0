"""Ahead-of-time compiled Numba kernels: a C extension built at install time (issue 18 item 3).

With an empty Numba cache every ``@njit`` kernel of the ECG and PCG pipelines compiles on its
first call: ~25 s of one core for ECG on an idle 2-core machine, minutes under load, before the
engine can publish a beat. ``make`` (the install targets) therefore runs::

    python -m telediag.engine.aot build

which runs the engine's own synthetic warm-up (:func:`telediag.engine.warmup.warm_kind`) under JIT
in a child process with a *throw-away* ``NUMBA_CACHE_DIR`` (the build leaves no Numba cache
behind), records every kernel signature called from Python, and compiles all of them with
``numba.pycc`` into one extension module, ``telediag/engine/_aot_kernels*.so``, beside a manifest
``_aot_kernels.json`` (signatures, hashes of the kernel sources, Numba version, CPU). This is
compiled machine code like any C extension, not a Numba cache: it is used whatever
``NUMBA_CACHE_DIR`` holds, and an empty cache stays empty when it serves. ``make`` installs
editable (the module lands in the source tree, gitignored); after a plain ``pip install``, run the
build once (it writes beside the installed package).

At run time :func:`install` (called by the engine's warm-up) checks the manifest against the
sources and the machine and, if everything matches, registers each compiled function as an
overload of its own Numba dispatcher (``Dispatcher._insert``, what Numba itself does when it
loads a cached overload). Calls from Python then go through Numba's ordinary, exact type
dispatch: only argument types identical to a compiled signature (dtype, dimensions, layout,
read-only flag) reach the AOT code; any other call, and any call from another jitted function,
compiles as before. The compiled code is the kernels' own (each export is a shim that calls the
dispatcher, so every kernel keeps its own options such as ``error_model``), built for this
machine's CPU (``target_cpu = host``).

Fallbacks, each silent for the patient data and reported in :data:`STATUS`: no extension (no C
compiler at install, or never built) or another Numba, Python or CPU: every kernel JITs as before;
a kernel source changed since the build (sha256 of the file of the kernel and of every kernel it
calls by name): that signature JITs, the others stay compiled (``make`` rebuilds). Like Numba's
own cache, a constant imported from another module is not tracked.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

EXT_NAME = "_aot_kernels"
HERE = Path(__file__).resolve().parent
MANIFEST = HERE / f"{EXT_NAME}.json"
#: Pipelines whose kernels are compiled ahead of time (their synthetic warm-up drives every path).
KINDS = ("ecg", "pcg")

#: Argument types of the installed overloads. Numba interns types weakly and the dispatcher matches
#: on each type's ``_code``: a type nobody holds is freed and ``typeof`` then makes a new one with a
#: new code, so these must stay alive for as long as the overloads do.
_HELD: list[Any] = []
_LOCK = threading.Lock()

#: What :func:`install` did: ``{"aot": bool, "reason": str, "overloads": int, "s": float}``.
STATUS: dict[str, Any] = {"aot": False, "reason": "not installed yet", "overloads": 0}


# ---------------------------------------------------------------------------------------------
# argument types <-> JSON (the manifest is plain data: never pickled)

def _type_to_json(t: Any) -> Any:
    from numba.core import types

    if isinstance(t, types.Array):
        return ["array", str(t.dtype), t.ndim, t.layout, bool(t.mutable is False)]
    if isinstance(t, (types.Integer, types.Float, types.Boolean)):
        return ["scalar", str(t)]
    return None  # tuples, records, literals, ...: not exported


def _type_from_json(j: Any) -> Any:
    import numba
    import numpy as np
    from numba.core import types

    if j[0] == "array":
        _, dt, ndim, layout, readonly = j
        return types.Array(numba.from_dtype(np.dtype("bool" if dt == "bool" else dt)), int(ndim), layout,
                           readonly=bool(readonly))
    return getattr(types, "boolean" if j[1] == "bool" else j[1])


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _machine() -> dict[str, str]:
    import llvmlite.binding as llvm
    import numba

    return {"numba": numba.__version__, "cpu": llvm.get_host_cpu_name(),
            "features": llvm.get_host_cpu_features().flatten(), "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------
# build (runs in a child process with a throw-away NUMBA_CACHE_DIR)

def _collect(kinds: tuple[str, ...]) -> tuple[list[tuple[Any, tuple[Any, ...]]], set[str]]:
    """Run the synthetic warm-up of ``kinds`` under JIT; return the (dispatcher, argtypes) called
    from Python, and the source files of every telediag kernel compiled on the way."""
    from numba.core import event

    top: list[tuple[Any, tuple[Any, ...]]] = []
    files: set[str] = set()

    class _Rec(event.Listener):
        depth = 0

        def on_start(self, e: event.Event) -> None:
            d = e.data["dispatcher"]
            if getattr(d.py_func, "__module__", "").startswith("telediag."):
                files.add(d.py_func.__code__.co_filename)
                if self.depth == 0:
                    top.append((d, tuple(e.data["args"])))
            self.depth += 1

        def on_end(self, e: event.Event) -> None:
            self.depth -= 1

    event.register("numba:compile", _Rec())
    from telediag.engine.config import load_config
    from telediag.engine.warmup import warm_kind

    cfg = load_config()
    for k in kinds:
        warm_kind(cfg, k)
    return top, files


def _dep_files(disp: Any) -> set[str]:
    """Source files of ``disp`` and of every telediag kernel it calls by global name, recursively
    (the same names Numba resolves when it compiles the kernel)."""
    from numba.core.dispatcher import Dispatcher

    seen: set[int] = set()
    files: set[str] = set()
    todo = [disp]
    while todo:
        d = todo.pop()
        if id(d) in seen:
            continue
        seen.add(id(d))
        f = d.py_func
        files.add(f.__code__.co_filename)
        codes = [f.__code__]
        while codes:
            c = codes.pop()
            codes += [k for k in c.co_consts if hasattr(k, "co_names")]
            for name in c.co_names:
                g = f.__globals__.get(name)
                if isinstance(g, Dispatcher) and getattr(g.py_func, "__module__", "").startswith("telediag."):
                    todo.append(g)
    return files


def _shim(disp: Any, n: int) -> Any:
    """``def shim(a0, ..., an): return disp(a0, ..., an)``: exported under pycc's flags while the
    kernel itself compiles with its own (``error_model``, ``fastmath``, ...)."""
    args = ", ".join(f"a{i}" for i in range(n))
    ns: dict[str, Any] = {"_k": disp}
    exec(f"def shim({args}):\n    return _k({args})\n", ns)  # noqa: S102 - generated from an int
    return ns["shim"]


def _build_here(out_dir: Path, kinds: tuple[str, ...]) -> dict[str, Any]:
    t0 = time.perf_counter()
    (out_dir / f"{EXT_NAME}.json").unlink(missing_ok=True)  # no manifest beside a half-built module
    top, files = _collect(kinds)
    t_jit = time.perf_counter() - t0
    import numba.pycc.compiler as pcc
    from numba.pycc import CC

    class _Flags(pcc.Flags):  # type: ignore[misc, valid-type]
        """The exported wrappers release the GIL like the kernels' ``nogil=True``."""

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.release_gil = True  # type: ignore[assignment]

    pcc.Flags = _Flags  # type: ignore[misc]
    cc = CC(EXT_NAME)
    stage = Path(tempfile.mkdtemp(prefix=".aot-build-", dir=out_dir))  # same file system: atomic renames
    cc.output_dir = str(stage)
    cc.target_cpu = "host"  # built where it runs; the manifest records the CPU and install() checks it
    cc.verbose = False
    entries: list[dict[str, Any]] = []
    seen = set()
    for disp, args in top:
        key = (disp.py_func.__module__, disp.py_func.__qualname__, args)
        js = [_type_to_json(a) for a in args]
        if key in seen or any(j is None for j in js) or args not in disp.overloads:
            continue
        seen.add(key)
        sym = f"k{len(entries)}"
        cres = disp.overloads[args]
        cc.export(sym, cres.signature)(_shim(disp, len(args)))
        deps = _dep_files(disp)
        files |= deps
        entries.append({"symbol": sym, "module": key[0], "qualname": key[1], "args": js,
                        "files": sorted(os.path.relpath(f, HERE.parent) for f in deps)})
    t1 = time.perf_counter()
    try:
        cc.compile()
        # a running engine may have the old module mapped: give the new one a new inode (rename),
        # never rewrite the old file in place
        for so in stage.glob(f"{EXT_NAME}*"):
            os.replace(so, out_dir / so.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    t_cc = time.perf_counter() - t1
    root = HERE.parent
    manifest = {"entries": entries, "machine": _machine(),
                "sources": {os.path.relpath(f, root): _sha(f) for f in sorted(files)},
                "kinds": list(kinds), "build_s": {"jit": round(t_jit, 2), "pycc": round(t_cc, 2)}}
    tmp = out_dir / f".{EXT_NAME}.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / f"{EXT_NAME}.json")
    return manifest


def build(out_dir: Path | None = None, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Build the extension in a child process whose Numba cache is thrown away afterwards."""
    out = Path(out_dir or HERE)
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found)")
    with tempfile.TemporaryDirectory(prefix="telediag-aot-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "TELEDIAG_AOT": "0"}
        r = subprocess.run([sys.executable, "-m", "telediag.engine.aot", "_build", str(out), *kinds],
                           env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"AOT build failed (exit {r.returncode}); the kernels will JIT at run time")
    return dict(json.loads((out / f"{EXT_NAME}.json").read_text()))


# ---------------------------------------------------------------------------------------------
# run time

def _load() -> tuple[Any, dict[str, Any]] | str:
    if os.environ.get("TELEDIAG_AOT", "1") == "0":
        return "disabled by TELEDIAG_AOT=0"
    if not MANIFEST.exists():
        return "not built (run `python -m telediag.engine.aot build`, part of `make`)"
    try:
        manifest = json.loads(MANIFEST.read_text())
        ext = importlib.import_module(f"telediag.engine.{EXT_NAME}")
    except Exception as e:  # noqa: BLE001 - any failure: JIT as before
        return f"extension unusable: {e!r}"
    m = _machine()
    for key in ("numba", "cpu", "features", "python"):
        if manifest["machine"].get(key) != m[key]:
            return f"built for another {key} ({manifest['machine'].get(key)!r}, here {m[key]!r})"
    return ext, manifest


def _stale_files(manifest: dict[str, Any]) -> set[str]:
    """Kernel sources (relative to the package root) that differ from the ones built."""
    root = HERE.parent
    return {rel for rel, sha in manifest["sources"].items()
            if not (root / rel).exists() or _sha(str(root / rel)) != sha}


def _usable(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], set[str]]:
    """The entries whose kernel and callees' sources are unchanged, and the changed files. An entry
    of an edited kernel (or of one calling it) is left to the JIT; the others stay compiled."""
    stale = _stale_files(manifest)
    return [e for e in manifest["entries"] if not stale & set(e.get("files", manifest["sources"]))], stale


def _sosfilt_fast_entry(ext: Any, manifest: dict[str, Any]) -> None:
    """``telediag.dsp.sosfilt`` calls its kernel's entry point directly, bypassing the dispatcher
    (after ``_sosfilt_kernel.compile(sig)``, which would JIT): hand it the AOT function of that
    exact signature instead, if one was built and the module has not picked its entry yet."""
    sf = sys.modules.get("telediag.dsp.sosfilt")
    if sf is None or getattr(sf, "_fast_entry", 0) is not None or not hasattr(sf, "_KERNEL_SIG"):
        return
    want = [_type_to_json(t) for t in sf._KERNEL_SIG]
    for e in manifest["entries"]:
        if (e["module"], e["qualname"]) == ("telediag.dsp.sosfilt", "_sosfilt_kernel") and e["args"] == want:
            sf._fast_entry = getattr(ext, e["symbol"])  # type: ignore[attr-defined]
            return


def install() -> dict[str, Any]:
    """Register the AOT-compiled kernels with their dispatchers (once per process; cheap after).

    Returns :data:`STATUS`. Never raises: any mismatch leaves the kernels to JIT as before.
    """
    with _LOCK:  # worker threads warm up concurrently
        return _install()


def _install() -> dict[str, Any]:
    if STATUS.get("done"):
        return STATUS
    t = time.perf_counter()
    loaded = _load()
    n = skipped = 0
    if isinstance(loaded, str):
        STATUS.update(aot=False, reason=loaded)
    else:
        ext, manifest = loaded
        from numba.core.dispatcher import Dispatcher

        entries, stale = _usable(manifest)
        try:
            for e in entries:
                disp: Any = importlib.import_module(e["module"])
                for part in e["qualname"].split("."):
                    disp = getattr(disp, part)
                if not isinstance(disp, Dispatcher):
                    continue
                tys = [_type_from_json(a) for a in e["args"]]
                if tuple(tys) in disp.overloads:
                    # already JIT-compiled in this process (a kernel called before install): a
                    # second entry for the same types would make the C dispatcher's match
                    # ambiguous, and every call would then take the slow Python path
                    skipped += 1
                    continue
                _HELD.append(tys)
                codes = [t._code for t in tys]
                disp._insert(codes, getattr(ext, e["symbol"]), False)  # type: ignore[attr-defined]
                n += 1
            _sosfilt_fast_entry(ext, dict(manifest, entries=entries))
            STATUS.update(aot=n > 0, reason="ok" if not stale else
                          f"stale: {', '.join(sorted(stale))} changed since the build (run `make`): "
                          f"{len(manifest['entries']) - len(entries)} of {len(manifest['entries'])} "
                          "signatures JIT")
        except Exception as ex:  # noqa: BLE001
            STATUS.update(aot=n > 0, reason=f"partly installed: {ex!r}")
    STATUS.update(done=True, overloads=n, already_jit=skipped, s=round(time.perf_counter() - t, 3))
    return STATUS


def main(argv: list[str] | None = None) -> int:
    """``build [--out DIR] [--optional]``: compile the extension; ``status``: what :func:`install` does."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m telediag.engine.aot",
                                 description="Numba kernels compiled ahead of time (see the module doc).")
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="compile the extension module (part of `make`)")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: the package's)")
    b.add_argument("--optional", action="store_true",
                   help="exit 0 when it cannot be built (no C compiler): the kernels then JIT at run time")
    sub.add_parser("status", help="print what install() does in this environment")
    hb = sub.add_parser("_build")
    hb.add_argument("out", type=Path)
    hb.add_argument("kinds", nargs="*")
    a = ap.parse_args(argv)
    if a.cmd == "_build":
        _build_here(a.out, tuple(a.kinds) or KINDS)
        return 0
    if a.cmd == "build":
        t = time.perf_counter()
        try:
            m = build(a.out)
        except Exception as e:  # noqa: BLE001 - install goes on: the kernels JIT at run time
            print(f"telediag: AOT kernels not built ({e}); Numba compiles them on first use", file=sys.stderr)
            return 0 if a.optional else 1
        print(f"telediag: AOT kernels built: {len(m['entries'])} signatures in "
              f"{time.perf_counter() - t:.1f} s ({m['build_s']})")
        return 0
    print(json.dumps(install(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
