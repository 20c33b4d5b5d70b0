"""Algorithm versions and the result cache of the research harness.

A cached result is only valid for the *algorithm version* that produced it and for the exact
input.  :func:`algorithm_identity` fingerprints a plug-in function by

* its spec (module and qualified name);
* the SHA-256 of every *local* source file it depends on: the file that defines it, every
  ``.py`` file of its top-level package (or, for a loose module, of its folder), and,
  transitively, the files of the local modules it imports (modules and functions/classes
  bound in its globals) - *local* meaning not part of the standard library or of an
  installed distribution (``site-packages``), whose distribution version is used instead;
* an explicit ``version`` (or ``__version__``) attribute of the function, when it has one
  (use it for what source hashing cannot see, e.g. a weights file the function loads);
* the installed telediag version.

So editing a helper module that the plug-in imports, or a sibling module of its package,
changes the identity and invalidates its cache entries; a re-run with nothing changed hits
the cache.  :class:`ResultCache` stores one JSON document per (identity, input) key.

Examples
--------
>>> import json
>>> ident = algorithm_identity(json.dumps)
>>> ident.startswith("json:dumps:")
True
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ResultCache",
    "algorithm_identity",
    "dependency_files",
    "file_sha256",
    "local_source_file",
]

#: Most sibling files hashed per package/folder (a plug-in living in a huge folder).
MAX_SIBLINGS = 500
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", "build", "dist", ".tox",
              ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_INSTALLED_MARKERS = ("site-packages", "dist-packages")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes.

    Examples
    --------
    >>> len(file_sha256(__file__))
    64
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stdlib_dirs() -> tuple[Path, ...]:
    out = []
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            out.append(Path(p).resolve())
    return tuple(out)


_STDLIB = _stdlib_dirs()


def _is_installed(path: Path) -> bool:
    if any(m in path.parts for m in _INSTALLED_MARKERS):
        return True
    return any(path.is_relative_to(d) for d in _STDLIB)


def local_source_file(module: ModuleType) -> Path | None:
    """The module's source file when it is local code (not stdlib, not installed), else None.

    Examples
    --------
    >>> import json
    >>> local_source_file(json) is None
    True
    """
    f = getattr(module, "__file__", None)
    if not f:
        return None
    p = Path(f).resolve()
    if p.suffix != ".py" or not p.is_file() or _is_installed(p):
        return None
    return p


def _package_root(p: Path) -> Path | None:
    """The folder of the top-level package holding ``p`` (None for a loose module)."""
    d = p.parent
    if not (d / "__init__.py").is_file():
        return None
    while (d.parent / "__init__.py").is_file():
        d = d.parent
    return d


def _siblings(p: Path) -> list[Path]:
    root = _package_root(p)
    out: list[Path] = []
    if root is None:
        cands: Iterable[Path] = sorted(p.parent.glob("*.py"))
    else:
        cands = sorted(q for q in root.rglob("*.py") if not (_SKIP_DIRS & set(q.relative_to(root).parts)))
    for q in cands:
        if len(out) >= MAX_SIBLINGS:
            break
        if q.is_file():
            out.append(q.resolve())
    return out


def _imported_modules(m: ModuleType) -> list[ModuleType]:
    out: list[ModuleType] = []
    for v in list(vars(m).values()):
        if isinstance(v, ModuleType):
            out.append(v)
            continue
        mn = getattr(v, "__module__", None)
        if isinstance(mn, str) and mn in sys.modules and (inspect.isfunction(v) or inspect.isclass(v)):
            mod = sys.modules[mn]
            if mod is not None:
                out.append(mod)
    return out


def dependency_files(module: ModuleType, max_modules: int = 400) -> list[Path]:
    """Local source files a module depends on: itself, its package siblings, its local imports.

    Parameters
    ----------
    module : module
        The module defining a plug-in.
    max_modules : int
        Most modules followed through imports.

    Returns
    -------
    list of Path
        Sorted, de-duplicated; empty when the module is not local code.

    Examples
    --------
    >>> import json
    >>> dependency_files(json)
    []
    """
    files: set[Path] = set()
    seen: set[str] = set()
    stack = [module]
    while stack and len(seen) < max_modules:
        m = stack.pop()
        name = getattr(m, "__name__", repr(m))
        if name in seen:
            continue
        seen.add(name)
        p = local_source_file(m)
        if p is None:
            continue
        if p not in files:
            files.add(p)
            files.update(_siblings(p))
        stack.extend(_imported_modules(m))
    return sorted(files)


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def _dist_version(module_name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    top = module_name.split(".")[0]
    dists = _packages_distributions().get(top, [top])
    for d in dists:
        try:
            return f"{d}=={version(d)}"
        except PackageNotFoundError:
            continue
    return f"{top}==unknown"


def _telediag_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("telediag")
    except PackageNotFoundError:
        return "unknown"


def algorithm_identity(fn: Callable[..., Any], label: str | None = None,
                       extra: Iterable[str] = ()) -> str:
    """A string that changes whenever the code (or declared version) of ``fn`` changes.

    Parameters
    ----------
    fn : callable
        The plug-in function.
    label : str, optional
        Shown first (default ``module:qualname``).
    extra : iterable of str
        More tokens (e.g. model file checksums of a built-in algorithm).

    Returns
    -------
    str
        ``"<label>:<sha256>"`` where the hash covers the spec, the local source files
        (:func:`dependency_files`) or the installed distribution version, the function's
        ``version`` attribute and the telediag version.

    Examples
    --------
    >>> import json
    >>> algorithm_identity(json.dumps) == algorithm_identity(json.dumps)
    True
    """
    mod_name = getattr(fn, "__module__", None) or "?"
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    lab = label or f"{mod_name}:{qual}"
    h = hashlib.sha256()
    h.update(f"{mod_name}:{qual}\0telediag=={_telediag_version()}\0".encode())
    ver = getattr(fn, "version", None) or getattr(fn, "__version__", None)
    if ver is not None:
        h.update(f"version={ver}\0".encode())
    for e in extra:
        h.update(f"extra={e}\0".encode())
    module = sys.modules.get(mod_name) if mod_name != "?" else None
    files = dependency_files(module) if module is not None else []
    if files:
        for f in files:
            h.update(f"{f.name}\0{file_sha256(f)}\0".encode())
    elif module is not None and getattr(module, "__file__", None):
        h.update(f"dist={_dist_version(mod_name)}\0".encode())
    else:
        # no source to hash (a lambda in __main__, a builtin): the code object if any
        code = getattr(fn, "__code__", None)
        h.update(repr(getattr(code, "co_code", id(fn))).encode())
        consts = getattr(code, "co_consts", ())
        h.update(repr(consts).encode())
    return f"{lab}:{h.hexdigest()}"


class ResultCache:
    """JSON documents keyed by a dict of fields (algorithm identity, input hash, options).

    Parameters
    ----------
    directory : path
        Where the files go (created on the first write).
    enabled : bool
        False: :meth:`get` always misses and :meth:`put` writes nothing.

    Examples
    --------
    >>> import tempfile
    >>> c = ResultCache(tempfile.mkdtemp())
    >>> c.get({"a": 1}) is None
    True
    >>> c.put({"a": 1}, {"out": [1, 2]})
    >>> c.get({"a": 1})
    {'out': [1, 2]}
    """

    VERSION = 1

    def __init__(self, directory: str | Path, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.enabled = enabled

    def _file(self, fields: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        key = {"cache_v": self.VERSION, **fields}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return self.directory / f"{digest}.json", json.loads(json.dumps(key, sort_keys=True, default=str))

    def get(self, fields: dict[str, Any]) -> Any:
        """The payload stored under ``fields``, or None."""
        if not self.enabled:
            return None
        path, key = self._file(fields)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key:
            return None
        return doc.get("payload")

    def put(self, fields: dict[str, Any], payload: Any) -> None:
        """Store ``payload`` (JSON-able) under ``fields`` (atomic replace)."""
        if not self.enabled:
            return
        path, key = self._file(fields)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "payload": payload}))
        os.replace(tmp, path)
