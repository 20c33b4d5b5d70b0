"""Streaming atrial-fibrillation detection from the RR-interval series (Numba kernel).

AF conducts to the ventricles "irregularly irregularly": successive RR intervals differ by
large amounts, with no pattern. The detector follows the RR-irregularity family of AF
detectors (Tateno & Glass, *Med. Biol. Eng. Comput.* 39:664-671, 2001; Dash et al., *Ann.
Biomed. Eng.* 37:1701-1709, 2009; Petrenas et al., *Med. Biol. Eng. Comput.* 53:287-297,
2015): on a sliding window of the last ``window`` valid RR intervals it measures

* ``nrmssd``: the root mean square of successive RR differences normalised by the mean RR
  (Dash et al. 2009 use RMSSD / mean RR, AF above about 0.1), here without the ``trim``
  largest ``|dRR|`` of the window so that isolated ectopic beats do not count (Dash et al.
  drop the extreme RR of each window);
* ``cv_dd``: the coefficient of variation of the kept ``|dRR|`` (in AF ``dRR`` behaves like
  a random variable and ``|dRR|`` varies as much as its mean);
* ``tpr``: the turning-point ratio of the RR series (Dash et al. 2009: about 2/3 for a
  random series, lower for sinus rhythm whose RR drifts smoothly);
* ``lag_irr``: the smaller of the trimmed RMS of ``RR[k] - RR[k-2]`` and ``RR[k] - RR[k-3]``
  over the mean RR (this project's addition): bigeminy and trigeminy repeat with period 2
  or 3 and are regular at that lag, AF is irregular at every lag;
* atrial activity (when the caller feeds it): the median P-wave correlation of the last
  beats with the patient's P-wave template (:mod:`telediag.dsp.atrial`): AF needs absent
  P waves as well as irregular RR (sinus rhythm with irregular RR - sinus arrhythmia,
  frequent premature or blocked atrial beats after an AF episode in MIT-BIH 201 - keeps
  its P waves);
* ectopic removal: an interval that begins or ends at a ventricular, fusion, paced or
  unclassifiable beat (labels ``V F Q E ! / f``) is not valid when labels are known
  (ectopic beats mimic irregularity; Petrenas et al. 2015 suppress them with a median filter
  instead).

Intervals that span unusable signal or a gap, or lie outside ``[min_rr_s, max_rr_s]``, are
not valid either. :class:`AFDetector` turns AF on when the window holds ``min_valid`` valid
intervals and ``nrmssd >= on``, ``cv_dd >= cv_min``, ``tpr >= tpr_min`` and
``lag_irr >= lag_min`` (and, with P-wave correlations, their median is below ``p_on``); it
turns AF off when ``nrmssd < off``, the P-wave median exceeds ``p_off``, or fewer than
``min_valid // 2`` intervals are left to measure (e.g. a run of ectopic beats). Onset and end are dated back by
``back`` beats. The shipped thresholds were chosen on the 26 MIT-BIH records here
(``benchmarks/af_accuracy.py`` reports them and a leave-record-out run). The detector sees RR
and P-wave presence only: atrial flutter with regular conduction is not detected, and
irregularly conducted flutter is called AF (the f-wave spectrum of MIT-BIH 203's flutter
and fibrillation were measured alike, dominant frequency 6.4-6.8 Hz in V1: no flutter
detector is shipped; see ``benchmarks/af_accuracy.py``).

Every per-interval computation is a Numba kernel over whole arrays with explicit state, so
any grouping of the beats gives the same result (tested), and :func:`af_features` (offline,
whole arrays) is the oracle of the streaming kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray

from telediag.errors import DSPError

__all__ = ["N_FEATURES", "AFDetector", "AFParams", "af_features"]


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
    trim : int
        The largest ``trim`` ``|dRR|`` of the window are left out of ``nrmssd`` and ``cv_dd``
        (at most a quarter of the window), so isolated ectopic beats do not look like AF
        (after Dash et al. 2009, who drop the extreme RR of each window).
    tpr_min : float
        Minimum turning-point ratio to enter AF (random series: about 2/3).
    lag_min : float
        Minimum ``lag_irr`` to enter AF (rejects bigeminy and trigeminy whose ectopic beats
        were not labelled: their RR repeats with period 2 or 3).
    p_on, p_off : float
        Atrial-activity gate (when P-wave correlations are fed, :mod:`telediag.dsp.atrial`):
        AF is entered only while the median P-wave correlation of the last ``window`` beats
        that have one is below ``p_on``, and ends when it rises above ``p_off`` (P waves are
        back). Without correlations (or fewer than ``window // 4`` of them) the gate is open.
        ``p_on`` 0.3 (0.5 before issue 15's S-label decoupling): with the beat labels no longer
        read, frequent atrial ectopy whose sinus P waves are poorly seen (svdb, 128 Hz) is held
        back by this gate alone; 0.3 keeps MIT-BIH 201/203 unchanged or better.

    Beat labels are read only to leave intervals next to ventricular, fusion, paced or
    unclassifiable beats out: ``N`` and ``S`` are treated alike, so the AF decision does not
    depend on how the beat classifier splits supraventricular beats (tested).
    """

    window: int = 32
    min_valid: int = 24
    on: float = 0.12
    off: float = 0.09
    cv_min: float = 0.4
    back: int = 16
    min_rr_s: float = 0.25
    max_rr_s: float = 2.5
    trim: int = 8
    tpr_min: float = 0.6
    lag_min: float = 0.16
    p_on: float = 0.3
    p_off: float = 0.6

    def __post_init__(self) -> None:
        if not 4 <= self.window <= 512:
            raise DSPError(f"window must be in [4, 512] intervals, got {self.window}")
        if not 2 <= self.min_valid <= self.window:
            raise DSPError(f"min_valid must be in [2, window], got {self.min_valid}")
        if not 0 < self.off <= self.on:
            raise DSPError(f"need 0 < off <= on, got off={self.off}, on={self.on}")
        if not 0 <= self.back <= self.window:
            raise DSPError(f"back must be in [0, window], got {self.back}")
        if not self.p_on <= self.p_off:
            raise DSPError(f"need p_on <= p_off, got p_on={self.p_on}, p_off={self.p_off}")
        if not 0 < self.min_rr_s < self.max_rr_s:
            raise DSPError(f"need 0 < min_rr_s < max_rr_s, got {self.min_rr_s}, {self.max_rr_s}")


N_FEATURES = 7
"""Columns of the window features: valid pairs, mean RR (s), ``nrmssd`` (trimmed),
``cv_dd``, ``med_dd`` (median ``|dRR|`` / mean RR), ``tpr`` (turning-point ratio) and
``lag_irr`` (the smaller of the trimmed RMS of ``RR[k] - RR[k-2]`` and ``RR[k] - RR[k-3]``
/ mean RR: low for bigeminy and trigeminy, which repeat with period 2 or 3)."""


@njit(cache=True)
def _trimmed_rms(v: NDArray[np.float64], n: int, trim: int) -> float:
    """RMS of ``|v[:n]|`` without its ``min(trim, n // 4)`` largest values (NaN when n < 2)."""
    if n < 2:
        return np.nan
    a = np.abs(v[:n])
    a.sort()
    k = n - min(trim, n // 4)
    s2 = 0.0
    for j in range(k):
        s2 += a[j] * a[j]
    return np.sqrt(s2 / k)


@njit(cache=True)
def _window_features(w: NDArray[np.float64], n_rows: int, trim: int, out: NDArray[np.float64]) -> None:
    """Features of the first ``n_rows`` ring rows ``(rr, rr_1, rr_2, rr_3)``; see :data:`N_FEATURES`."""
    d1 = np.empty(n_rows)
    d2 = np.empty(n_rows)
    d3 = np.empty(n_rows)
    n = 0
    n2 = 0
    n3 = 0
    s = 0.0
    tp = 0
    nt = 0
    for j in range(n_rows):
        if np.isnan(w[j, 1]):
            continue
        s += w[j, 0]
        d = w[j, 0] - w[j, 1]
        d1[n] = d
        n += 1
        if not np.isnan(w[j, 2]):
            d2[n2] = w[j, 0] - w[j, 2]
            n2 += 1
            nt += 1
            if d * (w[j, 1] - w[j, 2]) < 0:
                tp += 1
        if not np.isnan(w[j, 3]):
            d3[n3] = w[j, 0] - w[j, 3]
            n3 += 1
    out[0] = n
    if n < 2:
        for j in range(1, N_FEATURES):
            out[j] = np.nan
        return
    m = s / n
    ad = np.abs(d1[:n])
    ad.sort()
    k = n - min(trim, n // 4)  # drop the largest |dRR| (isolated ectopic beats)
    sad = 0.0
    sad2 = 0.0
    for j in range(k):
        sad += ad[j]
        sad2 += ad[j] * ad[j]
    mad = sad / k
    var = sad2 / k - mad * mad
    out[1] = m
    out[2] = np.sqrt(sad2 / k) / m
    out[3] = np.sqrt(max(var, 0.0)) / mad if mad > 0 else 0.0
    out[4] = (ad[(n - 1) // 2] + ad[n // 2]) / 2.0 / m
    out[5] = tp / nt if nt > 0 else np.nan
    l2 = _trimmed_rms(d2, n2, trim)
    l3 = _trimmed_rms(d3, n3, trim)
    out[6] = np.nan if (np.isnan(l2) or np.isnan(l3)) else min(l2, l3) / m


@njit(cache=True)
def _af_kernel(rr: NDArray[np.float64], ok: NDArray[np.bool_], ring: NDArray[np.float64],
               pos: NDArray[np.int64], window: int, trim: int, out: NDArray[np.float64]) -> None:
    """Per interval: push it (when ``ok``) into the ring of the last ``window`` valid
    intervals and write the window's features (:data:`N_FEATURES`) to ``out[k]``.

    ``ring[j] = (rr, rr_1, rr_2, rr_3)``: a valid interval and the 1, 2, 3 intervals before
    it when those were valid and contiguous (else NaN); ``ring[window, :3]`` holds the last
    three contiguous valid intervals (newest first, NaN when broken); ``pos[0]`` counts
    intervals pushed.
    """
    for k in range(rr.size):
        if ok[k]:
            j = pos[0] % window
            ring[j, 0] = rr[k]
            ring[j, 1] = ring[window, 0]
            ring[j, 2] = ring[window, 1] if not np.isnan(ring[window, 0]) else np.nan
            ring[j, 3] = ring[window, 2] if not np.isnan(ring[j, 2]) else np.nan
            ring[window, 2] = ring[j, 2]
            ring[window, 1] = ring[j, 1]
            ring[window, 0] = rr[k]
            pos[0] += 1
        else:
            ring[window, 0] = np.nan
            ring[window, 1] = np.nan
            ring[window, 2] = np.nan
        _window_features(ring, min(pos[0], window), trim, out[k])


def _validity(rr: NDArray[np.float64], ok: NDArray[np.bool_], p: AFParams) -> NDArray[np.bool_]:
    return ok & (rr >= p.min_rr_s) & (rr <= p.max_rr_s)


def af_features(rr_s: ArrayLike, ok: ArrayLike | None = None, params: AFParams | None = None) -> NDArray[np.float64]:
    """Window features of every interval, offline, in plain NumPy (the kernel's oracle).

    Returns ``(n, 7)``: valid pairs in the window, mean RR (s), ``nrmssd`` (RMS of ``|dRR|``
    / mean RR without the ``trim`` largest), ``cv_dd`` (of the same), ``med_dd``, ``tpr`` and
    ``lag_irr`` (see :data:`N_FEATURES`).

    Examples
    --------
    >>> f = af_features([0.8] * 40)
    >>> f[-1, :5].round(3).tolist()
    [32.0, 0.8, 0.0, 0.0, 0.0]
    """
    p = params or AFParams()
    rr = np.asarray(rr_s, dtype=np.float64)
    okv = _validity(rr, np.ones(rr.size, bool) if ok is None else np.asarray(ok, bool), p)
    rows: list[tuple[float, float, float, float]] = []
    out = np.full((rr.size, N_FEATURES), np.nan)
    run: list[float] = []  # the current run of contiguous valid intervals
    for k in range(rr.size):
        if okv[k]:
            prev = run[-3:][::-1] + [np.nan] * 3
            rows.append((float(rr[k]), prev[0], prev[1], prev[2]))
            run.append(float(rr[k]))
        else:
            run = []
        w = np.array(rows[-p.window:], dtype=np.float64).reshape(-1, 4)
        w = w[~np.isnan(w[:, 1])]
        n = w.shape[0]
        out[k, 0] = n
        if n >= 2:
            m = w[:, 0].mean()
            d = w[:, 0] - w[:, 1]
            ad = np.sort(np.abs(d))
            kept = ad[: n - min(p.trim, n // 4)]
            out[k, 1] = m
            out[k, 2] = np.sqrt(np.mean(kept**2)) / m
            out[k, 3] = kept.std() / kept.mean() if kept.mean() > 0 else 0.0
            out[k, 4] = np.median(ad) / m
            has = ~np.isnan(w[:, 2])
            out[k, 5] = np.mean(d[has] * (w[has, 1] - w[has, 2]) < 0) if has.any() else np.nan

            def trms(v: NDArray[np.float64]) -> float:
                if v.size < 2:
                    return np.nan
                a = np.sort(np.abs(v))[: v.size - min(p.trim, v.size // 4)]
                return float(np.sqrt(np.mean(a**2)))

            l2 = trms(w[has, 0] - w[has, 2])
            h3 = ~np.isnan(w[:, 3])
            l3 = trms(w[h3, 0] - w[h3, 3])
            out[k, 6] = min(l2, l3) / m if not (np.isnan(l2) or np.isnan(l3)) else np.nan
    return out


@njit(cache=True)
def _median_kernel(v: NDArray[np.float64], ring: NDArray[np.float64], pos: NDArray[np.int64],
                   min_n: int, out: NDArray[np.float64]) -> None:
    """Per value: push it into the ring of the last ``ring.size`` non-NaN values and write
    their median (NaN while fewer than ``min_n``) to ``out[k]``."""
    w = ring.size
    for k in range(v.size):
        if not np.isnan(v[k]):
            ring[pos[0] % w] = v[k]
            pos[0] += 1
        n = min(pos[0], w)
        if n < min_n:
            out[k] = np.nan
        else:
            out[k] = np.median(ring[:n])


@dataclass(frozen=True, slots=True)
class AFTransition:
    """AF starts (``state`` ``"on"``) or ends (``"off"``) at beat ``beat`` (its sample)."""

    state: str
    beat: int
    detail: dict[str, float]


def _detail(irr: float, cvd: float, nv: float, pm: float = np.nan) -> dict[str, Any]:
    """The ``detail`` of an AF transition (``p_corr``: the median P-wave correlation, when known;
    ``nrmssd``/``cv_dd`` None when the window has fewer than two valid pairs: a published body
    never holds NaN, OUTPUTS.md section 1)."""
    d: dict[str, Any] = {"nrmssd": None if np.isnan(irr) else round(float(irr), 4),
                         "cv_dd": None if np.isnan(cvd) else round(float(cvd), 4), "valid": int(nv)}
    if not np.isnan(pm):
        d["p_corr"] = round(float(pm), 4)
    return d


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
    [('on', 59), ('off', 140)]
    """

    _ECTOPIC = frozenset({"V", "F", "Q", "E", "!", "/", "f"})

    def __init__(self, fs: float, params: AFParams | None = None) -> None:
        if not fs > 0:
            raise DSPError(f"fs must be positive, got {fs}")
        self.fs = float(fs)
        self.p = params or AFParams()
        self.ring = np.full((self.p.window + 1, 4), np.nan)
        self.pos = np.zeros(1, np.int64)
        self.last_beat: int | None = None
        self.last_ectopic = False
        self.broken = False
        self.on = False
        self.recent: list[int] = []  # last ``back + 1`` beat samples (for dating back)
        self.p_ring = np.zeros(self.p.window)  # the last P-wave correlations (atrial gate)
        self.p_pos = np.zeros(1, np.int64)

    def break_here(self) -> None:
        """The signal was interrupted: the interval to the next beat is not measured."""
        self.broken = True

    def beats(self, samples: ArrayLike, labels: list[str | None] | None = None,
              broken: ArrayLike | None = None,
              pcorr: ArrayLike | None = None) -> tuple[list[AFTransition], NDArray[np.bool_]]:
        """Feed beats; the AF transitions and the AF state at each beat.

        ``broken[k]`` true: the interval ending at beat ``k`` spans an interruption;
        ``pcorr[k]``: the beat's P-wave correlation (:mod:`telediag.dsp.atrial`; NaN or
        ``None``: unknown, the atrial gate stays open).
        """
        s = np.asarray(samples, dtype=np.int64)
        n = s.size
        labs = labels if labels is not None else [None] * n
        brk = np.zeros(n, np.bool_) if broken is None else np.asarray(broken, np.bool_)
        rr_l: list[float] = []
        ok_l: list[bool] = []
        lo, hi, fs = self.p.min_rr_s, self.p.max_rr_s, self.fs
        brk_l = brk.tolist()
        s_l = s.tolist()
        for k, smp in enumerate(s_l):
            ect = labs[k] in self._ECTOPIC
            if self.last_beat is None:
                rr_l.append(0.0)
                ok_l.append(False)
            else:
                r = (smp - self.last_beat) / fs
                rr_l.append(r)
                ok_l.append(not (self.broken or brk_l[k] or ect or self.last_ectopic) and lo <= r <= hi)
            self.last_beat, self.last_ectopic, self.broken = smp, ect, False
        rr = np.array(rr_l)
        ok = np.array(ok_l, dtype=np.bool_)
        feats = np.empty((n, N_FEATURES))
        _af_kernel(rr, ok, self.ring, self.pos, self.p.window, self.p.trim, feats)
        out: list[AFTransition] = []
        state = [False] * n
        p = self.p
        pmed = np.full(n, np.nan)
        if pcorr is not None and n:
            _median_kernel(np.asarray(pcorr, dtype=np.float64), self.p_ring, self.p_pos, max(2, p.window // 4), pmed)
        pm_l = pmed.tolist()
        recent = self.recent
        for k, smp, row in zip(range(n), s_l, feats.tolist(), strict=True):
            recent.append(smp)
            if len(recent) > p.back + 1:
                del recent[0]
            nv, _, irr, cvd, _, tpr, lag = row
            pm = pm_l[k]
            if not self.on:
                if nv >= p.min_valid and irr >= p.on and cvd >= p.cv_min and tpr >= p.tpr_min \
                        and not lag < p.lag_min and not pm >= p.p_on:
                    self.on = True
                    out.append(AFTransition("on", recent[0], _detail(irr, cvd, nv, pm)))
            elif nv < p.min_valid // 2 or irr < p.off or pm > p.p_off:
                # regular again, or too few measurable intervals left (e.g. a run of ectopic
                # beats) to go on calling AF
                self.on = False
                out.append(AFTransition("off", recent[0], _detail(irr, cvd, nv, pm)))
            state[k] = self.on
        return out, np.array(state, np.bool_)
