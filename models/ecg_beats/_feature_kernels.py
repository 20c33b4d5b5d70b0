"""Numba kernels of the beat feature builder (private; see :mod:`.features` for the contract).

Everything here is pure: no I/O, no allocation in the per-beat loop apart from small scratch
arrays created once per call, and all running state lives in arrays owned by the caller
(:class:`telediag.models.ecg_beats.features.FeatureState`), mutated in place and bounded.

Running medians (patient amplitude over the last 64 beats, template over the last 32 windows)
are kept as *sorted* arrays updated by one deletion and one insertion per beat (binary search
plus a shift), so a median costs O(window) moves instead of a sort; the value is identical to
:func:`numpy.median` (middle element, or the mean of the two middle ones).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

__all__ = [
    "all_finite",
    "beat_rows",
    "interp_clamped",
    "sorted_replace",
    "sorted_replace_cols",
]

# indices into the int64 counter array of the state
C_PREV = 0  # last emitted beat (absolute sample), -1 before the first
C_RR_HEAD = 1  # ring position of the oldest kept RR
C_RR_COUNT = 2  # RRs kept (the last PATIENT_WINDOW_S seconds)
C_AMP_HEAD = 3  # ring position of the oldest amplitude
C_AMP_COUNT = 4
C_TPL_HEAD = 5  # ring position of the oldest template window
C_TPL_COUNT = 6
N_COUNTERS = 7


@njit(cache=True, nogil=True)
def all_finite(x: NDArray[np.float64]) -> bool:
    """True when every element of the 1-D array ``x`` is finite."""
    for i in range(x.size):
        if not np.isfinite(x[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def interp_clamped(
    buf: NDArray[np.float64], pos: NDArray[np.float64], out: NDArray[np.float64]
) -> None:
    """``out[i] = numpy.interp(pos[i], arange(buf.size), buf)``: linear interpolation of a
    uniformly sampled signal at fractional indices, held at the edge values outside it."""
    n = buf.size
    for i in range(pos.size):
        p = pos[i]
        if p <= 0.0:
            out[i] = buf[0]
        elif p >= n - 1:
            out[i] = buf[n - 1]
        else:
            j = int(np.floor(p))
            f = p - j
            if f == 0.0:
                out[i] = buf[j]
            else:
                out[i] = (buf[j + 1] - buf[j]) * f + buf[j]


@njit(cache=True, nogil=True)
def sorted_replace(s: NDArray[np.float64], count: int, old: float, new: float, full: bool) -> None:
    """Update the sorted prefix ``s[:count]`` in place: drop one ``old`` when ``full``, then
    insert ``new``; ``count`` is the length before the update (``full`` keeps it, otherwise
    it grows by one)."""
    m = count
    if full:  # remove one element equal to `old` (binary search for its leftmost position)
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) >> 1
            if s[mid] < old:
                lo = mid + 1
            else:
                hi = mid
        for k in range(lo, m - 1):
            s[k] = s[k + 1]
        m -= 1
    lo, hi = 0, m  # insert `new` after its equals
    while lo < hi:
        mid = (lo + hi) >> 1
        if s[mid] <= new:
            lo = mid + 1
        else:
            hi = mid
    for k in range(m, lo, -1):
        s[k] = s[k - 1]
    s[lo] = new


@njit(cache=True, nogil=True)
def sorted_replace_cols(
    s: NDArray[np.float64],
    count: int,
    old: NDArray[np.float64],
    new: NDArray[np.float64],
    full: bool,
    rank: NDArray[np.int64],
) -> None:
    """Column-wise :func:`sorted_replace` on a rank-major array ``s`` (rows = ranks).

    Every column ``s[:count, c]`` is sorted; drop one ``old[c]`` when ``full``, then insert
    ``new[c]``.  Branch-free and looping over columns innermost (vectorised by LLVM): the
    rank of a value is counted, then rows are shifted by a select.  ``rank`` is scratch
    (int64, one per column).
    """
    n = s.shape[1]
    m = count
    if full:
        rank[:] = 0
        for r in range(m):
            for c in range(n):
                rank[c] += s[r, c] < old[c]
        for r in range(m - 1):
            for c in range(n):
                s[r, c] = s[r, c] if r < rank[c] else s[r + 1, c]
        m -= 1
    rank[:] = 0
    for r in range(m):
        for c in range(n):
            rank[c] += s[r, c] <= new[c]
    for r in range(m, 0, -1):
        for c in range(n):
            k = rank[c]
            s[r, c] = s[r, c] if r < k else (new[c] if r == k else s[r - 1, c])
    for c in range(n):
        if rank[c] == 0:
            s[0, c] = new[c]


@njit(cache=True, nogil=True)
def _median_sorted(s: NDArray[np.float64], count: int) -> float:
    h = count >> 1
    if count & 1:
        return float(s[h])
    return float((s[h - 1] + s[h]) / 2.0)


@njit(cache=True, nogil=True)
def _irregularity(
    rr_v: NDArray[np.float64], head: int, count: int, cap: int, n_max: int,
    dscr: NDArray[np.float64],
) -> tuple[float, float, float, float]:
    """Rhythm-irregularity indices of the last ``min(count, n_max)`` RRs of the ring.

    Returns the normalised RMSSD (root mean square of successive RR differences / mean RR),
    pNN50 (fraction of successive differences above 50 ms) and the Poincare ratio SD1/SD2
    (SD1 = std of successive differences / sqrt 2, SD2 = sqrt(2 SDNN^2 - SD1^2)) and the
    median absolute successive difference (s; divided by the median RR by the caller); all 0
    with fewer than 3 RRs.  ``dscr`` is scratch of at least ``n_max`` values.  Atrial fibrillation detectors use these (Sarkar et al. 2008; Tateno &
    Glass 2001; Brennan et al. 2001, IEEE Trans Biomed Eng 48(11):1342-1347).
    """
    n = min(count, n_max)
    if n < 3:
        return 0.0, 0.0, 0.0, 0.0
    first = head + count - n
    if first >= cap:
        first -= cap
    idx = first
    s = 0.0
    ss = 0.0
    sd = 0.0
    sdd = 0.0
    big = 0
    last = 0.0
    for i in range(n):
        v = rr_v[idx]
        s += v
        ss += v * v
        if i > 0:
            d = v - last
            sd += d
            sdd += d * d
            if abs(d) > 0.05:
                big += 1
        last = v
        idx += 1
        if idx == cap:
            idx = 0
    # robust index: median |successive difference| / median RR (isolated ectopic beats
    # perturb a few differences only; atrial fibrillation perturbs most)
    nd = n - 1
    idx = first
    last = rr_v[idx]
    for i in range(nd):
        idx += 1
        if idx == cap:
            idx = 0
        v = abs(rr_v[idx] - last)
        last = rr_v[idx]
        j = i
        while j > 0 and dscr[j - 1] > v:
            dscr[j] = dscr[j - 1]
            j -= 1
        dscr[j] = v
    h = nd >> 1
    mad = dscr[h] if nd & 1 else (dscr[h - 1] + dscr[h]) / 2.0
    mean = s / n
    var = max(ss / n - mean * mean, 0.0)
    md = sd / nd
    var_d = max(sdd / nd - md * md, 0.0)
    rmssd = np.sqrt(sdd / nd) / mean if mean > 0 else 0.0
    sd1_sq = var_d / 2.0
    sd2_sq = 2.0 * var - sd1_sq
    ratio = np.sqrt(sd1_sq / sd2_sq) if sd2_sq > 1e-12 else 0.0
    return rmssd, big / nd, ratio, mad


@njit(cache=True, nogil=True)
def beat_rows(
    buf: NDArray[np.float64],
    buf_start: int,
    beats: NDArray[np.int64],
    nexts: NDArray[np.int64],
    fs: float,
    offsets: NDArray[np.float64],
    amp_offsets: NDArray[np.float64],
    window_s: float,
    local_beats: int,
    med_beats: int,
    irr_beats: int,
    ratio_max: float,
    rr_max_s: float,
    ctr: NDArray[np.int64],
    rr_t: NDArray[np.int64],
    rr_v: NDArray[np.float64],
    amp_ring: NDArray[np.float64],
    amp_sorted: NDArray[np.float64],
    tpl_ring: NDArray[np.float64],
    tpl_sorted: NDArray[np.float64],
    rr_out: NDArray[np.float32],
    morph_out: NDArray[np.float32],
) -> None:
    """Features of consecutive beats, updating the running state in place.

    Parameters
    ----------
    buf : float64 (n,)
        Band-passed signal; ``buf[0]`` is absolute sample ``buf_start``.
    beats, nexts : int64 (m,)
        Beats to emit, in order, and each one's next beat (-1: unknown, use the previous RR).
    offsets, amp_offsets : float64
        Window instants (s, relative to R) of the morphology and of the amplitude segment.
    ctr, rr_t, rr_v, amp_ring, amp_sorted, tpl_ring, tpl_sorted
        Running state (see :class:`~telediag.models.ecg_beats.features.FeatureState`);
        ``rr_t`` / ``rr_v`` must have room for ``ctr[C_RR_COUNT] + m`` RRs.
    med_beats, irr_beats : int
        RRs in the running median (robust local rhythm) and in the irregularity indices.
    rr_out : float32 (m, 16), morph_out : float32 (m, 2, n_morph)
        Outputs (column order of :data:`~telediag.models.ecg_beats.features.RR_FEATURES`).
    """
    n_morph = offsets.size
    n_amp = amp_offsets.size
    cap = rr_t.size
    amp_cap = amp_ring.size
    tpl_cap = tpl_ring.shape[0]
    pos = np.empty(max(n_morph, n_amp))
    w = np.empty(n_morph)
    seg = np.empty(n_amp)
    ratios = np.empty(7)
    extra = np.empty(7)
    dscr = np.empty(max(irr_beats, 1))
    scratch = np.empty(max(med_beats, irr_beats, 1))
    rank = np.empty(n_morph, np.int64)
    for k in range(beats.size):
        beat = beats[k]
        nxt = nexts[k]
        prev = ctr[C_PREV]
        pre = (beat - prev) / fs if prev >= 0 else -1.0
        post = (nxt - beat) / fs if nxt >= 0 else -1.0
        if pre < 0 and post < 0:
            pre = 1.0
            post = 1.0
        elif pre < 0:
            pre = post
        elif post < 0:
            post = pre
        # -- RR history of the last window_s seconds (causal) --------------------------------
        head = ctr[C_RR_HEAD]
        count = ctr[C_RR_COUNT]
        if prev >= 0:
            j = head + count
            if j >= cap:
                j -= cap
            rr_t[j] = beat
            rr_v[j] = pre
            count += 1
        horizon = beat - window_s * fs
        while count > 0 and rr_t[head] < horizon:
            head += 1
            if head == cap:
                head = 0
            count -= 1
        ctr[C_RR_HEAD] = head
        ctr[C_RR_COUNT] = count
        if count > 0:
            total = 0.0
            idx = head
            for _ in range(count):
                total += rr_v[idx]
                idx += 1
                if idx == cap:
                    idx = 0
            patient = total / count
            n_loc = min(count, local_beats)
            first = head + count - n_loc
            if first >= cap:
                first -= cap
            total = 0.0
            idx = first
            for _ in range(n_loc):
                total += rr_v[idx]
                idx += 1
                if idx == cap:
                    idx = 0
            local = total / n_loc
            var = 0.0
            idx = first
            for _ in range(n_loc):
                d = rr_v[idx] - local
                var += d * d
                idx += 1
                if idx == cap:
                    idx = 0
            local_cv = np.sqrt(var / n_loc) / local
            # robust local rhythm: median of the last med_beats RRs (insertion sort)
            n_med = min(count, med_beats)
            first = head + count - n_med
            if first >= cap:
                first -= cap
            idx = first
            for i in range(n_med):
                v = rr_v[idx]
                j = i
                while j > 0 and scratch[j - 1] > v:
                    scratch[j] = scratch[j - 1]
                    j -= 1
                scratch[j] = v
                idx += 1
                if idx == cap:
                    idx = 0
            h = n_med >> 1
            med = scratch[h] if n_med & 1 else (scratch[h - 1] + scratch[h]) / 2.0
            irr_rmssd, irr_pnn, irr_sd, irr_mad = _irregularity(
                rr_v, head, count, cap, irr_beats, dscr
            )
            irr_mad = irr_mad / med
        else:
            patient = pre
            local = pre
            local_cv = 0.0
            med = pre
            irr_rmssd = 0.0
            irr_pnn = 0.0
            irr_sd = 0.0
            irr_mad = 0.0
        ctr[C_PREV] = beat
        ratios[0] = pre / patient
        ratios[1] = post / patient
        ratios[2] = local / patient
        ratios[3] = pre / local
        ratios[4] = post / pre
        ratios[5] = post / local
        ratios[6] = local_cv
        for i in range(7):
            rr_out[k, i] = min(max(ratios[i], 0.0), ratio_max)
        rr_out[k, 7] = min(max(patient, 0.0), rr_max_s)
        rr_out[k, 8] = min(max(pre, 0.0), rr_max_s)
        extra[0] = pre / med
        extra[1] = post / med
        extra[2] = med / patient
        extra[3] = irr_rmssd
        extra[4] = irr_pnn
        extra[5] = irr_sd
        extra[6] = irr_mad
        for i in range(7):
            rr_out[k, 9 + i] = min(max(extra[i], 0.0), ratio_max)
        # -- morphology window and amplitude ----------------------------------------------
        # absolute instant first, then the (exact) shift to the buffer: the rounding of the
        # fractional position must not depend on where the kept signal starts (chunking)
        for i in range(n_morph):
            pos[i] = (beat + offsets[i] * fs) - buf_start
        interp_clamped(buf, pos[:n_morph], w)
        for i in range(n_amp):
            pos[i] = (beat + amp_offsets[i] * fs) - buf_start
        interp_clamped(buf, pos[:n_amp], seg)
        amp = seg.max() - seg.min()
        a_head = ctr[C_AMP_HEAD]
        a_count = ctr[C_AMP_COUNT]
        full = a_count == amp_cap
        sorted_replace(amp_sorted, a_count, amp_ring[a_head] if full else 0.0, amp, full)
        if full:
            amp_ring[a_head] = amp
            a_head = (a_head + 1) % amp_cap
        else:
            amp_ring[(a_head + a_count) % amp_cap] = amp
            a_count += 1
        ctr[C_AMP_HEAD] = a_head
        ctr[C_AMP_COUNT] = a_count
        scale = _median_sorted(amp_sorted, a_count)
        if scale > 1e-9:
            for i in range(n_morph):
                w[i] = w[i] / scale
        else:
            w[:] = 0.0
        # -- template: median of the previous windows, then add this one ---------------------
        t_head = ctr[C_TPL_HEAD]
        t_count = ctr[C_TPL_COUNT]
        if t_count > 0:
            h = t_count >> 1
            odd = t_count & 1
            for i in range(n_morph):
                med = tpl_sorted[h, i] if odd else (tpl_sorted[h - 1, i] + tpl_sorted[h, i]) / 2.0
                morph_out[k, 1, i] = w[i] - med
        else:
            for i in range(n_morph):
                morph_out[k, 1, i] = 0.0
        for i in range(n_morph):
            morph_out[k, 0, i] = w[i]
        full = t_count == tpl_cap
        # (tpl_ring[t_head] is ignored unless full; one array type keeps the loops vectorised)
        sorted_replace_cols(tpl_sorted, t_count, tpl_ring[t_head], w, full, rank)
        slot = t_head if full else (t_head + t_count) % tpl_cap
        for i in range(n_morph):
            tpl_ring[slot, i] = w[i]
        if full:
            t_head = (t_head + 1) % tpl_cap
        else:
            t_count += 1
        ctr[C_TPL_HEAD] = t_head
        ctr[C_TPL_COUNT] = t_count


# -- context features (rhythm around the beat, both sides; beat against its template) ----------
#: RR-context features per beat (see ``features.CONTEXT_FEATURES``)
N_CONTEXT = 19
#: beat-versus-template features per beat (see ``features.TEMPLATE_FEATURES``)
N_TEMPLATE = 18
CTX_PAST = 8  # RRs before the beat's own in the surrounding median
CTX_FUTURE = 1  # RRs after the next RR in the surrounding median
CTX_LONG = 32  # RRs before the beat's own in the long median / upper quartile
#: window samples (of the 96 from -0.25 s to +0.45 s) of the regions the template features use
Q_LO, Q_HI = 23, 46  # QRS: about -0.08 .. +0.08 s
P_LO, P_HI = 2, 24  # P wave / PR: about -0.235 .. -0.08 s
T_LO, T_HI = 54, 96  # ST-T: about +0.15 .. +0.45 s
B_LO, B_HI = 16, 21  # isoelectric PR segment estimate: about -0.13 .. -0.10 s


@njit(cache=True, nogil=True, error_model="numpy")
def _rr_at(pos: NDArray[np.int64], m: int, fs: float) -> float:
    """RR (s) ending at beat ``m`` of ``pos``, with ``m`` clamped to the RRs that exist."""
    n = pos.size
    if n < 2:
        return 1.0
    if m < 1:
        m = 1
    elif m > n - 1:
        m = n - 1
    return (pos[m] - pos[m - 1]) / fs


@njit(cache=True, nogil=True, error_model="numpy")
def _insort(s: NDArray[np.float64], count: int, v: float) -> None:
    """Insert ``v`` into the sorted prefix ``s[:count]`` (insertion sort step)."""
    j = count
    while j > 0 and s[j - 1] > v:
        s[j] = s[j - 1]
        j -= 1
    s[j] = v


@njit(cache=True, nogil=True, error_model="numpy")
def context_rows(
    pos: NDArray[np.int64], first: int, fs: float, ratio_max: float, out: NDArray[np.float32]
) -> None:
    """RR-context features of beats ``pos[first:first + out.shape[0]]`` into ``out``.

    ``pos`` holds every beat the features look at (up to :data:`CTX_LONG` + 1 before the
    first, and :data:`CTX_FUTURE` + 1 after the last, where they exist); missing RRs at the
    ends of a stream repeat the nearest existing one (the first beat's previous RR is its
    next RR, the last beat's next RR is its previous one).  With r0 the beat's own (previous)
    RR, r1 the next, r-1 the one before r0 and r2 the one after r1, and M the median of the
    :data:`CTX_PAST` RRs before r0 and the :data:`CTX_FUTURE` after r1 (the surrounding
    rhythm, both sides, without the beat's two RRs):

    r0/M, r1/M, (r0+r1)/(2M) (compensatory pause), r-1/M, r2/M, r0/r-1, r0/mean(r-1, r2),
    M - r0 (s), M (s), median |RR - M| / M (surrounding irregularity), fraction of the
    surrounding RRs shorter than r0, r0 / their minimum, r0 / median of the last
    :data:`CTX_LONG` RRs before r0 (M32), r1/r0, (r0+r1)/(r-1+r2), r0/min(r-1, r1),
    r0/max(r-1, r1), r0 / upper quartile of those 32 RRs, median of the 8 before / M32
    (rate change).  Ratios are clipped to [0, ``ratio_max``], ``M - r0`` to ±``ratio_max``.
    """
    n_out = out.shape[0]
    n_w = CTX_PAST + CTX_FUTURE
    w = np.empty(n_w)
    ws = np.empty(n_w)
    dev = np.empty(n_w)
    l32 = np.empty(CTX_LONG)
    p8 = np.empty(CTX_PAST)
    for j in range(n_out):
        k = first + j
        r0 = _rr_at(pos, k, fs)
        r1 = _rr_at(pos, k + 1, fs)
        r2 = _rr_at(pos, k + 2, fs)
        rm1 = _rr_at(pos, k - 1, fs)
        c = 0
        for m in range(k - CTX_PAST, k):
            w[c] = _rr_at(pos, m, fs)
            c += 1
        for m in range(k + 2, k + 2 + CTX_FUTURE):
            w[c] = _rr_at(pos, m, fs)
            c += 1
        for i in range(n_w):
            _insort(ws, i, w[i])
        med = _median_sorted(ws, n_w)
        for i in range(CTX_PAST):
            _insort(p8, i, w[i])
        med8 = _median_sorted(p8, CTX_PAST)
        for i in range(CTX_LONG):
            _insort(l32, i, _rr_at(pos, k - CTX_LONG + i, fs))
        med32 = _median_sorted(l32, CTX_LONG)
        hi32 = l32[(3 * (CTX_LONG - 1)) // 4]
        shorter = 0
        wmin = ws[0]
        for i in range(n_w):
            dev[i] = 0.0
            _insort(dev, i, abs(w[i] - med))
            if w[i] < r0:
                shorter += 1
        mad = _median_sorted(dev, n_w)
        row = (
            r0 / med, r1 / med, (r0 + r1) / (2.0 * med), rm1 / med, r2 / med, r0 / rm1,
            r0 / ((rm1 + r2) / 2.0), med - r0, med, mad / med, shorter / n_w, r0 / wmin,
            r0 / med32, r1 / r0, (r0 + r1) / (rm1 + r2), r0 / min(rm1, r1), r0 / max(rm1, r1),
            r0 / hi32, med8 / med32,
        )
        for i in range(N_CONTEXT):
            v = row[i]
            lo = -ratio_max if i == 7 else 0.0
            out[j, i] = min(max(v, lo), ratio_max)


@njit(cache=True, nogil=True, error_model="numpy")
def _corr(x: NDArray[np.float64], t: NDArray[np.float64], lo: int, hi: int) -> float:
    """Pearson correlation of ``x[lo:hi]`` and ``t[lo:hi]`` (0 when either is flat)."""
    n = hi - lo
    mx = 0.0
    mt = 0.0
    for i in range(lo, hi):
        mx += x[i]
        mt += t[i]
    mx /= n
    mt /= n
    sxt = 0.0
    sxx = 0.0
    stt = 0.0
    for i in range(lo, hi):
        a = x[i] - mx
        b = t[i] - mt
        sxt += a * b
        sxx += a * a
        stt += b * b
    return sxt / np.sqrt(sxx * stt + 1e-12)


@njit(cache=True, nogil=True, error_model="numpy")
def _rms_diff(x: NDArray[np.float64], bx: float, t: NDArray[np.float64], bt: float, lo: int,
              hi: int) -> float:
    """RMS of ``(x - bx) - (t - bt)`` over ``[lo, hi)`` (``t`` and ``bt`` may be zero)."""
    s = 0.0
    for i in range(lo, hi):
        d = (x[i] - bx) - (t[i] - bt)
        s += d * d
    return np.sqrt(s / (hi - lo) + 1e-12)


@njit(cache=True, nogil=True, error_model="numpy")
def template_rows(morph: NDArray[np.float32], lim: float, out: NDArray[np.float32]) -> None:
    """Beat-versus-template features of morphology rows ``morph`` (n, >= 2, 96) into ``out``.

    Channel 0 is the beat ``x`` (amplitude-normalised), channel 1 the beat minus the running
    template, so the template is ``t = x - channel 1``; ``bx``, ``bt`` are their means over
    the PR segment (:data:`B_LO`:data:`B_HI`).  Features: correlation of ``x`` and ``t`` over
    the whole window, the QRS, the P and the T regions; log RMS ratio of the QRS; RMS of
    ``x - t`` over the QRS, P and T regions, relative to the template's QRS RMS; QRS width
    (area / peak of ``|x - bx|``, in samples of the window) and its ratio to the template's;
    log ratio of the steepest QRS slopes; QRS maximum and minimum (above ``bx``) and their
    differences to the template's; P-region peak-to-peak and its ratio to the template's;
    ST-T mean difference.  Non-finite values become 0, all are clipped to ±``lim``.
    """
    n = morph.shape[0]
    m = morph.shape[2]
    x = np.empty(m)
    t = np.empty(m)
    for j in range(n):
        for i in range(m):
            x[i] = morph[j, 0, i]
            t[i] = x[i] - morph[j, 1, i]
        bx = 0.0
        bt = 0.0
        for i in range(B_LO, B_HI):
            bx += x[i]
            bt += t[i]
        bx /= B_HI - B_LO
        bt /= B_HI - B_LO
        rq_t = 0.0
        rq_x = 0.0
        ax = 0.0
        at = 0.0
        px = 0.0
        pt = 0.0
        xmax = -np.inf
        xmin = np.inf
        tmax = -np.inf
        tmin = np.inf
        sx = 0.0
        st = 0.0
        for i in range(Q_LO, Q_HI):
            a = x[i] - bx
            b = t[i] - bt
            rq_x += a * a
            rq_t += b * b
            ax += abs(a)
            at += abs(b)
            px = max(px, abs(a))
            pt = max(pt, abs(b))
            xmax = max(xmax, a)
            xmin = min(xmin, a)
            tmax = max(tmax, b)
            tmin = min(tmin, b)
            if i > Q_LO:
                sx = max(sx, abs(x[i] - x[i - 1]))
                st = max(st, abs(t[i] - t[i - 1]))
        nq = Q_HI - Q_LO
        rms_x = np.sqrt(rq_x / nq + 1e-12)
        rms_t = np.sqrt(rq_t / nq + 1e-12)
        wx = ax / (px + 1e-9)
        wt = at / (pt + 1e-9)
        pxmax = -np.inf
        pxmin = np.inf
        ptmax = -np.inf
        ptmin = np.inf
        for i in range(P_LO, P_HI):
            pxmax = max(pxmax, x[i])
            pxmin = min(pxmin, x[i])
            ptmax = max(ptmax, t[i])
            ptmin = min(ptmin, t[i])
        tx = 0.0
        tt = 0.0
        for i in range(T_LO, T_HI):
            tx += x[i]
            tt += t[i]
        tx /= T_HI - T_LO
        tt /= T_HI - T_LO
        row = (
            _corr(x, t, 0, m), _corr(x, t, Q_LO, Q_HI), _corr(x, t, P_LO, P_HI),
            _corr(x, t, T_LO, T_HI),
            np.log(rms_x / rms_t),
            _rms_diff(x, 0.0, t, 0.0, Q_LO, Q_HI) / rms_t,
            _rms_diff(x, 0.0, t, 0.0, P_LO, P_HI) / rms_t,
            _rms_diff(x, 0.0, t, 0.0, T_LO, T_HI) / rms_t,
            wx, wx / wt, np.log(sx / (st + 1e-9)),
            xmax, xmin, xmax - tmax, xmin - tmin,
            pxmax - pxmin, (pxmax - pxmin) / (ptmax - ptmin + 1e-6),
            (tx - bx) - (tt - bt),
        )
        for i in range(N_TEMPLATE):
            v = row[i]
            if np.isnan(v):
                v = 0.0
            out[j, i] = min(max(v, -lim), lim)


# -- per-patient normalisation (feature minus its running median over the patient's beats) -----
#: ``ctr`` of :func:`norm_rows`: ring position of the oldest kept row, rows kept
C_NORM_HEAD = 0
C_NORM_COUNT = 1


@njit(cache=True, nogil=True, error_model="numpy")
def _sorted_swap(s: NDArray[np.float64], count: int, old: float, new: float) -> None:
    """Replace one ``old`` by ``new`` in the sorted ``s[:count]``, moving only the values
    between their two positions (a slowly changing feature moves few)."""
    lo, hi = 0, count
    while lo < hi:  # leftmost position of `old`
        mid = (lo + hi) >> 1
        if s[mid] < old:
            lo = mid + 1
        else:
            hi = mid
    j = lo
    if new > old:
        while j + 1 < count and s[j + 1] < new:
            s[j] = s[j + 1]
            j += 1
    else:
        while j > 0 and s[j - 1] > new:
            s[j] = s[j - 1]
            j -= 1
    s[j] = new


@njit(cache=True, nogil=True, error_model="numpy")
def norm_rows(
    rr: NDArray[np.float32], cols: NDArray[np.int64], first_out: int, ring: NDArray[np.float64],
    srt: NDArray[np.float64], ctr: NDArray[np.int64],
) -> None:
    """Per-patient normalised columns: ``rr[j, first_out + c] = rr[j, cols[c]] - median`` of
    ``rr[., cols[c]]`` over this beat and the beats before it (at most ``ring.shape[0]``),
    for the rows of ``rr`` in order, with the state carried across calls.

    ``ring`` (K, m) holds the last K rows' values in arrival order, ``srt`` (m, K) the same
    sorted per column, ``ctr`` the ring's head and count (:data:`C_NORM_HEAD`,
    :data:`C_NORM_COUNT`).
    """
    n = rr.shape[0]
    m = cols.size
    k_max = ring.shape[0]
    for j in range(n):
        head = ctr[C_NORM_HEAD]
        count = ctr[C_NORM_COUNT]
        full = count == k_max
        p = head if full else (head + count) % k_max
        for c in range(m):
            v = np.float64(rr[j, cols[c]])
            if full:
                _sorted_swap(srt[c], count, ring[p, c], v)
            else:
                sorted_replace(srt[c], count, 0.0, v, False)
            ring[p, c] = v
        if full:
            ctr[C_NORM_HEAD] = (head + 1) % k_max
        else:
            count += 1
            ctr[C_NORM_COUNT] = count
        h = count >> 1
        odd = count & 1
        for c in range(m):
            sc = srt[c]
            med = sc[h] if odd else (sc[h - 1] + sc[h]) / 2.0
            rr[j, first_out + c] = rr[j, cols[c]] - med
