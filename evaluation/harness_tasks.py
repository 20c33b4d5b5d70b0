"""Research harness beyond QRS detection: beat classifiers, heart-sound and polyp segmenters.

Each task scores a plug-in function on a folder of annotated data, per item and gross, next to
the built-in algorithm (spec ``"telediag"``).  A plug-in is named ``"package.module:function"``,
``"path/to/file.py:function"`` or by an entry point of the group ``telediag.harness`` (or passed
as a function); results are cached per
(algorithm version, input content, options), see :mod:`telediag.evaluation.harness_identity`.

``beats`` - beat classifiers on WFDB records (``.hea``/``.dat``/``.atr``)
    ``f(signal: 1-D float64 ndarray, fs: float, beats: 1-D int64 ndarray) -> labels``: one
    label per beat, an AAMI class ``"N"``, ``"S"``, ``"V"``, ``"F"``, ``"Q"`` (or its index
    0-4).  ``beats`` are the *reference* beat positions (samples) of the record's ``.atr``
    annotations that map to an AAMI class (so the classifier is scored alone, not the
    detector).  Scored with EC57 class statistics: a 5x5 confusion matrix (rows reference,
    columns predicted) and VEB / SVEB Se, +P, F1 with the AAMI conventions of de Chazal et
    al. 2004 (IEEE TBME 51(7), Table III): VEB TP = Vv, FN = V classified otherwise,
    FP = Nv + Sv (fusion and unclassifiable beats called V are not errors); SVEB TP = Ss,
    FN = S classified otherwise, FP = Ns + Vs + Fs.  Built-in: the ONNX classifier of
    :mod:`telediag.models.ecg_beats` (MLII lead by default).
``pcg-seg`` - heart-sound segmenters on WAV files with PhysioNet/CinC 2016 annotations
    ``f(audio: 1-D float64 ndarray in [-1, 1], fs: int) -> segments``: a sequence of
    ``(start_s, end_s, state)`` (or objects with ``start``, ``end``, ``state`` attributes, or
    dicts with those keys), ``state`` one of ``"S1"``, ``"systole"``, ``"S2"``,
    ``"diastole"`` (or 0-3).  Every ``<name>.wav`` under the data folder with a
    ``<name>_StateAns.mat`` under it (the ``pcg2016`` layout: ``training-a/a0001.wav`` and
    ``annotations/training-a_StateAns/a0001_StateAns.mat``) is scored: S1 and S2 centres
    matched one-to-one within +-60 ms (Springer et al. 2016), Se, +P, F1 per record and gross
    (:mod:`telediag.evaluation.pcg_seg`).  Built-in: :func:`telediag.dsp.pcg.segment`.
``polyp`` - image segmenters on a folder ``images/`` + ``masks/`` (Kvasir-SEG layout)
    ``f(rgb: (H, W, 3) uint8 ndarray) -> mask``: ``(H, W)`` bool (a float map is thresholded
    at 0.5; an object with a ``mask`` attribute works too).  Dice and IoU per image and their
    means over images (:mod:`telediag.evaluation.seg_metrics`).  Built-in:
    :class:`telediag.models.polyp_seg.PolypSegmenter`.

Examples
--------
>>> from telediag.evaluation.harness_tasks import evaluate_task     # doctest: +SKIP
>>> r = evaluate_task("beats", "my_cls.py:classify", "../shared/data/mitdb",
...                   names=["119", "208"], max_seconds=300)        # doctest: +SKIP
>>> r.gross.veb.f1                                                  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from telediag.errors import ConfigError, DataError

from .ec57 import DetectionRates
from .harness import _clean, _Progress, default_cache_dir, find_records, load_function
from .harness_identity import ResultCache, algorithm_identity, file_sha256

__all__ = [
    "AAMI",
    "TASKS",
    "ClassScore",
    "Counts",
    "PcgScore",
    "Plugin",
    "SegScore",
    "TaskResult",
    "builtin_beat_classifier",
    "builtin_pcg_segmenter",
    "builtin_polyp_segmenter",
    "class_score",
    "evaluate_task",
    "find_images",
    "find_wavs",
    "resolve_plugin",
]

#: Harness tasks (``qrs`` is :func:`telediag.evaluation.harness.evaluate`).
TASKS: tuple[str, ...] = ("qrs", "beats", "pcg-seg", "polyp")
#: AAMI beat classes, in the confusion matrix's order.
AAMI: tuple[str, ...] = ("N", "S", "V", "F", "Q")
_STATES = ("S1", "systole", "S2", "diastole")


# ----------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counts(DetectionRates):
    """TP / FN / FP of one event class, with Se, +P and F1 (NaN when undefined).

    Examples
    --------
    >>> c = Counts(8, 2, 0)
    >>> round(c.se, 2), c.ppv, round(c.f1, 3)
    (0.8, 1.0, 0.889)
    """

    tp: int
    fn: int
    fp: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and rates."""
        return {"tp": self.tp, "fn": self.fn, "fp": self.fp, "se": self.se, "ppv": self.ppv, "f1": self.f1}


@dataclass(frozen=True, slots=True)
class ClassScore:
    """AAMI beat classification of one record (or gross): the confusion matrix and EC57 stats.

    Attributes
    ----------
    cm : ndarray, shape (5, 5)
        ``cm[i, j]`` = beats of reference class ``AAMI[i]`` labelled ``AAMI[j]``.

    Examples
    --------
    >>> s = class_score(["N", "N", "V", "S", "F"], ["N", "V", "V", "N", "V"])
    >>> (s.veb.tp, s.veb.fn, s.veb.fp), (s.sveb.tp, s.sveb.fn, s.sveb.fp)
    ((1, 0, 1), (0, 1, 0))
    """

    cm: NDArray[np.int64]

    @property
    def n(self) -> int:
        """Beats scored."""
        return int(self.cm.sum())

    @property
    def accuracy(self) -> float:
        """Fraction of beats given their reference class."""
        return float(np.trace(self.cm) / self.n) if self.n else math.nan

    @property
    def veb(self) -> Counts:
        """Ventricular ectopic beats: TP Vv, FN V->(n, s, f, q), FP Nv + Sv (de Chazal 2004)."""
        c = self.cm
        return Counts(int(c[2, 2]), int(c[2].sum() - c[2, 2]), int(c[0, 2] + c[1, 2]))

    @property
    def sveb(self) -> Counts:
        """Supraventricular ectopic beats: TP Ss, FN S->(n, v, f, q), FP Ns + Vs + Fs."""
        c = self.cm
        return Counts(int(c[1, 1]), int(c[1].sum() - c[1, 1]), int(c[0, 1] + c[2, 1] + c[3, 1]))

    def per_class(self) -> dict[str, Counts]:
        """Plain one-vs-rest counts per class (every off-diagonal cell is an error)."""
        c = self.cm
        return {k: Counts(int(c[i, i]), int(c[i].sum() - c[i, i]), int(c[:, i].sum() - c[i, i]))
                for i, k in enumerate(AAMI)}

    def __add__(self, other: ClassScore) -> ClassScore:
        return ClassScore(self.cm + other.cm)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready matrix and statistics."""
        return {"n": self.n, "accuracy": self.accuracy, "veb": self.veb.to_dict(),
                "sveb": self.sveb.to_dict(), "confusion": self.cm.tolist(),
                "per_class": {k: v.to_dict() for k, v in self.per_class().items()}}


def _label_index(labels: Any, n: int) -> NDArray[np.int64]:
    a = np.asarray(labels)
    if a.ndim != 1 or a.size != n:
        raise DataError(f"a beat classifier must return one label per beat ({n}), got shape {a.shape}")
    if n == 0:
        return np.zeros(0, np.int64)
    if a.dtype.kind in "iu":
        out = a.astype(np.int64)
        if out.min() < 0 or out.max() >= len(AAMI):
            raise DataError(f"integer beat labels must be 0-4 (indices of {AAMI}), got {out.min()}..{out.max()}")
        return out
    if a.dtype.kind in "UO":
        lut = {k: i for i, k in enumerate(AAMI)}
        try:
            return np.asarray([lut[str(x).strip().upper()] for x in a.tolist()], np.int64)
        except KeyError as e:
            raise DataError(f"beat labels must be one of {AAMI}, got {e.args[0]!r}") from e
    raise DataError(f"beat labels must be strings {AAMI} or integers 0-4, got dtype {a.dtype}")


def class_score(reference: Any, predicted: Any) -> ClassScore:
    """Confusion matrix of AAMI labels (strings ``N S V F Q`` or indices 0-4).

    Examples
    --------
    >>> class_score([0, 1, 2], ["N", "S", "N"]).cm[2].tolist()
    [1, 0, 0, 0, 0]
    """
    r = _label_index(reference, len(reference))
    p = _label_index(predicted, r.size)
    cm = np.zeros((len(AAMI), len(AAMI)), np.int64)
    np.add.at(cm, (r, p), 1)
    return ClassScore(cm)


@dataclass(frozen=True, slots=True)
class PcgScore:
    """S1 and S2 event matching of one recording (or gross).

    Examples
    --------
    >>> (PcgScore(Counts(9, 1, 0), Counts(8, 2, 1)) + PcgScore(Counts(1, 0, 0), Counts(0, 0, 0))).s1.tp
    10
    """

    s1: Counts
    s2: Counts

    def __add__(self, other: PcgScore) -> PcgScore:
        def add(a: Counts, b: Counts) -> Counts:
            return Counts(a.tp + b.tp, a.fn + b.fn, a.fp + b.fp)

        return PcgScore(add(self.s1, other.s1), add(self.s2, other.s2))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and rates."""
        return {"s1": self.s1.to_dict(), "s2": self.s2.to_dict()}


@dataclass(frozen=True, slots=True)
class SegScore:
    """Dice and IoU summed over images (the gross is the mean over images).

    Examples
    --------
    >>> g = SegScore(0.8, 0.7, 1) + SegScore(0.6, 0.5, 1)
    >>> round(g.dice, 3), round(g.iou, 3)
    (0.7, 0.6)
    """

    dice_sum: float
    iou_sum: float
    n: int

    @property
    def dice(self) -> float:
        """Mean Dice over images."""
        return self.dice_sum / self.n if self.n else math.nan

    @property
    def iou(self) -> float:
        """Mean IoU over images."""
        return self.iou_sum / self.n if self.n else math.nan

    def __add__(self, other: SegScore) -> SegScore:
        return SegScore(self.dice_sum + other.dice_sum, self.iou_sum + other.iou_sum, self.n + other.n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mean Dice and IoU."""
        return {"n": self.n, "dice": self.dice, "iou": self.iou}


_ZERO: dict[str, Any] = {
    "beats": lambda: ClassScore(np.zeros((len(AAMI), len(AAMI)), np.int64)),
    "pcg-seg": lambda: PcgScore(Counts(0, 0, 0), Counts(0, 0, 0)),
    "polyp": lambda: SegScore(0.0, 0.0, 0),
}


@dataclass(slots=True)
class TaskResult:
    """Scores of one algorithm on one task.

    Attributes
    ----------
    task : str
        ``"beats"``, ``"pcg-seg"`` or ``"polyp"``.
    algorithm : str
        Plug-in name (``"telediag"`` for the built-in).
    per_item : dict
        Score per record / image (:class:`ClassScore`, :class:`PcgScore`, :class:`SegScore`).
    cached : dict of str to bool
        Whether each item's output came from the cache.
    compute_s : float
        Seconds inside the algorithm on cache misses.
    notes : list of str
        Caveats (e.g. the built-in model was trained on these records).
    """

    task: str
    algorithm: str
    per_item: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    compute_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def gross(self) -> Any:
        """Gross score: counts summed over items (for ``polyp``: means over images)."""
        total = _ZERO[self.task]()
        for s in self.per_item.values():
            total = total + s
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"task": self.task, "algorithm": self.algorithm,
                "per_item": {k: v.to_dict() for k, v in self.per_item.items()},
                "gross": self.gross.to_dict(), "cached": self.cached,
                "compute_s": self.compute_s, "notes": self.notes}


# ----------------------------------------------------------------------------------------
# Built-in algorithms
# ----------------------------------------------------------------------------------------
_MODELS: dict[str, Any] = {}


def builtin_beat_classifier(signal: NDArray[np.float64], fs: float, beats: NDArray[np.int64]) -> list[str]:
    """The shipped AAMI beat classifier (:mod:`telediag.models.ecg_beats`, fp32).

    Examples
    --------
    >>> fs = 360.0
    >>> t = np.arange(int(8 * fs)) / fs
    >>> ecg = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.012 ** 2))
    >>> beats = np.round((np.arange(10) * 0.8 + 0.4) * fs).astype(np.int64)
    >>> len(builtin_beat_classifier(ecg, fs, beats))
    10
    """
    from telediag.models.ecg_beats import AAMI_CLASSES, BeatClassifier

    clf = _MODELS.get("beats")
    if clf is None:
        clf = _MODELS["beats"] = BeatClassifier.load()
    idx, _ = clf.classify(clf.features(signal, fs, beats))
    return [AAMI_CLASSES[int(i)] for i in idx]


def builtin_pcg_segmenter(audio: NDArray[np.float64], fs: int) -> list[tuple[float, float, str]]:
    """The shipped heart-sound segmenter (:func:`telediag.dsp.pcg.segment`, trained params).

    Examples
    --------
    >>> builtin_pcg_segmenter(np.zeros(4000), 2000)
    []
    """
    from telediag.dsp.pcg import segment

    return [(s.start, s.end, s.state) for s in segment(audio, fs)]


def builtin_polyp_segmenter(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """The shipped polyp segmenter's mask (:class:`telediag.models.polyp_seg.PolypSegmenter`).

    Examples
    --------
    >>> builtin_polyp_segmenter(np.zeros((64, 80, 3), np.uint8)).shape
    (64, 80)
    """
    from telediag.models.polyp_seg import PolypSegmenter

    seg = _MODELS.get("polyp")
    if seg is None:
        seg = _MODELS["polyp"] = PolypSegmenter(threads=1).load()
    return np.asarray(seg.predict(rgb).mask, dtype=bool)


def _model_files(sub: str) -> list[str]:
    """Checksums of a shipped model folder's data files (weights, cards, params)."""
    from telediag import models

    d = Path(models.__file__).resolve().parent / sub
    return [f"{p.name}={file_sha256(p)}" for p in sorted(d.glob("*"))
            if p.is_file() and p.suffix in (".onnx", ".json", ".py")]


_BUILTINS: dict[str, tuple[Callable[..., Any], str]] = {
    "beats": (builtin_beat_classifier, "ecg_beats"),
    "pcg-seg": (builtin_pcg_segmenter, "pcg_segmentation"),
    "polyp": (builtin_polyp_segmenter, "polyp_seg"),
}


@dataclass(frozen=True, slots=True)
class Plugin:
    """A plug-in function with its name and algorithm version (cache identity)."""

    name: str
    fn: Callable[..., Any]
    identity: str
    builtin: bool = False


def resolve_plugin(task: str, spec: str | Callable[..., Any] | Plugin) -> Plugin:
    """Turn ``"telediag"``, ``"module:function"``, ``"file.py:function"`` or a function into a Plugin.

    Raises
    ------
    telediag.errors.ConfigError
        Unknown task, bad spec, import failure or missing function.

    Examples
    --------
    >>> resolve_plugin("polyp", "telediag").builtin
    True
    """
    if task not in _BUILTINS:
        raise ConfigError(f"task must be one of {', '.join(t for t in TASKS if t != 'qrs')}, got {task!r}")
    if isinstance(spec, Plugin):
        return spec
    if callable(spec):
        name = getattr(spec, "__qualname__", None) or repr(spec)
        return Plugin(name, spec, algorithm_identity(spec))
    if spec == "telediag":
        fn, sub = _BUILTINS[task]
        return Plugin("telediag", fn, algorithm_identity(fn, f"telediag:{task}", _model_files(sub)), True)
    what = {"beats": "classifier", "pcg-seg": "segmenter", "polyp": "segmenter"}[task]
    fn, name, ident = load_function(spec, what)
    return Plugin(name, fn, ident)


# ----------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Item:
    name: str
    inputs: tuple[Path, ...]  # files whose content is the algorithm's input (cache key)
    truth: Path


def _select(items: list[_Item], names: Sequence[str] | None, limit: int | None, where: Path) -> list[_Item]:
    if names is not None:
        by = {i.name: i for i in items}
        missing = [n for n in names if n not in by]
        if missing:
            raise DataError(f"{missing} not found in {where}")
        items = [by[n] for n in names]
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        items = items[:limit]
    if not items:
        raise DataError(f"nothing to score in {where}")
    return items


def find_wavs(directory: str | Path, names: Sequence[str] | None = None,
              limit: int | None = None) -> list[tuple[str, Path, Path]]:
    """``(name, wav, annotation)`` for every ``<name>.wav`` with a ``<name>_StateAns.mat`` under it.

    Examples
    --------
    >>> find_wavs("/nonexistent")
    Traceback (most recent call last):
    ...
    telediag.errors.DataError: heart-sound folder /nonexistent does not exist
    """
    return [(i.name, i.inputs[0], i.truth) for i in _wav_items(Path(directory), names, limit)]


def _wav_items(d: Path, names: Sequence[str] | None, limit: int | None) -> list[_Item]:
    if not d.is_dir():
        raise DataError(f"heart-sound folder {d} does not exist")
    anns = {p.name[: -len("_StateAns.mat")]: p for p in d.rglob("*_StateAns.mat")}
    items = [_Item(w.stem, (w,), anns[w.stem]) for w in sorted(d.rglob("*.wav"), key=lambda p: p.stem)
             if w.stem in anns]
    return _select(items, names, limit, d)


def find_images(directory: str | Path, names: Sequence[str] | None = None,
                limit: int | None = None) -> list[tuple[str, Path, Path]]:
    """``(name, image, mask)`` for every file of ``images/`` with a same-named file in ``masks/``.

    Examples
    --------
    >>> find_images("/nonexistent")
    Traceback (most recent call last):
    ...
    telediag.errors.DataError: no images/ and masks/ folders in /nonexistent
    """
    return [(i.name, i.inputs[0], i.truth) for i in _image_items(Path(directory), names, limit)]


def _image_items(d: Path, names: Sequence[str] | None, limit: int | None) -> list[_Item]:
    if not (d / "images").is_dir() or not (d / "masks").is_dir():
        raise DataError(f"no images/ and masks/ folders in {d}")

    def order(p: Path) -> tuple[int, str]:  # 2.jpg before 10.jpg
        return (int(p.stem), "") if p.stem.isdigit() else (1 << 62, p.name)

    items = [_Item(p.name, (p,), d / "masks" / p.name) for p in sorted((d / "images").iterdir(), key=order)
             if p.is_file() and (d / "masks" / p.name).is_file()]
    return _select(items, names, limit, d)


def _wfdb_items(d: Path, names: Sequence[str] | None, limit: int | None) -> list[_Item]:
    recs = find_records(d, names)
    items = [_Item(r.name, tuple(r.with_name(f"{r.name}.{e}") for e in ("hea", "dat", "atr")), r.with_name(f"{r.name}.atr"))
             for r in recs]
    return _select(items, None, limit, d)


# ----------------------------------------------------------------------------------------
# Output normalisation (what goes into the cache)
# ----------------------------------------------------------------------------------------
def _norm_segments(out: Any) -> list[list[Any]]:
    if out is None:
        return []
    segs: list[list[Any]] = []
    for s in out:
        if isinstance(s, dict):
            a, b, st = s.get("start"), s.get("end"), s.get("state")
        elif hasattr(s, "start") and hasattr(s, "state"):
            a, b, st = s.start, s.end, s.state
        else:
            try:
                a, b, st = s
            except (TypeError, ValueError) as e:
                raise DataError(f"a segment must be (start_s, end_s, state), got {s!r}") from e
        if isinstance(st, int | np.integer) and not isinstance(st, bool) and 0 <= int(st) < 4:
            st = _STATES[int(st)]
        if st not in _STATES:
            raise DataError(f"segment state must be one of {_STATES} or 0-3, got {st!r}")
        try:
            fa, fb = float(a), float(b)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise DataError(f"segment start/end must be numbers (seconds), got {a!r}, {b!r}") from e
        if not (math.isfinite(fa) and math.isfinite(fb)):
            raise DataError(f"segment times must be finite, got {fa}, {fb}")
        segs.append([fa, fb, str(st)])
    return segs


def _norm_mask(out: Any, shape: tuple[int, int]) -> NDArray[np.bool_]:
    if hasattr(out, "mask") and not isinstance(out, np.ndarray):
        out = out.mask
    m = np.asarray(out)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.shape != shape:
        raise DataError(f"a segmenter must return a mask of shape {shape} (the image's), got {m.shape}")
    if m.dtype.kind == "f":
        return np.asarray(m > 0.5)
    if m.dtype.kind not in "biu":
        raise DataError(f"a mask must be bool, integer or float, got dtype {m.dtype}")
    return np.asarray(m != 0)


def _pack(mask: NDArray[np.bool_]) -> dict[str, Any]:
    bits = zlib.compress(np.packbits(mask.ravel()).tobytes(), 6)
    return {"shape": list(mask.shape), "bits": base64.b64encode(bits).decode("ascii")}


def _unpack(d: dict[str, Any]) -> NDArray[np.bool_]:
    shape = tuple(int(v) for v in d["shape"])
    raw = np.frombuffer(zlib.decompress(base64.b64decode(d["bits"])), np.uint8)
    return np.unpackbits(raw, count=int(np.prod(shape))).astype(bool).reshape(shape)


# ----------------------------------------------------------------------------------------
# Per-task load / run / score
# ----------------------------------------------------------------------------------------
def _mlii_or_first(rec: Path) -> int:
    import wfdb

    try:
        names = list(wfdb.rdheader(str(rec)).sig_name or [])
    except Exception as e:  # wfdb raises assorted errors on a bad header
        raise DataError(f"cannot read WFDB header {rec}.hea: {e}") from e
    return names.index("MLII") if "MLII" in names else 0


def _beats_ref(item: _Item, n: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    from telediag.models.ecg_beats.features import aami_label

    from .wfdb_io import read_annotation

    ann = read_annotation(item.truth.with_suffix(""), "atr")
    lab = np.asarray([aami_label(s) for s in ann.symbol], np.int64)
    pos = np.asarray(ann.sample, np.int64)
    keep = (lab >= 0) & (pos >= 0) & (pos < n)
    return pos[keep], lab[keep]


def evaluate_task(
    task: str,
    algorithm: str | Callable[..., Any] | Plugin,
    data: str | Path,
    *,
    names: Sequence[str] | None = None,
    limit: int | None = None,
    lead: int | None = None,
    max_seconds: float | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: TextIO | None = None,
) -> TaskResult:
    """Run a beat classifier, heart-sound segmenter or polyp segmenter on a folder and score it.

    Parameters
    ----------
    task : {"beats", "pcg-seg", "polyp"}
        What the plug-in does (see the module docstring for each signature).
    algorithm : str, callable or Plugin
        ``"telediag"`` (the built-in), ``"module:function"``, ``"file.py:function"`` or a
        function.
    data : path
        WFDB records (``beats``), a folder with WAVs and ``*_StateAns.mat`` annotations
        (``pcg-seg``), or a folder with ``images/`` and ``masks/`` (``polyp``).
    names : sequence of str, optional
        Only these records / recordings / image file names.
    limit : int, optional
        Only the first ``limit`` items (sorted by name).
    lead : int, optional
        ``beats``: channel classified (default: MLII when the header has it, else 0).
    max_seconds : float, optional
        ``beats``: only the first ``max_seconds`` of each record.
    cache_dir : path, optional
        Results cache (default :func:`telediag.evaluation.harness.default_cache_dir`).
    use_cache : bool
        Read and write the cache.
    progress : text stream, optional
        Progress bar on this stream when it is a terminal.

    Returns
    -------
    TaskResult

    Raises
    ------
    telediag.errors.ConfigError
        Unknown task or spec, bad options.
    telediag.errors.DataError
        Missing data, or a plug-in returning something malformed (the message says what).

    Examples
    --------
    >>> r = evaluate_task("polyp", lambda rgb: rgb[:, :, 0] > 128,
    ...                   "../shared/data/kvasir-seg/validation", limit=3)  # doctest: +SKIP
    >>> r.gross.dice                                                          # doctest: +SKIP
    """
    plugin = resolve_plugin(task, algorithm)
    root = Path(data)
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise ConfigError(f"max_seconds must be a positive number, got {max_seconds}")
    if lead is not None and lead < 0:
        raise ConfigError(f"lead must be >= 0, got {lead}")
    if task == "beats":
        items = _wfdb_items(root, names, limit)
    elif task == "pcg-seg":
        items = _wav_items(root, names, limit)
    else:
        items = _image_items(root, names, limit)
    cache = ResultCache(cache_dir if cache_dir is not None else default_cache_dir(), use_cache)
    res = TaskResult(task, plugin.name)
    bar = _Progress(len(items), f"{task} {plugin.name}", progress)
    for item in items:
        h = hashlib.sha256()
        for f in item.inputs:
            h.update(file_sha256(f).encode())
        fields = {"task": task, "algorithm": plugin.identity, "item": item.name, "input_sha256": h.hexdigest(),
                  "lead": lead, "max_seconds": max_seconds if task == "beats" else None}
        payload = cache.get(fields)
        res.cached[item.name] = payload is not None
        if task == "beats":
            res.per_item[item.name] = _run_beats(plugin, item, lead, max_seconds, payload, cache, fields, res)
        elif task == "pcg-seg":
            res.per_item[item.name] = _run_pcg(plugin, item, payload, cache, fields, res)
        else:
            res.per_item[item.name] = _run_polyp(plugin, item, payload, cache, fields, res)
        bar.step(item.name)
    res.notes += _notes(task, plugin, list(res.per_item), root)
    return res


def _call(plugin: Plugin, item: _Item, res: TaskResult, *args: Any) -> Any:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = plugin.fn(*args)
        except (DataError, ConfigError):
            raise
        except Exception as e:
            raise DataError(f"{plugin.name} failed on {item.name}: {type(e).__name__}: {e}") from e
    res.compute_s += time.perf_counter() - t0
    return out


def _run_beats(plugin: Plugin, item: _Item, lead: int | None, max_seconds: float | None,
               payload: Any, cache: ResultCache, fields: dict[str, Any], res: TaskResult) -> ClassScore:
    from .wfdb_io import read_record

    rec = item.truth.with_suffix("")
    if payload is not None:
        n = int(payload["n_samples"])
        pos, ref = _beats_ref(item, n)
        pred = np.asarray(payload["labels"], np.int64)
        if pred.size == pos.size:
            return class_score(ref, pred)
        res.cached[item.name] = False  # the annotation changed under the cache: recompute
    ch = _mlii_or_first(rec) if lead is None else lead
    r = read_record(rec, channel=ch)
    x = r.signal if max_seconds is None else r.signal[: int(round(max_seconds * r.fs))]
    x = np.ascontiguousarray(_clean(x), dtype=np.float64)
    pos, ref = _beats_ref(item, x.size)
    out = _call(plugin, item, res, x, float(r.fs), pos.copy())
    pred = _label_index(out if not isinstance(out, tuple) else out[0], pos.size)
    cache.put(fields, {"labels": pred.tolist(), "n_samples": int(x.size), "lead": r.lead})
    return class_score(ref, pred)


def _run_pcg(plugin: Plugin, item: _Item, payload: Any, cache: ResultCache, fields: dict[str, Any],
             res: TaskResult) -> PcgScore:
    from telediag.dsp.pcg import Segment

    from .pcg_analyze import read_wav
    from .pcg_seg import load_annotation, score_record

    if payload is not None:
        segs = payload["segments"]
    else:
        x, fs = read_wav(item.inputs[0])
        segs = _norm_segments(_call(plugin, item, res, np.ascontiguousarray(x, np.float64), int(fs)))
        cache.put(fields, {"segments": segs})
    sc = score_record([Segment(float(a), float(b), str(s)) for a, b, s in segs], load_annotation(item.truth))
    return PcgScore(Counts(sc["s1_tp"], sc["s1_fn"], sc["s1_fp"]), Counts(sc["s2_tp"], sc["s2_fn"], sc["s2_fp"]))


def _run_polyp(plugin: Plugin, item: _Item, payload: Any, cache: ResultCache, fields: dict[str, Any],
               res: TaskResult) -> SegScore:
    from .seg_metrics import dice_iou, read_mask, read_rgb

    truth = read_mask(item.truth)
    if payload is not None and tuple(payload["mask"]["shape"]) == truth.shape:
        mask = _unpack(payload["mask"])
    else:
        rgb = read_rgb(item.inputs[0])
        mask = _norm_mask(_call(plugin, item, res, rgb), (rgb.shape[0], rgb.shape[1]))
        cache.put(fields, {"mask": _pack(mask)})
    if mask.shape != truth.shape:
        raise DataError(f"{item.name}: mask {truth.shape} and image {mask.shape} differ in size")
    d, j = dice_iou(mask, truth)
    return SegScore(d, j, 1)


def _notes(task: str, plugin: Plugin, items: list[str], root: Path) -> list[str]:
    if not plugin.builtin:
        return []
    if task == "beats":
        import json

        from telediag.models.ecg_beats import CARD_PATH

        try:
            train = set(json.loads(CARD_PATH.read_text())["training_data"]["records"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        seen = sorted(set(items) & train)
        if seen:
            return [f"the built-in classifier was trained on {len(seen)} of these records "
                    f"({', '.join(seen)}): its scores there are training-set figures, not "
                    "cross-validated (see models/ecg_beats/README.md for those)"]
    elif task == "pcg-seg":
        return ["the built-in segmenter's parameters were fitted on the PhysioNet/CinC 2016 training "
                "sets a-f: on those records its scores are training-set figures (cross-validated: "
                "benchmarks/pcg_accuracy.py)"]
    elif task == "polyp" and "train" in root.parts:
        return ["the built-in polyp model was trained on Kvasir-SEG train/: score it on validation/"]
    return []


# ----------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------
def _p(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def item_table(r: TaskResult) -> str:
    """Markdown table of one algorithm's scores per item, with the gross (or mean) row.

    Examples
    --------
    >>> r = TaskResult("polyp", "a", {"1.jpg": SegScore(0.5, 0.25, 1)})
    >>> item_table(r).splitlines()[2]
    '| 1.jpg | 50.00 | 25.00 |'
    """
    lines: list[str] = []
    rows = list(r.per_item.items()) + [("**gross**" if r.task != "polyp" else "**mean**", r.gross)]
    if r.task == "beats":
        lines += ["| record | beats | acc % | VEB Se % | VEB +P % | VEB F1 % | SVEB Se % | SVEB +P % | SVEB F1 % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, s in rows:
            v, sv = s.veb, s.sveb
            lines.append(f"| {k} | {s.n} | {_p(s.accuracy)} | {_p(v.se)} | {_p(v.ppv)} | {_p(v.f1)} | "
                         f"{_p(sv.se)} | {_p(sv.ppv)} | {_p(sv.f1)} |")
        g = r.gross
        lines += ["", "**Gross confusion matrix** (rows reference, columns predicted)", "",
                  "| ref \\ pred | " + " | ".join(AAMI) + " |", "|---|" + "---:|" * len(AAMI)]
        for i, c in enumerate(AAMI):
            lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in g.cm[i]) + " |")
    elif r.task == "pcg-seg":
        lines += ["| record | S1 TP | S1 FN | S1 FP | S1 Se % | S1 +P % | S1 F1 % | S2 TP | S2 FN | S2 FP | "
                  "S2 Se % | S2 +P % | S2 F1 % |", "|---|" + "---:|" * 12]
        for k, s in rows:
            cells = []
            for c in (s.s1, s.s2):
                cells += [str(c.tp), str(c.fn), str(c.fp), _p(c.se), _p(c.ppv), _p(c.f1)]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    else:
        lines += ["| image | Dice % | IoU % |", "|---|---:|---:|"]
        for k, s in rows:
            lines.append(f"| {k} | {_p(s.dice)} | {_p(s.iou)} |")
    return "\n".join(lines)


def comparison_table(results: list[TaskResult]) -> str:
    """Markdown: the gross scores of several algorithms, then their headline metric per item.

    Examples
    --------
    >>> a = TaskResult("polyp", "mine", {"1.jpg": SegScore(0.5, 0.25, 1)})
    >>> b = TaskResult("polyp", "telediag", {"1.jpg": SegScore(0.9, 0.8, 1)})
    >>> comparison_table([a, b]).splitlines()[3]
    '| telediag | 1 | 90.00 | 80.00 | 0.00 |'
    """
    if not results:
        return ""
    task = results[0].task
    lines: list[str] = []
    if task == "beats":
        lines += ["| algorithm | beats | acc % | VEB Se % | VEB +P % | VEB F1 % | SVEB Se % | SVEB +P % | SVEB F1 % | compute s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results:
            g = r.gross
            lines.append(f"| {r.algorithm} | {g.n} | {_p(g.accuracy)} | {_p(g.veb.se)} | {_p(g.veb.ppv)} | "
                         f"{_p(g.veb.f1)} | {_p(g.sveb.se)} | {_p(g.sveb.ppv)} | {_p(g.sveb.f1)} | {r.compute_s:.2f} |")
        head, metric = "VEB F1 % / SVEB F1 %", lambda s: f"{_p(s.veb.f1)} / {_p(s.sveb.f1)}"
    elif task == "pcg-seg":
        lines += ["| algorithm | records | S1 Se % | S1 +P % | S1 F1 % | S2 Se % | S2 +P % | S2 F1 % | compute s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results:
            g = r.gross
            lines.append(f"| {r.algorithm} | {len(r.per_item)} | {_p(g.s1.se)} | {_p(g.s1.ppv)} | {_p(g.s1.f1)} | "
                         f"{_p(g.s2.se)} | {_p(g.s2.ppv)} | {_p(g.s2.f1)} | {r.compute_s:.2f} |")
        head, metric = "S1 F1 % / S2 F1 %", lambda s: f"{_p(s.s1.f1)} / {_p(s.s2.f1)}"
    else:
        lines += ["| algorithm | images | mean Dice % | mean IoU % | compute s |", "|---|---:|---:|---:|---:|"]
        for r in results:
            g = r.gross
            lines.append(f"| {r.algorithm} | {g.n} | {_p(g.dice)} | {_p(g.iou)} | {r.compute_s:.2f} |")
        head, metric = "Dice %", lambda s: _p(s.dice)
    if len(results) > 1:
        lines += ["", f"**{head} per item**", "", "| item | " + " | ".join(r.algorithm for r in results) + " |",
                  "|---|" + "---:|" * len(results)]
        for k in results[0].per_item:
            cells = " | ".join(metric(r.per_item[k]) if k in r.per_item else "n/a" for r in results)
            lines.append(f"| {k} | {cells} |")
    for r in results:
        lines += [f"\nNote ({r.algorithm}): {n}" for n in r.notes]
    return "\n".join(lines)
