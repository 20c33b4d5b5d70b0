"""Real-time polyp segmentation for endoscopy frames (ONNX Runtime, CPU).

A compact residual U-Net trained on Kvasir-SEG (Jha et al., MMM 2020; research and educational
use only, see ``README.md``) maps an RGB frame, resized to 256x256, to a polyp probability map.
:class:`PolypSegmenter` wraps the exported ``polyp_seg.onnx``: it validates the frame, resizes it
(anti-aliased bilinear, the same resampling the training cache used), runs the network, resizes
the probability map back to the frame size, thresholds it and boxes its connected components.
The runtime needs NumPy, SciPy and ONNX Runtime only; training (``train.py``) needs torch.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from telediag.errors import ModelError
from telediag.models.polyp_seg._resize import resize

__all__ = ["CARD_PATH", "MODEL_PATH", "PolypResult", "PolypSegmenter"]

MODEL_PATH = Path(__file__).with_name("polyp_seg.onnx")
CARD_PATH = Path(__file__).with_name("card.json")
MIN_SIDE = 16  # smallest frame side accepted
TTA_MODES = ("none", "h", "hv")  # test-time flips averaged: none, horizontal, horizontal+vertical


@dataclass(frozen=True, slots=True)
class PolypResult:
    """Segmentation of one frame.

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
        One box per connected component of ``mask`` of at least ``min_box_area_frac`` of the
        frame, in pixels (x1, y1 exclusive), score = the component's peak probability; sorted
        by score, highest first.
    """

    prob_map: NDArray[np.float32]
    mask: NDArray[np.bool_]
    polyp_probability: float
    boxes: list[tuple[int, int, int, int, float]] = field(default_factory=list)


class PolypSegmenter:
    """ONNX Runtime polyp segmenter.

    Parameters
    ----------
    model_path, card_path : path, optional
        The ONNX file and its model card (default: the shipped ``polyp_seg.onnx``/``card.json``).
        :meth:`load` checks the file's sha256 against the card.
    threads : int
        ONNX Runtime intra-op threads (1 keeps one core for everything else).
    threshold : float, optional
        Probability above which a pixel belongs to the mask. Default: the card's
        ``postprocess.threshold`` (chosen on the validation split), else 0.5.
    tta : {"none", "h", "hv"}, optional
        Test-time augmentation: average the probability maps of the frame and its horizontal
        flip (``"h"``, one batch of 2 through the network, about +6 ms on one core) or of the
        frame, its horizontal and its vertical flip (``"hv"``, batch of 3). Default: the card's
        ``postprocess.tta``, else ``"none"``.
    min_box_area_frac : float
        Components smaller than this fraction of the frame get no box (they stay in the mask).

    Examples
    --------
    >>> seg = PolypSegmenter(threads=1).load()
    >>> seg.input_size
    256
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        card_path: str | Path | None = None,
        *,
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
        self.model_path = Path(model_path) if model_path is not None else MODEL_PATH
        self.card_path = Path(card_path) if card_path is not None else CARD_PATH
        self.threads = threads
        self._threshold_arg, self._tta_arg = threshold, tta
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.tta = "none" if tta is None else tta
        self.min_box_area_frac = float(min_box_area_frac)
        self.card: dict[str, Any] = {}
        self.input_size = 0
        self._session: Any = None
        self._input_name = ""

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> PolypSegmenter:
        """Read the card, verify the model's sha256, and open the ONNX Runtime session.

        Raises
        ------
        telediag.errors.ModelError
            Missing/unreadable files, a checksum mismatch or an unexpected model signature.
        """
        try:
            self.card = json.loads(self.card_path.read_text())
            blob = self.model_path.read_bytes()
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot read polyp model {self.model_path} / card {self.card_path}: {e}; "
                "re-create them with `python -m telediag.models.polyp_seg.train`"
            ) from e
        want = str(self.card.get("sha256", ""))
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
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot open {self.model_path} with onnxruntime: {e}") from e
        inp = sess.get_inputs()[0]
        shape = list(inp.shape)
        size = int(self.card.get("input", {}).get("size", 0))
        if len(shape) != 4 or shape[1] != 3 or shape[2] != size or shape[3] != size:
            raise ModelError(
                f"model input must be (batch, 3, {size}, {size}) as the card says, got {shape}"
            )
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

    def preprocess(self, rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Frame ``(H, W, 3)`` uint8 RGB -> network input ``(1, 3, S, S)`` float32, 0-255.

        Anti-aliased bilinear resize to ``S = input_size`` (aspect ratio not kept, as in
        training); normalisation happens inside the ONNX graph.

        Examples
        --------
        >>> seg = PolypSegmenter().load()
        >>> seg.preprocess(np.zeros((480, 640, 3), np.uint8)).shape
        (1, 3, 256, 256)
        """
        self._require_loaded()
        x = self._check_frame(rgb)
        s = self.input_size
        return np.ascontiguousarray(resize(x, s, s).transpose(2, 0, 1))[None]

    def predict_batch_prob(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run the network on preprocessed inputs ``(N, 3, S, S)`` -> ``(N, S/2, S/2)`` probs."""
        self._require_loaded()
        s = self.input_size
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ModelError(
                f"batch must be float32 (N, 3, {s}, {s}), got {batch.dtype} {batch.shape}"
            )
        out = self._session.run(None, {self._input_name: batch})[0]
        return np.asarray(out[:, 0], dtype=np.float32)

    def network_prob(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """One preprocessed frame ``(1, 3, S, S)`` -> ``(S/2, S/2)`` probability, with TTA.

        With ``tta="h"`` (``"hv"``) the frame and its flip(s) run as one batch and the
        un-flipped maps are averaged (flip test-time augmentation, as in e.g. HarDNet-MSEG's
        and PraNet's evaluation code); with ``"none"`` this is :meth:`predict_batch_prob`.

        Examples
        --------
        >>> seg = PolypSegmenter(tta="h").load()
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

    def predict(self, rgb: NDArray[np.uint8]) -> PolypResult:
        """Segment one RGB frame.

        Parameters
        ----------
        rgb : ndarray, uint8, shape (H, W, 3)
            The frame in RGB order (convert from BGR first if it comes from OpenCV).

        Raises
        ------
        telediag.errors.ModelError
            Not loaded, or a frame of the wrong type, dtype or shape.

        Examples
        --------
        >>> seg = PolypSegmenter().load()
        >>> seg.predict(np.zeros((720, 1280, 3), np.uint8)).mask.shape
        (720, 1280)
        """
        x = self.preprocess(rgb)
        low = self.network_prob(x)
        h, w = rgb.shape[:2]
        prob = np.clip(resize(low, h, w), 0.0, 1.0)
        mask = prob > self.threshold
        score = float(ndimage.uniform_filter(low, size=3, mode="nearest").max())
        return PolypResult(prob, mask, score, self._boxes(prob, mask))

    def _boxes(
        self, prob: NDArray[np.float32], mask: NDArray[np.bool_]
    ) -> list[tuple[int, int, int, int, float]]:
        if not mask.any():
            return []
        labels, _ = ndimage.label(mask)
        min_area = self.min_box_area_frac * mask.size
        boxes = []
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            ys, xs = sl
            if (ys.stop - ys.start) * (xs.stop - xs.start) < min_area:
                continue  # the box bounds the component's area
            inside = labels[sl] == i
            if np.count_nonzero(inside) < min_area:
                continue
            peak = float(prob[sl][inside].max())
            boxes.append((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop), peak))
        boxes.sort(key=lambda b: -b[4])
        return boxes

    def _require_loaded(self) -> None:
        if self._session is None:
            raise ModelError("PolypSegmenter is not loaded: call .load() first")
