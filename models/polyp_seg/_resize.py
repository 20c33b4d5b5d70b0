"""Separable anti-aliased bilinear (triangle-filter) resize in NumPy.

The same routine prepares the training cache (``train.py``) and the runtime input, so the
network sees identically resampled pixels in training and in use. The filter is the triangle
(bilinear) kernel stretched by the down-scaling factor, as in PIL's ``Image.resize(BILINEAR)``
(Pillow ``Resample.c``): down-scaling averages over the footprint of each output pixel instead
of aliasing; up-scaling reduces to plain bilinear interpolation with half-pixel centres.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray
from scipy import sparse

__all__ = ["region_stats", "resize", "resize_chw", "resize_chw_fast", "taps", "upsample_block", "upsample_prob", "warm_kernels"]


@lru_cache(maxsize=64)
def taps(n_in: int, n_out: int) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Source indices and weights, each ``(n_out, k)``, for resizing one axis.

    Examples
    --------
    >>> idx, w = taps(4, 2)
    >>> w.sum(axis=1).round(6).tolist()
    [1.0, 1.0]
    """
    scale = n_in / n_out
    support = max(scale, 1.0)  # triangle half-width in input pixels
    centers = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    k = int(np.ceil(support)) * 2 + 1
    first = np.floor(centers - support).astype(np.intp)
    j = first[:, None] + np.arange(k)[None, :]
    w = np.clip(1.0 - np.abs((j + 0.5 - centers[:, None]) / support), 0.0, None)
    w[(j < 0) | (j >= n_in)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    keep = np.flatnonzero(w.any(axis=0))  # drop all-zero tap columns
    j, w = j[:, keep], w[:, keep]
    idx = np.clip(j, 0, n_in - 1).astype(np.intp)
    idx.setflags(write=False)
    w32 = w.astype(np.float32)
    w32.setflags(write=False)
    return idx, w32


@lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """The ``(n_out, n_in)`` sparse resampling matrix of one axis."""
    idx, w = taps(n_in, n_out)
    rows = np.repeat(np.arange(n_out), idx.shape[1])
    return sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(n_out, n_in), dtype=np.float32)


def resize(img: NDArray[np.generic], height: int, width: int) -> NDArray[np.float32]:
    """Resize an ``(H, W)`` or ``(H, W, C)`` array to ``(height, width[, C])`` as float32.

    Two sparse matrix products (one per axis), so the cost is proportional to the number of
    filter taps, not to ``H * W * height * width``.

    Examples
    --------
    >>> resize(np.ones((480, 640, 3), np.uint8), 256, 256).shape
    (256, 256, 3)
    """
    x = np.asarray(img)
    if x.ndim not in (2, 3):
        raise ValueError(f"img must be (H, W) or (H, W, C), got shape {x.shape}")
    h_in, w_in = x.shape[:2]
    c = x.shape[2] if x.ndim == 3 else 1
    y = x.reshape(h_in, w_in * c).astype(np.float32, copy=False)
    if h_in != height:
        y = _matrix(h_in, height) @ y  # (height, w_in * c)
    if w_in != width:
        yt = np.ascontiguousarray(y.reshape(height, w_in, c).transpose(1, 0, 2)).reshape(
            w_in, height * c
        )
        y = (_matrix(w_in, width) @ yt).reshape(width, height, c).transpose(1, 0, 2)
    out = np.ascontiguousarray(y, dtype=np.float32).reshape((height, width) + x.shape[2:])
    return out


def resize_chw(img: NDArray[np.uint8], height: int, width: int) -> NDArray[np.float32]:
    """:func:`resize` of an ``(H, W, C)`` image, returned channel-first ``(C, height, width)``.

    The same two sparse products as :func:`resize` (bit-identical output), done channel by
    channel on a channel-first copy of the input, so no float array is ever transposed with
    3-element strides; about 1.5x faster for a 640x480 frame to 256x256.

    Examples
    --------
    >>> x = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    >>> bool(np.array_equal(resize_chw(x, 3, 4), resize(x, 3, 4).transpose(2, 0, 1)))
    True
    """
    x = np.asarray(img)
    if x.ndim != 3:
        raise ValueError(f"img must be (H, W, C), got shape {x.shape}")
    h_in, w_in, c = x.shape
    xc = np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32, copy=False)
    out = np.empty((c, height, width), np.float32)
    mh = _matrix(h_in, height) if h_in != height else None
    mw = _matrix(w_in, width) if w_in != width else None
    for k in range(c):
        y = mh @ xc[k] if mh is not None else xc[k]  # (height, w_in)
        out[k] = (mw @ y.T).T if mw is not None else y
    return out


# ---------------------------------------------------------------------------- fused kernels
# The same sparse products, as Numba loops over the CSR matrices of :func:`_matrix`: every output
# value is accumulated in float32, from 0, over the matrix row's entries in their stored order,
# exactly as SciPy's ``csr_matvecs`` does, so the results are bit-identical to the SciPy path
# (tests/test_polyp_seg.py checks it) while skipping the float copy and transposes of the frame.


@njit(cache=True, nogil=True)
def _rows(x: Any, ip: Any, ix: Any, w: Any, out: Any) -> None:  # pragma: no cover - jit
    """``out[i, :] = sum_k w[k] * x[ix[k], :]`` over row ``i``'s CSR entries, in their order.

    ``x`` is 2-D (uint8 or float32, rows contiguous), ``out`` 2-D float32; the inner loop runs
    along contiguous rows, so it vectorises across output elements without reordering any sum.
    """
    n_out, width = out.shape
    for i in range(n_out):
        o = out[i]
        for col in range(width):
            o[col] = np.float32(0.0)
        for k in range(ip[i], ip[i + 1]):
            wk = w[k]
            src = x[ix[k]]
            for col in range(width):
                o[col] += wk * np.float32(src[col])


_BLOCK = 32  # transpose tile (rows read/written together: cache-friendly in both layouts)


@njit(cache=True, nogil=True)
def _hwc_rows_to_chw(y: Any, c: int, out: Any) -> None:  # pragma: no cover - jit
    """``y`` (rows, W * c) interleaved -> ``out`` (c, W, rows): channel planes, transposed (tiled)."""
    rows = y.shape[0]
    width = y.shape[1] // c
    for r0 in range(0, rows, _BLOCK):
        r1 = min(r0 + _BLOCK, rows)
        for c0 in range(0, width, _BLOCK):
            c1 = min(c0 + _BLOCK, width)
            for ch in range(c):
                for col in range(c0, c1):
                    for r in range(r0, r1):
                        out[ch, col, r] = y[r, col * c + ch]


@njit(cache=True, nogil=True)
def _transpose_into(y: Any, out: Any) -> None:  # pragma: no cover - jit
    """``out = y.T`` (tiled)."""
    n0, n1 = y.shape
    for a0 in range(0, n0, _BLOCK):
        a1 = min(a0 + _BLOCK, n0)
        for b0 in range(0, n1, _BLOCK):
            b1 = min(b0 + _BLOCK, n1)
            for b in range(b0, b1):
                for a in range(a0, a1):
                    out[b, a] = y[a, b]


@njit(cache=True, nogil=True)
def _transpose_clip_threshold(y: Any, thr: float, out: Any, mask: Any) -> None:  # pragma: no cover - jit
    """``out = clip(y.T, 0, 1)``, ``mask = out > thr`` (tiled), in one pass."""
    n0, n1 = y.shape
    t = np.float32(thr)
    for a0 in range(0, n0, _BLOCK):
        a1 = min(a0 + _BLOCK, n0)
        for b0 in range(0, n1, _BLOCK):
            b1 = min(b0 + _BLOCK, n1)
            for b in range(b0, b1):
                for a in range(a0, a1):
                    v = y[a, b]
                    v = min(max(v, np.float32(0.0)), np.float32(1.0))
                    out[b, a] = v
                    mask[b, a] = v > t


_scratch = threading.local()


def _buf(name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> NDArray[Any]:
    """A per-thread scratch array, reused from call to call (fresh pages cost page faults)."""
    key = (name, shape, np.dtype(dtype).str)
    d = getattr(_scratch, "d", None)
    if d is None:
        d = _scratch.d = {}
    a = d.get(key)
    if a is None:
        if len(d) > 32:
            d.clear()
        a = d[key] = np.empty(shape, dtype)
    return a


def _csr(n_in: int, n_out: int) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.float32]]:
    m = _matrix(n_in, n_out)
    return m.indptr, m.indices, m.data


def resize_chw_fast(img: NDArray[np.uint8], height: int, width: int) -> NDArray[np.float32]:
    """:func:`resize_chw` of a uint8 ``(H, W, C)`` frame, bit-identical, in Numba row passes.

    Rows first on the interleaved frame, then the columns as rows of the transposed planes (each
    output value is the same float32 sum, in the same order, as SciPy's). Falls back to
    :func:`resize_chw` for any other input.

    Examples
    --------
    >>> x = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    >>> bool(np.array_equal(resize_chw_fast(x, 3, 4), resize_chw(x, 3, 4)))
    True
    """
    x = np.asarray(img)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[0] == height or x.shape[1] == width:
        return resize_chw(x, height, width)
    h_in, w_in, c = x.shape
    hp, hi, hw = _csr(h_in, height)
    wp, wi, ww = _csr(w_in, width)
    tmp = _buf("rows", (height, w_in * c))
    _rows(np.ascontiguousarray(x).reshape(h_in, w_in * c), hp, hi, hw, tmp)
    planes = _buf("planes", (c, w_in, height))
    _hwc_rows_to_chw(tmp, c, planes)
    out = np.empty((c, height, width), np.float32)
    res = _buf("res", (width, height))
    for k in range(c):
        _rows(planes[k], wp, wi, ww, res)
        _transpose_into(res, out[k])
    return out


def upsample_prob(low: NDArray[np.float32], height: int, width: int,
                  threshold: float) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """``prob = clip(resize(low, height, width), 0, 1)`` and ``prob > threshold``, bit-identical.

    Columns of the small map first (as rows of its transpose), then its rows, then one tiled
    transpose that also clips and thresholds.

    Examples
    --------
    >>> m = np.random.default_rng(0).random((8, 8), dtype=np.float32) * 1.2 - 0.1
    >>> p, k = upsample_prob(m, 30, 40, 0.5)
    >>> bool(np.array_equal(p, np.clip(resize(m, 30, 40), 0, 1))), bool(np.array_equal(k, p > 0.5))
    (True, True)
    """
    x = np.asarray(low)
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] == height or x.shape[1] == width:
        prob = np.clip(resize(x, height, width), 0.0, 1.0)
        return prob, prob > threshold
    h_in, w_in = x.shape
    hp, hi, hw = _csr(h_in, height)
    wp, wi, ww = _csr(w_in, width)
    rows = _buf("up_rows", (height, w_in))
    _rows(np.ascontiguousarray(x), hp, hi, hw, rows)  # (height, w_in): the row pass, as resize()
    rt = _buf("up_rt", (w_in, height))
    _transpose_into(rows, rt)
    cols = _buf("up_cols", (width, height))
    _rows(rt, wp, wi, ww, cols)  # the column pass as rows of the transpose: (width, height)
    prob = np.empty((height, width), np.float32)
    mask = np.empty((height, width), np.bool_)
    _transpose_clip_threshold(cols, threshold, prob, mask)
    return prob, mask


@njit(cache=True, nogil=True)
def region_stats(mask: Any, prob: Any, labels: Any, ri: Any, ci: Any, n: int) -> Any:  # pragma: no cover - jit
    """Per label ``k`` of the low-resolution ``labels``, over the frame pixels of ``mask`` whose
    nearest cell (``labels[ri[y], ci[x]]``) is ``k``: ``[count, y0, y1, x0, x1, peak_y, peak_x]``
    (inclusive extents; the peak is the first pixel, in row-major order, with the largest
    ``prob``). One pass over the frame.
    """
    st = np.zeros((n + 1, 7), np.int64)
    best = np.full(n + 1, -1.0, np.float32)
    H, W = mask.shape
    for y in range(H):
        lrow = labels[ri[y]]
        mrow = mask[y]
        for x in range(W):
            if mrow[x]:
                k = lrow[ci[x]]
                if k > 0:
                    if st[k, 0] == 0:
                        st[k, 1] = y
                        st[k, 2] = y
                        st[k, 3] = x
                        st[k, 4] = x
                    else:
                        st[k, 2] = y
                        if x < st[k, 3]:
                            st[k, 3] = x
                        if x > st[k, 4]:
                            st[k, 4] = x
                    st[k, 0] += 1
                    v = prob[y, x]
                    if v > best[k]:
                        best[k] = v
                        st[k, 5] = y
                        st[k, 6] = x
    return st


def upsample_block(low: NDArray[np.float32], height: int, width: int, threshold: float,
                   margin: float = 1e-5) -> tuple[int, int, NDArray[np.float32], NDArray[np.bool_]]:
    """The part of :func:`upsample_prob` that can exceed ``threshold``: ``(y0, x0, prob, mask)``.

    Only frame pixels with a filter tap on a cell of ``low`` above ``threshold - margin`` can
    exceed the threshold (an upsampled value is a convex combination of its taps; the margin
    covers float rounding), so only the block of output rows/columns touching the bounding box
    of those cells is computed; its values are bit-identical to the same pixels of
    :func:`upsample_prob`, and every pixel outside it is below the threshold. An empty block
    (``(0, 0)`` arrays) when no cell is near the threshold.

    Examples
    --------
    >>> m = np.zeros((8, 8), np.float32); m[2:4, 5:7] = 0.9
    >>> y0, x0, p, k = upsample_block(m, 32, 32, 0.5)
    >>> full, fk = upsample_prob(m, 32, 32, 0.5)
    >>> bool(np.array_equal(full[y0:y0 + p.shape[0], x0:x0 + p.shape[1]], p)), int(fk.sum()) == int(k.sum())
    (True, True)
    """
    x = np.ascontiguousarray(low, dtype=np.float32)
    hot = x > np.float32(threshold - margin)
    if not hot.any():
        return 0, 0, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.bool_)
    h_in, w_in = x.shape
    rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    hp, hi, hw = _csr(h_in, height)
    wp, wi, ww = _csr(w_in, width)

    def span(ip: NDArray[np.int32], ix: NDArray[np.int32], a0: int, a1: int) -> tuple[int, int]:
        first, last = ix[ip[:-1]], ix[ip[1:] - 1]  # per output: smallest and largest tap (sorted)
        need = np.flatnonzero((last >= a0) & (first <= a1))
        return int(need[0]), int(need[-1]) + 1

    y0, y1 = span(hp, hi, int(rows[0]), int(rows[-1]))
    x0, x1 = span(wp, wi, int(cols[0]), int(cols[-1]))
    r = np.empty((y1 - y0, w_in), np.float32)
    _rows(x, hp[y0:y1 + 1], hi, hw, r)  # CSR offsets stay absolute: the sub-range of rows
    rt = np.empty((w_in, y1 - y0), np.float32)
    _transpose_into(r, rt)
    c = np.empty((x1 - x0, y1 - y0), np.float32)
    _rows(rt, wp[x0:x1 + 1], wi, ww, c)
    prob = np.empty((y1 - y0, x1 - x0), np.float32)
    mask = np.empty((y1 - y0, x1 - x0), np.bool_)
    _transpose_clip_threshold(c, threshold, prob, mask)
    return y0, x0, prob, mask


def warm_kernels() -> None:
    """Run every Numba kernel once on tiny inputs (compiles on a cold cache, else loads it)."""
    resize_chw_fast(np.zeros((20, 24, 3), np.uint8), 8, 8)
    low = np.zeros((4, 4), np.float32)
    low[1, 1] = 1.0
    _, _, p, m = upsample_block(low, 16, 16, 0.5)
    upsample_prob(low, 16, 16, 0.5)
    region_stats(m, p, np.ones((4, 4), np.int32), np.zeros(m.shape[0], np.intp),
                 np.zeros(m.shape[1], np.intp), 1)
