"""Research harness: run any QRS detector on a directory of WFDB records and score it (EC57).

A *detector* is any function ``f(signal, fs) -> R-peak sample indices`` where ``signal`` is a
1-D float64 array (one lead, physical units) and ``fs`` the sample rate in Hz.  It is named by
a spec string (:func:`resolve_detector`):

* ``telediag`` - the built-in detector (:func:`telediag.dsp.qrs.detect`);
* ``sleepecg``, ``neurokit2``, ``xqrs``, ``pan_tompkins`` - peers, when installed
  (``pip install sleepecg neurokit2 wfdb py-ecg-detectors``);
* ``package.module:function`` - an importable function;
* ``path/to/file.py:function`` - a function in a Python file;
* ``NAME`` - an entry point of the group ``telediag.harness`` declared by an installed
  package (``[project.entry-points."telediag.harness"] NAME = "package.module:function"``).

Scoring follows ANSI/AAMI EC57 beat-by-beat matching (150 ms window, test beats inside VF
episodes not counted as FP) with :mod:`telediag.evaluation.ec57`.  Detections are cached per
(detector identity and the hash of its source file, record contents, lead, length) as JSON
under ``~/.cache/telediag/harness``, so a re-run only re-reads the annotations; editing the
detector's source file changes the hash and invalidates its entries.

Examples
--------
>>> from telediag.evaluation.harness import evaluate          # doctest: +SKIP
>>> res = evaluate("telediag", "../shared/data/mitdb", names=["100", "101"],
...                max_seconds=120)                             # doctest: +SKIP
>>> round(res.gross.f1, 3)                                      # doctest: +SKIP
0.998
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from telediag.errors import ConfigError, DataError

from .ec57 import BeatScore, gross, match_beats, reference_beats, vf_intervals
from .harness_identity import algorithm_identity, dependency_files

__all__ = [
    "ENTRY_POINT_GROUP",
    "PEERS",
    "Detector",
    "HarnessResult",
    "default_cache_dir",
    "evaluate",
    "find_records",
    "load_function",
    "resolve_detector",
]

DetectorFn = Callable[[np.ndarray, float], Any]

#: Names of the peer detectors the harness knows (installed separately).
PEERS: tuple[str, ...] = ("sleepecg", "neurokit2", "xqrs", "pan_tompkins")

_CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Detector:
    """A detector function with a stable identity for caching.

    Attributes
    ----------
    name : str
        Short name shown in tables.
    fn : callable
        ``fn(signal: 1-D float64 ndarray, fs: float) -> array of R-peak sample indices``.
    identity : str
        Everything that determines its output: spec plus package version or the SHA-256 of
        its source file.  Changes whenever the detector's code changes.
    builtin : bool
        True for ``telediag`` (its input is passed as is, NaN included; other detectors get
        non-finite samples replaced by the last finite value).
    """

    name: str
    fn: DetectorFn
    identity: str
    builtin: bool = False


@dataclass(slots=True)
class HarnessResult:
    """Scores of one detector on a set of records.

    Attributes
    ----------
    detector : str
        Detector name.
    per_record : dict of str to BeatScore
        EC57 scores per record (VF episodes excluded from FP).
    f1 : dict of str to float
        Per-record F1 (shortcut for plots).
    cached : dict of str to bool
        Whether each record's detections came from the cache.
    seconds : float
        Signal duration scored (s), summed over records.
    compute_s : float
        Time spent inside the detector on cache misses (s).
    """

    detector: str
    per_record: dict[str, BeatScore] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    compute_s: float = 0.0
    computed_seconds: float = 0.0

    @property
    def gross(self) -> BeatScore:
        """Gross EC57 statistics (counts summed over records)."""
        return gross(self.per_record)

    @property
    def f1(self) -> dict[str, float]:
        """Per-record F1."""
        return {k: v.f1 for k, v in self.per_record.items()}

    @property
    def x_realtime(self) -> float:
        """Signal seconds processed per second of compute, over cache misses (NaN if none)."""
        return self.computed_seconds / self.compute_s if self.compute_s > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""

        def d(s: BeatScore) -> dict[str, Any]:
            return {"tp": s.tp, "fn": s.fn, "fp": s.fp, "se": s.se, "ppv": s.ppv, "f1": s.f1,
                    "mean_err_ms": s.mean_err_ms, "sd_err_ms": s.sd_err_ms}

        return {
            "detector": self.detector,
            "per_record": {k: d(v) for k, v in self.per_record.items()},
            "gross": d(self.gross),
            "cached": self.cached,
            "seconds": self.seconds,
            "compute_s": self.compute_s,
            "x_realtime": self.x_realtime,
        }


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/telediag/harness`` (``~/.cache/telediag/harness``).

    Examples
    --------
    >>> default_cache_dir().name
    'harness'
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "telediag" / "harness"


def _sha_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _as_beats(out: Any) -> NDArray[np.int64]:
    a = np.asarray(out)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iuf":
        raise DataError(f"a detector must return a 1-D array of sample indices, got shape {a.shape} dtype {a.dtype}")
    return np.sort(np.asarray(np.round(a), dtype=np.int64))


def _builtin() -> Detector:
    from telediag.dsp import qrs

    return Detector("telediag", qrs.detect, algorithm_identity(qrs.detect, "telediag"), builtin=True)


def _peer(name: str) -> Detector:
    hint = {"sleepecg": "pip install sleepecg", "neurokit2": "pip install neurokit2",
            "xqrs": "pip install wfdb", "pan_tompkins": "pip install py-ecg-detectors"}[name]
    try:
        if name == "sleepecg":
            import sleepecg

            def fn(x: np.ndarray, fs: float) -> Any:
                return sleepecg.detect_heartbeats(x, fs)

            ver = _version("sleepecg")
        elif name == "neurokit2":
            import neurokit2 as nk

            def fn(x: np.ndarray, fs: float) -> Any:
                _, info = nk.ecg_peaks(x, sampling_rate=int(round(fs)))
                return info["ECG_R_Peaks"]

            ver = _version("neurokit2")
        elif name == "xqrs":
            from wfdb import processing

            def fn(x: np.ndarray, fs: float) -> Any:
                return processing.xqrs_detect(x, fs=fs, verbose=False)

            ver = _version("wfdb")
        else:
            from ecgdetectors import Detectors

            def fn(x: np.ndarray, fs: float) -> Any:
                return Detectors(fs).pan_tompkins_detector(x)

            ver = _version("py-ecg-detectors")
    except ImportError as e:
        raise ConfigError(f"peer detector {name!r} is not installed ({hint}): {e}") from e
    return Detector(name, fn, f"peer:{name}:{ver}")


def _from_callable(fn: DetectorFn, name: str | None = None) -> Detector:
    mod = getattr(fn, "__module__", None) or "?"
    qual = getattr(fn, "__qualname__", None) or repr(fn)
    return Detector(name or qual, fn, algorithm_identity(fn, f"callable:{mod}:{qual}"))


#: Entry-point group under which installed packages may name harness plug-ins
#: (``[project.entry-points."telediag.harness"] my_qrs = "my_pkg.qrs:detect"``).
ENTRY_POINT_GROUP = "telediag.harness"


def _entry_point(name: str) -> str | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return str(ep.value)
    return None


#: Local source files each loaded spec depended on (to re-import them fresh next time).
_DEPS: dict[str, set[Path]] = {}


def _forget_local_modules(folders: set[Path]) -> None:
    """Drop user modules loaded from ``folders`` from ``sys.modules`` (re-imported fresh).

    So that a plug-in re-loaded in the same process runs the code its cache identity hashes
    (a helper edited since it was first imported).  telediag's own modules are kept.
    """
    if not folders:
        return
    for mname, m in list(sys.modules.items()):
        if m is None or mname == "__main__" or mname.split(".")[0] == "telediag":
            continue
        f = getattr(m, "__file__", None)
        if f and Path(f).resolve().parent in folders:
            del sys.modules[mname]


def load_function(spec: str, what: str = "detector") -> tuple[Callable[..., Any], str, str]:
    """Import the function named by ``"module:function"`` or ``"path/file.py:function"``.

    A file's folder is put on ``sys.path`` (so it can import its helper modules, as
    ``python file.py`` would) and helper modules already imported from that folder are
    imported afresh.  The identity is :func:`~telediag.evaluation.harness_identity.algorithm_identity`:
    it covers the file, its sibling and imported local modules and a ``version`` attribute.

    Parameters
    ----------
    spec : str
        ``"package.module:function"`` or ``"path/to/file.py:function"``.
    what : str
        Word used in error messages (``"detector"``, ``"classifier"``, ``"segmenter"``).

    Returns
    -------
    (function, name, identity)

    Raises
    ------
    telediag.errors.ConfigError
        Malformed spec, missing file or module, import error, or no such function.

    Examples
    --------
    >>> fn, name, ident = load_function("numpy:argmax")
    >>> name, ident.startswith("module:numpy:argmax:")
    ('numpy:argmax', True)
    """
    if ":" not in spec:
        target = _entry_point(spec)
        if target is None:
            raise ConfigError(f"{what} spec must be 'module:function', 'file.py:function' or the name of a "
                              f"{ENTRY_POINT_GROUP!r} entry point, got {spec!r}")
        ep_fn, _, ep_ident = load_function(target, what)
        return ep_fn, spec, ep_ident
    left, func = spec.rsplit(":", 1)
    if left.endswith(".py") or "/" in left or os.sep in left:
        path = Path(left).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{what} file {left!r} not found (spec {spec!r})")
        folder = str(path.parent)
        _forget_local_modules({path.parent} | {f.parent for f in _DEPS.get(spec, ())})
        if folder not in sys.path:
            sys.path.insert(0, folder)
        digest = _sha_file(path)
        mod_name = f"_telediag_harness_{digest[:16]}"
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        if mspec is None or mspec.loader is None:
            raise ConfigError(f"cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise ConfigError(f"importing {what} file {path} failed: {e}") from e
        label = f"file:{path.name}:{func}"
        name = f"{path.stem}:{func}"
    else:
        _forget_local_modules({f.parent for f in _DEPS.get(spec, ())})
        try:
            module = importlib.import_module(left)
        except ImportError as e:
            raise ConfigError(f"cannot import {what} module {left!r}: {e}") from e
        label = f"module:{left}:{func}"
        name = spec
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"{left!r} has no function {func!r} (spec {spec!r})")
    _DEPS[spec] = set(dependency_files(module))
    return fn, name, algorithm_identity(fn, label)


def resolve_detector(spec: str | DetectorFn | Detector) -> Detector:
    """Turn a detector spec into a :class:`Detector`.

    Parameters
    ----------
    spec : str, callable or Detector
        ``"telediag"``, a peer name (:data:`PEERS`), ``"module:function"``,
        ``"file.py:function"``, or a function ``f(signal, fs)`` itself.

    Raises
    ------
    telediag.errors.ConfigError
        Unknown name, module, file or function, or a peer that is not installed.

    Examples
    --------
    >>> resolve_detector("telediag").name
    'telediag'
    >>> resolve_detector("numpy:argmax").identity.startswith("module:numpy:argmax:")
    True
    """
    if isinstance(spec, Detector):
        return spec
    if callable(spec):
        return _from_callable(spec)
    if spec == "telediag":
        return _builtin()
    if spec in PEERS:
        return _peer(spec)
    if ":" not in spec and _entry_point(spec) is None:
        raise ConfigError(
            f"detector must be 'telediag', one of {', '.join(PEERS)}, 'module:function', "
            f"'file.py:function' or a {ENTRY_POINT_GROUP!r} entry point name, got {spec!r}"
        )
    fn, name, ident = load_function(spec, "detector")
    return Detector(name, fn, ident)


def find_records(directory: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """WFDB records (``.hea`` + ``.dat`` + ``.atr``) in ``directory``, as paths without extension.

    Parameters
    ----------
    directory : path
        Folder of WFDB records.
    names : sequence of str, optional
        Only these records (an error names any that is missing).

    Examples
    --------
    >>> find_records("/nonexistent")
    Traceback (most recent call last):
    ...
    telediag.errors.DataError: record directory /nonexistent does not exist
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"record directory {d} does not exist")
    have = sorted(
        h.stem for h in d.glob("*.hea") if (d / f"{h.stem}.dat").exists() and (d / f"{h.stem}.atr").exists()
    )
    if names is None:
        if not have:
            raise DataError(f"no WFDB records with .atr annotations in {d}")
        return [d / n for n in have]
    missing = [n for n in names if n not in have]
    if missing:
        raise DataError(f"records {missing} not found in {d} (need .hea, .dat and .atr)")
    return [d / n for n in names]


def _clean(x: np.ndarray) -> np.ndarray:
    """Replace non-finite samples by the last finite value (peers do not accept NaN)."""
    if np.all(np.isfinite(x)):
        return x
    bad = ~np.isfinite(x)
    idx = np.where(~bad, np.arange(x.size), 0)
    np.maximum.accumulate(idx, out=idx)
    y = x[idx]
    y[~np.isfinite(y)] = 0.0
    return y


def _record_hash(rec: Path) -> str:
    h = hashlib.sha256()
    for ext in ("hea", "dat", "atr"):
        h.update(_sha_file(rec.with_name(f"{rec.name}.{ext}")).encode())
    return h.hexdigest()


class _Progress:
    """A one-line progress bar on a terminal stream (silent when it is not a terminal)."""

    def __init__(self, total: int, label: str, stream: TextIO | None) -> None:
        self.total, self.label, self.stream, self.n = total, label, stream, 0
        self.on = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        self.t0 = time.monotonic()

    def step(self, item: str) -> None:
        self.n += 1
        if not self.on or self.stream is None:
            return
        width = 24
        done = int(width * self.n / max(self.total, 1))
        el = time.monotonic() - self.t0
        eta = el / self.n * (self.total - self.n)
        self.stream.write(f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} {item:<12}"
                          f" {el:5.0f} s, ETA {eta:4.0f} s")
        if self.n == self.total:
            self.stream.write("\n")
        self.stream.flush()


def evaluate(
    detector: str | DetectorFn | Detector,
    records: str | Path | Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    lead: int = 0,
    max_seconds: float | None = None,
    window_s: float = 0.15,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: TextIO | None = None,
) -> HarnessResult:
    """Run a QRS detector on WFDB records and score it beat by beat (EC57).

    Parameters
    ----------
    detector : str, callable or Detector
        See :func:`resolve_detector`; a function takes ``(signal: 1-D float64 ndarray,
        fs: float)`` and returns R-peak sample indices.
    records : path or sequence of paths
        A directory (every record with a ``.atr`` file, or those in ``names``) or record
        paths without extension.
    names : sequence of str, optional
        Record names when ``records`` is a directory.
    lead : int
        Channel scored (0 = first).
    max_seconds : float, optional
        Only the first ``max_seconds`` of each record (reference beats cut likewise).
    window_s : float
        EC57 match window (0.15 s).
    cache_dir : path, optional
        Detections cache (default :func:`default_cache_dir`).
    use_cache : bool
        Read and write the cache.
    progress : text stream, optional
        Draw a progress bar on this stream when it is a terminal (e.g. ``sys.stderr``).

    Returns
    -------
    HarnessResult

    Raises
    ------
    telediag.errors.DataError
        Missing records, or a detector returning something other than indices.
    telediag.errors.ConfigError
        An unknown detector spec.

    Examples
    --------
    >>> import numpy as np
    >>> def my_detector(x, fs):                                  # doctest: +SKIP
    ...     return np.flatnonzero((x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:]) & (x[1:-1] > 0.5)) + 1
    >>> evaluate(my_detector, "mitdb", names=["100"]).gross.f1   # doctest: +SKIP
    """
    det = resolve_detector(detector)
    if isinstance(records, str | Path):
        paths = find_records(records, names)
    else:
        paths = [Path(p) for p in records]
        if names is not None:
            raise ConfigError("names is only used when records is a directory")
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise ConfigError(f"max_seconds must be a positive number, got {max_seconds}")
    if lead < 0:
        raise ConfigError(f"lead must be >= 0, got {lead}")
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    from .wfdb_io import read_annotation, read_record

    res = HarnessResult(det.name)
    bar = _Progress(len(paths), det.name, progress)
    warmed = False
    for rec in paths:
        ann = read_annotation(rec, "atr")
        key_fields = {"v": _CACHE_VERSION, "detector": det.identity, "record": rec.name,
                      "record_sha256": _record_hash(rec), "lead": lead, "max_seconds": max_seconds}
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
        cfile = cdir / f"{key}.json"
        entry: dict[str, Any] | None = None
        if use_cache and cfile.is_file():
            try:
                entry = json.loads(cfile.read_text())
                if entry.get("key") != key_fields:
                    entry = None
            except (OSError, ValueError):
                entry = None
        if entry is not None:
            beats = np.asarray(entry["beats"], dtype=np.int64)
            fs, n = float(entry["fs"]), int(entry["n_samples"])
            res.cached[rec.name] = True
        else:
            r = read_record(rec, channel=lead)
            fs = r.fs
            x = r.signal if max_seconds is None else r.signal[: int(round(max_seconds * fs))]
            n = x.size
            if not det.builtin:
                x = _clean(x)
            if det.builtin and not warmed:
                det.fn(x[: min(n, int(10 * fs))], fs)  # compile/load Numba before timing
                warmed = True
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    out = det.fn(np.ascontiguousarray(x, dtype=np.float64), fs)
                except Exception as e:
                    raise DataError(f"detector {det.name} failed on record {rec.name}: {e}") from e
            dt = time.perf_counter() - t0
            beats = _as_beats(out)
            res.compute_s += dt
            res.computed_seconds += n / fs
            res.cached[rec.name] = False
            if use_cache:
                cdir.mkdir(parents=True, exist_ok=True)
                tmp = cfile.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({"key": key_fields, "beats": beats.tolist(), "fs": fs,
                                           "n_samples": n, "compute_s": dt}))
                os.replace(tmp, cfile)
        ref = reference_beats(ann)
        ref = ref[ref < n]
        vf = vf_intervals(ann, n)
        beats = beats[(beats >= 0) & (beats < n)]
        res.per_record[rec.name] = match_beats(ref, beats, fs, window_s=window_s, exclude=vf)
        res.seconds += n / fs
        bar.step(rec.name)
    return res
