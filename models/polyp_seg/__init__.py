"""Real-time polyp segmentation for endoscopy frames (ONNX Runtime, CPU).

A compact residual U-Net trained on Kvasir-SEG (Jha et al., MMM 2020; research and educational
use only, see ``README.md``) maps an RGB frame, resized to 256x256, to a polyp probability map.
:class:`PolypSegmenter` wraps the exported ``polyp_seg.onnx``: it validates the frame, resizes it
(anti-aliased bilinear, the same resampling the training cache used), runs the network, resizes
the probability map back to the frame size, thresholds it and boxes its connected components.
The model card lists several **variants** of the network (``card.json`` ``variants``: the fp32
0.2.0 network, its int8 quantisation, a distilled student and its int8 quantisation, each with
its validation Dice/IoU and its speed relative to fp32); ``variant=None`` loads the card's
``default_variant``. Variants with dynamic height/width accept a smaller ``input_size`` per call
(the video stage lowers it when it falls behind).
The runtime needs NumPy, SciPy and ONNX Runtime only; training (``train.py``, ``distill.py``,
``quantize.py``) needs torch/onnx.

Examples
--------
>>> seg = PolypSegmenter().load()
>>> res = seg.predict(np.zeros((480, 640, 3), np.uint8))
>>> res.prob_map.shape, res.mask.shape, res.polyp_probability < 0.5
((480, 640), (480, 640), True)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from telediag.errors import ModelError
from telediag.models.polyp_seg._resize import (
    region_stats,
    resize,  # noqa: F401 - used by the doctests
    resize_chw_fast,
    upsample_block,
    upsample_prob,
    warm_kernels,
)

__all__ = ["CARD_PATH", "MODEL_PATH", "PolypResult", "PolypSegmenter", "region_boxes"]

MODEL_PATH = Path(__file__).with_name("polyp_seg.onnx")
CARD_PATH = Path(__file__).with_name("card.json")
MIN_SIDE = 16  # smallest frame side accepted
TTA_MODES = ("none", "h", "hv")  # test-time flips averaged: none, horizontal, horizontal+vertical
MERGE_FRAC = 0.016  # mask fragments closer than this fraction of the map's longer side share a box


def _nearest_index(n_out: int, n_in: int) -> NDArray[np.intp]:
    """For each of ``n_out`` pixels, the nearest of ``n_in`` cells covering the same extent."""
    return np.minimum((np.arange(n_out) + 0.5) * n_in / n_out, n_in - 1).astype(np.intp)


_EIGHT = np.ones((3, 3), bool)


def region_boxes(
    low: NDArray[np.floating[Any]],
    prob: NDArray[np.floating[Any]],
    mask: NDArray[np.bool_],
    threshold: float,
    *,
    min_area_frac: float = 0.001,
    merge_frac: float = MERGE_FRAC,
) -> list[tuple[int, int, int, int, float]]:
    """One box per region of the frame-size ``mask``: ``[(x0, y0, x1, y1, peak), ...]``.

    Regions are found on the network-resolution map ``low`` (cheap, and free of the
    upsampling's staircase): its pixels above ``threshold`` are dilated by
    ``max(1, round(merge_frac * max(low.shape) / 2))`` pixels and labelled with
    8-connectivity, so fragments of one blob (split by a thin gap, or touching only at a
    corner) share one region while separate blobs keep their own. Each frame pixel of
    ``mask`` belongs to the region of its nearest ``low`` cell (the dilation of at least one
    cell guarantees every mask pixel has one, since a bilinearly upsampled value above the
    threshold needs a cell above it within one cell); the box is the exact extent of the mask
    pixels of that region, so a box never reaches beyond its own blob. Regions with fewer than
    ``min_area_frac`` of the frame's pixels get no box (they stay in the mask).

    Examples
    --------
    >>> low = np.zeros((8, 8), np.float32); low[2:4, 2:4] = 0.9; low[4:6, 4:6] = 0.8
    >>> prob = resize(low, 32, 32); m = prob > 0.5
    >>> [b[:4] for b in region_boxes(low, prob, m, 0.5, min_area_frac=0.0)]
    [(8, 8, 24, 24)]
    """
    if not mask.any():
        return []
    lm = np.asarray(low) > threshold
    grow = max(1, int(round(merge_frac * max(lm.shape) / 2)))
    grown = ndimage.binary_dilation(lm, structure=_EIGHT, iterations=grow) if lm.any() else lm
    labels, n = ndimage.label(grown, structure=_EIGHT)
    H, W = mask.shape
    ri, ci = _nearest_index(H, lm.shape[0]), _nearest_index(W, lm.shape[1])
    min_area = min_area_frac * mask.size
    boxes = []
    p = np.asarray(prob)
    if n and mask.dtype == np.bool_ and p.dtype == np.float32 and mask.flags.c_contiguous and p.flags.c_contiguous:
        return _stats_boxes(labels, n, p, mask, ri, ci, 0, 0, min_area)
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        r0, r1 = np.searchsorted(ri, ys.start, "left"), np.searchsorted(ri, ys.stop, "left")
        c0, c1 = np.searchsorted(ci, xs.start, "left"), np.searchsorted(ci, xs.stop, "left")
        sub = mask[r0:r1, c0:c1] & (labels[ri[r0:r1]][:, ci[c0:c1]] == k)
        area = int(np.count_nonzero(sub))
        if area == 0 or area < min_area:
            continue
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        peak = float(np.asarray(prob)[r0:r1, c0:c1][sub].max())
        boxes.append((int(c0 + cols[0]), int(r0 + rows[0]), int(c0 + cols[-1] + 1),
                      int(r0 + rows[-1] + 1), peak))
    boxes.sort(key=lambda b: -b[4])
    return boxes


def _stats_boxes(labels: NDArray[np.int32], n: int, prob: NDArray[np.float32], mask: NDArray[np.bool_],
                 ri: NDArray[np.intp], ci: NDArray[np.intp], y0: int, x0: int,
                 min_area: float) -> list[tuple[int, int, int, int, float]]:
    """Boxes of :func:`region_boxes` from one Numba pass (:func:`region_stats`) over a block of the
    frame whose top-left pixel is ``(y0, x0)`` (``ri``/``ci``: that block's nearest cells)."""
    st = region_stats(mask, prob, labels.astype(np.int32, copy=False), ri, ci, n)
    boxes = []
    for k in range(1, n + 1):
        area = int(st[k, 0])
        if area == 0 or area < min_area:
            continue
        boxes.append((x0 + int(st[k, 3]), y0 + int(st[k, 1]), x0 + int(st[k, 4]) + 1, y0 + int(st[k, 2]) + 1,
                      float(prob[st[k, 5], st[k, 6]])))
    boxes.sort(key=lambda b: -b[4])
    return boxes


def _region_labels(low: NDArray[np.floating[Any]], threshold: float,
                   merge_frac: float = MERGE_FRAC) -> tuple[NDArray[np.int32], int]:
    """:func:`region_boxes`'s regions on the network map: dilated above-threshold cells, 8-connected."""
    lm = np.asarray(low) > threshold
    grow = max(1, int(round(merge_frac * max(lm.shape) / 2)))
    grown = ndimage.binary_dilation(lm, structure=_EIGHT, iterations=grow) if lm.any() else lm
    labels, n = ndimage.label(grown, structure=_EIGHT)
    return labels, int(n)


class PolypResult:
    """Segmentation of one frame (see the attributes); ``prob_map`` is computed when first read.

    Attributes
    ----------
    prob_map : ndarray, float32, shape (H, W)
        Per-pixel polyp probability at the input frame's size.
    mask : ndarray, bool, shape (H, W)
        ``prob_map > threshold``.
    polyp_probability : float
        Frame-level score in [0, 1]: the largest 3x3-averaged value of the network-resolution
        probability map. A heuristic, not a calibrated probability (the training set has a
        polyp in every image).
    boxes : list of (x0, y0, x1, y1, score)
        One box per **region** of ``mask`` (see :func:`region_boxes`: 8-connected components,
        fragments closer than ``MERGE_FRAC`` of the map merged) of at least
        ``min_box_area_frac`` of the frame, in pixels (x1, y1 exclusive), score = the region's
        peak probability; sorted by score, highest first.
    input_size : int
        The network input side this frame was analysed at.
    """

    __slots__ = ("_lazy", "_prob", "boxes", "input_size", "mask", "polyp_probability")

    def __init__(self, prob_map: NDArray[np.float32] | None, mask: NDArray[np.bool_], polyp_probability: float,
                 boxes: list[tuple[int, int, int, int, float]] | None = None, input_size: int = 0, *,
                 lazy: tuple[NDArray[np.float32], int, int] | None = None) -> None:
        if prob_map is None and lazy is None:
            raise ValueError("PolypResult needs prob_map or lazy=(low, height, width)")
        self._prob = prob_map
        self._lazy = lazy
        self.mask = mask
        self.polyp_probability = polyp_probability
        self.boxes = [] if boxes is None else boxes
        self.input_size = input_size

    @property
    def prob_map(self) -> NDArray[np.float32]:
        if self._prob is None:
            assert self._lazy is not None
            low, h, w = self._lazy
            self._prob = upsample_prob(low, h, w, 0.5)[0]
        return self._prob


class PolypSegmenter:
    """ONNX Runtime polyp segmenter.

    Parameters
    ----------
    model_path, card_path : path, optional
        The ONNX file and its model card (default: the variant's file next to ``card.json``).
        :meth:`load` checks the file's sha256 against the card (the variant's entry whose
        ``file`` has this name, else the card's top-level ``sha256``).
    variant : str, optional
        Which of the card's ``variants`` to load (e.g. ``"fp32"``, ``"int8"``); default: the
        card's ``default_variant`` (``"fp32"`` for a card without variants).
    threads : int
        ONNX Runtime intra-op threads (1 keeps one core for everything else). Session options:
        all graph optimisations, sequential execution, one inter-op thread, memory-pattern
        planning on, and no spin-waiting of idle intra-op threads (on a 2-core machine a
        spinning thread takes the core the biosignal workers need).
    threshold : float, optional
        Probability above which a pixel belongs to the mask. Default: the card's
        ``postprocess.threshold`` (chosen on the validation split), else 0.5.
    tta : {"none", "h", "hv"}, optional
        Test-time augmentation: average the probability maps of the frame and its horizontal
        flip (``"h"``, one batch of 2 through the network) or of the frame, its horizontal and
        its vertical flip (``"hv"``, batch of 3). Default: the card's ``postprocess.tta``, else
        ``"none"``.
    min_box_area_frac : float
        Regions smaller than this fraction of the frame get no box (they stay in the mask).

    Examples
    --------
    >>> seg = PolypSegmenter(threads=1).load()
    >>> seg.input_size, seg.input_sizes[0] == seg.input_size
    (256, True)
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        card_path: str | Path | None = None,
        *,
        variant: str | None = None,
        threads: int = 1,
        threshold: float | None = None,
        min_box_area_frac: float = 0.001,
        tta: str | None = None,
    ) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ModelError(f"threads must be an int >= 1, got {threads!r}")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ModelError(f"threshold must be in (0, 1), got {threshold!r}")
        if tta is not None and tta not in TTA_MODES:
            raise ModelError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        if not 0.0 <= min_box_area_frac < 1.0:
            raise ModelError(f"min_box_area_frac must be in [0, 1), got {min_box_area_frac!r}")
        self._model_path_arg = Path(model_path) if model_path is not None else None
        self.model_path = self._model_path_arg if self._model_path_arg is not None else MODEL_PATH
        self.card_path = Path(card_path) if card_path is not None else CARD_PATH
        self._variant_arg = variant
        self.variant = variant or ""
        self.threads = threads
        self._threshold_arg, self._tta_arg = threshold, tta
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.tta = "none" if tta is None else tta
        self.min_box_area_frac = float(min_box_area_frac)
        self.card: dict[str, Any] = {}
        self.input_size = 0
        self.input_sizes: tuple[int, ...] = ()
        self._session: Any = None
        self._input_name = ""

    # ------------------------------------------------------------------ lifecycle
    def _pick_variant(self) -> dict[str, Any]:
        """The card entry of the requested variant (``{}``: the card's top level)."""
        variants = self.card.get("variants") or {}
        if not isinstance(variants, dict):
            raise ModelError(f"{self.card_path}: 'variants' must be a map, got {type(variants).__name__}")
        if self._model_path_arg is not None and self._variant_arg is None:
            # an explicit file: its own entry (by file name), else the card's top level
            for name, v in variants.items():
                if isinstance(v, dict) and v.get("file") == self._model_path_arg.name:
                    self.variant = str(name)
                    return v
            self.variant = str(self.card.get("default_variant", "fp32")) if not variants else "custom"
            return {}
        name = self._variant_arg or str(self.card.get("default_variant", "fp32"))
        if not variants:
            if name != "fp32":
                raise ModelError(f"{self.card_path} lists no variants; only 'fp32' exists, got {name!r}")
            self.variant = "fp32"
            return {}
        if name not in variants or not isinstance(variants[name], dict):
            raise ModelError(f"unknown polyp_seg variant {name!r}; the card lists {sorted(variants)}")
        self.variant = name
        v = variants[name]
        if self._model_path_arg is None:
            self.model_path = self.card_path.with_name(str(v.get("file", "")))
        return v  # type: ignore[no-any-return]

    def load(self) -> PolypSegmenter:
        """Read the card, verify the model's sha256, and open the ONNX Runtime session.

        Raises
        ------
        telediag.errors.ModelError
            Missing/unreadable files, an unknown variant, a checksum mismatch or an unexpected
            model signature.
        """
        try:
            self.card = json.loads(self.card_path.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot read polyp model card {self.card_path}: {e}; "
                "re-create it with `python -m telediag.models.polyp_seg.train`"
            ) from e
        entry = self._pick_variant()
        try:
            blob = self.model_path.read_bytes()
        except OSError as e:
            raise ModelError(
                f"cannot read polyp model {self.model_path} (variant {self.variant!r}): {e}; "
                "re-create it with `python -m telediag.models.polyp_seg.train`"
            ) from e
        want = str(entry.get("sha256", self.card.get("sha256", "")))
        got = hashlib.sha256(blob).hexdigest()
        if want != got:
            raise ModelError(
                f"{self.model_path}: sha256 {got} does not match the card's {want!r}"
            )
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.enable_mem_pattern = True
            so.enable_cpu_mem_arena = True
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot open {self.model_path} with onnxruntime: {e}") from e
        inp = sess.get_inputs()[0]
        shape = list(inp.shape)
        size = int(entry.get("input_size", self.card.get("input", {}).get("size", 0)))
        dynamic = len(shape) == 4 and not isinstance(shape[2], int) and not isinstance(shape[3], int)
        if len(shape) != 4 or shape[1] != 3 or not (dynamic or shape[2] == shape[3] == size):
            raise ModelError(
                f"model input must be (batch, 3, {size}, {size}) as the card says, got {shape}"
            )
        sizes = tuple(int(s) for s in entry.get("input_sizes", [size])) if dynamic else (size,)
        if not sizes or sizes[0] != size or any(s % 32 or s < 64 for s in sizes):
            raise ModelError(f"variant {self.variant!r}: input_sizes must start with {size} and be "
                             f"multiples of 32 >= 64, got {list(sizes)}")
        post = self.card.get("postprocess", {})
        threshold = self._threshold_arg if self._threshold_arg is not None else post.get(
            "threshold", 0.5)
        tta = self._tta_arg if self._tta_arg is not None else post.get("tta", "none")
        if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ModelError(f"card postprocess.threshold must be in (0, 1), got {threshold!r}")
        if tta not in TTA_MODES:
            raise ModelError(f"card postprocess.tta must be one of {TTA_MODES}, got {tta!r}")
        self.threshold, self.tta = float(threshold), str(tta)
        self._session, self._input_name, self.input_size = sess, inp.name, size
        self.input_sizes = sizes
        warm_kernels()  # compile (cold cache) or load the Numba kernels now, not on the first frame
        return self

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has succeeded."""
        return self._session is not None

    # ------------------------------------------------------------------ processing
    @staticmethod
    def _check_frame(rgb: Any) -> NDArray[np.uint8]:
        if not isinstance(rgb, np.ndarray):
            raise ModelError(f"rgb must be a numpy array (H, W, 3) uint8, got {type(rgb).__name__}")
        if rgb.dtype != np.uint8:
            raise ModelError(f"rgb must have dtype uint8 (RGB 0-255), got {rgb.dtype}")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ModelError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
        if min(rgb.shape[:2]) < MIN_SIDE:
            raise ModelError(f"rgb must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {rgb.shape[:2]}")
        return rgb

    def _size(self, input_size: int | None) -> int:
        if input_size is None:
            return self.input_size
        if input_size not in self.input_sizes:
            raise ModelError(f"input_size must be one of {list(self.input_sizes)} for variant "
                             f"{self.variant!r}, got {input_size!r}")
        return int(input_size)

    def preprocess(self, rgb: NDArray[np.uint8], input_size: int | None = None) -> NDArray[np.float32]:
        """Frame ``(H, W, 3)`` uint8 RGB -> network input ``(1, 3, S, S)`` float32, 0-255.

        Anti-aliased bilinear resize to ``S = input_size`` (default: the model's; aspect ratio
        not kept, as in training); normalisation happens inside the ONNX graph.

        Examples
        --------
        >>> seg = PolypSegmenter().load()
        >>> seg.preprocess(np.zeros((480, 640, 3), np.uint8)).shape
        (1, 3, 256, 256)
        """
        self._require_loaded()
        x = self._check_frame(rgb)
        s = self._size(input_size)
        return resize_chw_fast(x, s, s)[None]  # bit-identical to resize_chw (tests), faster

    def predict_batch_prob(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run the network on preprocessed inputs ``(N, 3, S, S)`` -> ``(N, S/k, S/k)`` probs.

        ``k`` is the variant's output stride (2 for the fp32 network, 4 for the student).
        """
        self._require_loaded()
        ok = batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[1] == 3
        if not ok or batch.shape[2] != batch.shape[3] or batch.shape[2] not in self.input_sizes:
            s = self.input_size
            raise ModelError(
                f"batch must be float32 (N, 3, {s}, {s}) (sides {list(self.input_sizes)}), "
                f"got {batch.dtype} {batch.shape}"
            )
        out = self._session.run(None, {self._input_name: batch})[0]
        return np.asarray(out[:, 0], dtype=np.float32)

    def network_prob(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """One preprocessed frame ``(1, 3, S, S)`` -> ``(S/k, S/k)`` probability, with TTA.

        With ``tta="h"`` (``"hv"``) the frame and its flip(s) run as one batch and the
        un-flipped maps are averaged (flip test-time augmentation, as in e.g. HarDNet-MSEG's
        and PraNet's evaluation code); with ``"none"`` this is :meth:`predict_batch_prob`.

        Examples
        --------
        >>> seg = PolypSegmenter(tta="h", variant="fp32").load()
        >>> seg.network_prob(seg.preprocess(np.zeros((64, 64, 3), np.uint8))).shape
        (128, 128)
        """
        if self.tta == "none":
            return self.predict_batch_prob(x)[0]
        views = [x, x[..., ::-1]]
        if self.tta == "hv":
            views.append(x[..., ::-1, :])
        out = self.predict_batch_prob(np.ascontiguousarray(np.concatenate(views)))
        acc = out[0] + out[1][:, ::-1]
        if self.tta == "hv":
            acc += out[2][::-1, :]
        return np.asarray(acc / len(views), dtype=np.float32)

    def predict(self, rgb: NDArray[np.uint8], input_size: int | None = None) -> PolypResult:
        """Segment one RGB frame.

        Parameters
        ----------
        rgb : ndarray, uint8, shape (H, W, 3)
            The frame in RGB order (convert from BGR first if it comes from OpenCV).
        input_size : int, optional
            Network input side, one of :attr:`input_sizes` (default: the largest). Smaller is
            faster and less accurate (see the card's ``variants[...].by_input_size``).

        Raises
        ------
        telediag.errors.ModelError
            Not loaded, or a frame of the wrong type, dtype or shape, or an input size the
            variant does not support.

        Examples
        --------
        >>> seg = PolypSegmenter().load()
        >>> seg.predict(np.zeros((720, 1280, 3), np.uint8)).mask.shape
        (720, 1280)
        """
        s = self._size(input_size)
        x = self.preprocess(rgb, s)
        low = self.network_prob(x)
        h, w = rgb.shape[:2]
        # mask = clip(resize(low, h, w), 0, 1) > threshold, computed only on the block of the frame
        # that can exceed the threshold (bit-identical there; False elsewhere); prob_map on demand
        y0, x0, pb, mb = upsample_block(low, h, w, self.threshold)
        mask = np.zeros((h, w), np.bool_)
        mask[y0:y0 + mb.shape[0], x0:x0 + mb.shape[1]] = mb
        score = float(ndimage.uniform_filter(low, size=3, mode="nearest").max())
        boxes: list[tuple[int, int, int, int, float]] = []
        if mb.any():
            labels, n = _region_labels(low, self.threshold)
            if n:
                ri, ci = _nearest_index(h, low.shape[0]), _nearest_index(w, low.shape[1])
                boxes = _stats_boxes(labels, n, pb, mb, ri[y0:y0 + mb.shape[0]], ci[x0:x0 + mb.shape[1]], y0, x0,
                                     self.min_box_area_frac * h * w)
        return PolypResult(None, mask, score, boxes, s, lazy=(low, h, w))

    def _require_loaded(self) -> None:
        if self._session is None:
            raise ModelError("PolypSegmenter is not loaded: call .load() first")
