"""Model registry: model cards, sha256-checked ONNX sessions and hot reload.

Models live in directories ``<root>/<name>/card.json`` plus the file the card names
(``file``, checked against ``sha256``).  Two roots are searched: the package's ``models/``
folder and a user directory (``$TELEDIAG_MODELS``, else ``~/.telediag/models``).  When both
hold a model of the same name, the higher card ``version`` wins; on a tie the user directory
wins (so a user can override a shipped model).

Loading (:meth:`ModelRegistry.get`) is lazy and strict: the file's sha256 must equal the
card's, and the card's input contract (names, ranks, fixed sizes, dtypes) must equal the ONNX
session's; otherwise :class:`telediag.errors.ModelError` names both sides.  A loaded model is
an immutable :class:`LoadedModel`; :meth:`ModelRegistry.reload` (or the watcher thread started
by :meth:`ModelRegistry.start_watching`, polling modification times) builds the new version
completely and then swaps a single reference under a lock, so requests already running finish
on the old session and new requests get the new one.  A new version that fails to load leaves
the old one in service and is reported in :meth:`ModelRegistry.list` (``reload_error``).

Examples
--------
>>> reg = ModelRegistry(roots=[])
>>> reg.list()
[]
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from telediag.errors import ModelError
from telediag.models.runtime import file_sha256

__all__ = ["CardInput", "LoadedModel", "ModelEntry", "ModelRegistry", "default_roots", "sha256_file"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(bool)": "bool",
}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks.

    Examples
    --------
    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"abc"); f.close()
    >>> sha256_file(f.name)[:12]
    'ba7816bf8f01'
    >>> os.unlink(f.name)
    """
    return file_sha256(path)


def default_roots() -> list[tuple[str, Path]]:
    """``[("package", <models/>), ("user", $TELEDIAG_MODELS or ~/.telediag/models)]``."""
    import telediag.models as pkg

    user = os.environ.get("TELEDIAG_MODELS")
    user_dir = Path(user) if user else Path.home() / ".telediag" / "models"
    return [("package", Path(pkg.__file__).resolve().parent), ("user", user_dir)]


def _version_key(v: Any) -> tuple[int, ...]:
    """Order card versions: ints, floats and dotted strings (``"1.2.0"``)."""
    if isinstance(v, bool):
        raise ValueError(f"version must be a number or dotted string, got {v!r}")
    if isinstance(v, int):
        return (v,)
    if isinstance(v, float) and math.isfinite(v):
        return tuple(int(p) for p in repr(v).split("."))
    if isinstance(v, str) and re.fullmatch(r"\d+(\.\d+)*", v.strip().lstrip("v")):
        return tuple(int(p) for p in v.strip().lstrip("v").split("."))
    raise ValueError(f"version must be a number or a dotted string like '1.2', got {v!r}")


@dataclass(frozen=True, slots=True)
class CardInput:
    """One input of a card's contract: ``shape`` items are ints (fixed) or str/None (dynamic)."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


def _card_inputs(card: dict[str, Any], key: str, where: str) -> list[CardInput]:
    raw = card.get(key)
    if raw is None:
        return []
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ModelError(f"{where}: '{key}' must be a list of {{name, shape, dtype}}, got {type(raw).__name__}")
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            raise ModelError(f"{where}: {key}[{i}] must be a map with a string 'name'")
        shape = it.get("shape")
        if not isinstance(shape, list) or not all(
            s is None or isinstance(s, str) or (isinstance(s, int) and not isinstance(s, bool) and s >= 0)
            for s in shape
        ):
            raise ModelError(f"{where}: {key}[{i}].shape must be a list of ints/names, got {shape!r}")
        dtype = it.get("dtype")
        if not isinstance(dtype, str):
            raise ModelError(f"{where}: {key}[{i}].dtype must be a string such as 'float32', got {dtype!r}")
        out.append(CardInput(it["name"], tuple(shape), str(np.dtype(dtype)) if dtype != "bool" else "bool"))
    return out


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model found on disk (its card read, its file not yet checked)."""

    name: str
    version: Any
    source: str
    directory: Path
    card: dict[str, Any]
    file: Path
    sha256: str
    fingerprint: tuple[float, int, float, int]

    def summary(self) -> dict[str, Any]:
        """The JSON summary used by ``models.list``."""
        keep = ("task", "classes", "inputs", "outputs", "licence", "metrics", "reproduce", "threshold")
        return {
            "name": self.name, "version": self.version, "source": self.source,
            "file": self.file.name, "sha256": self.sha256,
            "runtime": "onnx" if self.file.suffix == ".onnx" else "params",
            "card": {k: self.card[k] for k in keep if k in self.card},
        }


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A verified model ready to run: immutable, shared by the requests that took it."""

    entry: ModelEntry
    session: Any  # onnxruntime.InferenceSession, or None for non-ONNX model files
    inputs: tuple[CardInput, ...]
    output_names: tuple[str, ...]
    loaded_at: float = field(default_factory=time.time)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; ``feeds`` must name exactly the card's inputs.

        Raises
        ------
        ModelError
            Missing/unknown inputs, wrong rank/fixed size/dtype, or no session.
        """
        if self.session is None:
            raise ModelError(f"model {self.entry.name} ({self.entry.file.name}) is not an ONNX model")
        want = {i.name: i for i in self.inputs}
        if set(feeds) != set(want):
            raise ModelError(f"model {self.entry.name} takes inputs {sorted(want)}, got {sorted(feeds)}")
        conv: dict[str, np.ndarray] = {}
        for name, arr in feeds.items():
            ci = want[name]
            a = np.asarray(arr)
            if a.ndim != len(ci.shape):
                raise ModelError(f"input {name} must have {len(ci.shape)} dimensions {list(ci.shape)}, "
                                 f"got shape {list(a.shape)}")
            for k, (s, want_s) in enumerate(zip(a.shape, ci.shape, strict=True)):
                if isinstance(want_s, int) and s != want_s:
                    raise ModelError(f"input {name} dimension {k} must be {want_s}, got {s} "
                                     f"(shape {list(a.shape)})")
            if a.dtype.kind != np.dtype(ci.dtype).kind and not (a.dtype.kind in "iu" and ci.dtype.startswith("float")):
                raise ModelError(f"input {name} must be {ci.dtype}, got {a.dtype}")
            conv[name] = np.ascontiguousarray(a, dtype=ci.dtype)
        outs = self.session.run(None, conv)
        return {n: np.asarray(o) for n, o in zip(self.output_names, outs, strict=True)}


def _fingerprint(card_path: Path, file_path: Path) -> tuple[float, int, float, int]:
    c = card_path.stat()
    try:
        f = file_path.stat()
        return (c.st_mtime, c.st_size, f.st_mtime, f.st_size)
    except OSError:
        return (c.st_mtime, c.st_size, -1.0, -1)


def read_entry(directory: Path, source: str) -> ModelEntry:
    """Read ``directory/card.json`` into a :class:`ModelEntry` (no hashing yet).

    Raises
    ------
    ModelError
        Unreadable card, missing ``file``/``sha256``, bad name or version.
    """
    card_path = directory / "card.json"
    try:
        # NaN/Infinity are not JSON (RFC 8259): a card written with them (e.g. a PPV of 0/0)
        # is read with those values as null, so models.list never returns invalid JSON
        card = json.loads(card_path.read_text(encoding="utf-8"), parse_constant=lambda _c: None)
    except (OSError, ValueError) as e:
        raise ModelError(f"{card_path}: unreadable model card ({e})") from e
    if not isinstance(card, dict):
        raise ModelError(f"{card_path}: a model card must be a JSON object")
    name = card.get("name", directory.name)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ModelError(f"{card_path}: 'name' must match {_NAME_RE.pattern}, got {name!r}")
    for key in ("file", "sha256"):
        if not isinstance(card.get(key), str) or not card[key]:
            raise ModelError(f"{card_path}: '{key}' is required (a string)")
    version = card.get("version", 0)
    try:
        _version_key(version)
    except ValueError as e:
        raise ModelError(f"{card_path}: {e}") from e
    file = (directory / card["file"]).resolve()
    if directory.resolve() not in file.parents:
        raise ModelError(f"{card_path}: 'file' must stay inside {directory}, got {card['file']!r}")
    return ModelEntry(name, version, source, directory, card, file, card["sha256"].lower(),
                      _fingerprint(card_path, file))


def load_entry(entry: ModelEntry) -> LoadedModel:
    """Verify the sha256 and the input contract of ``entry`` and open its session.

    Raises
    ------
    ModelError
        Missing file, sha256 mismatch (both hashes named), or a contract mismatch.
    """
    if not entry.file.is_file():
        raise ModelError(f"model {entry.name}: file {entry.file} (from its card) does not exist")
    actual = sha256_file(entry.file)
    if actual != entry.sha256:
        raise ModelError(f"model {entry.name} v{entry.version}: sha256 of {entry.file.name} is {actual}, "
                         f"the card says {entry.sha256}; refusing to load it")
    where = str(entry.directory / "card.json")
    inputs = _card_inputs(entry.card, "inputs", where) or _card_inputs(entry.card, "input", where)
    if entry.file.suffix != ".onnx":
        return LoadedModel(entry, None, tuple(inputs), ())
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(entry.file), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"model {entry.name}: ONNX Runtime cannot load {entry.file.name} ({e})") from e
    sess_inputs = {i.name: i for i in sess.get_inputs()}
    if not inputs:
        raise ModelError(f"model {entry.name}: the card declares no 'inputs'; the session takes "
                         f"{[(i.name, i.shape, i.type) for i in sess.get_inputs()]}")
    if {i.name for i in inputs} != set(sess_inputs):
        raise ModelError(f"model {entry.name}: card inputs {sorted(i.name for i in inputs)} differ from the "
                         f"ONNX session's {sorted(sess_inputs)}")
    for ci in inputs:
        si = sess_inputs[ci.name]
        s_type = _ORT_TYPES.get(si.type, si.type)
        if s_type != ci.dtype:
            raise ModelError(f"model {entry.name}: input {ci.name} dtype is {ci.dtype} in the card, "
                             f"{s_type} in the ONNX file")
        s_shape = list(si.shape)
        if len(s_shape) != len(ci.shape):
            raise ModelError(f"model {entry.name}: input {ci.name} shape is {list(ci.shape)} in the card, "
                             f"{s_shape} in the ONNX file")
        for k, (a, b) in enumerate(zip(ci.shape, s_shape, strict=True)):
            fixed_a, fixed_b = isinstance(a, int), isinstance(b, int)
            if fixed_a != fixed_b or (fixed_a and a != b):
                raise ModelError(f"model {entry.name}: input {ci.name} dimension {k} is {a!r} in the card, "
                                 f"{b!r} in the ONNX file (shapes {list(ci.shape)} vs {s_shape})")
    return LoadedModel(entry, sess, tuple(inputs), tuple(o.name for o in sess.get_outputs()))


class ModelRegistry:
    """Models from a package directory and a user directory, loaded lazily, hot-reloaded.

    Parameters
    ----------
    roots : sequence of (source, path), optional
        Directories to scan in order (default :func:`default_roots`); later roots win ties.

    Examples
    --------
    >>> reg = ModelRegistry()
    >>> isinstance(reg.names(), list)
    True
    """

    def __init__(self, roots: Sequence[tuple[str, str | Path]] | None = None) -> None:
        self._roots = [(s, Path(p)) for s, p in (default_roots() if roots is None else roots)]
        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._scan_errors: dict[str, str] = {}
        self.reloads = 0
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.rescan()

    @property
    def roots(self) -> list[tuple[str, Path]]:
        return list(self._roots)

    def _scan(self) -> tuple[dict[str, ModelEntry], dict[str, str]]:
        found: dict[str, ModelEntry] = {}
        errors: dict[str, str] = {}
        for source, root in self._roots:
            if not root.is_dir():
                continue
            for card in sorted(root.glob("*/card.json")):
                try:
                    e = read_entry(card.parent, source)
                except ModelError as err:
                    errors[str(card)] = str(err)
                    continue
                old = found.get(e.name)
                if old is None or _version_key(e.version) >= _version_key(old.version):
                    found[e.name] = e
        return found, errors

    def rescan(self) -> list[str]:
        """Re-read the cards; return the names whose entry changed (new version, new file).

        Loaded models whose entry changed are reloaded (:meth:`reload`); others stay lazy.
        """
        found, errors = self._scan()
        with self._lock:
            changed = [n for n, e in found.items()
                       if n not in self._entries or self._entries[n] != e]
            removed = [n for n in self._entries if n not in found]
            self._entries = found
            self._scan_errors = errors
            loaded = set(self._loaded)
            for n in removed:
                self._loaded.pop(n, None)
        for n in changed:
            if n in loaded:
                self._load_and_swap(n, found[n])
        return changed + removed

    def reload(self) -> list[str]:
        """Rescan and hot-swap every loaded model whose card or file changed."""
        return self.rescan()

    def _load_and_swap(self, name: str, entry: ModelEntry) -> LoadedModel | None:
        try:
            new = load_entry(entry)
        except ModelError as e:
            with self._lock:
                self._errors[name] = str(e)
            return None
        with self._lock:
            if self._entries.get(name) == entry:
                self._loaded[name] = new  # the atomic swap: one reference
                self._errors.pop(name, None)
                self.reloads += 1
        return new

    def names(self) -> list[str]:
        """Names of every model found (loaded or not)."""
        with self._lock:
            return sorted(self._entries)

    def entry(self, name: str) -> ModelEntry:
        """The current card entry of ``name`` (KeyError when there is none)."""
        with self._lock:
            return self._entries[name]

    def get(self, name: str) -> LoadedModel:
        """The current verified model ``name``, loading it on first use.

        Raises
        ------
        KeyError
            No model of that name.
        ModelError
            The model exists but was refused (hash, contract, unreadable file).
        """
        with self._lock:
            m = self._loaded.get(name)
            entry = self._entries[name]
        if m is not None:
            return m
        new = load_entry(entry)  # raises ModelError; concurrent first loads are harmless
        with self._lock:
            cur = self._loaded.get(name)
            if cur is not None:
                return cur
            self._loaded[name] = new
            self._errors.pop(name, None)
            return new

    def list(self) -> list[dict[str, Any]]:
        """Summaries of every model (card fields, ``loaded``, ``reload_error``) and bad cards."""
        with self._lock:
            out = []
            for n in sorted(self._entries):
                s = self._entries[n].summary()
                cur = self._loaded.get(n)
                s["loaded"] = cur is not None
                s["loaded_version"] = None if cur is None else cur.entry.version
                s["reload_error"] = self._errors.get(n)
                out.append(s)
            for path, err in sorted(self._scan_errors.items()):
                out.append({"name": Path(path).parent.name, "card_error": err})
            return out

    def start_watching(self, interval_s: float = 2.0) -> None:
        """Poll card/file modification times every ``interval_s`` in a daemon thread."""
        if self._watcher is not None:
            return
        self._watch_stop.clear()

        def loop() -> None:
            while not self._watch_stop.wait(interval_s):
                try:
                    self.rescan()
                except Exception:  # noqa: BLE001 - a bad card must never kill the watcher
                    continue

        self._watcher = threading.Thread(target=loop, name="telediag-model-watch", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        """Stop the watcher thread (if any)."""
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
