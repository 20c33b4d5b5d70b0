"""EDF+ / BDF+ export: signals with physical units and calibration, analysis as annotations.

Written from the EDF+ specification (Kemp & Olivan, *Clin Neurophysiol* 114:1755, 2003;
edfplus.info): a 256-byte header, 256 bytes per signal, then data records of
little-endian two's-complement samples (16-bit EDF, 24-bit BDF), with one ``EDF
Annotations`` (``BDF Annotations``) signal holding Time-stamped Annotation Lists (TALs):
``+onset\\x15duration\\x14text\\x14\\x00``; each data record starts with its own timekeeping TAL
``+t\\x14\\x14\\x00``.

* **Calibration per signal**: physical min/max are the signal's own range (rounded outward to
  fit the 8-character fields), digital min/max the full integer range, so one step is
  ``(pmax - pmin) / (dmax - dmin)``. ``bits="auto"`` writes 16-bit EDF+ when that step is no
  coarser than the source's own resolution, else 24-bit BDF+.
* **Lost ranges** are marked spans: lost samples (NaN) are written as 0 and every lost range
  is an annotation ``signal lost <label>`` with its onset and duration, so nothing missing
  looks measured and the file stays EDF+C, which every reader opens. ``discontinuous=True``
  instead leaves out the data records whose samples were all lost and writes EDF+D (the
  timekeeping TALs carry the true onsets); pyedflib/EDFlib, MNE and edfio cannot read EDF+D,
  so it is not the default and it is checked here only by parsing the file's own bytes.
* **Source clock steps** (``clock_step_ns`` entries of the recorder's ``.gaps.jsonl``): a
  recording is written as one file per stretch between steps (``<name>.edf``, then
  ``<name>.seg2.edf`` ...), each starting at its own source time, so every sample and annotation
  keeps its source time (an EDF+D record cannot go back in time; a step forward may be years).
  Each file notes the step (``source clock step +3600.000 s, continues in ...``).
* **Annotations**: beats (``beat V p=0.99``; ``unusable`` when the engine marked it so), alarms
  with onset and duration (``alarm tachycardia``, technical ones ``technical alarm leads_off``,
  AF episodes ``AF episode``), unusable-signal spans per lead (``unusable MLII``), heart-sound
  segments (``S1``, ``systole``, ``S2``, ``diastole``) and the abnormality result per window.

Times in the header are UTC (source clock); the start's fraction of a second is the onset of
the first data record, as EDF+ allows.

Examples
--------
>>> import numpy as np
>>> sig = EdfSignal("MLII", "mV", 360.0, np.sin(np.arange(720) / 20.0), resolution=0.005)
>>> info = write_edf("x.edf", [sig], [EdfAnnotation(0.5, None, "beat N")], start_ns=0)  # doctest: +SKIP
>>> info.file_type  # doctest: +SKIP
'EDF+C'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from telediag.errors import DataError

__all__ = ["EdfAnnotation", "EdfInfo", "EdfSignal", "annotations_from_bodies", "write_edf",
           "session_to_edf", "ecg_analysis_to_edf", "pcg_analysis_to_edf", "edf_target"]

_EDF_EPOCH_S = 473385600  # 1985-01-01T00:00:00Z, the earliest date EDF's dd.mm.yy can hold
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(slots=True)
class EdfSignal:
    """One signal: label, physical unit, rate, samples (NaN = lost) and the source's step."""

    label: str
    unit: str
    fs: float
    data: np.ndarray
    resolution: float | None = None  # the source's own step in physical units (None: unknown)
    transducer: str = ""
    prefilter: str = ""
    #: physical (min, max) to calibrate with at least (default: the data's own range); lets a
    #: signal with no finite sample be written (all lost) and parts of one record share a scale
    calibration: tuple[float, float] | None = None


@dataclass(slots=True)
class EdfAnnotation:
    """An annotation: onset (s from the header's start time), duration (s or None), text."""

    onset_s: float
    duration_s: float | None
    text: str


@dataclass(slots=True)
class EdfInfo:
    """What :func:`write_edf` wrote."""

    path: Path
    file_type: str  # "EDF+C", "EDF+D", "BDF+C" or "BDF+D"
    records: int
    record_s: float
    skipped_records: int
    annotations: int
    steps: list[float]  # physical units per digital step, per signal


def _fmt(x: float, width: int, direction: int = 0) -> str:
    """``x`` in at most ``width`` characters; ``direction`` -1/+1 rounds down/up (outward)."""
    for dec in range(width, -1, -1):
        scale = 10.0 ** dec
        v = x * scale
        v = math.floor(v) if direction < 0 else math.ceil(v) if direction > 0 else round(v)
        s = f"{v / scale:.{dec}f}" if dec else f"{int(v)}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        if s == "-0":
            s = "0"
        if len(s) <= width:
            return s
    raise DataError(f"value {x!r} does not fit an EDF field of {width} characters")


def _field(s: str, width: int) -> bytes:
    b = s.encode("ascii", "replace")[:width]
    return b + b" " * (width - len(b))


def _ascii(s: str) -> str:
    """EDF header text: printable US-ASCII, spaces inside EDF+ subfields become ``_``."""
    return "".join(ch if 32 <= ord(ch) < 127 else "_" for ch in s).replace(" ", "_") or "X"


def _record_seconds(rates: Sequence[float]) -> float:
    """The shortest record duration (1 s preferred) that holds a whole number of samples."""
    for d in (1.0, 0.5, 0.25, 0.2, 0.1, 2.0, 5.0, 10.0, 0.05, 0.04, 0.02, 0.01, 20.0, 30.0, 60.0):
        if all(abs(fs * d - round(fs * d)) < 1e-6 and round(fs * d) >= 1 for fs in rates):
            return d
    raise DataError(f"no EDF data-record duration holds a whole number of samples at rates {list(rates)} Hz")


def _tal(onset: float, duration: float | None, texts: Sequence[str]) -> bytes:
    on = f"{onset:+.6f}".rstrip("0").rstrip(".")
    dur = "" if duration is None else "\x15" + (f"{max(duration, 0.0):.6f}".rstrip("0").rstrip(".") or "0")
    body = "".join(t.replace("\x14", " ").replace("\x15", " ").replace("\x00", " ") + "\x14" for t in texts)
    return (on + dur + "\x14" + body + "\x00").encode("utf-8")


def write_edf(
    path: str | Path,
    signals: Sequence[EdfSignal],
    annotations: Iterable[EdfAnnotation] = (),
    *,
    start_ns: int,
    patient: str = "X X X X",
    recording: str = "",
    bits: str | int = "auto",
    discontinuous: bool = False,
) -> EdfInfo:
    """Write an EDF+ (16-bit) or BDF+ (24-bit) file; see the module docstring.

    Parameters
    ----------
    path : str or Path
        Output file (``.edf``; a BDF+ file is written as asked, name it ``.bdf`` if you like).
    signals : sequence of EdfSignal
        All start at ``start_ns``; rates may differ (each gets its own samples per record).
    annotations : iterable of EdfAnnotation
        Onsets in seconds from ``start_ns``.
    start_ns : int
        Source time of sample 0 (UTC ns).
    patient : str
        EDF+ patient field: ``code sex birthdate name`` (``X`` for unknown subfields).
    recording : str
        Free text after the EDF+ ``Startdate dd-MMM-yyyy X X X`` subfields.
    bits : "auto", 16 or 24
        Sample width; ``auto``: 16 when its step is no coarser than every signal's
        ``resolution``, else 24.
    discontinuous : bool
        Leave out data records that are entirely lost (EDF+D) instead of marking them.

    Returns
    -------
    EdfInfo

    Raises
    ------
    telediag.errors.DataError
        No signals, a signal with no finite sample, an empty label, or ``bits`` not 16/24/auto.
    """
    if not signals:
        raise DataError("write_edf needs at least one signal")
    sigs = [np.asarray(s.data, dtype=np.float64).reshape(-1) for s in signals]
    ranges: list[tuple[float, float]] = []
    for s, x in zip(signals, sigs, strict=True):
        if not s.label:
            raise DataError("every EDF signal needs a label")
        fin = x[np.isfinite(x)]
        if fin.size == 0 and s.calibration is None:
            raise DataError(f"signal {s.label!r} has no finite sample to calibrate")
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (np.inf, -np.inf)
        if s.calibration is not None:
            lo, hi = min(lo, float(s.calibration[0])), max(hi, float(s.calibration[1]))
        if hi - lo < 1e-9 * max(1.0, abs(lo)):
            lo, hi = lo - 1.0, hi + 1.0
        ranges.append((lo, hi))
    if bits == "auto":
        need24 = False
        for s, (lo, hi) in zip(signals, ranges, strict=True):
            step16 = (hi - lo) / 65535.0
            if s.resolution is None or step16 > s.resolution:
                need24 = True
        nbits = 24 if need24 else 16
    elif bits in (16, 24, "16", "24"):
        nbits = int(bits)
    else:
        raise DataError(f"bits must be 'auto', 16 or 24, got {bits!r}")
    bdf = nbits == 24
    dmin, dmax = (-(2**23), 2**23 - 1) if bdf else (-(2**15), 2**15 - 1)
    nbytes = 3 if bdf else 2

    rec_s = _record_seconds([s.fs for s in signals])
    spr = [int(round(s.fs * rec_s)) for s in signals]
    n_rec = max(math.ceil(x.size / k) for x, k in zip(sigs, spr, strict=True))
    start_s = start_ns // 1_000_000_000
    frac = (start_ns - start_s * 1_000_000_000) / 1e9  # onset of record 0 after the header time
    known = start_s >= _EDF_EPOCH_S  # EDF dates start in 1985; earlier means "clock unknown"
    if not known:
        start_s = _EDF_EPOCH_S

    # digitise; a record is kept when any signal has a finite sample in it
    pmins, pmaxs, steps, digital, keep = [], [], [], [], np.zeros(n_rec, dtype=bool)
    for x, k, (lo, hi) in zip(sigs, spr, ranges, strict=True):
        pmin_s, pmax_s = _fmt(lo, 8, -1), _fmt(hi, 8, +1)
        pmin, pmax = float(pmin_s), float(pmax_s)
        step = (pmax - pmin) / (dmax - dmin)
        pad = np.full(n_rec * k, np.nan)
        pad[: x.size] = x
        fin = np.isfinite(pad)
        keep |= fin.reshape(n_rec, k).any(axis=1)
        zero = np.clip(round((0.0 - pmin) / step + dmin), dmin, dmax)
        d = np.where(fin, np.round((np.nan_to_num(pad) - pmin) / step + dmin), zero)
        digital.append(np.clip(d, dmin, dmax).astype(np.int32).reshape(n_rec, k))
        pmins.append(pmin_s)
        pmaxs.append(pmax_s)
        steps.append(step)
    if not keep.any():
        raise DataError("every sample is lost: nothing to write")
    if not discontinuous:
        keep[:] = True

    anns = [EdfAnnotation(a.onset_s + frac, a.duration_s, a.text) for a in annotations]
    # lost ranges as annotations (per signal, merged runs of NaN)
    for s, x in zip(signals, sigs, strict=True):
        bad = ~np.isfinite(x)
        if bad.any():
            edges = np.flatnonzero(np.diff(np.r_[0, bad.astype(np.int8), 0]))
            for a, b in zip(edges[::2], edges[1::2], strict=True):
                anns.append(EdfAnnotation(frac + a / s.fs, (b - a) / s.fs, f"signal lost {s.label}"))
    kept = np.flatnonzero(keep)
    onsets = frac + kept * rec_s
    per_rec: list[list[bytes]] = [[] for _ in kept]
    for a in sorted(anns, key=lambda a: a.onset_s):
        i = int(np.searchsorted(onsets, a.onset_s, side="right")) - 1
        per_rec[max(i, 0)].append(_tal(a.onset_s, a.duration_s, [a.text]))
    tk = [_tal(float(o), None, [""]) for o in onsets]  # "+t\x14\x14\x00"
    ann_bytes = max(len(t) + sum(len(b) for b in r) for t, r in zip(tk, per_rec, strict=True))
    ann_spr = max(1, math.ceil(ann_bytes / nbytes))

    discontinuous = len(kept) != n_rec
    ftype = ("BDF+" if bdf else "EDF+") + ("D" if discontinuous else "C")
    ns = len(signals) + 1
    t = time.gmtime(start_s)
    hdr = bytearray()
    hdr += b"\xffBIOSEMI" if bdf else _field("0", 8)
    hdr += _field(patient, 80)
    startdate = f"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year}" if known else "X"
    hdr += _field(f"Startdate {startdate} X X X {recording}".strip(), 80)
    hdr += _field(f"{t.tm_mday:02d}.{t.tm_mon:02d}.{t.tm_year % 100:02d}", 8)
    hdr += _field(f"{t.tm_hour:02d}.{t.tm_min:02d}.{t.tm_sec:02d}", 8)
    hdr += _field(str(256 * (ns + 1)), 8)
    hdr += _field(ftype, 44)
    hdr += _field(str(len(kept)), 8)
    hdr += _field(_fmt(rec_s, 8), 8)
    hdr += _field(str(ns), 4)
    labels = [s.label for s in signals] + ["BDF Annotations" if bdf else "EDF Annotations"]
    cols: list[list[str]] = [
        labels,
        [s.transducer for s in signals] + [""],
        [s.unit for s in signals] + [""],
        pmins + ["-1"],
        pmaxs + ["1"],
        [str(dmin)] * len(signals) + [str(dmin)],
        [str(dmax)] * len(signals) + [str(dmax)],
        [s.prefilter for s in signals] + [""],
        [str(k) for k in spr] + [str(ann_spr)],
        [""] * ns,
    ]
    for col, width in zip(cols, (16, 80, 8, 8, 8, 8, 8, 80, 8, 32), strict=True):
        for v in col:
            hdr += _field(v, width)
    assert len(hdr) == 256 * (ns + 1)

    out = Path(path)
    with open(out, "wb") as f:
        f.write(hdr)
        for j, r in enumerate(kept):
            for dig in digital:
                row = dig[r].astype("<i4")
                if bdf:
                    f.write(row.view(np.uint8).reshape(-1, 4)[:, :3].tobytes())
                else:
                    f.write(row.astype("<i2").tobytes())
            ann = tk[j] + b"".join(per_rec[j])
            f.write(ann + b"\x00" * (ann_spr * nbytes - len(ann)))
    return EdfInfo(out, ftype, len(kept), rec_s, n_rec - len(kept), len(anns), steps)


# --------------------------------------------------------------------------- annotation builders

Clock = Callable[[dict[str, Any], str, str], "float | None"]


def _clock_ns(start_ns: int, fs: float, first_sample: int = 0) -> Clock:
    """Seconds from ``start_ns`` of a body's ``<x>_ns`` field (falls back to ``<x>_sample``, counted
    from ``first_sample``)."""

    def at(d: dict[str, Any], sample_key: str, ns_key: str) -> float | None:
        v = d.get(ns_key)
        if isinstance(v, int) and not isinstance(v, bool):
            return (v - start_ns) / 1e9
        s = d.get(sample_key)
        return (s - first_sample) / fs if isinstance(s, (int, float)) and not isinstance(s, bool) else None

    return at


def _clock_samples(fs: float, start_ns: int = 0) -> Clock:
    """Seconds of a body's ``<x>_sample`` field (falls back to ``<x>_ns`` from ``start_ns``)."""

    def at(d: dict[str, Any], sample_key: str, ns_key: str) -> float | None:
        s = d.get(sample_key)
        if isinstance(s, (int, float)) and not isinstance(s, bool):
            return s / fs
        v = d.get(ns_key)
        return (v - start_ns) / 1e9 if isinstance(v, int) and not isinstance(v, bool) else None

    return at


_TECHNICAL = {"leads_off", "lead_off", "signal_unusable", "unusable", "noise", "flat", "saturation", "signal_loss",
              "technical", "artifact", "artefact"}


def alarm_text(body: dict[str, Any]) -> str:
    """``alarm tachycardia`` / ``technical alarm leads_off`` / ``AF episode`` for an alarm body."""
    typ = str(body.get("type") or body.get("alarm") or "alarm")
    if typ.lower() in ("afib", "af", "atrial_fibrillation"):
        return "AF episode"
    technical = (body.get("class") == "technical" or body.get("category") == "technical"
                 or body.get("technical") is True or typ.lower() in _TECHNICAL)
    lead = body.get("lead")
    return ("technical alarm " if technical else "alarm ") + typ + (f" {lead}" if lead else "")


def alarm_episodes(bodies: Iterable[dict[str, Any]], at: Clock, end_s: float | None) -> list[tuple[float, float | None, dict[str, Any]]]:
    """Pair ``on``/``off`` alarm bodies into ``(onset_s, duration_s, body)`` episodes.

    An episode still on at the end lasts until ``end_s`` (``None`` duration when unknown).
    Bodies with neither ``state`` nor a pairing are one-off alarms at their onset.
    """
    open_: dict[tuple[Any, ...], tuple[float, dict[str, Any]]] = {}
    out: list[tuple[float, float | None, dict[str, Any]]] = []
    for b in bodies:
        if not isinstance(b, dict):
            continue
        key = (b.get("type"), b.get("lead"), b.get("onset_ns"), b.get("onset_sample"))
        onset = at(b, "onset_sample", "onset_ns")
        if onset is None:
            onset = at(b, "sample", "t_ns")
        if onset is None:
            continue
        state = b.get("state")
        if state == "on":
            open_[key] = (onset, b)
        elif state == "off":
            open_.pop(key, None)
            end = at(b, "end_sample", "end_ns")
            out.append((onset, None if end is None else max(0.0, end - onset), b))
        else:
            dur = b.get("duration_s")
            out.append((onset, float(dur) if isinstance(dur, (int, float)) else None, b))
    for onset, b in open_.values():
        out.append((onset, None if end_s is None else max(0.0, end_s - onset), {**b, "open_at_end": True}))
    out.sort(key=lambda e: e[0])
    return out


def annotations_from_bodies(
    *,
    at: Clock,
    end_s: float | None,
    beats: Iterable[dict[str, Any]] = (),
    alarms: Iterable[dict[str, Any]] = (),
    quality: Iterable[dict[str, Any]] = (),
    segments: Iterable[dict[str, Any]] = (),
    pcg_results: Iterable[dict[str, Any]] = (),
) -> list[EdfAnnotation]:
    """EDF+ annotations from engine bodies (the same schemas live and offline).

    ``beats``: beat dicts (``sample``/``t_ns``, ``label``, ``probs``, optional ``usable``);
    ``alarms``: alarm bodies; ``quality``: ECG quality bodies (``blocks`` with per-channel
    ``usable``, ``hop_s``, ``channels``); ``segments``: PCG segment dicts (``start_ns``/
    ``start_sample``, ``end_*``, ``state``); ``pcg_results``: abnormality bodies
    (``start_ns``, ``end_ns``, ``label``, ``abnormal_prob``).
    """
    out: list[EdfAnnotation] = []
    for b in beats:
        t = at(b, "sample", "t_ns")
        if t is None:
            continue
        label = b.get("label")
        probs = b.get("probs") or {}
        p = probs.get(label) if isinstance(probs, dict) and label else None
        text = (f"beat {label}" if label else "beat (unclassified)") + (
            f" p={p:.2f}" if isinstance(p, (int, float)) else "")
        if b.get("usable") is False:
            text += " unusable"
        out.append(EdfAnnotation(t, None, text))
    for onset, dur, body in alarm_episodes(alarms, at, end_s):
        text = alarm_text(body)
        if body.get("open_at_end"):
            text += " (still on at end)"
        out.append(EdfAnnotation(onset, dur, text))
    for q in quality:
        hop = q.get("hop_s")
        chans = q.get("channels") or []
        for blk in q.get("blocks") or []:
            t = at(blk, "sample", "t_ns")
            usable = blk.get("usable") or []
            if t is None or not isinstance(hop, (int, float)):
                continue
            for ch, u in zip(chans, usable, strict=False):
                if u is False:
                    out.append(EdfAnnotation(t, float(hop), f"unusable {ch}"))
    for s in segments:
        t0 = at(s, "start_sample", "start_ns")
        t1 = at(s, "end_sample", "end_ns")
        for k0, k1 in (("start_s", "end_s"), ("start", "end")):  # offline documents: seconds
            if t0 is None and isinstance(s.get(k0), (int, float)):
                t0, t1 = float(s[k0]), float(s.get(k1, s[k0]))
        if t0 is None:
            continue
        out.append(EdfAnnotation(t0, None if t1 is None else max(0.0, t1 - t0), str(s.get("state", "segment"))))
    for r in pcg_results:
        t0 = at(r, "start_sample", "start_ns")
        t1 = at(r, "end_sample", "end_ns")
        if t0 is None:
            continue
        p = r.get("abnormal_prob")
        text = f"heart sounds {r.get('label', '?')}" + (f" p(abnormal)={p:.2f}" if isinstance(p, (int, float)) else "")
        out.append(EdfAnnotation(t0, None if t1 is None else max(0.0, t1 - t0), text))
    return _merge_unusable(out)


def _merge_unusable(anns: list[EdfAnnotation]) -> list[EdfAnnotation]:
    """Join back-to-back ``unusable <lead>`` blocks into one span each."""
    rest = [a for a in anns if not a.text.startswith("unusable ")]
    spans: dict[str, list[EdfAnnotation]] = {}
    for a in sorted((a for a in anns if a.text.startswith("unusable ")), key=lambda a: a.onset_s):
        lst = spans.setdefault(a.text, [])
        if lst and lst[-1].duration_s is not None and a.onset_s <= lst[-1].onset_s + lst[-1].duration_s + 1e-6:
            last = lst[-1]
            last.duration_s = max(last.onset_s + (last.duration_s or 0), a.onset_s + (a.duration_s or 0)) - last.onset_s
        else:
            lst.append(EdfAnnotation(a.onset_s, a.duration_s, a.text))
    return rest + [a for lst in spans.values() for a in lst]


# --------------------------------------------------------------------------- front ends

def edf_target(out: str | Path, name: str, n_inputs: int) -> Path:
    """Where ``--edf OUT`` writes for input ``name``: OUT itself for one input (unless it is a
    folder), else ``OUT/<name>.edf``."""
    p = Path(out)
    if n_inputs > 1 or p.is_dir() or str(out).endswith("/"):
        p.mkdir(parents=True, exist_ok=True)
        return p / f"{name}.edf"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _bodies(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["body"] for r in recs if isinstance(r.get("body"), dict)]


def _patient_field(meta: dict[str, Any]) -> str:
    code = meta.get("patient") or meta.get("patient_id") or "X"
    sex = {"male": "M", "female": "F", "m": "M", "f": "F"}.get(str(meta.get("sex", "")).lower(), "X")
    name = meta.get("patient_name") or "X"
    return f"{_ascii(str(code))} {sex} X {_ascii(str(name))}"


def session_to_edf(session: Any, out_dir: str | Path, *, bits: str | int = "auto",
                   discontinuous: bool = False) -> list[EdfInfo]:
    """One EDF+/BDF+ file per recorded signal stream of a :class:`~telediag.exports.session.Session`
    (one per stretch between source clock steps, see the module docstring).

    ECG files carry beats, alarms (AF episodes included) and unusable spans; PCG files the
    S1/systole/S2/diastole segments and the abnormality windows. ECG streams use
    ``resolution`` 0.5 uV (a tenth of MIT-BIH's 5 uV step), so ``auto`` gives 16-bit EDF+ when
    the signal's range allows it; PCG (arbitrary units, audio dynamic range) gets 24-bit BDF+.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    for sig in session.signals:
        src = sig.source
        # stretches between source clock steps; one with no sample left has no file (its
        # annotations go to a neighbour's) and all share each lead's calibration
        segs = [sg for sg in sig.segments() if np.isfinite(sig.signal[sg[0]:sg[1]]).any()] or sig.segments()
        fin = np.isfinite(sig.signal)
        cal = [(float(sig.signal[fin[:, i], i].min()), float(sig.signal[fin[:, i], i].max()))
               if len(segs) > 1 and fin[:, i].any() else None for i in range(sig.signal.shape[1])]
        for k, (a, b, seg_t0) in enumerate(segs):
            # a source clock step (gaps.jsonl clock_step_ns) starts a new file: each file's samples
            # and annotations keep their own source times (first: <name>.edf, then <name>.seg2.edf ...)
            start_ns = seg_t0 + int(round(a * 1e9 / sig.fs))
            at = _clock_ns(start_ns, sig.fs, first_sample=a)
            end_s = (b - a) / sig.fs
            if sig.kind == "pcg":
                pcg_segs = [s for b_ in _bodies(session.records(src, "segments")) for s in b_.get("segments") or []]
                res = [b_ for b_ in _bodies(session.records(src, "quality")) if b_.get("type") == "pcg_abnormal"]
                anns = annotations_from_bodies(at=at, end_s=end_s, segments=pcg_segs, pcg_results=res)
            else:
                beats = [bt for body in _bodies(session.records(src, "beats")) for bt in body.get("beats") or []]
                anns = annotations_from_bodies(at=at, end_s=end_s, beats=beats,
                                               alarms=_bodies(session.records(src, "alarm")),
                                               quality=[q for q in _bodies(session.records(src, "quality"))
                                                        if "blocks" in q])
            name = sig.name if k == 0 else f"{sig.name}.seg{k + 1}"
            if len(segs) > 1:
                anns = _segment_annotations(anns, segs, k, sig.fs, sig.name)
            res_step = 5e-4 if sig.kind == "ecg" and sig.units and sig.units[0] == "mV" else None
            edf_sigs = [EdfSignal(ch, unit or "", sig.fs, sig.signal[a:b, i], resolution=res_step,
                                  transducer=f"telediag {sig.kind}", prefilter="engine filter", calibration=cal[i])
                        for i, (ch, unit) in enumerate(zip(sig.channels, sig.units, strict=True))]
            meta = session.meta.get(sig.stream) or session.meta.get(src) or {}  # this stream's patient only
            rec_text = f"stream={sig.stream}" + (f" part={k + 1}/{len(segs)}" if len(segs) > 1 else "")
            infos.append(write_edf(out / f"{name}.edf", edf_sigs, anns, start_ns=start_ns,
                                   patient=_patient_field(meta), recording=rec_text, bits=bits,
                                   discontinuous=discontinuous))
    return infos


def _segment_annotations(anns: list[EdfAnnotation], segs: Sequence[tuple[int, int, int]], k: int, fs: float,
                         name: str) -> list[EdfAnnotation]:
    """The annotations of stretch ``k`` of a record split at source clock steps.

    ``anns`` hold onsets from stretch ``k``'s start. An annotation goes to every stretch whose
    time span holds its onset (after a step back two spans overlap); one that no span holds goes
    to the last stretch that starts before it (the first when it precedes them all), so none is
    lost. The step itself is an annotation at the end of the stretch before it and at 0 in the next.
    """
    spans = [(t0 + a * 1e9 / fs, t0 + b * 1e9 / fs) for a, b, t0 in segs]
    base = spans[k][0]
    eps = 0.5e9 / fs
    out = []
    for an in anns:
        t = base + an.onset_s * 1e9
        holders = [j for j, (s0, s1) in enumerate(spans) if s0 - eps <= t < s1 + eps]
        if not holders:
            before = [j for j, (s0, _) in enumerate(spans) if s0 <= t]
            holders = [max(before, key=lambda j: spans[j][0])] if before else [0]
        if k in holders:
            out.append(an)
    dur = (segs[k][1] - segs[k][0]) / fs

    def step_s(j: int) -> float:  # the clock step between stretch j-1 and j
        return (segs[j][2] - segs[j - 1][2]) / 1e9

    def fname(j: int) -> str:
        return f"{name}.edf" if j == 0 else f"{name}.seg{j + 1}.edf"

    if k + 1 < len(segs):
        out.append(EdfAnnotation(dur, None, f"source clock step {step_s(k + 1):+.3f} s, continues in {fname(k + 1)}"))
    if k > 0:
        out.append(EdfAnnotation(0.0, None, f"source clock step {step_s(k):+.3f} s, continued from {fname(k - 1)}"))
    return out


def ecg_analysis_to_edf(rec: Any, result: dict[str, Any], path: str | Path, *, bits: str | int = "auto") -> EdfInfo:
    """``telediag analyze ecg --edf``: the input record plus the analysis as annotations.

    ``rec`` is the :class:`~telediag.sources.readers.Recording` that was analysed; the
    resolution of a WFDB input is its ADC step when the reader knows it (``rec.resolution``),
    else 0.5 uV for mV signals.
    """
    fs = float(rec.fs)
    at = _clock_samples(fs)
    q = result.get("quality") or {}
    quality = [{"hop_s": q.get("hop_s"), "channels": list(rec.channels), "blocks": q.get("blocks") or []}]
    anns = annotations_from_bodies(at=at, end_s=rec.signal.shape[0] / fs, beats=result.get("beats") or [],
                                   alarms=result.get("alarms") or [], quality=quality)
    res = getattr(rec, "resolution", None)
    sigs = [EdfSignal(ch, unit or "", fs, np.asarray(rec.signal)[:, i],
                      resolution=(res[i] if isinstance(res, (list, tuple)) else res)
                      or (5e-4 if unit == "mV" else None))
            for i, (ch, unit) in enumerate(zip(rec.channels, rec.units, strict=True))]
    return write_edf(path, sigs, anns, start_ns=0, recording=f"telediag analyze ecg {rec.name}", bits=bits)


def pcg_analysis_to_edf(x: np.ndarray, fs: float, doc: dict[str, Any], path: str | Path,
                        *, name: str = "PCG", bits: str | int = "auto") -> EdfInfo:
    """``telediag analyze pcg --edf``: the heart sounds plus segments and the abnormality result."""
    at = _clock_samples(float(fs))
    dur = len(x) / float(fs)
    results = []
    if doc.get("label") is not None:
        results.append({"start_sample": 0, "end_sample": len(x), "label": doc.get("label"),
                        "abnormal_prob": doc.get("abnormal_prob")})
    anns = annotations_from_bodies(at=at, end_s=dur, segments=doc.get("segments") or [], pcg_results=results)
    sig = EdfSignal("PCG", "", float(fs), np.asarray(x, dtype=np.float64).reshape(-1), resolution=None)
    return write_edf(path, [sig], anns, start_ns=0, recording=f"telediag analyze pcg {name}", bits=bits)
