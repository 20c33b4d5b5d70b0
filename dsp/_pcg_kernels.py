"""Numba kernels for the heart-sound (PCG) chain.  Private: use :mod:`telediag.dsp.pcg`.

Every kernel works on caller-owned, C-contiguous float64/int64 arrays, never allocates in its
loop, and updates its state arrays in place so that processing a signal chunk by chunk gives
exactly (bitwise) the one-pass result: the floating-point operations and their order do not
depend on where the chunk boundaries fall.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

STATE_S1 = 0
STATE_SYSTOLE = 1
STATE_S2 = 2
STATE_DIASTOLE = 3
N_STATES = 4


# --------------------------------------------------------------------------------------
# Polyphase FIR resampler (up by `up`, filter `h`, down by `down`)
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _polyphase_step(
    hp: FloatArray, up: int, down: int, x: FloatArray, hist: FloatArray, pos: IntArray,
    y: FloatArray,
) -> int:
    """Streaming ``upfirdn``: ``y[m] = sum_k h[k] * xu[m*down - k]`` (causal part only).

    ``hp`` is the polyphase matrix, ``hp[p, j] = h[p + j*up]`` (zero padded), shape (up, J).
    ``hist`` holds the last ``K = J`` input samples (oldest first; zeros at stream start).
    ``pos[0]`` is the zero-stuffed index of the next output relative to the first zero-stuffed
    sample of this chunk (``-up < pos[0]``).  Output ``m`` is produced as soon as the input
    sample ``floor(m*down/up)`` has arrived.  Returns the number of outputs written to ``y``.
    """
    n = x.shape[0]
    n_taps = hp.shape[1]
    k_hist = hist.shape[0]
    u = pos[0]
    count = 0
    limit = n * up
    while u < limit:
        i_hi = u // up
        p = u - i_hi * up
        acc = 0.0
        for j in range(n_taps):
            i = i_hi - j
            if i >= 0:
                acc += hp[p, j] * x[i]
            else:
                acc += hp[p, j] * hist[k_hist + i]
        y[count] = acc
        count += 1
        u += down
    pos[0] = u - limit
    # update history: last k_hist samples of concat(hist, x)
    if n >= k_hist:
        for i in range(k_hist):
            hist[i] = x[n - k_hist + i]
    else:
        shift = n
        for i in range(k_hist - shift):
            hist[i] = hist[i + shift]
        for i in range(n):
            hist[k_hist - n + i] = x[i]
    return count


# --------------------------------------------------------------------------------------
# Biquad cascade, direct form II transposed (private copy; see dsp/sosfilt.py for the shared one)
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _sos_step(sos: FloatArray, x: FloatArray, zi: FloatArray, y: FloatArray) -> None:
    """Filter 1-D ``x`` into ``y`` with SOS ``sos`` (n_sections, 6); ``zi`` (n_sections, 2).

    Same arithmetic and order as :func:`scipy.signal.sosfilt`.  ``y`` may alias ``x``.
    """
    for n in range(x.shape[0]):
        y[n] = _sos_sample(sos, zi, x[n])


@njit(cache=True, nogil=True, inline="always")
def _sos_sample(sos: FloatArray, zi: FloatArray, u: float) -> float:
    """One sample through the cascade ``sos`` with state ``zi`` (updated); the output."""
    for s in range(sos.shape[0]):
        v = sos[s, 0] * u + zi[s, 0]
        zi[s, 0] = sos[s, 1] * u - sos[s, 4] * v + zi[s, 1]
        zi[s, 1] = sos[s, 2] * u - sos[s, 5] * v
        u = v
    return u


# --------------------------------------------------------------------------------------
# Block-wise streaming spike removal (after Schmidt et al. 2010)
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _despike_block(block: FloatArray, n: int, threshold: float, max_iter: int) -> None:
    """Zero out spikes in ``block[:n]`` while its maximum absolute amplitude > ``threshold``.

    Each spike is removed from the zero crossing before its peak to the zero crossing after it
    (Schmidt et al. 2010, section II-B); the search stays inside the block.
    """
    for _ in range(max_iter):
        peak = 0.0
        idx = -1
        for i in range(n):
            a = abs(block[i])
            if a > peak:
                peak = a
                idx = i
        if idx < 0 or peak <= threshold:
            return
        sign = 1.0 if block[idx] > 0.0 else -1.0
        lo = idx
        while lo > 0 and block[lo - 1] * sign > 0.0:
            lo -= 1
        hi = idx
        while hi < n - 1 and block[hi + 1] * sign > 0.0:
            hi += 1
        for i in range(lo, hi + 1):
            block[i] = 0.0


@njit(cache=True, nogil=True)
def _despike_step(
    x: FloatArray, buf: FloatArray, maa: FloatArray, ints: IntArray, ratio: float,
    max_iter: int, y: FloatArray, scratch: FloatArray,
) -> int:
    """Streaming spike removal in fixed blocks of ``len(buf)`` samples.

    ``ints = [fill, n_maa, maa_head]``: samples buffered, how many block maxima are stored in
    the ring ``maa`` and where the next goes.  When a block is complete, its maximum absolute
    amplitude (MAA) joins the ring, the threshold is ``ratio`` times the median MAA of the ring,
    spikes above it are removed, the ring entry is replaced by the cleaned block's MAA and the
    block is emitted.  Output lags input by up to one block.  Returns samples written to ``y``.
    """
    block_len = buf.shape[0]
    n_ring = maa.shape[0]
    fill = ints[0]
    written = 0
    for i in range(x.shape[0]):
        buf[fill] = x[i]
        fill += 1
        if fill == block_len:
            a = 0.0
            for k in range(block_len):
                v = abs(buf[k])
                if v > a:
                    a = v
            head = ints[2]
            maa[head] = a
            n_maa = min(ints[1] + 1, n_ring)
            for k in range(n_maa):
                scratch[k] = maa[k]
            srt = np.sort(scratch[:n_maa])
            if n_maa % 2 == 1:
                med = srt[n_maa // 2]
            else:
                med = 0.5 * (srt[n_maa // 2 - 1] + srt[n_maa // 2])
            _despike_block(buf, block_len, ratio * med, max_iter)
            a2 = 0.0
            for k in range(block_len):
                v = abs(buf[k])
                if v > a2:
                    a2 = v
            maa[head] = a2
            ints[1] = n_maa
            ints[2] = (head + 1) % n_ring
            for k in range(block_len):
                y[written + k] = buf[k]
            written += block_len
            fill = 0
    ints[0] = fill
    return written


# --------------------------------------------------------------------------------------
# Envelope features at the analysis rate
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _envelope_step(
    hilb: FloatArray, x: FloatArray, hist: FloatArray, sos_a: FloatArray, zi_a: FloatArray,
    sos_b: FloatArray, zi_b: FloatArray, sos_c: FloatArray, zi_c: FloatArray, eps: float,
    out: FloatArray,
) -> None:
    """Per-sample envelope channels, all aligned to the Hilbert filter's centre tap.

    ``hilb`` is an odd-length (2M+1) antisymmetric FIR Hilbert transformer; ``hist`` holds
    the last 2M input samples.  For the delayed sample ``r = x[n-M]`` and its quadrature
    ``q = (hilb * x)[n]`` the channels are::

        out[n, 0] = log(sqrt(r^2 + q^2) + eps)   # log analytic envelope (homomorphic input)
        out[n, 1] = sqrt(r^2 + q^2)              # Hilbert envelope
        out[n, 2] = (sos_a * r)^2                # 40-60 Hz band power (PSD-feature analogue)
        out[n, 3] = |sos_b * r|                  # 60-120 Hz band magnitude (wavelet analogue)
        out[n, 4] = |sos_c * r|                  # 150-400 Hz band magnitude (S2 pitch)
    """
    n_taps = hilb.shape[0]
    m = n_taps // 2
    k_hist = hist.shape[0]  # == n_taps - 1
    n = x.shape[0]
    for t in range(n):
        q = 0.0
        for j in range(1, n_taps, 2):  # odd taps only are non-zero
            i = t - j
            if i >= 0:
                q += hilb[j] * x[i]
            else:
                q += hilb[j] * hist[k_hist + i]
        i = t - m
        r = x[i] if i >= 0 else hist[k_hist + i]
        env = math.sqrt(r * r + q * q)
        out[t, 0] = math.log(env + eps)
        out[t, 1] = env
        a = _sos_sample(sos_a, zi_a, r)
        out[t, 2] = a * a
        out[t, 3] = abs(_sos_sample(sos_b, zi_b, r))
        out[t, 4] = abs(_sos_sample(sos_c, zi_c, r))
    if n >= k_hist:
        for i in range(k_hist):
            hist[i] = x[n - k_hist + i]
    else:
        for i in range(k_hist - n):
            hist[i] = hist[i + n]
        for i in range(n):
            hist[k_hist - n + i] = x[i]


@njit(cache=True, nogil=True)
def _decimate_channels_step(
    h: FloatArray, down: int, x: FloatArray, hist: FloatArray, pos: IntArray, y: FloatArray,
) -> int:
    """Decimate each column of ``x`` (n, C) by ``down`` with its own FIR ``h[c]`` (C, L).

    Streaming, causal: output ``m`` is ``sum_k h[c, k] * x[m*down - k, c]``, produced when the
    input sample ``m*down`` has arrived.  ``hist`` (L, C) holds the last L input rows;
    ``pos[0]`` is the index of the next output's newest input relative to this chunk.
    """
    n = x.shape[0]
    n_ch = x.shape[1]
    n_taps = h.shape[1]
    k_hist = hist.shape[0]
    u = pos[0]
    count = 0
    while u < n:
        for c in range(n_ch):
            acc = 0.0
            for k in range(n_taps):
                i = u - k
                if i >= 0:
                    acc += h[c, k] * x[i, c]
                else:
                    acc += h[c, k] * hist[k_hist + i, c]
            y[count, c] = acc
        count += 1
        u += down
    pos[0] = u - n
    if n >= k_hist:
        for i in range(k_hist):
            for c in range(n_ch):
                hist[i, c] = x[n - k_hist + i, c]
    else:
        for i in range(k_hist - n):
            for c in range(n_ch):
                hist[i, c] = hist[i + n, c]
        for i in range(n):
            for c in range(n_ch):
                hist[k_hist - n + i, c] = x[i, c]
    return count


# --------------------------------------------------------------------------------------
# Hidden semi-Markov model Viterbi (Springer et al. 2016, section II-C)
# --------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _hsmm_viterbi(
    log_b: FloatArray, log_pd: FloatArray, log_surv: FloatArray, log_pi: FloatArray,
    forced_start: int, states: IntArray,
) -> float:
    """Duration-explicit Viterbi for the cyclic S1 -> systole -> S2 -> diastole model.

    Parameters (shapes)
    -------------------
    log_b : (T, 4) log emission (scaled likelihood) per frame and state.
    log_pd : (4, D) log duration pmf, ``log_pd[j, d-1] = log p_j(d)``; ``-inf`` where impossible.
    log_surv : (4, D) log of ``P(D_j >= d) / E[D_j]``, the probability of a segment whose start
        (or end) lies outside the window being observed for exactly ``d`` frames (a renewal
        process seen through a window), used for the first and the last segment.
    log_pi : (4,) log initial state probabilities.
    forced_start : state whose segment must start exactly at frame 0 with its full duration
        distribution (used by the streaming segmenter to continue from published segments),
        or -1 for a free, left-truncated start.
    states : (T,) output, the decoded state per frame.

    Returns the log score of the best path.
    """
    n_t = log_b.shape[0]
    n_s = log_b.shape[1]
    d_max = log_pd.shape[1]
    neg = -np.inf
    cum = np.zeros((n_t + 1, n_s))
    for t in range(n_t):
        for j in range(n_s):
            cum[t + 1, j] = cum[t, j] + log_b[t, j]
    # v[t, j]: best score of paths in which a segment of state j ends at frame t (inclusive)
    v = np.full((n_t, n_s), neg)
    arg_d = np.zeros((n_t, n_s), dtype=np.int64)
    for t in range(n_t):
        for j in range(n_s):
            prev_state = (j + n_s - 1) % n_s
            best = neg
            best_d = 0
            d_hi = min(d_max, t + 1)
            for d in range(1, d_hi + 1):
                s = t - d + 1
                if s == 0:
                    if forced_start >= 0:
                        if j != forced_start:
                            continue
                        sc = log_pd[j, d - 1]
                    else:
                        sc = log_pi[j] + log_surv[j, d - 1]
                else:
                    lp = log_pd[j, d - 1]
                    if lp == neg:
                        continue
                    pv = v[s - 1, prev_state]
                    if pv == neg:
                        continue
                    sc = pv + lp
                if sc == neg:
                    continue
                sc += cum[t + 1, j] - cum[s, j]
                if sc > best:
                    best = sc
                    best_d = d
            v[t, j] = best
            arg_d[t, j] = best_d
    # last segment: right-truncated, covers frame n_t - 1
    best = neg
    best_j = -1
    best_d = 0
    for j in range(n_s):
        prev_state = (j + n_s - 1) % n_s
        for d in range(1, min(d_max, n_t) + 1):
            s = n_t - d
            if s == 0:
                if forced_start >= 0:
                    if j != forced_start:
                        continue
                    sc = log_surv[j, d - 1]
                else:
                    sc = log_pi[j] + log_surv[j, d - 1]
            else:
                pv = v[s - 1, prev_state]
                if pv == neg:
                    continue
                sc = pv + log_surv[j, d - 1]
            if sc == neg:
                continue
            sc += cum[n_t, j] - cum[s, j]
            if sc > best:
                best = sc
                best_j = j
                best_d = d
    if best_j < 0:
        for t in range(n_t):
            states[t] = -1
        return neg
    # backtrack
    t = n_t - 1
    j = best_j
    d = best_d
    while True:
        s = t - d + 1
        for k in range(s, t + 1):
            states[k] = j
        if s == 0:
            break
        t = s - 1
        j = (j + n_s - 1) % n_s
        d = arg_d[t, j]
        if d <= 0:  # unreachable in a consistent table; guard against corrupt input
            for k in range(0, t + 1):
                states[k] = -1
            break
    return best


@njit(cache=True, nogil=True)
def _autocorr_fft_free(x: FloatArray, max_lag: int, out: FloatArray) -> None:
    """Biased autocorrelation ``out[k] = sum_t x[t] x[t+k] / sum_t x[t]^2`` for k <= max_lag."""
    n = x.shape[0]
    r0 = 0.0
    for t in range(n):
        r0 += x[t] * x[t]
    for k in range(max_lag + 1):
        acc = 0.0
        for t in range(n - k):
            acc += x[t] * x[t + k]
        out[k] = acc / r0 if r0 > 0.0 else 0.0
