"""Numba kernels of the streaming QRS detector (private; see :mod:`telediag.dsp.qrs`).

The detector is a sample-by-sample state machine.  All state lives in a handful of small
preallocated arrays (``istate``, ``fstate``, ``zi``, ``rr`` and four ring buffers) that the
kernels update in place, so feeding a signal in chunks of any size gives exactly the same
result as one call over the whole signal: every decision depends only on the absolute sample
index and on the samples seen so far, never on chunk boundaries.

Signal path (per sample, after Pan & Tompkins 1985, IEEE TBME 32(3):230-236):

1. non-finite samples are replaced by the last finite one (zero-order hold; 0 before any)
   and mark a blanking period;
2. band-pass (Butterworth sections designed by the wrapper, DF-II-T as in ``scipy.signal``);
3. first difference, squared;
4. moving-window integration (running sum over ``W`` samples);
5. local maxima of the integrated signal become *candidates*; each candidate is located in
   the band-passed signal (largest |bp|, largest slope) and refined to the R peak on the
   raw signal (largest deviation from the local mean);
6. adaptive signal/noise peak levels ``SPK``/``NPK`` with threshold
   ``NPK + c (SPK - NPK)`` (Pan & Tompkins: ``c = 0.25``), refractory period, T-wave
   discrimination by slope (candidates within 360 ms of the last beat whose maximal slope is
   below half of that beat's are T waves; Pan & Tompkins section II-E), and an *incremental*
   search-back (a sub-threshold candidate above ``sb_frac`` x threshold at a plausible RR is
   kept and accepted after a short hold unless a real beat follows; after 1.66 x mean RR
   without a beat the threshold is lowered by ``sb_frac``), so that no decision waits for a
   later beat and the reporting delay stays bounded;
7. a pending beat can be replaced by a larger, steeper candidate shortly after it (P wave
   before QRS), its confirmation waits while such a hump is still growing, and premature
   candidates need a higher threshold, unless a strong premature beat was confirmed lately at
   the same coupling interval on a clean signal (``F_PREM_RR``/``F_PREM_RR2``, ``I_PREM_AGE``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# istate layout ------------------------------------------------------------------------
I_N = 0  # absolute index of the next sample
I_TRACK = 1  # 1 while tracking a rising integrator hump
I_CIDX = 2  # absolute index of the current hump maximum
I_CONF_R = 3  # R index of the last confirmed beat (-1: none)
I_PEND_R = 4  # R index of the pending (accepted, unconfirmed) beat (-1: none)
I_PEND_DUE = 5  # absolute sample index at which the pending beat is confirmed
I_SB_R = 6  # R index of the search-back candidate (-1: none)
I_SB_DUE = 7  # absolute sample index at which it is confirmed
I_BLANK_UNTIL = 8  # candidates whose hump maximum is before this index are dropped
I_RR_POS = 9
I_RR_CNT = 10
I_NBEATS = 11
I_HAVE_X = 12  # 1 once a finite sample has been seen
I_IN_GAP = 13  # 1 while inside a run of non-finite samples
I_LEARN_CNT = 14  # candidates buffered during the learning period
I_LEARNING = 15  # 1 until the learning period is over
I_PREM_AGE = 16  # beats confirmed since the last premature one
N_ISTATE = 17

# fstate layout ------------------------------------------------------------------------
F_LASTX = 0
F_PREVBP = 1
F_PREVF = 2
F_MWISUM = 3
F_CMAX = 4
F_SPK = 5
F_NPK = 6
F_CONF_SLOPE = 7
F_CONF_V = 8
F_PEND_V = 9
F_PEND_SLOPE = 10
F_SB_V = 11
F_SB_SLOPE = 12
F_PREM_RR = 13  # coupling interval (samples) of the last confirmed premature beat (0: none)
F_PREM_RR2 = 14  # ... and of the one before it
F_LAST_RR = 15  # the last interval between confirmed beats (samples; 0: none)
N_FSTATE = 16

# params layout (float64 array) --------------------------------------------------------
P_W = 0  # integration window, samples
P_WAIT = 1  # samples after a hump maximum before it is final
P_REFR = 2  # refractory period, samples
P_TWAVE = 3  # T-wave check window, samples
P_TSLOPE = 4  # T-wave slope ratio
P_THRF = 5  # threshold fraction c
P_SBF = 6  # search-back threshold factor
P_SBRR = 7  # minimal RR (fraction of mean RR) for a search-back candidate
P_HOLD = 8  # samples a beat stays pending (may be replaced by a larger one)
P_SBHOLD = 9  # samples a search-back candidate waits
P_BLANK = 10  # samples blanked after a non-finite run
P_DF = 11  # band-pass group delay, samples
P_REFINE = 12  # half-width of the R refinement window, samples
P_BASE = 13  # half-width of the local-mean window, samples
P_ALPHA_S = 14  # SPK smoothing
P_ALPHA_N = 15  # NPK smoothing
P_RR0 = 16  # initial mean RR, samples
P_MARGIN = 17  # extra samples searched before the integration window
P_LONGRR = 18  # factor of mean RR after which the threshold is lowered
P_RRLOW = 19  # RR regularity limits (fraction of mean RR) for the RR average
P_RRHIGH = 20
P_LEARN = 21  # learning period, samples
P_REPL = 22  # a pending beat may be replaced by a candidate this close (samples)
P_REPL_RATIO = 23  # ... that is this many times larger
P_NPK0 = 24  # initial NPK as a fraction of the initial SPK
P_DECAY = 25  # threshold decay exponent during long gaps
P_WEAK_HOLD = 26  # hold (samples) of a weak beat (level below P_STRONG x SPK)
P_STRONG = 27
P_TWAVE_RR = 28  # T-wave window also extends to this fraction of the mean RR ...
P_TWAVE_MAX = 29  # ... but not beyond this (samples)
P_REPL_RR = 30  # replacement window is also at most this fraction of the mean RR
P_DEFER = 31  # a growing hump above this fraction of the pending level defers confirmation
P_PREM_RR = 32  # candidates earlier than this fraction of the mean RR are premature ...
P_PREM_GAIN = 33  # ... and their threshold rises by up to this factor
P_SETTLE = 34  # candidates before this sample don't set the initial SPK (start-up transient)
P_PREM_MEM = 35  # a premature beat's coupling is remembered for this many beats ...
P_PREM_TOL = 36  # ... and a candidate within this fraction of it is not raised
P_PREM_SNR = 37  # ... while SPK exceeds this many times NPK
N_PARAMS = 38

LEARN_LEN = 64  # capacity of the learning buffer (candidates)

RR_LEN = 8

# A search-back beat below STALE_FRAC x SPK shows the signal level is stale (the QRS amplitude
# fell 5-fold or more: after a saturated or re-gained stretch, an electrode re-attached): SPK
# restarts at STALE_RESET x its level and NPK at most at STALE_NPK x the new SPK. Pan & Tompkins'
# 0.25/0.75 update alone took ~10 search-back beats, each after a long RR, to come down from a
# 20-fold level: every other beat was missed for ~10 s (a false bradycardia alarm).
STALE_FRAC = 0.2
STALE_RESET = 2.5
STALE_NPK = 0.5


@njit(cache=True, nogil=True)
def _rr_mean(rr: np.ndarray, istate: np.ndarray, params: np.ndarray) -> float:
    cnt = istate[I_RR_CNT]
    if cnt == 0:
        return params[P_RR0]
    s = 0.0
    for k in range(cnt):
        s += rr[k]
    return s / cnt


@njit(cache=True, nogil=True)
def _emit(
    r: int, n: int, out_r: np.ndarray, out_c: np.ndarray, n_out: int
) -> int:
    out_r[n_out] = r
    out_c[n_out] = n
    return n_out + 1


@njit(cache=True, nogil=True)
def _confirm(
    r: int,
    v: float,
    slope: float,
    searchback: bool,
    n: int,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    params: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
    n_out: int,
) -> int:
    """Make ``r`` a final beat: update SPK, RR average and last-beat memory; emit it."""
    nb = istate[I_NBEATS]
    strong = v >= params[P_STRONG] * fstate[F_SPK]
    if fstate[F_SPK] <= 0.0:
        # No learning information (silent start): the first beat sets the levels.
        fstate[F_SPK] = v
        fstate[F_NPK] = params[P_NPK0] * v
    elif searchback:
        if v < STALE_FRAC * fstate[F_SPK]:
            fstate[F_SPK] = STALE_RESET * v
            if fstate[F_NPK] > STALE_NPK * fstate[F_SPK]:
                fstate[F_NPK] = STALE_NPK * fstate[F_SPK]
        else:
            fstate[F_SPK] = 0.25 * v + 0.75 * fstate[F_SPK]
    else:
        a = params[P_ALPHA_S]
        fstate[F_SPK] = a * v + (1.0 - a) * fstate[F_SPK]
    istate[I_NBEATS] = nb + 1
    last = istate[I_CONF_R]
    if istate[I_PREM_AGE] < 1000000:
        istate[I_PREM_AGE] += 1
    if last >= 0:
        interval = float(r - last)
        cnt = istate[I_RR_CNT]
        mean = _rr_mean(rr, istate, params)
        prev = fstate[F_LAST_RR]
        if strong and interval < params[P_PREM_RR] * mean and interval < params[P_PREM_RR] * prev:
            # Premature: early for the rhythm and for the cycle before it.
            fstate[F_PREM_RR2] = fstate[F_PREM_RR]
            fstate[F_PREM_RR] = interval
            istate[I_PREM_AGE] = 0
        fstate[F_LAST_RR] = interval
        if cnt < 2 or (
            params[P_RRLOW] * mean <= interval <= params[P_RRHIGH] * mean
        ):
            pos = istate[I_RR_POS]
            rr[pos] = interval
            istate[I_RR_POS] = (pos + 1) % RR_LEN
            if cnt < RR_LEN:
                istate[I_RR_CNT] = cnt + 1
    istate[I_CONF_R] = r
    fstate[F_CONF_SLOPE] = slope
    fstate[F_CONF_V] = v
    return _emit(r, n, out_r, out_c, n_out)


@njit(cache=True, nogil=True)
def _confirm_pending(
    n: int,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    params: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
    n_out: int,
) -> int:
    r = istate[I_PEND_R]
    if r >= 0:
        istate[I_PEND_R] = -1
        n_out = _confirm(
            r, fstate[F_PEND_V], fstate[F_PEND_SLOPE], False, n,
            istate, fstate, rr, params, out_r, out_c, n_out,
        )
    return n_out


@njit(cache=True, nogil=True)
def _confirm_sb(
    n: int,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    params: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
    n_out: int,
) -> int:
    r = istate[I_SB_R]
    if r >= 0:
        istate[I_SB_R] = -1
        n_out = _confirm(
            r, fstate[F_SB_V], fstate[F_SB_SLOPE], True, n,
            istate, fstate, rr, params, out_r, out_c, n_out,
        )
    return n_out


@njit(cache=True, nogil=True)
def _locate(
    p: int, n: int, params: np.ndarray, raw_ring: np.ndarray, bp_ring: np.ndarray, mask: int
) -> tuple[int, float]:
    """R peak and maximal slope of the QRS whose integrator maximum is at ``p``."""
    w = int(params[P_W])
    oldest = n - mask  # oldest index still in the rings
    if oldest < 0:
        oldest = 0
    # 1. locate the QRS in the band-passed signal: largest |bp| and largest slope.
    lo = p - w - int(params[P_MARGIN])
    if lo < oldest + 1:
        lo = oldest + 1
    m = p
    best = -1.0
    slope = 0.0
    for i in range(lo, p + 1):
        b = bp_ring[i & mask]
        a = abs(b)
        if a > best:
            best = a
            m = i
        d = abs(b - bp_ring[(i - 1) & mask])
        if d > slope:
            slope = d
    # 2. refine on the raw signal: largest deviation from the local mean.
    r0 = m - int(params[P_DF])
    if r0 < oldest:
        r0 = oldest
    base = int(params[P_BASE])
    blo = r0 - base
    if blo < oldest:
        blo = oldest
    bhi = r0 + base
    if bhi > n:
        bhi = n
    acc = 0.0
    for i in range(blo, bhi + 1):
        acc += raw_ring[i & mask]
    mean = acc / (bhi - blo + 1)
    ref = int(params[P_REFINE])
    rlo = r0 - ref
    if rlo < oldest:
        rlo = oldest
    rhi = r0 + ref
    if rhi > n:
        rhi = n
    r = r0
    best = -1.0
    for i in range(rlo, rhi + 1):
        a = abs(raw_ring[i & mask] - mean)
        if a > best:
            best = a
            r = i
    if best <= 1e-9 * abs(mean):
        # Flat raw signal (a constant, a held gap): rounding residue, not a QRS.
        return r, -1.0
    return r, slope


@njit(cache=True, nogil=True)
def _set_pending(
    r: int, v: float, slope: float, n: int, istate: np.ndarray, fstate: np.ndarray,
    params: np.ndarray,
) -> None:
    istate[I_PEND_R] = r
    fstate[F_PEND_V] = v
    fstate[F_PEND_SLOPE] = slope
    if v >= params[P_STRONG] * fstate[F_SPK]:
        istate[I_PEND_DUE] = n + int(params[P_HOLD])
    else:
        istate[I_PEND_DUE] = n + int(params[P_WEAK_HOLD])


@njit(cache=True, nogil=True)
def _decide(
    r: int,
    v: float,
    slope: float,
    n: int,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    params: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
    n_out: int,
) -> int:
    """Classify a located candidate (R ``r``, level ``v``, slope) at sample ``n``."""
    conf_r = istate[I_CONF_R]
    if r <= conf_r:
        return n_out
    refr = params[P_REFR]
    pend_r = istate[I_PEND_R]
    spk = fstate[F_SPK]
    npk = fstate[F_NPK]
    thr = npk + params[P_THRF] * (spk - npk)
    repl = params[P_REPL_RR] * _rr_mean(rr, istate, params)
    if repl > params[P_REPL]:
        repl = params[P_REPL]
    if pend_r >= 0 and r - pend_r < repl:
        # Close to the pending beat: within the refractory period keep the larger one; a
        # little later, a much larger candidate replaces it (a tall P wave before its QRS).
        if r - pend_r < refr:
            if v > fstate[F_PEND_V] and (conf_r < 0 or r - conf_r >= refr):
                _set_pending(r, v, slope, n, istate, fstate, params)
            return n_out
        if (
            v > params[P_REPL_RATIO] * fstate[F_PEND_V]
            and v > thr
            and slope > fstate[F_PEND_SLOPE]
        ):
            _set_pending(r, v, slope, n, istate, fstate, params)
            return n_out
    if conf_r >= 0 and r - conf_r < refr:
        return n_out
    # Beyond the refractory period of every known beat: the pending beat is final.
    n_out = _confirm_pending(n, istate, fstate, rr, params, out_r, out_c, n_out)
    conf_r = istate[I_CONF_R]
    mean_rr = _rr_mean(rr, istate, params)
    dt = float(r - conf_r) if conf_r >= 0 else 1e18
    if conf_r >= 0:
        k = dt / (params[P_LONGRR] * mean_rr)
        if k > 1.0:
            # Incremental search-back: the longer without a beat, the lower the threshold.
            thr *= params[P_SBF] * k ** (-params[P_DECAY])
    # Premature candidates need more evidence (noise falls between beats; ectopic beats
    # that come early are usually large).
    twave = params[P_TWAVE_RR] * mean_rr
    if twave > params[P_TWAVE_MAX]:
        twave = params[P_TWAVE_MAX]
    if twave < params[P_TWAVE]:
        twave = params[P_TWAVE]
    expect = params[P_PREM_RR] * mean_rr
    if conf_r >= 0 and dt < expect:
        # ... unless a premature beat was found lately at the same coupling (an atrial or
        # ventricular bigeminy: the next ectopic beat is expected there, not noise).
        known = False
        if istate[I_PREM_AGE] < params[P_PREM_MEM]:
            tol = params[P_PREM_TOL]
            c1 = fstate[F_PREM_RR]
            c2 = fstate[F_PREM_RR2]
            known = dt >= twave and spk > params[P_PREM_SNR] * npk and (
                (c1 > 0.0 and abs(dt - c1) <= tol * c1) or (c2 > 0.0 and abs(dt - c2) <= tol * c2)
            )
        if not known:
            thr *= 1.0 + params[P_PREM_GAIN] * (expect - dt) / expect
    is_beat = False
    if v > thr:
        if dt < twave and slope < params[P_TSLOPE] * fstate[F_CONF_SLOPE]:
            is_beat = False
        else:
            is_beat = True
    if is_beat:
        # A real beat makes a search-back candidate shortly before it moot.
        sb_r = istate[I_SB_R]
        if sb_r >= 0:
            if r - sb_r >= twave:
                n_out = _confirm_sb(n, istate, fstate, rr, params, out_r, out_c, n_out)
            else:
                istate[I_SB_R] = -1
        _set_pending(r, v, slope, n, istate, fstate, params)
        return n_out
    plausible = (
        v > params[P_SBF] * thr
        and dt >= params[P_SBRR] * mean_rr
        and (dt >= twave or slope >= params[P_TSLOPE] * fstate[F_CONF_SLOPE])
    )
    if plausible:
        sb_r = istate[I_SB_R]
        if sb_r < 0 or v > fstate[F_SB_V]:
            if sb_r < 0:
                istate[I_SB_DUE] = n + int(params[P_SBHOLD])
            istate[I_SB_R] = r
            fstate[F_SB_V] = v
            fstate[F_SB_SLOPE] = slope
        return n_out
    a = params[P_ALPHA_N]
    fstate[F_NPK] = a * v + (1.0 - a) * npk
    return n_out


@njit(cache=True, nogil=True)
def _candidate(
    p: int,
    v: float,
    n: int,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    params: np.ndarray,
    raw_ring: np.ndarray,
    bp_ring: np.ndarray,
    learn: np.ndarray,
    mask: int,
    out_r: np.ndarray,
    out_c: np.ndarray,
    n_out: int,
) -> int:
    """Handle the integrator maximum ``f`` at absolute index ``p`` (decided at ``n``).

    The candidate level is ``v = sqrt(f)`` (an amplitude, so thresholds are fractions of a
    typical QRS amplitude rather than of its energy).
    """
    r, slope = _locate(p, n, params, raw_ring, bp_ring, mask)
    if slope < 0.0:
        return n_out
    lv = np.sqrt(v)
    if istate[I_LEARNING] == 1:
        c = istate[I_LEARN_CNT]
        if c < learn.shape[0]:
            learn[c, 0] = r
            learn[c, 1] = lv
            learn[c, 2] = slope
            istate[I_LEARN_CNT] = c + 1
        return n_out
    return _decide(r, lv, slope, n, istate, fstate, rr, params, out_r, out_c, n_out)


@njit(cache=True, nogil=True)
def _end_learning(
    n: int,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    params: np.ndarray,
    learn: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
    n_out: int,
) -> int:
    """Initialise SPK/NPK from the buffered candidates and decide them in order.

    As in Pan & Tompkins' learning phase, the signal level starts at the largest candidate of
    the learning period and the noise level at a fraction of it.
    """
    istate[I_LEARNING] = 0
    c = istate[I_LEARN_CNT]
    if c == 0:
        return n_out
    vmax = 0.0
    for i in range(c):
        if learn[i, 0] >= params[P_SETTLE] and learn[i, 1] > vmax:
            vmax = learn[i, 1]
    if vmax == 0.0:  # only start-up candidates: use them after all
        for i in range(c):
            if learn[i, 1] > vmax:
                vmax = learn[i, 1]
    # The largest candidate after the start-up transient (an amplifier settling from 0 to
    # its offset is a huge step that would otherwise set SPK for many seconds).
    fstate[F_SPK] = vmax
    fstate[F_NPK] = params[P_NPK0] * vmax
    for i in range(c):
        n_out = _decide(
            int(learn[i, 0]), learn[i, 1], learn[i, 2], n,
            istate, fstate, rr, params, out_r, out_c, n_out,
        )
    istate[I_LEARN_CNT] = 0
    return n_out


@njit(cache=True, nogil=True)
def qrs_process(
    x: np.ndarray,
    sos: np.ndarray,
    zi_unit: np.ndarray,
    params: np.ndarray,
    istate: np.ndarray,
    fstate: np.ndarray,
    zi: np.ndarray,
    rr: np.ndarray,
    raw_ring: np.ndarray,
    bp_ring: np.ndarray,
    sq_ring: np.ndarray,
    f_ring: np.ndarray,
    learn: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
) -> int:
    """Feed ``x``; write confirmed beats (R index, confirming index) to ``out_*``.

    Returns the number of beats written.  ``out_r``/``out_c`` must hold at least
    ``len(x) // refractory + 4`` entries.  All state arrays are updated in place.
    """
    mask = raw_ring.shape[0] - 1
    n_sec = sos.shape[0]
    w = int(params[P_W])
    wait = int(params[P_WAIT])
    blank = int(params[P_BLANK])
    learn_end = int(params[P_LEARN])
    learning = istate[I_LEARNING]
    # A hump whose maximum is this close after a pending R may still replace it.
    defer_span = int(params[P_REPL]) + w + int(params[P_MARGIN])
    defer_lvl = params[P_DEFER] * params[P_DEFER]
    n = istate[I_N]
    track = istate[I_TRACK]
    cidx = istate[I_CIDX]
    have_x = istate[I_HAVE_X]
    in_gap = istate[I_IN_GAP]
    lastx = fstate[F_LASTX]
    prevbp = fstate[F_PREVBP]
    prevf = fstate[F_PREVF]
    msum = fstate[F_MWISUM]
    cmax = fstate[F_CMAX]
    n_out = 0
    for k in range(x.shape[0]):
        u = x[k]
        if not np.isfinite(u):
            u = lastx
            if in_gap == 0:
                in_gap = 1
            istate[I_BLANK_UNTIL] = n + blank
        else:
            if have_x == 0 or in_gap == 1:
                # (Re)start at the steady state of this level: no step transient.
                for s in range(n_sec):
                    zi[s, 0] = zi_unit[s, 0] * u
                    zi[s, 1] = zi_unit[s, 1] * u
                have_x = 1
                in_gap = 0
            lastx = u
        raw_ring[n & mask] = u
        # band-pass, DF-II-T (scipy.signal.sosfilt arithmetic)
        for s in range(n_sec):
            v = sos[s, 0] * u + zi[s, 0]
            zi[s, 0] = sos[s, 1] * u - sos[s, 4] * v + zi[s, 1]
            zi[s, 1] = sos[s, 2] * u - sos[s, 5] * v
            u = v
        bp = u
        bp_ring[n & mask] = bp
        d = bp - prevbp
        prevbp = bp
        sq = d * d
        old = sq_ring[(n - w) & mask] if n >= w else 0.0
        sq_ring[n & mask] = sq
        if (n & 4095) == 4095:
            # Periodic exact re-summation bounds floating-point drift of the running sum.
            msum = 0.0
            lo = n - w + 1
            if lo < 0:
                lo = 0
            for i in range(lo, n + 1):
                msum += sq_ring[i & mask]
        else:
            msum += sq - old
            if msum < 0.0:
                msum = 0.0
        f = msum
        f_ring[n & mask] = f
        # hump tracking
        if track == 1:
            if f > cmax:
                cmax = f
                cidx = n
            elif n - cidx >= wait:
                track = 0
                ok = True
                lo = cidx - wait
                if lo < 0:
                    lo = 0
                for i in range(lo, cidx):
                    if f_ring[i & mask] >= cmax:
                        ok = False
                        break
                if ok and cidx > istate[I_BLANK_UNTIL] and cmax > 0.0:
                    n_out = _candidate(
                        cidx, cmax, n, istate, fstate, rr, params,
                        raw_ring, bp_ring, learn, mask, out_r, out_c, n_out,
                    )
        elif f > prevf:
            track = 1
            cmax = f
            cidx = n
        prevf = f
        if learning == 1 and n + 1 >= learn_end:
            learning = 0
            n_out = _end_learning(n, istate, fstate, rr, params, learn, out_r, out_c, n_out)
        # scheduled confirmations
        pr = istate[I_PEND_R]
        if pr >= 0 and n >= istate[I_PEND_DUE]:
            # Defer while a larger hump that may replace the pending beat is still growing.
            if not (
                track == 1
                and cidx - pr < defer_span
                and cmax > defer_lvl * fstate[F_PEND_V] * fstate[F_PEND_V]
            ):
                n_out = _confirm_pending(n, istate, fstate, rr, params, out_r, out_c, n_out)
        sr = istate[I_SB_R]
        if sr >= 0 and n >= istate[I_SB_DUE] and istate[I_PEND_R] < 0:
            n_out = _confirm_sb(n, istate, fstate, rr, params, out_r, out_c, n_out)
        n += 1
    istate[I_N] = n
    istate[I_TRACK] = track
    istate[I_CIDX] = cidx
    istate[I_HAVE_X] = have_x
    istate[I_IN_GAP] = in_gap
    fstate[F_LASTX] = lastx
    fstate[F_PREVBP] = prevbp
    fstate[F_PREVF] = prevf
    fstate[F_MWISUM] = msum
    fstate[F_CMAX] = cmax
    return n_out


@njit(cache=True, nogil=True)
def qrs_flush(
    params: np.ndarray,
    istate: np.ndarray,
    fstate: np.ndarray,
    rr: np.ndarray,
    raw_ring: np.ndarray,
    bp_ring: np.ndarray,
    f_ring: np.ndarray,
    learn: np.ndarray,
    out_r: np.ndarray,
    out_c: np.ndarray,
) -> int:
    """End of signal: decide the hump being tracked and release pending beats.

    Does not change ``istate[I_N]``; the state is left finished (a later ``qrs_process``
    continues as if the signal went on, which callers should not rely on).
    """
    mask = raw_ring.shape[0] - 1
    n = istate[I_N] - 1
    n_out = 0
    if n < 0:
        return 0
    wait = int(params[P_WAIT])
    if istate[I_TRACK] == 1:
        cidx = istate[I_CIDX]
        cmax = fstate[F_CMAX]
        istate[I_TRACK] = 0
        ok = True
        lo = cidx - wait
        if lo < 0:
            lo = 0
        if lo < n - mask:
            lo = n - mask
        for i in range(lo, cidx):
            if f_ring[i & mask] >= cmax:
                ok = False
                break
        if ok and cidx > istate[I_BLANK_UNTIL] and cmax > 0.0 and n - cidx >= wait // 2:
            n_out = _candidate(
                cidx, cmax, n, istate, fstate, rr, params,
                raw_ring, bp_ring, learn, mask, out_r, out_c, n_out,
            )
    if istate[I_LEARNING] == 1:
        n_out = _end_learning(n, istate, fstate, rr, params, learn, out_r, out_c, n_out)
    n_out = _confirm_pending(n, istate, fstate, rr, params, out_r, out_c, n_out)
    n_out = _confirm_sb(n, istate, fstate, rr, params, out_r, out_c, n_out)
    return n_out


@njit(cache=True, nogil=True)
def qrs_features(
    x: np.ndarray, sos: np.ndarray, zi_unit: np.ndarray, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Band-passed signal and integrator output of the detector's front end (for tests).

    Same arithmetic as :func:`qrs_process` on a finite signal, but with the plain (not
    periodically re-summed) running sum replaced by an exact window sum, so it can be compared
    with ``scipy.signal.sosfilt`` and ``numpy.convolve`` oracles.
    """
    n_sec = sos.shape[0]
    zi = np.empty((n_sec, 2))
    for s in range(n_sec):
        zi[s, 0] = zi_unit[s, 0] * x[0]
        zi[s, 1] = zi_unit[s, 1] * x[0]
    bp = np.empty(x.shape[0])
    f = np.empty(x.shape[0])
    prev = 0.0
    sq = np.empty(x.shape[0])
    for k in range(x.shape[0]):
        u = x[k]
        for s in range(n_sec):
            v = sos[s, 0] * u + zi[s, 0]
            zi[s, 0] = sos[s, 1] * u - sos[s, 4] * v + zi[s, 1]
            zi[s, 1] = sos[s, 2] * u - sos[s, 5] * v
            u = v
        bp[k] = u
        sq[k] = (u - prev) * (u - prev)
        prev = u
        acc = 0.0
        lo = k - w + 1
        if lo < 0:
            lo = 0
        for i in range(lo, k + 1):
            acc += sq[i]
        f[k] = acc
    return bp, f
