"""Heart-sound (PCG) signal chain: streaming preprocessing, envelopes, HSMM segmentation.

Pipeline (after Springer, Tarassenko & Clifford 2016, IEEE TBME 63(4):822-832, "Logistic
regression-HSMM-based heart sound segmentation", section II)::

    audio @ fs ──► polyphase resampler ──► 1000 Hz ──► Butterworth band-pass 25-400 Hz
        ──► spike removal (Schmidt et al. 2010, streaming blocks of 0.5 s)
        ──► envelopes (Hilbert FIR, log-envelope, 40-60 Hz power, 60-120 and 150-400 Hz magnitude)
        ──► linear-phase FIR decimation to 50 Hz frames ──► (window) z-score
        ──► logistic-regression emissions ──► duration-explicit HSMM Viterbi
        ──► S1 / systole / S2 / diastole segments, heart rate, intervals, quality

Everything up to the 50 Hz frames is streaming with carried state and bounded latency, and
chunked processing equals one-pass processing bitwise (tested).  All time-shifting filters
are linear phase except the IIR band filters (a few ms of group delay, absorbed by the trained
emission model), and their delays are compensated exactly, so frame ``k`` is the signal at
``k / 50`` s from the first input sample.

Parameters of the emission model and of the duration model are *trained* (see
``models/pcg_segmentation/train.py``) and passed in as :class:`PCGSegParams`; when a caller
gives none, the shipped file is loaded once through :mod:`telediag.models.pcg_segmentation`
(the only I/O, done outside this module).

References
----------
* D. B. Springer, L. Tarassenko, G. D. Clifford, "Logistic regression-HSMM-based heart sound
  segmentation", IEEE TBME 63(4):822-832, 2016.
* S. E. Schmidt et al., "Segmentation of heart sound recordings by a duration-dependent hidden
  Markov model", Physiol. Meas. 31(4):513-529, 2010 (spike removal, heart-rate and systolic
  interval from the envelope autocorrelation).
* S.-Z. Yu, "Hidden semi-Markov models", Artificial Intelligence 174(2):215-243, 2010
  (explicit-duration Viterbi, censored first/last segments).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal as _sig

from telediag.dsp import _pcg_kernels as _k
from telediag.errors import DSPError, ModelError

__all__ = [
    "ANALYSIS_FS",
    "FRAME_RATE",
    "STATE_NAMES",
    "FEATURE_NAMES",
    "PCGAnalysis",
    "PCGFrontEnd",
    "PARAMS_PATH",
    "PCGSegParams",
    "load_params",
    "PCGSegmenter",
    "PCGWindowStats",
    "PolyphaseResampler",
    "ResamplerState",
    "Segment",
    "analyze_frames",
    "analyze_signal",
    "design_resampler",
    "emission_features",
    "estimate_heart_rate",
    "expected_systolic_interval",
    "heart_rate_candidates",
    "extract_frames",
    "resample",
    "resample_stream",
    "segment",
    "shift_s1_boundaries",
    "states_to_segments",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

ANALYSIS_FS = 1000
"""Analysis (filtering) rate in Hz."""
FRAME_RATE = 50
"""Envelope frame rate in Hz (Springer 2016 uses 50 Hz)."""
STATE_NAMES = ("S1", "systole", "S2", "diastole")
FEATURE_NAMES = ("homomorphic", "hilbert", "psd_40_60", "band_60_120", "band_150_400")
N_CHANNELS = len(FEATURE_NAMES)
"""Columns of the 50 Hz frames (:func:`extract_frames`, :class:`PCGFrontEnd`)."""
LOG_CHANNELS = (1, 2, 3, 4)
"""Frame columns that :func:`emission_features` also uses as log-envelopes."""

_MIN_FS = 800
_MAX_FS = 384_000
_DECIM = ANALYSIS_FS // FRAME_RATE  # 20
_DECIM_TAPS = 401  # linear phase, delay 200 samples = 0.2 s = 10 frames
_HILBERT_TAPS = 201  # delay 100 samples
_SPIKE_BLOCK = ANALYSIS_FS // 2  # Schmidt 2010: 500 ms windows
_SPIKE_RING = 16
_SPIKE_RATIO = 3.0
_LOG_EPS = 1e-8


# ======================================================================================
# Validation helpers
# ======================================================================================
def _check_fs(fs: Any, name: str = "fs") -> int:
    """Return ``fs`` as an int sample rate or raise DSPError."""
    if isinstance(fs, bool) or not isinstance(fs, int | float | np.integer | np.floating):
        raise DSPError(f"{name} must be a number in Hz, got {type(fs).__name__} {fs!r}")
    f = float(fs)
    if not math.isfinite(f) or f != round(f):
        raise DSPError(f"{name} must be a finite whole number of Hz, got {fs!r}")
    if not _MIN_FS <= f <= _MAX_FS:
        raise DSPError(
            f"{name} must be between {_MIN_FS} and {_MAX_FS} Hz for heart sounds "
            f"(the 25-400 Hz band must be representable), got {fs!r}"
        )
    return int(f)


def _as_samples(x: ArrayLike, name: str = "x") -> FloatArray:
    """Convert audio samples to a 1-D C-contiguous float64 array, or raise DSPError.

    Integer PCM is scaled to [-1, 1) by its type's full scale (int16 / 32768 ...); floats are
    taken as they are.  A (n, 1) column is accepted; several channels are rejected (choose one).
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise DSPError(f"{name} must be real numeric audio samples, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DSPError(
            f"{name} must be 1-D mono samples (n_samples,) or (n_samples, 1), got shape "
            f"{arr.shape}; select one channel first"
        )
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        scale = float(max(-int(info.min), int(info.max) + 1))
        out = np.ascontiguousarray(arr, dtype=np.float64)
        if arr.dtype.kind == "u":
            out = out - float(info.max + 1) / 2.0
            scale = float(info.max + 1) / 2.0
        out = out / scale
    else:
        out = np.ascontiguousarray(arr, dtype=np.float64)
    if out.size and not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise DSPError(f"{name} must contain only finite samples, got {bad} NaN/inf values")
    return out


# ======================================================================================
# Polyphase resampler
# ======================================================================================
def design_resampler(fs_in: int, fs_out: int) -> tuple[int, int, FloatArray, int]:
    """Design the anti-aliasing FIR used by :func:`scipy.signal.resample_poly`.

    ``up/down = fs_out/fs_in`` in lowest terms; ``h`` is ``firwin(2*10*max(up, down) + 1,
    1/max(up, down), window=('kaiser', 5.0)) * up`` zero-padded in front exactly as SciPy does,
    so that the output delay is an integer number ``delay`` of output samples.

    Returns
    -------
    up, down : int
    h : numpy.ndarray
        Filter taps (with SciPy's front zero padding).
    delay : int
        Output samples by which the causal stream lags the centred (resample_poly) result.

    Examples
    --------
    >>> up, down, h, delay = design_resampler(44100, 1000)
    >>> (up, down)
    (10, 441)
    """
    fs_in = _check_fs(fs_in, "fs_in")
    if isinstance(fs_out, bool) or not isinstance(fs_out, int | np.integer) or fs_out <= 0:
        raise DSPError(f"fs_out must be a positive int in Hz, got {fs_out!r}")
    ratio = Fraction(int(fs_out), fs_in)
    up, down = ratio.numerator, ratio.denominator
    if up == down:
        return 1, 1, np.ones(1), 0
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = _sig.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    n_pre_pad = down - half_len % down
    h = np.concatenate((np.zeros(n_pre_pad), h))
    delay = (half_len + n_pre_pad) // down
    return up, down, np.ascontiguousarray(h), delay


def _polyphase_matrix(h: FloatArray, up: int) -> FloatArray:
    n_taps = -(-h.shape[0] // up)
    hp = np.zeros((up, n_taps))
    for p in range(up):
        taps = h[p::up]
        hp[p, : taps.shape[0]] = taps
    return hp


@dataclass(slots=True)
class ResamplerState:
    """Carried state of the streaming polyphase resampler.

    Attributes
    ----------
    hist : numpy.ndarray
        The last input samples (oldest first), zeros at stream start.
    pos : numpy.ndarray
        One int64: zero-stuffed index of the next output relative to the next input.
    """

    hist: FloatArray
    pos: IntArray

    def copy(self) -> ResamplerState:
        """Return an independent copy."""
        return ResamplerState(self.hist.copy(), self.pos.copy())


class PolyphaseResampler:
    """Streaming rational resampler: causal ``upfirdn(h, x, up, down)``, chunk-invariant.

    Parameters
    ----------
    fs_in, fs_out : int
        Input and output rates in Hz.
    h : array_like, optional
        FIR taps at ``fs_in*up``; default: :func:`design_resampler`'s (SciPy's) filter.

    Notes
    -----
    Output ``m`` is ``sum_k h[k] * xu[m*down - k]`` where ``xu`` is ``x`` zero-stuffed by
    ``up``; it is emitted as soon as input sample ``floor(m*down/up)`` has arrived, so the
    concatenated outputs equal ``scipy.signal.upfirdn(h, x, up, down)`` truncated to its causal
    part.  With the default filter the output lags the ideal (centred) one by ``delay`` output
    samples; :func:`resample` removes it to reproduce ``scipy.signal.resample_poly``.

    Examples
    --------
    >>> import numpy as np
    >>> r = PolyphaseResampler(2000, 1000)
    >>> y = np.concatenate([r.process(c) for c in np.array_split(np.ones(400), 3)])
    >>> y.shape
    (200,)
    """

    def __init__(self, fs_in: int, fs_out: int, h: ArrayLike | None = None) -> None:
        up, down, taps, delay = design_resampler(fs_in, fs_out)
        if h is not None:
            taps = np.ascontiguousarray(np.asarray(h, dtype=np.float64))
            if taps.ndim != 1 or taps.size < 1 or not np.all(np.isfinite(taps)):
                raise DSPError(f"h must be a finite 1-D array of taps, got shape {taps.shape}")
            delay = 0
        self.fs_in = int(fs_in)
        self.fs_out = int(fs_out)
        self.up = up
        self.down = down
        self.h = taps
        self.delay = delay
        self._hp = _polyphase_matrix(taps, up)
        self.state = self.initial_state()

    def initial_state(self) -> ResamplerState:
        """State at stream start (zeros before the first sample)."""
        return ResamplerState(np.zeros(self._hp.shape[1]), np.zeros(1, dtype=np.int64))

    def max_out(self, n_in: int) -> int:
        """Upper bound of outputs produced by ``n_in`` more inputs."""
        return (n_in * self.up + self.up) // self.down + 2

    def process(self, x: ArrayLike) -> FloatArray:
        """Resample the next chunk; returns the outputs it completes (possibly none)."""
        xs = _as_samples(x)
        return self._process_f64(xs)

    def _process_f64(self, xs: FloatArray) -> FloatArray:
        if self.up == 1 and self.down == 1:
            return xs.copy()
        y = np.empty(self.max_out(xs.shape[0]))
        n = _k._polyphase_step(
            self._hp, self.up, self.down, xs, self.state.hist, self.state.pos, y
        )
        return y[:n]


def resample_stream(
    x: ArrayLike, resampler: PolyphaseResampler, state: ResamplerState | None = None
) -> tuple[FloatArray, ResamplerState]:
    """Functional streaming resampling: ``y, state = resample_stream(x, r, state)``.

    The given ``state`` is not modified; ``None`` means stream start.

    Examples
    --------
    >>> import numpy as np
    >>> r = PolyphaseResampler(4000, 1000)
    >>> y1, st = resample_stream(np.ones(100), r)
    >>> y2, st = resample_stream(np.ones(100), r, st)
    >>> y1.size + y2.size
    50
    """
    st = resampler.initial_state() if state is None else state.copy()
    xs = _as_samples(x)
    if resampler.up == 1 and resampler.down == 1:
        return xs.copy(), st
    y = np.empty(resampler.max_out(xs.shape[0]))
    n = _k._polyphase_step(resampler._hp, resampler.up, resampler.down, xs, st.hist, st.pos, y)
    return y[:n], st


def resample(x: ArrayLike, fs_in: int, fs_out: int) -> FloatArray:
    """Offline resampling through the streaming kernel; equals ``resample_poly`` (padtype 0).

    Examples
    --------
    >>> import numpy as np
    >>> resample(np.zeros(441), 44100, 1000).shape
    (10,)
    """
    r = PolyphaseResampler(fs_in, fs_out)
    xs = _as_samples(x)
    n_out = -(-xs.shape[0] * r.up // r.down)
    if r.up == r.down:
        return xs.copy()
    n_flush = (r.delay + 2) * r.down // r.up + r._hp.shape[1] + 2
    y = np.concatenate((r._process_f64(xs), r._process_f64(np.zeros(n_flush))))
    return y[r.delay : r.delay + n_out]


# ======================================================================================
# Front end: resample, band-pass, despike, envelopes, 50 Hz frames
# ======================================================================================
def _hilbert_fir(n_taps: int) -> FloatArray:
    """Type-III FIR Hilbert transformer (ideal ``2/(pi n)`` on odd ``n``, Blackman window)."""
    m = n_taps // 2
    n = np.arange(-m, m + 1)
    h = np.zeros(n_taps)
    odd = n % 2 != 0
    h[odd] = 2.0 / (np.pi * n[odd])
    return np.ascontiguousarray(h * np.blackman(n_taps))


@dataclass(slots=True)
class FrontEndState:
    """All carried state of :class:`PCGFrontEnd` (small arrays, updated in place)."""

    resampler: ResamplerState
    bp_zi: FloatArray
    spike_buf: FloatArray
    spike_maa: FloatArray
    spike_ints: IntArray
    env_hist: FloatArray
    psd_zi: FloatArray
    band_zi: FloatArray
    hf_zi: FloatArray
    dec_hist: FloatArray
    dec_pos: IntArray
    n_in: int = 0
    n_frames: int = 0


@functools.lru_cache(maxsize=1)
def _front_end_filters() -> tuple[FloatArray, ...]:
    """The fixed (rate-independent, 1 kHz) filters of :class:`PCGFrontEnd`, designed once.

    Shared by every front end (read only): band-pass 25-400 Hz, the 40-60, 60-120 and
    150-400 Hz envelope bands, the Hilbert FIR and the decimation FIRs.
    """
    bp = np.ascontiguousarray(
        _sig.butter(4, [25.0, 400.0], btype="bandpass", fs=ANALYSIS_FS, output="sos")
    )
    psd_sos = np.ascontiguousarray(
        _sig.butter(2, [40.0, 60.0], btype="bandpass", fs=ANALYSIS_FS, output="sos")
    )
    band_sos = np.ascontiguousarray(
        _sig.butter(2, [60.0, 120.0], btype="bandpass", fs=ANALYSIS_FS, output="sos")
    )
    hf_sos = np.ascontiguousarray(
        _sig.butter(2, [150.0, 400.0], btype="bandpass", fs=ANALYSIS_FS, output="sos")
    )
    hilb = _hilbert_fir(_HILBERT_TAPS)
    cut = [8.0, 20.0, 20.0, 20.0, 20.0]
    dec = np.ascontiguousarray(
        np.stack([_sig.firwin(_DECIM_TAPS, c, fs=ANALYSIS_FS) for c in cut])
    )
    return bp, psd_sos, band_sos, hf_sos, hilb, dec


class PCGFrontEnd:
    """Streaming PCG preprocessing from audio at ``fs`` to 50 Hz envelope frames.

    Parameters
    ----------
    fs : int
        Input sample rate in Hz (800 ... 384000; 2000, 4000, 8000, 44100, 48000 typical).

    Notes
    -----
    ``process(chunk)`` returns the frames (n, 5) that the chunk completes: columns
    :data:`FEATURE_NAMES`: homomorphic envelope (exp of the 8 Hz low-passed log analytic
    envelope, Springer 2016 eq. 1-3), Hilbert envelope, 40-60 Hz band power (stands in for
    Springer's spectrogram PSD feature), 60-120 Hz band magnitude (stands in for the
    Daubechies-7 level-3 wavelet envelope: same band at 1 kHz) and 150-400 Hz band magnitude
    (the aortic/pulmonary components of S2 carry more energy above 150 Hz than S1, whose
    energy lies mostly below 100 Hz; Arnott, Pfeiffer & Tavel, "Spectral analysis of heart
    sounds", J. Biomed. Eng. 6(2):121-128, 1984).  Frame ``k`` describes the
    signal at ``k / 50`` s; the latency is ``latency_s`` (about 0.85 s at 2 kHz, dominated by
    the 0.5 s spike-removal block and the 0.2 s decimation filter).  Unnormalised: the
    segmenter z-scores over its window.

    Spike removal is a streaming form of Schmidt et al. 2010: fixed 0.5 s blocks, threshold 3x
    the median of the last 16 block maxima (instead of all windows of the file), spikes zeroed
    between the zero crossings that surround them, inside the block.

    Examples
    --------
    >>> import numpy as np
    >>> fe = PCGFrontEnd(2000)
    >>> frames = fe.process(np.zeros(4000))
    >>> frames.shape[1]
    5
    """

    def __init__(self, fs: int) -> None:
        self.fs = _check_fs(fs)
        self._rs = PolyphaseResampler(self.fs, ANALYSIS_FS)
        (self._bp, self._psd_sos, self._band_sos, self._hf_sos, self._hilb,
         self._dec) = _front_end_filters()
        # input-time of resampler output j is (j - delay)/1000; envelope stage adds the
        # Hilbert centre delay, decimation its centre delay: start the decimator so frame 0
        # lands exactly on t = 0.
        self.delay_samples = self._rs.delay + _HILBERT_TAPS // 2 + _DECIM_TAPS // 2
        self.state = self.initial_state()

    @property
    def latency_s(self) -> float:
        """Worst-case time from a sample's arrival to the frame that describes it."""
        return (self.delay_samples + _SPIKE_BLOCK) / ANALYSIS_FS + 1.0 / FRAME_RATE

    def initial_state(self) -> FrontEndState:
        """State at stream start."""
        return FrontEndState(
            resampler=self._rs.initial_state(),
            bp_zi=np.zeros((self._bp.shape[0], 2)),
            spike_buf=np.zeros(_SPIKE_BLOCK),
            spike_maa=np.zeros(_SPIKE_RING),
            spike_ints=np.zeros(3, dtype=np.int64),
            env_hist=np.zeros(_HILBERT_TAPS - 1),
            psd_zi=np.zeros((self._psd_sos.shape[0], 2)),
            band_zi=np.zeros((self._band_sos.shape[0], 2)),
            hf_zi=np.zeros((self._hf_sos.shape[0], 2)),
            dec_hist=np.zeros((_DECIM_TAPS, N_CHANNELS)),
            dec_pos=np.array([self.delay_samples], dtype=np.int64),
        )

    def reset(self) -> None:
        """Forget the stream (back to the initial state)."""
        self.state = self.initial_state()

    def process(self, chunk: ArrayLike) -> FloatArray:
        """Feed audio samples; return the completed 50 Hz frames, shape (n, 5)."""
        return self._process_f64(_as_samples(chunk, "chunk"))

    def _process_f64(self, xs: FloatArray) -> FloatArray:
        st = self.state
        st.n_in += xs.shape[0]
        if self._rs.up == 1 and self._rs.down == 1:
            x1 = xs.copy()
        else:
            x1 = np.empty(self._rs.max_out(xs.shape[0]))
            n1 = _k._polyphase_step(
                self._rs._hp, self._rs.up, self._rs.down, xs, st.resampler.hist,
                st.resampler.pos, x1,
            )
            x1 = x1[:n1]
        _k._sos_step(self._bp, x1, st.bp_zi, x1)
        x2 = np.empty(x1.shape[0] + _SPIKE_BLOCK)
        scratch = np.empty(_SPIKE_RING)
        n2 = _k._despike_step(
            x1, st.spike_buf, st.spike_maa, st.spike_ints, _SPIKE_RATIO, 20, x2, scratch
        )
        x2 = x2[:n2]
        env = np.empty((n2, N_CHANNELS))
        _k._envelope_step(
            self._hilb, x2, st.env_hist, self._psd_sos, st.psd_zi, self._band_sos, st.band_zi,
            self._hf_sos, st.hf_zi, _LOG_EPS, env,
        )
        frames = np.empty((n2 // _DECIM + 2, N_CHANNELS))
        nf = _k._decimate_channels_step(self._dec, _DECIM, env, st.dec_hist, st.dec_pos, frames)
        frames = frames[:nf]
        frames[:, 0] = np.exp(frames[:, 0])
        st.n_frames += nf
        return frames

    def flush_samples(self) -> int:
        """Zeros (at ``fs``) to feed after the last sample to push out all pending frames."""
        seconds = self.latency_s + 0.1
        return int(math.ceil(seconds * self.fs)) + self._rs._hp.shape[1] + 1


def extract_frames(audio: ArrayLike, fs: int) -> FloatArray:
    """Offline: the 50 Hz envelope frames of a whole recording (one pass plus flush).

    Returns an array (ceil(n * 50 / fs), 5); frame ``k`` is the signal at ``k/50`` s.

    Examples
    --------
    >>> import numpy as np
    >>> extract_frames(np.zeros(2000), 2000).shape
    (50, 5)
    """
    fe = PCGFrontEnd(fs)
    xs = _as_samples(audio, "audio")
    n_frames = -(-xs.shape[0] * FRAME_RATE // fe.fs)
    f1 = fe._process_f64(xs)
    f2 = fe._process_f64(np.zeros(fe.flush_samples()))
    return np.ascontiguousarray(np.concatenate((f1, f2))[:n_frames])


# ======================================================================================
# Model parameters
# ======================================================================================
@dataclass(frozen=True, slots=True)
class PCGSegParams:
    """Trained parameters of the LR-HSMM segmenter (see ``models/pcg_segmentation``).

    Attributes
    ----------
    weights : numpy.ndarray, shape (4, n_features + 1)
        Multinomial logistic-regression weights (last column: bias) on
        :func:`emission_features`.
    log_prior : numpy.ndarray, shape (4,)
        Log class frequencies of the training frames (emission = posterior / prior).
    s1_mean_s, s1_sd_s, s2_mean_s, s2_sd_s : float
        Gaussian durations of S1 and S2 (seconds).
    systole_sd_s : float
        Spread of the systole duration around its window estimate.
    diastole_sd_frac, diastole_sd_min_s : float
        Diastole spread = max(frac * mean, min).
    hr_min_bpm, hr_max_bpm : float
        Heart-rate search range of the autocorrelation.
    """

    weights: FloatArray
    log_prior: FloatArray
    s1_mean_s: float = 0.122
    s1_sd_s: float = 0.022
    s2_mean_s: float = 0.092
    s2_sd_s: float = 0.022
    systole_sd_s: float = 0.025
    diastole_sd_frac: float = 0.07
    diastole_sd_min_s: float = 0.02
    hr_min_bpm: float = 30.0
    hr_max_bpm: float = 120.0
    extra: dict[str, Any] = field(default_factory=dict)
    _cnn: _EmissionCNN | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        spec = self.extra.get("emission_cnn")
        object.__setattr__(self, "_cnn", None if spec is None else _EmissionCNN.from_spec(spec))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PCGSegParams:
        """Build from the JSON dictionary written by the training script."""
        try:
            w = np.asarray(d["weights"], dtype=np.float64)
            lp = np.asarray(d["log_prior"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise DSPError(f"PCG segmentation parameters are malformed: {e}") from e
        n_feat = len(_FEATURE_LAYOUT)
        if w.shape != (4, n_feat + 1) or lp.shape != (4,):
            raise DSPError(
                f"weights must have shape (4, {n_feat + 1}) and log_prior (4,), got "
                f"{w.shape} and {lp.shape}"
            )
        kw = {k: float(d[k]) for k in _SCALAR_FIELDS if k in d}
        extra = dict(d.get("extra", {}))
        try:
            offs = [float(v) for v in extra.get("sys_offsets_s", [])]
            margin = float(extra.get("sys_switch_nats_per_s", 0.0))
            hr_round = float(extra.get("hr_round_bpm", 0.0))
        except (TypeError, ValueError) as e:
            raise DSPError(f"PCG segmentation parameters are malformed: {e}") from e
        if not (math.isfinite(hr_round) and 0.0 <= hr_round <= 5.0):
            raise DSPError(f"extra.hr_round_bpm must be within 0 .. 5 bpm, got {hr_round}")
        if not all(math.isfinite(v) and abs(v) <= 0.2 for v in offs) or not (
            math.isfinite(margin) and margin >= 0.0
        ):
            raise DSPError(
                "extra.sys_offsets_s must be finite offsets within +-0.2 s and "
                f"extra.sys_switch_nats_per_s finite and >= 0, got {offs} and {margin}"
            )
        return cls(weights=w, log_prior=lp, extra=extra, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (inverse of :meth:`from_dict`)."""
        out: dict[str, Any] = {
            "weights": self.weights.tolist(),
            "log_prior": self.log_prior.tolist(),
        }
        for k in _SCALAR_FIELDS:
            out[k] = float(getattr(self, k))
        out["extra"] = dict(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class _EmissionCNN:
    """The small dilated 1-D CNN emission model of ``extra["emission_cnn"]`` (issue 16).

    JSON form: ``{"weight": w, "log_prior": [4], "layers": [{"w": [out][in][k], "b": [out],
    "dilation": d}, ...]}``: each layer a 'same' convolution over frames with edge-replicated
    padding (PyTorch ``padding_mode="replicate"``), ReLU between layers, 4 logits out.  Its input
    is the 9 z-scored envelope features of :func:`emission_features` (the first 9 columns);
    its log posterior / prior is mixed with the logistic regression's as
    ``(1 - w) * LR + w * CNN`` (:func:`_log_emissions`).
    """

    weight: float
    log_prior: FloatArray
    layers: tuple[tuple[FloatArray, FloatArray, int, int], ...]  # (W flat (k*in, out), b, dil, k)
    identity_weight: float = -1.0  # < 0: the same as ``weight``

    @classmethod
    def from_spec(cls, spec: Any) -> _EmissionCNN:
        try:
            w = float(spec["weight"])
            w_id = float(spec.get("identity_weight", w))
            lp = np.asarray(spec["log_prior"], dtype=np.float64)
            layers = []
            c_in = len(_BASE_FEATURES)
            for ly in spec["layers"]:
                W = np.asarray(ly["w"], dtype=np.float64)
                b = np.asarray(ly["b"], dtype=np.float64)
                dil = int(ly["dilation"])
                if (W.ndim != 3 or W.shape[1] != c_in or b.shape != (W.shape[0],)
                        or W.shape[2] % 2 != 1 or dil < 1):
                    raise ValueError(f"layer shapes {W.shape} / {b.shape}, dilation {dil}, "
                                     f"expected (out, {c_in}, odd k) / (out,), dilation >= 1")
                k = W.shape[2]
                wf = np.ascontiguousarray(W.transpose(2, 1, 0).reshape(k * c_in, W.shape[0]))
                layers.append((wf, np.ascontiguousarray(b), dil, k))
                c_in = W.shape[0]
        except (KeyError, TypeError, ValueError) as e:
            raise DSPError(f"PCG segmentation parameters: malformed extra.emission_cnn: {e}") from e
        if (not layers or c_in != 4 or lp.shape != (4,) or not 0.0 <= w <= 1.0
                or not 0.0 <= w_id <= w
                or not all(np.all(np.isfinite(a)) for ly in layers for a in ly[:2])
                or not np.all(np.isfinite(lp))):
            raise DSPError("PCG segmentation parameters: extra.emission_cnn must end in 4 "
                           "outputs, have a finite 4-value log_prior, a weight in [0, 1] and "
                           "an identity_weight in [0, weight]")
        return cls(w, lp, tuple(layers), w_id)

    def log_emissions(self, z: FloatArray) -> FloatArray:
        """log P(state | window) - log P(state) from the (n, 9) z-scored features, up to an
        additive constant per frame (see :func:`_log_emissions`)."""
        x = z
        n = x.shape[0]
        last = len(self.layers) - 1
        for i, (wf, b, dil, k) in enumerate(self.layers):
            c_in = x.shape[1]
            if k > 1:
                pad = dil * (k - 1) // 2
                xp = np.empty((n + 2 * pad, c_in))
                xp[pad : pad + n] = x
                xp[:pad] = x[0]
                xp[pad + n :] = x[-1]
                # one matrix product per tap (no im2col copy)
                y = xp[:n] @ wf[:c_in]
                for j in range(1, k):
                    y += xp[j * dil : j * dil + n] @ wf[j * c_in : (j + 1) * c_in]
                x = y
            else:
                x = x @ wf
            x += b
            if i < last:
                np.maximum(x, 0.0, out=x)
        x -= self.log_prior
        w, w_id = self.weight, self.identity_weight
        if w <= 0.0 or w_id == w:
            return x
        # the CNN's scaled likelihood = a sound-vs-silence part (the same for S1 and S2, and for
        # systole and diastole) + an identity part (S1 vs S2, systole vs diastole); the identity
        # part gets ``identity_weight / weight`` of the CNN's share (issue 16: held out, the
        # CNN places sounds better than the LR but tells S1 from S2 worse on database f)
        lp = self.log_prior
        sound = _logaddexp_cols(x[:, 0] + lp[0], x[:, 2] + lp[2]) - math.log(
            math.exp(lp[0]) + math.exp(lp[2]))
        quiet = _logaddexp_cols(x[:, 1] + lp[1], x[:, 3] + lp[3]) - math.log(
            math.exp(lp[1]) + math.exp(lp[3]))
        r = w_id / w
        x *= r
        g = 1.0 - r
        x[:, 0] += g * sound
        x[:, 2] += g * sound
        x[:, 1] += g * quiet
        x[:, 3] += g * quiet
        return x


def _logaddexp_cols(a: FloatArray, b: FloatArray) -> FloatArray:
    """log(exp(a) + exp(b)), elementwise (``np.logaddexp``, written out: faster on short rows)."""
    m = np.maximum(a, b)
    return m + np.log1p(np.exp(-np.abs(a - b)))


_SCALAR_FIELDS = (
    "s1_mean_s", "s1_sd_s", "s2_mean_s", "s2_sd_s", "systole_sd_s", "diastole_sd_frac",
    "diastole_sd_min_s", "hr_min_bpm", "hr_max_bpm",
)
_BASE_FEATURES = list(FEATURE_NAMES) + [f"log_{FEATURE_NAMES[c]}" for c in LOG_CHANNELS]
_FEATURE_LAYOUT = tuple(
    _BASE_FEATURES
    + [f"d_{n}" for n in _BASE_FEATURES]
    + [f"{n}_lag-2" for n in _BASE_FEATURES]
    + [f"{n}_lag+2" for n in _BASE_FEATURES]
)

_DEFAULT_PARAMS: PCGSegParams | None = None


#: The shipped, trained LR-HSMM parameters (written by ``telediag.models.pcg_segmentation.train``;
#: kept next to the algorithm that needs them so that dsp never imports the models layer).
PARAMS_PATH = Path(__file__).with_name("pcg_seg_params.json")


def load_params(path: str | Path | None = None) -> PCGSegParams:
    """Load segmentation parameters (default: the shipped :data:`PARAMS_PATH`).

    Raises
    ------
    telediag.errors.ModelError
        Missing or malformed file.

    Examples
    --------
    >>> p = load_params()
    >>> p.weights.shape[0]
    4
    """
    p = Path(path) if path is not None else PARAMS_PATH
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot read PCG segmentation parameters {p}: {e}; re-create them with "
            "`python -m telediag.models.pcg_segmentation.train`"
        ) from e
    try:
        return PCGSegParams.from_dict(d)
    except ValueError as e:
        raise ModelError(f"{p}: {e}") from e


def _default_params() -> PCGSegParams:
    global _DEFAULT_PARAMS
    if _DEFAULT_PARAMS is None:
        _DEFAULT_PARAMS = load_params()
    return _DEFAULT_PARAMS


# ======================================================================================
# Features, heart rate, emissions
# ======================================================================================
ZSCORE_CLIP_PCT = 1.0
"""Percentile (and 100 minus it) at which each feature is clipped before its mean and sd are
taken in :func:`_zscore` (issue 16: robust per-recording normalisation)."""
ZSCORE_MAX = 8.0
"""The z-scores are clipped to +-this."""


def _zscore(frames: FloatArray) -> FloatArray:
    """Robust per-window z-score: mean and sd of each column clipped at its 1st and 99th
    percentiles, and the result clipped to +-:data:`ZSCORE_MAX`.

    A plain mean/sd lets a few loud artefacts (a knock, a rub, speech) shrink every heart
    sound of the window towards zero; winsorising keeps the scale set by the bulk of the
    frames.  Held out (leave-one-database-out), this left the PhysioNet sets unchanged and
    raised S1 / S2 F1 on CirCor, an unseen stethoscope, by 1.2 / 1.5 points
    (``models/pcg_segmentation/README.md``).
    """
    n = frames.shape[0]
    if n > 1:
        # np.percentile's linear interpolation, from one partial sort (several times faster)
        pos = np.array([ZSCORE_CLIP_PCT, 100.0 - ZSCORE_CLIP_PCT]) / 100.0 * (n - 1)
        k = np.floor(pos).astype(np.int64)
        k1 = np.minimum(k + 1, n - 1)
        part = np.partition(frames, np.unique(np.concatenate((k, k1))), axis=0)
        w = (pos - k)[:, None]
        q = part[k] * (1.0 - w) + part[k1] * w
        c = np.clip(frames, q[0], q[1])
    else:
        c = frames
    mu = c.mean(axis=0)
    sd = c.std(axis=0)
    sd = np.where(sd > 1e-12 * (np.abs(mu) + 1e-30), sd, 1.0)
    return np.clip((frames - mu) / sd, -ZSCORE_MAX, ZSCORE_MAX)


def _log_envelopes(f: FloatArray) -> FloatArray:
    """Log of the :data:`LOG_CHANNELS` columns, floored at 1e-3 x their median magnitude.

    The decimation filter can ring slightly below zero between sounds; the floor (relative,
    so it does not depend on the recording's gain) keeps the logarithm finite.
    """
    g = f[:, LOG_CHANNELS]
    floor = 1e-3 * np.median(np.abs(g), axis=0) + 1e-300
    return np.log(np.maximum(g, floor))


def emission_features(frames: ArrayLike) -> FloatArray:
    """Design matrix of the emission model from raw 50 Hz frames of one window.

    The 5 envelopes and the logarithms of the last 4 (:data:`LOG_CHANNELS`: on a log scale
    the ratio of the 150-400 Hz to the low-band envelopes, which tells S2 from S1, is a
    linear function the logistic regression can use) are z-scored over the window
    (Springer 2016 normalises each feature per recording; here robustly, see
    :func:`_zscore`); then per frame the features are
    these 9 values, their central differences, and their values 2 frames (40 ms) before and
    after (edge values repeated): 36 features.

    Examples
    --------
    >>> import numpy as np
    >>> emission_features(np.random.default_rng(0).random((100, 5))).shape
    (100, 36)
    """
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != N_CHANNELS:
        raise DSPError(f"frames must have shape (n, {N_CHANNELS}), got {f.shape}")
    if f.shape[0] == 0:
        return np.zeros((0, len(_FEATURE_LAYOUT)))
    z = _zscore(np.hstack((f, _log_envelopes(f))))
    n = z.shape[0]
    pad = np.concatenate((np.repeat(z[:1], 2, axis=0), z, np.repeat(z[-1:], 2, axis=0)))
    d = 0.5 * (pad[3 : 3 + n] - pad[1 : 1 + n])
    return np.ascontiguousarray(np.hstack((z, d, pad[0:n], pad[4 : 4 + n])))


def _log_emissions(x: FloatArray, params: PCGSegParams) -> FloatArray:
    """log P(state | o) - log P(state): the scaled likelihood of a hybrid LR-HMM, up to an
    additive constant per frame.

    The per-frame log-softmax normaliser is not subtracted (issue 16, speed): every HSMM path
    emits each frame exactly once, so a per-frame constant adds the same amount to every
    path's score over the same frames and changes neither the best path nor the difference
    between two paths' scores (all the decoder compares)."""
    logits = x @ params.weights[:, :-1].T + params.weights[:, -1]
    logits -= params.log_prior
    cnn = getattr(params, "_cnn", None)  # (absent on objects unpickled from older code)
    if cnn is None or cnn.weight <= 0.0 or x.shape[0] == 0:
        return np.ascontiguousarray(logits)
    # issue 16: the LR's and the small CNN's scaled likelihoods, mixed (weight chosen by LODO)
    lc = cnn.log_emissions(x[:, : len(_BASE_FEATURES)])
    logits *= 1.0 - cnn.weight
    logits += cnn.weight * lc
    return logits


def _autocorr(e: FloatArray, max_lag: int) -> FloatArray:
    z = np.ascontiguousarray(e - e.mean())
    ac = np.zeros(max_lag + 1)
    if z.shape[0] > max_lag:
        _k._autocorr_fft_free(z, max_lag, ac)
    return ac


def _peak_lag(ac: FloatArray, lo: int, hi: int) -> float:
    """Lag of the highest value of ``ac[lo:hi+1]``, refined by a parabola through its peak."""
    lag = lo + int(np.argmax(ac[lo : hi + 1]))
    frac = 0.0
    if 0 < lag < ac.shape[0] - 1:
        a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
        den = a - 2 * b + c
        if den < 0:
            frac = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return lag + frac


def _systolic_interval(ac: FloatArray, period_frames: float) -> float:
    """Schmidt 2010: highest autocorrelation between 0.2 s and half the heart period.

    When the highest value sits on an end of the search range (no S1-S2 peak inside it: the
    autocorrelation merely decays from lag 0 or rises towards the period), the interval is
    not measured but taken from the systole model, :func:`expected_systolic_interval`.
    """
    s_lo = int(round(0.2 * FRAME_RATE))
    s_hi = min(int(round(period_frames / 2)), ac.shape[0] - 1)
    if s_hi > s_lo + 1:
        k = s_lo + int(np.argmax(ac[s_lo : s_hi + 1]))
        if s_lo < k < s_hi:
            return k / FRAME_RATE
        ex = expected_systolic_interval(60.0 * FRAME_RATE / period_frames)
        return float(min(max(ex, s_lo / FRAME_RATE), 0.5 * period_frames / FRAME_RATE))
    # period under ~0.44 s (> ~135 bpm): no room to search; the systole model, which keeps
    # systole about half the period at such rates (CirCor children: 0.50-0.52 of the period
    # above 130 bpm), not a third of it
    ex = expected_systolic_interval(60.0 * FRAME_RATE / period_frames)
    return float(min(ex, 0.6 * period_frames / FRAME_RATE))


def estimate_heart_rate(
    homomorphic: ArrayLike, hr_min_bpm: float = 30.0, hr_max_bpm: float = 120.0
) -> tuple[float, float, float]:
    """Heart rate, systolic interval and periodicity from the envelope autocorrelation.

    After Schmidt et al. 2010 / Springer 2016: the heart period is the lag of the highest
    autocorrelation peak of the (mean-removed) homomorphic envelope between ``60/hr_max`` and
    ``60/hr_min`` s; the systolic interval (S1 onset to S2 onset) the lag of the highest
    value between 0.2 s and half the period.  The periodicity (autocorrelation at the
    period, 0..1) serves as a quality index.

    Parameters
    ----------
    homomorphic : array_like
        50 Hz envelope (any scale).
    hr_min_bpm, hr_max_bpm : float
        Search range.

    Returns
    -------
    heart_rate_bpm, systolic_interval_s, periodicity : float
        NaN, NaN, 0.0 when the window is shorter than two periods or constant.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(500) / 50
    >>> hr, sys_s, q = estimate_heart_rate(1 + np.cos(2 * np.pi * 1.2 * t) ** 8)
    >>> round(hr)
    72
    """
    e = np.asarray(homomorphic, dtype=np.float64)
    if e.ndim != 1:
        raise DSPError(f"homomorphic must be 1-D, got shape {e.shape}")
    return _estimate_heart_rate(e, hr_min_bpm, hr_max_bpm)[:3]


def _estimate_heart_rate(
    e: FloatArray, hr_min_bpm: float, hr_max_bpm: float
) -> tuple[float, float, float, FloatArray | None]:
    """:func:`estimate_heart_rate` on a 1-D float array; also returns the autocorrelation
    (lags 0 .. ``60 / hr_min_bpm`` s, or fewer when the window is shorter; ``None`` when
    the estimate is NaN), so that :func:`heart_rate_candidates` need not compute it again."""
    if not 0 < hr_min_bpm < hr_max_bpm:
        raise DSPError(f"need 0 < hr_min_bpm < hr_max_bpm, got {hr_min_bpm}, {hr_max_bpm}")
    lag_lo = int(round(60.0 / hr_max_bpm * FRAME_RATE))
    lag_hi = int(round(60.0 / hr_min_bpm * FRAME_RATE))
    if e.shape[0] < lag_lo * 2 + 2 or not np.any(e != e[0]):
        return math.nan, math.nan, 0.0, None
    max_lag = min(lag_hi, e.shape[0] - 1)
    ac = _autocorr(e, max_lag)
    lag = _peak_lag(ac, lag_lo, max_lag)
    sys_s = _systolic_interval(ac, lag)
    per = float(ac[int(round(lag))])
    return float(60.0 * FRAME_RATE / lag), float(sys_s), max(0.0, per), ac


def heart_rate_candidates(
    homomorphic: ArrayLike, params: PCGSegParams
) -> list[tuple[float, float, float]]:
    """Candidate (heart rate, systolic interval, periodicity) for the HSMM to choose from.

    The autocorrelation's highest peak in Springer's range (``params.hr_min_bpm`` ..
    ``params.hr_max_bpm``) is the first candidate.  It is often off by a factor of two: the
    S1-S2 lag wins at slow rates and two (or three) beats win above the range.  So the best
    peaks near half and a third of its lag and the best peak at rates above the range (up to
    ``hr_fast_max_bpm`` in ``params.extra``, default 200) are added, and the best peak near
    twice its lag when that rate is at least ``hr_double_min_bpm`` (default 40; the S1-S2 lag
    can win at slow rates with a loud S2); candidates whose systolic interval is far longer than the systole model
    allows (:func:`expected_systolic_interval`) are not decoded.  :func:`analyze_frames`
    decodes each and keeps the most likely path (the HSMM's score is a proper joint
    log-likelihood, so the duration models can be compared).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(1000) / 50
    >>> c = heart_rate_candidates(1 + np.cos(np.pi * 1.2 * t) ** 8, _default_params())
    >>> round(c[0][0])
    72
    """
    e = np.asarray(homomorphic, dtype=np.float64)
    if e.ndim != 1:
        raise DSPError(f"homomorphic must be 1-D, got shape {e.shape}")
    hr, sys_s, per, ac_main = _estimate_heart_rate(e, params.hr_min_bpm, params.hr_max_bpm)
    if not math.isfinite(hr) or ac_main is None:
        return []
    out = [(hr, sys_s, per)]
    fast_max = float(params.extra.get("hr_fast_max_bpm", 200.0))
    lag_fast = int(round(60.0 / fast_max * FRAME_RATE))
    lag_main = 60.0 * FRAME_RATE / hr
    max_lag = ac_main.shape[0] - 1
    ac = ac_main
    lags = []
    # near half and a third of the main lag: the autocorrelation of a short recording can
    # peak at two or three beats (issue 16: b0140, 3 x 0.62 s won over 0.62 s)
    for div in (2.0, 3.0):
        frac_lag = lag_main / div
        lo = max(lag_fast, int(math.floor(frac_lag * 0.85)))
        hi = int(math.ceil(frac_lag * 1.15))
        if hi > lo and hi <= max_lag:
            lags.append(_peak_lag(ac, lo, hi))
    hi2 = int(round(60.0 / params.hr_max_bpm * FRAME_RATE)) - 1
    if hi2 > lag_fast:
        lags.append(_peak_lag(ac, lag_fast, hi2))
    dbl_min = float(params.extra.get("hr_double_min_bpm", 40.0))
    if params.extra.get("hr_double_candidate", True) and hr / 2.0 >= dbl_min:
        # a fast main peak may be the S1-S2 lag of a slow heart: add the peak near twice
        # its lag (not below ``hr_double_min_bpm``: such bradycardia is rare, and a
        # halved rate is the commoner error there)
        dbl = 2.0 * lag_main
        lo3, hi3 = int(math.floor(dbl * 0.85)), min(int(math.ceil(dbl * 1.15)), max_lag)
        if hi3 > lo3:
            lags.append(_peak_lag(ac, lo3, hi3))
    for lag in lags:
        if all(abs(lag - 60.0 * FRAME_RATE / c[0]) > 0.05 * lag for c in out):
            k = int(round(lag))
            out.append((60.0 * FRAME_RATE / lag, _systolic_interval(ac, lag),
                        max(0.0, float(ac[k]))))
    q = float(params.extra.get("hr_round_bpm", 0.0))
    if q > 0.0:
        # rounded (0.1 bpm, 1 ms in the shipped file), so that consecutive streaming windows
        # share their memoised duration tables: the sub-frame peak refinement otherwise
        # gives a new rate, hence new tables, at every update
        out = [(round(hr_c / q) * q, round(sys_c, 3), per_c) for hr_c, sys_c, per_c in out]
    return out


SOUND_PERIOD_REF_S = 0.55
"""Heart period (s, about 109 bpm) below which the S1/S2 durations are scaled with the period."""


_DURATION_CACHE: dict[tuple[int, float, float], tuple[PCGSegParams, FloatArray, FloatArray]] = {}
_DURATION_CACHE_SIZE = 64


def _duration_tables(
    params: PCGSegParams, hr_bpm: float, sys_s: float
) -> tuple[FloatArray, FloatArray]:
    """log pmf and log censored-segment probabilities of the 4 state durations (frames).

    Memoised (the streaming segmenter decodes every window twice with the chosen heart rate,
    and consecutive windows mostly find the same autocorrelation lags): up to
    ``_DURATION_CACHE_SIZE`` tables, keyed by the parameter object and the exact heart rate and
    systolic interval.  The returned arrays are shared: callers must not modify them.
    """
    key = (id(params), float(hr_bpm), float(sys_s))
    hit = _DURATION_CACHE.get(key)
    if hit is not None and hit[0] is params:
        return hit[1], hit[2]
    log_pd, log_surv = _duration_tables_uncached(params, hr_bpm, sys_s)
    if len(_DURATION_CACHE) >= _DURATION_CACHE_SIZE:
        _DURATION_CACHE.pop(next(iter(_DURATION_CACHE)))  # oldest first (insertion order)
    _DURATION_CACHE[key] = (params, log_pd, log_surv)
    return log_pd, log_surv


def _duration_tables_uncached(
    params: PCGSegParams, hr_bpm: float, sys_s: float
) -> tuple[FloatArray, FloatArray]:
    """:func:`_duration_tables` without the cache."""
    fr = FRAME_RATE
    period = 60.0 / hr_bpm
    # heart sounds shorten at fast rates (CirCor annotations: S1 0.12 s up to 130 bpm, 0.097 s
    # at 130-150, 0.074 s above 150): above SOUND_PERIOD_REF_S the S1/S2 duration model is
    # scaled by period / SOUND_PERIOD_REF_S
    g = min(1.0, period / float(params.extra.get("sound_period_ref_s", SOUND_PERIOD_REF_S)))
    s1_mean, s2_mean = params.s1_mean_s * g, params.s2_mean_s * g
    s1_m, s1_sd = s1_mean * fr, params.s1_sd_s * g * fr
    s2_m, s2_sd = s2_mean * fr, params.s2_sd_s * g * fr
    sys_m = max((sys_s - s1_mean) * fr, 1.0)
    sys_sd = params.systole_sd_s * fr
    dia_m = max((period - sys_s - s2_mean) * fr, 1.0)
    dia_sd = max(params.diastole_sd_frac * dia_m, params.diastole_sd_min_s * fr)
    means = np.array([s1_m, sys_m, s2_m, dia_m])
    sds = np.maximum(np.array([s1_sd, sys_sd, s2_sd, dia_sd]), 0.5)
    d_max = int(math.ceil(float(np.max(means + 4.0 * sds)))) + 1
    # discretised Gaussian log pmf over 1..d_max frames, normalised, the four states at once
    d = np.arange(1, d_max + 1, dtype=np.float64)
    lp = -0.5 * ((d[None, :] - means[:, None]) / sds[:, None]) ** 2
    top = lp.max(axis=1, keepdims=True)
    lp -= np.log(np.exp(lp - top).sum(axis=1, keepdims=True)) + top
    p = np.exp(lp)
    surv = np.cumsum(p[:, ::-1], axis=1)[:, ::-1]  # P(D >= d)
    mean_d = np.sum(p * d[None, :], axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        log_surv = np.log(surv / mean_d)
    return np.ascontiguousarray(lp), np.ascontiguousarray(log_surv)


# ======================================================================================
# Segments
# ======================================================================================
@dataclass(frozen=True, slots=True)
class Segment:
    """One heart-sound state interval.

    Attributes
    ----------
    start, end : float
        Seconds from the start of the stream/file (``end`` exclusive).
    state : str
        ``"S1"``, ``"systole"``, ``"S2"`` or ``"diastole"``.
    """

    start: float
    end: float
    state: str

    def to_dict(self) -> dict[str, float | str]:
        """``{"start": s, "end": s, "state": name}``."""
        return {"start": self.start, "end": self.end, "state": self.state}


def states_to_segments(
    states: ArrayLike, t0: float = 0.0, frame_rate: float = FRAME_RATE, t_max: float | None = None
) -> list[Segment]:
    """Run-length encode per-frame states (0..3, -1 = none) into :class:`Segment` objects.

    A frame ``k`` covers ``[t0 + (k - 0.5)/fr, t0 + (k + 0.5)/fr)``; times are clipped to
    ``[0, t_max]``.

    Examples
    --------
    >>> states_to_segments([0, 0, 1, 1, 1])[1]
    Segment(start=0.03, end=0.09, state='systole')
    """
    s = np.asarray(states, dtype=np.int64)
    out: list[Segment] = []
    if s.size == 0:
        return out
    change = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [s.size]))
    for a, b in zip(starts, ends, strict=True):
        st = int(s[a])
        if st < 0:
            continue
        t_a = max(0.0, t0 + (a - 0.5) / frame_rate)
        t_b = t0 + (b - 0.5) / frame_rate
        if t_max is not None:
            t_b = min(t_b, t_max)
        if t_b > t_a:
            out.append(Segment(round(float(t_a), 6), round(float(t_b), 6), STATE_NAMES[st]))
    return out


def shift_s1_boundaries(
    segments: list[Segment], shift_s: float, t_max: float | None = None
) -> list[Segment]:
    """Move every S1 sound ``shift_s`` s later, keeping the segmentation contiguous.

    The HSMM is cyclic (S1 -> systole -> S2 -> diastole -> S1), so each segment knows its
    neighbours from its own state: an S1 moves as a whole, a systole's start (the S1 that
    precedes it) and a diastole's end (the S1 that follows it) move with it.  The result
    does not depend on how the segments were batched, so the offline and streaming paths
    stay identical.  Times are clipped to ``[0, t_max]``; a segment that vanishes is dropped.

    The shipped parameters set ``extra["s1_shift_s"]`` = 0.01 (half a 50 Hz frame): held out,
    decoded S1 centres sit 9 ms before the hand-corrected references in every database (the
    references inherit the frame convention of the Springer segmentations they corrected);
    see ``models/pcg_segmentation/README.md`` for the measured effect.  S2 is not moved: the
    same shift lowered S2 F1 on three of five databases.

    Examples
    --------
    >>> segs = [Segment(0.0, 0.1, "S1"), Segment(0.1, 0.3, "systole")]
    >>> shift_s1_boundaries(segs, 0.01)
    [Segment(start=0.01, end=0.11, state='S1'), Segment(start=0.11, end=0.3, state='systole')]
    """
    if shift_s == 0.0:
        return segments
    out: list[Segment] = []
    for g in segments:
        a, b = g.start, g.end
        if g.state == "S1":
            a, b = a + shift_s, b + shift_s
        elif g.state == "systole":
            a = a + shift_s
        elif g.state == "diastole":
            b = b + shift_s
        a = max(0.0, a)
        if t_max is not None:
            b = min(b, t_max)
        if b > a:
            out.append(Segment(round(float(a), 6), round(float(b), 6), g.state))
    return out


def expected_systolic_interval(hr_bpm: float) -> float:
    """Expected S1-onset to S2-onset interval (s) at a heart rate, from Weissler's QS2 law.

    Electromechanical systole QS2 = 0.546 - 0.0021 * HR s (Weissler, Harris & Schoenfeld,
    "Systolic time intervals in heart failure in man", Circulation 37:149-159, 1968, men;
    women 0.549 - 0.0020 HR) minus the Q-to-S1-onset delay (about 0.04 s): systole is nearly
    constant while diastole shrinks with the heart rate.  The linear law is used between
    30 and 150 bpm and held constant outside.

    Examples
    --------
    >>> round(expected_systolic_interval(60.0), 3)
    0.38
    """
    return 0.546 - 0.0021 * min(max(float(hr_bpm), 30.0), 150.0) - 0.04


def _plausible_systole(hr_bpm: float, sys_s: float, params: PCGSegParams) -> bool:
    """Whether a heart-rate candidate's systolic interval fits the systole duration model.

    A halved heart rate (two beats taken as one cycle) shows a systolic interval far longer
    than :func:`expected_systolic_interval` (more than ``extra["systole_gate_s"]``, default
    0.15 s); such candidates are not decoded.
    """
    tol = float(params.extra.get("systole_gate_s", 0.15))
    # one-sided: the autocorrelation's systolic lag often sits at its 0.2 s search floor
    return sys_s - expected_systolic_interval(hr_bpm) <= tol


def _decode_best(
    log_b: FloatArray, params: PCGSegParams, candidates: list[tuple[float, float, float]],
    forced_start: int, refine_systole: bool = False,
) -> tuple[IntArray, float, float, float]:
    """Decode with each heart-rate candidate; keep the most likely path.

    With ``refine_systole``, the winning candidate's systolic interval is then varied by
    each of ``params.extra["sys_offsets_s"]`` (none by default) and the most likely of those
    paths replaces it when its log score is higher by more than
    ``params.extra["sys_switch_nats_per_s"]`` per second of window (default 0): the
    autocorrelation's systolic lag is coarse (it cannot tell systole from diastole when they
    are close, and falls back to :func:`expected_systolic_interval` at the ends of its
    range), while the tight systole duration model then fixes every S2 to it.

    Returns (states, heart rate, systolic interval, log score).
    """
    best: tuple[IntArray, float, float, float] | None = None
    log_pi = np.full(4, -math.log(4.0))
    use = candidates if params.extra.get("multi_hr", True) else candidates[:1]
    if len(use) > 1:
        use = [c for c in use if _plausible_systole(c[0], c[1], params)] or use[:1]

    def run(hr: float, sys_s: float) -> tuple[IntArray, float, float, float]:
        log_pd, log_surv = _duration_tables(params, hr, sys_s)
        states = np.empty(log_b.shape[0], dtype=np.int64)
        sc = float(_k._hsmm_viterbi(log_b, log_pd, log_surv, log_pi, int(forced_start), states))
        return states, hr, sys_s, sc

    for hr, sys_s, _ in use:
        res = run(hr, sys_s)
        if best is None or res[3] > best[3]:
            best = res
    assert best is not None
    return _refine_systole(log_b, params, best, forced_start) if refine_systole else best


def _refine_systole(
    log_b: FloatArray, params: PCGSegParams, best: tuple[IntArray, float, float, float],
    forced_start: int,
) -> tuple[IntArray, float, float, float]:
    """The systolic-interval step of :func:`_decode_best` (``refine_systole``)."""
    offsets = params.extra.get("sys_offsets_s", ())
    if not offsets:
        return best
    log_pi = np.full(4, -math.log(4.0))
    alt: tuple[IntArray, float, float, float] | None = None
    for d in offsets:
        hr, sys_s = best[1], best[2] + float(d)
        log_pd, log_surv = _duration_tables(params, hr, sys_s)
        states = np.empty(log_b.shape[0], dtype=np.int64)
        sc = float(_k._hsmm_viterbi(log_b, log_pd, log_surv, log_pi, int(forced_start), states))
        if alt is None or sc > alt[3]:
            alt = (states, hr, sys_s, sc)
    margin = float(params.extra.get("sys_switch_nats_per_s", 0.0))
    if alt is not None and alt[3] - best[3] > margin * log_b.shape[0] / FRAME_RATE:
        return alt
    return best


def _decode(
    frames: FloatArray, params: PCGSegParams, hr_bpm: float, sys_s: float, forced_start: int
) -> IntArray:
    log_b = _log_emissions(emission_features(frames), params)
    return _decode_best(log_b, params, [(hr_bpm, sys_s, 1.0)], forced_start)[0]


def _cycle_stats(segs: list[Segment]) -> tuple[float, float, float]:
    """Median S1-S1 period, S1-onset->S2-onset and S2-onset->S1-onset from segments."""
    s1 = [s.start for s in segs if s.state == "S1"]
    s2 = [s.start for s in segs if s.state == "S2"]
    if len(s1) < 2:
        return math.nan, math.nan, math.nan
    periods, sys_i, dia_i = [], [], []
    s2a = np.asarray(s2)
    for a, b in zip(s1[:-1], s1[1:], strict=True):
        inside = s2a[(s2a > a) & (s2a < b)]
        if inside.size == 1:
            periods.append(b - a)
            sys_i.append(inside[0] - a)
            dia_i.append(b - inside[0])
    if not periods:
        return math.nan, math.nan, math.nan
    return float(np.median(periods)), float(np.median(sys_i)), float(np.median(dia_i))


@dataclass(frozen=True, slots=True)
class PCGAnalysis:
    """Offline result of :func:`analyze_signal`."""

    segments: list[Segment]
    heart_rate_bpm: float
    systolic_interval_s: float
    diastolic_interval_s: float
    quality: float
    duration_s: float
    fs: int


def _quality(periodicity: float, rms: float) -> float:
    """Quality index in [0, 1]: envelope periodicity, zero for a silent input."""
    if not rms > 1e-6:
        return 0.0
    return float(min(1.0, max(0.0, periodicity)))


def analyze_signal(
    audio: ArrayLike, fs: int, params: PCGSegParams | None = None
) -> PCGAnalysis:
    """Segment a whole recording and summarise it (heart rate, intervals, quality).

    Heart-rate candidates and the systolic interval come from the envelope autocorrelation of
    the whole recording (they set the duration model; the most likely decoding wins, see
    :func:`_decode_best`); the last decoded segment, cut by the end of the recording, is not
    reported (as in :class:`PCGSegmenter`); the reported heart rate is 60 / the median decoded S1-S1 period (the autocorrelation estimate
    when fewer than two complete cycles are decoded), and the systolic (S1 onset -> S2 onset)
    and diastolic (S2 onset -> next S1 onset) intervals are medians over the decoded cycles.
    A silent input (band-passed RMS < 1e-6 of full scale) gives no segments and quality 0.

    Examples
    --------
    >>> import numpy as np
    >>> a = analyze_signal(np.zeros(4000), 2000)
    >>> (a.segments, a.quality)
    ([], 0.0)
    """
    p = _default_params() if params is None else params
    fs_i = _check_fs(fs)
    xs = _as_samples(audio, "audio")
    frames = extract_frames(xs, fs_i)
    return analyze_frames(frames, xs.shape[0] / fs_i, fs_i, p)


def analyze_frames(
    frames: ArrayLike, duration_s: float, fs: int, params: PCGSegParams | None = None
) -> PCGAnalysis:
    """:func:`analyze_signal` on precomputed :func:`extract_frames` output.

    Examples
    --------
    >>> import numpy as np
    >>> analyze_frames(np.zeros((100, 5)), 2.0, 2000).quality
    0.0
    """
    p = _default_params() if params is None else params
    f = np.ascontiguousarray(np.asarray(frames, dtype=np.float64))
    if f.ndim != 2 or f.shape[1] != N_CHANNELS:
        raise DSPError(f"frames must have shape (n, {N_CHANNELS}), got {f.shape}")
    rms = math.sqrt(float(np.mean(f[:, 1] ** 2))) if f.shape[0] else 0.0
    cands = heart_rate_candidates(f[:, 0], p) if f.shape[0] else []
    q = _quality(max((c[2] for c in cands), default=0.0), rms)
    if q <= 0.0 or not cands:
        return PCGAnalysis([], math.nan, math.nan, math.nan, q, duration_s, fs)
    log_b = _log_emissions(emission_features(f), p)
    states, hr, _, _ = _decode_best(log_b, p, cands, -1, refine_systole=True)
    # the last segment is cut by the end of the recording (its end, hence a sound's centre,
    # is unknown): not reported, as the streaming segmenter never publishes it either
    segs = shift_s1_boundaries(states_to_segments(states, t_max=duration_s)[:-1],
                               float(p.extra.get("s1_shift_s", 0.0)), duration_s)
    period, sys_i, dia_i = _cycle_stats(segs)
    if math.isfinite(period) and period > 0:
        hr = 60.0 / period  # decoded cycles agree better with the ECG than the raw estimate
    return PCGAnalysis(segs, hr, sys_i, dia_i, q, duration_s, fs)


def segment(audio: ArrayLike, fs: int, params: PCGSegParams | None = None) -> list[Segment]:
    """Offline S1/systole/S2/diastole segmentation of a whole recording.

    Examples
    --------
    >>> import numpy as np
    >>> segment(np.zeros(2000), 2000)
    []
    """
    return analyze_signal(audio, fs, params).segments


# ======================================================================================
# Streaming segmenter
# ======================================================================================
@dataclass(frozen=True, slots=True)
class PCGWindowStats:
    """Per-window summary published by :class:`PCGSegmenter`.

    Attributes
    ----------
    t_end : float
        Stream time (s) of the window's last frame.
    heart_rate_bpm, systolic_interval_s, diastolic_interval_s : float
        Autocorrelation estimates over the window (NaN when unknown).
    quality : float
        Envelope periodicity in [0, 1]; 0 for silence.
    """

    t_end: float
    heart_rate_bpm: float
    systolic_interval_s: float
    diastolic_interval_s: float
    quality: float


_SYS_MEMO_HOPS = 8
"""The streaming segmenter re-runs the systolic-interval choice (:func:`_refine_systole`) at
least every this many updates, and whenever the winning heart-rate candidate changes."""


class PCGSegmenter:
    """Streaming S1/systole/S2/diastole segmentation with a fixed publication lag.

    Every ``hop_s`` of frames, the last ``window_s`` of frames set the feature normalisation,
    heart rate and systolic interval; the HSMM is decoded from the end of the last published
    segment (forced to start there with the next state) to the newest frame, and the segments
    that end at least ``lag_s`` before the newest frame are published (final).  When quality
    drops below ``min_quality`` or nothing could be published for a whole window, the chain
    restarts with a free (left-censored) first segment.

    Parameters
    ----------
    fs : int
        Input sample rate (Hz).
    params : PCGSegParams, optional
        Trained parameters; default: the shipped model.
    window_s, hop_s, lag_s : float
        Analysis window, update period and publication lag (seconds).
    min_quality : float
        Windows with a lower quality publish no segments.

    Examples
    --------
    >>> import numpy as np
    >>> seg = PCGSegmenter(2000)
    >>> seg.process(np.zeros(2000 * 12))
    []
    >>> seg.stats.quality
    0.0
    """

    def __init__(
        self,
        fs: int,
        params: PCGSegParams | None = None,
        window_s: float = 8.0,
        hop_s: float = 1.0,
        lag_s: float = 2.0,
        min_quality: float = 0.1,
    ) -> None:
        self.params = _default_params() if params is None else params
        for name, val, lo in (("window_s", window_s, 3.0), ("hop_s", hop_s, 0.02),
                              ("lag_s", lag_s, 0.5)):
            if not (isinstance(val, int | float) and math.isfinite(val) and val >= lo):
                raise DSPError(f"{name} must be a finite number >= {lo} s, got {val!r}")
        if lag_s + hop_s > window_s:
            raise DSPError(
                f"lag_s + hop_s must not exceed window_s, got {lag_s} + {hop_s} > {window_s}"
            )
        self.fs = _check_fs(fs)
        self.window_frames = int(round(window_s * FRAME_RATE))
        self.hop_frames = max(1, int(round(hop_s * FRAME_RATE)))
        self.lag_frames = int(round(lag_s * FRAME_RATE))
        self.min_quality = float(min_quality)
        self.front_end = PCGFrontEnd(self.fs)
        self._buf = np.zeros((self.window_frames, N_CHANNELS))
        self._n_frames = 0  # frames received so far
        self._next_update = self.window_frames // 2
        self._published_until = 0  # frame index where the next segment starts
        self._next_state = -1  # state that starts there, -1 = free restart
        self.stats: PCGWindowStats | None = None
        # (heart rate, estimated and chosen-minus-estimated systolic interval, windows used)
        self._sys_memo: tuple[float, float, float, int] | None = None

    @property
    def latency_s(self) -> float:
        """Worst-case delay from a sample to the publication of the segment containing it."""
        return (
            self.front_end.latency_s
            + (self.lag_frames + self.hop_frames) / FRAME_RATE
            + 0.5  # a segment ends at most ~0.5 s after the sample (diastole length)
        )

    def process(self, chunk: ArrayLike) -> list[Segment]:
        """Feed audio; return newly finalised segments (times in s from stream start)."""
        xs = _as_samples(chunk, "chunk")
        frames = self.front_end._process_f64(xs)
        out: list[Segment] = []
        i = 0
        while i < frames.shape[0]:
            take = min(frames.shape[0] - i, self._next_update - self._n_frames)
            if take > 0:
                self._push(frames[i : i + take])
                i += take
            if self._n_frames >= self._next_update:
                out.extend(self._update())
                self._next_update += self.hop_frames
        return out

    def _push(self, f: FloatArray) -> None:
        n = f.shape[0]
        w = self.window_frames
        if n >= w:
            self._buf[:] = f[-w:]
        else:
            self._buf[:-n] = self._buf[n:]
            self._buf[-n:] = f
        self._n_frames += n

    def _update(self) -> list[Segment]:
        n_have = min(self._n_frames, self.window_frames)
        win = self._buf[self.window_frames - n_have :]
        first = self._n_frames - n_have  # global index of win[0]
        p = self.params
        energy = float(np.mean(win[:, 1] ** 2)) if n_have else 0.0
        cands = heart_rate_candidates(win[:, 0], p) if n_have else []
        q = _quality(max((c[2] for c in cands), default=0.0), math.sqrt(energy))
        t_end = (self._n_frames - 1) / FRAME_RATE
        if q < self.min_quality or q <= 0.0 or not cands:
            hr0, sys0 = (cands[0][0], cands[0][1]) if cands else (math.nan, math.nan)
            self.stats = PCGWindowStats(t_end, hr0, sys0, 60.0 / hr0 - sys0, q)
            self._restart()
            return []
        z_all = emission_features(win)
        log_b_all = _log_emissions(z_all, p)
        best = _decode_best(log_b_all, p, cands, -1)
        hr, sys0 = best[1], best[2]
        memo = self._sys_memo
        if (memo is not None and memo[3] < _SYS_MEMO_HOPS and abs(hr - memo[0]) <= 0.01 * memo[0]
                and abs(sys0 - memo[1]) < 0.5 / FRAME_RATE):
            # same winning candidate as a recent window: reuse its systolic-interval choice
            # (saves two window decodes per hop; re-checked at least every _SYS_MEMO_HOPS)
            sys_s = sys0 + memo[2]
            self._sys_memo = (memo[0], memo[1], memo[2], memo[3] + 1)
        else:
            sys_s = _refine_systole(log_b_all, p, best, -1)[2]
            self._sys_memo = (hr, sys0, sys_s - sys0, 1)
        self.stats = PCGWindowStats(t_end, hr, sys_s, 60.0 / hr - sys_s, q)
        if self._next_state < 0 or self._published_until < first:
            start, forced = first, -1
        else:
            start, forced = self._published_until, self._next_state
        if n_have - (start - first) < 2:
            return []
        log_b = np.ascontiguousarray(log_b_all[start - first :])
        states = _decode_best(log_b, p, [(hr, sys_s, q)], forced)[0]
        if states[0] < 0:
            self._restart()
            return []
        cut = self._n_frames - self.lag_frames - start  # publish segments ending before this
        change = np.flatnonzero(np.diff(states)) + 1
        ends = change[change <= cut]
        if ends.size == 0:
            return []
        a0 = int(ends[-1])
        # each run of states[:a0] is one segment; a free restart's first segment is
        # left-censored: do not publish it
        out = states_to_segments(states[:a0], t0=start / FRAME_RATE)
        if forced < 0:
            out = out[1:]
        self._published_until = start + a0
        self._next_state = (int(states[a0 - 1]) + 1) % 4
        return shift_s1_boundaries(out, float(p.extra.get("s1_shift_s", 0.0)))

    def _restart(self) -> None:
        self._next_state = -1

    def flush(self) -> list[Segment]:
        """End of stream: push out pending frames and publish the remaining segments."""
        fe = self.front_end
        n_before = self._n_frames
        total = -(-fe.state.n_in * FRAME_RATE // self.fs)
        frames = fe._process_f64(np.zeros(fe.flush_samples()))
        frames = frames[: max(0, total - n_before)]
        out: list[Segment] = []
        if frames.shape[0]:
            self._next_update = n_before + frames.shape[0] + 10**9
            self._push(frames)
        self.lag_frames, lag = 0, self.lag_frames
        try:
            out.extend(self._update())
        finally:
            self.lag_frames = lag
        return out
