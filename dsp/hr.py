"""Streaming heart-rate meter that behaves like an ANSI/AAMI EC13 cardiac monitor.

The meter consumes beat positions (absolute sample indices since the stream started, as
produced by a QRS detector) and the sample rate; it never sees the ECG itself, so it is
sample-rate agnostic: every duration parameter is given in seconds and converted to samples
with the stream's ``fs``.

Averaging rule (disclosed as ANSI/AAMI EC13:2002 section 4.1.2.1 asks)
--------------------------------------------------------------------
* An **RR interval** is the distance between two consecutive *accepted* beats.
* **Double-detection merge** (tall T waves, split QRS): a beat closer than ``min_rr_s``
  (default 0.2 s, i.e. > 300 bpm) to the last accepted beat is discarded; the next interval is
  measured from the last accepted beat, so the short interval is merged into the following one
  and the beat is never counted twice.  Discarded beats produce no reading and are counted in
  :attr:`HeartRateState.n_rejected`.
* **Pause reset**: an interval longer than ``asystole_s`` (default 4 s) is not averaged; it
  clears the interval history (the rhythm before a standstill says nothing about the rhythm
  after it).
* On every accepted beat the meter averages the most recent ``n_intervals`` (default 8) RR
  intervals, with ``rule="median"`` (default) or ``rule="mean"``, and reports
  ``HR = 60 / average_RR`` bpm (in samples: ``60 * fs / average_RR``).  Until
  ``min_intervals`` (default ``min(2, n_intervals)``) intervals are available the reading
  is NaN.  Averaging RR intervals (not instantaneous rates) makes the meter count beats per minute: for a bigeminal
  rhythm with coupling interval ``a`` and pause ``b`` the true rate is ``120 / (a + b)``.
  With an **even** ``n_intervals`` the median of a strictly alternating series is the mean of
  the middle short and long intervals, i.e. exactly ``(a + b) / 2``, so both rules read
  EC13 figure 3 rhythms at their true rates: ventricular bigeminy (3a) 80 bpm, slow alternating
  ventricular bigeminy (3b) 60 bpm, rapid alternating ventricular bigeminy (3c) 120 bpm,
  bidirectional systoles (3d) 90 bpm (the values EC13 section 4.1.2.1 e) expects after a 20 s
  stabilisation).  Use an even ``n_intervals`` with the median rule; an odd one makes it
  oscillate between the two rates of a bigeminal rhythm.
* **Displayed rate between beats** (:meth:`HeartRateMeter.at`): the last reading is held;
  once the time since the last accepted beat exceeds ``decay_factor`` (default 2) times the
  averaged RR interval, the display falls to ``60 / elapsed`` (a rate can never be higher than
  the current pause implies); once it reaches ``asystole_s`` the display is ``0.0``
  (asystole; EC13 requires the cardiac standstill alarm within 10 s, and 4 s leaves the alarm
  logic margin).  Before any beat, or while fewer than ``min_intervals`` intervals are known,
  the display is NaN ("no rate").

Response to rate steps (EC13:2002 section 4.1.2.1 f), at most 10 s): with the defaults
(median of 8) a step from 80 to 120 bpm is displayed after the 5th new interval (2.5 s) and a
step from 80 to 40 bpm after the 5th new interval (7.5 s); see ``tests/test_hr.py``.  The mean
of 8 would need about 10.5 s for the 80 to 40 step to come within 10 % of the new rate, so
``rule="mean"`` should be used with ``n_intervals <= 6``.

Chunk invariance: the meter is a sequential recursion over beats, so feeding the beats in any
grouping gives bitwise identical readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray

from telediag.errors import DSPError

__all__ = [
    "HR_READING_DTYPE",
    "HeartRateMeter",
    "HeartRateState",
    "displayed_rate",
    "heart_rate",
]

HR_READING_DTYPE = np.dtype([("sample", "<i8"), ("hr_bpm", "<f8")])
"""Structured dtype of heart-rate readings: beat sample index and rate in bpm (NaN = none)."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

_I_LAST = 0  # last accepted beat sample (-1: none yet)
_I_NRR = 1  # intervals in the ring buffer (<= n_intervals)
_I_POS = 2  # next write position in the ring buffer
_I_REJ = 3  # beats discarded as double detections
_SMALL = 64  # HeartRateMeter.update_lists runs the kernel's steps in Python up to this many beats
_F_HR = 0  # last reading (bpm), NaN when none
_F_AVG = 1  # averaged RR interval (samples) behind the last reading, NaN when none


# --------------------------------------------------------------------------------------
# Numba kernel
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _hr_kernel(
    beats: IntArray,
    fs: float,
    use_median: bool,
    min_rr: int,
    max_rr: int,
    min_intervals: int,
    rr_buf: IntArray,
    scratch: IntArray,
    istate: IntArray,
    fstate: FloatArray,
    out_sample: IntArray,
    out_hr: FloatArray,
) -> int:
    """Run the meter over ``beats``; update the state arrays in place; return #readings."""
    n_int = rr_buf.shape[0]
    n_out = 0
    for i in range(beats.shape[0]):
        b = beats[i]
        last = istate[_I_LAST]
        if last >= 0:
            rr = b - last
            if rr < min_rr:
                istate[_I_REJ] += 1
                continue
            if rr > max_rr:
                istate[_I_NRR] = 0
                istate[_I_POS] = 0
            else:
                rr_buf[istate[_I_POS]] = rr
                istate[_I_POS] = (istate[_I_POS] + 1) % n_int
                if istate[_I_NRR] < n_int:
                    istate[_I_NRR] += 1
        istate[_I_LAST] = b
        n = istate[_I_NRR]
        if n >= min_intervals and n > 0:
            if use_median:
                # insertion sort of the n valid entries into scratch (n is small)
                for j in range(n):
                    v = rr_buf[j]
                    k = j - 1
                    while k >= 0 and scratch[k] > v:
                        scratch[k + 1] = scratch[k]
                        k -= 1
                    scratch[k + 1] = v
                if n % 2 == 1:
                    avg = float(scratch[n // 2])
                else:
                    avg = 0.5 * (float(scratch[n // 2 - 1]) + float(scratch[n // 2]))
            else:
                total = 0
                for j in range(n):
                    total += rr_buf[j]
                avg = float(total) / n
            fstate[_F_AVG] = avg
            fstate[_F_HR] = 60.0 * fs / avg
        else:
            fstate[_F_AVG] = np.nan
            fstate[_F_HR] = np.nan
        out_sample[n_out] = b
        out_hr[n_out] = fstate[_F_HR]
        n_out += 1
    return n_out


# --------------------------------------------------------------------------------------
# State and validation
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class HeartRateState:
    """Streaming state of :class:`HeartRateMeter` (small and explicit).

    Attributes
    ----------
    rr_buf : numpy.ndarray
        Ring buffer of the most recent RR intervals in samples, shape (n_intervals,).
    n_rr : int
        Number of valid entries in ``rr_buf``.
    pos : int
        Next write position in ``rr_buf``.
    last_beat : int
        Sample index of the last accepted beat, ``-1`` before the first one.
    n_rejected : int
        Beats discarded so far because they came closer than ``min_rr_s`` to the last one.
    hr_bpm : float
        Last reading in bpm, NaN when there is none.
    avg_rr : float
        Averaged RR interval (samples) behind ``hr_bpm``, NaN when there is none.
    """

    rr_buf: IntArray
    n_rr: int = 0
    pos: int = 0
    last_beat: int = -1
    n_rejected: int = 0
    hr_bpm: float = float("nan")
    avg_rr: float = float("nan")

    @classmethod
    def initial(cls, n_intervals: int) -> HeartRateState:
        """Return the state before any beat for a meter averaging ``n_intervals``."""
        return cls(rr_buf=np.zeros(n_intervals, np.int64))


def _positive(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise DSPError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _as_beats(beat_samples: ArrayLike, name: str = "beat_samples") -> IntArray:
    arr = np.asarray(beat_samples)
    if arr.ndim != 1:
        raise DSPError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise DSPError(f"{name} must hold integer sample indices, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if out[0] < 0:
        raise DSPError(f"{name} must be >= 0, got {int(out[0])}")
    if out.size > 1 and np.any(np.diff(out) < 0):
        i = int(np.flatnonzero(np.diff(out) < 0)[0])
        raise DSPError(
            f"{name} must be non-decreasing, got {int(out[i])} followed by {int(out[i + 1])}"
        )
    return out


# --------------------------------------------------------------------------------------
# Streaming meter
# --------------------------------------------------------------------------------------
class HeartRateMeter:
    """Streaming EC13-style heart-rate meter fed with beat sample indices.

    The averaging rule is documented in the module docstring of :mod:`telediag.dsp.hr`.

    Parameters
    ----------
    fs : float
        Sample rate of the beat indices (Hz).
    n_intervals : int
        Number of most recent RR intervals averaged (default 8; keep it even with the median).
    rule : {"median", "mean"}
        Average of the intervals (default ``"median"``).
    min_rr_s : float
        Beats closer than this to the last accepted beat are discarded (default 0.2 s).
    asystole_s : float
        Time without beats after which the display is 0 bpm; longer intervals reset the
        history (default 4 s).
    min_intervals : int, optional
        Intervals needed before the first reading (default ``min(2, n_intervals)``).
    decay_factor : float
        The display decays to ``60 / elapsed`` once the pause exceeds this many averaged RR
        intervals (default 2).

    Examples
    --------
    >>> import numpy as np
    >>> m = HeartRateMeter(360.0)
    >>> r = m.update(np.arange(10) * 270)       # 270 samples = 0.75 s -> 80 bpm
    >>> float(r["hr_bpm"][-1])
    80.0
    >>> m.at(9 * 270 + 100)
    80.0
    >>> m.at(9 * 270 + 4 * 360)                 # 4 s without a beat: asystole
    0.0
    """

    def __init__(
        self,
        fs: float,
        *,
        n_intervals: int = 8,
        rule: Literal["median", "mean"] = "median",
        min_rr_s: float = 0.2,
        asystole_s: float = 4.0,
        min_intervals: int | None = None,
        decay_factor: float = 2.0,
    ) -> None:
        self.fs = _positive("fs", fs)
        if isinstance(n_intervals, bool) or not isinstance(n_intervals, int | np.integer):
            raise DSPError(f"n_intervals must be an int, got {n_intervals!r}")
        if not 1 <= int(n_intervals) <= 1024:
            raise DSPError(f"n_intervals must be in [1, 1024], got {n_intervals}")
        self.n_intervals = int(n_intervals)
        if rule not in ("median", "mean"):
            raise DSPError(f"rule must be 'median' or 'mean', got {rule!r}")
        self.rule: Literal["median", "mean"] = rule
        self.min_rr_s = _positive("min_rr_s", min_rr_s)
        self.asystole_s = _positive("asystole_s", asystole_s)
        if self.asystole_s <= self.min_rr_s:
            raise DSPError(
                f"asystole_s must be > min_rr_s ({self.min_rr_s}), got {self.asystole_s}"
            )
        if min_intervals is None:
            min_intervals = min(2, self.n_intervals)
        if isinstance(min_intervals, bool) or not isinstance(min_intervals, int | np.integer):
            raise DSPError(f"min_intervals must be an int, got {min_intervals!r}")
        if not 1 <= int(min_intervals) <= self.n_intervals:
            raise DSPError(
                f"min_intervals must be in [1, n_intervals={self.n_intervals}], got {min_intervals}"
            )
        self.min_intervals = int(min_intervals)
        self.decay_factor = _positive("decay_factor", decay_factor)
        if self.decay_factor < 1.0:
            raise DSPError(f"decay_factor must be >= 1, got {decay_factor}")
        self._min_rr = int(np.ceil(self.min_rr_s * self.fs))
        self._asystole = int(np.ceil(self.asystole_s * self.fs))
        self.state = HeartRateState.initial(self.n_intervals)
        self._scratch = np.zeros(self.n_intervals, np.int64)

    def reset(self) -> None:
        """Forget all beats (back to the state before the first beat)."""
        self.state = HeartRateState.initial(self.n_intervals)

    def update(self, beat_samples: ArrayLike) -> NDArray[np.void]:
        """Feed new beats and return one reading per accepted beat.

        Parameters
        ----------
        beat_samples : array_like of int, shape (n,)
            Absolute sample indices of new beats, non-decreasing and not before the last
            beat already fed.

        Returns
        -------
        numpy.ndarray
            Structured array of dtype :data:`HR_READING_DTYPE` (``sample``, ``hr_bpm``), one
            row per accepted beat (discarded double detections give no row).

        Raises
        ------
        telediag.errors.DSPError
            Non-integer, negative, unsorted beats, or beats before the last one fed.

        Examples
        --------
        >>> m = HeartRateMeter(250.0, n_intervals=4)
        >>> m.update([0, 250, 500, 750])["hr_bpm"].tolist()
        [nan, nan, 60.0, 60.0]
        """
        n, out_s, out_h = self._run(beat_samples)
        out = np.empty(n, HR_READING_DTYPE)
        out["sample"] = out_s[:n]
        out["hr_bpm"] = out_h[:n]
        return out

    def update_lists(self, beat_samples: ArrayLike) -> tuple[list[int], list[float]]:
        """:meth:`update` as two lists (accepted beat samples, readings in bpm).

        Examples
        --------
        >>> HeartRateMeter(250.0, n_intervals=4).update_lists([0, 250, 500])
        ([0, 250, 500], [nan, nan, 60.0])
        """
        if type(beat_samples) is list and len(beat_samples) <= _SMALL:
            small = self._update_small(beat_samples)
            if small is not None:
                return small
        n, out_s, out_h = self._run(beat_samples)
        return out_s[:n].tolist(), out_h[:n].tolist()

    def _update_small(self, beats: list[int]) -> tuple[list[int], list[float]] | None:
        """:func:`_hr_kernel` in plain Python for the few beats of a chunk (no array round
        trip): the same integer steps and the same float64 operations, so the same readings
        and state (``tests/test_ecg_fast_paths.py``). ``None`` when the input is not a list
        of valid plain ints (the array path then raises its precise error)."""
        st = self.state
        lo = max(st.last_beat, 0)
        for b in beats:
            if type(b) is not int or b < lo:
                return None
            lo = b
        rr = st.rr_buf.tolist()
        n_int = len(rr)
        last, n_rr, pos, rej = st.last_beat, st.n_rr, st.pos, st.n_rejected
        hr, avg = st.hr_bpm, st.avg_rr
        median = self.rule == "median"
        out_s: list[int] = []
        out_h: list[float] = []
        for b in beats:
            if last >= 0:
                d = b - last
                if d < self._min_rr:
                    rej += 1
                    continue
                if d > self._asystole:
                    n_rr = 0
                    pos = 0
                else:
                    rr[pos] = d
                    pos = (pos + 1) % n_int
                    if n_rr < n_int:
                        n_rr += 1
            last = b
            n = n_rr
            if n >= self.min_intervals and n > 0:
                if median:
                    srt = sorted(rr[:n])
                    avg = float(srt[n // 2]) if n % 2 == 1 else 0.5 * (float(srt[n // 2 - 1]) + float(srt[n // 2]))
                else:
                    avg = float(sum(rr[:n])) / n
                hr = 60.0 * self.fs / avg
            else:
                avg = hr = math.nan
            out_s.append(b)
            out_h.append(hr)
        self.state = HeartRateState(rr_buf=np.array(rr, np.int64), n_rr=n_rr, pos=pos, last_beat=last,
                                    n_rejected=rej, hr_bpm=hr, avg_rr=avg)
        return out_s, out_h

    def _run(self, beat_samples: ArrayLike) -> tuple[int, IntArray, FloatArray]:
        """Validate, run the kernel, keep the new state; the readings as arrays (first ``n``)."""
        beats = _as_beats(beat_samples)
        st = self.state
        if beats.size and st.last_beat >= 0 and beats[0] < st.last_beat:
            raise DSPError(
                f"beat_samples must not go back in time: first beat {int(beats[0])} is before "
                f"the last beat already fed ({st.last_beat})"
            )
        istate = np.array([st.last_beat, st.n_rr, st.pos, st.n_rejected], np.int64)
        fstate = np.array([st.hr_bpm, st.avg_rr], np.float64)
        rr_buf = st.rr_buf.copy()
        out_s = np.empty(beats.size, np.int64)
        out_h = np.empty(beats.size, np.float64)
        n = _hr_kernel(
            beats,
            self.fs,
            self.rule == "median",
            self._min_rr,
            self._asystole,
            self.min_intervals,
            rr_buf,
            self._scratch,
            istate,
            fstate,
            out_s,
            out_h,
        )
        self.state = HeartRateState(
            rr_buf=rr_buf,
            n_rr=int(istate[_I_NRR]),
            pos=int(istate[_I_POS]),
            last_beat=int(istate[_I_LAST]),
            n_rejected=int(istate[_I_REJ]),
            hr_bpm=float(fstate[_F_HR]),
            avg_rr=float(fstate[_F_AVG]),
        )
        return int(n), out_s, out_h

    def at(self, sample: int) -> float:
        """Return the rate the monitor displays at ``sample`` (bpm; 0 = asystole; NaN = none).

        Parameters
        ----------
        sample : int
            Current absolute sample index; must not be before the last beat fed.

        Returns
        -------
        float
            Held reading, decayed during long pauses, ``0.0`` after ``asystole_s`` without
            beats, NaN before a valid rate exists.

        Examples
        --------
        >>> m = HeartRateMeter(100.0)
        >>> _ = m.update([0, 100, 200])
        >>> m.at(250), m.at(500), m.at(600)
        (60.0, 20.0, 0.0)
        """
        st = self.state
        s = int(sample)
        if st.last_beat >= 0 and s < st.last_beat:
            raise DSPError(
                f"sample must be >= the last beat fed ({st.last_beat}), got {s}; "
                "use displayed_rate() for past times"
            )
        return _display_one(st.hr_bpm, st.last_beat, s, self.fs, self._asystole, self.decay_factor)


def _display_one(hr: float, last_beat: int, sample: int, fs: float, asystole: int, decay_factor: float) -> float:
    """:func:`_display` for one query, in plain float64 arithmetic (the same IEEE operations,
    so the same value; ``tests/test_hr.py`` compares both)."""
    if last_beat < 0:
        return math.nan
    elapsed = float(sample - last_beat)
    if elapsed >= asystole:
        return 0.0
    hr = float(hr)
    if math.isfinite(hr) and hr != 0.0 and elapsed > 0.0 and elapsed > decay_factor * (60.0 * fs / hr):
        pause_rate = 60.0 * fs / elapsed
        if pause_rate < hr:
            return pause_rate
    return hr


def _display(
    hr: FloatArray,
    last_beat: IntArray,
    sample: IntArray,
    fs: float,
    asystole: int,
    decay_factor: float,
) -> FloatArray:
    """Vectorised display rule shared by :meth:`HeartRateMeter.at` and
    :func:`displayed_rate` (so both agree exactly)."""
    out = hr.astype(np.float64, copy=True)
    no_beat = last_beat < 0
    elapsed = (sample - last_beat).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pause_rate = 60.0 * fs / elapsed
        avg_rr = 60.0 * fs / hr
        decaying = (~no_beat) & np.isfinite(hr) & (elapsed > decay_factor * avg_rr)
    out[decaying] = np.minimum(out[decaying], pause_rate[decaying])
    out[(~no_beat) & (elapsed >= asystole)] = 0.0
    out[no_beat] = np.nan
    return out


# --------------------------------------------------------------------------------------
# Offline helpers
# --------------------------------------------------------------------------------------
def heart_rate(
    beat_samples: ArrayLike,
    fs: float,
    *,
    n_intervals: int = 8,
    rule: Literal["median", "mean"] = "median",
    min_rr_s: float = 0.2,
    asystole_s: float = 4.0,
    min_intervals: int | None = None,
) -> NDArray[np.void]:
    """Offline per-beat readings; identical to one :class:`HeartRateMeter` fed everything.

    Parameters
    ----------
    beat_samples : array_like of int
        Sorted beat sample indices.
    fs : float
        Sample rate (Hz).
    n_intervals, rule, min_rr_s, asystole_s, min_intervals
        As for :class:`HeartRateMeter`.

    Returns
    -------
    numpy.ndarray
        Structured readings of dtype :data:`HR_READING_DTYPE`.

    Examples
    --------
    >>> heart_rate([0, 360, 720, 1080], 360.0)["hr_bpm"].tolist()
    [nan, nan, 60.0, 60.0]
    """
    m = HeartRateMeter(
        fs,
        n_intervals=n_intervals,
        rule=rule,
        min_rr_s=min_rr_s,
        asystole_s=asystole_s,
        min_intervals=min_intervals,
    )
    return m.update(beat_samples)


def displayed_rate(
    beat_samples: ArrayLike,
    fs: float,
    at_samples: ArrayLike,
    *,
    n_intervals: int = 8,
    rule: Literal["median", "mean"] = "median",
    min_rr_s: float = 0.2,
    asystole_s: float = 4.0,
    min_intervals: int | None = None,
    decay_factor: float = 2.0,
) -> FloatArray:
    """Displayed rate at arbitrary times, as :meth:`HeartRateMeter.at` would show it.

    For each query sample ``q`` the meter state after the last accepted beat ``<= q`` is
    used (beats after ``q`` are not yet known to the monitor).

    Parameters
    ----------
    beat_samples : array_like of int
        Sorted beat sample indices.
    fs : float
        Sample rate (Hz).
    at_samples : array_like of int
        Query sample indices (any order).
    n_intervals, rule, min_rr_s, asystole_s, min_intervals, decay_factor
        As for :class:`HeartRateMeter`.

    Returns
    -------
    numpy.ndarray
        Displayed rate (bpm) per query, float64; NaN where no rate, 0 for asystole.

    Examples
    --------
    >>> displayed_rate([0, 360, 720], 360.0, [0, 800, 720 + 4 * 360]).tolist()
    [nan, 60.0, 0.0]
    """
    m = HeartRateMeter(
        fs,
        n_intervals=n_intervals,
        rule=rule,
        min_rr_s=min_rr_s,
        asystole_s=asystole_s,
        min_intervals=min_intervals,
        decay_factor=decay_factor,
    )
    readings = m.update(beat_samples)
    q = np.asarray(at_samples)
    if q.ndim != 1 or (q.size and q.dtype.kind not in "iu"):
        raise DSPError(f"at_samples must be a 1-D integer array, got {q.dtype} {q.shape}")
    q = q.astype(np.int64)
    idx = np.searchsorted(readings["sample"], q, side="right") - 1
    has = idx >= 0
    hr = np.full(q.size, np.nan)
    last = np.full(q.size, -1, np.int64)
    hr[has] = readings["hr_bpm"][idx[has]]
    last[has] = readings["sample"][idx[has]]
    return _display(hr, last, q, m.fs, m._asystole, m.decay_factor)
