"""Segmentation metrics as polyp-segmentation papers report them.

Kvasir-SEG benchmarks (Jha et al., MMM 2020; Jha et al., "Real-time polyp detection,
localization and segmentation in colonoscopy using deep learning", IEEE Access 2021) report the
*mean over images* of the per-image Dice coefficient ``2|P∩G| / (|P| + |G|)`` and IoU (Jaccard)
``|P∩G| / |P∪G|``, not a pixel-pooled score over the whole set. When both the prediction and the
ground truth of an image are empty, that image scores 1 (perfect agreement).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.errors import DataError

__all__ = [
    "dice_iou",
    "evaluate_folder",
    "mean_dice_iou",
    "per_image_dice_iou",
    "read_mask",
    "read_rgb",
    "sweep_thresholds",
]


def _check(pred: NDArray[np.generic], truth: NDArray[np.generic]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise DataError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    if p.ndim < 2:
        raise DataError(f"masks must be at least 2-D (H, W), got shape {p.shape}")
    return p.astype(bool, copy=False), t.astype(bool, copy=False)


def dice_iou(pred: NDArray[np.generic], truth: NDArray[np.generic]) -> tuple[float, float]:
    """Dice and IoU of one binary mask pair ``(H, W)`` (non-zero = foreground).

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[:1] = True
    >>> dice_iou(a, b)
    (0.6666666666666666, 0.5)
    """
    p, t = _check(pred, truth)
    inter = int(np.count_nonzero(p & t))
    sp, st = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    union = sp + st - inter
    if union == 0:
        return 1.0, 1.0
    return 2.0 * inter / (sp + st), inter / union


def per_image_dice_iou(
    pred: NDArray[np.generic], truth: NDArray[np.generic]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-image Dice and IoU of stacks ``(N, H, W)``; returns two arrays of length N.

    Examples
    --------
    >>> m = np.ones((3, 8, 8), bool)
    >>> per_image_dice_iou(m, m)[0].tolist()
    [1.0, 1.0, 1.0]
    """
    p, t = _check(pred, truth)
    if p.ndim != 3:
        raise DataError(f"expected stacks of shape (N, H, W), got {p.shape}")
    n = p.shape[0]
    inter = np.count_nonzero((p & t).reshape(n, -1), axis=1).astype(np.float64)
    sp = np.count_nonzero(p.reshape(n, -1), axis=1).astype(np.float64)
    st = np.count_nonzero(t.reshape(n, -1), axis=1).astype(np.float64)
    union = sp + st - inter
    empty = union == 0
    dice = np.where(empty, 1.0, 2.0 * inter / np.where(empty, 1.0, sp + st))
    iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


def mean_dice_iou(pred: NDArray[np.generic], truth: NDArray[np.generic]) -> tuple[float, float]:
    """Mean over images of per-image Dice and IoU, for stacks ``(N, H, W)``.

    Examples
    --------
    >>> a = np.zeros((2, 4, 4), bool); a[:, :2] = True
    >>> b = a.copy(); b[1] = False; b[1, :1] = True
    >>> mean_dice_iou(a, b)
    (0.8333333333333333, 0.75)
    """
    d, j = per_image_dice_iou(pred, truth)
    return float(d.mean()), float(j.mean())


def read_rgb(path: str | Path) -> NDArray[np.uint8]:
    """Decode an image file (JPEG/PNG) to ``(H, W, 3)`` uint8 RGB with PyAV (FFmpeg).

    Examples
    --------
    >>> read_rgb("frame.jpg").shape  # doctest: +SKIP
    (352, 352, 3)
    """
    import av  # here, so that the metrics themselves need no PyAV

    try:
        with av.open(str(path)) as c:
            frame = next(c.decode(video=0))
            return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    except (OSError, StopIteration, av.FFmpegError) as e:
        raise DataError(f"cannot decode image {path}: {e}") from e


def read_mask(path: str | Path, level: int = 127) -> NDArray[np.bool_]:
    """Decode a mask image and threshold it (``> level``; Kvasir-SEG masks are JPEG)."""
    import av

    try:
        with av.open(str(path)) as c:
            frame = next(c.decode(video=0))
            gray = np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)
            return np.asarray(gray > level)
    except (OSError, StopIteration, av.FFmpegError) as e:
        raise DataError(f"cannot decode mask {path}: {e}") from e


def evaluate_folder(
    predict: Callable[[NDArray[np.uint8]], NDArray[np.bool_]],
    folder: str | Path,
    limit: int | None = None,
) -> dict[str, Any]:
    """Score ``predict(rgb) -> mask`` on a Kvasir-SEG style folder (``images/``, ``masks/``).

    Masks are predicted at each image's own size; returns the mean Dice/IoU over images and
    the per-image values (sorted file names; ``limit`` keeps the first ``limit``).

    Examples
    --------
    >>> from telediag.models.polyp_seg import PolypSegmenter
    >>> seg = PolypSegmenter().load()
    >>> r = evaluate_folder(lambda x: seg.predict(x).mask, "kvasir-seg/validation")  # doctest: +SKIP
    """
    root = Path(folder)
    names = sorted(p.name for p in (root / "images").iterdir() if p.is_file())
    if not names:
        raise DataError(f"no images in {root / 'images'}")
    names = names[:limit] if limit is not None else names
    dices, ious = [], []
    for n in names:
        rgb = read_rgb(root / "images" / n)
        truth = read_mask(root / "masks" / n)
        d, j = dice_iou(predict(rgb), truth)
        dices.append(d)
        ious.append(j)
    return {
        "n_images": len(names),
        "dice": float(np.mean(dices)),
        "iou": float(np.mean(ious)),
        "per_image": {n: (d, j) for n, d, j in zip(names, dices, ious, strict=True)},
    }


def sweep_thresholds(
    prob: Callable[[NDArray[np.uint8]], NDArray[np.floating[Any]]],
    folder: str | Path,
    thresholds: Sequence[float],
    limit: int | None = None,
) -> dict[float, tuple[float, float]]:
    """Mean per-image Dice/IoU of ``prob(rgb) > t`` for each threshold ``t``.

    ``prob`` returns a probability map at the image's own size; it runs once per image.

    Examples
    --------
    >>> from telediag.models.polyp_seg import PolypSegmenter
    >>> seg = PolypSegmenter().load()
    >>> r = sweep_thresholds(lambda x: seg.predict(x).prob_map, "validation", [0.4, 0.5])  # doctest: +SKIP
    >>> sorted(r)  # doctest: +SKIP
    [0.4, 0.5]
    """
    root = Path(folder)
    names = sorted(p.name for p in (root / "images").iterdir() if p.is_file())
    if not names:
        raise DataError(f"no images in {root / 'images'}")
    names = names[:limit] if limit is not None else names
    ts = [float(t) for t in thresholds]
    scores = np.zeros((len(ts), len(names), 2))
    for i, n in enumerate(names):
        p = np.asarray(prob(read_rgb(root / "images" / n)))
        truth = read_mask(root / "masks" / n)
        for k, t in enumerate(ts):
            scores[k, i] = dice_iou(p > t, truth)
    return {t: (float(scores[k, :, 0].mean()), float(scores[k, :, 1].mean()))
            for k, t in enumerate(ts)}


def main(argv: list[str] | None = None) -> int:
    """``python -m telediag.evaluation.seg_metrics [--data DIR] [--threads N] [--tta M] [--threshold T]``.

    Scores the shipped polyp segmenter (:mod:`telediag.models.polyp_seg`) on a folder.
    """
    import argparse

    from telediag.models.polyp_seg import PolypSegmenter

    ap = argparse.ArgumentParser(description="Mean per-image Dice/IoU of the polyp segmenter")
    ap.add_argument("--data", default="../shared/data/kvasir-seg/validation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--tta", choices=("none", "h", "hv"), default=None,
                    help="test-time flips (default: the model card's postprocess.tta)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="mask threshold (default: the model card's postprocess.threshold)")
    a = ap.parse_args(argv)
    seg = PolypSegmenter(threads=a.threads, tta=a.tta, threshold=a.threshold).load()
    r = evaluate_folder(lambda x: seg.predict(x).mask, a.data, a.limit)
    print(json.dumps({"data": str(a.data), "n_images": r["n_images"], "tta": seg.tta,
                      "threshold": seg.threshold, "dice": r["dice"], "iou": r["iou"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
