"""ONNX Runtime session wrapper with a checked input contract, and a non-threaded micro-batcher.

:class:`OnnxModel` loads a model file on the CPU, verifies its SHA-256 against the model card
and the card's input contract (names, ranks, fixed dimensions, dtypes) against the graph, and
checks every call's inputs before running, so a wrong array fails with a
:class:`telediag.errors.ModelError` that names the input, the expected and the actual value.

:class:`MicroBatcher` collects single-item requests from one or many streams and runs them
as one batch.  It owns no thread and never sleeps: the engine's scheduler calls
:meth:`MicroBatcher.submit` as beats become ready, asks :meth:`MicroBatcher.ready` with its
clock, and calls :meth:`MicroBatcher.flush` (STYLE.md rule 5: scheduling lives in
``engine/``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.errors import ModelError

__all__ = ["InputSpec", "MicroBatcher", "OnnxModel", "Ticket", "file_sha256", "load_card"]

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    >>> os.unlink(f.name)
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_card(path: str | Path) -> dict[str, Any]:
    """Read a ``card.json`` model card.

    Raises
    ------
    telediag.errors.ModelError
        Missing or malformed card.
    """
    p = Path(path)
    try:
        card = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read model card {p}: {e}") from e
    if not isinstance(card, dict):
        raise ModelError(f"model card {p} must hold a JSON object, got {type(card).__name__}")
    return card


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input: name, shape (``None`` = any size, e.g. the batch axis), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def check(self, x: Any) -> NDArray[Any]:
        """Return ``x`` as a C-contiguous array, or raise :class:`ModelError`."""
        if not isinstance(x, np.ndarray):
            raise ModelError(
                f"input {self.name!r} must be a numpy array of {self.dtype}, "
                f"got {type(x).__name__}"
            )
        if x.dtype != np.dtype(self.dtype):
            raise ModelError(f"input {self.name!r} must have dtype {self.dtype}, got {x.dtype}")
        want = tuple("batch" if d is None else d for d in self.shape)
        if x.ndim != len(self.shape) or any(
            d is not None and d != s for d, s in zip(self.shape, x.shape, strict=True)
        ):
            raise ModelError(f"input {self.name!r} must have shape {want}, got {x.shape}")
        return np.ascontiguousarray(x)


def _card_inputs(card: Mapping[str, Any]) -> list[InputSpec]:
    try:
        return [
            InputSpec(
                str(i["name"]),
                tuple(d if isinstance(d, int) else None for d in i["shape"]),
                str(i["dtype"]),
            )
            for i in card["inputs"]
        ]
    except (KeyError, TypeError) as e:
        raise ModelError(f"model card has a malformed 'inputs' entry: {e!r}") from e


class OnnxModel:
    """An ONNX Runtime CPU session with a verified file and input contract.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    card : mapping, str or Path, optional
        The model card (dict or path to ``card.json``).  When given, the file's SHA-256 must
        equal the card's (``sha256``, or ``variants[*].sha256`` of the entry whose ``file``
        is this file's name) and the card's ``inputs`` must match the graph.
    intra_op_threads, inter_op_threads : int
        ONNX Runtime thread pools (1 and 1: the engine scales by workers, not threads).

    Raises
    ------
    telediag.errors.ModelError
        Missing file, unreadable model, SHA-256 mismatch, or a card contract that does not
        match the graph.

    Examples
    --------
    >>> from telediag.models.ecg_beats import MODEL_DIR
    >>> m = OnnxModel(MODEL_DIR / "ecg_beats.onnx", card=MODEL_DIR / "card.json")
    >>> [i.name for i in m.inputs]
    ['morph', 'rr']
    """

    def __init__(
        self,
        path: str | Path,
        *,
        card: Mapping[str, Any] | str | Path | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        for name, v in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelError(f"{name} must be an int >= 1, got {v!r}")
        self.card: dict[str, Any] | None = (
            load_card(card) if isinstance(card, str | Path) else (dict(card) if card else None)
        )
        self.sha256 = file_sha256(self.path)
        if self.card is not None:
            want = self._card_sha()
            if want != self.sha256:
                raise ModelError(
                    f"sha256 of {self.path.name} does not match its model card: "
                    f"expected {want}, got {self.sha256}"
                )
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._sess = ort.InferenceSession(
                str(self.path), so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load ONNX model {self.path}: {e}") from e
        graph = [
            InputSpec(
                i.name,
                tuple(d if isinstance(d, int) else None for d in i.shape),
                _DTYPES.get(i.type, i.type),
            )
            for i in self._sess.get_inputs()
        ]
        if self.card is not None:
            declared = _card_inputs(self.card)
            if [(s.name, s.shape, s.dtype) for s in declared] != [
                (s.name, s.shape, s.dtype) for s in graph
            ]:
                raise ModelError(
                    f"input contract of {self.path.name} does not match its card: card "
                    f"{[(s.name, s.shape, s.dtype) for s in declared]}, graph "
                    f"{[(s.name, s.shape, s.dtype) for s in graph]}"
                )
        self.inputs: tuple[InputSpec, ...] = tuple(graph)
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._sess.get_outputs())

    def _card_sha(self) -> str:
        assert self.card is not None
        for v in (self.card.get("variants") or {}).values():
            if isinstance(v, dict) and v.get("file") == self.path.name:
                return str(v.get("sha256"))
        if self.card.get("file", self.path.name) == self.path.name and "sha256" in self.card:
            return str(self.card["sha256"])
        raise ModelError(f"model card lists no sha256 for {self.path.name}")

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
        """Validate an input dict against the contract (names, shapes, dtypes, same batch)."""
        if not isinstance(inputs, Mapping):
            raise ModelError(f"inputs must be a dict of arrays, got {type(inputs).__name__}")
        names = {s.name for s in self.inputs}
        if set(inputs) != names:
            raise ModelError(
                f"inputs must be exactly {sorted(names)}, got {sorted(map(str, inputs))}"
            )
        out = {s.name: s.check(inputs[s.name]) for s in self.inputs}
        batches = {a.shape[0] for a in out.values() if a.ndim}
        if len(batches) > 1:
            raise ModelError(f"inputs disagree on the batch size: {sorted(batches)}")
        return out

    def run(self, inputs: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
        """Run the model on a validated batch; returns ``{output_name: array}``."""
        feed = self.check_inputs(inputs)
        outs = self._sess.run(list(self.output_names), feed)
        return dict(zip(self.output_names, outs, strict=True))

    def warmup(self, batch: int = 1) -> None:
        """Run once on zeros (allocates ONNX Runtime's buffers before real-time use)."""
        feed = {
            s.name: np.zeros(tuple(batch if d is None else d for d in s.shape), s.dtype)
            for s in self.inputs
        }
        self._sess.run(list(self.output_names), feed)


@dataclass(frozen=True, slots=True)
class Ticket:
    """Handle of one submitted item: the stream key and a sequence number."""

    key: Hashable
    seq: int


class MicroBatcher:
    """Batch single items from many streams into one model call, without threads.

    Parameters
    ----------
    model : OnnxModel
        The model; every submitted item is one row of each input (no batch axis).
    max_batch : int
        :meth:`ready` is true once this many items wait.
    max_wait_s : float
        ... or once the oldest waiting item has waited this long.
    clock : callable, optional
        Time source for submission stamps (default :func:`time.monotonic`); :meth:`ready`
        takes ``now`` from the caller's clock, which must be the same.

    Examples
    --------
    >>> from telediag.models.ecg_beats import MODEL_DIR
    >>> m = OnnxModel(MODEL_DIR / "ecg_beats.onnx")
    >>> mb = MicroBatcher(m, max_batch=2, max_wait_s=0.005)
    >>> n_rr = m.inputs[1].shape[1]
    >>> t1 = mb.submit("bed-1", {"morph": np.zeros((2, 96), np.float32),
    ...                          "rr": np.ones(n_rr, np.float32)})
    >>> mb.ready(now=0.0)
    False
    >>> out = mb.flush()
    >>> out[t1]["probs"].shape
    (5,)
    """

    def __init__(
        self,
        model: OnnxModel,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ModelError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not (isinstance(max_wait_s, int | float) and max_wait_s >= 0):
            raise ModelError(f"max_wait_s must be a number >= 0, got {max_wait_s!r}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_s)
        self._clock = clock
        self._items: list[tuple[Ticket, dict[str, NDArray[Any]]]] = []
        self._oldest = 0.0
        self._seq = 0
        self._row_specs = [
            InputSpec(s.name, s.shape[1:], s.dtype) for s in model.inputs
        ]
        self.batches_run = 0
        self.items_run = 0

    def __len__(self) -> int:
        return len(self._items)

    def submit(self, key: Hashable, x: Mapping[str, Any]) -> Ticket:
        """Queue one item (a dict of per-item arrays, without the batch axis); O(1).

        Raises
        ------
        telediag.errors.ModelError
            Wrong input names, shapes or dtypes (checked now, so one bad item never spoils a
            batch).
        """
        if not isinstance(x, Mapping) or set(x) != {s.name for s in self._row_specs}:
            got = sorted(map(str, x)) if isinstance(x, Mapping) else type(x).__name__
            raise ModelError(
                f"item must be a dict with keys {[s.name for s in self._row_specs]}, got {got}"
            )
        item = {s.name: s.check(x[s.name]) for s in self._row_specs}
        t = Ticket(key, self._seq)
        self._seq += 1
        if not self._items:
            self._oldest = self._clock()
        self._items.append((t, item))
        return t

    def ready(self, now: float | None = None) -> bool:
        """True when a batch should run: ``max_batch`` items, or the oldest is ``max_wait_s`` old."""
        if not self._items:
            return False
        if len(self._items) >= self.max_batch:
            return True
        t = self._clock() if now is None else now
        return t - self._oldest >= self.max_wait_s

    def flush(self) -> dict[Ticket, dict[str, NDArray[Any]]]:
        """Run every queued item (in batches of at most ``max_batch``); ``{ticket: outputs}``."""
        out: dict[Ticket, dict[str, NDArray[Any]]] = {}
        items, self._items = self._items, []
        for s in range(0, len(items), self.max_batch):
            chunk = items[s : s + self.max_batch]
            feed = {
                spec.name: np.stack([it[spec.name] for _, it in chunk])
                for spec in self._row_specs
            }
            res = self.model.run(feed)
            self.batches_run += 1
            self.items_run += len(chunk)
            for i, (t, _) in enumerate(chunk):
                out[t] = {k: v[i] for k, v in res.items()}
        return out
