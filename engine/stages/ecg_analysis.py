"""ECG analysis stage: beats, heart rate, HRV, rhythm, signal quality and alarms, published live.

``ecg_analysis`` (kind ``ecg``) is a thin composition of components that each own their
state (:mod:`telediag.engine.stages.ecg_parts`): detector, quality gate, beat labeller,
rhythm (AF) monitor, rate/HRV monitor and alarms. It runs, on the **raw** signal, the
streaming building blocks of :mod:`telediag.dsp`:

* :class:`~telediag.dsp.qrs.QRSDetector` on lead ``lead`` (R peaks and the sample that
  confirmed each one);
* :class:`~telediag.dsp.quality.SignalQuality` on every lead (per-lead SQI per block of
  ``quality_hop_s``, quality events, a usable verdict per block);
* :class:`~telediag.dsp.hr.HeartRateMeter` (ANSI/AAMI EC13 display rule) and
  :class:`~telediag.dsp.hrv.HRVMeter` (Task Force 1996 time-domain HRV) on the beats whose
  block is usable (every detected beat is published; those in unusable blocks carry
  ``usable: false`` and are ignored by HR, HRV, rhythm and alarms);
* :class:`~telediag.dsp.af.AFDetector`: atrial fibrillation episodes from RR irregularity and
  absent P waves (:mod:`telediag.dsp.atrial`, measured on the detection lead from the signal
  history) (``alarm`` type ``afib``; an ``S`` label inside AF becomes ``N``);
* :class:`~telediag.dsp.alarms.RhythmAlarms` and :class:`~telediag.dsp.alarms.TechnicalAlarms`:
  technical alarms (``leads_off``, ``signal_unusable``) supersede physiological ones
  (IEC 60601-2-27): unusable signal or a gap never raises asystole, bradycardia or pause;
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
usable on the detection lead and ``suppress_unusable`` is true: it is then published with
``usable: false`` (never dropped; HR, HRV, rhythm and alarms ignore it), at the cost of up
to one block (``quality_hop_s``) of extra delay.  With
``quality_hold = "none"`` a beat is decided at its confirmation, on the most recent verdict
then available (its own block when already assessed, otherwise the previous complete block):
the delay is the detector's alone, but beats of the first block of a noisy stretch are
judged usable and those of the first block after it unusable.  Every beat carries
``release_sample`` (the sample whose arrival decided it) and ``delay_s = (release_sample -
sample) / fs``; these are properties of the sample stream, identical for any chunking.  At
the end of the stream (:meth:`EcgAnalysis.close`) the beats still pending are decided on the
latest verdict.

Analysis lead
-------------
``lead`` is the *preferred* lead. With ``lead_fallback`` (default) and two or more leads, when the
analysis lead has been unusable for ``alarm_technical_s`` (the technical alarm's delay, whole quality
blocks) detection moves, at the end of that block, to the preferred lead if it was usable over that
time, else to the usable lead with the best mean SQI, else - when the analysis lead is off (leads-off,
flat line, saturation) - to a connected isoelectric lead that was usable in at least half of the last
``LEAD_TRUST_BLOCKS`` blocks (asystole must still be recognised: a lead that never showed a usable ECG,
such as MIT-BIH 101's 0.07 mV V1, is no witness) - in every case only if a detector on the candidate
finds ``LEAD_MATCH`` (80 %) of the beats the analysis lead found before its unusable run, over the
history (:meth:`~.ecg_parts.leads.LeadFallback.concordant`; MIT-BIH 207's V1 shows half of an R-V bigeminy). It returns to the preferred lead once that has been
usable for ``LEAD_RETURN_S`` (10 s): the beat classifier and the AF tuning are for the preferred
(MLII-like) lead, and the hysteresis keeps an intermittent electrode from making analysis flap. The new
lead's :class:`~telediag.dsp.qrs.QRSDetector` first runs over that lead's last ``learn_s`` +
``LEAD_WARM_S`` seconds of :class:`SignalHistory`, so its learning period is over at the switch; it
contributes the beats from the switch on, plus those the old detector could no longer confirm (R peaks
less than its confirmation bound before the switch, outside its refractory period). The switch sample
is the end of a quality block, so the result does not depend on the chunking. The technical alarm
stays on the preferred lead; the quality verdict, the isoelectric and baseline-step tests, AF's P-wave
template (one per lead) and ``signal_ok`` follow the analysis lead. The classifier always reads the
preferred lead: beats found on another are published unlabelled, and after the return the first 16
labelled beats start no ventricular run and count for no ectopy (its running template holds the
other lead's beat positions). Each switch is an ``event`` ``analysis_lead``; ``beats`` records name the
lead their beats were found on (one record per lead); a physiological alarm names the analysis lead at
its onset. Nothing of this runs while the preferred lead is usable (a test per quality block).

Published records (topic ``<kind>/<stream>``; ``stream`` is the input stream's id)
------------------------------------------------------------------------------------
``beats``   ``{"beats": [{"sample", "t_ns", "confirm_sample", "release_sample",
            "confirm_delay_s", "delay_s", "label", "probs", "usable"}], "lead", "channel",
            "fs", "quality_hold", "counters": {"beats", "unusable", "suppressed"}}`` - when
            beats are released (``usable`` false: the beat's quality block is unusable;
            ``counters.beats`` counts usable beats, ``unusable``/``suppressed`` the others).
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
            event starts or ends, or beats flagged unusable are released (``suppressed``
            lists them again; they are in ``beats`` too, with ``usable: false``).
``event``   ``{"type": "quality", "event": kind, "state": "start"|"end", "stream", "lead",
            "channel", "onset_sample", "onset_ns", "end_sample", "end_ns"}`` for every quality
            event (``leads_off``, ``flat_line``, ``saturation``, ``heavy_noise``).

``alarm``   ``{"type", "state": "on"|"off", "category": "technical"|"physiological",
            "onset_sample", "onset_ns", "end_sample", "end_ns", "detail", "lead"}``: asystole,
            brady, tachy, vrun, pause, ectopy, afib, and the technical ``leads_off`` and
            ``signal_unusable`` (``detail.causes``: the quality flags seen).

Every ``*sample`` field is the index in the **source's** sample stream since the stream
opened: after a gap it skips the samples lost, read from the chunk timestamps (a chunk whose
``t0_ns`` is later than the continuation of the previous one by more than half a sample
period starts after ``round(dt * fs)`` lost samples; see
:class:`~telediag.engine.stages.ecg_parts.clock.Timeline`); ``t_ns`` is its source time.
Internally the components run on the received (contiguous) samples; an interval across a
gap is not measured by the alarms or the AF detector.  NaN becomes ``null`` in every body.

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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.af import AFParams
from telediag.dsp.alarms import TECHNICAL, AlarmEvent, AlarmParams, RhythmAlarms, TechnicalAlarms
from telediag.dsp.hr import HeartRateMeter
from telediag.dsp.hrv import HRVMeter
from telediag.dsp.qrs import QRSDetector, QRSParams
from telediag.dsp.quality import (
    EVENT_KINDS,
    FEATURE_NAMES,
    QualityEvent,
    SignalQuality,
    SQIUpdate,
    all_plausible,
)
from telediag.engine.stage import Deferred, Outputs, Stage, StageParams, StreamSpec, register
from telediag.engine.stages.ecg_parts.asystole import (
    BASELINE_STEP_MV,
    ISOELECTRIC_MV,
    AsystoleEvidence,
)
from telediag.engine.stages.ecg_parts.clock import SignalHistory, Timeline
from telediag.engine.stages.ecg_parts.gate import Decided, QualityGate
from telediag.engine.stages.ecg_parts.labeller import (
    BeatLabeller,
    Labelled,
    classifier,
    classify_batch,
)
from telediag.engine.stages.ecg_parts.leads import (
    LEAD_RETURN_S,
    DetectorHandover,
    LeadFallback,
    Switch,
)
from telediag.engine.stages.ecg_parts.rate import RateMonitor
from telediag.engine.stages.ecg_parts.rhythm import RhythmMonitor
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
JITTER_TOLERANCE_S = 0.1
"""A ``t0_ns`` off by less than this (s), on a chunk whose ``seq`` follows the previous one, is
timestamp jitter (no samples were lost in transport; a lost stretch this short cannot hold a whole
QRS complex): the sample count goes on (no new :class:`Timeline` anchor, so published indices do
not skip), and the alarms and the AF detector go on measuring intervals across it."""
_UNITS_PER_MV = {"mv": 1.0, "uv": 1000.0, "µv": 1000.0, "μv": 1000.0, "v": 0.001}


@dataclass(frozen=True, slots=True)
class EcgAnalysisParams(StageParams):
    """Parameters of :class:`EcgAnalysis` (one ``[pipeline.ecg.<name>]`` section).

    Attributes
    ----------
    publish : bool
        Publish the (unchanged) input signal again; default false.
    lead : int
        Index of the preferred lead: the QRS detector runs on it (default 0) while it is usable.
    lead_fallback : bool
        Analysis-lead fallback (default true): when the analysis lead has been unusable for
        ``alarm_technical_s`` and another lead is usable (or, when the analysis lead is off, is a
        connected isoelectric line that was usable most of the last minute), detection, rate, rhythm and alarms move to the best
        such lead, and back to ``lead`` once it has been usable for ``LEAD_RETURN_S`` (10 s); see
        "Analysis lead" in the module docstring. The technical alarm stays on ``lead``.
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
    implausible_mv : float
        A sample whose magnitude exceeds this many mV (default 500: beyond the +-300 mV electrode
        offset an ECG amplifier must tolerate, IEC 60601-2-27) is no ECG (a glitch, garbage,
        unconverted counts): it is treated as missing (NaN: leads-off, never a beat), because a
        single such spike would otherwise set the QRS detector's signal level so high that it
        found no beat for minutes (false asystole); 0 turns the check off. Only channels whose
        unit is mV, uV or V (or with ``units_per_mv`` set) are checked: ADC units are not.
    flat_mv, noise_on, noise_off, usable_sqi : float
        Quality thresholds (see :mod:`telediag.dsp.quality`).
    suppress_unusable : bool
        Flag beats in blocks judged unusable on the detection lead (``usable: false``; they are
        published but ignored by HR, HRV, rhythm and alarms); false: every beat is usable.
    quality_hold : str
        ``"verdict"`` (hold beats until their block is assessed) or ``"none"`` (decide at
        confirmation on the latest verdict); see the module docstring.
    classify, classifier_variant : str
        Beat classification with the shipped ONNX model (:mod:`telediag.models.ecg_beats`):
        ``"off"`` (the parameter's default; the built-in configuration sets ``"on"``), ``"auto"``
        (when the model loads) or ``"on"`` (labels expected: if the model cannot load or fails,
        the stream is still analysed, unlabelled, and one ``event`` record of type
        ``classifier_unavailable`` says why - a model problem never refuses a stream). The
        classifier looks ahead ``L`` beats (its feature builder's ``LOOKAHEAD_BEATS``, 3 for
        ecg_beats 2.0), so with classification on a beat is published (labelled, with class
        probabilities) when the ``L``-th beat after it is released: ``L`` RR intervals more
        delay for beats, HRV, AF and the label alarms (run, ectopy); the heart rate, the rate
        alarms, asystole and pause do not wait for labels (identical to ``classify = "off"``,
        tested). ``classifier_variant`` is ``"fp32"`` or ``"int8"``; ``classifier_threads`` is
        ONNX Runtime's intra-op thread count (1: the worker's own core; streams share one session
        per variant and thread count, and the worker batches their beats, ``[engine].batch_max``).
    alarms : bool
        Publish rhythm alarms on ``alarm/<stream>`` (:mod:`telediag.dsp.alarms`): asystole,
        extreme brady/tachycardia, ventricular run, pause, frequent ectopy; thresholds
        ``alarm_asystole_s``, ``alarm_brady_bpm``, ``alarm_tachy_bpm``, ``alarm_sustain_s``,
        ``alarm_vrun_beats``, ``alarm_pause_s``, ``alarm_ectopy_per_min``. Body: ``{"type",
        "state": "on"|"off", "onset_sample", "onset_ns", "end_sample", "end_ns", "detail", "lead"}``.
        Label-based alarms (run, ectopy) need the beat classifier's labels. Technical alarms
        ``leads_off``/``signal_unusable`` go on after ``alarm_technical_s`` (2 s) of unusable
        blocks and off after as long usable.
    rhythm : bool
        AF detection (:mod:`telediag.dsp.af`, default on): ``afib`` alarms; ``S`` labels inside
        AF become ``N``. ``af_window`` (RR intervals), ``af_on``/``af_off`` (normalised RMSSD
        hysteresis), ``af_cv_min`` (minimum CV of the absolute successive differences),
        ``af_tpr_min`` (minimum turning-point ratio), ``af_lag_min`` (minimum lag-2/3
        irregularity: rejects bigeminy/trigeminy), ``af_p_on``/``af_p_off`` (AF only while the
        median P-wave correlation of the last beats is below ``af_p_on``, ends above
        ``af_p_off``; ``af_p_on = af_p_off = 1.0`` turns the P-wave gate off); see
        :class:`telediag.dsp.af.AFParams`.
    history_s : float
        Raw signal kept for beat hooks (:class:`SignalHistory`), seconds.
    """

    publish: bool = False
    lead: int = 0
    lead_fallback: bool = True
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
    implausible_mv: float = 500.0
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
    alarm_technical_s: float = 2.0
    rhythm: bool = True
    af_window: int = 32
    af_on: float = 0.12
    af_off: float = 0.09
    af_cv_min: float = 0.4
    af_tpr_min: float = 0.6
    af_lag_min: float = 0.16
    af_p_on: float = 0.3
    af_p_off: float = 0.6

    def af_params(self) -> AFParams:
        """The ``af_*`` keys as :class:`telediag.dsp.af.AFParams`."""
        try:
            return AFParams(window=self.af_window, min_valid=max(2, (3 * self.af_window) // 4), on=self.af_on,
                            off=self.af_off, cv_min=self.af_cv_min, back=self.af_window // 2,
                            tpr_min=self.af_tpr_min, lag_min=self.af_lag_min, p_on=self.af_p_on,
                            p_off=self.af_p_off)
        except DSPError as e:
            raise ValueError(str(e)) from e

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
        if not isinstance(self.lead_fallback, bool):
            raise ValueError(f"lead_fallback must be true or false, got {self.lead_fallback!r}")
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
        if not (math.isfinite(self.implausible_mv) and self.implausible_mv >= 0):
            raise ValueError(f"implausible_mv must be >= 0 (0: off), got {self.implausible_mv!r}")
        if math.isnan(self.adc_min) or math.isnan(self.adc_max) or self.adc_min >= self.adc_max:
            raise ValueError(f"need adc_min < adc_max, got adc_min={self.adc_min}, adc_max={self.adc_max}")
        if not (math.isfinite(self.alarm_technical_s) and 0 < self.alarm_technical_s <= 60):
            raise ValueError(f"alarm_technical_s must be in (0, 60] s, got {self.alarm_technical_s!r}")
        self.af_params()


# --------------------------------------------------------------------------------------
# Beat hooks
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class BeatBatch:
    """Beats handed to the beat hooks before they are published.

    A hook may set ``labels[i]`` (a beat code such as ``"N"``, ``"V"``) and ``probs[i]``
    (a dict class -> probability); labels outside ``N``/``L``/``R`` exclude the beat's
    intervals from HRV.

    Attributes
    ----------
    samples : numpy.ndarray of int64
        R-peak sample indices (received-sample indices, those of ``history``).
    labels : list of str or None
    probs : list of dict or None
    fs : float
    channels : tuple of str
    lead : int
        Detection lead.
    history : SignalHistory
        Recent raw signal (all leads); ``history.end`` is the number of samples received.
    usable : list of bool
        The quality verdict of each beat (``False``: published with ``usable: false``,
        ignored by HR, HRV and alarms).
    """

    samples: IntArray
    labels: list[str | None]
    probs: list[dict[str, float] | None]
    fs: float
    channels: tuple[str, ...]
    lead: int
    history: SignalHistory
    usable: list[bool] = field(default_factory=list)


BeatHook = Callable[[BeatBatch], None]
"""A callable filling ``labels``/``probs`` of a :class:`BeatBatch` in place."""


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class EcgAnalysisState:
    """Streaming state of :class:`EcgAnalysis` (one stream): its components.

    Attributes
    ----------
    detector : QRSDetector
    gate : QualityGate
        Signal quality and beat verdicts (``gate.quality`` is the SignalQuality).
    rate : RateMonitor
        Heart rate and HRV (``rate.hr``, ``rate.hrv``).
    rhythm : RhythmMonitor
        Atrial fibrillation episodes.
    alarms : RhythmAlarms or None
    technical : TechnicalAlarms or None
    labeller : BeatLabeller or None
        The beat classifier (``None``: ``classify = "off"`` or the model did not load).
    timeline : Timeline
    history : SignalHistory
    n_seen : int
        Samples received.
    n_beats, n_unusable : int
        Counters of published usable and unusable beats.
    closed : bool
    last_seq : int or None
        ``seq`` of the last chunk processed (tells timestamp jitter from loss).
    """

    detector: QRSDetector
    gate: QualityGate
    rate: RateMonitor
    rhythm: RhythmMonitor
    alarms: RhythmAlarms | None
    technical: TechnicalAlarms | None
    labeller: BeatLabeller | None
    timeline: Timeline
    history: SignalHistory
    n_seen: int = 0
    n_beats: int = 0
    n_unusable: int = 0
    closed: bool = False
    last_seq: int | None = None

    @property
    def quality(self) -> SignalQuality:
        """The signal-quality assessor."""
        return self.gate.quality


@register
class EcgAnalysis(Stage):
    """Beats, heart rate, HRV, rhythm, signal quality and alarms of an ECG stream (see the
    module docstring): a thin composition of the components of
    :mod:`telediag.engine.stages.ecg_parts`.

    The input chunk is passed on unchanged as the ``signal`` output, so the stage can sit
    anywhere before stages that need the raw signal.
    """

    type_name = "ecg_analysis"
    Params = EcgAnalysisParams
    kinds = frozenset({"ecg"})

    def __init__(self, params: StageParams, name: str | None = None) -> None:
        super().__init__(params, name)
        self.beat_hooks: list[BeatHook] = []

    def add_beat_hook(self, hook: BeatHook) -> None:
        """Call ``hook`` on every batch of beats before they are published."""
        self.beat_hooks.append(hook)

    # -- lifecycle ------------------------------------------------------------------------
    def open(self, spec: StreamSpec) -> StreamSpec:
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        fs, n_ch = self._check_spec(spec)
        upm, known = self._scales(spec, n_ch)
        keep = round(max(60.0, 2 * p.history_s) * fs)
        # analysis-lead fallback (per lead: the isoelectric and baseline-step limits)
        upms = upm if isinstance(upm, list) else [float(upm)] * n_ch
        iso_lims = [ISOELECTRIC_MV * upms[k] if known[k] else None for k in range(n_ch)]
        step_lims = [BASELINE_STEP_MV * upms[k] if known[k] else None for k in range(n_ch)]
        self._implausible = (np.where(known, np.broadcast_to(np.asarray(upm, dtype=np.float64), (n_ch,))
                                      * p.implausible_mv, np.inf)
                             if p.implausible_mv > 0 and any(known) else None)
        if self._implausible is not None:
            self._implausible.flags.writeable = False
        timeline = Timeline(fs, keep=keep)
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
            alarms = RhythmAlarms(fs, p.alarm_params(), origin=0) if p.alarms else None
            hop = quality.hop
            n_tech = max(1, math.ceil(p.alarm_technical_s * fs / hop - 1e-9))
            technical = TechnicalAlarms(hop, n_tech, n_tech) if p.alarms else None
            rhythm = RhythmMonitor(fs, p.af_params(), enabled=p.rhythm)
        except DSPError as e:
            raise ConfigError(f"[{self.name}]: {e}") from e
        labeller = None
        self._clf_key = ""
        self._clf_problem = ""
        self._clf_reported = False
        if p.classify != "off":
            try:
                labeller = BeatLabeller(classifier(p.classifier_variant, p.classifier_threads), fs)
                self._clf_key = f"{p.classifier_variant}/{p.classifier_threads}"
            except Exception as e:  # noqa: BLE001 - a model problem must never refuse the stream
                # safety: a missing or broken model must not silence monitoring; with "on" the
                # stream is analysed unlabelled and a classifier_unavailable event says why
                labeller = None
                if p.classify == "on":
                    self._clf_problem = f"the beat classifier cannot load: {type(e).__name__}: {e}"

        self._fs = fs
        self._jitter_ns = round(JITTER_TOLERANCE_S * 1e9)
        self._stamp = stamp = timeline.stamp
        self._source = timeline.source
        cap = max(1, round(p.history_s * fs))
        self.state = EcgAnalysisState(
            detector=detector,
            gate=QualityGate(quality, hold=p.quality_hold == "verdict", suppress=p.suppress_unusable, lead=p.lead),
            rate=RateMonitor(hr, hrv, max(1, round(p.hr_every_s * fs)), max(1, round(p.hrv_every_s * fs)),
                             p.hrv_window_s, stamp),
            rhythm=rhythm, alarms=alarms, technical=technical, labeller=labeller,
            timeline=timeline, history=SignalHistory(np.zeros((cap, n_ch))),
        )
        self._lf = lf = LeadFallback(fs, p.lead, self.state.history, hop=hop, n_tech=n_tech,
                                     n_return=max(1, math.ceil(LEAD_RETURN_S * fs / hop - 1e-9)),
                                     iso_lims=iso_lims, qrs=p.qrs, enabled=p.lead_fallback and n_ch > 1)
        self._handover = DetectorHandover(fs, p.qrs, self.state.history)
        self._asy = AsystoleEvidence(fs, self.state.history, iso_lims, step_lims, p.lead, lf.seg_start)
        rhythm.attach(self.state.history, p.lead)  # AF needs absent P waves too (dsp.atrial)
        self.spec = spec
        self._stream = spec.stream
        self._lead_name = spec.channels[p.lead] if spec.channels else str(p.lead)
        self._names = [spec.channels[k] if k < len(spec.channels) else str(k) for k in range(n_ch)]
        return spec

    def _check_spec(self, spec: StreamSpec) -> tuple[float, int]:
        """The stream's sample rate and channel count, refused (ConfigError) outside the stage's range."""
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
        return fs, n_ch

    def _scales(self, spec: StreamSpec, n_ch: int) -> tuple[float | list[float], list[bool]]:
        """Units per mV (one for all leads, or per lead) and, per lead, whether the scale is known."""
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        upm: float | list[float]
        if p.units_per_mv > 0:
            upm = p.units_per_mv
        else:
            units = spec.units if len(spec.units) == n_ch else ("mV",) * n_ch
            upm = [_UNITS_PER_MV.get(u.strip().lower(), 1.0) for u in units]
        # the bound applies where the scale is known: units_per_mv given, or a channel in mV, uV or V
        # (integer ADC units without gain, "adu" or "", are analysed as they are: no bound)
        known = [p.units_per_mv > 0 or (i < len(spec.units) and spec.units[i].strip().lower() in _UNITS_PER_MV)
                 for i in range(n_ch)]
        return upm, known

    @property
    def detection_delay_s(self) -> float:
        """Design bound of the detector's confirmation delay (s); see the module docstring."""
        return self.state.detector.detection_delay_s

    @property
    def classifier_error(self) -> str:
        """Why beats are unlabelled although ``classify = "on"``, or why the classifier stopped
        labelling (empty while it works or is off)."""
        lab = self.state.labeller
        if lab is not None and not lab.active:
            return lab.error or "the beat classifier failed"
        return self._clf_problem

    def process(self, chunk: Chunk) -> Outputs:
        st = self.state
        if st.closed:
            raise ConfigError(f"[{self.name}] was closed; open it again for a new stream")
        x = self._samples(chunk)
        start = st.n_seen
        self._clock(chunk, start, x.shape[0])
        rows, events = st.gate.assess(x)
        beats, confirm, switched = self._detect(x, start, rows)
        st.history.push(x)
        lead = self.params.lead  # type: ignore[attr-defined]
        st.n_seen = start + x.shape[0]
        decided = st.gate.decide(beats, confirm, n_seen=st.n_seen, final=False)
        lab = st.labeller
        if lab is None or not lab.active:
            out = Outputs(signal=chunk)
            self._emit(out, decided, [(*d, None, None) for d in decided], rows, events, end=st.n_seen, final=False,
                       switched=switched)
            return out
        # the classifier always reads the preferred lead (it is trained on MLII-like leads; the labels of
        # beats found on another lead are not published, see _emit)
        feats = lab.push(x[:, lead], decided, final=False)
        end = st.n_seen
        if self.batching and feats is not None and len(feats):
            # hand the model call to the worker (batched with other streams), finish later
            def resume(result: Any) -> Outputs:
                rest = Outputs()
                self._emit(rest, decided, lab.finish(feats, result, n_seen=end, final=False), rows, events,
                           end=end, final=False, late=True, switched=switched)
                return rest

            return Outputs(signal=chunk, deferred=Deferred(("ecg_beats", self._clf_key), classify_batch,
                                                            (lab.clf, feats), resume))
        out = Outputs(signal=chunk)
        self._emit(out, decided, lab.finish(feats, None, n_seen=end, final=False), rows, events, end=end,
                   final=False, late=True, switched=switched)
        return out

    def _samples(self, chunk: Chunk) -> NDArray[np.float64]:
        """The chunk's samples as float64 ``(n, n_channels)``, physically implausible values as NaN."""
        x = np.asarray(chunk.data, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        n_ch = self.spec.n_channels if self.spec else x.shape[1]
        if x.ndim != 2 or x.shape[1] != n_ch:
            raise ConfigError(
                f"stream {chunk.stream!r} opened with {n_ch} channel(s), chunk has shape {x.shape}"
            )
        lim = self._implausible
        # one pass for the common chunk (all finite and plausible); else the exact mask
        if lim is not None and x.size and not (x.flags.c_contiguous and all_plausible(x, lim)):
            wild = np.abs(x) > lim  # NaN compares false: stays NaN
            if wild.any():
                x = np.where(wild, np.nan, x)
        return x

    def _clock(self, chunk: Chunk, start: int, n: int) -> None:
        """Place the chunk's ``n`` samples from received sample ``start`` on the timeline; a gap (lost
        samples) stops the alarms and the AF monitor from measuring an interval across it."""
        st = self.state
        contiguous = st.last_seq is not None and chunk.seq == st.last_seq + 1
        st.last_seq = chunk.seq
        tl = st.timeline
        if not n:
            lost = 0
        elif contiguous and tl.starts and abs(chunk.t0_ns - tl.t_ns(start)) < self._jitter_ns:
            # a small t0 departure on a contiguous seq is timestamp jitter, not loss: the sample
            # count goes on (no new time anchor, as in the PCG stage). As a gap it would restart
            # the asystole interval at every jittery chunk (silencing asystole), and each late
            # stamp would skip source indices that no early stamp gives back (OUTPUTS.md 3)
            lost = 0
        else:
            lost = tl.observe(start, chunk.t0_ns)
        if lost:
            # no interval across a gap is measured (pause, asystole, AF)
            if st.alarms is not None:
                st.alarms.gap(start)
            st.rhythm.gap(start)

    def _detect(self, x: NDArray[np.float64], start: int, rows: SQIUpdate
                ) -> tuple[IntArray, IntArray, list[Switch] | None]:
        """The analysis lead followed over the chunk's quality blocks, then the QRS detector on it:
        ``(beats, confirm, switched)`` in received indices (before the chunk enters the history)."""
        st = self.state
        switched = None
        lf = self._lf
        if rows.block_start.size:
            switched = lf.follow(rows, x, start, st.gate.all_ok, self._asy.found, self._switch)
        if switched:
            st.detector, beats, confirm = self._handover.run(st.detector, x, start, switched)
        else:
            beats, confirm = st.detector.process_with_confirm(x[:, lf.active])
            if lf.sw_at:
                beats, confirm = self._handover.shift(beats, confirm)
            elif beats.size:
                self._handover.last = int(beats[-1])
        return beats, confirm, switched

    # -- analysis-lead fallback -------------------------------------------------------------
    def _switch(self, t: int, lead: int, verdicts: dict[int, bool]) -> None:
        """The stage's side of an analysis-lead change to ``lead`` from received sample ``t`` on (gate, AF, alarms)."""
        st = self.state
        pref = self.params.lead  # type: ignore[attr-defined]
        st.gate.switch(lead, verdicts)
        st.rhythm.set_lead(lead, t)
        if lead == pref and st.alarms is not None:
            # the classifier's running template holds beats found on the other lead (their windows
            # on this one): no ventricular run or ectopy from the first beats after the return
            st.alarms.state.settle_from = t

    def close(self) -> Outputs:
        st = self.state
        out = Outputs()
        if st.closed:
            return out
        st.closed = True
        beats, confirm = st.detector.flush_with_confirm()
        if self._lf.sw_at:
            beats, confirm = self._handover.shift(beats, confirm)
        decided = st.gate.decide(beats, confirm, n_seen=st.n_seen, final=True)
        lab = st.labeller
        late = lab is not None and lab.active
        if not late:
            labelled: list[Labelled] = [(*d, None, None) for d in decided]
        else:
            assert lab is not None
            labelled = lab.finish(lab.push(np.empty(0), decided, final=True), None, n_seen=st.n_seen, final=True)
        empty = SQIUpdate.concatenate([], self.spec.n_channels if self.spec else 1)
        self._emit(out, decided, labelled, empty, [], end=st.n_seen, final=True, late=late)
        self._end_open(out, st.n_seen)
        return out

    def _end_open(self, out: Outputs, end: int) -> None:
        """End every alarm and quality event still on when the stream closes (new session,
        handover to another worker, engine stop): ``off``/``end`` at ``end`` with ``detail.reason
        = "stream_closed"``, so no consumer keeps an alarm on that nothing would ever end. The
        stream's next pipeline raises what still holds afresh."""
        st = self.state
        why = {"reason": "stream_closed"}
        ends: list[AlarmEvent] = []
        if st.alarms is not None:
            for kind, onset in sorted(st.alarms.state.active.items(), key=lambda kv: kv[1]):
                ends.append(AlarmEvent(kind, "off", onset, max(end, onset), dict(why)))
            st.alarms.state.active.clear()
        if st.rhythm.in_af:
            onset = st.rhythm.onset if st.rhythm.onset is not None else end
            ends.append(AlarmEvent("afib", "off", onset, max(end, onset), dict(why)))
        tech = st.technical
        if tech is not None and tech.state.active is not None:
            t = tech.state
            ends.append(AlarmEvent(t.active, "off", t.onset, max(end, t.onset), {"causes": sorted(t.cause), **why}))
            t.active = None
        for a in ends:
            out.records.append(Chunk.record("alarm", self._stream, 0, self._stamp(a.onset)[1], self._alarm_body(a)))
        pref = self.params.lead  # type: ignore[attr-defined]
        if self._lf.active != pref:  # the next pipeline starts on the preferred lead
            out.records.append(self._lead_event(end, self._lf.active, pref, "stream_closed"))
        for ev in st.quality.open_events():
            body = {**self._event_body(QualityEvent(ev.kind, ev.channel, ev.onset, max(end, ev.onset))), **why}
            out.records.append(Chunk.record("event", self._stream, 0, body["onset_ns"], body))

    def _alarm_body(self, a: AlarmEvent) -> dict[str, Any]:
        stamp = self._stamp
        # technical: the preferred lead (its electrode); physiological: the analysis lead at onset
        lead = self._lead_name if not self._lf.sw_at or a.type in TECHNICAL else self._names[self._lf.lead_at(a.onset)]
        on_src, on_t = stamp(a.onset)
        return {"type": a.type, "state": a.state, "onset_sample": on_src, "onset_ns": on_t,
                "end_sample": None if a.end is None else stamp(a.end)[0],
                "end_ns": None if a.end is None else stamp(a.end)[1],
                "detail": a.detail, "lead": lead,
                "category": "technical" if a.type in TECHNICAL else "physiological"}

    # -- outputs --------------------------------------------------------------------------
    def _emit(self, out: Outputs, decided: list[Decided], labelled: list[Labelled], rows: SQIUpdate,
              events: list[QualityEvent], *, end: int, final: bool, late: bool = False,
              switched: list[Switch] | None = None) -> None:
        """Publish this chunk's beats, heart rate, HRV, quality, rhythm and alarms.

        ``decided`` are the beats as the quality gate released them: the usable ones feed the
        heart-rate meter at once (HR and the rate alarms never wait for labels);
        ``labelled`` are the beats to publish (released one or more beats later when the
        classifier runs, ``late``): the usable ones feed the rhythm monitor, HRV and the label
        alarms (run, ectopy); asystole and pause are always judged on ``decided``.
        """
        self._notices(out, end, switched)
        if not (decided or labelled or events or final or rows.block_start.size) \
                and self.state.rate.next_tick > end - 1:
            return  # nothing released, assessed or due in this chunk (most short chunks): nothing to publish
        if decided:  # the detector's beats, usable or not, for the isoelectric test (in every chunk: a beat
            # decided in a chunk that completes no block was left out, and the test depended on the chunking)
            self._asy.found_beats(decided)
        alarm_events = self._assess_blocks(rows) if rows.block_start.size else []
        labelled, good, labels = self._rhythm(labelled, alarm_events)
        beat_dicts, unusable, labels = self._beat_dicts(labelled, good, labels)
        hr_readings, hrv_ticks = self._rate_and_alarms([d for d in decided if d[3]], good, labels, end, late,
                                                       alarm_events)
        st = self.state
        counters = {"beats": st.n_beats, "unusable": st.n_unusable, "suppressed": st.n_unusable}
        if beat_dicts:
            self._beat_records(out, labelled, beat_dicts, counters)
        self._rate_records(out, hr_readings, hrv_ticks)
        for a in alarm_events:
            body = self._alarm_body(a)
            out.records.append(Chunk.record("alarm", self._stream, 0, body["onset_ns"], body))
        ev_bodies = [self._event_body(e) for e in events]
        if rows.block_start.size or ev_bodies or unusable or final:
            self._quality_record(out, rows, ev_bodies, unusable, counters, end, final)
        for ev in ev_bodies:
            out.records.append(Chunk.record("event", self._stream, 0, ev["onset_ns"], ev))

    def _notices(self, out: Outputs, end: int, switched: list[Switch] | None) -> None:
        """The ``classifier_unavailable`` event (once per stream: beats go out unlabelled from here) and
        the ``analysis_lead`` events of this chunk (before what follows from them)."""
        problem = self.classifier_error
        stamp = self._stamp
        if problem and not self._clf_reported:
            self._clf_reported = True
            src, t = stamp(max(end - 1, 0))
            out.records.append(Chunk.record("event", self._stream, 0, t, {
                "type": "classifier_unavailable", "stream": self._stream, "sample": src, "t_ns": t,
                "detail": problem[:500]}))
        for t, old, new, why in switched or ():
            out.records.append(self._lead_event(t, old, new, why))

    def _lead_event(self, t: int, old: int, new: int, why: str) -> Chunk:
        """The ``analysis_lead`` event of a change from lead ``old`` to ``new`` at received sample ``t``."""
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        src, t_ns = self._stamp(t)
        return Chunk.record("event", self._stream, 0, t_ns, {
            "type": "analysis_lead", "stream": self._stream, "sample": src, "t_ns": t_ns,
            "from": self._names[old], "from_channel": old, "to": self._names[new], "to_channel": new,
            "preferred": self._lead_name, "preferred_channel": p.lead, "reason": why})

    def _assess_blocks(self, rows: SQIUpdate) -> list[AlarmEvent]:
        """Feed this chunk's quality blocks (each on the lead analysed there) to the alarms (usable for
        asystole and pause: :class:`AsystoleEvidence`) and the AF monitor, and the preferred lead's to
        the technical alarms, whose events are returned."""
        st = self.state
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        hop = st.gate.hop
        starts = rows.block_start.tolist()
        pref_usable = rows.usable[:, p.lead].tolist() if p.suppress_unusable else [True] * len(starts)
        if not self._lf.sw_at:
            leads = None
            usable = pref_usable
            block_flags = rows.flags[:, p.lead].tolist()
        else:  # each block on the lead analysed there
            leads = [self._lf.lead_at(b0) for b0 in starts]
            rng = range(len(starts))
            usable = rows.usable[rng, leads].tolist() if p.suppress_unusable else [True] * len(starts)
            block_flags = rows.flags[rng, leads].tolist()
        alarms, asy, rhythm = st.alarms, self._asy, st.rhythm
        for k, (b0, ok, fl) in enumerate(zip(starts, usable, block_flags, strict=True)):
            if alarms is not None:
                # a connected, isoelectric lead is what asystole looks like: usable for asystole, unless the
                # detector keeps finding beats in a regular rhythm there (a low-voltage ECG that the
                # quality scores as noise is not asystole)
                alarms.signal(b0, b0 + hop, asy.block(b0, hop, ok, fl, p.lead if leads is None else leads[k]))
            rhythm.signal(b0, b0 + hop, ok)
        if st.technical is None:
            return []
        # on the preferred lead, whichever lead is analysed
        return list(st.technical.blocks(starts, pref_usable, rows.flags[:, p.lead].tolist()))

    def _rhythm(self, labelled: list[Labelled], alarm_events: list[AlarmEvent]
                ) -> tuple[list[Labelled], list[Labelled], list[str | None]]:
        """The released beats through the AF monitor: ``(labelled, good, labels)`` - the beats (those found
        on another lead than the preferred one unlabelled: the classifier reads the preferred lead), the
        usable ones and their labels (an S beat inside AF is an AF beat: N); AF events to ``alarm_events``."""
        lf = self._lf
        pref = self.params.lead  # type: ignore[attr-defined]
        if lf.sw_at and labelled and (lf.active != pref or labelled[0][0] < lf.sw_at[-1]):
            labelled = [b if lf.lead_at(b[0]) == pref else (*b[:4], None, None) for b in labelled]
        good = [b for b in labelled if b[3]]
        labels = [b[4] for b in good]
        if good:
            labels, rhythm_events = self.state.rhythm.beats([b[0] for b in good], labels)
            alarm_events += rhythm_events
        return labelled, good, labels

    def _beat_dicts(self, labelled: list[Labelled], good: list[Labelled], labels: list[str | None]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str | None]]:
        """The published beats (after the beat hooks), the unusable ones (the quality record's
        ``suppressed``) and the usable beats' labels as the hooks left them; counts them."""
        if not labelled:
            return [], [], labels
        st = self.state
        fs = self._fs
        it = iter(labels)
        all_labels = [next(it) if b[3] else b[4] for b in labelled]
        all_probs = [b[5] for b in labelled]
        if self.beat_hooks:
            batch = BeatBatch(np.fromiter((b[0] for b in labelled), np.int64, len(labelled)), all_labels,
                              all_probs, fs, self.spec.channels if self.spec else (), self._lf.active,
                              st.history, [b[3] for b in labelled])
            for hook in self.beat_hooks:
                hook(batch)
            all_labels, all_probs = batch.labels, batch.probs
            labels = [lab for lab, b in zip(all_labels, labelled, strict=True) if b[3]]
        stamp, source = self._stamp, self._source
        beat_dicts: list[dict[str, Any]] = []
        unusable: list[dict[str, Any]] = []
        for (s, c, r, u, _, _), lab, pr in zip(labelled, all_labels, all_probs, strict=True):
            src, t = stamp(s)
            c_src, r_src = source(c), source(r)
            beat_dicts.append({
                "sample": src, "t_ns": t, "confirm_sample": c_src, "release_sample": r_src,
                "confirm_delay_s": (c - s) / fs, "delay_s": (r - s) / fs,
                "label": lab, "probs": pr, "usable": u,
            })
            if not u:
                unusable.append({"sample": src, "t_ns": t, "confirm_sample": c_src, "release_sample": r_src})
        st.n_beats += len(good)
        st.n_unusable += len(unusable)
        return beat_dicts, unusable, labels

    def _rate_and_alarms(self, hr_beats: list[Decided], good: list[Labelled], labels: list[str | None], end: int,
                         late: bool, alarm_events: list[AlarmEvent]
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Feed the beats to the rate meters and the alarms, interleaved with the periodic HR / HRV ticks
        in sample order (a beat released at a tick's sample is fed before the tick): ``hr_beats`` (usable,
        as the gate released them) to HR, ``good`` (usable, labelled) to HRV and the label alarms; asystole
        and pause never wait for labels. Returns the HR readings and HRV ticks; alarms to ``alarm_events``."""
        st = self.state
        rate, alarms = st.rate, st.alarms
        hr_readings: list[dict[str, Any]] = []
        hrv_ticks: list[dict[str, Any]] = []
        h = i = 0  # hr_beats[:h] and good[:i] fed

        def feed(upto: int) -> None:
            nonlocal h, i
            k = h
            while k < len(hr_beats) and hr_beats[k][2] <= upto:
                k += 1
            if k > h:
                hr_samples = [b[0] for b in hr_beats[h:k]]
                hr_readings.extend(rate.beats_hr(hr_samples))
                if late and alarms is not None:  # asystole and pause never wait for labels
                    alarm_events.extend(alarms.beats(hr_samples, label_alarms=False))
                h = k
            j = i
            while j < len(good) and good[j][2] <= upto:
                j += 1
            if j > i:
                samples = [b[0] for b in good[i:j]]
                if alarms is not None:
                    alarm_events.extend(alarms.beats(samples, labels[i:j], timing=not late))
                rate.beats_hrv(samples, labels[i:j])
                i = j

        while rate.next_tick <= end - 1:
            tick = rate.next_tick
            feed(tick)
            if rate.next_hr_tick == tick:
                reading = rate.hr_reading(tick, st.gate.signal_ok(tick))
                hr_readings.append(reading)
                if alarms is not None:
                    ok = bool(reading["signal_ok"])
                    alarm_events += alarms.tick(tick, reading["hr_bpm"], ok, asystole_ok=ok or self._asy.iso)
            if rate.next_hrv_tick == tick:
                hrv_ticks.append(rate.hrv_reading(tick))
        feed(1 << 62)  # releases after the last tick of this chunk
        return hr_readings, hrv_ticks

    def _beat_records(self, out: Outputs, labelled: list[Labelled], beat_dicts: list[dict[str, Any]],
                      counters: dict[str, int]) -> None:
        """One ``beats`` record per run of beats found on the same lead."""
        p = self.params
        assert isinstance(p, EcgAnalysisParams)
        lf = self._lf
        if not lf.sw_at:
            groups = [(p.lead, beat_dicts)]
        else:
            groups = []
            for (s, *_), bd in zip(labelled, beat_dicts, strict=True):
                k = lf.lead_at(s)
                if groups and groups[-1][0] == k:
                    groups[-1][1].append(bd)
                else:
                    groups.append((k, [bd]))
        for k, bds in groups:
            out.records.append(Chunk.record("beats", self._stream, 0, bds[0]["t_ns"], {
                "beats": bds, "lead": self._names[k], "channel": k, "fs": self._fs,
                "quality_hold": p.quality_hold, "counters": counters,
            }))

    def _rate_records(self, out: Outputs, hr_readings: list[dict[str, Any]], hrv_ticks: list[dict[str, Any]]
                      ) -> None:
        """The ``hr`` record (this chunk's readings) and one ``hrv`` record per tick."""
        if hr_readings:
            p = self.params
            assert isinstance(p, EcgAnalysisParams)
            out.records.append(Chunk.record("hr", self._stream, 0, hr_readings[0]["t_ns"], {
                "readings": hr_readings, "rule": p.hr_rule, "n_intervals": p.hr_intervals,
                "min_rr_s": p.hr_min_rr_s, "asystole_s": p.hr_asystole_s, "every_s": p.hr_every_s,
            }))
        for tick_body in hrv_ticks:
            out.records.append(Chunk.record("hrv", self._stream, 0, tick_body["t_ns"], tick_body))

    def _quality_record(self, out: Outputs, rows: SQIUpdate, ev_bodies: list[dict[str, Any]],
                        unusable: list[dict[str, Any]], counters: dict[str, int], end: int, final: bool) -> None:
        """The ``quality`` record: this chunk's blocks (all leads), quality events, suppressed beats."""
        stamp = self._stamp
        blocks = []
        if rows.block_start.size:
            sqi_l, usable_l, flags_l = rows.sqi.tolist(), rows.usable.tolist(), rows.flags.tolist()
            feat_l = rows.features.transpose(0, 2, 1).tolist()  # [block][feature][channel]
        for k, b0 in enumerate(rows.block_start.tolist()):
            src, t = stamp(b0)
            blocks.append({
                "sample": src, "t_ns": t,
                # num() inline (Python floats from tolist(): v - v is 0.0 exactly when v is finite)
                "sqi": [v if v - v == 0.0 else None for v in sqi_l[k]],
                "usable": usable_l[k],
                "flags": flags_l[k],
                "features": {name: [v if v - v == 0.0 else None for v in vals]
                             for name, vals in zip(FEATURE_NAMES, feat_l[k], strict=True)},
            })
        body = {
            "hop_s": self.state.gate.hop / self._fs,
            "channels": list(self.spec.channels) if self.spec else [],
            "blocks": blocks,
            "events": ev_bodies,
            "suppressed": unusable,
            "counters": counters,
            "final": final,
        }
        t0 = blocks[0]["t_ns"] if blocks else stamp(max(end - 1, 0))[1]
        out.records.append(Chunk.record("quality", self._stream, 0, t0, body))

    def _event_body(self, ev: QualityEvent) -> dict[str, Any]:
        stamp = self._stamp
        ch = self.spec.channels if self.spec else ()
        on_src, on_t = stamp(ev.onset)
        return {
            "type": "quality", "event": ev.kind, "state": "start" if ev.end is None else "end",
            "stream": self._stream, "lead": ch[ev.channel] if ev.channel < len(ch) else str(ev.channel),
            "channel": ev.channel, "onset_sample": on_src, "onset_ns": on_t,
            "end_sample": None if ev.end is None else stamp(ev.end)[0],
            "end_ns": None if ev.end is None else stamp(ev.end)[1],
        }


assert set(EVENT_KINDS) == {"leads_off", "flat_line", "saturation", "heavy_noise"}
