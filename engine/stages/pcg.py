"""Heart-sound (PCG) stage: filtered audio, S1/systole/S2/diastole segments, heart rate.

One stage does the whole PCG chain on one channel of a ``pcg`` stream:

* **segmentation** with :class:`telediag.dsp.pcg.PCGSegmenter` (resampling to 1 kHz,
  25-400 Hz band-pass, spike removal, envelopes, LR-HSMM; Springer et al. 2016) published on
  ``segments/<stream>``: body ``{"segments": [{"start_ns", "end_ns", "start_s", "end_s",
  "start_sample", "end_sample", "state"}, ...], "rate_hz"}``, ``start_ns``/``end_ns`` in
  source time, ``start_s``/``end_s`` seconds from the stream's first sample,
  ``*_sample`` source sample indices (gap-aware: a gap in ``t0_ns`` skips the samples lost); segments are final (never revised) and come
  in time order, a fixed lag (``segmenter.latency_s``, about 4 s) behind the audio;
* **heart rate** on ``hr/<stream>`` once per ``hop_s``: body ``{"t_ns", "heart_rate_bpm",
  "systolic_interval_s", "diastolic_interval_s", "quality", "window_s", "source"}`` (the
  window estimates of :attr:`PCGSegmenter.stats`; unknown values ``None``; ``source`` holds
  the capture agent's counters); the estimates are ``None`` while ``quality < min_quality``;
* **filtered audio** for viewers: the input resampled to ``filtered_rate_hz`` and band-passed
  ``low_hz``-``high_hz`` (delay-compensated, so sample ``j`` is at ``t0 + j / rate``), the
  stage's signal output ``pcg/<stream>/<suffix>`` (published when ``publish = true``);
* **abnormality** (when :mod:`telediag.models.pcg_abnormal` is installed) per
  ``abnormal_window_s`` of audio on ``quality/<stream>``: body ``{"type": "pcg_abnormal",
  "start_ns", "end_ns", "abnormal_prob", "label", "verdict", "model"}``; ``label`` is
  ``"normal"``, ``"abnormal"`` or ``"uncertain"`` (signal too poor to decide) and ``verdict``
  the plain text of :func:`verdict_text` (``"abnormal 0.82"``, ``"normal 0.91"``,
  ``"uncertain"``);
* **events** on ``event/<stream>``: ``pcg_signal`` (``no_signal`` / ``low_quality`` / ``ok``
  when it changes), ``pcg_discontinuity`` (a ``t0_ns`` jump: the segmentation restarts),
  and the capture agent's counters from chunk ``meta`` as they grow: ``input_overflow``,
  ``dropped_buffers``, ``device_lost``, ``device_reopened``, ``clipping`` (also counted here
  for integer streams that carry no counters).

Every output is the same whatever the chunking of the input (the segmenter is fed in pieces
of at most 0.25 s so that each of its updates is seen); a gap in source time (``t0_ns`` of a
chunk not where the previous chunk ended, e.g. a reopened device) flushes the segmentation and
restarts it at the new time; a departure under 0.1 s on a contiguous ``seq`` is timestamp jitter
and changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from telediag.dsp.design import ecg_bandpass
from telediag.dsp.pcg import PCGSegmenter, PCGWindowStats, PolyphaseResampler, Segment
from telediag.dsp.sosfilt import SosFilter
from telediag.engine.stage import Outputs, Stage, StageParams, StreamSpec, register
from telediag.errors import ConfigError, DSPError, ModelError
from telediag.transports.wire import Chunk

JITTER_TOLERANCE_NS = 100_000_000
"""A ``t0_ns`` off by less than this (0.1 s) on a chunk whose ``seq`` follows the previous one is
timestamp jitter: the segmentation goes on (the source time of its outputs follows the samples)."""

__all__ = [
    "AbnormalityModel",
    "PcgSegment",
    "PcgSegmentParams",
    "abnormality_unavailable_reason",
    "load_abnormality_model",
    "verdict_text",
]

_COUNTERS = ("overflows", "dropped_buffers", "dropped_frames", "device_lost", "reopens", "clipped")
_PIECE_S = 0.25


# --------------------------------------------------------------------------- classifier


@dataclass(slots=True)
class AbnormalityModel:
    """Adapter over the abnormality classifier of :mod:`telediag.models.pcg_abnormal`.

    ``predict(audio, fs)`` returns ``(abnormal_prob, label)`` whatever the classifier's own
    return convention (a tuple, a mapping or an object with ``abnormal_prob``/``label``, or a
    bare probability, labelled ``"abnormal"`` at >= 0.5).
    """

    model: Any
    name: str

    def predict(self, audio: np.ndarray, fs: int) -> tuple[float, str]:
        r = self.model.predict(audio, fs)
        if isinstance(r, dict):
            prob = r.get("abnormal_prob", r.get("prob"))
            label = r.get("label")
        elif isinstance(r, tuple | list):
            prob, label = (r[0], r[1]) if len(r) > 1 else (r[0], None)
        elif hasattr(r, "abnormal_prob") or hasattr(r, "prob"):
            prob = getattr(r, "abnormal_prob", getattr(r, "prob", None))
            label = getattr(r, "label", None)
        else:
            prob, label = r, None
        p = float(prob)  # type: ignore[arg-type]
        if not math.isfinite(p):
            raise ModelError(f"{self.name}: abnormal probability is not finite ({prob!r})")
        lab = str(label) if label is not None else ("abnormal" if p >= 0.5 else "normal")
        return p, lab


def verdict_text(prob: float | None, label: str | None) -> str | None:
    """The abnormality result in plain words: the label and the probability *of that label*.

    ``"abnormal 0.82"`` (abnormal_prob 0.82), ``"normal 0.91"`` (abnormal_prob 0.09),
    ``"uncertain"`` (no decision: the recording is too poor), ``None`` without a result.

    Examples
    --------
    >>> verdict_text(0.82, "abnormal"), verdict_text(0.09, "normal"), verdict_text(0.4, "uncertain")
    ('abnormal 0.82', 'normal 0.91', 'uncertain')
    """
    if label is None and prob is None:
        return None
    if label == "uncertain":
        return "uncertain"
    if prob is None or not math.isfinite(prob):
        return label
    lab = label if label in ("normal", "abnormal") else ("abnormal" if prob >= 0.5 else "normal")
    return f"{lab} {(1.0 - prob if lab == 'normal' else prob):.2f}"


_MODEL: list[AbnormalityModel | None] = []
_MODEL_REASON: list[str] = []


def load_abnormality_model() -> AbnormalityModel | None:
    """The abnormality classifier, or ``None`` when it is not available.

    Loaded once per process from :mod:`telediag.models.pcg_abnormal` (``PCGClassifier().load()``,
    or a module-level ``load()``/``predict()``). When the module is absent, has none of these,
    or fails to load, the result is ``None`` and :func:`abnormality_unavailable_reason` says why:
    the classifier is optional, so its absence never stops segmentation.

    Examples
    --------
    >>> m = load_abnormality_model()
    >>> m is None or hasattr(m, "predict")
    True
    """
    if _MODEL:
        return _MODEL[0]
    model: AbnormalityModel | None = None
    reason = ""
    try:
        import telediag.models.pcg_abnormal as mod

        cls = getattr(mod, "PCGClassifier", None)
        if cls is not None:
            obj = cls().load() if hasattr(cls, "load") else cls()
        elif callable(getattr(mod, "load", None)):
            obj = mod.load()
        elif callable(getattr(mod, "predict", None)):
            obj = mod
        else:
            obj = None
            reason = "telediag.models.pcg_abnormal has no PCGClassifier, load() or predict() yet"
        if obj is not None:
            if not callable(getattr(obj, "predict", None)):
                reason = f"the PCG classifier {type(obj).__name__} has no predict(audio, fs)"
            else:
                name = str(getattr(obj, "name", None) or getattr(mod, "MODEL_NAME", None) or "pcg_abnormal")
                model = AbnormalityModel(obj, name)
    except ModuleNotFoundError as e:
        reason = f"no PCG abnormality classifier installed ({e})"
    except Exception as e:  # a broken model file must not stop segmentation
        reason = f"loading the PCG abnormality classifier failed: {type(e).__name__}: {e}"[:500]
    _MODEL.append(model)
    _MODEL_REASON.append(reason)
    return model


def abnormality_unavailable_reason() -> str:
    """Why :func:`load_abnormality_model` returned ``None`` (empty when it did not)."""
    load_abnormality_model()
    return _MODEL_REASON[0]


# --------------------------------------------------------------------------- params


@dataclass(frozen=True, slots=True)
class PcgSegmentParams(StageParams):
    """Parameters of :class:`PcgSegment`.

    ``publish`` publishes the filtered audio; ``filtered_rate_hz = 0`` turns it off.
    ``window_s``, ``hop_s``, ``lag_s`` and ``min_quality`` are :class:`PCGSegmenter`'s.
    ``abnormal_window_s = 0`` turns the classifier off. ``event_interval_s`` is the least
    source time between two counter events of one type (device loss/reopen always report).
    """

    publish: bool = True
    suffix: str = "filtered"
    channel: int = 0
    filtered_rate_hz: float = 1000.0
    low_hz: float = 25.0
    high_hz: float = 400.0
    order: int = 4
    window_s: float = 8.0
    hop_s: float = 1.0
    lag_s: float = 2.0
    min_quality: float = 0.1
    abnormal_window_s: float = 10.0
    event_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.suffix or "/" in self.suffix:
            raise ValueError(f"suffix must be a non-empty name without '/', got {self.suffix!r}")
        if self.channel < 0:
            raise ValueError(f"channel must be >= 0, got {self.channel}")
        if self.filtered_rate_hz != 0 and not 200.0 <= self.filtered_rate_hz <= 48000.0:
            raise ValueError(f"filtered_rate_hz must be 0 (off) or in 200..48000, got {self.filtered_rate_hz}")
        if self.filtered_rate_hz and float(self.filtered_rate_hz) != round(self.filtered_rate_hz):
            raise ValueError(f"filtered_rate_hz must be a whole number of Hz, got {self.filtered_rate_hz}")
        if not 0.0 < self.low_hz < self.high_hz:
            raise ValueError(f"need 0 < low_hz < high_hz, got low_hz={self.low_hz}, high_hz={self.high_hz}")
        if not 1 <= self.order <= 8:
            raise ValueError(f"order must be in 1..8, got {self.order}")
        if self.hop_s < 1.0:
            raise ValueError(f"hop_s must be >= 1.0 s (one hr record per update), got {self.hop_s}")
        if self.abnormal_window_s != 0 and not 2.0 <= self.abnormal_window_s <= 120.0:
            raise ValueError(f"abnormal_window_s must be 0 (off) or in 2..120 s, got {self.abnormal_window_s}")
        if self.event_interval_s < 0:
            raise ValueError(f"event_interval_s must be >= 0, got {self.event_interval_s}")


# --------------------------------------------------------------------------- stage


@dataclass(slots=True)
class _Run:
    """State of one continuous stretch of the stream (restarted at a time discontinuity)."""

    anchor_ns: int
    sample0: int
    seg: PCGSegmenter
    resampler: PolyphaseResampler | None
    bandpass: SosFilter | None
    n: int = 0  # input samples in this run
    to_drop: int = 0  # resampler delay still to discard
    n_filtered: int = 0  # filtered samples output in this run
    abn_buf: list[np.ndarray] = field(default_factory=list)
    abn_n: int = 0
    abn_start: int = 0  # input sample (in run) where the current abnormality window starts
    last_stats: PCGWindowStats | None = None


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@register
class PcgSegment(Stage):
    """Streaming heart-sound segmentation, heart rate, filtered audio and abnormality."""

    type_name = "pcg_segment"
    Params = PcgSegmentParams
    kinds = frozenset({"pcg"})

    def open(self, spec: StreamSpec) -> StreamSpec:
        p = self.params
        assert isinstance(p, PcgSegmentParams)
        if p.channel >= spec.n_channels:
            raise ConfigError(f"[{self.name}].channel={p.channel} but stream {spec.stream!r} has "
                              f"{spec.n_channels} channel(s) {list(spec.channels)}")
        fs = spec.rate_hz
        if not math.isfinite(fs) or fs != round(fs) or not 800 <= fs <= 384_000:
            raise ConfigError(f"stream {spec.stream!r}: PCG needs a whole sample rate of 800..384000 Hz "
                              f"(the 25-400 Hz band must be representable), got {fs:g} Hz")
        self.fs = int(fs)
        try:  # validate the segmenter parameters now, not at the first chunk
            PCGSegmenter(self.fs, window_s=p.window_s, hop_s=p.hop_s, lag_s=p.lag_s, min_quality=p.min_quality)
        except DSPError as e:
            raise ConfigError(f"[{self.name}]: {e}") from e
        self.fout = int(p.filtered_rate_hz)
        self.sos: np.ndarray | None = None
        if self.fout:
            high = min(p.high_hz, 0.45 * min(self.fs, self.fout))
            if p.low_hz >= high:
                raise ConfigError(f"[{self.name}].low_hz={p.low_hz} must be below the usable band edge {high:g} Hz")
            self.sos = ecg_bandpass(float(self.fout), p.low_hz, high, p.order)
        self.model = load_abnormality_model() if p.abnormal_window_s else None
        self.abn_len = int(round(p.abnormal_window_s * self.fs))
        self.spec = spec
        self.channel = p.channel
        self.ch_name = spec.channels[p.channel]
        self.unit_in = spec.units[p.channel] if p.channel < len(spec.units) else ""
        self.out_stream = f"{spec.stream}/{p.suffix}"
        self.run: _Run | None = None
        self.n_total = 0  # input samples over all runs
        self.n_lost = 0  # source samples never received (gaps read from t0_ns): indices are the source's
        self.first_t0_ns: int | None = None
        self.last_seq: int | None = None
        self.counters: dict[str, int] = {}
        self.reported: dict[str, int] = {}
        self.reported_at: dict[str, int] = {}
        self.own_clipped = 0
        self.signal_state = ""
        self.model_failed = False
        return StreamSpec(self.out_stream, spec.kind, float(self.fout or fs), (self.ch_name,),
                          ("FS",) if self.unit_in == "adu" else (self.unit_in,))

    # -- helpers ----------------------------------------------------------------------
    def _new_run(self, anchor_ns: int) -> _Run:
        p = self.params
        assert isinstance(p, PcgSegmentParams)
        seg = PCGSegmenter(self.fs, window_s=p.window_s, hop_s=p.hop_s, lag_s=p.lag_s, min_quality=p.min_quality)
        rs = bp = None
        drop = 0
        if self.fout and self.sos is not None:
            rs = PolyphaseResampler(self.fs, self.fout)
            drop = rs.delay if not (rs.up == 1 and rs.down == 1) else 0
            bp = SosFilter(self.sos, 1)
        return _Run(anchor_ns, self.n_total + self.n_lost, seg, rs, bp, to_drop=drop)

    def _ns(self, run: _Run, t_s: float) -> int:
        return run.anchor_ns + int(round(t_s * 1e9))

    def _event(self, t_ns: int, body: dict[str, Any]) -> Chunk:
        assert self.spec is not None
        return Chunk.record("event", self.spec.stream, 0, t_ns, {"stream": self.spec.stream, **body})

    def _segments_record(self, run: _Run, segs: list[Segment]) -> Chunk:
        assert self.spec is not None and self.first_t0_ns is not None
        items = [{
            "start_ns": self._ns(run, s.start), "end_ns": self._ns(run, s.end),
            "start_s": round((self._ns(run, s.start) - self.first_t0_ns) * 1e-9, 6),
            "end_s": round((self._ns(run, s.end) - self.first_t0_ns) * 1e-9, 6),
            "start_sample": run.sample0 + int(round(s.start * self.fs)),
            "end_sample": run.sample0 + int(round(s.end * self.fs)),
            "state": s.state,
        } for s in segs]
        return Chunk.record("segments", self.spec.stream, 0, items[0]["start_ns"],
                            {"segments": items, "rate_hz": float(self.fs)})

    def _stats_records(self, run: _Run, st: PCGWindowStats) -> list[Chunk]:
        assert self.spec is not None
        p = self.params
        assert isinstance(p, PcgSegmentParams)
        t_ns = self._ns(run, st.t_end)
        ok = st.quality >= p.min_quality and st.quality > 0.0  # else the estimates are noise
        hr = Chunk.record("hr", self.spec.stream, 0, t_ns, {
            "t_ns": t_ns,
            "heart_rate_bpm": _num(st.heart_rate_bpm) if ok else None,
            "systolic_interval_s": _num(st.systolic_interval_s) if ok else None,
            "diastolic_interval_s": _num(st.diastolic_interval_s) if ok else None,
            "quality": float(st.quality),
            "window_s": float(p.window_s),
            "source": {k: int(v) for k, v in self.counters.items()},
        })
        out = [hr]
        state = "no_signal" if st.quality <= 0.0 else ("low_quality" if st.quality < p.min_quality else "ok")
        if state != self.signal_state:
            self.signal_state = state
            out.append(self._event(t_ns, {"type": "pcg_signal", "state": state, "quality": float(st.quality)}))
        return out

    def _feed_segmenter(self, run: _Run, x: np.ndarray, out: list[Chunk]) -> None:
        piece = max(1, int(_PIECE_S * self.fs))
        pending: list[Segment] = []
        for i in range(0, x.shape[0], piece):
            pending.extend(run.seg.process(x[i : i + piece]))
            st = run.seg.stats
            if st is not None and st is not run.last_stats:
                run.last_stats = st
                if pending:
                    out.append(self._segments_record(run, pending))
                    pending = []
                out.extend(self._stats_records(run, st))
        if pending:
            out.append(self._segments_record(run, pending))

    def _filtered(self, run: _Run, x: np.ndarray) -> np.ndarray | None:
        if run.resampler is None or run.bandpass is None:
            return None
        y = run.resampler.process(x)
        if run.to_drop:
            k = min(run.to_drop, y.shape[0])
            y = y[k:]
            run.to_drop -= k
        return run.bandpass.process(y[:, None])

    def _abnormality(self, run: _Run, x: np.ndarray, out: list[Chunk]) -> None:
        if self.model is None or self.model_failed or not self.abn_len:
            return
        assert self.spec is not None
        i = 0
        while i < x.shape[0]:
            take = min(x.shape[0] - i, self.abn_len - run.abn_n)
            run.abn_buf.append(x[i : i + take])
            run.abn_n += take
            i += take
            if run.abn_n < self.abn_len:
                continue
            audio = np.concatenate(run.abn_buf)
            start_ns = run.anchor_ns + (run.abn_start * 1_000_000_000) // self.fs
            end_ns = run.anchor_ns + ((run.abn_start + self.abn_len) * 1_000_000_000) // self.fs
            run.abn_buf, run.abn_n = [], 0
            run.abn_start += self.abn_len
            try:
                prob, label = self.model.predict(audio, self.fs)
            except Exception as e:  # report once, keep segmenting
                self.model_failed = True
                out.append(self._event(end_ns, {"type": "model_error", "model": self.model.name,
                                                "error": f"{type(e).__name__}: {e}"[:500]}))
                return
            out.append(Chunk.record("quality", self.spec.stream, 0, start_ns, {
                "type": "pcg_abnormal", "start_ns": start_ns, "end_ns": end_ns,
                "abnormal_prob": prob, "label": label, "verdict": verdict_text(prob, label),
                "model": self.model.name}))

    def _source_counters(self, chunk: Chunk, x_raw: np.ndarray, out: list[Chunk]) -> None:
        meta = chunk.meta
        have = {k: meta[k] for k in _COUNTERS if isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool)}
        if "clipped" not in have and x_raw.dtype.kind in "iu":
            info = np.iinfo(x_raw.dtype)
            self.own_clipped += int(np.count_nonzero((x_raw == info.max) | (x_raw == info.min)))
            have["clipped"] = self.own_clipped
        self.counters.update(have)
        p = self.params
        assert isinstance(p, PcgSegmentParams)
        t = chunk.t0_ns
        gap_ns = int(p.event_interval_s * 1e9)
        for key, etype, always in (("device_lost", "device_lost", True), ("reopens", "device_reopened", True),
                                   ("overflows", "input_overflow", False),
                                   ("dropped_buffers", "dropped_buffers", False), ("clipped", "clipping", False)):
            v = self.counters.get(key)
            if v is None or v <= self.reported.get(key, 0):
                continue
            last = self.reported_at.get(key)
            if not always and last is not None and t - last < gap_ns:
                continue
            body: dict[str, Any] = {"type": etype, "count": int(v), "new": int(v - self.reported.get(key, 0))}
            if key == "dropped_buffers":
                body["frames"] = int(self.counters.get("dropped_frames", 0))
            self.reported[key] = v
            self.reported_at[key] = t
            out.append(self._event(t, body))

    # -- stage API ----------------------------------------------------------------------
    def process(self, chunk: Chunk) -> Outputs:
        assert self.spec is not None
        data = chunk.data
        assert data is not None
        raw = np.asarray(data)
        if raw.ndim != 2 or raw.shape[1] != self.spec.n_channels:
            raise ConfigError(f"stream {chunk.stream!r} opened with {self.spec.n_channels} channel(s), "
                              f"chunk has shape {raw.shape}")
        col = raw[:, self.channel]
        if col.dtype.kind in "iu":
            info = np.iinfo(col.dtype)
            x = np.ascontiguousarray(col, dtype=np.float64) / float(max(-int(info.min), int(info.max) + 1))
        else:
            x = np.ascontiguousarray(col, dtype=np.float64)
        if x.size and not np.all(np.isfinite(x)):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # NaN marks missing samples
        out: list[Chunk] = []
        self._source_counters(chunk, col, out)
        run = self.run
        contiguous = self.last_seq is not None and chunk.seq == self.last_seq + 1
        self.last_seq = chunk.seq
        if run is not None:
            expected = run.anchor_ns + (run.n * 1_000_000_000) // self.fs
            dev = abs(chunk.t0_ns - expected)
            # more than half a sample off, unless it is timestamp jitter: under JITTER_TOLERANCE_NS
            # on a chunk whose seq follows the previous one (nothing was lost in transport; a
            # restart at every jittery chunk would never let a segmentation finish)
            if dev * self.fs > 500_000_000 and not (contiguous and dev < JITTER_TOLERANCE_NS):
                out.extend(self._finish(run))
                if chunk.t0_ns > expected:  # samples lost in a gap: source indices skip them (OUTPUTS.md 3)
                    self.n_lost += int(round((chunk.t0_ns - expected) * self.fs / 1e9))
                out.append(self._event(chunk.t0_ns, {
                    "type": "pcg_discontinuity", "expected_t0_ns": int(expected), "t0_ns": int(chunk.t0_ns),
                    "gap_ns": int(chunk.t0_ns - expected), "seq": int(chunk.seq)}))
                run = None
        if run is None:
            if self.first_t0_ns is None:
                self.first_t0_ns = chunk.t0_ns
            run = self.run = self._new_run(chunk.t0_ns)
        t0_filtered = run.anchor_ns + (run.n_filtered * 1_000_000_000) // self.fout if self.fout else chunk.t0_ns
        self._feed_segmenter(run, x, out)
        self._abnormality(run, x, out)
        y = self._filtered(run, x)
        run.n += x.shape[0]
        self.n_total += x.shape[0]
        sig = None
        if y is not None and y.shape[0]:
            run.n_filtered += y.shape[0]
            assert self.spec is not None
            sig = Chunk.signal("pcg", self.out_stream, chunk.seq, t0_filtered, y.astype(np.float32),
                               float(self.fout), (self.ch_name,),
                               ("FS",) if self.unit_in == "adu" else (self.unit_in,),
                               meta=dict(chunk.meta))
        return Outputs(signal=sig, records=out)

    def _finish(self, run: _Run) -> list[Chunk]:
        out: list[Chunk] = []
        segs = run.seg.flush()
        if segs:
            out.append(self._segments_record(run, segs))
        st = run.seg.stats
        if st is not None and st is not run.last_stats:
            run.last_stats = st
            out.extend(self._stats_records(run, st))
        return out

    def close(self) -> Outputs:
        if getattr(self, "run", None) is None:
            return Outputs()
        assert self.run is not None
        out = self._finish(self.run)
        self.run = None
        return Outputs(records=out)
