"""Beat-by-beat QRS detection scoring after ANSI/AAMI EC57 (the conventions of WFDB ``bxb``).

* Reference beats are the annotations whose code is a beat label
  (``N L R B A a J S V r F e j n E / f Q ?``, :data:`BEAT_CODES`); rhythm, noise, comment and
  other non-beat annotations (``+ ~ | " x ! [ ]`` ...) are not beats (``x`` is a
  non-conducted P wave, ``!`` a ventricular flutter wave).
* A test beat matches a reference beat when they are at most ``window_s`` apart (150 ms).
  Matching walks both lists in time order and pairs each reference beat with the nearest
  unpaired test beat (greedy nearest matching); unpaired reference beats are false negatives
  (FN), unpaired test beats false positives (FP).
* EC57 does not require QRS detection during ventricular flutter/fibrillation: by default,
  unpaired test beats inside a VF episode (between the reference ``[`` and ``]`` annotations)
  are not counted as FP (``exclude=`` intervals; pass none to count them).
* ``start_s`` skips the beginning of the record (bxb default: 300 s, the learning period):
  a reference beat is scored when it is at or after ``start_s``, a lone test beat likewise.
* Gross statistics sum the counts over records (EC57 "gross"); timing errors are pooled.

Se = TP / (TP + FN), +P = TP / (TP + FP), F1 = 2 TP / (2 TP + FN + FP).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from telediag.errors import DataError

__all__ = [
    "DetectionRates",
    "BEAT_CODES",
    "BeatScore",
    "format_table",
    "gross",
    "match_beats",
    "reference_beats",
    "vf_intervals",
]

#: Annotation codes that are beats (EC57 / WFDB ``isqrs``).
BEAT_CODES: frozenset[str] = frozenset("NLRBAaJSVrFejnE/fQ?")


class DetectionRates:
    """Se, +P and F1 from the ``tp``, ``fn``, ``fp`` of a score class that mixes this in.

    Each is NaN when its denominator is zero (no reference events, no detections, neither).
    """

    __slots__ = ()
    tp: int
    fn: int
    fp: int

    @property
    def se(self) -> float:
        """Sensitivity TP / (TP + FN) (NaN when there are no reference events)."""
        d = self.tp + self.fn
        return self.tp / d if d else math.nan

    @property
    def ppv(self) -> float:
        """Positive predictivity TP / (TP + FP) (NaN when there are no detections)."""
        d = self.tp + self.fp
        return self.tp / d if d else math.nan

    @property
    def f1(self) -> float:
        """F1 = 2 TP / (2 TP + FN + FP) (NaN when both lists are empty)."""
        d = 2 * self.tp + self.fn + self.fp
        return 2 * self.tp / d if d else math.nan


@dataclass(frozen=True, slots=True)
class BeatScore(DetectionRates):
    """Counts and statistics of one beat-by-beat comparison.

    Attributes
    ----------
    tp, fn, fp : int
        Matched reference beats, missed reference beats, extra test beats.
    err_sum_ms, err_sumsq_ms2 : float
        Sum and sum of squares of (test - reference) over matched pairs, ms (for pooling).
    """

    tp: int
    fn: int
    fp: int
    err_sum_ms: float = 0.0
    err_sumsq_ms2: float = 0.0

    @property
    def mean_err_ms(self) -> float:
        """Mean timing error test - reference over matched beats (ms)."""
        return self.err_sum_ms / self.tp if self.tp else math.nan

    @property
    def sd_err_ms(self) -> float:
        """Standard deviation (population) of the timing error over matched beats (ms)."""
        if not self.tp:
            return math.nan
        m = self.err_sum_ms / self.tp
        return math.sqrt(max(self.err_sumsq_ms2 / self.tp - m * m, 0.0))

    def __add__(self, other: BeatScore) -> BeatScore:
        return BeatScore(
            self.tp + other.tp,
            self.fn + other.fn,
            self.fp + other.fp,
            self.err_sum_ms + other.err_sum_ms,
            self.err_sumsq_ms2 + other.err_sumsq_ms2,
        )


def _as_index(a: ArrayLike, name: str) -> NDArray[np.int64]:
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise DataError(f"{name} must be a 1-D array of sample indices, got shape {arr.shape} dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(f"{name} must contain finite sample indices")
    out = np.asarray(np.round(arr), dtype=np.int64)
    if np.any(np.diff(out) < 0):
        out = np.sort(out)
    return out


def match_beats(
    ref: ArrayLike,
    test: ArrayLike,
    fs: float,
    window_s: float = 0.15,
    start_s: float = 0.0,
    exclude: Sequence[tuple[int, int]] | NDArray[np.int64] | None = None,
) -> BeatScore:
    """Compare test beats with reference beats (sample indices at rate ``fs``).

    Parameters
    ----------
    ref, test : array_like of int
        Reference and test beat sample indices (sorted or not).
    fs : float
        Sample rate (Hz).
    window_s : float
        Match window: a pair is at most this far apart (inclusive), 0.15 s by EC57.
    start_s : float
        Beats before this time are not scored (bxb's default is 300 s).
    exclude : sequence of (start, end) sample pairs, optional
        Intervals (inclusive) in which unmatched *test* beats are not counted as FP (VF
        episodes, see :func:`vf_intervals`).

    Returns
    -------
    BeatScore

    Examples
    --------
    >>> s = match_beats([100, 460, 820], [102, 455, 600, 830], fs=360.0)
    >>> (s.tp, s.fn, s.fp)
    (3, 0, 1)
    >>> round(s.se, 3), round(s.ppv, 3)
    (1.0, 0.75)
    """
    if not (isinstance(fs, int | float) and math.isfinite(fs) and fs > 0):
        raise DataError(f"fs must be a positive finite number, got {fs!r}")
    r = _as_index(ref, "ref")
    t = _as_index(test, "test")
    win = window_s * fs
    start = start_s * fs
    nr, nt = r.size, t.size
    matched_t = np.zeros(nt, dtype=bool)
    tp = fn = 0
    es = ess = 0.0
    i = j = 0
    ms_per_sample = 1000.0 / fs
    while i < nr:
        # Skip test beats too early for this reference beat.
        while j < nt and t[j] < r[i] - win:
            j += 1
        if j < nt and abs(int(t[j]) - int(r[i])) <= win:
            d = abs(int(t[j]) - int(r[i]))
            # A later test beat nearer to this reference beat: this one is extra.
            while j + 1 < nt and abs(int(t[j + 1]) - int(r[i])) < d:
                j += 1
                d = abs(int(t[j]) - int(r[i]))
            # The test beat is nearer to the next reference beat: this reference is missed,
            # unless that next reference has a nearer or equally near alternative.
            if i + 1 < nr and abs(int(t[j]) - int(r[i + 1])) < d:
                if r[i] >= start:
                    fn += 1
                i += 1
                continue
            matched_t[j] = True
            if r[i] >= start:
                tp += 1
                e = (int(t[j]) - int(r[i])) * ms_per_sample
                es += e
                ess += e * e
            i += 1
            j += 1
        else:
            if r[i] >= start:
                fn += 1
            i += 1
    lone = t[~matched_t]
    lone = lone[lone >= start]
    if exclude is not None and len(exclude) and lone.size:
        ex = np.asarray(exclude, dtype=np.int64).reshape(-1, 2)
        keep = np.ones(lone.size, dtype=bool)
        for a, b in ex:
            keep &= ~((lone >= a) & (lone <= b))
        lone = lone[keep]
    return BeatScore(tp, fn, int(lone.size), es, ess)


def gross(scores: Iterable[BeatScore] | Mapping[Any, BeatScore]) -> BeatScore:
    """Gross statistics: the sums of the counts (and pooled timing errors) over records.

    Examples
    --------
    >>> g = gross([BeatScore(10, 1, 0), BeatScore(5, 0, 2)])
    >>> (g.tp, g.fn, g.fp)
    (15, 1, 2)
    """
    vals = scores.values() if isinstance(scores, Mapping) else scores
    total = BeatScore(0, 0, 0)
    for s in vals:
        total = total + s
    return total


def reference_beats(annotation: Any) -> NDArray[np.int64]:
    """Sample indices of the beat annotations of a ``wfdb.Annotation``.

    Any object with ``sample`` and ``symbol`` sequences works.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> ann = SimpleNamespace(sample=[5, 9, 12, 20], symbol=["N", "+", "x", "V"])
    >>> reference_beats(ann).tolist()
    [5, 20]
    """
    samples = np.asarray(annotation.sample, dtype=np.int64)
    symbols = list(annotation.symbol)
    if samples.size != len(symbols):
        raise DataError(f"annotation has {samples.size} samples but {len(symbols)} symbols")
    keep = np.fromiter((s in BEAT_CODES for s in symbols), dtype=bool, count=len(symbols))
    return samples[keep]


def vf_intervals(annotation: Any, end_sample: int | None = None) -> NDArray[np.int64]:
    """Ventricular flutter/fibrillation episodes ``[`` ... ``]`` as (start, end) sample rows.

    An episode still open at the end of the annotations runs to ``end_sample`` (or to the
    last annotation).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> ann = SimpleNamespace(sample=[5, 9, 40, 50], symbol=["N", "[", "]", "N"])
    >>> vf_intervals(ann).tolist()
    [[9, 40]]
    """
    samples = np.asarray(annotation.sample, dtype=np.int64)
    out: list[tuple[int, int]] = []
    start: int | None = None
    for s, sym in zip(samples.tolist(), annotation.symbol, strict=True):
        if sym == "[" and start is None:
            start = s
        elif sym == "]" and start is not None:
            out.append((start, s))
            start = None
    if start is not None:
        last = end_sample if end_sample is not None else (int(samples[-1]) if samples.size else start)
        out.append((start, last))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100.0 * x:.2f}"


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f}"


def format_table(per_record: Mapping[str, BeatScore], title: str | None = None) -> str:
    """Markdown table of per-record scores followed by the gross row.

    Examples
    --------
    >>> print(format_table({"100": BeatScore(9, 1, 0)}).splitlines()[0])
    | record | TP | FN | FP | Se % | +P % | F1 % | err mean ms | err SD ms |
    """
    head = "| record | TP | FN | FP | Se % | +P % | F1 % | err mean ms | err SD ms |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    lines = [] if title is None else [f"**{title}**", ""]
    lines += [head, sep]

    def row(name: str, s: BeatScore) -> str:
        return (
            f"| {name} | {s.tp} | {s.fn} | {s.fp} | {_pct(s.se)} | {_pct(s.ppv)} | "
            f"{_pct(s.f1)} | {_ms(s.mean_err_ms)} | {_ms(s.sd_err_ms)} |"
        )

    for name, s in per_record.items():
        lines.append(row(name, s))
    lines.append(row("**gross**", gross(per_record)))
    return "\n".join(lines)
