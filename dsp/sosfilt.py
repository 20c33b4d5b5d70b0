"""Streaming multi-channel second-order-sections (SOS) IIR filter.

The kernel is the cascade of biquads in direct form II transposed used by
:func:`scipy.signal.sosfilt` (SciPy ``_sosfilt.pyx``), with the same operation order, so
results agree with SciPy to the last bits and chunked processing equals one-pass processing
exactly (bitwise).  For section ``s`` with coefficients ``[b0, b1, b2, 1, a1, a2]`` and state
``(z0, z1)``, one input sample ``u`` gives (Oppenheim & Schafer, *Discrete-Time Signal
Processing*, 3rd ed., section 6.5, Fig. 6.26)::

    v  = b0*u + z0
    z0 = b1*u - a1*v + z1
    z1 = b2*u - a2*v

and ``v`` feeds the next section.

Layout
------
Samples are rows and channels columns: ``x`` has shape ``(n_samples, n_channels)``.  The
state ``zi`` has shape ``(n_sections, 2, n_channels)``, exactly the ``zi`` SciPy expects for
``scipy.signal.sosfilt(sos, x, axis=0, zi=zi)``, so states can be exchanged with SciPy.
(Internally the private kernel keeps the two delay rows as separate planes,
``(2, n_sections, n_channels)``, which lets LLVM vectorise across channels; the public API
converts at the boundary.)

Performance
-----------
:class:`SosFilter` validates once at construction and calls the compiled kernel directly, so
a call on a 1-36-sample chunk costs well under 1 us plus the samples, against about 20 us for
``scipy.signal.sosfilt`` with ``zi``; ``benchmarks/report_sosfilt.py`` prints the ratios.

Dtypes
------
Filtering is done in float64.  Real numeric inputs (integers such as WFDB's int16 ADC
samples, bool, float16/float32) are *converted* to float64; complex, object and other dtypes
are rejected with :class:`telediag.errors.DSPError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit, types
from numpy.typing import ArrayLike, NDArray

from telediag.errors import DSPError

__all__ = ["SosFilter", "SosState", "sosfilt", "validate_sos"]

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------------------
# Numba kernels
# --------------------------------------------------------------------------------------
# Below this many channels the kernel runs each channel's cascade with the running value in a
# register; from it on, the section update runs channel-innermost so LLVM's loop vectoriser
# handles 4-8 channels per instruction (its vector loop needs a trip count >= 8 on AVX2).
_VECTOR_MIN_CHANNELS = 8


@njit(cache=True, nogil=True)
def _sosfilt_kernel(sos: FloatArray, x: FloatArray, zs: FloatArray, y: FloatArray) -> None:
    """Filter ``x`` (n_samples, n_channels) into ``y``; update the state ``zs`` in place.

    Parameters
    ----------
    sos : (n_sections, 6) float64, C-contiguous, ``a0 == 1``.
    x : (n_samples, n_channels) float64, C-contiguous.
    zs : (2, n_sections, n_channels) float64, C-contiguous -- the *kernel* state layout,
        ``zs == zi.transpose(1, 0, 2)`` for SciPy's ``zi`` of shape (n_sections, 2,
        n_channels).  Holds the final state on return.
    y : (n_samples, n_channels) float64, C-contiguous; may be ``x`` itself (in place).

    Notes
    -----
    Per channel, the floating-point operations and their order are exactly those of SciPy's
    ``_sosfilt_float`` (no FMA contraction, no reassociation), so results match
    ``scipy.signal.sosfilt`` bit for bit and do not depend on how a stream is chunked.

    The state is split into two planes (``z0 = zs[0]``, ``z1 = zs[1]``) rather than SciPy's
    interleaved ``zi[s, 0, :]``, ``zi[s, 1, :]`` rows: with the interleaved layout LLVM's
    runtime alias check between the two state rows is hoisted over the whole array, always
    fails, and the vector loop never runs (measured 2x slower at 8-16 channels).  No
    allocation happens here.
    """
    n_samples = x.shape[0]
    n_channels = x.shape[1]
    n_sections = sos.shape[0]
    z0 = zs[0]
    z1 = zs[1]
    if n_channels < _VECTOR_MIN_CHANNELS:
        for n in range(n_samples):
            for c in range(n_channels):
                u = x[n, c]
                for s in range(n_sections):
                    v = sos[s, 0] * u + z0[s, c]
                    z0[s, c] = sos[s, 1] * u - sos[s, 4] * v + z1[s, c]
                    z1[s, c] = sos[s, 2] * u - sos[s, 5] * v
                    u = v
                y[n, c] = u
        return
    for n in range(n_samples):
        for c in range(n_channels):
            y[n, c] = x[n, c]
        for s in range(n_sections):
            b0 = sos[s, 0]
            b1 = sos[s, 1]
            b2 = sos[s, 2]
            a1 = sos[s, 4]
            a2 = sos[s, 5]
            for c in range(n_channels):
                u = y[n, c]
                v = b0 * u + z0[s, c]
                z0[s, c] = b1 * u - a1 * v + z1[s, c]
                z1[s, c] = b2 * u - a2 * v
                y[n, c] = v


def _to_kernel_state(zi: FloatArray) -> FloatArray:
    """SciPy layout (n_sections, 2, n_channels) -> kernel layout (2, n_sections, n_channels)."""
    return np.ascontiguousarray(zi.transpose(1, 0, 2))


def _from_kernel_state(zs: FloatArray) -> FloatArray:
    """Kernel layout (2, n_sections, n_channels) -> SciPy layout (n_sections, 2, n_channels)."""
    return np.ascontiguousarray(zs.transpose(1, 0, 2))


_ARR2 = types.Array(types.float64, 2, "C")
_ARR3 = types.Array(types.float64, 3, "C")
_KERNEL_SIG = (_ARR2, _ARR2, _ARR3, _ARR2)
_fast_entry: Callable[[FloatArray, FloatArray, FloatArray, FloatArray], None] | None = None


def _fast_kernel() -> Callable[[FloatArray, FloatArray, FloatArray, FloatArray], None]:
    """The compiled (float64, C-contiguous, aligned) overload of ``_sosfilt_kernel``.

    Calling the overload's entry point directly skips the dispatcher's argument typing
    (about 0.1 us of the ~0.4 us call overhead, which dominates 1-sample chunks).  It does
    *no* type checking, so callers must pass exactly: aligned C-contiguous float64 arrays of
    ranks 2, 2, 3, 2 (read-only ``x`` is fine; it is only read).  Falls back to the dispatcher
    if this Numba version does not expose the entry point.
    """
    global _fast_entry
    if _fast_entry is None:
        _sosfilt_kernel.compile(_KERNEL_SIG)  # loads the on-disk cache when present
        cres = _sosfilt_kernel.overloads.get(_KERNEL_SIG)
        entry = getattr(cres, "entry_point", None)
        _fast_entry = entry if callable(entry) else _sosfilt_kernel
    return _fast_entry


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------
def validate_sos(sos: ArrayLike, name: str = "sos") -> FloatArray:
    """Return ``sos`` as a C-contiguous float64 array of shape (n_sections, 6), or raise.

    Parameters
    ----------
    sos : array_like
        Second-order sections ``[b0, b1, b2, a0, a1, a2]`` per row, with ``a0 == 1``.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    numpy.ndarray
        A new, C-contiguous float64 copy (safe to keep; later changes to the caller's array
        do not affect it).

    Raises
    ------
    telediag.errors.DSPError
        Wrong shape, non-real dtype, non-finite coefficients, or ``a0 != 1``.

    Examples
    --------
    >>> validate_sos([[1.0, 0.0, 0.0, 1.0, -0.5, 0.0]]).shape
    (1, 6)
    """
    arr = np.asarray(sos)
    if arr.dtype.kind not in "biuf":
        raise DSPError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 6 or arr.shape[0] < 1:
        raise DSPError(f"{name} must have shape (n_sections >= 1, 6), got {arr.shape}")
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        raise DSPError(f"{name} must contain only finite values, got NaN or inf")
    if not np.all(out[:, 3] == 1.0):
        raise DSPError(
            f"{name}[:, 3] (a0) must be 1 for every section, got {out[:, 3].tolist()}; "
            "normalise each section by its a0"
        )
    return out


def _as_float64_samples(x: ArrayLike, name: str = "x") -> FloatArray:
    """Convert ``x`` to a C-contiguous float64 array (1-D or 2-D), or raise."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise DSPError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise DSPError(
            f"{name} must be 1-D (n_samples,) or 2-D (n_samples, n_channels), "
            f"got {arr.ndim}-D with shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def _validate_zi(zi: ArrayLike, shape: tuple[int, ...], name: str = "zi") -> FloatArray:
    """Return a C-contiguous float64 *copy* of ``zi`` with exactly ``shape``, or raise."""
    arr = np.asarray(zi)
    if arr.dtype.kind not in "biuf":
        raise DSPError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise DSPError(f"{name} must have shape {shape}, got {arr.shape}")
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        raise DSPError(f"{name} must contain only finite values, got NaN or inf")
    return out


# --------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------
def sosfilt(
    sos: ArrayLike, x: ArrayLike, zi: ArrayLike | None = None
) -> tuple[FloatArray, FloatArray]:
    """Filter ``x`` along its first axis with a cascade of second-order sections.

    Equivalent to ``scipy.signal.sosfilt(sos, x, axis=0, zi=zi)`` (same arithmetic, results
    equal to the last bit in practice), but always returns the final state, and feeding
    ``zf`` back as ``zi`` of the next chunk gives exactly the one-pass result.

    Parameters
    ----------
    sos : array_like, shape (n_sections, 6)
        Second-order sections ``[b0, b1, b2, 1, a1, a2]``.
    x : array_like, shape (n_samples,) or (n_samples, n_channels)
        Input samples; a 1-D array is one channel.  Real numeric dtypes are converted to
        float64; others are rejected.
    zi : array_like, optional
        Initial state, shape (n_sections, 2, n_channels) for 2-D ``x`` or (n_sections, 2) for
        1-D ``x`` (SciPy's layout with ``axis=0``).  ``None`` means rest (zeros).

    Returns
    -------
    y : numpy.ndarray
        Filtered samples, float64, same shape as ``x``.
    zf : numpy.ndarray
        Final state, same shape as ``zi``.  The input ``zi`` is never modified.

    Raises
    ------
    telediag.errors.DSPError
        Invalid ``sos``, ``x`` or ``zi`` (the message names the parameter, the expected and the
        actual value).

    Examples
    --------
    >>> import numpy as np
    >>> sos = np.array([[0.5, 0.5, 0.0, 1.0, 0.0, 0.0]])   # 2-tap moving average
    >>> y, zf = sosfilt(sos, np.array([2.0, 4.0, 6.0]))
    >>> y
    array([1., 3., 5.])
    >>> y2, _ = sosfilt(sos, np.array([8.0]), zi=zf)        # continues the stream
    >>> y2
    array([7.])
    """
    sos_arr = validate_sos(sos)
    x_arr = _as_float64_samples(x)
    one_d = x_arr.ndim == 1
    x2 = x_arr.reshape(-1, 1) if one_d else x_arr
    n_sections = sos_arr.shape[0]
    n_channels = x2.shape[1]
    if zi is None:
        zs = np.zeros((2, n_sections, n_channels), dtype=np.float64)
    else:
        zshape: tuple[int, ...] = (n_sections, 2) if one_d else (n_sections, 2, n_channels)
        zs = _to_kernel_state(_validate_zi(zi, zshape).reshape(n_sections, 2, n_channels))
    if not x2.flags.aligned:
        x2 = x2.copy()
    y = np.empty(x2.shape)
    _fast_kernel()(sos_arr, x2, zs, y)  # one compiled specialisation serves every input
    zf = _from_kernel_state(zs)
    if one_d:
        return y.reshape(-1), zf.reshape(n_sections, 2)
    return y, zf


# --------------------------------------------------------------------------------------
# Stateful streaming helper
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class SosState:
    """Streaming state of a :class:`SosFilter`.

    Attributes
    ----------
    zi : numpy.ndarray
        float64, shape (n_sections, 2, n_channels): the DF-II-T delays of each section and
        channel (SciPy's ``zi`` layout for ``axis=0``).
    awaiting_steady : bool
        True while a filter created with ``zi="steady"`` has seen no sample yet; the first
        sample of each channel then sets ``zi`` to the step-response steady state.
    """

    zi: FloatArray
    awaiting_steady: bool = False


_F64 = np.dtype(np.float64)


class SosFilter:
    """Stateful streaming SOS filter over ``n_channels`` channels.

    Chunks of any size (including 0 and 1 sample) can be fed in order with :meth:`process`;
    the concatenated output equals one-pass filtering bit for bit.  Inputs are validated once
    at construction; per call only cheap checks run, so tiny chunks are fast.

    Parameters
    ----------
    sos : array_like, shape (n_sections, 6)
        Second-order sections ``[b0, b1, b2, 1, a1, a2]`` (see :mod:`telediag.dsp.design`).
    n_channels : int
        Number of channels (columns of each chunk), >= 1.
    zi : None, "steady" or array_like, optional
        Initial state.  ``None``: rest (zeros).  ``"steady"``: the step-response steady state
        scaled per channel by that channel's first sample (avoids the start-up transient;
        :func:`telediag.dsp.design.steady_state_zi`).  An array: shape
        (n_sections, 2, n_channels).

    Examples
    --------
    >>> import numpy as np
    >>> from telediag.dsp.design import ecg_bandpass
    >>> f = SosFilter(ecg_bandpass(360.0), n_channels=2)
    >>> x = np.zeros((360, 2))
    >>> y = np.concatenate([f.process(x[:100]), f.process(x[100:])])
    >>> y.shape
    (360, 2)
    >>> f.reset()
    """

    __slots__ = (
        "_init_zs",
        "_kernel",
        "_n_channels",
        "_n_sections",
        "_pending",
        "_sos",
        "_steady",
        "_zs",
    )

    def __init__(
        self,
        sos: ArrayLike,
        n_channels: int,
        *,
        zi: ArrayLike | Literal["steady"] | None = None,
    ) -> None:
        self._sos = validate_sos(sos)
        self._n_sections = self._sos.shape[0]
        if isinstance(n_channels, bool) or not isinstance(n_channels, int | np.integer):
            raise DSPError(f"n_channels must be an int >= 1, got {n_channels!r}")
        if n_channels < 1:
            raise DSPError(f"n_channels must be >= 1, got {n_channels}")
        self._n_channels = int(n_channels)
        shape = (self._n_sections, 2, self._n_channels)
        self._steady = isinstance(zi, str)
        if isinstance(zi, str):
            if zi != "steady":
                raise DSPError(f'zi must be None, "steady" or an array, got {zi!r}')
            init = np.zeros(shape, dtype=np.float64)
        elif zi is None:
            init = np.zeros(shape, dtype=np.float64)
        else:
            init = _validate_zi(zi, shape)
        # kept in the kernel's layout (2, n_sections, n_channels); see _sosfilt_kernel
        self._init_zs = _to_kernel_state(init)
        self._zs = self._init_zs.copy()
        self._pending = self._steady
        self._kernel = _fast_kernel()

    # -- properties -----------------------------------------------------------------------
    @property
    def sos(self) -> FloatArray:
        """A copy of the validated sections, shape (n_sections, 6)."""
        return self._sos.copy()

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self._n_channels

    @property
    def state(self) -> SosState:
        """A snapshot of the current state (a copy; the filter keeps running on its own)."""
        return SosState(_from_kernel_state(self._zs), self._pending)

    @state.setter
    def state(self, value: SosState) -> None:
        if not isinstance(value, SosState):
            raise DSPError(f"state must be a SosState, got {type(value).__name__}")
        zi = _validate_zi(value.zi, (self._n_sections, 2, self._n_channels), name="state.zi")
        self._zs[...] = _to_kernel_state(zi)
        self._pending = bool(value.awaiting_steady) and self._steady

    # -- processing -----------------------------------------------------------------------
    def reset(self) -> None:
        """Return to the initial state given at construction."""
        self._zs[...] = self._init_zs
        self._pending = self._steady

    def process(self, x: ArrayLike) -> FloatArray:
        """Filter the next chunk.

        Parameters
        ----------
        x : array_like, shape (n_samples, n_channels), or (n_samples,) when n_channels == 1
            The next samples in order.  Real numeric dtypes are converted to float64.

        Returns
        -------
        numpy.ndarray
            Filtered chunk, float64, same shape as ``x``.

        Raises
        ------
        telediag.errors.DSPError
            Wrong dimensionality, channel count or dtype.
        """
        # Fast path: an aligned C-contiguous float64 2-D array of the right width (read-only
        # arrays, e.g. zero-copy wire payloads, qualify).  Anything else is converted.
        if (
            type(x) is np.ndarray
            and x.dtype is _F64
            and x.ndim == 2
            and x.shape[1] == self._n_channels
            and (fl := x.flags).c_contiguous
            and fl.aligned
        ):
            x2 = x
            one_d = False
        else:
            x2, one_d = self._coerce(x)
        if self._pending:
            if x2.shape[0] == 0:
                return np.empty((0,) if one_d else (0, self._n_channels))
            self._prime(x2[0])
        y = np.empty(x2.shape)
        self._kernel(self._sos, x2, self._zs, y)
        return y.reshape(-1) if one_d else y

    def _coerce(self, x: ArrayLike) -> tuple[FloatArray, bool]:
        arr = _as_float64_samples(x)
        one_d = arr.ndim == 1
        if one_d:
            if self._n_channels != 1:
                raise DSPError(
                    f"x must have shape (n_samples, {self._n_channels}), got {arr.shape}"
                )
            arr = arr.reshape(-1, 1)
        elif arr.shape[1] != self._n_channels:
            raise DSPError(f"x must have shape (n_samples, {self._n_channels}), got {arr.shape}")
        if not arr.flags.aligned:
            arr = arr.copy()  # the compiled entry point assumes aligned data
        return arr, one_d

    def _prime(self, x0: FloatArray) -> None:
        from telediag.dsp.design import steady_state_zi

        self._zs[...] = _to_kernel_state(steady_state_zi(self._sos, self._n_channels, x0))
        self._pending = False
