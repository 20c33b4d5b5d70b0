"""ECG analysis stage: beats, heart rate, HRV and signal quality, published live.

``ecg_analysis`` (kind ``ecg``) runs, on the **raw** signal, the streaming building blocks
of :mod:`telediag.dsp`:

* :class:`~telediag.dsp.qrs.QRSDetector` on lead ``lead`` (R peaks and the sample that
  confirmed each one);
* :class:`~telediag.dsp.quality.SignalQuality` on every lead (per-lead SQI per block of
  ``quality_hop_s``, quality events, a usable verdict per block);
* :class:`~telediag.dsp.hr.HeartRateMeter` (ANSI/AAMI EC13 display rule) and
  :class:`~telediag.dsp.hrv.HRVMeter` (Task Force 1996 time-domain HRV) on the beats that
  survive the quality verdict;
* *beat hooks* (:meth:`EcgAnalysis.add_beat_hook`), called on every accepted beat before it
  is published, fed to the HR and HRV meters: the place where a beat classifier fills
  ``label``/``probs`` (the HRV meter then uses only normal beats).

Why the raw signal
------------------
The stage takes the signal as it arrives and passes it on unchanged (``signal`` output = the
input chunk), so in the default pipeline it sits *before* ``ecg_filter``.  On the raw record
its beats are exactly those of :func:`telediag.dsp.qrs.detect` (the detector has its own
5-20 Hz band-pass); after the 0.5-40 Hz ``ecg_filter`` they differ (phase shift of the
refinement, e.g. 2,946 vs 2,944 beats on MIT-BIH 208); the quality assessment needs the raw
values (ADC rails, clipped plateaus, exactly constant leads-off segments), and a NaN sample
would poison the IIR state of ``ecg_filter`` for the rest of the stream, whereas the detector
and the quality assessment treat NaN runs as missing signal and recover.

Beat decision and its delay
---------------------------
A beat is *confirmed* by the detector ``confirm_sample - sample`` samples after its R peak
(about 0.3 s; bounded by :attr:`~telediag.dsp.qrs.QRSDetector.detection_delay_s`, except the
beats of the 2 s learning period).  With ``quality_hold = "verdict"`` (default) it is then
held until the quality verdict of the block holding its R peak exists, i.e. until sample
``(block + 1) * hop - 1`` has arrived, and dropped (``suppressed``) when that block is not
usable on the detection lead and ``suppress_unusable`` is true; no beat from unusable signal
is ever published, at the cost of up to one block (``quality_hop_s``) of extra delay.  With
``quality_hold = "none"`` a beat is decided at its confirmation, on the most recent verdict
then available (its own block when already assessed, otherwise the previous complete block):
the delay is the detector's alone, but beats of the first block of a noisy stretch get
through and those of the first block after it are suppressed.  Every beat carries
``release_sample`` (the sample whose arrival decided it) and ``delay_s = (release_sample -
sample) / fs``; these are properties of the sample stream, identical for any chunking.  At
the end of the stream (:meth:`EcgAnalysis.close`) the beats still pending are decided on the
latest verdict.

Published records (topic ``<kind>/<stream>``; ``stream`` is the input stream's id)
------------------------------------------------------------------------------------
``beats``   ``{"beats": [{"sample", "t_ns", "confirm_sample", "release_sample",
            "confirm_delay_s", "delay_s", "label", "probs"}], "lead", "channel", "fs",
            "quality_hold", "counters": {"beats", "suppressed"}}`` - only when a beat is
            accepted.
``hr``      ``{"readings": [{"sample", "t_ns", "hr_bpm", "on_beat", "signal_ok"}], "rule",
            "n_intervals", "min_rr_s", "asystole_s", "every_s"}``: one reading per accepted
            beat and one at every multiple of ``hr_every_s`` (the EC13 displayed rate: held,
            decaying in a pause, 0 after ``hr_asystole_s``; ``null`` = no rate yet).
            ``signal_ok`` is the latest quality verdict of the detection lead at that sample:
            the rate still decays to 0 when beats stop because the signal became unusable
            (asystole itself looks like noise to the quality indices, so hiding the rate
            would hide asystole); alarm logic must read ``signal_ok`` (and the quality
            events) to tell leads-off or noise from cardiac standstill.
``hrv``     ``{"sample", "t_ns", "window_s", "as_of_sample", "n_nn", "n_diff", "mean_nn_ms",
            "sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm"}`` every ``hrv_every_s``
            (values of the window ending at the last beat ``as_of_sample``).
``quality`` ``{"hop_s", "channels", "blocks": [{"sample", "t_ns", "sqi", "usable", "flags",
            "features"}], "events": [...], "suppressed": [{"sample", "t_ns",
            "confirm_sample", "release_sample"}], "counters"}`` when a block completes, an
            event starts or ends, or a beat is suppressed.
``event``   ``{"type": "quality", "event": kind, "state": "start"|"end", "stream", "lead",
            "channel", "onset_sample", "onset_ns", "end_sample", "end_ns"}`` for every quality
            event (``leads_off``, ``flat_line``, ``saturation``, ``heavy_noise``).

Sample ``k`` is the ``k``-th sample the stage received; its source time ``t_ns`` is taken
from the chunk timestamps (a chunk whose ``t0_ns`` does not continue the previous timeline by
more than half a sample period, e.g. after a gap, starts a new anchor), so annotations line up
with the signal exactly.  NaN becomes ``null`` in every body.

Chunk invariance: every output (beats, readings, HRV ticks, quality rows, events, suppressed
beats, delays) is a function of the sample stream only; only their grouping into records
follows the chunking (``tests/test_ecg_analysis.py`` checks two chunkings).

Examples
--------
>>> import numpy as np
>>> from telediag.transports.wire import Chunk
>>> fs = 360.0
>>> t = np.arange(int(20 * fs)) / fs
>>> x = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01**2))[:, None]   # 75 bpm
>>> st = EcgAnalysis(EcgAnalysisParams(hrv_every_s=5.0))
>>> _ = st.open(StreamSpec("bed-1/ecg", "ecg", fs, ("II",), ("mV",)))
>>> recs = st.process(Chunk.signal("ecg", "bed-1/ecg", 0, 0, x, fs, ["II"], ["mV"])).records
>>> recs += st.close().records
>>> sorted({r.kind for r in recs})
['beats', 'hr', 'hrv', 'quality']
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.alarms import AlarmEvent, AlarmParams, RhythmAlarms
from telediag.dsp.hr import HeartRateMeter
from telediag.dsp.hrv import NORMAL_SYMBOLS, HRVMeter
from telediag.dsp.qrs import QRSDetector, QRSParams
from telediag.dsp.quality import EVENT_KINDS, FEATURE_NAMES, QualityEvent, SignalQuality, SQIUpdate
from telediag.engine.stage import Deferred, Outputs, Stage, StageParams, StreamSpec, register
from telediag.errors import ConfigError, DSPError
from telediag.transports.wire import Chunk

__all__ = [
    "BeatBatch",
    "BeatHook",
    "EcgAnalysis",
    "EcgAnalysisParams",
    "EcgAnalysisState",
    "SignalHistory",
    "Timeline",
]

IntArray = NDArray[np.int64]

_HOLDS = ("verdict", "none")
_UNITS_PER_MV = {"mv": 1.0, "uv": 1000.0, "µv": 1000.0, "μv": 1000.0, "v": 0.001}


@dataclass(frozen=True, slots=True)
class EcgAnalysisParams(StageParams):
    """Parameters of :class:`EcgAnalysis` (one ``[pipeline.ecg.<name>]`` section).

    Attributes
    ----------
    publish : bool
        Publish the (unchanged) input signal again; default false.
    lead : int
        Index of the lead the QRS detector runs on (default 0).
    qrs : dict
        Overrides of :class:`telediag.dsp.qrs.QRSParams` fields, e.g.
        ``qrs = { threshold_frac = 0.3 }``.
    hr_intervals, hr_rule, hr_min_rr_s, hr_asystole_s : int, str, float, float
        :class:`telediag.dsp.hr.HeartRateMeter` ``n_intervals``, ``rule`` (``"median"`` or
        ``"mean"``), ``min_rr_s``, ``asystole_s``.
    hr_every_s : float
        Period of the displayed-rate readings between beats (default 1 s).
    hrv_window_s, hrv_every_s : float
        Rolling HRV window (default 300 s) and publishing period (default 5 s).
    quality_hop_s, quality_window_s : float
        Quality block and SQI window (:class:`telediag.dsp.quality.SignalQuality`).
    units_per_mv : float
        Signal units per mV; 0 (default) derives it from the stream's units (mV, uV, V;
        anything else counts as mV).
    adc_min, adc_max : float
        ADC rails in signal units (``-inf``/``inf``: unknown, the default).
    flat_mv, noise_on, noise_off, usable_sqi : float
        Quality thresholds (see :mod:`telediag.dsp.quality`).
    suppress_unusable : bool
        Drop (and report) beats in blocks judged unusable on the detection lead.
    quality_hold : str
        ``"verdict"`` (hold beats until their block is assessed) or ``"none"`` (decide at
        confirmation on the latest verdict); see the module docstring.
    classify, classifier_variant : str
        Beat classification with the shipped ONNX model (:mod:`telediag.models.ecg_beats`):
        ``"off"`` (default), ``"auto"`` (when the model loads) or ``"on"`` (error if it cannot). A beat
        needs its *next* RR, so with classification on a beat is published (labelled, with
        class probabilities) when the following beat is accepted: about one RR interval more
        delay for beats, HRV and the label-based alarms (run, ectopy); the heart rate and the
        rate alarms do not wait for labels (identical to ``classify = "off"``, tested). ``classifier_variant`` is ``"fp32"`` or ``"int8"``; ``classifier_threads`` is
        ONNX Runtime's intra-op thread count (1: the worker's own core; streams share one session
        per variant and thread count, and the worker batches their beats, ``[engine].batch_max``).
    alarms : bool
        Publish rhythm alarms on ``alarm/<stream>`` (:mod:`telediag.dsp.alarms`): asystole,
        extreme brady/tachycardia, ventricular run, pause, frequent ectopy; thresholds
        ``alarm_asystole_s``, ``alarm_brady_bpm``, ``alarm_tachy_bpm``, ``alarm_sustain_s``,
        ``alarm_vrun_beats``, ``alarm_pause_s``, ``alarm_ectopy_per_min``. Body: ``{"type",
        "state": "on"|"off", "onset_sample", "onset_ns", "end_sample", "end_ns", "detail", "lead"}``.
        Label-based alarms (run, ectopy) need the beat classifier's labels.
    history_s : float
        Raw signal kept for beat hooks (:class:`SignalHistory`), seconds.
    """

    publish: bool = False
    lead: int = 0
    qrs: dict[str, Any] = field(default_factory=dict)
    hr_intervals: int = 8
    hr_rule: str = "median"
    hr_min_rr_s: float = 0.2
    hr_asystole_s: float = 4.0
    hr_every_s: float = 1.0
    hrv_window_s: float = 300.0
    hrv_every_s: float = 5.0
    quality_hop_s: float = 1.0
    quality_window_s: float = 8.0
    units_per_mv: float = 0.0
    adc_min: float = -math.inf
    adc_max: float = math.inf
    flat_mv: float = 0.01
    noise_on: float = 0.3
    noise_off: float = 0.5
    usable_sqi: float = 0.5
    suppress_unusable: bool = True
    quality_hold: str = "verdict"
    history_s: float = 10.0
    classify: str = "off"
    classifier_variant: str = "fp32"
    classifier_threads: int = 1
    alarms: bool = True
    alarm_asystole_s: float = 4.0
    alarm_brady_bpm: float = 40.0
    alarm_tachy_bpm: float = 150.0
    alarm_sustain_s: float = 5.0
    alarm_vrun_beats: int = 3
    alarm_pause_s: float = 2.5
    alarm_ectopy_per_min: float = 6.0

    def alarm_params(self) -> AlarmParams:
        """The ``alarm_*`` keys as :class:`telediag.dsp.alarms.AlarmParams`."""
        return AlarmParams(
            asystole_s=self.alarm_asystole_s, brady_bpm=self.alarm_brady_bpm, tachy_bpm=self.alarm_tachy_bpm,
            sustain_s=self.alarm_sustain_s, vrun_beats=self.alarm_vrun_beats, pause_s=self.alarm_pause_s,
            ectopy_per_min=self.alarm_ectopy_per_min,
        )

    def __post_init__(self) -> None:
        if self.classify not in ("auto", "on", "off"):
            raise ValueError(f"classify must be 'auto', 'on' or 'off', got {self.classify!r}")
        if self.classifier_variant not in ("fp32", "int8"):
            raise ValueError(f"classifier_variant must be 'fp32' or 'int8', got {self.classifier_variant!r}")
        if isinstance(self.classifier_threads, bool) or not isinstance(self.classifier_threads, int) \
                or not 1 <= self.classifier_threads <= 64:
            raise ValueError(f"classifier_threads must be an int in 1..64, got {self.classifier_threads!r}")
        if isinstance(self.lead, bool) or not isinstance(self.lead, int) or self.lead < 0:
            raise ValueError(f"lead must be an int >= 0, got {self.lead!r}")
        if not isinstance(self.qrs, Mapping):
            raise ValueError(f"qrs must be a table of QRSParams overrides, got {self.qrs!r}")
        known = {f.name for f in fields(QRSParams)}
        unknown = sorted(set(self.qrs) - known)
        if unknown:
            raise ValueError(f"qrs has unknown key(s) {unknown}; expected some of {sorted(known)}")
        if self.hr_rule not in ("median", "mean"):
            raise ValueError(f"hr_rule must be 'median' or 'mean', got {self.hr_rule!r}")
        if self.quality_hold not in _HOLDS:
            raise ValueError(f"quality_hold must be one of {list(_HOLDS)}, got {self.quality_hold!r}")
        for name in ("hr_every_s", "hrv_every_s", "hrv_window_s", "quality_hop_s",
                     "quality_window_s", "history_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.units_per_mv) and self.units_per_mv >= 0):
            raise ValueError(f"units_per_mv must be >= 0 (0: from the stream's units), got {self.units_per_mv}")
        if math.isnan(self.adc_min) or math.isnan(self.adc_max) or self.adc_min >= self.adc_max:
            raise ValueError(f"need adc_min < adc_max, got adc_min={self.adc_min}, adc_max={self.adc_max}")


# --------------------------------------------------------------------------------------
# Helpers: timeline, signal history, beat hooks
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class Timeline:
    """Maps absolute sample indices to source time (ns) from the chunk timestamps.

    An anchor ``(sample, t0_ns)`` is added when a chunk's ``t0_ns`` departs from the
    current timeline by more than half a sample period (start, gap, clock step); sample
    ``k`` is at ``t0 + round((k - sample) * 1e9 / fs)`` of the last anchor at or before it.
    Anchors older than ``keep`` samples are dropped (the oldest kept one extrapolates).

    Examples
    --------
    >>> tl = Timeline(1000.0)
    >>> tl.observe(0, 5_000)
    >>> tl.observe(1000, 10**9 + 5_000)      # continues: no new anchor
    >>> tl.observe(2000, 5 * 10**9)          # gap: new anchor
    >>> tl.t_ns(1500), tl.t_ns(2001)
    (1500005000, 5001000000)
    """

    fs: float
    keep: int = 1 << 62
    starts: list[int] = field(default_factory=list)
    t0s: list[int] = field(default_factory=list)

    def t_ns(self, sample: int) -> int:
        """Source time of absolute sample ``sample`` (ns)."""
        if not self.starts:
            return round(sample * 1e9 / self.fs)
        i = max(bisect.bisect_right(self.starts, sample) - 1, 0)
        return self.t0s[i] + round((sample - self.starts[i]) * 1e9 / self.fs)

    def observe(self, start: int, t0_ns: int) -> None:
        """Register that sample ``start`` was stamped ``t0_ns``."""
        if self.starts and abs(self.t_ns(start) - t0_ns) * self.fs <= 0.5e9:
            return
        self.starts.append(start)
        self.t0s.append(int(t0_ns))
        while len(self.starts) > 1 and self.starts[1] <= start - self.keep:
            del self.starts[0]
            del self.t0s[0]


@dataclass(slots=True)
class SignalHistory:
    """The last ``capacity`` raw samples of every lead (a ring buffer) for beat hooks.

    Examples
    --------
    >>> h = SignalHistory(np.zeros((4, 1)))
    >>> h.push(np.arange(6.0)[:, None])
    >>> h.window(3, 6)[:, 0].tolist(), h.window(0, 3) is None
    ([3.0, 4.0, 5.0], True)
    """

    buf: NDArray[np.float64]
    end: int = 0  # absolute index one past the newest sample

    def push(self, x: NDArray[np.float64]) -> None:
        """Append samples ``x`` (n, n_channels)."""
        cap = self.buf.shape[0]
        n = x.shape[0]
        if n >= cap:
            self.buf[:] = x[n - cap :]
            self.buf[:] = np.roll(self.buf, (self.end + n) % cap, axis=0)
        else:
            i = self.end % cap
            k = min(n, cap - i)
            self.buf[i : i + k] = x[:k]
            self.buf[: n - k] = x[k:]
        self.end += n

    def window(self, start: int, stop: int) -> NDArray[np.float64] | None:
        """Samples ``[start, stop)`` (a copy), or ``None`` when not all of them are held."""
        cap = self.buf.shape[0]
        if start < max(0, self.end - cap) or stop > self.end or stop < start:
            return None
        idx = np.arange(start, stop) % cap
        return self.buf[idx]


@dataclass(slots=True)
class BeatBatch:
    """Accepted beats handed to the beat hooks before they are published.

    A hook may set ``labels[i]`` (a beat code such as ``"N"``, ``"V"``) and ``probs[i]``
    (a dict class -> probability); labels outside ``N``/``L``/``R`` exclude the beat's
    intervals from HRV.

    Attributes
    ----------
    samples : numpy.ndarray of int64
        R-peak sample indices.
    labels : list of str or None
    probs : list of dict or None
    fs : float
    channels : tuple of str
    lead : int
        Detection lead.
    history : SignalHistory
        Recent raw signal (all leads); ``history.end`` is the number of samples received.
    """

    samples: IntArray
    labels: list[str | None]
    probs: list[dict[str, float] | None]
    fs: float
    channels: tuple[str, ...]
    lead: int
    history: SignalHistory


_CLASSIFIERS: dict[tuple[str, int], Any] = {}


def _classifier(variant: str, threads: int = 1) -> Any:
    """The shipped beat classifier: one ONNX session per (variant, threads) per process, shared by streams."""
    key = (variant, threads)
    if key not in _CLASSIFIERS:
        from telediag.models.ecg_beats import BeatClassifier

        _CLASSIFIERS[key] = BeatClassifier.load(variant, intra_op_threads=threads)  # type: ignore[arg-type]
    return _CLASSIFIERS[key]


def _classify_batch(items: list[tuple[Any, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One model call for the beat features of several streams (``Deferred.run``)."""
    clf = items[0][0]
    feats = [f for _, f in items]
    idx, probs = clf.classify(type(feats[0]).concat(feats))
    out = []
    k = 0
    for f in feats:
        n = len(f)
        out.append((idx[k:k + n], probs[k:k + n]))
        k += n
    return out


BeatHook = Callable[[BeatBatch], None]
"""A callable filling ``labels``/``probs`` of a :class:`BeatBatch` in place."""


def _num(v: float) -> float | None:
    """A msgpack/JSON-safe float: NaN and inf become ``None``."""
    f = float(v)
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class EcgAnalysisState:
    """Streaming state of :class:`EcgAnalysis` (one stream).

    Attributes
    ----------
    detector, quality, hr, hrv
        The streaming DSP objects (each holds its own explicit state).
    timeline : Timeline
    history : SignalHistory
    n_seen : int
        Samples received.
    pending : list of (sample, confirm_sample)
        Confirmed beats waiting for their quality verdict.
    verdicts : dict
        Block index -> usable on the detection lead, for the recent blocks.
    blocks_done : int
        Blocks whose verdict exists.
    next_hr_tick, next_hrv_tick : int
        Sample indices of the next periodic readings.
    hrv_last : dict or None
        Latest HRV row (msgpack-safe).
    n_beats, n_suppressed : int
        Counters of accepted and suppressed beats.
    closed : bool
    """

    detector: QRSDetector
    quality: SignalQuality
    hr: HeartRateMeter
    hrv: HRVMeter
    timeline: Timeline
    history: SignalHistory
    n_seen: int = 0
    pending: list[tuple[int, int]] = field(default_factory=list)
    verdicts: dict[int, bool] = field(default_factory=dict)
    blocks_done: int = 0
    next_hr_tick: int = 0
    next_hrv_tick: int = 0
    hrv_last: dict[str, Any] | None = None
    n_beats: int = 0
    n_suppressed: int = 0
    closed: bool = False


@register
class EcgAnalysis(Stage):
    """Beats, heart rate, HRV and signal quality of an ECG stream (see the module docstring).

    The input chunk is passed on unchanged as the ``signal`` output, so the stage can sit
    anywhere before stages that need the raw signal.
    """

    type_name = "ecg_analysis"
    Params = EcgAnalysisParams
    kinds = frozenset({"ecg"})

    def __init__(self, params: StageParams, name: str | None = None) -> None:
        super().__init__(params, name)
        self.beat_hooks: list[BeatHook] = []
        self._alarms: RhythmAlarms | None = None
        self._alarm_events: list[AlarmEvent] = []

    def add_beat_hook(self, hook: BeatHook) -> None:
        """Call ``hook`` on every batch of accepted beats before they are published."""
        self.beat_hooks.append(hook)

    # -- lifecycle ------------------------------------------------------------------------
    def open(self, spec: StreamSpec) -> StreamSpec:
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        fs = float(spec.rate_hz)
        if not (math.isfinite(fs) and 125.0 <= fs <= 2000.0):
            raise ConfigError(
                f"[{self.name}] needs a sample rate in [125, 2000] Hz (the QRS band-pass up to "
                f"20 Hz and the quality's > 40 Hz band must lie well below Nyquist), stream "
                f"{spec.stream!r} has {fs} Hz"
            )
        n_ch = spec.n_channels
        if not 0 <= p.lead < n_ch:
            raise ConfigError(
                f"[{self.name}].lead must be in [0, {n_ch}) for stream {spec.stream!r} with "
                f"channels {list(spec.channels)}, got {p.lead}"
            )
        upm: float | list[float]
        if p.units_per_mv > 0:
            upm = p.units_per_mv
        else:
            units = spec.units if len(spec.units) == n_ch else ("mV",) * n_ch
            upm = [_UNITS_PER_MV.get(u.strip().lower(), 1.0) for u in units]
        try:
            detector = QRSDetector(fs, **dict(p.qrs))
            quality = SignalQuality(
                fs, n_ch, hop_s=p.quality_hop_s, window_s=p.quality_window_s, units_per_mv=upm,
                adc_min=p.adc_min if math.isfinite(p.adc_min) else None,
                adc_max=p.adc_max if math.isfinite(p.adc_max) else None,
                flat_mv=p.flat_mv, noise_on=p.noise_on, noise_off=p.noise_off,
                usable_sqi=p.usable_sqi,
            )
            hr = HeartRateMeter(fs, n_intervals=p.hr_intervals, rule=p.hr_rule,  # type: ignore[arg-type]
                                min_rr_s=p.hr_min_rr_s, asystole_s=p.hr_asystole_s)
            hrv = HRVMeter(fs, window_s=p.hrv_window_s)
            self._alarms = RhythmAlarms(fs, p.alarm_params()) if p.alarms else None
        except DSPError as e:
            raise ConfigError(f"[{self.name}]: {e}") from e
        self._clf = None
        self._clf_stream = None
        self._clf_release: dict[int, tuple[int, int]] = {}
        self._clf_last = 0.0
        self._clf_error = ""
        self._clf_key = ""
        if p.classify != "off":
            try:
                from telediag.models.ecg_beats import BeatClassifier

                self._clf = _classifier(p.classifier_variant, p.classifier_threads)
                self._clf_key = f"{p.classifier_variant}/{p.classifier_threads}"
                self._clf_stream = BeatClassifier.stream(fs)
            except Exception as e:  # noqa: BLE001 - optional model: reported or raised per `classify`
                if p.classify == "on":
                    raise ConfigError(f"[{self.name}].classify = 'on' but the beat classifier cannot load: {e}") from e
                self._clf = None

        self._fs = fs
        self._hop = quality.hop
        self._hr_step = max(1, round(p.hr_every_s * fs))
        self._hrv_step = max(1, round(p.hrv_every_s * fs))
        self._verdict_hold = p.quality_hold == "verdict"
        keep = round(max(60.0, 2 * p.history_s) * fs)
        cap = max(1, round(p.history_s * fs))
        self.state = EcgAnalysisState(
            detector=detector, quality=quality, hr=hr, hrv=hrv,
            timeline=Timeline(fs, keep=keep),
            history=SignalHistory(np.zeros((cap, n_ch))),
            next_hr_tick=self._hr_step, next_hrv_tick=self._hrv_step,
        )
        self.spec = spec
        self._stream = spec.stream
        self._lead_name = spec.channels[p.lead] if spec.channels else str(p.lead)
        return spec

    @property
    def detection_delay_s(self) -> float:
        """Design bound of the detector's confirmation delay (s); see the module docstring."""
        return self.state.detector.detection_delay_s

    def process(self, chunk: Chunk) -> Outputs:
        st = self.state
        if st.closed:
            raise ConfigError(f"[{self.name}] was closed; open it again for a new stream")
        x = np.asarray(chunk.data, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        n_ch = self.spec.n_channels if self.spec else x.shape[1]
        if x.ndim != 2 or x.shape[1] != n_ch:
            raise ConfigError(
                f"stream {chunk.stream!r} opened with {n_ch} channel(s), chunk has shape {x.shape}"
            )
        n = x.shape[0]
        start = st.n_seen
        if n:
            st.timeline.observe(start, chunk.t0_ns)
        st.history.push(x)
        beats, confirm = st.detector.process_with_confirm(x[:, self.params.lead])  # type: ignore[attr-defined]
        rows, events = st.quality.process(x)
        st.n_seen = start + n
        self._verdicts(rows)
        accepted, suppressed = self._decide(beats, confirm, final=False)
        labels = None
        hr_beats = None
        if self._clf is not None:
            hr_beats = accepted  # the heart rate does not wait for the labels
            feats = self._clf_push(x[:, self.params.lead], accepted, final=False)  # type: ignore[attr-defined]
            if self.batching and feats is not None and len(feats):
                # hand the model call to the worker (batched with other streams), finish later
                end = st.n_seen

                def resume(result: Any) -> Outputs:
                    acc, labs = self._clf_finish(feats, result, final=False)
                    rest = Outputs()
                    self._emit(rest, acc, suppressed, rows, events, end=end, final=False, clf_labels=labs,
                               hr_beats=hr_beats)
                    return rest

                return Outputs(signal=chunk, deferred=Deferred(("ecg_beats", self._clf_key), _classify_batch,
                                                                (self._clf, feats), resume))
            accepted, labels = self._clf_finish(feats, None, final=False)
        out = Outputs(signal=chunk)
        self._emit(out, accepted, suppressed, rows, events, end=st.n_seen, final=False, clf_labels=labels,
                   hr_beats=hr_beats)
        return out

    def close(self) -> Outputs:
        st = self.state
        out = Outputs()
        if st.closed:
            return out
        st.closed = True
        beats, confirm = st.detector.flush_with_confirm()
        accepted, suppressed = self._decide(beats, confirm, final=True)
        labels = None
        hr_beats = None
        if self._clf is not None:
            hr_beats = accepted
            feats = self._clf_push(np.empty(0), accepted, final=True)
            accepted, labels = self._clf_finish(feats, None, final=True)
        empty = SQIUpdate.concatenate([], self.spec.n_channels if self.spec else 1)
        self._emit(out, accepted, suppressed, empty, [], end=st.n_seen, final=True, clf_labels=labels,
                   hr_beats=hr_beats)
        return out

    def _clf_push(self, lead: np.ndarray, accepted: list[tuple[int, int, int]], *, final: bool) -> Any:
        """Feed the classifier's feature stream; the features of the beats now classifiable.

        ``None`` when the feature builder failed (the stage then degrades to unlabelled beats).
        """
        fs_stream = self._clf_stream
        assert fs_stream is not None and self._clf is not None
        x = np.asarray(lead, dtype=np.float64)
        if x.size:
            bad = ~np.isfinite(x)
            if bad.any():  # the feature builder needs finite samples: hold the last finite value
                x = x.copy()
                for i in np.flatnonzero(bad):
                    x[i] = x[i - 1] if i > 0 else self._clf_last
            self._clf_last = float(x[-1])
        new = np.fromiter((a[0] for a in accepted), np.int64, len(accepted))
        for s_, c, r in accepted:
            self._clf_release[s_] = (c, r)
        try:
            feats = fs_stream.finish() if final and x.size == 0 and not len(new) else fs_stream.push(x, new)
            if final:
                feats = type(feats).concat([feats, fs_stream.finish()]) if x.size or len(new) else feats
        except Exception as e:  # noqa: BLE001 - a model problem must not stop detection
            self._clf_error = f"{type(e).__name__}: {e}"
            return None
        return feats

    def _clf_finish(
        self, feats: Any, result: Any, *, final: bool
    ) -> tuple[list[tuple[int, int, int]], list[tuple[str, dict[str, float]]] | None]:
        """Label the beats of ``feats`` (``result``: batched model output, or ``None`` to run
        the model now, or the exception a batched run raised) and say when each is released.

        A beat is released (published) when the beat after it is accepted, at that beat's
        release sample, so the result does not depend on the chunking.
        """
        from telediag.models.ecg_beats import AAMI_CLASSES

        try:
            if feats is None:
                raise RuntimeError(self._clf_error)
            if isinstance(result, BaseException):
                raise result
            idx, probs = result if result is not None else self._clf.classify(feats)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - a model problem must not stop detection
            self._clf = None  # from now on beats go out unlabelled, as with classify = "off"
            flushed = [(s_, c, r) for s_, (c, r) in sorted(self._clf_release.items())]
            self._clf_release.clear()
            self._clf_error = f"{type(e).__name__}: {e}"
            return flushed, None
        out: list[tuple[int, int, int]] = []
        labels: list[tuple[str, dict[str, float]]] = []
        beats_done = feats.beats.tolist()
        # release each labelled beat when the next accepted beat was released
        next_release = {b: self._clf_release[nb][1] for b, nb in zip(beats_done, beats_done[1:], strict=False)}
        for k, b in enumerate(beats_done):
            c, r = self._clf_release.pop(b)
            rel = next_release.get(b)
            if rel is None:  # the newest labelled beat: its successor is in this batch or pending
                succ = [s_ for s_ in self._clf_release if s_ > b]
                rel = self._clf_release[min(succ)][1] if succ else (self.state.n_seen - 1 if final else r)
            out.append((b, c, max(r, rel)))
            labels.append((AAMI_CLASSES[int(idx[k])],
                           {cls: round(float(p_), 4) for cls, p_ in zip(AAMI_CLASSES, probs[k].tolist(), strict=True)}))
        return out, labels

    # -- decisions ------------------------------------------------------------------------
    def _verdicts(self, rows: SQIUpdate) -> None:
        st = self.state
        if rows.block_start.size == 0:
            return
        lead = self.params.lead  # type: ignore[attr-defined]
        for b, ok in zip((rows.block_start // self._hop).tolist(), rows.usable[:, lead].tolist(), strict=True):
            st.verdicts[b] = ok
        st.blocks_done = int(rows.block_start[-1]) // self._hop + 1
        if len(st.verdicts) > 256:  # keep the recent ones only
            oldest = st.blocks_done - 128
            for b in [b for b in st.verdicts if b < oldest]:
                del st.verdicts[b]

    def _verdict(self, block: int) -> bool:
        """Usable verdict of ``block``, or of the latest assessed block before it."""
        if not self.params.suppress_unusable:  # type: ignore[attr-defined]
            return True
        b = min(block, self.state.blocks_done - 1)
        if b < 0:
            return True  # nothing assessed yet (only reachable with quality_hold="none")
        return self.state.verdicts.get(b, True)

    def _decide(
        self, beats: IntArray, confirm: IntArray, *, final: bool
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Accepted and suppressed beats as ``(sample, confirm, release)``, in order."""
        st = self.state
        hop = self._hop
        acc: list[tuple[int, int, int]] = []
        sup: list[tuple[int, int, int]] = []
        last = st.n_seen - 1
        if not self._verdict_hold:
            for s, c in zip(beats.tolist(), confirm.tolist(), strict=True):
                # latest verdict available when sample c arrived
                usable = self._verdict(min(s // hop, (c + 1) // hop - 1))
                (acc if usable else sup).append((s, c, c))
            return acc, sup
        if beats.size:
            st.pending.extend(zip(beats.tolist(), confirm.tolist(), strict=True))
        done = st.blocks_done
        k = 0
        for s, c in st.pending:
            b = s // hop
            if b < done:
                rel = max(c, (b + 1) * hop - 1)
            elif final:
                rel = last
            else:
                break
            (acc if self._verdict(b) else sup).append((s, c, rel))
            k += 1
        if k:
            del st.pending[:k]
        return acc, sup

    # -- outputs --------------------------------------------------------------------------
    def _emit(
        self,
        out: Outputs,
        accepted: list[tuple[int, int, int]],
        suppressed: list[tuple[int, int, int]],
        rows: SQIUpdate,
        events: list[QualityEvent],
        *,
        end: int,
        final: bool,
        clf_labels: list[tuple[str, dict[str, float]]] | None = None,
        hr_beats: list[tuple[int, int, int]] | None = None,
    ) -> None:
        """Publish this chunk's beats, heart rate, HRV, quality and alarms.

        ``accepted`` are the beats to publish (labelled, released one RR later, when the
        classifier runs); ``hr_beats``, when given, are the same beats as accepted by the
        detector and quality gate, released without waiting for labels: they feed the heart
        rate meter (so HR and the rate alarms do not wait for the classifier), while the
        labelled beats feed HRV and the label-based alarms.
        """
        st = self.state
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        fs = self._fs
        t_ns = st.timeline.t_ns
        st.n_suppressed += len(suppressed)
        beat_dicts: list[dict[str, Any]] = []
        hr_readings: list[dict[str, Any]] = []
        hrv_ticks: list[dict[str, Any]] = []
        labels: list[str | None] = []
        if accepted:
            samples = np.fromiter((a[0] for a in accepted), np.int64, len(accepted))
            batch = BeatBatch(samples, [lab[0] for lab in clf_labels] if clf_labels else [None] * len(accepted),
                              [lab[1] for lab in clf_labels] if clf_labels else [None] * len(accepted), fs,
                              self.spec.channels if self.spec else (), p.lead, st.history)
            for hook in self.beat_hooks:
                hook(batch)
            labels = batch.labels
            st.n_beats += len(accepted)
            for (s, c, r), lab, pr in zip(accepted, batch.labels, batch.probs, strict=True):
                beat_dicts.append({
                    "sample": s, "t_ns": t_ns(s), "confirm_sample": c, "release_sample": r,
                    "confirm_delay_s": (c - s) / fs, "delay_s": (r - s) / fs,
                    "label": lab, "probs": pr,
                })
        # interleave beat releases and periodic ticks in sample order (a beat released at
        # a tick's sample is fed before the tick)
        last_sample = end - 1
        i = 0
        h = 0
        while True:
            next_tick = min(st.next_hr_tick, st.next_hrv_tick)
            if next_tick > last_sample:
                break
            if hr_beats is not None:
                k = h
                while k < len(hr_beats) and hr_beats[k][2] <= next_tick:
                    k += 1
                if k > h:
                    self._feed_hr(hr_beats[h:k], hr_readings)
                    h = k
            j = i
            while j < len(accepted) and accepted[j][2] <= next_tick:
                j += 1
            if j > i:
                self._feed(accepted[i:j], labels[i:j], hr_readings, hr=hr_beats is None)
                i = j
            if st.next_hr_tick == next_tick:
                reading = {"sample": next_tick, "t_ns": t_ns(next_tick),
                           "hr_bpm": _num(st.hr.at(next_tick)), "on_beat": False,
                           "signal_ok": self._verdict((next_tick + 1) // self._hop - 1)}
                hr_readings.append(reading)
                if self._alarms is not None:
                    self._alarm_events += self._alarms.tick(next_tick, reading["hr_bpm"], bool(reading["signal_ok"]))
                st.next_hr_tick += self._hr_step
            if st.next_hrv_tick == next_tick:
                hrv_ticks.append(self._hrv_tick(next_tick))
                st.next_hrv_tick += self._hrv_step
        if hr_beats is not None and h < len(hr_beats):  # releases after the last tick of this chunk
            self._feed_hr(hr_beats[h:], hr_readings)
        if i < len(accepted):
            self._feed(accepted[i:], labels[i:], hr_readings, hr=hr_beats is None)
        counters = {"beats": st.n_beats, "suppressed": st.n_suppressed}
        if beat_dicts:
            out.records.append(Chunk.record("beats", self._stream, 0, beat_dicts[0]["t_ns"], {
                "beats": beat_dicts, "lead": self._lead_name, "channel": p.lead, "fs": fs,
                "quality_hold": p.quality_hold, "counters": counters,
            }))
        if hr_readings:
            out.records.append(Chunk.record("hr", self._stream, 0, hr_readings[0]["t_ns"], {
                "readings": hr_readings, "rule": p.hr_rule, "n_intervals": p.hr_intervals,
                "min_rr_s": p.hr_min_rr_s, "asystole_s": p.hr_asystole_s, "every_s": p.hr_every_s,
            }))
        for tick in hrv_ticks:
            out.records.append(Chunk.record("hrv", self._stream, 0, tick["t_ns"], tick))
        for a in self._alarm_events:
            body = {"type": a.type, "state": a.state, "onset_sample": a.onset, "onset_ns": t_ns(a.onset),
                    "end_sample": a.end, "end_ns": None if a.end is None else t_ns(a.end),
                    "detail": a.detail, "lead": self._lead_name}
            out.records.append(Chunk.record("alarm", self._stream, 0, body["onset_ns"], body))
        self._alarm_events = []
        ev_bodies = [self._event_body(e) for e in events]
        if rows.block_start.size or ev_bodies or suppressed or final:
            blocks = []
            for k, b0 in enumerate(rows.block_start.tolist()):
                blocks.append({
                    "sample": b0, "t_ns": t_ns(b0),
                    "sqi": [_num(v) for v in rows.sqi[k].tolist()],
                    "usable": rows.usable[k].tolist(),
                    "flags": rows.flags[k].tolist(),
                    "features": {name: [_num(v) for v in rows.features[k, :, f].tolist()]
                                 for f, name in enumerate(FEATURE_NAMES)},
                })
            body = {
                "hop_s": self._hop / fs,
                "channels": list(self.spec.channels) if self.spec else [],
                "blocks": blocks,
                "events": ev_bodies,
                "suppressed": [{"sample": s, "t_ns": t_ns(s), "confirm_sample": c, "release_sample": r}
                               for s, c, r in suppressed],
                "counters": counters,
                "final": final,
            }
            t0 = blocks[0]["t_ns"] if blocks else t_ns(max(end - 1, 0))
            out.records.append(Chunk.record("quality", self._stream, 0, t0, body))
        for ev in ev_bodies:
            out.records.append(Chunk.record("event", self._stream, 0, ev["onset_ns"], ev))

    def _feed_hr(self, beats: list[tuple[int, int, int]], readings: list[dict[str, Any]]) -> None:
        """Feed accepted beats to the heart-rate meter (in order); one reading per beat."""
        st = self.state
        samples = np.fromiter((b[0] for b in beats), np.int64, len(beats))
        rows = st.hr.update(samples)
        t_ns = st.timeline.t_ns
        for s, h in zip(rows["sample"].tolist(), rows["hr_bpm"].tolist(), strict=True):
            readings.append({"sample": s, "t_ns": t_ns(s), "hr_bpm": _num(h), "on_beat": True,
                             "signal_ok": True})

    def _feed(self, beats: list[tuple[int, int, int]], labels: list[str | None],
              readings: list[dict[str, Any]], *, hr: bool = True) -> None:
        """Feed accepted beats to the HR meter (unless ``hr`` is false), the alarms and HRV."""
        st = self.state
        if hr:
            self._feed_hr(beats, readings)
        samples = np.fromiter((b[0] for b in beats), np.int64, len(beats))
        if self._alarms is not None:
            self._alarm_events += self._alarms.beats(samples, labels)
        if all(lab is None for lab in labels):
            hrv_rows = st.hrv.update(samples)
        else:
            normal = np.array([lab is None or lab in NORMAL_SYMBOLS for lab in labels], np.bool_)
            hrv_rows = st.hrv.update(samples, normal)
        if hrv_rows.size:
            r = hrv_rows[-1]
            st.hrv_last = {
                "as_of_sample": int(r["sample"]), "n_nn": int(r["n_nn"]), "n_diff": int(r["n_diff"]),
                "mean_nn_ms": _num(r["mean_nn_ms"]), "sdnn_ms": _num(r["sdnn_ms"]),
                "rmssd_ms": _num(r["rmssd_ms"]), "pnn50": _num(r["pnn50"]),
                "mean_hr_bpm": _num(r["mean_hr_bpm"]),
            }

    def _hrv_tick(self, sample: int) -> dict[str, Any]:
        st = self.state
        body: dict[str, Any] = {"sample": sample, "t_ns": st.timeline.t_ns(sample),
                                "window_s": self.params.hrv_window_s}  # type: ignore[attr-defined]
        if st.hrv_last is None:
            body.update({"as_of_sample": None, "n_nn": 0, "n_diff": 0, "mean_nn_ms": None,
                         "sdnn_ms": None, "rmssd_ms": None, "pnn50": None, "mean_hr_bpm": None})
        else:
            body.update(st.hrv_last)
        return body

    def _event_body(self, ev: QualityEvent) -> dict[str, Any]:
        t_ns = self.state.timeline.t_ns
        ch = self.spec.channels if self.spec else ()
        return {
            "type": "quality", "event": ev.kind, "state": "start" if ev.end is None else "end",
            "stream": self._stream, "lead": ch[ev.channel] if ev.channel < len(ch) else str(ev.channel),
            "channel": ev.channel, "onset_sample": ev.onset, "onset_ns": t_ns(ev.onset),
            "end_sample": ev.end, "end_ns": None if ev.end is None else t_ns(ev.end),
        }


assert set(EVENT_KINDS) == {"leads_off", "flat_line", "saturation", "heavy_noise"}
