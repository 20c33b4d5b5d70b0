"""Recording-level features for heart-sound abnormality classification (NumPy/SciPy only).

The recording is resampled to :data:`FEATURE_FS` (1000 Hz, :data:`telediag.dsp.pcg.ANALYSIS_FS`)
whatever its input rate, band-passed 25-400 Hz, normalised to unit RMS, and segmented into
S1 / systole / S2 / diastole by :func:`telediag.dsp.pcg.analyze_signal` (Springer et al. 2016
LR-HSMM).  Complete cycles (S1 -> systole -> S2 -> diastole -> next S1) then give:

* **timing** (Liu et al. 2016, Physiol. Meas. 37(12):2181, table 5; used by Potes et al. 2016):
  mean and SD over cycles of the RR, S1, systole, S2 and diastole durations, of the
  systole/RR, diastole/RR and systole/diastole ratios, and of the per-cycle mean-absolute
  amplitude ratios systole/S1 and diastole/S2;
* **amplitude shape**: median over cycles of the skewness and kurtosis of each state;
* **spectra per state** (after Potes et al. 2016, "Ensemble of feature-based and deep
  learning-based classifiers for detection of abnormal heart sounds", CinC 43, which used
  per-state band powers and MFCCs): the log power in 9 bands 25-400 Hz of each state,
  relative to the cycle's total S1+S2 power (gain-free), median and IQR over cycles;
  13 MFCCs per state (median over cycles); the per-band systole/S1 and diastole/S2 power
  ratios (murmur indices), median over cycles;
* **whole-recording** (segmentation-free, so a failed segmentation still leaves signal):
  relative log band powers, spectral centroid and flatness, envelope periodicity (the
  segmenter's quality index), heart rate, fraction of the record covered by complete
  cycles, number of cycles (log).

Values that cannot be computed (fewer than two complete cycles) are NaN; the ONNX graph
imputes them with the training medians.  Every feature is invariant to the input gain.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal as _sig
from scipy.fft import dct, rfft

from telediag.dsp.pcg import ANALYSIS_FS, PCGAnalysis, PCGSegParams, analyze_signal, resample
from telediag.errors import DSPError

__all__ = [
    "FEATURE_FS",
    "FEATURE_VERSION",
    "FEATURE_NAMES",
    "MIN_DURATION_S",
    "N_FEATURES",
    "recording_features",
]

FloatArray = NDArray[np.float64]

FEATURE_FS = ANALYSIS_FS
"""Analysis rate (Hz) every input is resampled to before features are computed."""
FEATURE_VERSION = 4
"""Bumped whenever the feature values change (invalidates training caches); 4: the
segmentation of issue 5 (systole model, tighter duration spreads)."""
MIN_DURATION_S = 2.0
"""Shortest accepted recording (s): at least ~2 heart cycles at 60 bpm."""
SILENCE_RMS = 1e-6
"""Band-passed RMS (full scale = 1) below which a recording is rejected as silent."""

_STATES = ("S1", "systole", "S2", "diastole")
_BAND_EDGES = (25.0, 45.0, 65.0, 85.0, 105.0, 125.0, 150.0, 200.0, 300.0, 400.0)
_N_BANDS = len(_BAND_EDGES) - 1
_NFFT = 256
_N_MEL = 20
_N_MFCC = 13
_EPS = 1e-12


def _names() -> tuple[str, ...]:
    n: list[str] = []
    for q in ("rr", "s1", "sys", "s2", "dia", "sys_rr", "dia_rr", "sys_dia", "amp_sys_s1",
              "amp_dia_s2"):
        n += [f"t_{q}_mean", f"t_{q}_sd"]
    for s in _STATES:
        n += [f"a_{s}_skew", f"a_{s}_kurt"]
    for s in _STATES:
        n += [f"b_{s}_{i}_med" for i in range(_N_BANDS)]
        n += [f"b_{s}_{i}_iqr" for i in range(_N_BANDS)]
    for s in _STATES:
        n += [f"mfcc_{s}_{i}" for i in range(_N_MFCC)]
    n += [f"murmur_sys_{i}" for i in range(_N_BANDS)]
    n += [f"murmur_dia_{i}" for i in range(_N_BANDS)]
    n += [f"murmur_sys_{i}_p25" for i in range(_N_BANDS)]
    n += [f"murmur_dia_{i}_p25" for i in range(_N_BANDS)]
    n += [f"r_mfcc_{i}_mean" for i in range(_N_MFCC)]
    n += [f"r_mfcc_{i}_sd" for i in range(_N_MFCC)]
    n += [f"r_dmfcc_{i}_sd" for i in range(_N_MFCC)]
    n += [f"r_band_{i}" for i in range(_N_BANDS)]
    n += ["r_centroid", "r_flatness", "r_quality", "r_hr", "r_cycle_cover", "r_log_ncycles"]
    return tuple(n)


FEATURE_NAMES: tuple[str, ...] = _names()
"""Names of the entries of :func:`recording_features`, in order."""
N_FEATURES = len(FEATURE_NAMES)


def _bandpass() -> NDArray[np.float64]:
    return np.asarray(_sig.butter(4, [25.0, 400.0], btype="bandpass", fs=FEATURE_FS,
                                  output="sos"))


_SOS = _bandpass()
_FREQS = np.fft.rfftfreq(_NFFT, 1.0 / FEATURE_FS)
_BAND_MASKS = np.stack([(_FREQS >= lo) & (_FREQS < hi)
                        for lo, hi in zip(_BAND_EDGES[:-1], _BAND_EDGES[1:], strict=True)])


def _mel_fb() -> FloatArray:
    """Triangular mel filterbank 25-400 Hz on the ``_NFFT`` grid (Davis & Mermelstein 1980)."""
    def mel(f: FloatArray | float) -> FloatArray:
        return np.asarray(2595.0 * np.log10(1.0 + np.asarray(f) / 700.0))

    def hz(m: FloatArray) -> FloatArray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    pts = hz(np.linspace(mel(25.0), mel(400.0), _N_MEL + 2))
    fb = np.zeros((_N_MEL, _FREQS.size))
    for i in range(_N_MEL):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        up = (_FREQS - lo) / (c - lo)
        dn = (hi - _FREQS) / (hi - c)
        fb[i] = np.maximum(0.0, np.minimum(up, dn))
    return fb


_MEL = _mel_fb()


def _psd(seg: FloatArray) -> FloatArray:
    """Power spectrum of one state segment: Hann-windowed, zero-padded or Welch-averaged."""
    n = seg.size
    if n <= _NFFT:
        w = np.hanning(n + 2)[1:-1] if n > 2 else np.ones(n)
        x = (seg - seg.mean()) * w
        p = np.abs(rfft(x, _NFFT)) ** 2 / max(float(np.sum(w * w)), _EPS)
        return np.asarray(p)
    _, p = _sig.welch(seg, fs=FEATURE_FS, window="hann", nperseg=_NFFT, noverlap=_NFFT // 2,
                      detrend="constant", scaling="spectrum")
    return np.asarray(p) * _NFFT  # comparable scale to the short-segment branch


def _frame_mfcc(y: FloatArray) -> list[float]:
    """Segmentation-free MFCCs of 256 ms frames (hop 64 ms): mean, SD, SD of the delta."""
    _, _, z = _sig.stft(y, fs=FEATURE_FS, window="hann", nperseg=_NFFT,
                        noverlap=_NFFT - _NFFT // 4, boundary=None, padded=False)
    pw = np.abs(z) ** 2  # (freq, frames)
    mel = np.log10(_MEL @ pw + _EPS)
    c = np.asarray(dct(mel, type=2, norm="ortho", axis=0)[:_N_MFCC])
    dc = np.diff(c, axis=1) if c.shape[1] > 1 else np.zeros_like(c)
    return list(c.mean(axis=1)) + list(c.std(axis=1)) + list(dc.std(axis=1))


def _skew_kurt(x: FloatArray) -> tuple[float, float]:
    m = x.mean()
    d = x - m
    v = float(np.mean(d * d))
    if v <= _EPS:
        return math.nan, math.nan
    return float(np.mean(d**3) / v**1.5), float(np.mean(d**4) / v**2)


def _cycles(segs: list, n: int) -> list[list[tuple[int, int]]]:
    """Complete cycles as four (start, end) sample ranges at FEATURE_FS, plus next S1 onset."""
    out: list[list[tuple[int, int]]] = []
    k = 0
    while k + 4 < len(segs):
        win = segs[k : k + 5]
        if [s.state for s in win] == ["S1", "systole", "S2", "diastole", "S1"]:
            rng = []
            for s in win[:4]:
                a = int(round(s.start * FEATURE_FS))
                b = min(n, int(round(s.end * FEATURE_FS)))
                rng.append((a, b))
            if all(b - a >= 4 for a, b in rng):
                out.append(rng)
            k += 4
        else:
            k += 1
    return out


def _stat(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2:
        return math.nan, math.nan
    return float(a.mean()), float(a.std())


def _prepare(audio: ArrayLike, fs: int) -> tuple[FloatArray, FloatArray, int]:
    """Validate; return (raw float audio, band-passed unit-RMS signal at FEATURE_FS, fs)."""
    if isinstance(fs, bool) or not isinstance(fs, (int, np.integer)) or fs < 800:
        raise DSPError(f"fs must be an integer sample rate >= 800 Hz, got {fs!r}")
    fs_i = int(fs)
    x = np.asarray(audio)
    if x.ndim != 1:
        raise DSPError(f"audio must be 1-D (mono), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        x = x.astype(np.float64) / float(max(abs(info.min), info.max))
    else:
        x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise DSPError("audio must be finite, got NaN or inf samples")
    dur = x.size / fs_i
    if dur < MIN_DURATION_S:
        raise DSPError(
            f"audio must be at least {MIN_DURATION_S} s long, got {dur:.3f} s ({x.size} samples "
            f"at {fs_i} Hz)"
        )
    xc = x - x.mean()  # before resampling, so a DC offset leaves no edge transients
    y = resample(xc, fs_i, FEATURE_FS) if fs_i != FEATURE_FS else xc
    y = _sig.sosfiltfilt(_SOS, y - y.mean())
    rms = float(np.sqrt(np.mean(y * y)))
    if not rms > SILENCE_RMS:
        raise DSPError(
            f"audio is silent: band-passed (25-400 Hz) RMS must exceed {SILENCE_RMS:g} of full "
            f"scale, got {rms:.3g}"
        )
    return x, y / rms, fs_i


def recording_features(
    audio: ArrayLike, fs: int, params: PCGSegParams | None = None,
    analysis: PCGAnalysis | None = None,
) -> NDArray[np.float32]:
    """Feature vector of one heart-sound recording (see the module docstring).

    Parameters
    ----------
    audio : array_like
        Mono PCG, any rate >= 800 Hz, at least :data:`MIN_DURATION_S` long. Integer arrays are
        scaled to full scale = 1; the result does not depend on the gain.
    fs : int
        Sample rate of ``audio`` in Hz.
    params : PCGSegParams, optional
        Segmentation parameters (default: the shipped ones).
    analysis : PCGAnalysis, optional
        :func:`telediag.dsp.pcg.analyze_signal` of the same ``audio`` when the caller has it
        already (it is then not recomputed; ``params`` is ignored).

    Returns
    -------
    numpy.ndarray
        ``float32`` vector of length :data:`N_FEATURES`; NaN where undefined.

    Raises
    ------
    telediag.errors.DSPError
        Bad rate, shape, non-finite samples, too short, or silent.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> recording_features(rng.standard_normal(8000), 2000).shape == (N_FEATURES,)
    True
    """
    x, y, fs_i = _prepare(audio, fs)
    ana = analyze_signal(x, fs_i, params) if analysis is None else analysis
    n = y.size
    cyc = _cycles(list(ana.segments), n)

    t: dict[str, list[float]] = {k: [] for k in ("rr", "s1", "sys", "s2", "dia", "sys_rr",
                                                 "dia_rr", "sys_dia", "amp_sys_s1",
                                                 "amp_dia_s2")}
    sk: list[list[tuple[float, float]]] = [[] for _ in _STATES]
    bands: list[list[FloatArray]] = [[] for _ in _STATES]
    mfcc: list[list[FloatArray]] = [[] for _ in _STATES]
    mur_sys: list[FloatArray] = []
    mur_dia: list[FloatArray] = []
    covered = 0
    for c in cyc:
        d = [(b - a) / FEATURE_FS for a, b in c]
        rr = d[0] + d[1] + d[2] + d[3]
        covered += c[3][1] - c[0][0]
        t["rr"].append(rr)
        t["s1"].append(d[0])
        t["sys"].append(d[1])
        t["s2"].append(d[2])
        t["dia"].append(d[3])
        t["sys_rr"].append(d[1] / rr)
        t["dia_rr"].append(d[3] / rr)
        t["sys_dia"].append(d[1] / d[3])
        segs = [y[a:b] for a, b in c]
        amp = [float(np.mean(np.abs(s))) for s in segs]
        t["amp_sys_s1"].append(amp[1] / max(amp[0], _EPS))
        t["amp_dia_s2"].append(amp[3] / max(amp[2], _EPS))
        ps = [_psd(s) for s in segs]
        bp = [np.array([p[m].sum() for m in _BAND_MASKS]) + _EPS for p in ps]
        ref = float(bp[0].sum() + bp[2].sum())
        for j in range(4):
            sk[j].append(_skew_kurt(segs[j]))
            bands[j].append(np.log10(bp[j] / ref))
            mel = np.log10(_MEL @ ps[j] + _EPS)
            mfcc[j].append(np.asarray(dct(mel, type=2, norm="ortho")[:_N_MFCC]))
        mur_sys.append(np.log10(bp[1] / bp[0]))
        mur_dia.append(np.log10(bp[3] / bp[2]))

    f: list[float] = []
    for k in t:
        f += list(_stat(t[k]))
    ok = len(cyc) >= 2
    for j in range(4):
        if ok:
            a = np.asarray(sk[j])
            f += [float(np.nanmedian(a[:, 0])), float(np.nanmedian(a[:, 1]))]
        else:
            f += [math.nan, math.nan]
    for j in range(4):
        if ok:
            b = np.asarray(bands[j])
            q1, q2, q3 = np.percentile(b, [25, 50, 75], axis=0)
            f += list(q2) + list(q3 - q1)
        else:
            f += [math.nan] * (2 * _N_BANDS)
    for j in range(4):
        f += list(np.median(np.asarray(mfcc[j]), axis=0)) if ok else [math.nan] * _N_MFCC
    for m in (mur_sys, mur_dia):
        f += list(np.median(np.asarray(m), axis=0)) if ok else [math.nan] * _N_BANDS
    for m in (mur_sys, mur_dia):  # a persistent murmur raises even the quieter cycles
        f += list(np.percentile(np.asarray(m), 25, axis=0)) if ok else [math.nan] * _N_BANDS
    f += _frame_mfcc(y)

    # whole recording, segmentation-free
    _, p = _sig.welch(y, fs=FEATURE_FS, window="hann", nperseg=_NFFT, noverlap=_NFFT // 2)
    rb = np.array([p[m].sum() for m in _BAND_MASKS]) + _EPS
    f += list(np.log10(rb / rb.sum()))
    inband = (_FREQS >= 25.0) & (_FREQS <= 400.0)
    pin = p[inband] + _EPS
    f.append(float(np.sum(_FREQS[inband] * pin) / np.sum(pin)))
    f.append(float(np.exp(np.mean(np.log(pin))) / np.mean(pin)))
    f.append(float(ana.quality))
    f.append(float(ana.heart_rate_bpm))
    f.append(covered / n)
    f.append(math.log1p(len(cyc)))
    out = np.asarray(f, dtype=np.float32)
    if out.shape != (N_FEATURES,):  # pragma: no cover - internal consistency
        raise AssertionError(f"feature vector has {out.size} entries, expected {N_FEATURES}")
    return out
