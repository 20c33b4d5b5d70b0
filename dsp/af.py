"""Streaming atrial-fibrillation detection from the RR-interval series (Numba kernel).

AF conducts to the ventricles "irregularly irregularly": successive RR intervals differ by
large amounts, with no pattern. The detector follows the RR-irregularity family of AF
detectors (Tateno & Glass, *Med. Biol. Eng. Comput.* 39:664-671, 2001; Dash et al., *Ann.
Biomed. Eng.* 37:1701-1709, 2009; Petrenas et al., *Med. Biol. Eng. Comput.* 53:287-297,
2015): on a sliding window of the last ``window`` valid RR intervals it measures

* ``nrmssd``: the root mean square of successive RR differences normalised by the mean RR
  (Dash et al. 2009 use RMSSD / mean RR, AF above about 0.1);
* ``cv_dd``: the coefficient of variation of the absolute successive differences ``|dRR|``:
  in AF ``dRR`` is close to a random variable and ``|dRR|`` varies as much as its mean
  (about 0.75 for a half-normal), whereas the regular alternation of bigeminy or trigeminy
  gives nearly equal ``|dRR|`` (low ``cv_dd``) despite a high ``nrmssd``;
* ``ectopic removal``: an interval that begins or ends at a ventricular (or paced,
  unclassifiable) beat is not valid when beat labels are known (ectopic beats mimic
  irregularity; Petrenas et al. 2015 suppress them with a median filter instead).

Intervals that span unusable signal or a gap are not valid either. The irregularity score
``nrmssd`` and ``cv_dd`` are combined with hysteresis by :class:`AFDetector`: AF starts when
``nrmssd >= on`` and ``cv_dd >= cv_min`` and ends when ``nrmssd < off``. The detector sees RR
only, so atrial flutter with regular conduction is not detected (no P/f-wave analysis).

Every per-interval computation is a Numba kernel over whole arrays with explicit state, so
any grouping of the beats gives the same result (tested), and :func:`af_features` (offline,
whole arrays) is the oracle of the streaming kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray

from telediag.errors import DSPError

__all__ = ["AFDetector", "AFParams", "af_features"]


@dataclass(frozen=True, slots=True)
class AFParams:
    """AF detector parameters.

    Attributes
    ----------
    window : int
        Valid RR intervals in the sliding window (default 32).
    min_valid : int
        Valid intervals the window needs before a decision (default 24).
    on, off : float
        ``nrmssd`` thresholds to enter and leave AF (hysteresis).
    cv_min : float
        Minimum ``cv_dd`` to enter AF (rejects bigeminy/trigeminy).
    back : int
        Beats by which onset and end are dated back (the window's delay), default window // 2.
    min_rr_s, max_rr_s : float
        RR intervals outside are not valid (detection errors, pauses).
    """

    window: int = 32
    min_valid: int = 24
    on: float = 0.10
    off: float = 0.07
    cv_min: float = 0.55
    back: int = 16
    min_rr_s: float = 0.25
    max_rr_s: float = 2.5

    def __post_init__(self) -> None:
        if not 4 <= self.window <= 512:
            raise DSPError(f"window must be in [4, 512] intervals, got {self.window}")
        if not 2 <= self.min_valid <= self.window:
            raise DSPError(f"min_valid must be in [2, window], got {self.min_valid}")
        if not 0 < self.off <= self.on:
            raise DSPError(f"need 0 < off <= on, got off={self.off}, on={self.on}")
        if not 0 <= self.back <= self.window:
            raise DSPError(f"back must be in [0, window], got {self.back}")
        if not 0 < self.min_rr_s < self.max_rr_s:
            raise DSPError(f"need 0 < min_rr_s < max_rr_s, got {self.min_rr_s}, {self.max_rr_s}")


@njit(cache=True)
def _af_kernel(rr: NDArray[np.float64], ok: NDArray[np.bool_], ring: NDArray[np.float64],
               pos: NDArray[np.int64], window: int, out: NDArray[np.float64]) -> None:
    """Per interval: push it (when ``ok``) into the ring of valid consecutive pairs and
    write ``(n_valid, mean_rr, nrmssd, cv_dd)`` of the window to ``out[k]``.

    ``ring[j] = (rr_prev, rr)``: a *pair* of consecutive valid intervals; a pair exists only
    when both intervals are valid and adjacent (``pos[1]`` holds the previous valid interval,
    or -1). ``pos[0]`` counts pairs pushed.
    """
    for k in range(rr.size):
        if ok[k]:
            prev = ring[window, 0]
            if pos[1] == 1:
                j = pos[0] % window
                ring[j, 0] = prev
                ring[j, 1] = rr[k]
                pos[0] += 1
            ring[window, 0] = rr[k]
            pos[1] = 1
        else:
            pos[1] = 0
        n = min(pos[0], window)
        if n < 2:
            out[k, 0] = n
            out[k, 1] = np.nan
            out[k, 2] = np.nan
            out[k, 3] = np.nan
            continue
        s = 0.0
        sd2 = 0.0
        sad = 0.0
        sad2 = 0.0
        for j in range(n):
            a = ring[j, 0]
            b = ring[j, 1]
            s += b
            d = b - a
            sd2 += d * d
            ad = abs(d)
            sad += ad
            sad2 += ad * ad
        m = s / n
        mad = sad / n
        var = sad2 / n - mad * mad
        out[k, 0] = n
        out[k, 1] = m
        out[k, 2] = np.sqrt(sd2 / n) / m
        out[k, 3] = np.sqrt(max(var, 0.0)) / mad if mad > 0 else 0.0


def _validity(rr: NDArray[np.float64], ok: NDArray[np.bool_], p: AFParams) -> NDArray[np.bool_]:
    return ok & (rr >= p.min_rr_s) & (rr <= p.max_rr_s)


def af_features(rr_s: ArrayLike, ok: ArrayLike | None = None, params: AFParams | None = None) -> NDArray[np.float64]:
    """Window features of every interval, offline, in plain NumPy (the kernel's oracle).

    Returns ``(n, 4)``: valid pairs in the window, mean RR (s), ``nrmssd``, ``cv_dd``.

    Examples
    --------
    >>> f = af_features([0.8] * 40)
    >>> f[-1].round(3).tolist()
    [32.0, 0.8, 0.0, 0.0]
    """
    p = params or AFParams()
    rr = np.asarray(rr_s, dtype=np.float64)
    okv = _validity(rr, np.ones(rr.size, bool) if ok is None else np.asarray(ok, bool), p)
    pairs: list[tuple[float, float]] = []
    out = np.full((rr.size, 4), np.nan)
    prev_ok = False
    for k in range(rr.size):
        if okv[k]:
            if prev_ok:
                pairs.append((float(rr[k - 1]), float(rr[k])))
            prev_ok = True
        else:
            prev_ok = False
        w = np.array(pairs[-p.window:], dtype=np.float64).reshape(-1, 2)
        n = w.shape[0]
        out[k, 0] = n
        if n >= 2:
            m = w[:, 1].mean()
            d = np.abs(w[:, 1] - w[:, 0])
            out[k, 1] = m
            out[k, 2] = np.sqrt(np.mean(d**2)) / m
            out[k, 3] = d.std() / d.mean() if d.mean() > 0 else 0.0
    return out


@dataclass(frozen=True, slots=True)
class AFTransition:
    """AF starts (``state`` ``"on"``) or ends (``"off"``) at beat ``beat`` (its sample)."""

    state: str
    beat: int
    detail: dict[str, float]


class AFDetector:
    """Streaming AF detector on beats (sample indices, labels, validity).

    Feed beats in order with :meth:`beats`; it returns the transitions (dated back by
    ``params.back`` beats) and the AF state of each beat fed (True while AF is on at that
    beat's decision). :meth:`break_here` marks the signal as interrupted (an unusable span or
    a gap): the next interval is not valid.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rr = np.r_[np.full(60, 0.8), rng.uniform(0.4, 1.0, 120), np.full(80, 0.8)]
    >>> beats = np.cumsum(np.r_[0, rr] * 360).astype(int)
    >>> det = AFDetector(360.0)
    >>> tr, state = det.beats(beats)
    >>> [(t.state, round(t.beat / 360)) for t in tr]
    [('on', 39), ('off', 148)]
    """

    _ECTOPIC = frozenset({"V", "F", "Q", "E", "!", "/", "f"})

    def __init__(self, fs: float, params: AFParams | None = None) -> None:
        if not fs > 0:
            raise DSPError(f"fs must be positive, got {fs}")
        self.fs = float(fs)
        self.p = params or AFParams()
        self.ring = np.zeros((self.p.window + 1, 2))
        self.pos = np.zeros(2, np.int64)
        self.last_beat: int | None = None
        self.last_ectopic = False
        self.broken = False
        self.on = False
        self.recent: list[int] = []  # last ``back + 1`` beat samples (for dating back)

    def break_here(self) -> None:
        """The signal was interrupted: the interval to the next beat is not measured."""
        self.broken = True

    def beats(self, samples: ArrayLike, labels: list[str | None] | None = None,
              broken: ArrayLike | None = None) -> tuple[list[AFTransition], NDArray[np.bool_]]:
        """Feed beats; the AF transitions and the AF state at each beat.

        ``broken[k]`` true: the interval ending at beat ``k`` spans an interruption.
        """
        s = np.asarray(samples, dtype=np.int64)
        n = s.size
        labs = labels if labels is not None else [None] * n
        brk = np.zeros(n, np.bool_) if broken is None else np.asarray(broken, np.bool_)
        rr = np.empty(n)
        ok = np.empty(n, np.bool_)
        for k in range(n):
            ect = labs[k] in self._ECTOPIC
            if self.last_beat is None:
                rr[k], ok[k] = np.nan, False
            else:
                rr[k] = (int(s[k]) - self.last_beat) / self.fs
                ok[k] = not (self.broken or brk[k] or ect or self.last_ectopic)
            self.last_beat, self.last_ectopic, self.broken = int(s[k]), ect, False
        ok = _validity(np.nan_to_num(rr), ok, self.p)
        feats = np.empty((n, 4))
        _af_kernel(np.nan_to_num(rr), ok, self.ring, self.pos, self.p.window, feats)
        out: list[AFTransition] = []
        state = np.zeros(n, np.bool_)
        p = self.p
        for k in range(n):
            self.recent.append(int(s[k]))
            if len(self.recent) > p.back + 1:
                del self.recent[0]
            nv, _, irr, cvd = feats[k]
            if nv >= p.min_valid:
                if not self.on and irr >= p.on and cvd >= p.cv_min:
                    self.on = True
                    out.append(AFTransition("on", self.recent[0], {"nrmssd": round(float(irr), 4),
                                                                   "cv_dd": round(float(cvd), 4)}))
                elif self.on and irr < p.off:
                    self.on = False
                    out.append(AFTransition("off", self.recent[0], {"nrmssd": round(float(irr), 4),
                                                                    "cv_dd": round(float(cvd), 4)}))
            state[k] = self.on
        return out, state
