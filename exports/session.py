"""Read a ``telediag record`` folder back: signals, annotations and video, by source stream.

The recorder writes, per signal stream, a WFDB format-32 record (``bed-1_ecg_filtered.hea``/
``.dat``, lost samples as NaN, lost ranges and source clock steps in ``.gaps.jsonl``) and, per
source stream and annotation kind, JSON lines ``<stream>.<kind>.jsonl`` (``{"t0_ns", "seq",
"body"}``) with the bodies exactly as the engine published them; ``session.json`` (written by recorders from this
version on) lists every stream with its kind, spec and the source's ``meta``. This module
turns that folder into a :class:`Session` for the EDF+, FHIR and report exporters. It is
tolerant: unknown kinds and unknown body fields are kept as they are, a truncated last line
(a recorder killed mid-write) is skipped.

Examples
--------
>>> s = load_session("rec")  # doctest: +SKIP
>>> [sig.stream for sig in s.signals], sorted(s.sources)  # doctest: +SKIP
(['bed-1/ecg/filtered'], ['bed-1/ecg'])
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from telediag.errors import DataError

__all__ = ["Session", "SignalRecord", "load_session", "source_of"]


def source_of(stream: str) -> str:
    """``bed-1/ecg/filtered`` -> ``bed-1/ecg`` (the source stream an output belongs to)."""
    parts = stream.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else stream


def _safe(stream: str) -> str:
    return re.sub(r"[^-\w]", "_", stream)


@dataclass(slots=True)
class SignalRecord:
    """One recorded signal stream (physical units, NaN where samples were lost)."""

    name: str  # record name in the folder (``bed-1_ecg_filtered``)
    stream: str  # stream id (``bed-1/ecg/filtered``)
    kind: str  # ``ecg`` or ``pcg``
    fs: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    t0_ns: int  # source time of sample 0
    signal: np.ndarray  # (n, channels) float64
    gaps: list[dict[str, Any]] = field(default_factory=list)
    resolution: float = 1e-5  # physical units per recorded step

    @property
    def source(self) -> str:
        return source_of(self.stream)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[0] / self.fs

    def segments(self) -> list[tuple[int, int, int]]:
        """``(first_sample, end_sample, t0_ns)`` per stretch between source clock steps.

        A source clock step (a ``clock_step_ns`` entry in ``.gaps.jsonl``) does not move the
        header's ``t0_ns`` (the time of sample 0): the samples from the entry's ``first_sample``
        on are at ``t0_ns + (sum of clock_step_ns so far) + index / fs``; ``t0_ns`` here is the
        time of sample 0 on that stretch's timeline. One stretch when the clock never stepped.
        """
        n = self.signal.shape[0]
        out = [(0, n, self.t0_ns)]
        for g in self.gaps:
            step, first = g.get("clock_step_ns"), g.get("first_sample")
            if not isinstance(step, int) or not isinstance(first, int) or isinstance(step, bool):
                continue
            a, _, t0 = out[-1]
            first = min(max(first, a), n)
            out[-1] = (a, first, t0)
            out.append((first, n, t0 + step))
        return [sg for sg in out if sg[1] > sg[0]] or [out[-1]]

    def t_ns(self, sample: float) -> int:
        """Source time of a sample index (on the timeline of the stretch it belongs to)."""
        t0 = self.t0_ns
        for a, _, seg_t0 in self.segments():
            if sample >= a:
                t0 = seg_t0
        return t0 + int(round(sample * 1e9 / self.fs))

    def index_of(self, t_ns: int) -> int:
        """Sample index (may be out of range) of a source time: on the first stretch whose span
        holds it (two overlap after a step back), else on the last stretch that starts before it."""
        segs = self.segments()
        span = [(t0 + round(a * 1e9 / self.fs), t0 + round(b * 1e9 / self.fs)) for a, b, t0 in segs]
        pick = next((j for j, (s0, s1) in enumerate(span) if s0 <= t_ns < s1), None)
        if pick is None:
            before = [j for j, (s0, _) in enumerate(span) if s0 <= t_ns]
            pick = max(before, key=lambda j: span[j][0]) if before else 0
        return int(round((t_ns - segs[pick][2]) * self.fs / 1e9))

    @property
    def start_ns(self) -> int:
        """Earliest source time covered (``t0_ns`` unless the clock stepped back)."""
        return min(t0 + int(round(a * 1e9 / self.fs)) for a, _, t0 in self.segments())

    @property
    def end_ns(self) -> int:
        """Latest source time covered (the end of the last sample)."""
        return max(t0 + int(round(b * 1e9 / self.fs)) for _, b, t0 in self.segments())


@dataclass(slots=True)
class Session:
    """A recording folder read back."""

    path: Path
    signals: list[SignalRecord]
    #: ``{source stream: {kind: [{"t0_ns", "seq", "body"}, ...]}}`` in file order
    sources: dict[str, dict[str, list[dict[str, Any]]]]
    #: ``{stream: {"mp4": Path | None, "frames": [{"t0_ns", "seq", "keyframe"}]}}``
    video: dict[str, dict[str, Any]]
    #: stream id -> the source's ``meta`` as recorded (patient, encounter, ...), when known
    meta: dict[str, dict[str, Any]]

    def records(self, source: str, kind: str) -> list[dict[str, Any]]:
        """The JSON lines of one source stream and kind (empty when none)."""
        return self.sources.get(source, {}).get(kind, [])

    def signal_of(self, source: str, kind: str | None = None) -> SignalRecord | None:
        """The (first) signal record that belongs to ``source``."""
        for s in self.signals:
            if s.source == source and (kind is None or s.kind == kind):
                return s
        return None

    @property
    def start_ns(self) -> int | None:
        ts = [s.start_ns for s in self.signals]
        for kinds in self.sources.values():
            for recs in kinds.values():
                ts.extend(r["t0_ns"] for r in recs[:1] if isinstance(r.get("t0_ns"), int))
        return min(ts) if ts else None

    @property
    def end_ns(self) -> int | None:
        ts = [s.end_ns for s in self.signals]
        for kinds in self.sources.values():
            for recs in kinds.values():
                ts.extend(r["t0_ns"] for r in recs[-1:] if isinstance(r.get("t0_ns"), int))
        return max(ts) if ts else None

    def patient(self) -> dict[str, Any]:
        """Patient/encounter identifiers from the streams' ``meta`` (first one found)."""
        for m in self.meta.values():
            if any(k in m for k in ("patient", "patient_id", "encounter")):
                return m
        return {}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a recorder that was killed mid-write
            if isinstance(d, dict):
                out.append(d)
    return out


def _read_signal(hea: Path, streams: dict[str, dict[str, Any]]) -> SignalRecord:
    lines = [ln for ln in hea.read_text().splitlines() if ln.strip()]
    head = lines[0].split()
    name, nsig, fs, n = head[0], int(head[1]), float(head[2]), int(head[3])
    t0_ns = None
    channels: list[str] = []
    units: list[str] = []
    gains: list[float] = []
    for ln in lines[1:]:
        if ln.startswith("#"):
            m = re.search(r"t0_ns=(-?\d+)", ln)
            if m:
                t0_ns = int(m.group(1))
            continue
        f = ln.split()
        gain, _, unit = f[2].partition("/")
        gains.append(float(gain))
        units.append(unit)
        channels.append(f[8] if len(f) > 8 else f"ch{len(channels)}")
    if len(channels) != nsig:
        raise DataError(f"{hea}: header lists {len(channels)} signals, expected {nsig}")
    if t0_ns is None:
        raise DataError(f"{hea}: not a telediag recording (no t0_ns comment)")
    raw = np.fromfile(hea.with_suffix(".dat"), dtype="<i4")
    n = min(n, raw.size // nsig)
    q = raw[: n * nsig].reshape(n, nsig)
    sig = q.astype(np.float64) / np.asarray(gains)
    sig[q == np.iinfo(np.int32).min] = np.nan
    gaps_path = hea.with_suffix(".gaps.jsonl")
    gaps = _read_jsonl(gaps_path) if gaps_path.exists() else []
    info = streams.get(name, {})
    stream = info.get("stream") or _guess_stream(name, streams)
    kind = info.get("kind") or ("pcg" if "_pcg" in name else "ecg")
    if info.get("units"):
        units = [u or "" for u in info["units"]]
    return SignalRecord(name, stream, kind, fs, tuple(channels), tuple(units), t0_ns, sig, gaps,
                        resolution=1.0 / gains[0])


def _guess_stream(name: str, streams: dict[str, dict[str, Any]]) -> str:
    for info in streams.values():
        s = info.get("stream", "")
        if s and name.startswith(_safe(s)) and name != _safe(s):
            return s + name[len(_safe(s)):].replace("_", "/")
    return name.replace("_", "/")


def load_session(path: str | Path) -> Session:
    """Read a recording folder (see the module docstring).

    Raises
    ------
    telediag.errors.DataError
        The folder does not exist or holds no telediag recording.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"recording folder {str(root)!r} does not exist")
    streams: dict[str, dict[str, Any]] = {}  # safe name -> {"stream", "kind", ...}
    meta: dict[str, dict[str, Any]] = {}
    manifest = root / "session.json"
    if manifest.exists():
        try:
            doc = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{manifest}: not valid JSON ({e})") from e
        for s in doc.get("streams", []):
            if isinstance(s, dict) and isinstance(s.get("stream"), str):
                streams[_safe(s["stream"])] = s
                if isinstance(s.get("meta"), dict):
                    meta[s["stream"]] = s["meta"]
    sources: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p in sorted(root.glob("*.jsonl")):
        if p.name.endswith((".gaps.jsonl", ".frames.jsonl")):
            continue
        stem, _, kind = p.name[: -len(".jsonl")].rpartition(".")
        recs = _read_jsonl(p)
        src = streams.get(stem, {}).get("stream")
        if src is None:  # older recordings: the stream id from the stream_opened event
            src = next((r["body"]["stream"] for r in recs if isinstance(r.get("body"), dict)
                        and isinstance(r["body"].get("stream"), str)), None)
        if src is None:
            src = stem.replace("_", "/", 1)
        sources.setdefault(src, {})[kind] = recs
        for r in recs:  # stream_opened events give kind/stream for the manifest-less case
            b = r.get("body")
            if isinstance(b, dict) and b.get("type") == "stream_opened" and isinstance(b.get("stream"), str):
                streams.setdefault(_safe(b["stream"]), {"stream": b["stream"], "kind": b.get("kind")})
    signals = [_read_signal(h, streams) for h in sorted(root.glob("*.hea"))]
    video: dict[str, dict[str, Any]] = {}
    for fr in sorted(root.glob("*.frames.jsonl")):
        stem = fr.name[: -len(".frames.jsonl")]
        stream = streams.get(stem, {}).get("stream") or _guess_stream(stem, streams)
        mp4 = fr.with_name(stem + ".mp4")
        video[stream] = {"mp4": mp4 if mp4.exists() else None, "frames": _read_jsonl(fr)}
    if not signals and not sources and not video:
        raise DataError(f"{root} holds no telediag recording (no .hea, .jsonl or video files)")
    return Session(root, signals, sources, video, meta)
