"""Stream writers behind ``telediag record``."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from telediag.transports.wire import SIGNAL_KINDS, Chunk

GAIN = 100_000.0  # adu per physical unit (fmt 32)
INVALID = np.int32(-(2**31))  # WFDB invalid sample for format 32
FLUSH_S = 1.0
MAX_FILL_S = 3600.0  # a forward t0 jump up to this long is filled with invalid samples (a gap)
MAX_BACK_S = 1.0  # a backward t0 step up to this long is an overlap (trimmed); beyond either: a clock step


def safe_name(stream: str) -> str:
    """A WFDB-safe record name for a stream id (``bed-1/ecg/filtered`` -> ``bed-1_ecg_filtered``)."""
    return re.sub(r"[^-\w]", "_", stream)


@dataclass(slots=True)
class SignalWriter:
    """Appends a sampled stream to a WFDB format-32 record."""

    path: Path  # record path without extension
    fs: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    t0_ns: int  # source time of sample 0 (the header's; never moved by a clock step)
    n: int = 0
    last_src_seq: int | None = None
    gaps: list[dict[str, Any]] = field(default_factory=list)
    _dat: Any = None
    _gap_log: TextIO | None = None
    #: source time of sample 0 on the current timeline: ``t0_ns`` plus every ``clock_step_ns`` so far
    seg_t0_ns: int | None = None
    #: ``(first_sample, time of sample 0 on its timeline)`` per stretch after a clock step
    steps: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seg_t0_ns is None:
            self.seg_t0_ns = self.t0_ns

    def open(self) -> None:
        self._dat = open(self.path.with_suffix(".dat"), "ab")
        self.write_header()

    def expected_index(self, t0_ns: int) -> int:
        """Sample index of source time ``t0_ns`` on the current timeline (after the last clock step)."""
        assert self.seg_t0_ns is not None
        return int(round((t0_ns - self.seg_t0_ns) * self.fs / 1e9))

    def append(self, c: Chunk) -> None:
        assert c.data is not None
        x = np.asarray(c.data, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        start = self.expected_index(c.t0_ns)
        src_seq = c.meta.get("src_seq", c.seq) if c.meta else c.seq
        if start - self.n > MAX_FILL_S * self.fs or self.n - start > MAX_BACK_S * self.fs:
            # the source clock stepped (or lies): filling would write up to years of invalid samples
            # (memory, disk) and a step back would drop every chunk until the clock caught up. The
            # record goes on contiguously from here and the step is listed in gaps.jsonl. The header
            # keeps t0_ns (the time of sample 0): samples from first_sample on are at
            # t0_ns + sum(clock_step_ns so far) + index / fs (exports/session.py SignalRecord.t_ns).
            self._gap(self.n, 0, self.last_src_seq, src_seq, clock_step_ns=int(c.t0_ns - self.t_ns(self.n)))
            self.seg_t0_ns = int(c.t0_ns - round(self.n * 1e9 / self.fs))
            self.steps.append((self.n, self.seg_t0_ns))
            start = self.n
        if start > self.n:  # samples that never arrived: keep the timeline, mark them invalid
            missing = start - self.n
            self._gap(self.n, missing, self.last_src_seq, src_seq)
            self._dat.write(np.full((missing, x.shape[1]), INVALID, dtype="<i4").tobytes())
            self.n += missing
        elif start < self.n:  # overlap (e.g. a replayed range): keep what we have, write the rest
            skip = self.n - start
            if skip >= x.shape[0]:
                return
            x = x[skip:]
        q = np.round(np.nan_to_num(x, nan=np.nan) * GAIN)
        q = np.where(np.isfinite(q), np.clip(q, -(2**31) + 1, 2**31 - 1), INVALID)
        self._dat.write(q.astype("<i4").tobytes())
        self.n += x.shape[0]
        self.last_src_seq = src_seq

    def index_of(self, t_ns: int) -> int:
        """Sample index of source time ``t_ns`` on the stretch (between clock steps) whose written
        samples hold it, the latest one when they overlap (a step back), else on the current
        timeline: a beat of the samples before a step that arrives after it keeps its place."""
        bounds = [(0, self.t0_ns), *self.steps]
        for j in range(len(bounds) - 1, -1, -1):
            first, seg_t0 = bounds[j]
            end = bounds[j + 1][0] if j + 1 < len(bounds) else self.n
            i = int(round((t_ns - seg_t0) * self.fs / 1e9))
            if first <= i < end:
                return i
        return self.expected_index(t_ns)

    def t_ns(self, index: int) -> int:
        """Source time of sample ``index`` on the record's current timeline (after the last clock step)."""
        assert self.seg_t0_ns is not None
        return int(self.seg_t0_ns + round(index * 1e9 / self.fs))

    def _gap(self, start: int, n: int, after_seq: int | None, resumed_seq: int, **extra: Any) -> None:
        g = {"first_sample": start, "samples": n, "start_s": start / self.fs, "duration_s": n / self.fs,
             "after_src_seq": after_seq, "resumed_src_seq": resumed_seq, **extra}
        self.gaps.append(g)
        if self._gap_log is None:
            self._gap_log = open(self.path.with_suffix(".gaps.jsonl"), "a", encoding="utf-8")
        self._gap_log.write(json.dumps(g) + "\n")
        self._gap_log.flush()

    def write_header(self) -> None:
        name = self.path.name
        start = time.gmtime(self.t0_ns / 1e9)
        base = f"{start.tm_hour:02d}:{start.tm_min:02d}:{start.tm_sec:02d} {start.tm_mday:02d}/{start.tm_mon:02d}/{start.tm_year}"
        lines = [f"{name} {len(self.channels)} {self.fs:g} {self.n} {base}"]
        for ch, unit in zip(self.channels, self.units, strict=True):
            lines.append(f"{name}.dat 32 {GAIN:g}/{unit or 'mV'} 32 0 0 0 0 {ch}")
        lines.append(f"# recorded by telediag; t0_ns={self.t0_ns}")
        tmp = self.path.with_suffix(".hea.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.path.with_suffix(".hea"))

    def flush(self) -> None:
        self._dat.flush()
        self.write_header()

    def close(self) -> None:
        self.flush()
        self._dat.close()
        if self._gap_log is not None:
            self._gap_log.close()


@dataclass(slots=True)
class BeatWriter:
    """Collects beats for a signal record and (re)writes a WFDB annotation file."""

    signal: SignalWriter
    ext: str = "beats"
    samples: list[int] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    dirty: bool = False

    def add(self, body: Any) -> None:
        for b in (body or {}).get("beats", []):
            t_ns = b.get("t_ns")
            if not isinstance(t_ns, int):
                continue
            s = self.signal.index_of(t_ns)
            if s < 0:
                continue
            label = b.get("label") or "N"
            self.samples.append(s)
            self.symbols.append(label if label in ("N", "S", "V", "F", "Q") else "Q")
            self.dirty = True

    def flush(self) -> None:
        if not self.dirty or not self.samples:
            return
        import wfdb

        order = np.argsort(self.samples, kind="stable")
        samp = np.asarray(self.samples, dtype=np.int64)[order]
        sym = [self.symbols[i] for i in order]
        wfdb.wrann(self.signal.path.name, self.ext, samp, sym, fs=self.signal.fs,
                   write_dir=str(self.signal.path.parent))
        self.dirty = False


class Recorder:
    """Writes every received chunk into ``out_dir`` (see the package docstring)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.signals: dict[str, SignalWriter] = {}
        self.beats: dict[str, BeatWriter] = {}
        self.pending_beats: dict[str, list[Any]] = {}
        self.jsonl: dict[str, TextIO] = {}
        self.video: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.streams: dict[str, dict[str, Any]] = {}  # stream id -> manifest entry (session.json)
        self._manifest_dirty = False
        self._last_flush = time.monotonic()

    def _source_of(self, stream: str) -> str:
        """``bed-1/ecg/filtered`` -> ``bed-1/ecg`` (the source stream id)."""
        parts = stream.split("/")
        return "/".join(parts[:2]) if len(parts) > 2 else stream

    def add(self, c: Chunk) -> None:
        self.counts[c.topic] = self.counts.get(c.topic, 0) + 1
        if c.stream not in self.streams and c.kind != "stats":
            self._note_stream(c)
        if c.kind in SIGNAL_KINDS and c.data is not None:
            w = self.signals.get(c.stream)
            if w is None:
                w = SignalWriter(self.out / safe_name(c.stream), float(c.rate_hz or 0), tuple(c.channels),
                                 tuple(c.units), c.t0_ns)
                w.open()
                self.signals[c.stream] = w
                src = self._source_of(c.stream)
                if src not in self.beats:
                    self.beats[src] = BeatWriter(w)
                    for body in self.pending_beats.pop(src, []):
                        self.beats[src].add(body)
            w.append(c)
        elif c.kind == "beats":
            bw = self.beats.get(c.stream)
            if bw is None:
                self.pending_beats.setdefault(c.stream, []).append(c.body)
            else:
                bw.add(c.body)
            self._jsonl(c)
        elif c.kind == "video" and c.packet is not None:
            self._video(c)
        elif c.kind != "stats":
            self._jsonl(c)
        if time.monotonic() - self._last_flush > FLUSH_S:
            self.flush()

    def _note_stream(self, c: Chunk) -> None:
        """A ``session.json`` entry: stream id, kind, spec and the source's ``meta`` (patient, ...)."""
        e: dict[str, Any] = {"stream": c.stream, "kind": c.kind, "first_t0_ns": c.t0_ns,
                             "file": safe_name(c.stream)}
        if c.kind in SIGNAL_KINDS:
            e.update(rate_hz=c.rate_hz, channels=list(c.channels), units=list(c.units))
        meta = {k: v for k, v in (c.meta or {}).items()
                if k not in ("pub_ns", "src_seq", "sent_ns", "meta_truncated")}
        if meta:
            e["meta"] = meta
        self.streams[c.stream] = e
        self._manifest_dirty = True

    def _write_manifest(self) -> None:
        doc = {"recorder": "telediag", "streams": list(self.streams.values())}
        tmp = self.out / "session.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")
        tmp.replace(self.out / "session.json")
        self._manifest_dirty = False

    def _jsonl(self, c: Chunk) -> None:
        key = f"{safe_name(c.stream)}.{c.kind}"
        f = self.jsonl.get(key)
        if f is None:
            f = open(self.out / f"{key}.jsonl", "a", encoding="utf-8")
            self.jsonl[key] = f
        f.write(json.dumps({"t0_ns": c.t0_ns, "seq": c.seq, "body": c.body}, default=_jsonable) + "\n")

    def _video(self, c: Chunk) -> None:
        key = safe_name(c.stream)
        v = self.video.get(key)
        if v is None:
            if c.video is None or not c.video.keyframe:
                return  # start at a keyframe so the file decodes from its first byte
            v = {"es": open(self.out / f"{key}.h264", "ab"), "frames": open(self.out / f"{key}.frames.jsonl", "a"),
                 "fps": c.video.fps}
            self.video[key] = v
        assert c.packet is not None
        v["es"].write(c.packet)
        v["frames"].write(json.dumps({"t0_ns": c.t0_ns, "seq": c.seq, "keyframe": bool(c.video and c.video.keyframe)}) + "\n")

    def flush(self) -> None:
        if self._manifest_dirty:
            self._write_manifest()
        for w in self.signals.values():
            w.flush()
        for b in self.beats.values():
            b.flush()
        for f in self.jsonl.values():
            f.flush()
        for v in self.video.values():
            v["es"].flush()
            v["frames"].flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        for w in self.signals.values():
            w.close()
        for f in self.jsonl.values():
            f.close()
        for key, v in self.video.items():
            v["es"].close()
            v["frames"].close()
            _remux_to_mp4(self.out / f"{key}.h264", self.out / f"{key}.mp4", v["fps"])


def _remux_to_mp4(src: Path, dst: Path, fps: float) -> None:
    """Copy an H.264 elementary stream into MP4 without re-encoding."""
    from fractions import Fraction

    import av

    try:
        with av.open(str(src), format="h264") as inp, av.open(str(dst), "w") as out:
            istream = inp.streams.video[0]
            ostream = out.add_stream_from_template(istream) if hasattr(out, "add_stream_from_template") \
                else out.add_stream(template=istream)
            tb = Fraction(1, 90000)
            step = int(round(90000 / (fps or 30)))
            for i, pkt in enumerate(inp.demux(istream)):
                if pkt.size == 0:
                    continue
                pkt.stream = ostream
                pkt.time_base = tb
                pkt.pts = pkt.dts = i * step
                out.mux(pkt)
    except Exception as e:  # keep the elementary stream; say why the MP4 is missing
        (dst.with_suffix(".mp4.error.txt")).write_text(f"remux failed: {e}\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.hex()
    return str(o)
