"""RR-interval series and rolling time-domain heart-rate variability (streaming and offline).

Definitions follow the Task Force of the European Society of Cardiology and the North
American Society of Pacing and Electrophysiology, "Heart rate variability: standards of
measurement, physiological interpretation and clinical use", *Circulation* 93(5):1043-1065,
1996 (Table 1, time-domain measures):

* **NN interval**: interval between adjacent QRS complexes of *normal* (sinus) beats.
* **SDNN** (ms): standard deviation of the NN intervals; computed here with the unbiased
  (``n - 1``) denominator, ``sqrt(sum((NN - mean)^2) / (n - 1))``.
* **RMSSD** (ms): square root of the mean of the squared differences between *adjacent* NN
  intervals.
* **NN50 / pNN50**: number of adjacent NN pairs differing by *more than* 50 ms, and that count
  as a percentage.  The Task Force text divides NN50 by the number of NN intervals; like most
  software (PhysioNet HRV Toolkit, Kubios) we divide by the number of adjacent pairs, the
  number of differences actually tested.
* **mean NN** (ms) and **mean HR** = ``60000 / mean NN`` (bpm).

NN filter (which intervals count)
---------------------------------
Interval ``i`` runs from beat ``i-1`` to beat ``i``.  It is *acceptable* when both beats are
normal (labels given; all beats are normal otherwise) and ``min_rr_s <= RR <= max_rr_s``
(defaults 0.3 s and 2.0 s, i.e. 30-200 bpm).  It is an **NN interval** when it is acceptable,
its predecessor (interval ``i-1``) exists and is acceptable, and the two differ by at most
``max_rel_change`` (default 20 %) of the predecessor (the classic percentage filter; Malik et
al., *PACE* 12:1989).  So the intervals adjacent to a labelled ectopic beat and the interval
after them are excluded, and without labels an ectopic beat's short coupling interval, its
compensatory pause and usually the interval after are excluded.  A successive difference is
used only between two NN intervals that share a beat.

Rolling window
--------------
After every new interval (every beat but the first) one row of metrics is produced over the NN
intervals whose *end* beat lies in ``(s - window, s]``, ``s`` being the current beat and
``window = round(window_s * fs)`` samples (default 300 s, the Task Force's short-term
recording); a successive difference counts when both of its intervals are in the window.
Metrics are NaN while fewer than ``min_nn`` NN intervals (default 2) are in the window (RMSSD
and pNN50 while no difference is).  The streaming :class:`HRVMeter` and the offline
:func:`rolling_hrv` run the same kernel and agree exactly under any chunking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray

from telediag.errors import DSPError

__all__ = [
    "HRV_DTYPE",
    "NORMAL_SYMBOLS",
    "HRVMeter",
    "HRVState",
    "RRSeries",
    "TimeDomainHRV",
    "normal_from_symbols",
    "rolling_hrv",
    "rr_series",
    "time_domain",
]

NORMAL_SYMBOLS: frozenset[str] = frozenset("NLR")
"""MIT-BIH beat codes treated as normal (sinus-conducted): normal, left and right bundle
branch block beats."""

HRV_DTYPE = np.dtype(
    [
        ("sample", "<i8"),
        ("n_nn", "<i8"),
        ("n_diff", "<i8"),
        ("mean_nn_ms", "<f8"),
        ("sdnn_ms", "<f8"),
        ("rmssd_ms", "<f8"),
        ("pnn50", "<f8"),
        ("mean_hr_bpm", "<f8"),
    ]
)
"""One rolling-window row: end beat sample, counts, and the time-domain metrics."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

# scalar state slots
_I_LAST = 0  # last beat sample, -1 none
_I_LASTNORM = 1  # last beat normal (0/1)
_I_PREVRR = 2  # previous interval (samples), -1 none
_I_PREVOK = 3  # previous interval acceptable (0/1)
_I_PREVNN = 4  # previous interval NN (0/1)
_I_HEAD = 5  # ring index of the oldest NN interval in the window
_I_COUNT = 6  # NN intervals in the ring
_N_ISTATE = 7


# --------------------------------------------------------------------------------------
# Numba kernels
# --------------------------------------------------------------------------------------
_SCRATCH = 64  # beats of one update_last_lists call on the preallocated path


@njit(cache=True, nogil=True)
def _classify(
    rr: int,
    ok_norm: bool,
    min_rr: int,
    max_rr: int,
    max_rel: float,
    prev_rr: int,
    prev_ok: bool,
) -> tuple[bool, bool]:
    """Return (acceptable, nn) for one interval given its predecessor."""
    ok = ok_norm and rr >= min_rr and rr <= max_rr
    nn = ok and prev_rr >= 0 and prev_ok and abs(rr - prev_rr) <= max_rel * prev_rr
    return ok, nn


@njit(cache=True, nogil=True)
def _hrv_kernel(
    beats: IntArray,
    normal: BoolArray,
    fs: float,
    window: int,
    min_rr: int,
    max_rr: int,
    max_rel: float,
    min_nn: int,
    istate: IntArray,
    ring_end: IntArray,
    ring_rr: IntArray,
    ring_cons: BoolArray,
    out: FloatArray,
    out_sample: IntArray,
    out_counts: IntArray,
    last_only: bool = False,
) -> int:
    """Process beats; update state in place; write one row per new interval; return #rows.

    ``last_only``: the window metrics (``out``) only for the last beat (the other rows keep
    their sample and counts; :meth:`HRVMeter.update_last` reads the last row only)."""
    cap = ring_end.shape[0]
    ms = 1000.0 / fs
    n_out = 0
    for i in range(beats.shape[0]):
        b = beats[i]
        nb = normal[i]
        last = istate[_I_LAST]
        istate[_I_LAST] = b
        prev_norm = istate[_I_LASTNORM] == 1
        istate[_I_LASTNORM] = 1 if nb else 0
        if last < 0:
            continue
        rr = b - last
        ok, nn = _classify(
            rr,
            prev_norm and nb,
            min_rr,
            max_rr,
            max_rel,
            istate[_I_PREVRR],
            istate[_I_PREVOK] == 1,
        )
        cons = nn and istate[_I_PREVNN] == 1
        istate[_I_PREVRR] = rr
        istate[_I_PREVOK] = 1 if ok else 0
        istate[_I_PREVNN] = 1 if nn else 0
        # evict intervals that left the window (end <= b - window)
        lo = b - window
        while istate[_I_COUNT] > 0 and ring_end[istate[_I_HEAD]] <= lo:
            istate[_I_HEAD] = (istate[_I_HEAD] + 1) % cap
            istate[_I_COUNT] -= 1
        if nn:
            if istate[_I_COUNT] == cap:  # cannot happen with cap >= window / min_rr + 1
                istate[_I_HEAD] = (istate[_I_HEAD] + 1) % cap
                istate[_I_COUNT] -= 1
            w = (istate[_I_HEAD] + istate[_I_COUNT]) % cap
            ring_end[w] = b
            ring_rr[w] = rr
            ring_cons[w] = cons
            istate[_I_COUNT] += 1
        # metrics over the window, oldest first
        n = istate[_I_COUNT]
        head = istate[_I_HEAD]
        if last_only and i != beats.shape[0] - 1:
            out_sample[n_out] = b
            out_counts[n_out, 0] = n
            out_counts[n_out, 1] = -1  # not computed
            n_out += 1
            continue
        total = 0.0
        for k in range(n):
            total += ring_rr[(head + k) % cap] * ms
        mean = total / n if n > 0 else np.nan
        ss = 0.0
        sd2 = 0.0
        n_diff = 0
        n50 = 0
        for k in range(n):
            j = (head + k) % cap
            x = ring_rr[j] * ms
            ss += (x - mean) * (x - mean)
            # the predecessor of j is in the window when it ended after lo; with cons set it
            # is the previous NN interval, i.e. the previous ring entry
            if k > 0 and ring_cons[j] and ring_end[j] - ring_rr[j] > lo:
                d = x - ring_rr[(head + k - 1) % cap] * ms
                sd2 += d * d
                n_diff += 1
                if abs(d) > 50.0:
                    n50 += 1
        out_sample[n_out] = b
        out_counts[n_out, 0] = n
        out_counts[n_out, 1] = n_diff
        if n >= min_nn and n >= 1:
            out[n_out, 0] = mean
            out[n_out, 1] = np.sqrt(ss / (n - 1)) if n >= 2 else np.nan
            out[n_out, 4] = 60000.0 / mean
        else:
            out[n_out, 0] = np.nan
            out[n_out, 1] = np.nan
            out[n_out, 4] = np.nan
        if n >= min_nn and n_diff >= 1:
            out[n_out, 2] = np.sqrt(sd2 / n_diff)
            out[n_out, 3] = 100.0 * n50 / n_diff
        else:
            out[n_out, 2] = np.nan
            out[n_out, 3] = np.nan
        n_out += 1
    return n_out


@njit(cache=True, nogil=True)
def _rr_kernel(
    beats: IntArray,
    normal: BoolArray,
    min_rr: int,
    max_rr: int,
    max_rel: float,
    rr_out: IntArray,
    nn_out: BoolArray,
    cons_out: BoolArray,
) -> None:
    """Classify every interval of a whole beat sequence (offline :func:`rr_series`)."""
    prev_rr = -1
    prev_ok = False
    prev_nn = False
    for i in range(1, beats.shape[0]):
        rr = beats[i] - beats[i - 1]
        ok, nn = _classify(
            rr, normal[i - 1] and normal[i], min_rr, max_rr, max_rel, prev_rr, prev_ok
        )
        rr_out[i - 1] = rr
        nn_out[i - 1] = nn
        cons_out[i - 1] = nn and prev_nn
        prev_rr = rr
        prev_ok = ok
        prev_nn = nn


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def _positive(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise DSPError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _as_beats(beat_samples: ArrayLike) -> IntArray:
    arr = np.asarray(beat_samples)
    if arr.ndim != 1:
        raise DSPError(f"beat_samples must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise DSPError(f"beat_samples must hold integer sample indices, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if out[0] < 0:
        raise DSPError(f"beat_samples must be >= 0, got {int(out[0])}")
    if out.size > 1 and np.any(np.diff(out) <= 0):
        i = int(np.flatnonzero(np.diff(out) <= 0)[0])
        raise DSPError(
            "beat_samples must be strictly increasing, got "
            f"{int(out[i])} followed by {int(out[i + 1])}"
        )
    return out


def normal_from_symbols(
    symbols: Iterable[str], normal: Iterable[str] = NORMAL_SYMBOLS
) -> BoolArray:
    """Map beat annotation codes to a boolean "normal beat" mask.

    Parameters
    ----------
    symbols : iterable of str
        Beat codes, e.g. ``wfdb.rdann(...).symbol`` restricted to beats.
    normal : iterable of str
        Codes counted as normal (default :data:`NORMAL_SYMBOLS`: ``N``, ``L``, ``R``).

    Returns
    -------
    numpy.ndarray of bool

    Examples
    --------
    >>> normal_from_symbols(["N", "V", "L", "A"]).tolist()
    [True, False, True, False]
    """
    norm = set(normal)
    return np.fromiter((s in norm for s in symbols), dtype=np.bool_)


def _as_normal(
    labels: ArrayLike | Iterable[str] | None, n: int, normal: frozenset[str]
) -> BoolArray:
    if labels is None:
        return np.ones(n, np.bool_)
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DSPError(f"labels must have shape ({n},) like beat_samples, got {arr.shape}")
    if arr.dtype.kind == "b":
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "UO":
        return normal_from_symbols([str(s) for s in arr.tolist()], normal)
    raise DSPError(f"labels must be bool (normal beat) or beat symbols (str), got {arr.dtype}")


# --------------------------------------------------------------------------------------
# offline RR series and whole-series summary
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RRSeries:
    """RR intervals of a beat sequence with the NN classification.

    Attributes
    ----------
    end_sample : numpy.ndarray of int64
        Sample of the beat that ends each interval.
    rr_ms : numpy.ndarray of float64
        Interval lengths in milliseconds.
    nn : numpy.ndarray of bool
        Interval is an NN interval (passes the filter in the module docstring).
    consecutive : numpy.ndarray of bool
        Interval and its predecessor are both NN (their difference enters RMSSD/pNN50).
    """

    end_sample: IntArray
    rr_ms: FloatArray
    nn: BoolArray
    consecutive: BoolArray


def rr_series(
    beat_samples: ArrayLike,
    fs: float,
    labels: ArrayLike | Iterable[str] | None = None,
    *,
    min_rr_s: float = 0.3,
    max_rr_s: float = 2.0,
    max_rel_change: float = 0.2,
    normal_symbols: Iterable[str] = NORMAL_SYMBOLS,
) -> RRSeries:
    """Compute RR intervals and classify them as NN intervals (offline).

    Parameters
    ----------
    beat_samples : array_like of int
        Strictly increasing beat sample indices.
    fs : float
        Sample rate (Hz).
    labels : array_like of bool or str, optional
        Per-beat "normal" flags, or beat codes mapped through ``normal_symbols``.
        ``None`` treats every beat as normal.
    min_rr_s, max_rr_s, max_rel_change : float
        NN filter (see the module docstring).
    normal_symbols : iterable of str
        Codes counted as normal when ``labels`` holds symbols.

    Returns
    -------
    RRSeries

    Examples
    --------
    >>> s = rr_series([0, 360, 720, 1080, 1300], 360.0)
    >>> s.rr_ms.round(1).tolist(), s.nn.tolist()
    ([1000.0, 1000.0, 1000.0, 611.1], [False, True, True, False])
    """
    fs = _positive("fs", fs)
    min_rr, max_rr, max_rel = _filter_params(fs, min_rr_s, max_rr_s, max_rel_change)
    beats = _as_beats(beat_samples)
    norm = _as_normal(labels, beats.size, frozenset(normal_symbols))
    m = max(beats.size - 1, 0)
    rr = np.zeros(m, np.int64)
    nn = np.zeros(m, np.bool_)
    cons = np.zeros(m, np.bool_)
    if m:
        _rr_kernel(beats, norm, min_rr, max_rr, max_rel, rr, nn, cons)
    rr_ms = rr.astype(np.float64) * (1000.0 / fs)
    return RRSeries(beats[1:].copy(), rr_ms, nn, cons)


@dataclass(frozen=True, slots=True)
class TimeDomainHRV:
    """Whole-series time-domain HRV (Task Force 1996, Table 1); NaN when undefined."""

    n_nn: int
    n_diff: int
    mean_nn_ms: float
    sdnn_ms: float
    rmssd_ms: float
    nn50: int
    pnn50: float
    mean_hr_bpm: float


def time_domain(series: RRSeries) -> TimeDomainHRV:
    """Time-domain HRV of a whole :class:`RRSeries` (e.g. a 5-minute or 24-hour recording).

    Parameters
    ----------
    series : RRSeries
        Output of :func:`rr_series`.

    Returns
    -------
    TimeDomainHRV

    Examples
    --------
    >>> s = rr_series([0, 360, 700, 1060, 1400, 1760], 360.0)
    >>> round(time_domain(s).rmssd_ms, 1)
    55.6
    """
    nn = series.rr_ms[series.nn]
    diffs = series.rr_ms[1:][series.consecutive[1:]] - series.rr_ms[:-1][series.consecutive[1:]]
    n = int(nn.size)
    nd = int(diffs.size)
    mean = float(nn.mean()) if n else float("nan")
    nn50 = int(np.count_nonzero(np.abs(diffs) > 50.0))
    return TimeDomainHRV(
        n_nn=n,
        n_diff=nd,
        mean_nn_ms=mean,
        sdnn_ms=float(nn.std(ddof=1)) if n >= 2 else float("nan"),
        rmssd_ms=float(np.sqrt(np.mean(diffs**2))) if nd else float("nan"),
        nn50=nn50,
        pnn50=100.0 * nn50 / nd if nd else float("nan"),
        mean_hr_bpm=60000.0 / mean if n else float("nan"),
    )


def _filter_params(
    fs: float, min_rr_s: float, max_rr_s: float, max_rel_change: float
) -> tuple[int, int, float]:
    lo = _positive("min_rr_s", min_rr_s)
    hi = _positive("max_rr_s", max_rr_s)
    if hi <= lo:
        raise DSPError(f"max_rr_s must be > min_rr_s ({lo}), got {hi}")
    rel = _positive("max_rel_change", max_rel_change)
    return int(np.ceil(lo * fs)), int(np.floor(hi * fs)), rel


# --------------------------------------------------------------------------------------
# streaming rolling HRV
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class HRVState:
    """Streaming state of :class:`HRVMeter`.

    Attributes
    ----------
    scalars : numpy.ndarray of int64, shape (7,)
        Last beat, last beat normal, previous interval (samples), previous acceptable,
        previous NN, ring head, ring count.
    ring_end, ring_rr : numpy.ndarray of int64
        End sample and length (samples) of the NN intervals in the window, a ring buffer.
    ring_cons : numpy.ndarray of bool
        Whether each ring entry's predecessor was also NN.
    """

    scalars: IntArray
    ring_end: IntArray
    ring_rr: IntArray
    ring_cons: BoolArray

    @classmethod
    def initial(cls, capacity: int) -> HRVState:
        """State before any beat, with room for ``capacity`` NN intervals."""
        sc = np.zeros(_N_ISTATE, np.int64)
        sc[_I_LAST] = -1
        sc[_I_PREVRR] = -1
        return cls(
            sc,
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.bool_),
        )

    def copy(self) -> HRVState:
        """Deep copy (the kernel updates arrays in place)."""
        return HRVState(
            self.scalars.copy(), self.ring_end.copy(), self.ring_rr.copy(), self.ring_cons.copy()
        )


class HRVMeter:
    """Rolling time-domain HRV over the last ``window_s`` seconds, fed beat by beat.

    Parameters
    ----------
    fs : float
        Sample rate of the beat indices (Hz).
    window_s : float
        Rolling window (default 300 s).
    min_rr_s, max_rr_s, max_rel_change : float
        NN filter (module docstring); defaults 0.3 s, 2.0 s, 0.2.
    min_nn : int
        NN intervals needed in the window for a value (default 2).
    normal_symbols : iterable of str
        Codes counted as normal when labels are symbols.

    Examples
    --------
    >>> import numpy as np
    >>> m = HRVMeter(1000.0, window_s=60.0)
    >>> rows = m.update(np.cumsum([800, 850, 800, 850, 800]))
    >>> float(rows["rmssd_ms"][-1]), round(float(rows["mean_hr_bpm"][-1]), 1)
    (50.0, 73.5)
    """

    def __init__(
        self,
        fs: float,
        *,
        window_s: float = 300.0,
        min_rr_s: float = 0.3,
        max_rr_s: float = 2.0,
        max_rel_change: float = 0.2,
        min_nn: int = 2,
        normal_symbols: Iterable[str] = NORMAL_SYMBOLS,
    ) -> None:
        self.fs = _positive("fs", fs)
        self.window_s = _positive("window_s", window_s)
        self._min_rr, self._max_rr, self._max_rel = _filter_params(
            self.fs, min_rr_s, max_rr_s, max_rel_change
        )
        if isinstance(min_nn, bool) or not isinstance(min_nn, int | np.integer) or min_nn < 1:
            raise DSPError(f"min_nn must be an int >= 1, got {min_nn!r}")
        self.min_nn = int(min_nn)
        self.normal_symbols = frozenset(normal_symbols)
        self._window = int(round(self.window_s * self.fs))
        if self._window < 1:
            raise DSPError(f"window_s * fs must be >= 1 sample, got {self.window_s * self.fs}")
        self._capacity = self._window // max(self._min_rr, 1) + 2
        self.state = HRVState.initial(self._capacity)
        self._scratch: tuple[FloatArray, IntArray, IntArray, BoolArray] | None = None

    def reset(self) -> None:
        """Forget all beats."""
        self.state = HRVState.initial(self._capacity)

    def update(
        self, beat_samples: ArrayLike, labels: ArrayLike | Iterable[str] | None = None
    ) -> NDArray[np.void]:
        """Feed new beats; return one row of :data:`HRV_DTYPE` per new interval.

        Parameters
        ----------
        beat_samples : array_like of int
            New beat sample indices, strictly increasing and after the last beat fed.
        labels : array_like of bool or str, optional
            Per-beat normal flags or beat codes; ``None``: all normal.

        Returns
        -------
        numpy.ndarray
            Structured rows (``sample``, ``n_nn``, ``n_diff``, ``mean_nn_ms``, ``sdnn_ms``,
            ``rmssd_ms``, ``pnn50`` in %, ``mean_hr_bpm``).

        Examples
        --------
        >>> m = HRVMeter(360.0)
        >>> m.update([0, 360, 720])["mean_nn_ms"].tolist()
        [nan, nan]
        """
        n, samples, counts, vals = self._run(beat_samples, labels)
        out = np.empty(n, HRV_DTYPE)
        out["sample"] = samples[:n]
        out["n_nn"] = counts[:n, 0]
        out["n_diff"] = counts[:n, 1]
        for k, name in enumerate(("mean_nn_ms", "sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm")):
            out[name] = vals[:n, k]
        return out

    def update_last(
        self, beat_samples: ArrayLike, labels: ArrayLike | Iterable[str] | None = None
    ) -> tuple[int, int, int, float, float, float, float, float] | None:
        """:meth:`update`, returning only the last row (``None`` when no new interval) as
        ``(sample, n_nn, n_diff, mean_nn_ms, sdnn_ms, rmssd_ms, pnn50, mean_hr_bpm)``.

        Examples
        --------
        >>> m = HRVMeter(1000.0, window_s=60.0)
        >>> m.update_last(np.cumsum([800, 850, 800, 850, 800]))[:3]
        (4100, 3, 2)
        """
        n, samples, counts, vals = self._run(beat_samples, labels, last_only=True)
        if n == 0:
            return None
        v = vals[n - 1].tolist()
        return (int(samples[n - 1]), int(counts[n - 1, 0]), int(counts[n - 1, 1]), v[0], v[1], v[2], v[3], v[4])

    def update_last_lists(
        self, beat_samples: list[int], normal: list[bool] | None = None
    ) -> tuple[int, int, int, float, float, float, float, float] | None:
        """:meth:`update_last` for beats given as a list of ``int`` (and normal flags as a list of
        ``bool``; ``None``: all normal): the same checks and result, without the array
        validation and allocations per call (the engine feeds a few beats a chunk).

        >>> m = HRVMeter(1000.0, window_s=60.0)
        >>> m.update_last_lists([800, 1650, 2450, 3300, 4100], [True] * 5)[:3]
        (4100, 3, 2)
        """
        n = len(beat_samples)
        last = int(self.state.scalars[_I_LAST])
        ok = 0 < n <= _SCRATCH and (normal is None or len(normal) == n)
        if ok:
            prev = last
            for b in beat_samples:
                if type(b) is not int or b < 0 or b <= prev:
                    ok = False
                    break
                prev = b
        if ok and normal is not None:
            ok = all(type(v) is bool for v in normal)
        if not ok:  # empty, long, or invalid: the general path (and its exact errors)
            return self.update_last(beat_samples, None if normal is None else np.array(normal) if normal
                                    else np.zeros(0, np.bool_))
        if self._scratch is None:
            self._scratch = (np.empty((_SCRATCH, 5), np.float64), np.empty(_SCRATCH, np.int64),
                             np.empty((_SCRATCH, 2), np.int64), np.ones(_SCRATCH, np.bool_))
        vals, samples, counts, ones = self._scratch
        st = self.state
        k = _hrv_kernel(np.array(beat_samples, np.int64), ones[:n] if normal is None else np.array(normal, np.bool_),
                        self.fs, self._window, self._min_rr, self._max_rr, self._max_rel, self.min_nn, st.scalars,
                        st.ring_end, st.ring_rr, st.ring_cons, vals, samples, counts, True)
        if k == 0:
            return None
        v = vals[k - 1].tolist()
        return (int(samples[k - 1]), int(counts[k - 1, 0]), int(counts[k - 1, 1]), v[0], v[1], v[2], v[3], v[4])

    def _run(
        self, beat_samples: ArrayLike, labels: ArrayLike | Iterable[str] | None, last_only: bool = False
    ) -> tuple[int, IntArray, IntArray, FloatArray]:
        """Validate, run the kernel (state updated in place); rows as arrays."""
        beats = _as_beats(beat_samples)
        norm = _as_normal(labels, beats.size, self.normal_symbols)
        st = self.state  # updated in place by the kernel, once the input is validated
        last = int(st.scalars[_I_LAST])
        if beats.size and last >= 0 and beats[0] <= last:
            raise DSPError(
                f"beat_samples must be after the last beat already fed ({last}), "
                f"got {int(beats[0])}"
            )
        vals = np.empty((beats.size, 5), np.float64)
        samples = np.empty(beats.size, np.int64)
        counts = np.empty((beats.size, 2), np.int64)
        n = _hrv_kernel(
            beats,
            norm,
            self.fs,
            self._window,
            self._min_rr,
            self._max_rr,
            self._max_rel,
            self.min_nn,
            st.scalars,
            st.ring_end,
            st.ring_rr,
            st.ring_cons,
            vals,
            samples,
            counts,
            last_only,
        )
        return int(n), samples, counts, vals


def rolling_hrv(
    beat_samples: ArrayLike,
    fs: float,
    labels: ArrayLike | Iterable[str] | None = None,
    *,
    window_s: float = 300.0,
    min_rr_s: float = 0.3,
    max_rr_s: float = 2.0,
    max_rel_change: float = 0.2,
    min_nn: int = 2,
    normal_symbols: Iterable[str] = NORMAL_SYMBOLS,
) -> NDArray[np.void]:
    """Offline rolling HRV; identical to one :class:`HRVMeter` fed all beats at once.

    Parameters
    ----------
    beat_samples, fs, labels
        As for :meth:`HRVMeter.update`.
    window_s, min_rr_s, max_rr_s, max_rel_change, min_nn, normal_symbols
        As for :class:`HRVMeter`.

    Returns
    -------
    numpy.ndarray
        Rows of :data:`HRV_DTYPE`, one per interval.

    Examples
    --------
    >>> rows = rolling_hrv([0, 300, 600, 900, 1200], 300.0, window_s=10.0)
    >>> rows["sdnn_ms"].tolist()
    [nan, nan, 0.0, 0.0]
    """
    m = HRVMeter(
        fs,
        window_s=window_s,
        min_rr_s=min_rr_s,
        max_rr_s=max_rr_s,
        max_rel_change=max_rel_change,
        min_nn=min_nn,
        normal_symbols=normal_symbols,
    )
    return m.update(beat_samples, labels)
