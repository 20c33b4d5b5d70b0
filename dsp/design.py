"""Filter design helpers returning second-order sections for :mod:`telediag.dsp.sosfilt`.

All designs are done by :mod:`scipy.signal` in float64 and returned as C-contiguous
``(n_sections, 6)`` arrays with ``a0 == 1`` in every row.

Orders
------
A Butterworth *band-pass* designed from an analogue low-pass prototype of order ``N`` has
``2N`` poles (the low-pass to band-pass transform doubles the order), i.e. ``N`` biquads.
:func:`ecg_bandpass` takes the prototype order like :func:`scipy.signal.butter`; the default
``order=4`` is therefore an **8th-order** band-pass made of 4 second-order sections.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.signal as sps
from numpy.typing import ArrayLike, NDArray

from telediag.dsp.sosfilt import validate_sos
from telediag.errors import DSPError

__all__ = ["butter_sos", "chain", "ecg_bandpass", "notch", "sosfilt_zi", "steady_state_zi"]

FloatArray = NDArray[np.float64]


@functools.lru_cache(maxsize=256)
def _butter_cached(order: int, wn: tuple[float, ...], btype: str, fs: float | None) -> FloatArray:
    w: float | list[float] = wn[0] if len(wn) == 1 else list(wn)
    sos = np.ascontiguousarray(sps.butter(order, w, btype=btype, fs=fs, output="sos"), dtype=np.float64)
    sos.setflags(write=False)
    return sos


def butter_sos(order: int, wn: float | tuple[float, ...] | list[float], btype: str,
               fs: float | None = None) -> FloatArray:
    """:func:`scipy.signal.butter` as second-order sections, memoised.

    A stream opens several filters; an engine opening hundreds of streams would otherwise
    spend most of its start-up time redesigning the same few filters. Returns a fresh,
    writable copy each call (the cached design itself is read-only).

    Examples
    --------
    >>> butter_sos(2, (1.0, 40.0), "bandpass", fs=360.0).shape
    (2, 6)
    """
    wn_t = (float(wn),) if isinstance(wn, int | float | np.number) else tuple(float(v) for v in wn)
    return _butter_cached(int(order), wn_t, str(btype), None if fs is None else float(fs)).copy()


@functools.lru_cache(maxsize=256)
def _zi_cached(sos_bytes: bytes, n_sections: int) -> FloatArray:
    sos = np.frombuffer(sos_bytes, dtype=np.float64).reshape(n_sections, 6)
    zi = np.ascontiguousarray(sps.sosfilt_zi(sos), dtype=np.float64)
    zi.setflags(write=False)
    return zi


def sosfilt_zi(sos: ArrayLike) -> FloatArray:
    """:func:`scipy.signal.sosfilt_zi` (unit-step steady state per section), memoised; a copy.

    Examples
    --------
    >>> sosfilt_zi(butter_sos(2, 40.0, "highpass", fs=360.0)).shape
    (2, 2)
    """
    s = np.ascontiguousarray(sos, dtype=np.float64)
    return _zi_cached(s.tobytes(), int(s.shape[0])).copy()


def _check_fs(fs: float) -> float:
    try:
        fs_f = float(fs)
    except (TypeError, ValueError) as e:
        raise DSPError(f"fs must be a positive finite number in Hz, got {fs!r}") from e
    if not np.isfinite(fs_f) or fs_f <= 0.0:
        raise DSPError(f"fs must be a positive finite number in Hz, got {fs!r}")
    return fs_f


def _check_freq(name: str, value: float, fs: float) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError) as e:
        raise DSPError(f"{name} must be a number in Hz, got {value!r}") from e
    if not np.isfinite(f) or f <= 0.0:
        raise DSPError(f"{name} must be a positive finite frequency in Hz, got {value!r}")
    if f >= fs / 2.0:
        raise DSPError(
            f"{name} must be below the Nyquist frequency fs/2 = {fs / 2.0:g} Hz "
            f"(fs = {fs:g} Hz), got {name} = {f:g} Hz"
        )
    return f


def ecg_bandpass(
    fs: float, low_hz: float = 0.5, high_hz: float = 40.0, order: int = 4
) -> FloatArray:
    """Butterworth band-pass for ECG (baseline wander and high-frequency noise removal).

    Parameters
    ----------
    fs : float
        Sample rate in Hz.
    low_hz, high_hz : float
        Lower and upper -3 dB edges in Hz; ``0 < low_hz < high_hz < fs / 2``.
    order : int
        Order of the low-pass *prototype* (as in :func:`scipy.signal.butter`).  The band-pass
        has ``2 * order`` poles in ``order`` sections: the default 4 gives an 8th-order filter.

    Returns
    -------
    numpy.ndarray
        Second-order sections, shape (order, 6).

    Raises
    ------
    telediag.errors.DSPError
        Non-positive ``fs``, edges not strictly inside (0, fs/2), ``low_hz >= high_hz``, or an
        order below 1.

    Notes
    -----
    Butterworth design by the bilinear transform with pre-warping (S. Butterworth, "On the
    theory of filter amplifiers", *Wireless Engineer* 7, 1930; Oppenheim & Schafer,
    *Discrete-Time Signal Processing*, 3rd ed., section 7.2).  The 0.5-40 Hz band is a common
    monitoring-mode ECG bandwidth (AHA recommendations, Kligfield et al., *Circulation* 115,
    2007).

    Examples
    --------
    >>> sos = ecg_bandpass(360.0)          # 0.5-40 Hz, 8th order
    >>> sos.shape
    (4, 6)
    """
    fs_f = _check_fs(fs)
    lo = _check_freq("low_hz", low_hz, fs_f)
    hi = _check_freq("high_hz", high_hz, fs_f)
    if lo >= hi:
        raise DSPError(f"low_hz must be below high_hz, got low_hz = {lo:g}, high_hz = {hi:g}")
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise DSPError(f"order must be an int >= 1, got {order!r}")
    return butter_sos(int(order), (lo, hi), "bandpass", fs=fs_f)


def notch(fs: float, freq_hz: float = 50.0, q: float = 30.0) -> FloatArray:
    """Second-order IIR notch for power-line interference (50 or 60 Hz).

    Parameters
    ----------
    fs : float
        Sample rate in Hz.
    freq_hz : float
        Frequency to remove in Hz, ``0 < freq_hz < fs / 2`` (50 Hz in Europe, 60 Hz in the
        Americas).
    q : float
        Quality factor ``freq_hz / bandwidth(-3 dB)``, > 0.

    Returns
    -------
    numpy.ndarray
        One second-order section, shape (1, 6).

    Notes
    -----
    :func:`scipy.signal.iirnotch` (S. J. Orfanidis, *Introduction to Signal Processing*,
    Prentice-Hall, 1996, section 11.3) converted with :func:`scipy.signal.tf2sos`.

    Examples
    --------
    >>> notch(360.0, 60.0).shape
    (1, 6)
    """
    fs_f = _check_fs(fs)
    f0 = _check_freq("freq_hz", freq_hz, fs_f)
    try:
        q_f = float(q)
    except (TypeError, ValueError) as e:
        raise DSPError(f"q must be a positive number, got {q!r}") from e
    if not np.isfinite(q_f) or q_f <= 0.0:
        raise DSPError(f"q must be a positive finite number, got {q!r}")
    b, a = sps.iirnotch(f0, q_f, fs=fs_f)
    sos = sps.tf2sos(b, a)
    sos = sos / sos[:, 3:4]  # a0 is already 1 for iirnotch; normalise defensively
    return np.ascontiguousarray(sos, dtype=np.float64)


def chain(*sos: ArrayLike) -> FloatArray:
    """Cascade several SOS filters into one (stack their sections in order).

    Parameters
    ----------
    *sos : array_like
        One or more (n_sections_i, 6) arrays; each is validated.

    Returns
    -------
    numpy.ndarray
        Shape (sum of n_sections_i, 6).

    Examples
    --------
    >>> chain(ecg_bandpass(360.0), notch(360.0, 60.0)).shape
    (5, 6)
    """
    if not sos:
        raise DSPError("chain needs at least one sos array, got none")
    parts = [validate_sos(s, name=f"sos[{i}]") for i, s in enumerate(sos)]
    return np.ascontiguousarray(np.vstack(parts))


def steady_state_zi(sos: ArrayLike, n_channels: int, x0: ArrayLike) -> FloatArray:
    """Initial state that makes the filter start as if ``x0`` had been applied forever.

    Parameters
    ----------
    sos : array_like, shape (n_sections, 6)
        The filter.
    n_channels : int
        Number of channels, >= 1.
    x0 : float or array_like, shape (n_channels,)
        The first sample of each channel (a scalar applies to all channels).

    Returns
    -------
    numpy.ndarray
        float64, shape (n_sections, 2, n_channels): ``sosfilt_zi(sos)[:, :, None] * x0``.

    Notes
    -----
    :func:`scipy.signal.sosfilt_zi` gives the state of each section at the steady state of a
    unit step (Gustafsson, "Determining the initial states in forward-backward filtering",
    *IEEE Trans. Signal Processing* 44(4), 1996); by linearity a step of height ``x0``
    needs that state times ``x0``.

    Examples
    --------
    >>> import numpy as np
    >>> steady_state_zi(notch(360.0, 60.0), 3, np.array([1.0, 2.0, 3.0])).shape
    (1, 2, 3)
    """
    s = validate_sos(sos)
    if isinstance(n_channels, bool) or not isinstance(n_channels, int | np.integer):
        raise DSPError(f"n_channels must be an int >= 1, got {n_channels!r}")
    if n_channels < 1:
        raise DSPError(f"n_channels must be >= 1, got {n_channels}")
    x0_arr = np.asarray(x0, dtype=np.float64)
    if x0_arr.ndim == 0:
        x0_arr = np.full(int(n_channels), float(x0_arr))
    if x0_arr.shape != (n_channels,):
        raise DSPError(f"x0 must be a scalar or have shape ({n_channels},), got {x0_arr.shape}")
    zi1 = sosfilt_zi(s)  # (n_sections, 2)
    return np.ascontiguousarray(zi1[:, :, None] * x0_arr[None, None, :])
