"""Streaming per-lead ECG signal quality: SQI, lead/ADC events and a usable mask.

Everything runs in one Numba kernel over ``(n_samples, n_channels)`` chunks, sample by sample,
with explicit state, so any chunking gives bitwise identical output and the offline
:func:`assess` is the streaming path run once.

Blocks and windows
------------------
The stream is cut into **blocks** of ``hop = round(hop_s * fs)`` samples (default 1 s); block
``b`` covers samples ``[b * hop, (b + 1) * hop)`` counted from the first sample fed.  When a
block completes, one SQI row per lead is produced from the trailing **window** of the last
``K = round(window_s / hop_s)`` blocks (default 8 s; fewer at the start of the stream).

Features (per lead; all computable with running sums)
-----------------------------------------------------
Three IIR filters run continuously (2nd-order Butterworth prototypes, designed with
:func:`scipy.signal.butter`, initialised to steady state on the first finite sample): ``bp``
1-40 Hz, ``q`` 5-15 Hz (QRS band) and ``h`` > 40 Hz.  NaN/inf samples are counted, excluded
from every statistic, and the filters are fed the last finite value instead.

* ``kurtosis``: kurtosis of ``bp`` over the window (kSQI: clean ECG is peaked, > 5; Gaussian
  noise is 3; Li, Mark & Clifford, *Physiol. Meas.* 29:15-32, 2008; Clifford et al.,
  *Physiol. Meas.* 33:1419-1433, 2012);
* ``slope_kurtosis``: kurtosis of the first difference of ``bp`` (peaked also for paced and
  wide QRS complexes, whose ``bp`` kurtosis is near 3);
* ``qrs_ratio``: power of ``q`` / power of ``bp`` (a pSQI-like spectral concentration in the
  QRS band, after Li et al. 2008);
* ``hf_ratio``: power of ``h`` / power of ``bp`` (muscle artefact, mains and other
  high-frequency noise).

The **noise score** is the product of three ramps (``ramp(v, a, b)`` is 0 at ``a``, 1 at ``b``,
linear between, clipped)::

    shape = max(ramp(kurtosis, 3, 5), ramp(slope_kurtosis, 8, 12))
    noise_score = shape * ramp(qrs_ratio, 0.10, 0.25) * ramp(hf_ratio, 0.40, 0.15)

and ``sqi = noise_score * (1 - nan_fraction_of_window)``, forced to 0 in a block flagged as
leads-off, flat or saturated, or while such an event is active.  A lead's block is **usable**
when ``sqi >= usable_sqi`` (default 0.5) and no ``heavy_noise`` event is active.  The ramp
end points come from the cited literature (kurtosis 3 vs 5) and from the ranges seen on
MIT-BIH records, not from the noise-stress records used in the tests.

Events (per lead), with hysteresis and minimum durations
--------------------------------------------------------
Each block gets raw flags:

* ``leads_off``: at least ``nan_frac`` (default 50 %) of the block is NaN, or the finite
  samples are exactly constant, or at least 90 % of them sit at the ADC rails
  (``adc_min``/``adc_max``);
* ``flat_line``: not leads-off, and the standard deviation of ``bp`` in the block is below
  ``flat_mv`` (default 0.01 mV);
* ``saturation``: not leads-off, and at least ``sat_frac`` (default 1 %) of the finite
  samples are at the rails, or in runs of at least ``clip_run_s`` (default 25 ms) of identical
  values at the block's maximum or minimum that were entered by a step of at least 1 % of the
  block's range (flat-topped, clipped QRS complexes when the rails are unknown: a clipped R
  wave hits the clip level steeply, whereas the plateaus of coarsely quantised T-wave tops
  or baselines are entered by one quantisation step; R waves clipped to about half their
  height or less are caught);
* ``heavy_noise``: the window's noise score is below ``noise_on`` (default 0.3); once the
  event is active the flag stays up until the score exceeds ``noise_off`` (default 0.5).

An event starts after ``min_s`` of consecutive flagged blocks (leads_off 1 s, flat_line
``flat_min_s`` = 4 s, saturation 1 s, heavy_noise ``noise_min_s`` = 3 s) and its onset is the
first sample of the first flagged block; it ends after ``event_off_s`` (default 2 s) of
consecutive unflagged blocks, and its end is the first sample of the first unflagged block.
The streaming API reports an event twice: when it starts (``end is None``) and when it ends.

Amplitudes are in the stream's units; ``units_per_mv`` (default 1: signals in mV; e.g. 200
for MIT-BIH ADC counts) scales the mV thresholds.  The sample rate must be at least 100 Hz
(the 40 Hz high band must exist).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray

from telediag.dsp.design import butter_sos, sosfilt_zi
from telediag.errors import DSPError

__all__ = [
    "EVENT_KINDS",
    "FEATURE_NAMES",
    "QualityEvent",
    "QualityReport",
    "QualityState",
    "SQIUpdate",
    "SignalQuality",
    "all_plausible",
    "assess",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

EVENT_KINDS: tuple[str, ...] = ("leads_off", "flat_line", "saturation", "heavy_noise")
"""Event kinds, in the order of their bit in :attr:`SQIUpdate.flags` (bit k: raw flag of
kind k in this block; bit 4 + k: event of kind k active after this block)."""

# per-sample accumulators (per channel)
_A_NFIN, _A_NNAN, _A_S1, _A_S2, _A_S3, _A_S4 = 0, 1, 2, 3, 4, 5
_A_D1, _A_D2, _A_D3, _A_D4, _A_PH, _A_PQ, _A_RAIL = 6, 7, 8, 9, 10, 11, 12
_N_ACC = 13
# per-channel float scalars
_C_HOLD, _C_PREVBP, _C_PREVRAW, _C_RUNSTEP = 0, 1, 2, 3
_N_CF = 4
# per-channel int scalars
_C_STARTED, _C_RUN = 0, 1
_N_CI = 2
# global int scalars
_G_POS, _G_BLOCK, _G_RPOS, _G_RCOUNT = 0, 1, 2, 3
_N_G = 4
# event machine slots
_E_ACTIVE, _E_RUNT, _E_RUNF, _E_START, _E_ONSET = 0, 1, 2, 3, 4
_N_E = 5
# integer parameters (int vector): block length, clip run, event end and start lengths (4 kinds)
_I_HOP, _I_CLIPRUN, _I_OFF, _I_ON = 0, 1, 2, 3
_N_I = 7
# parameters (float vector)
(
    _P_NANFRAC,
    _P_SATFRAC,
    _P_NOISEON,
    _P_NOISEOFF,
    _P_USABLE,
) = range(5)
FEATURE_NAMES: tuple[str, ...] = (
    "kurtosis",
    "slope_kurtosis",
    "qrs_ratio",
    "hf_ratio",
    "nan_fraction",
)
"""Names of the last axis of :attr:`SQIUpdate.features`."""
# feature columns
_F_KURT, _F_SKURT, _F_QR, _F_HR, _F_NAN = 0, 1, 2, 3, 4
_N_F = 5


# --------------------------------------------------------------------------------------
# Numba kernels
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _lead_run(
    x: FloatArray,
    n0: int,
    n1: int,
    c: int,
    pos: int,
    lims: FloatArray,
    sos: FloatArray,
    zi: FloatArray,
    z: FloatArray,
    cf: FloatArray,
    ci: IntArray,
    acc: FloatArray,
    blockbuf: FloatArray,
    runbuf: IntArray,
    stepbuf: FloatArray,
) -> None:
    """The per-sample work on samples ``x[n0:n1, c]`` of lead ``c`` (block positions from ``pos``,
    all in one block): filters, identical-value runs, block sums.

    Lead by lead, with the filter states, the run state and the block sums in local variables
    (registers) rather than array slots read and written every sample (3x faster); the same
    operations in the same order as sample by sample, so the same values (leads are
    independent here). The cascades are those built by :class:`SignalQuality`: 2 sections
    (1-40 Hz), 2 (5-15 Hz) and 1 (> 40 Hz), direct form II transposed (SciPy's ``sosfilt``):
    ``y = b0 u + z0; z0 = b1 u - a1 y + z1; z1 = b2 u - a2 y``; ``sos`` (5, 6), ``zi`` (5, 2) and the
    state ``z`` (5, 2, n_channels) hold them in that order (rows 0-1, 2-3, 4).
    """
    # b0, b1, b2, a1, a2 of the five sections
    a0, a1, a2, a4, a5 = sos[0, 0], sos[0, 1], sos[0, 2], sos[0, 4], sos[0, 5]
    b0, b1, b2, b4, b5 = sos[1, 0], sos[1, 1], sos[1, 2], sos[1, 4], sos[1, 5]
    c0, c1, c2, c4, c5 = sos[2, 0], sos[2, 1], sos[2, 2], sos[2, 4], sos[2, 5]
    d0, d1, d2, d4, d5 = sos[3, 0], sos[3, 1], sos[3, 2], sos[3, 4], sos[3, 5]
    e0, e1, e2, e4, e5 = sos[4, 0], sos[4, 1], sos[4, 2], sos[4, 4], sos[4, 5]
    za0, za1, zb0, zb1 = z[0, 0, c], z[0, 1, c], z[1, 0, c], z[1, 1, c]
    zc0, zc1, zd0, zd1 = z[2, 0, c], z[2, 1, c], z[3, 0, c], z[3, 1, c]
    ze0, ze1 = z[4, 0, c], z[4, 1, c]
    hold, prev_bp, prev_raw, run_step = cf[c, _C_HOLD], cf[c, _C_PREVBP], cf[c, _C_PREVRAW], cf[c, _C_RUNSTEP]
    started, run = ci[c, _C_STARTED], ci[c, _C_RUN]
    n_fin, n_nan, s1, s2, s3, s4 = (acc[c, _A_NFIN], acc[c, _A_NNAN], acc[c, _A_S1], acc[c, _A_S2],
                                    acc[c, _A_S3], acc[c, _A_S4])
    t1, t2, t3, t4 = acc[c, _A_D1], acc[c, _A_D2], acc[c, _A_D3], acc[c, _A_D4]
    p_h, p_q, rail = acc[c, _A_PH], acc[c, _A_PQ], acc[c, _A_RAIL]
    lo_lim, hi_lim = lims[c, 0], lims[c, 1]
    k = pos
    for n in range(n0, n1):
        v = x[n, c]
        if not np.isfinite(v):
            n_nan += 1.0
            blockbuf[k, c] = np.nan
            runbuf[k, c] = 0
            stepbuf[k, c] = 0.0
            run = 0
            if started == 1:  # keep the filters running on the held value (outputs unused)
                u = hold
                y = a0 * u + za0
                za0 = a1 * u - a4 * y + za1
                za1 = a2 * u - a5 * y
                w = y
                y = b0 * w + zb0
                zb0 = b1 * w - b4 * y + zb1
                zb1 = b2 * w - b5 * y
                y = c0 * u + zc0
                zc0 = c1 * u - c4 * y + zc1
                zc1 = c2 * u - c5 * y
                w = y
                y = d0 * w + zd0
                zd0 = d1 * w - d4 * y + zd1
                zd1 = d2 * w - d5 * y
                y = e0 * u + ze0
                ze0 = e1 * u - e4 * y + ze1
                ze1 = e2 * u - e5 * y
            k += 1
            continue
        blockbuf[k, c] = v
        first = started == 0
        if first:  # steady state for a step of height v
            started = 1
            za0, za1, zb0, zb1 = zi[0, 0] * v, zi[0, 1] * v, zi[1, 0] * v, zi[1, 1] * v
            zc0, zc1, zd0, zd1 = zi[2, 0] * v, zi[2, 1] * v, zi[3, 0] * v, zi[3, 1] * v
            ze0, ze1 = zi[4, 0] * v, zi[4, 1] * v
        w = a0 * v + za0  # 1-40 Hz
        za0 = a1 * v - a4 * w + za1
        za1 = a2 * v - a5 * w
        yb = b0 * w + zb0
        zb0 = b1 * w - b4 * yb + zb1
        zb1 = b2 * w - b5 * yb
        w = c0 * v + zc0  # 5-15 Hz
        zc0 = c1 * v - c4 * w + zc1
        zc1 = c2 * v - c5 * w
        yq = d0 * w + zd0
        zd0 = d1 * w - d4 * yq + zd1
        zd1 = d2 * w - d5 * yq
        yh = e0 * v + ze0  # > 40 Hz
        ze0 = e1 * v - e4 * yh + ze1
        ze1 = e2 * v - e5 * yh
        if first:
            prev_bp = yb
            run = 1
            run_step = 0.0
        elif v == prev_raw and run > 0:
            run += 1
        else:
            run = 1
            run_step = abs(v - prev_raw)
        hold = v
        prev_raw = v
        runbuf[k, c] = run
        stepbuf[k, c] = run_step
        d = yb - prev_bp
        prev_bp = yb
        n_fin += 1.0
        y2 = yb * yb
        s1 += yb
        s2 += y2
        s3 += y2 * yb
        s4 += y2 * y2
        dd = d * d
        t1 += d
        t2 += dd
        t3 += dd * d
        t4 += dd * dd
        p_h += yh * yh
        p_q += yq * yq
        if v <= lo_lim or v >= hi_lim:
            rail += 1.0
        k += 1
    z[0, 0, c], z[0, 1, c], z[1, 0, c], z[1, 1, c] = za0, za1, zb0, zb1
    z[2, 0, c], z[2, 1, c], z[3, 0, c], z[3, 1, c] = zc0, zc1, zd0, zd1
    z[4, 0, c], z[4, 1, c] = ze0, ze1
    cf[c, _C_HOLD], cf[c, _C_PREVBP], cf[c, _C_PREVRAW], cf[c, _C_RUNSTEP] = hold, prev_bp, prev_raw, run_step
    ci[c, _C_STARTED], ci[c, _C_RUN] = started, run
    acc[c, _A_NFIN], acc[c, _A_NNAN], acc[c, _A_S1], acc[c, _A_S2] = n_fin, n_nan, s1, s2
    acc[c, _A_S3], acc[c, _A_S4] = s3, s4
    acc[c, _A_D1], acc[c, _A_D2], acc[c, _A_D3], acc[c, _A_D4] = t1, t2, t3, t4
    acc[c, _A_PH], acc[c, _A_PQ], acc[c, _A_RAIL] = p_h, p_q, rail


@njit(cache=True, nogil=True)
def _ramp(v: float, a: float, b: float) -> float:
    r = (v - a) / (b - a)
    if not r > 0.0:  # also NaN
        return 0.0
    return 1.0 if r > 1.0 else r


@njit(cache=True, nogil=True)
def _kurt(n: float, s1: float, s2: float, s3: float, s4: float) -> float:
    if n < 4:
        return np.nan
    m = s1 / n
    c2 = s2 / n - m * m
    if not c2 > 0.0:
        return np.nan
    c4 = s4 / n - 4.0 * m * s3 / n + 6.0 * m * m * s2 / n - 3.0 * m**4
    return c4 / (c2 * c2)


@njit(cache=True, nogil=True)
def _event_step(ev: IntArray, flag: bool, block: int, on_blocks: int, off_blocks: int) -> int:
    """Advance one hysteresis machine by one block.

    Returns 1 when the event starts, -1 when it ends, 0 otherwise.
    """
    if flag:
        if ev[_E_RUNT] == 0:
            ev[_E_START] = block
        ev[_E_RUNT] += 1
        ev[_E_RUNF] = 0
        if ev[_E_ACTIVE] == 0 and ev[_E_RUNT] >= on_blocks:
            ev[_E_ACTIVE] = 1
            ev[_E_ONSET] = ev[_E_START]
            return 1
    else:
        ev[_E_RUNT] = 0
        if ev[_E_RUNF] == 0:
            ev[_E_START] = block
        ev[_E_RUNF] += 1
        if ev[_E_ACTIVE] == 1 and ev[_E_RUNF] >= off_blocks:
            ev[_E_ACTIVE] = 0
            return -1
    return 0


@njit(cache=True, nogil=True)
def _quality_kernel(
    x: FloatArray,
    ipar: IntArray,
    par: FloatArray,
    lims: FloatArray,
    sos: FloatArray,
    zi: FloatArray,
    z: FloatArray,
    cf: FloatArray,
    ci: IntArray,
    g: IntArray,
    acc: FloatArray,
    blockbuf: FloatArray,
    runbuf: IntArray,
    stepbuf: FloatArray,
    ring: FloatArray,
    evs: IntArray,
    out_block: IntArray,
    out_sqi: FloatArray,
    out_usable: BoolArray,
    out_feat: FloatArray,
    out_flags: IntArray,
    ev_out: IntArray,
) -> tuple[int, int]:
    """Process one chunk; update all state in place; return (#block rows, #event records).

    ``ipar``: ``hop``, ``clip_run``, ``off_blocks``, then ``on_blocks`` of each event kind (see
    :class:`SignalQuality`); ``sos``/``zi``/``z``: the five filter sections (see :func:`_lead_run`).
    """
    hop = ipar[_I_HOP]
    clip_run = ipar[_I_CLIPRUN]
    off_blocks = ipar[_I_OFF]
    n_samples = x.shape[0]
    n_ch = x.shape[1]
    n_win = ring.shape[0]
    n_rows = 0
    n_ev = 0
    wsum = np.zeros(_N_ACC)
    n = 0
    while n < n_samples:
        pos = g[_G_POS]
        m = min(n_samples - n, hop - pos)  # samples up to the end of the current block
        for c in range(n_ch):
            _lead_run(x, n, n + m, c, pos, lims, sos, zi, z, cf, ci, acc, blockbuf, runbuf, stepbuf)
        n += m
        pos += m
        g[_G_POS] = pos
        if pos < hop:
            continue
        # ---------------- block complete ----------------
        g[_G_POS] = 0
        block = g[_G_BLOCK]
        g[_G_BLOCK] = block + 1
        rp = g[_G_RPOS]
        g[_G_RPOS] = (rp + 1) % n_win
        if g[_G_RCOUNT] < n_win:
            g[_G_RCOUNT] += 1
        cnt = g[_G_RCOUNT]
        out_block[n_rows] = block
        for c in range(n_ch):
            a = acc[c]
            nfin = a[_A_NFIN]
            # block extremes and flat-topped runs
            lo = np.inf
            hi = -np.inf
            for k in range(hop):
                w = blockbuf[k, c]
                if w == w:
                    if w < lo:
                        lo = w
                    if w > hi:
                        hi = w
            flattop = 0
            if nfin > 0 and hi > lo:
                min_step = 0.01 * (hi - lo)
                for k in range(hop):
                    w = blockbuf[k, c]
                    rl = runbuf[k, c]
                    if rl >= clip_run and (w == hi or w == lo) and stepbuf[k, c] >= min_step:
                        # a run is counted whole when it reaches clip_run samples
                        flattop += clip_run if rl == clip_run else 1
            nan_b = a[_A_NNAN] / hop
            leads_off = nan_b >= par[_P_NANFRAC] or nfin == 0
            if not leads_off:
                leads_off = hi == lo or a[_A_RAIL] >= 0.9 * nfin
            flat = False
            sat = False
            if not leads_off:
                m = a[_A_S1] / nfin
                var = a[_A_S2] / nfin - m * m
                flat = var < lims[c, 2] * lims[c, 2]
                sat = (a[_A_RAIL] + flattop) >= par[_P_SATFRAC] * nfin
            # push block sums into the window ring
            for k in range(_N_ACC):
                ring[rp, c, k] = a[k]
                a[k] = 0.0
            # window features (oldest block first)
            wsum[:] = 0.0
            first = (rp - cnt + 1 + n_win) % n_win
            for j in range(cnt):
                r = (first + j) % n_win
                for k in range(_N_ACC):
                    wsum[k] += ring[r, c, k]
            wn = wsum[_A_NFIN]
            kurt = _kurt(wn, wsum[_A_S1], wsum[_A_S2], wsum[_A_S3], wsum[_A_S4])
            skurt = _kurt(wn, wsum[_A_D1], wsum[_A_D2], wsum[_A_D3], wsum[_A_D4])
            pbp = wsum[_A_S2]
            qr = wsum[_A_PQ] / pbp if pbp > 0 else np.nan
            hr = wsum[_A_PH] / pbp if pbp > 0 else np.nan
            nan_w = wsum[_A_NNAN] / (cnt * hop)
            shape = max(_ramp(kurt, 3.0, 5.0), _ramp(skurt, 8.0, 12.0))
            score = shape * _ramp(qr, 0.10, 0.25)
            if hr == hr:
                score *= _ramp(hr, 0.40, 0.15)
            else:
                score = 0.0
            noisy_active = evs[3, c, _E_ACTIVE] == 1
            noise_flag = score < (par[_P_NOISEOFF] if noisy_active else par[_P_NOISEON])
            noise_flag = noise_flag and not leads_off
            flags_now = (leads_off, flat, sat, noise_flag)
            bits = 0
            for kind in range(4):
                if flags_now[kind]:
                    bits |= 1 << kind
                res = _event_step(evs[kind, c], flags_now[kind], block, ipar[_I_ON + kind], off_blocks)
                if res != 0:
                    ev_out[n_ev, 0] = kind
                    ev_out[n_ev, 1] = c
                    ev_out[n_ev, 2] = evs[kind, c, _E_ONSET] * hop
                    ev_out[n_ev, 3] = evs[kind, c, _E_START] * hop if res < 0 else -1
                    n_ev += 1
                if evs[kind, c, _E_ACTIVE] == 1:
                    bits |= 1 << (4 + kind)
            sqi = score * (1.0 - nan_w)
            if (bits & 0b0111) != 0 or (bits & 0b01110000) != 0:
                sqi = 0.0
            out_sqi[n_rows, c] = sqi
            out_usable[n_rows, c] = sqi >= par[_P_USABLE] and (bits & 0b10000000) == 0
            out_feat[n_rows, c, _F_KURT] = kurt
            out_feat[n_rows, c, _F_SKURT] = skurt
            out_feat[n_rows, c, _F_QR] = qr
            out_feat[n_rows, c, _F_HR] = hr
            out_feat[n_rows, c, _F_NAN] = nan_w
            out_flags[n_rows, c] = bits
        n_rows += 1
    return n_rows, n_ev


@njit(cache=True, nogil=True)
def _all_plausible(x: FloatArray, lim: FloatArray) -> bool:
    n, n_ch = x.shape
    for i in range(n):
        for c in range(n_ch):
            a = abs(x[i, c])
            if not (a <= lim[c] and a < np.inf):  # NaN compares false
                return False
    return True


def all_plausible(x: FloatArray, lim: FloatArray | None = None) -> bool:
    """True when every sample of ``x`` ``(n, n_channels)`` is finite and, with ``lim``
    ``(n_channels,)``, at most ``lim[c]`` in magnitude: one pass, no temporary arrays (the
    engine's per-chunk screen; when it says False, the callers build their exact masks).

    >>> all_plausible(np.array([[0.5, -2.0]]), np.array([1.0, np.inf]))
    True
    >>> all_plausible(np.array([[0.5, np.nan]])), all_plausible(np.array([[1.5, 0.0]]), np.array([1.0, 1.0]))
    (False, False)
    """
    if x.ndim != 2 or x.dtype != np.float64 or not x.flags.c_contiguous:
        raise DSPError(f"x must be a C-contiguous (n, n_channels) float64 array, got {x.dtype} {x.shape}")
    if lim is None:
        lim = np.full(x.shape[1], np.inf)
    elif lim.shape != (x.shape[1],) or lim.dtype != np.float64:
        raise DSPError(f"lim must be a float64 array of shape ({x.shape[1]},), got {lim.dtype} {lim.shape}")
    if x.flags.writeable:  # read-only views: one kernel specialisation for writable and read-only input
        x = x.view()
        x.flags.writeable = False
    if lim.flags.writeable:
        lim = lim.view()
        lim.flags.writeable = False
    return bool(_all_plausible(x, lim))


# --------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QualityEvent:
    """A quality event on one lead.

    Attributes
    ----------
    kind : str
        One of :data:`EVENT_KINDS`.
    channel : int
        Lead index.
    onset : int
        First sample of the event.
    end : int or None
        First sample after the event; ``None`` while it is still active.
    """

    kind: str
    channel: int
    onset: int
    end: int | None = None


@dataclass(frozen=True, slots=True)
class SQIUpdate:
    """SQI rows for the blocks completed by one :meth:`SignalQuality.process` call.

    Attributes
    ----------
    block_start : numpy.ndarray of int64, shape (n,)
        First sample of each completed block (its window ends at ``block_start + hop``).
    sqi : numpy.ndarray of float64, shape (n, n_channels)
        Signal-quality index in [0, 1].
    usable : numpy.ndarray of bool, shape (n, n_channels)
        Beats in this block on this lead may be trusted.
    features : numpy.ndarray of float64, shape (n, n_channels, 5)
        ``kurtosis``, ``slope_kurtosis``, ``qrs_ratio``, ``hf_ratio``, ``nan_fraction``
        of the window.
    flags : numpy.ndarray of int64, shape (n, n_channels)
        Bit ``k``: raw flag of :data:`EVENT_KINDS` ``[k]`` in this block; bit ``4 + k``:
        that event is active.
    """

    block_start: IntArray
    sqi: FloatArray
    usable: BoolArray
    features: FloatArray
    flags: IntArray

    @staticmethod
    def concatenate(updates: Sequence[SQIUpdate], n_channels: int) -> SQIUpdate:
        """Join consecutive updates into one."""
        if not updates:
            return SQIUpdate(
                np.zeros(0, np.int64),
                np.zeros((0, n_channels)),
                np.zeros((0, n_channels), np.bool_),
                np.zeros((0, n_channels, _N_F)),
                np.zeros((0, n_channels), np.int64),
            )
        return SQIUpdate(
            np.concatenate([u.block_start for u in updates]),
            np.concatenate([u.sqi for u in updates]),
            np.concatenate([u.usable for u in updates]),
            np.concatenate([u.features for u in updates]),
            np.concatenate([u.flags for u in updates]),
        )


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Quality of a whole recording (or of everything streamed so far).

    Attributes
    ----------
    fs : float
        Sample rate (Hz).
    hop : int
        Block length in samples.
    sqi_rows : SQIUpdate
        One row per completed block.
    events : list of QualityEvent
        Events in order of their start confirmation; still-active ones have ``end=None``.
    """

    fs: float
    hop: int
    sqi_rows: SQIUpdate
    events: list[QualityEvent]

    @classmethod
    def from_stream(
        cls,
        fs: float,
        hop: int,
        n_channels: int,
        updates: Sequence[SQIUpdate],
        events: Sequence[QualityEvent],
    ) -> QualityReport:
        """Build a report from the outputs of successive :meth:`SignalQuality.process` calls.

        An end record replaces the start record of the same event.
        """
        merged: list[QualityEvent] = []
        open_idx: dict[tuple[str, int, int], int] = {}
        for ev in events:
            key = (ev.kind, ev.channel, ev.onset)
            if ev.end is None:
                open_idx[key] = len(merged)
                merged.append(ev)
            elif key in open_idx:
                merged[open_idx.pop(key)] = ev
            else:
                merged.append(ev)
        return cls(fs, hop, SQIUpdate.concatenate(updates, n_channels), merged)

    def usable_mask(self, samples: ArrayLike, channel: int | None = None) -> BoolArray:
        """Whether each beat sample lies in a usable block.

        Parameters
        ----------
        samples : array_like of int
            Beat sample indices.
        channel : int, optional
            Lead to check; ``None``: usable when *any* lead is usable.

        Returns
        -------
        numpy.ndarray of bool
            ``False`` also for samples in blocks not assessed (yet).
        """
        return _usable_lookup(
            self.sqi_rows.block_start, self.sqi_rows.usable, self.hop, samples, channel
        )


def _usable_lookup(
    block_start: IntArray,
    usable: BoolArray,
    hop: int,
    samples: ArrayLike,
    channel: int | None,
) -> BoolArray:
    s = np.asarray(samples)
    if s.ndim != 1 or (s.size and s.dtype.kind not in "iu"):
        raise DSPError(f"samples must be a 1-D integer array, got {s.dtype} {s.shape}")
    s = s.astype(np.int64)
    n_ch = usable.shape[1]
    if channel is not None and not 0 <= channel < n_ch:
        raise DSPError(f"channel must be in [0, {n_ch}), got {channel}")
    col: BoolArray = np.any(usable, axis=1) if channel is None else np.asarray(usable[:, channel])
    out = np.zeros(s.size, np.bool_)
    if block_start.size == 0:
        return out
    idx = (s - block_start[0]) // hop
    ok = (idx >= 0) & (idx < block_start.size)
    out[ok] = col[idx[ok]]
    return out


# --------------------------------------------------------------------------------------
# Streaming state and stage
# --------------------------------------------------------------------------------------
@dataclass(slots=True)
class QualityState:
    """All streaming state of :class:`SignalQuality` (arrays updated by the kernel).

    The filter state ``z`` of the five sections (1-40 Hz: 0-1, 5-15 Hz: 2-3, > 40 Hz: 4) has SciPy's
    ``(n_sections, 2, n_channels)`` layout; ``blockbuf``,
    ``runbuf`` and ``stepbuf`` hold the current block's raw samples, identical-value run
    lengths and the step that entered each run;
    ``ring`` the per-block sums of the window; ``events`` one hysteresis machine per
    (kind, channel).
    """

    z: FloatArray
    cf: FloatArray
    ci: IntArray
    g: IntArray
    acc: FloatArray
    blockbuf: FloatArray
    runbuf: IntArray
    stepbuf: FloatArray
    ring: FloatArray
    events: IntArray

    @classmethod
    def initial(
        cls, n_channels: int, hop: int, n_win: int, n_sections: int
    ) -> QualityState:
        """State before the first sample."""
        c = n_channels
        return cls(
            z=np.zeros((n_sections, 2, c)),
            cf=np.zeros((c, _N_CF)),
            ci=np.zeros((c, _N_CI), np.int64),
            g=np.zeros(_N_G, np.int64),
            acc=np.zeros((c, _N_ACC)),
            blockbuf=np.zeros((hop, c)),
            runbuf=np.zeros((hop, c), np.int64),
            stepbuf=np.zeros((hop, c)),
            ring=np.zeros((n_win, c, _N_ACC)),
            events=np.zeros((4, c, _N_E), np.int64),
        )


def _per_channel(
    name: str, value: float | Sequence[float] | None, n: int, default: float
) -> FloatArray:
    if value is None:
        return np.full(n, default)
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise DSPError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    if np.any(np.isnan(arr)):
        raise DSPError(f"{name} must not contain NaN, got {arr.tolist()}")
    return arr


def _pos(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise DSPError(f"{name} must be a finite number > 0, got {value!r}") from e
    if not np.isfinite(v) or v <= 0:
        raise DSPError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _frac(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 < v <= 1.0:
        raise DSPError(f"{name} must be in (0, 1], got {value!r}")
    return v


class SignalQuality:
    """Streaming per-lead signal-quality assessment (see the module docstring).

    Parameters
    ----------
    fs : float
        Sample rate (Hz), at least 100.
    n_channels : int
        Number of leads (columns of each chunk).
    hop_s, window_s : float
        Block length (default 1 s) and SQI window (default 8 s, a multiple of ``hop_s``).
    units_per_mv : float or sequence of float
        Signal units per mV, per lead or for all (default 1.0).
    adc_min, adc_max : float or sequence of float, optional
        ADC rails (or physical clip levels) in signal units; unknown by default.
    flat_mv, flat_min_s : float
        Flat-line threshold on the 1-40 Hz standard deviation (0.01 mV) and duration (4 s).
    nan_frac : float
        Fraction of NaN in a block that flags leads-off (0.5).
    sat_frac, clip_run_s : float
        Saturation: fraction of clipped samples in a block (0.01) and minimum run of
        identical extreme values (0.025 s).
    noise_on, noise_off, noise_min_s : float
        Heavy-noise hysteresis on the noise score (0.3 / 0.5) and minimum duration (3 s).
    usable_sqi : float
        SQI threshold of a usable block (0.5).
    event_off_s : float
        Clean time needed to end an event (2 s).

    Examples
    --------
    >>> import numpy as np
    >>> sq = SignalQuality(250.0, 1)
    >>> rows, events = sq.process(np.full((750, 1), np.nan))
    >>> rows.sqi[:, 0].tolist(), events[0].kind, events[0].onset
    ([0.0, 0.0, 0.0], 'leads_off', 0)
    """

    def __init__(
        self,
        fs: float,
        n_channels: int,
        *,
        hop_s: float = 1.0,
        window_s: float = 8.0,
        units_per_mv: float | Sequence[float] = 1.0,
        adc_min: float | Sequence[float] | None = None,
        adc_max: float | Sequence[float] | None = None,
        flat_mv: float = 0.01,
        flat_min_s: float = 4.0,
        nan_frac: float = 0.5,
        sat_frac: float = 0.01,
        clip_run_s: float = 0.025,
        noise_on: float = 0.3,
        noise_off: float = 0.5,
        noise_min_s: float = 3.0,
        usable_sqi: float = 0.5,
        event_off_s: float = 2.0,
    ) -> None:
        self.fs = _pos("fs", fs)
        if self.fs < 100.0:
            raise DSPError(f"fs must be >= 100 Hz (the > 40 Hz band is used), got {fs}")
        if isinstance(n_channels, bool) or not isinstance(n_channels, int | np.integer):
            raise DSPError(f"n_channels must be an int, got {n_channels!r}")
        if not 1 <= int(n_channels) <= 256:
            raise DSPError(f"n_channels must be in [1, 256], got {n_channels}")
        self.n_channels = int(n_channels)
        hop_s = _pos("hop_s", hop_s)
        window_s = _pos("window_s", window_s)
        self.hop = int(round(hop_s * self.fs))
        if self.hop < 10:
            raise DSPError(f"hop_s * fs must be >= 10 samples, got {hop_s * self.fs}")
        self.n_win = int(round(window_s / hop_s))
        if self.n_win < 1 or abs(self.n_win * hop_s - window_s) > 1e-9 * window_s:
            raise DSPError(
                f"window_s must be a positive multiple of hop_s ({hop_s}), got {window_s}"
            )
        upm = _per_channel("units_per_mv", units_per_mv, self.n_channels, 1.0)
        if np.any(upm <= 0) or not np.all(np.isfinite(upm)):
            raise DSPError(f"units_per_mv must be finite and > 0, got {upm.tolist()}")
        lo = _per_channel("adc_min", adc_min, self.n_channels, -np.inf)
        hi = _per_channel("adc_max", adc_max, self.n_channels, np.inf)
        if np.any(lo >= hi):
            raise DSPError(f"adc_min must be < adc_max, got {lo.tolist()} and {hi.tolist()}")
        self.units_per_mv = upm
        self.adc_min = lo
        self.adc_max = hi
        flat_mv = _pos("flat_mv", flat_mv)
        flat_min_s = _pos("flat_min_s", flat_min_s)
        noise_min_s = _pos("noise_min_s", noise_min_s)
        event_off_s = _pos("event_off_s", event_off_s)
        if not 0.0 <= noise_on <= noise_off <= 1.0:
            raise DSPError(
                f"need 0 <= noise_on <= noise_off <= 1, got noise_on={noise_on}, "
                f"noise_off={noise_off}"
            )
        usable_sqi = _frac("usable_sqi", usable_sqi)
        clip_run = max(3, int(round(_pos("clip_run_s", clip_run_s) * self.fs)))
        on_blocks = [
            1,
            max(1, int(np.ceil(flat_min_s / hop_s - 1e-9))),
            1,
            max(1, int(np.ceil(noise_min_s / hop_s - 1e-9))),
        ]
        off_blocks = max(1, int(np.ceil(event_off_s / hop_s - 1e-9)))
        self._ipar = np.array([self.hop, clip_run, off_blocks, *on_blocks], np.int64)
        assert self._ipar.shape == (_N_I,)
        # per-lead limits in the stream's units: adc_min, adc_max, flat threshold
        self._lims = np.ascontiguousarray(np.stack([lo, hi, flat_mv * upm], axis=1))
        self._par = np.array(
            [
                _frac("nan_frac", nan_frac),
                _frac("sat_frac", sat_frac),
                float(noise_on),
                float(noise_off),
                usable_sqi,
            ]
        )
        sos_bp = butter_sos(2, (1.0, 40.0), "bandpass", fs=self.fs)
        sos_q = butter_sos(2, (5.0, 15.0), "bandpass", fs=self.fs)
        sos_h = butter_sos(2, 40.0, "highpass", fs=self.fs)
        # the kernel (_lead_run) is written for these cascades: 2 + 2 + 1 sections, in one array
        assert (sos_bp.shape, sos_q.shape, sos_h.shape) == ((2, 6), (2, 6), (1, 6))
        self._sos = np.ascontiguousarray(np.concatenate([sos_bp, sos_q, sos_h]))
        self._zi = np.ascontiguousarray(np.concatenate([sosfilt_zi(s) for s in (sos_bp, sos_q, sos_h)]))
        # shared results of chunks that complete no block (zero-size: nothing to write) and event scratch
        c = self.n_channels
        self._no_rows = (np.empty(0, np.int64), np.empty((0, c)), np.empty((0, c), np.bool_),
                         np.empty((0, c, _N_F)), np.empty((0, c), np.int64))
        self._no_update = SQIUpdate(*self._no_rows)
        self._ev_out = np.empty((c * 4 + 1, 4), np.int64)
        self.state = self._initial()

    def _initial(self) -> QualityState:
        return QualityState.initial(self.n_channels, self.hop, self.n_win, self._sos.shape[0])

    def reset(self) -> None:
        """Back to the state before the first sample."""
        self.state = self._initial()

    @property
    def assessed_until(self) -> int:
        """Samples ``< assessed_until`` belong to blocks whose SQI has been reported."""
        return int(self.state.g[_G_BLOCK]) * self.hop

    def open_events(self) -> list[QualityEvent]:
        """The events active now (``end`` None), by kind then lead."""
        ev = self.state.events
        return [QualityEvent(EVENT_KINDS[k], c, int(ev[k, c, _E_ONSET]) * self.hop)
                for k in range(ev.shape[0]) for c in range(ev.shape[1]) if ev[k, c, _E_ACTIVE] == 1]

    def process(self, chunk: ArrayLike) -> tuple[SQIUpdate, list[QualityEvent]]:
        """Feed the next samples; return the SQI rows of newly completed blocks and events.

        Parameters
        ----------
        chunk : array_like, shape (n_samples, n_channels) or (n_samples,) for one lead
            Real numeric samples (NaN/inf allowed: they count as missing).

        Returns
        -------
        SQIUpdate
            Rows of blocks completed by this chunk (possibly none).
        list of QualityEvent
            Event starts (``end is None``) and ends confirmed by this chunk.

        Examples
        --------
        >>> import numpy as np
        >>> sq = SignalQuality(200.0, 2)
        >>> rows, _ = sq.process(np.zeros((500, 2)))
        >>> rows.block_start.tolist()
        [0, 200]
        """
        x = np.asarray(chunk)
        if x.dtype.kind not in "biuf":
            raise DSPError(f"chunk must be a real numeric array, got dtype {x.dtype}")
        if x.ndim == 1 and self.n_channels == 1:
            x = x.reshape(-1, 1)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise DSPError(f"chunk must have shape (n_samples, {self.n_channels}), got {x.shape}")
        xf = np.ascontiguousarray(x, dtype=np.float64)
        if not xf.flags.writeable:  # one kernel specialisation (a read-only one compiles again: ~5 s cold)
            xf = xf.copy()
        st = self.state
        max_rows = (int(st.g[_G_POS]) + xf.shape[0]) // self.hop
        c = self.n_channels
        if max_rows == 0:  # no block completes (most short chunks): shared empty rows, no allocation
            out_block, out_sqi, out_usable, out_feat, out_flags = self._no_rows
        else:
            out_block = np.empty(max_rows, np.int64)
            out_sqi = np.empty((max_rows, c))
            out_usable = np.empty((max_rows, c), np.bool_)
            out_feat = np.empty((max_rows, c, _N_F))
            out_flags = np.empty((max_rows, c), np.int64)
        ev_out = self._ev_out  # scratch (read back below): events of at most one block per chunk here
        if ev_out.shape[0] < max_rows * c * 4 + 1:
            ev_out = np.empty((max_rows * c * 4 + 1, 4), np.int64)
        n_rows, n_ev = _quality_kernel(
            xf, self._ipar, self._par, self._lims, self._sos, self._zi, st.z, st.cf, st.ci, st.g, st.acc,
            st.blockbuf, st.runbuf, st.stepbuf, st.ring, st.events,
            out_block, out_sqi, out_usable, out_feat, out_flags, ev_out,
        )
        if n_rows == 0:
            return self._no_update, []  # no block, hence no event
        update = SQIUpdate(
            out_block[:n_rows] * self.hop,
            out_sqi[:n_rows],
            out_usable[:n_rows],
            out_feat[:n_rows],
            out_flags[:n_rows],
        )
        events = [
            QualityEvent(EVENT_KINDS[k], ch, on, None if end < 0 else end)
            for k, ch, on, end in ev_out[:n_ev].tolist()
        ]
        return update, events


def assess(signal: ArrayLike, fs: float, **params: float | Sequence[float] | None) -> QualityReport:
    """Assess a whole recording; equal to streaming it through :class:`SignalQuality`.

    Parameters
    ----------
    signal : array_like, shape (n_samples, n_channels) or (n_samples,)
        The recording.
    fs : float
        Sample rate (Hz).
    **params
        Keyword parameters of :class:`SignalQuality`.

    Returns
    -------
    QualityReport

    Examples
    --------
    >>> import numpy as np
    >>> rep = assess(np.zeros(2000), 200.0)
    >>> [(e.kind, e.onset, e.end) for e in rep.events]
    [('leads_off', 0, None)]
    >>> rep.usable_mask([100, 1900]).tolist()
    [False, False]
    """
    x = np.asarray(signal)
    n_ch = 1 if x.ndim == 1 else (x.shape[1] if x.ndim == 2 else -1)
    if n_ch < 1:
        raise DSPError(f"signal must be 1-D or 2-D (n_samples, n_channels), got {x.shape}")
    sq = SignalQuality(fs, n_ch, **params)  # type: ignore[arg-type]
    rows, events = sq.process(x.reshape(-1, n_ch))
    return QualityReport.from_stream(sq.fs, sq.hop, n_ch, [rows], events)
