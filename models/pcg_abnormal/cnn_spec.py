"""Per-cycle CNN of the shipped abnormality classifier (issue 16): state-warped log spectrograms.

Every complete heart cycle found by the LR-HSMM segmenter (:func:`telediag.dsp.pcg.analyze_signal`)
becomes a ``(N_BANDS, N_FRAMES)`` log band-power image: the S1, systole, S2 and diastole
intervals are each resampled to a fixed number of frames (:data:`STATE_FRAMES`), so systolic and
diastolic murmurs land on the same columns whatever the heart rate.  The power comes from a
64 ms Hann STFT (5 ms hop) of the 25-400 Hz band-passed 1 kHz signal, pooled into
:data:`BAND_EDGES_HZ`.

Device invariance:

* per-recording normalisation: the log power of each band minus its median over the
  recording's cycles -- a linear, time-invariant stethoscope response (EQ, tilt, gain) adds a
  constant per band in the log domain and cancels exactly;
* what a fixed response does *not* cancel is simulated at training time
  (:func:`augment_log_power`): random EQ (tilt +-6 dB/octave, two bumps +-9 dB) applied *before*
  additive noise (white or brown, 10-40 dB SNR), a random low-pass (band-limit of a cheaper
  device / resampling, 150-450 Hz) and gain;

A recording's probability is the sigmoid of the mean cycle logit.  Cross-validation: leave one
database out over PhysioNet 2016 a, b, c, d, f *and* CirCor (each trained on the other five,
CirCor murmur Present -> abnormal), plus stratified 5-fold over all recordings.  The runtime
(:class:`telediag.models.pcg_abnormal.PCGClassifier`) needs only NumPy/SciPy and ONNX Runtime
(:func:`cycle_log_power`, :func:`normalise_recording`, ``pcg_abnormal_cnn.onnx``); training
(``--final``) and the cross-validation need torch (``train`` extra), never run in CI.

Training and cross-validation: :mod:`telediag.models.pcg_abnormal.cnn_train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.pcg import Segment, analyze_signal
from telediag.models.pcg_abnormal.features import FEATURE_FS, _cycles, _prepare

__all__ = ["BAND_EDGES_HZ", "N_BANDS", "N_FRAMES", "STATE_FRAMES", "augment_log_power",
           "cycle_log_power", "normalise_recording", "CNN_CARD", "CNN_ONNX",
           "MAX_CYCLES"]

BAND_EDGES_HZ: tuple[float, ...] = (25.0, 35.0, 45.0, 57.0, 70.0, 85.0, 100.0, 120.0, 145.0,
                                    175.0, 210.0, 255.0, 310.0, 400.0)
"""Edges (Hz) of the log-spaced bands."""
N_BANDS = len(BAND_EDGES_HZ) - 1
STATE_FRAMES: tuple[int, int, int, int] = (8, 16, 8, 24)
"""Frames given to S1, systole, S2 and diastole."""
N_FRAMES = sum(STATE_FRAMES)
_WIN = 64
_HOP = 5
_NFFT = 128
_FREQ = np.fft.rfftfreq(_NFFT, 1.0 / FEATURE_FS)
_BAND_W = np.stack([((_FREQ >= lo) & (_FREQ < hi)).astype(np.float64)
                    for lo, hi in zip(BAND_EDGES_HZ[:-1], BAND_EDGES_HZ[1:], strict=True)])
_CENTRES = np.sqrt(np.array(BAND_EDGES_HZ[:-1]) * np.array(BAND_EDGES_HZ[1:]))
MAX_CYCLES = 40
"""At most this many cycles (the first ones) are kept per recording."""


def _band_power(y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Band power ``(N_BANDS, n_frames)`` at 200 Hz frames (frame k centred on sample 5k)."""
    pad = np.pad(y, (_WIN // 2, _WIN // 2))
    n = (pad.size - _WIN) // _HOP + 1
    idx = np.arange(_WIN)[None, :] + _HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(pad[idx] * np.hanning(_WIN), _NFFT, axis=1)) ** 2
    bp: NDArray[np.float64] = (spec @ _BAND_W.T).T / _BAND_W.sum(axis=1)[:, None]
    return bp


def cycle_log_power(audio: Any, fs: int, segments: list[Segment] | None = None
                    ) -> tuple[NDArray[np.float32], float]:
    """State-warped log10 band power of each complete cycle, and the segmenter quality.

    Returns ``(cycles, quality)``: ``cycles`` is ``float32 (n, N_BANDS, N_FRAMES)`` (not
    normalised), ``n <= MAX_CYCLES`` (may be 0).
    """
    x, y, fs_i = _prepare(audio, fs)
    if segments is None:
        ana = analyze_signal(x, fs_i)
        segs, q = list(ana.segments), float(ana.quality)
    else:
        segs, q = list(segments), float("nan")
    bp = _band_power(y)
    fr = np.arange(bp.shape[1]) * _HOP
    out = []
    for c in _cycles(segs, y.size)[:MAX_CYCLES]:
        t = np.concatenate([a + (np.arange(k) + 0.5) * (b - a) / k
                            for (a, b), k in zip(c, STATE_FRAMES, strict=True)])
        img = np.stack([np.interp(t, fr, bp[i]) for i in range(N_BANDS)])
        out.append(np.log10(img + 1e-10))
    arr = np.asarray(out, dtype=np.float32).reshape(-1, N_BANDS, N_FRAMES)
    return arr, q


def augment_log_power(L: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """One random device applied to the log10 band power of one recording's cycles."""
    lf = np.log2(_CENTRES / 150.0)
    g = rng.uniform(-6.0, 6.0) * lf
    for _ in range(2):
        c = np.log2(np.exp(rng.uniform(np.log(30.0), np.log(400.0))) / 150.0)
        w = rng.uniform(0.4, 1.5)
        g = g + rng.uniform(-9.0, 9.0) * np.exp(-0.5 * ((lf - c) / (w / 2.355)) ** 2)
    if rng.random() < 0.5:  # band limit (cheap device, low sample rate): 24 dB/octave above fc
        fc = np.exp(rng.uniform(np.log(150.0), np.log(450.0)))
        g = g - 24.0 * np.maximum(np.log2(_CENTRES / fc), 0.0)
    P = 10.0 ** (L.astype(np.float64) + g[None, :, None] / 10.0)
    sig = float(np.mean(P))
    bw = np.diff(BAND_EDGES_HZ)
    shape = bw if rng.random() < 0.5 else bw / _CENTRES**2  # white or brown
    shape = shape / shape.sum() * N_BANDS
    noise = sig / 10.0 ** (rng.uniform(10.0, 40.0) / 10.0) * shape
    noise = noise[None, :, None] * rng.exponential(1.0, size=P.shape)  # chi2-ish per frame
    return np.log10(P + noise + 1e-10).astype(np.float32)


NORMALISATIONS = ("median", "range")
"""Per-recording normalisations of the cycle images (``card_cnn.json`` ``inputs.normalisation``)."""


def normalise_recording(L: NDArray[np.float32], mode: str = "median") -> NDArray[np.float32]:
    """Per-recording normalisation of one recording's cycles ``(n, N_BANDS, N_FRAMES)``.

    ``"median"``: each band's median over the recording removed (log10 units; a fixed
    stethoscope response and the gain cancel), clipped to +-4.  ``"range"``: the same, then
    divided by the recording's dynamic range - the mean over bands of the 10-90 % percentile
    spread of the log band power (floor 0.1) - so that a quieter or noisier device (a
    higher diastolic noise floor shrinks every contrast in the log domain) looks alike to
    first order (issue 16, third session).
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    if L.shape[0] == 0:
        return L
    med = np.median(L, axis=(0, 2), keepdims=True)
    Z = L - med
    if mode == "range":
        lo, hi = np.percentile(L, [10.0, 90.0], axis=(0, 2))
        Z = Z / max(float(np.mean(hi - lo)), 0.1)
    return np.clip(Z, -4.0, 4.0).astype(np.float32)


CNN_ONNX = Path(__file__).with_name("pcg_abnormal_cnn.onnx")
CNN_CARD = Path(__file__).with_name("card_cnn.json")
