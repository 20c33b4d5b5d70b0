"""Beat inputs of the ECG beat classifier, shared by training and inference (no torch here).

Each beat found by :func:`telediag.dsp.qrs.detect` becomes two arrays:

``rr`` (float32, :data:`N_RR` values)
    RR-interval context, normalised per patient (the ratio features of de Chazal et al. 2004
    and Llamedo & Martinez 2011 made patient-relative, as in Mondejar-Guerra et al. 2019):

    ===============  ===================================================================
    ``pre_rel``      previous RR / patient RR
    ``post_rel``     next RR / patient RR
    ``local_rel``    mean of the last :data:`LOCAL_BEATS` RRs / patient RR
    ``pre_local``    previous RR / local mean RR (prematurity against the local rhythm)
    ``post_pre``     next RR / previous RR (compensatory pause)
    ``post_local``   next RR / local mean RR
    ``local_cv``     coefficient of variation of the last :data:`LOCAL_BEATS` RRs (rhythm
                     irregularity: in atrial fibrillation a short RR is not a premature beat)
    ``patient_s``    patient RR in seconds (absolute rate)
    ``pre_s``        previous RR in seconds
    ``pre_med``      previous RR / median of the last :data:`MEDIAN_BEATS` RRs (robust to
                     ectopic beats, unlike the local mean)
    ``post_med``     next RR / that median
    ``med_rel``      that median / patient RR
    ``irr_rmssd``    RMSSD of the last :data:`IRREG_BEATS` RRs / their mean
    ``irr_pnn50``    fraction of their successive differences above 50 ms
    ``irr_sd1sd2``   Poincare SD1/SD2 of those RRs (round cloud in atrial fibrillation,
                     elongated in sinus rhythm; Brennan et al. 2001)
    ``irr_mad``      median absolute successive difference of those RRs / the median RR
                     (robust: isolated ectopic beats move few differences, AF most)
    ===============  ===================================================================

    The last four are atrial-fibrillation indices (Tateno & Glass 2001; Sarkar et al.
    2008): in AF or flutter with variable conduction a premature RR is not an SVEB, and the
    model needs to know the rhythm is irregular over a longer window than the local mean.

    The *patient RR* is the running mean of the RR intervals of the last
    :data:`PATIENT_WINDOW_S` seconds (causal: only past beats and the current one), so a
    streaming engine computes exactly what training saw.

    Since version 2 ``rr`` continues with :data:`CONTEXT_FEATURES` (19: the beat's RR and
    the next one against the median of the 8 RRs before and the one after them, i.e. the
    *surrounding* rhythm on both sides; compensatory pause; neighbours; local irregularity;
    32-RR baseline; see :func:`._feature_kernels.context_rows`) and
    :data:`TEMPLATE_FEATURES` (18: beat against the running template over the window, QRS,
    P-wave and ST-T regions; widths, slopes, amplitudes; see
    :func:`._feature_kernels.template_rows`): the 53 :data:`RAW_FEATURES`.  Since version
    2.1 it ends with :data:`NORM_FEATURES` (49, :class:`PatientNorm`): every raw column but
    the four absolute-rate ones minus its running median over the patient's last
    :data:`NORM_BEATS` beats (per-patient normalisation: Llamedo & Martinez 2011,
    Mondejar-Guerra et al. 2019), so :data:`N_RR` = 102 and :data:`RR_FEATURES` lists them
    all (the first 16 are :data:`BASE_RR_FEATURES`).

``morph`` (float32, shape ``(2 * n_leads, N_MORPH)``)
    :data:`MORPH_CHANNELS` = 2 channels per lead: channels 0-1 come from the detection lead;
    fed two leads, the builder adds channels 2-3 from the second lead (V1 in most MIT-BIH
    records), built the same way and independently (own amplitude scale and template), at
    the detection lead's beats.  Two-lead morphology is what the inter-patient classifiers of
    de Chazal et al. (2004), Llamedo & Martinez (2011) and Mar et al. (2011) use; in our record
    cross-validation it did not help (see the model card), so the shipped model reads
    channels 0-1 only and :class:`~telediag.models.ecg_beats.BeatClassifier` ignores 2-3.
    Each lead is band-passed 0.5-40 Hz with the *causal*
    Butterworth of :func:`telediag.dsp.design.ecg_bandpass` (started at steady state), sampled
    by linear interpolation at :data:`N_MORPH` instants from :data:`PRE_S` before to
    :data:`POST_S` after the R peak, so every sample rate gives the same array.  Channel 0 (2) is
    that window divided by the patient amplitude (running median of the beats' peak-to-peak
    amplitude over the last :data:`SCALE_BEATS` beats); channel 1 is channel 0 minus the
    patient template (element-wise median of the previous :data:`TEMPLATE_BEATS` channel-0
    windows; zero for the first beat); channel 1 (3).  Both normalisations remove most of the
    between-patient variation of gain and QRS shape.

Delay
-----
A beat needs the RRs after it (its next RR and :data:`._feature_kernels.CTX_FUTURE` more),
so it becomes classifiable when the :data:`LOOKAHEAD_BEATS` (2) following beats are detected
(and :data:`POST_S` of signal after it has arrived, always earlier in practice): the extra
latency is about two RR intervals plus the detector's confirmation delay (about 2.3 s at
75 bpm).  At the end of a stream :meth:`BeatFeatureStream.finish` emits the pending beats;
RRs that do not exist (after the last beat, before the first) repeat the nearest existing
one (``next RR := previous RR`` for the last beat, ``previous RR := next RR`` for the first).

Both paths are one code path: :func:`beat_features` is a :class:`BeatFeatureStream` fed the
whole record and finished, so chunked processing gives exactly the one-pass result.

Cost
----
The per-beat work (RR statistics, window interpolation, running amplitude median, running
template median) is one Numba kernel over all beats that became ready
(:func:`telediag.models.ecg_beats._feature_kernels.beat_rows`) with the state in ring
buffers (:class:`FeatureState`); the medians are kept as sorted arrays updated by one
deletion and one insertion per beat.  About 8 us per beat plus about 8 us per pushed 1 s
chunk at 360 Hz (mostly the band-pass filter) on one core, against about 160 us per beat for
the earlier pure-Python builder, whose outputs it reproduces bit for bit (the test suite
keeps that implementation as its oracle).

References
----------
de Chazal P, O'Dwyer M, Reilly RB. Automatic classification of heartbeats using ECG
morphology and heartbeat interval features. IEEE Trans Biomed Eng 51(7):1196-1206, 2004.
Llamedo M, Martinez JP. Heartbeat classification using feature selection driven by
database generalization criteria. IEEE Trans Biomed Eng 58(3):616-625, 2011.
Mar T et al. Optimization of ECG classification by means of feature selection. IEEE Trans
Biomed Eng 58(8):2168-2177, 2011.
Mondejar-Guerra V et al. Heartbeat classification fusing temporal and morphological
information of ECGs via ensemble of classifiers. Biomed Signal Process Control 47:41-48, 2019.
Tateno K, Glass L. Automatic detection of atrial fibrillation using the coefficient of
variation and density histograms of RR and deltaRR intervals. Med Biol Eng Comput
39(6):664-671, 2001.
Brennan M, Palaniswami M, Kamen P. Do existing measures of Poincare plot geometry reflect
nonlinear features of heart rate variability? IEEE Trans Biomed Eng 48(11):1342-1347, 2001.
Sarkar S, Ritscher D, Mehra R. A detector for a chronic implantable atrial tachyarrhythmia
monitor. IEEE Trans Biomed Eng 55(3):1219-1224, 2008.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from telediag.dsp.design import ecg_bandpass
from telediag.dsp.sosfilt import SosFilter
from telediag.errors import ModelError
from telediag.models.ecg_beats import _feature_kernels as _fk

__all__ = [
    "AAMI_CLASSES",
    "AAMI_MAP",
    "ABSOLUTE_RATE",
    "BAND_HZ",
    "BASE_RR_FEATURES",
    "CONTEXT_FEATURES",
    "IRREG_BEATS",
    "LOOKAHEAD_BEATS",
    "LOCAL_BEATS",
    "MEDIAN_BEATS",
    "N_MORPH",
    "MORPH_CHANNELS",
    "N_BASE_RR",
    "N_RAW",
    "N_RR",
    "NORM_BEATS",
    "NORM_FEATURES",
    "NORM_SOURCE",
    "PATIENT_WINDOW_S",
    "PatientNorm",
    "POST_S",
    "PRE_S",
    "RAW_FEATURES",
    "RR_FEATURES",
    "SCALE_BEATS",
    "TEMPLATE_BEATS",
    "TEMPLATE_FEATURES",
    "BeatFeatureStream",
    "BeatFeatures",
    "FeatureState",
    "aami_label",
    "beat_features",
]

#: AAMI EC57 beat classes, in the order of the model's output.
AAMI_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
#: MIT-BIH annotation symbol -> AAMI class index (ANSI/AAMI EC57; de Chazal et al. 2004).
AAMI_MAP: dict[str, int] = {
    **dict.fromkeys("NLRej", 0),
    **dict.fromkeys("AaJS", 1),
    **dict.fromkeys("VE", 2),
    "F": 3,
    **dict.fromkeys("/fQ", 4),
}

PRE_S = 0.25  #: window start before the R peak (s)
POST_S = 0.45  #: window end after the R peak (s)
N_MORPH = 96  #: samples per morphology window (about 137 samples/s)
MORPH_CHANNELS = 2  #: morphology channels per lead: beat and beat-minus-template
BAND_HZ = (0.5, 40.0)  #: band-pass edges (Hz)
PATIENT_WINDOW_S = 300.0  #: span of the running patient-mean RR (s)
LOCAL_BEATS = 10  #: RRs in the local mean
MEDIAN_BEATS = 20  #: RRs in the running median RR (robust local rhythm)
IRREG_BEATS = 32  #: RRs in the rhythm-irregularity indices (about 20-40 s)
SCALE_BEATS = 64  #: beats in the running amplitude median
TEMPLATE_BEATS = 32  #: beats in the running template median
AMP_HALF_S = 0.1  #: half-width around R of the peak-to-peak amplitude (s)
BASE_RR_FEATURES: tuple[str, ...] = (
    "pre_rel",
    "post_rel",
    "local_rel",
    "pre_local",
    "post_pre",
    "post_local",
    "local_cv",
    "patient_s",
    "pre_s",
    "pre_med",
    "post_med",
    "med_rel",
    "irr_rmssd",
    "irr_pnn50",
    "irr_sd1sd2",
    "irr_mad",
)
#: RR context on both sides of the beat (:func:`._feature_kernels.context_rows`)
CONTEXT_FEATURES: tuple[str, ...] = (
    "c_pre",
    "c_post",
    "c_pair",
    "c_prev",
    "c_next2",
    "c_pre_prev",
    "c_pre_nb",
    "c_short_s",
    "c_med_s",
    "c_mad",
    "c_rank",
    "c_pre_min",
    "c_pre32",
    "c_post_pre",
    "c_pair_nb",
    "c_pre_minnb",
    "c_pre_maxnb",
    "c_pre_q75",
    "c_rate_jump",
)
#: beat against the patient's running template (:func:`._feature_kernels.template_rows`)
TEMPLATE_FEATURES: tuple[str, ...] = (
    "t_corr",
    "t_corr_qrs",
    "t_corr_p",
    "t_corr_t",
    "t_log_rms_qrs",
    "t_res_qrs",
    "t_res_p",
    "t_res_t",
    "t_width",
    "t_width_ratio",
    "t_log_slope",
    "t_qrs_max",
    "t_qrs_min",
    "t_dmax",
    "t_dmin",
    "t_p_ptp",
    "t_p_ratio",
    "t_st_diff",
)
#: the RR features, the RR context and the template features (the columns before version 2.1)
RAW_FEATURES: tuple[str, ...] = BASE_RR_FEATURES + CONTEXT_FEATURES + TEMPLATE_FEATURES
#: absolute-rate columns (seconds, not ratios): built, but no model reads them (a fast regular
#: rhythm is a sinus tachycardia in one patient and an SVT run in another)
ABSOLUTE_RATE: tuple[str, ...] = ("patient_s", "pre_s", "c_short_s", "c_med_s")
#: beats of the running per-patient median that :data:`NORM_FEATURES` subtract (~3-4 min)
NORM_BEATS = 256
#: the columns of :data:`RAW_FEATURES` that get a per-patient normalised copy (all but the
#: absolute-rate ones)
NORM_SOURCE: tuple[str, ...] = tuple(n for n in RAW_FEATURES if n not in ABSOLUTE_RATE)
#: ``d_<name>`` = ``<name>`` minus its median over this beat and the patient's previous
#: :data:`NORM_BEATS` - 1 beats (:func:`._feature_kernels.norm_rows`)
NORM_FEATURES: tuple[str, ...] = tuple("d_" + n for n in NORM_SOURCE)
#: every column of ``rr``: :data:`RAW_FEATURES` then :data:`NORM_FEATURES`
RR_FEATURES: tuple[str, ...] = RAW_FEATURES + NORM_FEATURES
N_BASE_RR = len(BASE_RR_FEATURES)
N_RAW = len(RAW_FEATURES)
N_RR = len(RR_FEATURES)
_NORM_COLS = np.array([RAW_FEATURES.index(n) for n in NORM_SOURCE], np.int64)
#: beats after a beat that must be detected before it is emitted (its next RR and the
#: :data:`._feature_kernels.CTX_FUTURE` RRs after that)
LOOKAHEAD_BEATS = _fk.CTX_FUTURE + 1
_HIST = _fk.CTX_LONG + 1  # emitted beats kept for the context of the next ones
_TEMPLATE_MAX = 20.0  # template features are clipped to +-_TEMPLATE_MAX
_RATIO_MAX = 5.0  # ratios are clipped to [0, _RATIO_MAX] (missed beats, pauses)
_RR_MAX_S = 5.0
_N_CTX_END = N_BASE_RR + len(CONTEXT_FEATURES)

IntArray = NDArray[np.int64]
F32Array = NDArray[np.float32]
_OFFSETS = np.linspace(-PRE_S, POST_S, N_MORPH)


def aami_label(symbol: str) -> int:
    """AAMI class index of a MIT-BIH beat symbol, or -1 for non-beat / unmapped symbols.

    Examples
    --------
    >>> aami_label("L"), aami_label("A"), aami_label("E"), aami_label("+")
    (0, 1, 2, -1)
    """
    return AAMI_MAP.get(symbol, -1)


@dataclass(slots=True)
class BeatFeatures:
    """Model inputs for a run of beats.

    Attributes
    ----------
    beats : numpy.ndarray of int64, shape (n,)
        R-peak sample indices (absolute, in the stream's samples).
    rr : numpy.ndarray of float32, shape (n, N_RR)
        RR context (see :data:`RR_FEATURES`).
    morph : numpy.ndarray of float32, shape (n, 2 * n_leads, N_MORPH)
        Normalised morphology windows (channels 2-3: the second lead, when given).
    """

    beats: IntArray
    rr: F32Array
    morph: F32Array

    def __len__(self) -> int:
        return int(self.beats.shape[0])

    def inputs(self) -> dict[str, F32Array]:
        """The ONNX model's input dict ``{"morph": ..., "rr": ...}``."""
        return {"morph": self.morph, "rr": self.rr}

    @staticmethod
    def empty(n_leads: int = 1) -> BeatFeatures:
        """No beats (``n_leads`` sets the morphology channels)."""
        return BeatFeatures(
            np.empty(0, np.int64),
            np.empty((0, N_RR), np.float32),
            np.empty((0, MORPH_CHANNELS * n_leads, N_MORPH), np.float32),
        )

    @staticmethod
    def concat(parts: list[BeatFeatures]) -> BeatFeatures:
        """Concatenate runs of beats in order.

        Examples
        --------
        >>> len(BeatFeatures.concat([BeatFeatures.empty(), BeatFeatures.empty()]))
        0
        """
        if not parts:
            return BeatFeatures.empty()
        return BeatFeatures(
            np.concatenate([p.beats for p in parts]),
            np.concatenate([p.rr for p in parts]),
            np.concatenate([p.morph for p in parts]),
        )


@dataclass(slots=True)
class FeatureState:
    """Running RR / amplitude / template state of one patient (small, explicit, bounded).

    Ring buffers, mutated in place by the Numba kernel
    :func:`telediag.models.ecg_beats._feature_kernels.beat_rows`.

    Attributes
    ----------
    ctr : int64 (7,)
        Last emitted beat (-1 before the first), then head and count of the RR ring, of the
        amplitude ring and of the template ring.
    rr_t, rr_v : int64 (cap,), float64 (cap,)
        Beat sample and RR (s) of each RR of the last :data:`PATIENT_WINDOW_S` seconds
        (grown on demand: the count is bounded by the beats in that window).
    amp_ring, amp_sorted : float64 (SCALE_BEATS,)
        Peak-to-peak amplitudes of the last :data:`SCALE_BEATS` beats, in arrival order and
        sorted (the running median).
    tpl_ring : float64 (TEMPLATE_BEATS, N_MORPH)
        The last :data:`TEMPLATE_BEATS` channel-0 windows.
    tpl_sorted : float64 (TEMPLATE_BEATS, N_MORPH)
        The same values sorted per window sample, rank-major (row r holds the r-th smallest
        value of every window sample): the running element-wise median.
    """

    ctr: NDArray[np.int64] = field(
        default_factory=lambda: np.array([-1] + [0] * (_fk.N_COUNTERS - 1), np.int64)
    )
    rr_t: NDArray[np.int64] = field(default_factory=lambda: np.zeros(512, np.int64))
    rr_v: NDArray[np.float64] = field(default_factory=lambda: np.zeros(512))
    amp_ring: NDArray[np.float64] = field(default_factory=lambda: np.zeros(SCALE_BEATS))
    amp_sorted: NDArray[np.float64] = field(default_factory=lambda: np.zeros(SCALE_BEATS))
    tpl_ring: NDArray[np.float64] = field(
        default_factory=lambda: np.zeros((TEMPLATE_BEATS, N_MORPH))
    )
    tpl_sorted: NDArray[np.float64] = field(
        default_factory=lambda: np.zeros((TEMPLATE_BEATS, N_MORPH))
    )

    @property
    def prev_beat(self) -> int:
        """The last emitted beat (absolute sample), -1 before the first."""
        return int(self.ctr[_fk.C_PREV])

    def reserve_rr(self, n_new: int) -> None:
        """Make room in the RR ring for ``n_new`` more RRs (kept in order)."""
        count = int(self.ctr[_fk.C_RR_COUNT])
        cap = self.rr_t.size
        if count + n_new <= cap:
            return
        head = int(self.ctr[_fk.C_RR_HEAD])
        order = (head + np.arange(count)) % cap
        new_cap = max(2 * cap, count + n_new)
        rr_t = np.zeros(new_cap, np.int64)
        rr_v = np.zeros(new_cap)
        rr_t[:count] = self.rr_t[order]
        rr_v[:count] = self.rr_v[order]
        self.rr_t, self.rr_v = rr_t, rr_v
        self.ctr[_fk.C_RR_HEAD] = 0


class PatientNorm:
    """Running per-patient normalisation of the ``rr`` rows of one stream (state + kernel).

    Fills the :data:`NORM_FEATURES` columns of each row from its :data:`NORM_SOURCE` columns:
    the value minus its median over this beat and the previous :data:`NORM_BEATS` - 1 beats of
    the same stream (causal, so streaming equals one pass). Per-patient normalisation is the
    lever of the inter-patient classifiers of Llamedo & Martinez (2011) and Mondejar-Guerra et
    al. (2019): what is premature, wide or different *for this patient*.

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.zeros((3, N_RR), np.float32)
    >>> rows[:, RR_FEATURES.index("c_pre")] = [1.0, 1.0, 0.5]
    >>> PatientNorm().fill(rows)
    >>> rows[:, RR_FEATURES.index("d_c_pre")].tolist()
    [0.0, 0.0, -0.5]
    """

    __slots__ = ("ring", "srt", "ctr")

    def __init__(self) -> None:
        m = _NORM_COLS.size
        self.ring = np.zeros((NORM_BEATS, m))  # the last NORM_BEATS rows, arrival order
        self.srt = np.zeros((m, NORM_BEATS))  # the same, sorted per column
        self.ctr = np.zeros(2, np.int64)  # ring head, rows kept

    def fill(self, rr: F32Array) -> None:
        """Fill the normalised columns of ``rr`` (n, :data:`N_RR`) in place, rows in order."""
        if rr.shape[0]:
            _fk.norm_rows(rr, _NORM_COLS, N_RAW, self.ring, self.srt, self.ctr)


class BeatFeatureStream:
    """Streaming feature builder for one ECG stream: feed samples and detected beats in chunks.

    Parameters
    ----------
    fs : float
        Sample rate in Hz (> 2 x 40 Hz).
    n_leads : {1, 2} or None
        Leads per pushed sample: 1 (``push`` takes shape ``(n,)``; 2 morphology channels) or 2
        (shape ``(n, 2)``: the detection lead first, then the second lead; 4 channels).
        ``None``: fixed by the first push that carries samples.
    keep_s : float
        Seconds of filtered signal kept behind the newest sample; a beat reported later than
        ``keep_s - PRE_S`` seconds after its R peak cannot be windowed (the QRS detector's
        bound is 0.53 s).

    Notes
    -----
    State: the band-pass state, the filtered-signal tail, the pending beats (detected but
    waiting for the next one) and a :class:`FeatureState` (the RR history of the last
    :data:`PATIENT_WINDOW_S` seconds, the last :data:`SCALE_BEATS` amplitudes and
    :data:`TEMPLATE_BEATS` windows); all bounded.

    Examples
    --------
    >>> import numpy as np
    >>> fs = 360.0
    >>> t = np.arange(int(10 * fs)) / fs
    >>> ecg = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01 ** 2))
    >>> beats = np.round((np.arange(12) * 0.8 + 0.4) * fs).astype(np.int64)
    >>> s = BeatFeatureStream(fs)
    >>> a = s.push(ecg[:1800], beats[beats < 1700])
    >>> b = s.push(ecg[1800:], beats[beats >= 1700])
    >>> c = s.finish()
    >>> len(a) + len(b) + len(c)
    12
    """

    def __init__(self, fs: float, *, keep_s: float = 3.0, n_leads: int | None = None) -> None:
        if not isinstance(fs, int | float | np.integer | np.floating) or not np.isfinite(fs):
            raise ModelError(f"fs must be a finite number, got {fs!r}")
        if fs <= 2 * BAND_HZ[1]:
            raise ModelError(f"fs must be above {2 * BAND_HZ[1]:g} Hz, got {fs!r}")
        if not keep_s > PRE_S + POST_S:
            raise ModelError(f"keep_s must exceed {PRE_S + POST_S:g} s, got {keep_s!r}")
        if n_leads not in (None, 1, 2):
            raise ModelError(f"n_leads must be 1, 2 or None, got {n_leads!r}")
        self.fs = float(fs)
        self._n_leads = n_leads
        sos = ecg_bandpass(self.fs, *BAND_HZ)
        self._filter = SosFilter(sos, 1, zi="steady")
        # the second lead: its own filter, kept signal and amplitude/template state (its RR
        # part is recomputed and discarded: the same beats give the same RR features)
        self._filter2 = SosFilter(sos, 1, zi="steady")
        self._keep = int(np.ceil(keep_s * self.fs))
        self._pre = int(np.ceil(PRE_S * self.fs)) + 2
        self._post = int(np.ceil(POST_S * self.fs)) + 2
        self._amp_half = max(1, int(round(AMP_HALF_S * self.fs)))
        self._buf = np.empty(4 * self._keep)  # kept signal is _buf[_off:_end]
        self._buf2 = np.empty(0)  # second lead, same layout (allocated with 2 leads)
        self._off = 0
        self._end = 0
        self._buf_start = 0  # absolute index of _buf[_off]
        self._n_seen = 0
        self._amp_offsets = np.linspace(-AMP_HALF_S, AMP_HALF_S, 2 * self._amp_half + 1)
        self._pending: list[int] = []
        self._hist = np.empty(0, np.int64)  # the last _HIST emitted beats (context)
        self._state = FeatureState()
        self._state2 = FeatureState()
        self._norm = PatientNorm()
        self._finished = False

    @property
    def samples_seen(self) -> int:
        """Samples consumed so far."""
        return self._n_seen

    @property
    def n_leads(self) -> int | None:
        """Leads per sample (1 or 2), ``None`` until the first push with samples."""
        return self._n_leads

    @property
    def pending(self) -> tuple[int, ...]:
        """Beats received but not yet emitted (waiting for the next beat or samples)."""
        return tuple(self._pending)

    def push(self, x: ArrayLike, beats: ArrayLike = ()) -> BeatFeatures:
        """Add the next samples and the beats detected so far; return the classifiable beats.

        Parameters
        ----------
        x : array_like, shape (n_samples,) or (n_samples, 2)
            Next samples (mV), in order: one lead (MLII or the closest limb lead), or two
            (that lead first, then the second lead, e.g. V1).
        beats : array_like of int
            New R-peak sample indices (absolute, increasing, after every beat given before,
            and below ``samples_seen`` after this call).

        Returns
        -------
        BeatFeatures
            Beats whose next beat is known and whose window is complete, in order.

        Raises
        ------
        telediag.errors.ModelError
            Samples of the wrong shape (or a lead count other than the stream's) or
            non-finite, beats out of order, in the future or too old.
        """
        if self._finished:
            raise ModelError("push after finish(): create a new BeatFeatureStream")
        xs = np.ascontiguousarray(x, dtype=np.float64)
        if xs.ndim == 2 and xs.shape[1] == 1:
            xs = xs[:, 0]
        if xs.ndim == 1:
            leads = 1
        elif xs.ndim == 2 and xs.shape[1] == 2:
            leads = 2
        else:
            raise ModelError(f"x must have shape (n,) or (n, 2) (one or two leads), got {xs.shape}")
        n = xs.shape[0]
        if n and self._n_leads is not None and leads != self._n_leads:
            raise ModelError(
                f"x must carry {self._n_leads} lead(s) like the earlier pushes, got shape {xs.shape}"
            )
        if n and not _fk.all_finite(xs.reshape(-1)):
            raise ModelError("x contains non-finite samples; gap-fill before feature extraction")
        end = self._n_seen + n
        if type(beats) is np.ndarray and beats.dtype == np.int64 and beats.ndim == 1:
            b = beats
        else:
            b = np.asarray(beats, dtype=np.int64).reshape(-1)
        if b.shape[0]:
            last = self._pending[-1] if self._pending else self._state.prev_beat
            if b[0] <= last or (b.shape[0] > 1 and np.any(b[1:] <= b[:-1])):
                raise ModelError("beats must be strictly increasing and after earlier beats")
            if b[-1] >= end:
                raise ModelError(f"beat {int(b[-1])} is beyond the samples seen ({end})")
            if b[0] - self._pre < self._buf_start and self._buf_start > 0:
                raise ModelError(
                    f"beat {int(b[0])} arrived too late: its window starts before the kept "
                    f"signal (sample {self._buf_start}); raise keep_s"
                )
            self._pending.extend(b.tolist())
        if n and self._n_leads is None:  # the first samples fix the lead count
            self._n_leads = leads
            if leads == 2:
                self._buf2 = np.empty(self._buf.size)
        if n:
            if leads == 2:
                self._append(
                    self._filter.process(xs[:, :1]), self._filter2.process(xs[:, 1:])
                )
            else:
                self._append(self._filter.process(xs.reshape(n, 1)), None)
            self._n_seen = end
        out = self._emit(final=False)
        self._trim()
        return out

    def finish(self) -> BeatFeatures:
        """End of stream: emit every pending beat (the last one with next RR := previous RR)."""
        if self._finished:
            return BeatFeatures.empty(self._n_leads or 1)
        self._finished = True
        return self._emit(final=True)

    # -- internals -------------------------------------------------------------------------
    def _append(self, y: NDArray[np.float64], y2: NDArray[np.float64] | None) -> None:
        """Append filtered samples (n, 1) of the lead(s) to the kept signal, compacting/growing
        as needed (both leads share the layout)."""
        n = y.shape[0]
        if self._end + n > self._buf.size:
            kept = self._end - self._off
            grow = kept + n > self._buf.size // 2  # grow: amortised O(1) per sample
            size = max(2 * self._buf.size, 2 * (kept + n)) if grow else self._buf.size
            new = np.empty(size) if grow else self._buf
            new[:kept] = self._buf[self._off : self._end]
            self._buf = new
            if y2 is not None:
                new2 = np.empty(size) if grow else self._buf2
                new2[:kept] = self._buf2[self._off : self._end]
                self._buf2 = new2
            self._off = 0
            self._end = kept
        self._buf[self._end : self._end + n] = y[:, 0]
        if y2 is not None:
            self._buf2[self._end : self._end + n] = y2[:, 0]
        self._end += n

    def _trim(self) -> None:
        lo = self._n_seen - self._keep
        if self._pending:
            lo = min(lo, self._pending[0] - self._pre)
        cut = lo - self._buf_start
        if cut > 0:
            self._off += cut
            self._buf_start += cut

    def _emit(self, final: bool) -> BeatFeatures:
        pend = self._pending
        n_pend = len(pend)
        if final:
            n_ok = n_pend
        else:
            n_ok = 0  # a beat needs LOOKAHEAD_BEATS later beats and POST_S of signal after it
            limit = self._n_seen - self._post
            while n_ok + LOOKAHEAD_BEATS < n_pend and pend[n_ok] <= limit:
                n_ok += 1
        if n_ok == 0:
            return _EMPTY2 if self._n_leads == 2 else _EMPTY
        ahead = np.array(pend[: n_ok + LOOKAHEAD_BEATS], dtype=np.int64)
        beats = ahead[:n_ok]
        nexts = np.empty(n_ok, np.int64)
        nexts[: ahead.size - 1] = ahead[1 : n_ok + 1]
        if ahead.size == n_ok:
            nexts[-1] = -1
        rr = np.empty((n_ok, N_RR), np.float32)
        base = np.empty((n_ok, N_BASE_RR), np.float32)
        morph = np.empty((n_ok, MORPH_CHANNELS, N_MORPH), np.float32)
        self._rows(self._buf, self._state, beats, nexts, base, morph)
        rr[:, :N_BASE_RR] = base
        pos = np.concatenate((self._hist, ahead))
        _fk.context_rows(pos, self._hist.size, self.fs, _RATIO_MAX, rr[:, N_BASE_RR:_N_CTX_END])
        _fk.template_rows(morph, _TEMPLATE_MAX, rr[:, _N_CTX_END:N_RAW])
        self._norm.fill(rr)
        self._hist = pos[: self._hist.size + n_ok][-_HIST:]
        if self._n_leads == 2:
            morph2 = np.empty_like(morph)
            self._rows(self._buf2, self._state2, beats, nexts, np.empty_like(base), morph2)
            morph = np.concatenate([morph, morph2], axis=1)
        del pend[:n_ok]
        return BeatFeatures(beats, rr, morph)

    def _rows(
        self, buf: NDArray[np.float64], st: FeatureState, beats: IntArray, nexts: IntArray,
        rr: F32Array, morph: F32Array,
    ) -> None:
        st.reserve_rr(beats.size)
        _fk.beat_rows(
            buf[self._off : self._end], self._buf_start, beats, nexts, self.fs, _OFFSETS, self._amp_offsets,
            PATIENT_WINDOW_S, LOCAL_BEATS, MEDIAN_BEATS, IRREG_BEATS, _RATIO_MAX, _RR_MAX_S, st.ctr, st.rr_t, st.rr_v,
            st.amp_ring, st.amp_sorted, st.tpl_ring, st.tpl_sorted, rr, morph,
        )


def _frozen_empty(n_leads: int) -> BeatFeatures:
    e = BeatFeatures.empty(n_leads)
    for a in (e.beats, e.rr, e.morph):
        a.flags.writeable = False
    return e


_EMPTY = _frozen_empty(1)  # shared result of pushes that emit nothing (read-only, no rows)
_EMPTY2 = _frozen_empty(2)


def beat_features(signal: ArrayLike, fs: float, beats: ArrayLike) -> BeatFeatures:
    """Features of every beat of a whole recording (one or two leads).

    Exactly what a :class:`BeatFeatureStream` gives when fed the same samples and beats in
    chunks of any size and then finished.

    Parameters
    ----------
    signal : array_like, shape (n_samples,) or (n_samples, 2)
        One ECG lead in mV (MLII or the closest limb lead), or two (that lead first, then a
        second lead such as V1), finite.
    fs : float
        Sample rate in Hz.
    beats : array_like of int
        R-peak sample indices, increasing (e.g. from :func:`telediag.dsp.qrs.detect`).

    Returns
    -------
    BeatFeatures
        One row per beat, in order.

    Examples
    --------
    >>> import numpy as np
    >>> fs = 250.0
    >>> t = np.arange(int(6 * fs)) / fs
    >>> ecg = np.exp(-(((t % 1.0) - 0.5) ** 2) / (2 * 0.01 ** 2))
    >>> f = beat_features(ecg, fs, (np.arange(6) + 0.5) * fs)
    >>> f.rr.shape, f.morph.shape
    ((6, 102), (6, 2, 96))
    """
    stream = BeatFeatureStream(fs, keep_s=max(3.0, PRE_S + POST_S + 1.0))
    sig = np.asarray(signal, dtype=np.float64)
    b = np.asarray(beats, dtype=np.float64).reshape(-1)
    if b.size and not np.all(np.isfinite(b)):
        raise ModelError("beats must be finite sample indices")
    first = stream.push(sig, np.round(b).astype(np.int64))
    return BeatFeatures.concat([first, stream.finish()])
