"""Separable anti-aliased bilinear (triangle-filter) resize in NumPy.

The same routine prepares the training cache (``train.py``) and the runtime input, so the
network sees identically resampled pixels in training and in use. The filter is the triangle
(bilinear) kernel stretched by the down-scaling factor, as in PIL's ``Image.resize(BILINEAR)``
(Pillow ``Resample.c``): down-scaling averages over the footprint of each output pixel instead
of aliasing; up-scaling reduces to plain bilinear interpolation with half-pixel centres.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import sparse

__all__ = ["resize", "resize_chw", "taps"]


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
