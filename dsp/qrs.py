"""Streaming QRS (R-peak) detector for one ECG lead, with an exactly equal offline path.

Algorithm
---------
A Pan-Tompkins-style detector (Pan J, Tompkins WJ. *A real-time QRS detection algorithm*.
IEEE Trans Biomed Eng 1985;32(3):230-236) re-designed for streaming with a bounded reporting
delay and for any sample rate (every filter and window is specified in seconds or Hz):

* Butterworth band-pass ``f_lo_hz``-``f_hi_hz`` (causal, started at the steady state of the
  first sample), first difference, squaring and moving-window integration over
  ``integration_s`` (Pan & Tompkins sections II-A to II-D);
* local maxima of the integrated signal are candidates; each is located in the band-passed
  signal and *refined* to the R peak as the largest deviation of the raw signal from its local
  mean within ``refine_s`` (so polarity does not matter and timing error is small);
* adaptive signal and noise peak levels with threshold ``NPK + threshold_frac (SPK - NPK)``,
  a refractory period (``refractory_s``), T-wave discrimination by maximal slope for
  candidates within ``twave_s`` of the previous beat (Pan & Tompkins II-E), and a search-back
  done *incrementally* (no decision waits for the next beat): a sub-threshold candidate above
  ``searchback_frac`` x threshold that comes at least ``searchback_min_rr`` mean RR after the
  last beat is accepted after ``searchback_hold_s`` unless a real beat follows, and after
  ``long_rr`` x mean RR without a beat the threshold itself is lowered by ``searchback_frac``
  (Pan & Tompkins use 1.66 x RR and half the threshold); a search-back beat below a fifth of the
  signal level shows the level is stale (the QRS amplitude fell 5-fold or more: after a saturated
  stretch, an electrode re-attached) and restarts it at 2.5 x that beat's level, instead of
  Pan & Tompkins' quarter step per beat, which missed every other beat for ~10 s after a
  20-fold stretch (a false bradycardia alarm); MIT-BIH + svdb: +1 TP, +2 FP of 304k beats.

Each beat stays *pending* for ``hold_s`` after its integrator maximum is final (longer while a
larger hump is still growing), during which a larger, steeper candidate less than
``replace_s`` later may replace it (a tall P wave followed by the QRS).  Premature candidates
need a proportionally higher threshold (noise rejection), except at a coupling interval where a
strong premature beat was found within the last few beats on a clean signal (bigeminy: the next
ectopic beat is expected there; see :class:`QRSParams`).  The delay between an R peak and the
sample at which it is reported is therefore bounded (about 0.30 s median, 0.36 s 99th
percentile on MIT-BIH at the defaults); :attr:`QRSDetector.detection_delay_s` gives the hard
design bound (0.53 s at the defaults) and
:meth:`QRSDetector.process_with_confirm` returns, for every beat, the sample at which it was
confirmed.

Input conventions
-----------------
Samples are in mV (any unit works: the detector is scale-free).  Non-finite samples (NaN,
inf) mark unusable signal: they are replaced by the last finite value (zero-order hold; 0
before the first finite sample), the band-pass restarts at the steady state of the first
finite sample after the run (no step transient), and no candidate whose integrator maximum
falls in the run or within ``gap_blank_s`` after it is accepted.  A constant signal yields no
beats.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal as sps

from telediag.errors import DSPError

from . import _qrs_kernels as K

__all__ = ["QRSDetector", "QRSParams", "QRSState", "detect", "detect_with_confirm"]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class QRSParams:
    """Parameters of :class:`QRSDetector` (seconds, Hz or dimensionless ratios).

    Attributes
    ----------
    f_lo_hz, f_hi_hz : float
        Band-pass edges (Butterworth, ``filter_order`` per edge).
    filter_order : int
        Butterworth order of the band-pass prototype (2 -> 2 biquads).
    integration_s : float
        Moving-window integration length (Pan & Tompkins: 150 ms).
    peak_wait_s : float
        An integrator maximum is final once this long has passed without a larger value.
    refractory_s : float
        No two beats closer than this (physiological refractory period, 200 ms).
    twave_s, twave_slope_ratio : float
        Candidates within ``twave_s`` of the last beat whose maximal slope is below
        ``twave_slope_ratio`` x that beat's are taken as T waves (360 ms, 0.5).
    threshold_frac : float
        Threshold ``NPK + threshold_frac (SPK - NPK)`` (Pan & Tompkins: 0.25).
    searchback_frac, searchback_min_rr, searchback_hold_s : float
        Incremental search-back: see the module docstring.
    long_rr : float
        After ``long_rr`` x mean RR without a beat the threshold is multiplied by
        ``searchback_frac`` (1.66).
    hold_s : float
        How long an accepted beat may still be replaced by a larger candidate.
    gap_blank_s : float
        Blanking after a run of non-finite samples.
    refine_s, baseline_s : float
        Half-widths of the R-refinement window and of the local-mean window.
    margin_s : float
        Extra band-passed history searched before the integration window.
    alpha_signal, alpha_noise : float
        Smoothing of the signal and noise peak levels (0.125).
    rr_init_s : float
        Mean RR assumed before two beats are known.
    rr_low, rr_high : float
        RR intervals outside ``[rr_low, rr_high]`` x mean RR do not update the mean.
    learn_s : float
        Learning period: candidates are buffered, SPK starts at the largest of them and NPK
        at ``npk_init`` x SPK, then they are decided in order (Pan & Tompkins' 2 s learning
        phase).  Beats of this period are reported at its end.
    settle_s : float
        Candidates in the first ``settle_s`` of the stream do not set the initial signal
        level when later ones exist (a recorder's start-up step, e.g. PhysioNet 2016
        a0001's ECG settling from 0 to 4.7 mV, would blind the detector for many seconds).
    npk_init : float
        Initial noise level as a fraction of the initial signal level.
    decay : float
        Past ``long_rr`` x mean RR without a beat the threshold is further divided by
        ``(gap / (long_rr x mean RR)) ** decay`` (recovers from a sudden amplitude drop).
    weak_hold_s, strong_ratio : float
        Hold of a beat whose level is below ``strong_ratio`` x SPK.
    twave_rr, twave_max_s : float
        The T-wave window is ``twave_rr`` x mean RR clipped to ``[twave_s, twave_max_s]``.
    replace_s, replace_rr, replace_ratio : float
        A pending beat is replaced by a candidate less than ``min(replace_s, replace_rr x
        mean RR)`` after it that is ``replace_ratio`` x larger and steeper (tall P wave or
        notch before the QRS).
    defer_frac : float
        Confirmation of a pending beat waits while a hump above ``defer_frac`` x its level
        is still growing within the replacement span.
    premature_rr, premature_gain : float
        A candidate ``dt`` after the last beat with ``dt < premature_rr`` x mean RR needs a
        threshold raised by the factor ``1 + premature_gain (1 - dt / (premature_rr x mean
        RR))``: noise falls between beats, and early ectopic beats are usually large.
    premature_memory, premature_tol, premature_snr : float
        ... unless a *strong* premature beat (level at least ``strong_ratio`` x SPK, early for
        the mean RR and for the interval before it) was confirmed within the last
        ``premature_memory`` beats at a coupling interval within ``premature_tol`` of ``dt``
        (one of the last two such couplings), ``dt`` is past the T-wave window and the signal
        is clean (SPK above ``premature_snr`` x NPK): the patient's bigeminal or ectopic rhythm
        puts the next ectopic beat there, so it needs only the ordinary threshold.  Without
        this, MIT-BIH 201's small aberrated APCs (0.4 x SPK, 0.5 s after each N) were missed,
        every miss lengthened the mean RR and made the next ones look more premature, the
        displayed rate halved and BRADY fired (1475 s, 1499 s).  ``premature_memory = 0``
        turns it off.

    Notes
    -----
    The defaults were chosen on the 26 MIT-BIH records of ``shared/data`` and the noise
    stress record ``118e12`` as general settings (one value per parameter for every record
    and sample rate; F1 is flat within 0.02 % over threshold_frac 0.30-0.40 and
    premature_gain 0-1, so the choice mainly trades Se against +P).
    """

    f_lo_hz: float = 5.0
    f_hi_hz: float = 20.0
    filter_order: int = 2
    integration_s: float = 0.12
    peak_wait_s: float = 0.08
    refractory_s: float = 0.2
    twave_s: float = 0.36
    twave_slope_ratio: float = 0.5
    threshold_frac: float = 0.33
    searchback_frac: float = 0.7
    searchback_min_rr: float = 0.7
    searchback_hold_s: float = 0.25
    long_rr: float = 1.66
    hold_s: float = 0.12
    gap_blank_s: float = 0.3
    refine_s: float = 0.05
    baseline_s: float = 0.1
    margin_s: float = 0.03
    alpha_signal: float = 0.125
    alpha_noise: float = 0.125
    rr_init_s: float = 0.8
    rr_low: float = 0.5
    rr_high: float = 1.66
    learn_s: float = 2.0
    settle_s: float = 0.3
    replace_s: float = 0.3
    replace_ratio: float = 1.0
    npk_init: float = 0.1
    decay: float = 1.0
    weak_hold_s: float = 0.12
    strong_ratio: float = 0.7
    twave_rr: float = 0.45
    twave_max_s: float = 0.45
    replace_rr: float = 0.35
    defer_frac: float = 1.0
    premature_rr: float = 0.9
    premature_gain: float = 0.8
    premature_memory: float = 8.0
    premature_tol: float = 0.15
    premature_snr: float = 12.0


@dataclass(slots=True)
class QRSState:
    """Complete streaming state of a :class:`QRSDetector` (all arrays preallocated).

    Attributes
    ----------
    istate, fstate : numpy.ndarray
        Integer and float scalars of the state machine (layout in ``_qrs_kernels``).
    zi : numpy.ndarray
        Band-pass delays, shape (n_sections, 2).
    rr : numpy.ndarray
        The last 8 regular RR intervals (samples).
    raw, bp, sq, integ : numpy.ndarray
        Ring buffers (power-of-two length) of the held raw signal, the band-passed signal,
        the squared difference and the integrator output.
    learn : numpy.ndarray
        Candidates (R, level, slope) buffered during the learning period.
    """

    istate: IntArray
    fstate: FloatArray
    zi: FloatArray
    rr: FloatArray
    raw: FloatArray
    bp: FloatArray
    sq: FloatArray
    integ: FloatArray
    learn: FloatArray

    def copy(self) -> QRSState:
        """Deep copy."""
        return QRSState(*(getattr(self, f.name).copy() for f in fields(self)))


def _check_fs(fs: float) -> float:
    if isinstance(fs, bool) or not isinstance(fs, int | float | np.integer | np.floating):
        raise DSPError(f"fs must be a real number in [125, 2000] Hz, got {fs!r}")
    fsf = float(fs)
    if not math.isfinite(fsf) or not 125.0 <= fsf <= 2000.0:
        raise DSPError(f"fs must be in [125, 2000] Hz, got {fs!r}")
    return fsf


def _params_from_kwargs(kwargs: dict[str, object]) -> QRSParams:
    names = {f.name for f in fields(QRSParams)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise DSPError(f"unknown QRS detector parameter(s) {unknown}; expected some of {sorted(names)}")
    try:
        p = QRSParams(**kwargs)  # type: ignore[arg-type]
    except TypeError as e:  # pragma: no cover - guarded above
        raise DSPError(str(e)) from e
    for f in fields(QRSParams):
        val = getattr(p, f.name)
        if f.name == "filter_order":
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or not 1 <= val <= 4:
                raise DSPError(f"filter_order must be an int in [1, 4], got {val!r}")
            continue
        if isinstance(val, bool) or not isinstance(val, int | float | np.integer | np.floating):
            raise DSPError(f"{f.name} must be a real number, got {val!r}")
        if not math.isfinite(float(val)) or float(val) < 0.0:
            raise DSPError(f"{f.name} must be finite and >= 0, got {val!r}")
    if not 0.0 < p.f_lo_hz < p.f_hi_hz:
        raise DSPError(f"need 0 < f_lo_hz < f_hi_hz, got f_lo_hz={p.f_lo_hz}, f_hi_hz={p.f_hi_hz}")
    for name in ("integration_s", "peak_wait_s", "refractory_s"):
        if getattr(p, name) <= 0.0:
            raise DSPError(f"{name} must be > 0, got {getattr(p, name)}")
    for name in ("threshold_frac", "alpha_signal", "alpha_noise"):
        if not 0.0 < getattr(p, name) <= 1.0:
            raise DSPError(f"{name} must be in (0, 1], got {getattr(p, name)}")
    return p


@dataclass(slots=True)
class _Design:
    fs: float
    params: QRSParams
    sos: FloatArray
    zi_unit: FloatArray
    kparams: FloatArray
    ring: int
    refr: int
    delay_bound: int = field(default=0)


@functools.lru_cache(maxsize=64)
def _design(fs: float, p: QRSParams) -> _Design:
    """Filter and kernel parameters for ``(fs, p)``; memoised (shared, never mutated)."""
    nyq = fs / 2.0
    hi = min(p.f_hi_hz, 0.45 * fs)
    if p.f_lo_hz >= hi:
        raise DSPError(f"f_lo_hz must be below min(f_hi_hz, 0.45 fs) = {hi}, got {p.f_lo_hz}")
    sos = np.ascontiguousarray(
        sps.butter(p.filter_order, [p.f_lo_hz / nyq, hi / nyq], btype="bandpass", output="sos"),
        dtype=np.float64,
    )
    zi_unit = np.ascontiguousarray(sps.sosfilt_zi(sos), dtype=np.float64)
    # Group delay of the band-pass near the centre of QRS energy (~ geometric band centre).
    fc = math.sqrt(p.f_lo_hz * hi)
    b, a = sps.sos2tf(sos)
    _, gd = sps.group_delay((b, a), w=[fc], fs=fs)
    df = round(float(gd[0]))

    def smp(sec: float) -> int:
        return max(1, round(sec * fs))

    w = smp(p.integration_s)
    wait = smp(p.peak_wait_s)
    refr = smp(p.refractory_s)
    kp = np.zeros(K.N_PARAMS)
    kp[K.P_W] = w
    kp[K.P_WAIT] = wait
    kp[K.P_REFR] = refr
    kp[K.P_TWAVE] = p.twave_s * fs
    kp[K.P_TSLOPE] = p.twave_slope_ratio
    kp[K.P_THRF] = p.threshold_frac
    kp[K.P_SBF] = p.searchback_frac
    kp[K.P_SBRR] = p.searchback_min_rr
    kp[K.P_HOLD] = round(p.hold_s * fs)
    kp[K.P_SBHOLD] = max(round(p.searchback_hold_s * fs), round(p.hold_s * fs))
    kp[K.P_BLANK] = round(p.gap_blank_s * fs)
    kp[K.P_DF] = df
    kp[K.P_REFINE] = round(p.refine_s * fs)
    kp[K.P_BASE] = round(p.baseline_s * fs)
    kp[K.P_ALPHA_S] = p.alpha_signal
    kp[K.P_ALPHA_N] = p.alpha_noise
    kp[K.P_RR0] = p.rr_init_s * fs
    kp[K.P_MARGIN] = round(p.margin_s * fs)
    kp[K.P_LONGRR] = p.long_rr
    kp[K.P_RRLOW] = p.rr_low
    kp[K.P_RRHIGH] = p.rr_high
    kp[K.P_LEARN] = round(p.learn_s * fs)
    kp[K.P_SETTLE] = round(p.settle_s * fs)
    kp[K.P_REPL] = round(p.replace_s * fs)
    kp[K.P_REPL_RATIO] = p.replace_ratio
    kp[K.P_NPK0] = p.npk_init
    kp[K.P_DECAY] = p.decay
    kp[K.P_WEAK_HOLD] = round(p.weak_hold_s * fs)
    kp[K.P_STRONG] = p.strong_ratio
    kp[K.P_TWAVE_RR] = p.twave_rr
    kp[K.P_TWAVE_MAX] = p.twave_max_s * fs
    kp[K.P_REPL_RR] = p.replace_rr
    kp[K.P_DEFER] = p.defer_frac
    kp[K.P_PREM_RR] = p.premature_rr
    kp[K.P_PREM_GAIN] = p.premature_gain
    kp[K.P_PREM_MEM] = p.premature_memory
    kp[K.P_PREM_TOL] = p.premature_tol
    kp[K.P_PREM_SNR] = p.premature_snr
    lookback = w + wait + kp[K.P_MARGIN] + df + kp[K.P_BASE] + kp[K.P_REFINE] + 8
    ring = 1 << int(math.ceil(math.log2(max(lookback, 16))))
    # Reporting-delay bound: R peak -> integrator maximum (at most the window plus the
    # filter delay and margin), + wait, + the longest hold.
    delay = int(w + kp[K.P_MARGIN] + df + wait + max(kp[K.P_HOLD], kp[K.P_SBHOLD], kp[K.P_WEAK_HOLD]))
    # A confirmation deferred by a growing hump ends when that hump is final.
    delay = max(delay, int(kp[K.P_REPL] + w + kp[K.P_MARGIN] + wait + 1))
    return _Design(fs, p, sos, zi_unit, kp, ring, refr, delay)


def _new_state(d: _Design) -> QRSState:
    ist = np.zeros(K.N_ISTATE, dtype=np.int64)
    ist[K.I_CONF_R] = -1
    ist[K.I_PEND_R] = -1
    ist[K.I_SB_R] = -1
    ist[K.I_BLANK_UNTIL] = -1
    ist[K.I_LEARNING] = 1
    ist[K.I_PREM_AGE] = 1000000
    return QRSState(
        istate=ist,
        fstate=np.zeros(K.N_FSTATE),
        zi=np.zeros((d.sos.shape[0], 2)),
        rr=np.zeros(K.RR_LEN),
        raw=np.zeros(d.ring),
        bp=np.zeros(d.ring),
        sq=np.zeros(d.ring),
        integ=np.zeros(d.ring),
        learn=np.zeros((K.LEARN_LEN, 3)),
    )


_F64 = np.dtype(np.float64)


def _as_samples(x: ArrayLike) -> FloatArray:
    if type(x) is np.ndarray and x.dtype == _F64 and x.ndim == 1 and x.flags.c_contiguous:
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise DSPError(f"x must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DSPError(f"x must be 1-D (n_samples,) (one lead), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


class QRSDetector:
    """Streaming R-peak detector for one ECG lead.

    Parameters
    ----------
    fs : float
        Sample rate in Hz, 125-2000.
    **params
        Any field of :class:`QRSParams` (seconds / Hz / ratios).

    Notes
    -----
    Feed consecutive chunks with :meth:`process` (any length, including 0 or 1 sample); at
    the end of the signal call :meth:`flush`.  The concatenated output equals
    :func:`detect` on the whole signal, for any chunking.  Every beat is reported at most
    :attr:`detection_delay_s` after its R peak, except that :meth:`flush` releases what is
    left at the end.

    Examples
    --------
    >>> import numpy as np
    >>> fs = 250.0
    >>> t = np.arange(int(10 * fs)) / fs
    >>> ecg = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01 ** 2))   # 75 bpm spikes
    >>> det = QRSDetector(fs)
    >>> beats = np.concatenate([det.process(ecg[:1000]), det.process(ecg[1000:]), det.flush()])
    >>> len(beats)
    12
    >>> int(beats[0])
    100
    """

    __slots__ = ("_d", "_finished", "_state")

    def __init__(self, fs: float, **params: object) -> None:
        fsf = _check_fs(fs)
        p = _params_from_kwargs(params)
        self._d = _design(fsf, p)
        self._state = _new_state(self._d)
        self._finished = False

    # -- properties ----------------------------------------------------------------------
    @property
    def fs(self) -> float:
        """Sample rate (Hz)."""
        return self._d.fs

    @property
    def params(self) -> QRSParams:
        """The parameters in force."""
        return self._d.params

    @property
    def detection_delay_s(self) -> float:
        """Design bound of the delay from an R peak to the sample that confirms it (s).

        Holds for every beat except those released by :meth:`flush` and the rare beat whose
        integrator maximum is later than the integration window after its R peak (very wide
        complexes); :meth:`process_with_confirm` reports the actual confirming samples.
        """
        return self._d.delay_bound / self._d.fs

    @property
    def samples_seen(self) -> int:
        """Number of samples fed so far."""
        return int(self._state.istate[K.I_N])

    @property
    def state(self) -> QRSState:
        """A copy of the streaming state."""
        return self._state.copy()

    @state.setter
    def state(self, value: QRSState) -> None:
        if not isinstance(value, QRSState):
            raise DSPError(f"state must be a QRSState, got {type(value).__name__}")
        ref = self._state
        for f in fields(QRSState):
            a = getattr(value, f.name)
            b = getattr(ref, f.name)
            if not isinstance(a, np.ndarray) or a.shape != b.shape or a.dtype != b.dtype:
                raise DSPError(
                    f"state.{f.name} must be an array of shape {b.shape} and dtype {b.dtype}"
                )
        self._state = value.copy()
        self._finished = False

    # -- processing ----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: the next sample is sample 0 again."""
        self._state = _new_state(self._d)
        self._finished = False

    def process_with_confirm(self, x: ArrayLike) -> tuple[IntArray, IntArray]:
        """Feed the next chunk; return beats confirmed in it and their confirming samples.

        Parameters
        ----------
        x : array_like, shape (n_samples,)
            Next samples of the lead (real numeric; converted to float64).

        Returns
        -------
        beats : numpy.ndarray of int64
            Absolute sample indices (from the first sample ever fed) of the R peaks
            confirmed during this call, increasing.
        confirm : numpy.ndarray of int64
            For each beat, the absolute index of the sample whose arrival confirmed it
            (``confirm - beats`` is the reporting delay in samples).

        Raises
        ------
        telediag.errors.DSPError
            ``x`` not 1-D real numeric, or the detector was flushed.

        Examples
        --------
        >>> det = QRSDetector(360.0)
        >>> b, c = det.process_with_confirm(np.zeros(100))
        >>> b.size, c.size
        (0, 0)
        """
        if self._finished:
            raise DSPError("the detector was flushed; call reset() before feeding more samples")
        xa = _as_samples(x)
        n = xa.shape[0]
        cap = n // self._d.refr + K.LEARN_LEN + 4
        out_r = np.empty(cap, dtype=np.int64)
        out_c = np.empty(cap, dtype=np.int64)
        s = self._state
        d = self._d
        k = K.qrs_process(
            xa, d.sos, d.zi_unit, d.kparams, s.istate, s.fstate, s.zi, s.rr,
            s.raw, s.bp, s.sq, s.integ, s.learn, out_r, out_c,
        )
        return out_r[:k], out_c[:k]

    def process(self, x: ArrayLike) -> IntArray:
        """Feed the next chunk; return the R peaks confirmed during this call.

        Parameters
        ----------
        x : array_like, shape (n_samples,)
            Next samples of the lead (mV; real numeric; any length including 0).

        Returns
        -------
        numpy.ndarray of int64
            Absolute sample indices of the confirmed R peaks, increasing.

        Examples
        --------
        >>> det = QRSDetector(500.0)
        >>> det.process(np.zeros(0)).size
        0
        """
        return self.process_with_confirm(x)[0]

    def flush_with_confirm(self) -> tuple[IntArray, IntArray]:
        """End of signal: release the beats still pending, with their confirming samples.

        The confirming sample of a flushed beat is the last sample fed.  After a flush the
        detector must be :meth:`reset` before it is fed again.

        Examples
        --------
        >>> det = QRSDetector(360.0)
        >>> det.flush_with_confirm()[0].size
        0
        """
        if self._finished:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        self._finished = True
        out_r = np.empty(K.LEARN_LEN + 8, dtype=np.int64)
        out_c = np.empty(K.LEARN_LEN + 8, dtype=np.int64)
        s = self._state
        k = K.qrs_flush(
            self._d.kparams, s.istate, s.fstate, s.rr, s.raw, s.bp, s.integ, s.learn,
            out_r, out_c,
        )
        return out_r[:k], out_c[:k]

    def flush(self) -> IntArray:
        """End of signal: return the beats still pending (see :meth:`flush_with_confirm`).

        Examples
        --------
        >>> QRSDetector(360.0).flush().size
        0
        """
        return self.flush_with_confirm()[0]


def detect_with_confirm(
    signal: ArrayLike, fs: float, **params: object
) -> tuple[IntArray, IntArray]:
    """Offline detection returning R peaks and the samples that confirmed them.

    Exactly the output of a :class:`QRSDetector` fed the whole ``signal`` and flushed.

    Examples
    --------
    >>> b, c = detect_with_confirm(np.zeros(1000), 360.0)
    >>> b.size
    0
    """
    det = QRSDetector(fs, **params)
    b1, c1 = det.process_with_confirm(signal)
    b2, c2 = det.flush_with_confirm()
    return np.concatenate([b1, b2]), np.concatenate([c1, c2])


def detect(signal: ArrayLike, fs: float, **params: object) -> IntArray:
    """Detect R peaks in a whole recording (one lead).

    Returns exactly the beats a :class:`QRSDetector` finds when the same samples are
    streamed in chunks of any size and then flushed.

    Parameters
    ----------
    signal : array_like, shape (n_samples,)
        One ECG lead (mV), sampled at ``fs``.  Non-finite samples are treated as unusable
        (see the module docstring).
    fs : float
        Sample rate in Hz, 125-2000.
    **params
        Any field of :class:`QRSParams`.

    Returns
    -------
    numpy.ndarray of int64
        Sample indices of the R peaks, increasing.

    Examples
    --------
    >>> import numpy as np
    >>> fs = 360.0
    >>> t = np.arange(int(8 * fs)) / fs
    >>> ecg = np.exp(-(((t % 1.0) - 0.5) ** 2) / (2 * 0.012 ** 2))   # 60 bpm
    >>> detect(ecg, fs).tolist()[:3]
    [180, 540, 900]
    """
    return detect_with_confirm(signal, fs, **params)[0]
