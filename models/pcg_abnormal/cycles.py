"""Per-cycle CNN inputs for heart-sound abnormality classification (NumPy/SciPy only).

After Potes et al. 2016 (C. Potes, S. Parvaneh, A. Rahman, B. Conroy, "Ensemble of
feature-based and deep learning-based classifiers for detection of abnormal heart sounds",
Computing in Cardiology 43, 2016): every complete heart cycle, aligned on its S1 onset, becomes
a fixed-length multichannel input built from four frequency bands (25-45, 45-80, 80-200 and
200-400 Hz).  Here each band is represented by its amplitude envelope (magnitude of the
analytic signal, low-passed at 20 Hz) sampled at :data:`CYCLE_RATE` (50 Hz); a cycle is
:data:`CYCLE_S` (2.5 s = 125 frames) from S1 onset, zero after the next S1 onset.  Each band of
each cycle is divided by its own maximum over the cycle, so the input gain and any fixed
per-band device gain cancel (values in [0, 1]).

The segmentation is :func:`telediag.dsp.pcg.analyze_signal` (the LR-HSMM the engine already
runs); callers that have the segments pass them in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal as _sig

from telediag.dsp.pcg import PCGSegParams, Segment, analyze_signal
from telediag.errors import DSPError
from telediag.models.pcg_abnormal.features import FEATURE_FS, _cycles, _prepare

__all__ = ["BANDS_HZ", "CYCLE_FRAMES", "CYCLE_RATE", "CYCLE_S", "band_envelopes",
           "cycle_inputs", "normalise_cycles"]

BANDS_HZ: tuple[tuple[float, float], ...] = ((25.0, 45.0), (45.0, 80.0), (80.0, 200.0),
                                             (200.0, 400.0))
"""The four band-pass bands (Hz) of Potes et al. 2016."""
CYCLE_RATE = 50
"""Frame rate (Hz) of the per-cycle envelopes."""
CYCLE_S = 2.5
"""Length (s) of one cycle input from its S1 onset (Potes et al. 2016)."""
CYCLE_FRAMES = int(round(CYCLE_S * CYCLE_RATE))
_DEC = FEATURE_FS // CYCLE_RATE
_BAND_SOS = [np.asarray(_sig.butter(4, [lo, hi], btype="bandpass", fs=FEATURE_FS,
                                    output="sos")) for lo, hi in BANDS_HZ]
_LP_SOS = np.asarray(_sig.butter(2, 20.0, btype="lowpass", fs=FEATURE_FS, output="sos"))


def band_envelopes(y: ArrayLike) -> NDArray[np.float64]:
    """Envelopes of the four :data:`BANDS_HZ` bands of a 1000 Hz signal, at 50 Hz.

    Parameters
    ----------
    y : array_like
        1-D signal at :data:`telediag.models.pcg_abnormal.features.FEATURE_FS` (1000 Hz).

    Returns
    -------
    numpy.ndarray
        Shape ``(4, len(y) // 20)``, non-negative.

    Examples
    --------
    >>> import numpy as np
    >>> band_envelopes(np.zeros(1000)).shape
    (4, 50)
    """
    x = np.asarray(y, dtype=np.float64)
    n = x.size // _DEC
    out = np.empty((len(BANDS_HZ), n))
    for i, sos in enumerate(_BAND_SOS):
        b = _sig.sosfiltfilt(sos, x)
        env = _sig.sosfiltfilt(_LP_SOS, np.abs(_sig.hilbert(b)))
        out[i] = np.maximum(env[: n * _DEC].reshape(n, _DEC).mean(axis=1), 0.0)
    return out


def cycle_inputs(
    audio: ArrayLike, fs: int, segments: Sequence[Segment] | None = None,
    params: PCGSegParams | None = None, norm: str = "cycle",
) -> NDArray[np.float32]:
    """S1-aligned per-cycle band-envelope inputs of one recording.

    Parameters
    ----------
    audio : array_like
        Mono PCG at any rate >= 800 Hz, at least 2 s (validated as in
        :func:`~telediag.models.pcg_abnormal.features.recording_features`).
    fs : int
        Sample rate of ``audio`` (Hz).
    segments : sequence of Segment, optional
        S1/systole/S2/diastole segments (s from the first sample) of ``audio``; computed with
        :func:`telediag.dsp.pcg.analyze_signal` when omitted.
    params : PCGSegParams, optional
        Segmentation parameters when ``segments`` is omitted.
    norm : {"cycle", "recording", "none"}
        Normalisation, see :func:`normalise_cycles`.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(n_cycles, 4, CYCLE_FRAMES)``; ``n_cycles`` may be 0.

    Raises
    ------
    telediag.errors.DSPError
        Bad rate, shape, non-finite samples, too short, or silent audio.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(8000)
    >>> cycle_inputs(x, 2000).shape[1:]
    (4, 125)
    """
    x, y, fs_i = _prepare(audio, fs)
    segs = list(segments) if segments is not None else list(analyze_signal(x, fs_i,
                                                                           params).segments)
    env = band_envelopes(y)
    n_fr = env.shape[1]
    cyc = _cycles(segs, y.size)
    out = np.zeros((len(cyc), len(BANDS_HZ), CYCLE_FRAMES), dtype=np.float64)
    for k, c in enumerate(cyc):
        a = int(round(c[0][0] / _DEC))
        b = min(n_fr, int(round(c[3][1] / _DEC)), a + CYCLE_FRAMES)
        if b - a >= 2:
            out[k, :, : b - a] = env[:, a:b]
    return normalise_cycles(out, norm)


def normalise_cycles(raw: ArrayLike, norm: str = "cycle") -> NDArray[np.float32]:
    """Normalise raw per-cycle band envelopes ``(n_cycles, 4, frames)``.

    ``norm="cycle"``: each band of each cycle divided by its maximum over the cycle (values in
    [0, 1]); ``"recording"``: each band divided by the median over the recording's cycles of
    that per-cycle maximum, clipped to [0, 4] (keeps beat-to-beat variation);
    ``"recording_log"``: the same on a log scale, ``1 + log10(max(z, 1e-3)) / 3`` (-60 dB -> 0);
    ``"none"``: raw.

    Examples
    --------
    >>> import numpy as np
    >>> float(normalise_cycles(np.ones((2, 4, 125)) * 3.0).max())
    1.0
    """
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim != 3 or r.shape[1] != len(BANDS_HZ):
        raise DSPError(f"raw cycles must have shape (n, {len(BANDS_HZ)}, frames), got {r.shape}")
    if norm == "none" or r.shape[0] == 0:
        return r.astype(np.float32)
    peak = r.max(axis=2, keepdims=True)
    if norm == "cycle":
        return (r / np.where(peak > 0.0, peak, 1.0)).astype(np.float32)
    if norm in ("recording", "recording_log"):
        ref = np.median(peak, axis=0, keepdims=True)
        z = np.clip(r / np.where(ref > 0.0, ref, 1.0), 0.0, 4.0)
        if norm == "recording_log":  # murmurs sit 20-40 dB below S1: compress
            z = 1.0 + np.log10(np.maximum(z, 1e-3)) / 3.0
        return z.astype(np.float32)
    raise DSPError(
        f"norm must be 'cycle', 'recording', 'recording_log' or 'none', got {norm!r}")
