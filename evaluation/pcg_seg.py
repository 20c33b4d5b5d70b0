"""Scoring of heart-sound segmentation against the PhysioNet/CinC 2016 hand annotations.

* :func:`load_annotation` reads ``annotations/training-?_StateAns/<rec>_StateAns.mat`` (rows
  ``[start_sample (1-based, 2 kHz), state]``, noisy stretches between ``(N`` and ``N)``).
* :func:`score_events` matches detected S1 (or S2) centres to reference centres one-to-one
  within a tolerance (default +-60 ms on the sound's centre, as in Springer et al. 2016,
  section III-B) and counts TP/FP/FN.  Only the annotated span is scored (from the first to the
  last annotated boundary) and noisy stretches are excluded for both reference and detections.
* :func:`ecg_heart_rate` is the ECG reference heart rate (median RR of the project's
  Pan-Tompkins R-peak detector) for records a0001-a0100; :func:`ecg_reference` flags it
  reliable when an independent ECG estimate (QRS-energy autocorrelation) agrees.
* :func:`cross_validate` trains the emission/duration model on the training folds and scores
  the held-out records: leave-one-database-out (sets a, b, c, d, f) and random record folds.

The heavy lifting (feature extraction of all 1,099 records) is cached in an ``.npz`` file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.pcg import (
    FRAME_RATE,
    N_CHANNELS,
    PCGSegParams,
    Segment,
    analyze_frames,
    extract_frames,
)
from telediag.errors import DataError

__all__ = [
    "Annotation",
    "RecordRef",
    "TOLERANCE_S",
    "CIRCOR",
    "circor_records",
    "cross_validate",
    "data_root",
    "ecg_heart_rate",
    "ecg_reference",
    "frame_labels",
    "list_records",
    "load_annotation",
    "load_circor_annotation",
    "load_feature_cache",
    "load_springer_segments",
    "read_audio",
    "score_events",
    "score_record",
]

TOLERANCE_S = 0.060
SETS = ("a", "b", "c", "d", "f")
CIRCOR = "circor"
"""Set name of the CirCor DigiScope recordings (``../shared/data/circor``)."""
_STATE_IDS = {"S1": 0, "systole": 1, "S2": 2, "diastole": 3}


def data_root(data: str | Path | None = None) -> Path:
    """The ``pcg2016`` folder: ``data`` argument, else ``$TELEDIAG_DATA``, else ``../shared/data``.

    Raises
    ------
    telediag.errors.DataError
        When the folder does not exist.
    """
    if data is not None:
        base = Path(data)
    elif os.environ.get("TELEDIAG_DATA"):
        base = Path(os.environ["TELEDIAG_DATA"])
    else:
        base = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = base if (base / "annotations").is_dir() else base / "pcg2016"
    if not (root / "annotations").is_dir():
        raise DataError(
            f"PhysioNet 2016 data not found under {base} (expected pcg2016/annotations); "
            "pass --data or set TELEDIAG_DATA"
        )
    return root


@dataclass(frozen=True, slots=True)
class RecordRef:
    """One recording: its training set letter, name, WAV path, annotation path and label."""

    set: str
    name: str
    wav: Path
    ann: Path
    abnormal: bool


def list_records(root: Path, sets: Iterable[str] = SETS) -> list[RecordRef]:
    """All annotated recordings of the given training sets, sorted by name.

    ``sets`` may name :data:`CIRCOR`: the CirCor recordings of ``root.parent / "circor"``
    (see :func:`circor_records`).
    """
    out: list[RecordRef] = []
    for s in sets:
        if s == CIRCOR:
            out.extend(circor_records(root.parent / CIRCOR))
            continue
        d = root / f"training-{s}"
        ref: dict[str, bool] = {}
        ref_file = d / "REFERENCE.csv"
        if ref_file.is_file():
            for line in ref_file.read_text().split():
                name, lab = line.strip().split(",")[:2]
                ref[name] = lab.strip() == "1"
        for wav in sorted(d.glob("*.wav")):
            ann = root / "annotations" / f"training-{s}_StateAns" / f"{wav.stem}_StateAns.mat"
            if ann.is_file():
                out.append(RecordRef(s, wav.stem, wav, ann, ref.get(wav.stem, False)))
    return out


def circor_records(folder: Path) -> list[RecordRef]:
    """The CirCor DigiScope recordings listed in ``folder/labels.csv`` (one per patient).

    ``abnormal`` is *murmur present* (murmur ``Unknown`` and ``Absent`` give False; the
    abnormality classifier reads ``labels.csv`` itself and excludes ``Unknown``).

    Raises
    ------
    telediag.errors.DataError
        No ``labels.csv`` in ``folder``.
    """
    import csv

    lab = folder / "labels.csv"
    if not lab.is_file():
        raise DataError(f"CirCor labels not found: {lab}")
    out = []
    with lab.open(newline="") as fh:
        for row in csv.DictReader(fh):
            rec = row["recording"]
            flac, tsv = folder / f"{rec}.flac", folder / f"{rec}.tsv"
            if flac.is_file() and tsv.is_file():
                out.append(RecordRef(CIRCOR, rec, flac, tsv, row["murmur"] == "Present"))
    return sorted(out, key=lambda r: r.name)


def read_audio(path: str | Path) -> tuple[NDArray[np.float64], int]:
    """First channel of a WAV (:func:`~telediag.evaluation.pcg_analyze.read_wav`) or FLAC file.

    Raises
    ------
    telediag.errors.DataError
        Missing or unreadable file.
    """
    from telediag.evaluation.pcg_analyze import read_wav

    p = Path(path)
    if p.suffix.lower() != ".flac":
        return read_wav(p)
    try:
        import soundfile

        x, fs = soundfile.read(str(p), dtype="float64", always_2d=True)
    except Exception as e:  # soundfile raises its own error types
        raise DataError(f"{p}: unreadable FLAC file ({e})") from e
    return np.ascontiguousarray(x[:, 0]), int(fs)


@dataclass(frozen=True, slots=True)
class Annotation:
    """Hand segmentation of one record (times in seconds from the start of the file).

    Attributes
    ----------
    starts : numpy.ndarray
        Start time of each annotated state interval.
    states : numpy.ndarray
        State id (0 S1, 1 systole, 2 S2, 3 diastole) of each interval.
    span : tuple of float
        Scored span: first to last annotated boundary.
    noisy : list of (float, float)
        Stretches marked noisy.
    """

    starts: NDArray[np.float64]
    states: NDArray[np.int64]
    span: tuple[float, float]
    noisy: list[tuple[float, float]]

    def intervals(self, state: int) -> list[tuple[float, float]]:
        """Complete ``[start, end)`` intervals of ``state`` inside the span."""
        out = []
        for i in range(self.starts.size - 1):
            if self.states[i] == state:
                out.append((float(self.starts[i]), float(self.starts[i + 1])))
        return out

    def in_noise(self, t: float) -> bool:
        """Whether time ``t`` lies in a noisy stretch."""
        return any(a <= t <= b for a, b in self.noisy)

    def centres(self, state: int) -> NDArray[np.float64]:
        """Centres of complete intervals of ``state`` outside noisy stretches."""
        c = [0.5 * (a + b) for a, b in self.intervals(state)]
        return np.asarray([t for t in c if not self.in_noise(t)], dtype=np.float64)


def load_annotation(path: str | Path, fs: float = 2000.0) -> Annotation:
    """Read a ``*_StateAns.mat`` file.

    Raises
    ------
    telediag.errors.DataError
        Unreadable or malformed file.
    """
    import scipy.io

    try:
        m = scipy.io.loadmat(str(path))
        rows = m["state_ans"]
    except Exception as e:
        raise DataError(f"{path}: unreadable annotation file ({e})") from e
    starts: list[float] = []
    states: list[int] = []
    noisy: list[tuple[float, float]] = []
    noise_open: float | None = None
    for r in rows:
        t = (float(np.asarray(r[0]).ravel()[0]) - 1.0) / fs
        lab = np.asarray(r[1]).ravel()
        while lab.size and lab.dtype == object:
            lab = np.asarray(lab[0]).ravel()
        name = str(lab[0]) if lab.size else ""
        if name == "(N":
            noise_open = t
        elif name == "N)":
            noisy.append((noise_open if noise_open is not None else 0.0, t))
            noise_open = None
        elif name in _STATE_IDS:
            starts.append(t)
            states.append(_STATE_IDS[name])
        else:
            raise DataError(f"{path}: unknown state label {name!r}")
    if noise_open is not None:
        noisy.append((noise_open, math.inf))
    st = np.asarray(starts, dtype=np.float64)
    # a record marked noisy throughout has no states: empty span, nothing to score
    span = (float(st[0]), float(st[-1])) if st.size >= 2 else (0.0, 0.0)
    return Annotation(st, np.asarray(states, dtype=np.int64), span, noisy)


def load_circor_annotation(path: str | Path, duration_s: float) -> Annotation:
    """Read a CirCor ``.tsv`` segmentation (``start_s  end_s  state``, 0 unannotated, 1 S1,
    2 systole, 3 S2, 4 diastole), clipped to the audio's ``duration_s``.

    Unannotated stretches (state 0) are treated like the PhysioNet noise marks: neither the
    reference nor the detections in them are scored.

    Raises
    ------
    telediag.errors.DataError
        Unreadable file or a state outside 0-4.
    """
    try:
        rows = np.loadtxt(str(path), ndmin=2)
    except Exception as e:
        raise DataError(f"{path}: unreadable segmentation file ({e})") from e
    if rows.shape[1] != 3 or not np.all(np.isin(rows[:, 2], (0, 1, 2, 3, 4))):
        raise DataError(f"{path}: expected rows 'start end state' with state 0-4")
    starts: list[float] = []
    states: list[int] = []
    noisy: list[tuple[float, float]] = []
    prev_end = 0.0
    for a, b, st in rows:
        if a >= duration_s:
            break
        b = min(float(b), duration_s)
        if starts and abs(a - prev_end) > 1e-6:  # a hole in the table: unannotated
            starts.append(prev_end)
            states.append(-1)
            noisy.append((prev_end, float(a)))
        starts.append(float(a))
        states.append(int(st) - 1)
        if st == 0:
            noisy.append((float(a), b))
        prev_end = b
    if starts:
        starts.append(prev_end)
        states.append(-1)
    st_arr = np.asarray(starts, dtype=np.float64)
    sid = np.asarray(states, dtype=np.int64)
    ann_idx = np.flatnonzero(sid >= 0)
    if ann_idx.size:
        span = (float(st_arr[ann_idx[0]]), float(st_arr[ann_idx[-1] + 1]))
    else:
        span = (0.0, 0.0)
    return Annotation(st_arr, sid, span, noisy)


def load_springer_segments(root: Path, rec: RecordRef) -> list[Segment] | None:
    """Springer's published LR-HSMM segmentation of a PhysioNet 2016 record, or ``None``.

    Read from ``root/annotations/springer/training-<set>/<name>_StateAns0.mat`` (variable
    ``state_ans0``, same layout as the hand-corrected files); the last state ends at the
    end of the annotation (the next boundary is unknown), so it is dropped.
    """
    import scipy.io

    path = root / "annotations" / "springer" / f"training-{rec.set}" / f"{rec.name}_StateAns0.mat"
    if not path.is_file():
        return None
    try:
        rows = scipy.io.loadmat(str(path))["state_ans0"]
    except Exception as e:
        raise DataError(f"{path}: unreadable annotation file ({e})") from e
    t: list[float] = []
    names: list[str] = []
    for r in rows:
        lab = np.asarray(r[1]).ravel()
        while lab.size and lab.dtype == object:
            lab = np.asarray(lab[0]).ravel()
        name = str(lab[0]) if lab.size else ""
        if name in _STATE_IDS:
            t.append((float(np.asarray(r[0]).ravel()[0]) - 1.0) / 2000.0)
            names.append(name)
    return [Segment(t[i], t[i + 1], names[i]) for i in range(len(t) - 1)]


def frame_labels(ann: Annotation, n_frames: int) -> NDArray[np.int64]:
    """State id of each 50 Hz frame (frame k at k/50 s); -1 outside the span or in noise."""
    t = np.arange(n_frames) / FRAME_RATE
    if ann.starts.size < 2:
        return np.full(n_frames, -1, dtype=np.int64)
    idx = np.searchsorted(ann.starts, t, side="right") - 1
    lab = np.where(idx >= 0, ann.states[np.clip(idx, 0, None)], -1)
    lab[(t < ann.span[0]) | (t >= ann.span[1])] = -1
    for a, b in ann.noisy:
        lab[(t >= a) & (t <= b)] = -1
    return lab.astype(np.int64)


def score_events(
    ref: NDArray[np.float64], det: NDArray[np.float64], tol: float = TOLERANCE_S
) -> tuple[int, int, int]:
    """One-to-one matching of event times within ``tol`` s; returns (tp, fp, fn).

    Greedy on increasing distance, which is optimal for 1-D events this sparse.

    Examples
    --------
    >>> import numpy as np
    >>> score_events(np.array([1.0, 2.0]), np.array([1.05, 3.0]))
    (1, 1, 1)
    """
    ref = np.sort(np.asarray(ref, dtype=np.float64))
    det = np.sort(np.asarray(det, dtype=np.float64))
    used_d = _match(ref, det, tol)
    tp = int(used_d.sum())
    return tp, int(det.size) - tp, int(ref.size) - tp


def _match(ref: NDArray[np.float64], det: NDArray[np.float64], tol: float) -> NDArray[np.bool_]:
    """Which of the (sorted) detections :func:`score_events` matches to a reference."""
    used = np.zeros(det.size, dtype=bool)
    if ref.size == 0 or det.size == 0:
        return used
    pairs = []
    j0 = 0
    for i, r in enumerate(ref):
        while j0 < det.size and det[j0] < r - tol:
            j0 += 1
        j = j0
        while j < det.size and det[j] <= r + tol:
            pairs.append((abs(det[j] - r), i, j))
            j += 1
    pairs.sort()
    used_r: set[int] = set()
    for _, i, j in pairs:
        if i not in used_r and not used[j]:
            used_r.add(i)
            used[j] = True
    return used


EDGE_S = 0.015
"""A sound whose interval starts within this of the recording's start (or, detected, ends
within it of the recording's end) is cut by the edge: see ``score_record(censored_edges=)``."""


def score_record(
    segments: Sequence[Segment], ann: Annotation, tol: float = TOLERANCE_S,
    censored_edges: bool = False, duration_s: float | None = None,
) -> dict[str, int]:
    """TP/FP/FN of S1 and S2 for one record (keys ``s1_tp`` ... ``s2_fn``).

    With ``censored_edges`` (a supplementary convention, issue 16), sounds cut by the
    recording's edges are not scored on either side: reference sounds whose annotated
    interval starts at the recording's start (PhysioNet references begin with whatever
    state Springer's decoder started in, often a 20 ms stub), detected sounds whose interval
    touches the start or ``duration_s``, and unmatched detections outside the annotated
    span (the reference has no sounds there: its last state is never closed).

    Examples
    --------
    >>> import numpy as np
    >>> ann = Annotation(np.array([0.0, 0.02, 0.3, 0.4, 0.7, 0.82, 1.1]),
    ...                  np.array([0, 1, 2, 3, 0, 1, 2]), (0.0, 1.1), [])
    >>> segs = [Segment(0.0, 0.14, "S1"), Segment(0.7, 0.82, "S1")]
    >>> [score_record(segs, ann, censored_edges=c)[k] for c in (False, True)
    ...  for k in ("s1_tp", "s1_fp", "s1_fn")]
    [1, 1, 1, 1, 0, 0]
    """
    out: dict[str, int] = {}
    lo, hi = ann.span
    for name, sid in (("s1", 0), ("s2", 2)):
        state = ("S1", "systole", "S2", "diastole")[sid]
        if censored_edges:
            ref = np.asarray([0.5 * (a + b) for a, b in ann.intervals(sid) if a > EDGE_S
                              and not ann.in_noise(0.5 * (a + b))], dtype=np.float64)
            end = math.inf if duration_s is None else duration_s - EDGE_S
            segs = [s for s in segments if s.state == state and s.start > EDGE_S and s.end < end]
        else:
            ref = ann.centres(sid)
            segs = [s for s in segments if s.state == state]
        det = np.asarray([0.5 * (s.start + s.end) for s in segs], dtype=np.float64)
        if det.size:
            keep = (det >= lo - tol) & (det <= hi + tol)
            keep &= np.asarray([not ann.in_noise(t) for t in det])
            det = det[keep]
        tp, fp, fn = score_events(ref, det, tol)
        if censored_edges and det.size:
            det = np.sort(det)
            used = _match(np.sort(ref), det, tol)
            fp = int(np.sum(~used & (det >= lo) & (det <= hi)))
        out[f"{name}_tp"], out[f"{name}_fp"], out[f"{name}_fn"] = tp, fp, fn
    return out


def f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN) (NaN when nothing to score)."""
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else math.nan


# --------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------
def load_feature_cache(
    root: Path, cache: Path | None = None, sets: Iterable[str] = SETS, verbose: bool = False
) -> dict[str, Any]:
    """Frames, labels and annotations of all records (built once, cached to ``cache``).

    Returns a dict with lists ``records`` (:class:`RecordRef`), ``frames`` (n_k,
    :data:`~telediag.dsp.pcg.N_CHANNELS`), ``labels`` (n_k,), ``annotations`` and ``durations``
    (s). A cache of other records, or written by a front end with another number of envelope
    channels, is rebuilt.
    """
    recs = list_records(root, sets)
    if not recs:
        raise DataError(f"no annotated recordings under {root}")
    frames: list[NDArray[np.float64]] = []
    durations: list[float] = []
    names = [f"{r.set}/{r.name}" for r in recs]
    loaded = False
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["names"]) == names and z["frames"].shape[1:] == (N_CHANNELS,):
            offs = z["offsets"]
            allf = z["frames"]
            frames = [allf[offs[i] : offs[i + 1]] for i in range(len(recs))]
            durations = [float(d) for d in z["durations"]]
            loaded = True
    if not loaded:
        for i, r in enumerate(recs):
            x, fs = read_audio(r.wav)
            frames.append(extract_frames(x, fs))
            durations.append(x.size / fs)
            if verbose and i % 100 == 0:
                print(f"  features {i}/{len(recs)}", flush=True)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            offs = np.concatenate(([0], np.cumsum([f.shape[0] for f in frames])))
            np.savez(cache, names=np.asarray(names), offsets=offs,
                     frames=np.concatenate(frames), durations=np.asarray(durations))
    anns = [load_circor_annotation(r.ann, d) if r.set == CIRCOR else load_annotation(r.ann)
            for r, d in zip(recs, durations, strict=True)]
    labels = [frame_labels(a, f.shape[0]) for a, f in zip(anns, frames, strict=True)]
    return {"records": recs, "frames": frames, "labels": labels, "annotations": anns,
            "durations": durations}


# --------------------------------------------------------------------------------------
# ECG reference heart rate
# --------------------------------------------------------------------------------------
ECG_SKIP_S = 0.5
"""Seconds skipped at the start of the ECG: the recorder's start-up step (0 then a jump)."""


def _ecg_body(ecg: NDArray[np.float64], fs: float) -> NDArray[np.float64]:
    x = np.nan_to_num(np.asarray(ecg, dtype=np.float64))
    skip = int(round(ECG_SKIP_S * fs))
    return np.ascontiguousarray(x[skip:] if x.size > 4 * skip else x)


def ecg_heart_rate(ecg: NDArray[np.float64], fs: float) -> float:
    """Median-RR heart rate (bpm) from an ECG lead.

    R peaks come from the project's streaming Pan-Tompkins detector
    (:func:`telediag.dsp.qrs.detect`, validated on MIT-BIH: polarity-free peak refinement,
    T-wave discrimination, search-back); the first :data:`ECG_SKIP_S` s (the recorder's
    start-up step) are skipped and NaN samples zeroed.  The rate is 60 / median RR; NaN with
    fewer than 3 beats.
    """
    from telediag.dsp.qrs import detect

    x = _ecg_body(ecg, fs)
    pk = detect(x, fs)
    if pk.size < 3:
        return math.nan
    return float(60.0 / np.median(np.diff(pk) / fs))


def ecg_autocorr_heart_rate(ecg: NDArray[np.float64], fs: float) -> float:
    """Heart rate (bpm) from the autocorrelation of the ECG's QRS-energy envelope.

    Band-pass 8-30 Hz (zero phase), squared slope integrated over 80 ms, clipped at its 99th
    percentile, resampled to 100 Hz (start-up step skipped as in :func:`ecg_heart_rate`); the period is the highest autocorrelation peak between
    0.3 and 2 s.  A second, independent estimate used to flag unreliable ECG references.
    """
    from scipy import signal

    x = _ecg_body(ecg, fs)
    sos = signal.butter(3, [8.0, 30.0], btype="bandpass", fs=fs, output="sos")
    y = signal.sosfiltfilt(sos, x)
    e = np.gradient(y) ** 2
    w = max(1, int(0.08 * fs))
    e = np.convolve(e, np.ones(w) / w, mode="same")
    step = max(1, int(round(fs / 100)))
    e = e[::step]
    e = np.minimum(e, np.percentile(e, 99))
    e = e - e.mean()
    if e.size < 400 or not np.any(e):
        return math.nan
    ac = np.correlate(e, e, mode="full")[e.size - 1 :]
    lo, hi = 30, 200
    k = lo + int(np.argmax(ac[lo:hi]))
    return float(60.0 * fs / step / k)


def ecg_reference(ecg: NDArray[np.float64], fs: float, agree_bpm: float = 5.0
                  ) -> tuple[float, bool]:
    """ECG reference heart rate and whether it is trustworthy.

    The reference is :func:`ecg_heart_rate` (median RR); it is flagged reliable when the
    independent autocorrelation estimate agrees within ``agree_bpm``.  Only the ECG is
    used to decide, never the PCG result.
    """
    hr = ecg_heart_rate(ecg, fs)
    hr2 = ecg_autocorr_heart_rate(ecg, fs)
    return hr, bool(math.isfinite(hr) and math.isfinite(hr2) and abs(hr - hr2) <= agree_bpm)


# --------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------
def evaluate_records(
    data: dict[str, Any], idx: Sequence[int], params: PCGSegParams, tol: float = TOLERANCE_S
) -> dict[str, Any]:
    """Segment the records ``idx`` (from cached frames) and total their S1/S2 counts."""
    keys = ("s1_tp", "s1_fp", "s1_fn", "s2_tp", "s2_fp", "s2_fn")
    tot = dict.fromkeys(keys, 0)
    edge = dict.fromkeys(keys, 0)  # score_record(censored_edges=True): supplementary
    per_record = []
    for i in idx:
        r: RecordRef = data["records"][i]
        a = analyze_frames(data["frames"][i], data["durations"][i], 2000, params)
        sc = score_record(a.segments, data["annotations"][i], tol)
        sc_e = score_record(a.segments, data["annotations"][i], tol, censored_edges=True,
                            duration_s=data["durations"][i])
        for k in tot:
            tot[k] += sc[k]
            edge[k] += sc_e[k]
        per_record.append((r.set, r.name, sc, a.heart_rate_bpm, a.quality))
    return {
        "n_records": len(idx),
        **tot,
        "s1_f1": f1(tot["s1_tp"], tot["s1_fp"], tot["s1_fn"]),
        "s2_f1": f1(tot["s2_tp"], tot["s2_fp"], tot["s2_fn"]),
        **{f"edge_{k}": v for k, v in edge.items()},
        "per_record": per_record,
    }


def cross_validate(
    data: dict[str, Any], scheme: str = "set", n_folds: int = 5, seed: int = 0,
    tol: float = TOLERANCE_S, verbose: bool = False, test_only: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Train on the other folds, score each held-out fold.

    Parameters
    ----------
    scheme : {"set", "random"}
        ``"set"``: leave one database out (those present in ``data``: a, b, c, d, f and
        optionally circor);
        ``"random"``: ``n_folds`` random record folds (seeded).
    test_only : sequence of str
        Databases scored as held-out folds but never used for training (e.g. ``("circor",)``:
        adding CirCor to the training sets lowered the PhysioNet folds' F1).
    """
    from telediag.models.pcg_segmentation.train import fit_params

    recs: list[RecordRef] = data["records"]
    n = len(recs)
    if scheme == "set":
        names = list(dict.fromkeys(r.set for r in recs))
        folds = [(s, [i for i in range(n) if recs[i].set == s]) for s in names]
    elif scheme == "random":
        perm = np.random.default_rng(seed).permutation(n)
        folds = [(f"r{k}", sorted(perm[k::n_folds].tolist())) for k in range(n_folds)]
    else:
        raise ValueError(f"scheme must be 'set' or 'random', got {scheme!r}")
    results = []
    for name, test in folds:
        test_set = set(test)
        train = [i for i in range(n) if i not in test_set and recs[i].set not in test_only]
        params = fit_params(data, train)
        res = evaluate_records(data, test, params, tol)
        res["fold"] = name
        results.append(res)
        if verbose:
            print(f"  fold {name}: n={res['n_records']} S1 F1={res['s1_f1']:.4f} "
                  f"S2 F1={res['s2_f1']:.4f}", flush=True)
    return results


def heart_rate_agreement(root: Path, tol_bpm: float = 5.0) -> dict[str, Any]:
    """PCG heart rate (autocorrelation and decoded cycles) vs ECG median-RR, a0001-a0100."""
    import wfdb

    from telediag.dsp.pcg import analyze_signal
    from telediag.evaluation.pcg_analyze import read_wav
    rows = []
    for k in range(1, 101):
        name = f"a{k:04d}"
        rec = wfdb.rdrecord(str(root / "training-a" / name))
        if rec.p_signal is None or rec.p_signal.shape[1] < 2:
            continue
        hr_ecg, reliable = ecg_reference(rec.p_signal[:, 1], float(rec.fs))
        x, fs = read_wav(root / "training-a" / f"{name}.wav")
        a = analyze_signal(x, fs)
        s1 = [s.start for s in a.segments if s.state == "S1"]
        hr_seg = 60.0 / float(np.median(np.diff(s1))) if len(s1) >= 3 else math.nan
        rows.append((name, hr_ecg, a.heart_rate_bpm, hr_seg, a.quality, reliable))
    arr = np.asarray([[r[1], r[2], r[3]] for r in rows], dtype=np.float64)
    ok_ac = np.abs(arr[:, 1] - arr[:, 0]) <= tol_bpm
    ok_seg = np.abs(arr[:, 2] - arr[:, 0]) <= tol_bpm
    rel = np.asarray([r[5] for r in rows], dtype=bool)
    return {
        "n_records": len(rows),
        "n_reliable_ecg": int(rel.sum()),
        "tolerance_bpm": tol_bpm,
        "agree_hr": float(np.mean(ok_ac)),
        "agree_segments": float(np.mean(ok_seg)),
        "agree_hr_reliable_ecg": float(np.mean(ok_ac[rel])),
        "agree_segments_reliable_ecg": float(np.mean(ok_seg[rel])),
        "disagreements": [
            {"record": r[0], "ecg": round(r[1], 1), "pcg_hr": round(r[2], 1),
             "pcg_segments": round(r[3], 1), "quality": round(r[4], 3),
             "ecg_reliable": r[5]}
            for r, a, b in zip(rows, ok_ac, ok_seg, strict=True) if not (a and b)
        ],
    }
