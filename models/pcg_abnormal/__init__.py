"""Heart-sound (PCG) abnormality classifier: normal vs abnormal for a whole recording.

Runtime: NumPy/SciPy features (:mod:`telediag.models.pcg_abnormal.features`, built on the
:mod:`telediag.dsp.pcg` segmenter) and per-cycle log spectrograms
(:mod:`telediag.models.pcg_abnormal.cnn_spec`), two ONNX Runtime models (a logistic regression
on the features, ``pcg_abnormal.onnx``, and a small per-cycle CNN, ``pcg_abnormal_cnn.onnx``,
combined as ``card_cnn.json`` says); torch is needed only to train (``train.py``,
``cnn_train.py``).  Model card: ``card.json`` / ``card_cnn.json`` / ``README.md`` beside this
file.

Examples
--------
>>> import numpy as np
>>> clf = PCGClassifier().load()
>>> rng = np.random.default_rng(0)
>>> p, label = clf.predict(rng.standard_normal(20_000), 2000)
>>> 0.0 <= p <= 1.0 and label in ("normal", "abnormal", "uncertain")
True
>>> label  # noise: no heart cycles, so no decision
'uncertain'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from telediag.dsp.pcg import analyze_signal
from telediag.errors import ModelError
from telediag.models.pcg_abnormal.cnn_spec import cycle_log_power, normalise_recording
from telediag.models.pcg_abnormal.features import (
    FEATURE_FS,
    FEATURE_NAMES,
    MIN_DURATION_S,
    N_FEATURES,
    _prepare,
    recording_features,
)

__all__ = [
    "CARD_PATH",
    "CLASSES",
    "CNN_CARD_PATH",
    "CNN_PATH",
    "FEATURE_FS",
    "LABELS",
    "MIN_DURATION_S",
    "MODEL_PATH",
    "PCGClassifier",
]

MODEL_PATH = Path(__file__).with_name("pcg_abnormal.onnx")
CARD_PATH = Path(__file__).with_name("card.json")
CNN_PATH = Path(__file__).with_name("pcg_abnormal_cnn.onnx")
CNN_CARD_PATH = Path(__file__).with_name("card_cnn.json")
CLASSES = ("normal", "abnormal")
LABELS = (*CLASSES, "uncertain")
"""What :meth:`PCGClassifier.predict` may answer: ``"uncertain"`` is no decision (too few
heart cycles segmented, or a poor signal: see :attr:`PCGClassifier.min_quality`)."""
DEFAULT_MIN_QUALITY = 0.2
DEFAULT_MIN_CYCLES = 3


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PCGClassifier:
    """Normal / abnormal heart-sound classifier (PhysioNet/CinC 2016 trained ONNX model).

    Parameters
    ----------
    model_path, card_path : path, optional
        The ``.onnx`` file and its model card (default: the shipped ones).
    verify : bool
        Check the model file's sha256 against the card on :meth:`load` (default True).

    Notes
    -----
    The input is a whole recording (at least :data:`MIN_DURATION_S` s; the training records
    were 5-120 s) at any sample rate >= 800 Hz; it is resampled to 1000 Hz.  Silent,
    too-short, non-finite or multi-channel input raises :class:`telediag.errors.DSPError`.
    A recording in which the segmenter finds fewer than two complete heart cycles still gets
    a probability (cycle features are imputed with training medians) but it is unreliable;
    :meth:`predict_details` reports the cycle count and the segmenter's quality index so a
    caller can flag it.

    Examples
    --------
    >>> clf = PCGClassifier().load()
    >>> clf.threshold == clf.card["threshold"]
    True
    """

    def __init__(self, model_path: str | Path | None = None,
                 card_path: str | Path | None = None, verify: bool = True,
                 cnn_card_path: str | Path | None = None) -> None:
        self.model_path = Path(model_path) if model_path is not None else MODEL_PATH
        self.card_path = Path(card_path) if card_path is not None else CARD_PATH
        self.cnn_card_path = Path(cnn_card_path) if cnn_card_path is not None else CNN_CARD_PATH
        self.verify = verify
        self.card: dict[str, Any] = {}
        self.cnn_card: dict[str, Any] = {}
        self._cnn: Any = None
        self.threshold = 0.5
        self.min_quality = DEFAULT_MIN_QUALITY
        self.min_cycles = DEFAULT_MIN_CYCLES
        self._sess: Any = None

    def load(self) -> PCGClassifier:
        """Read the card and open an ONNX Runtime session; returns ``self``.

        Raises
        ------
        telediag.errors.ModelError
            Missing/unreadable file, sha256 mismatch, or an input contract that does not
            match the feature extractor.
        """
        try:
            self.card = json.loads(self.card_path.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read model card {self.card_path}: {e}") from e
        if not self.model_path.is_file():
            raise ModelError(
                f"model file {self.model_path} not found; re-create it with "
                "`python -m telediag.models.pcg_abnormal.train`"
            )
        if self.verify:
            sha = _sha256(self.model_path)
            if sha != self.card.get("sha256"):
                raise ModelError(
                    f"sha256 of {self.model_path.name} must be {self.card.get('sha256')} "
                    f"(card), got {sha}"
                )
        names = self.card.get("inputs", {}).get("feature_names")
        if names != list(FEATURE_NAMES):
            raise ModelError(
                f"model card expects {len(names or [])} features that differ from the "
                f"extractor's {N_FEATURES}; retrain the model"
            )
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            self._sess = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                              providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {self.model_path}: {e}") from e
        self.threshold = float(self.card["threshold"])
        self._load_cnn(ort)
        unc = self.card.get("uncertain", {})
        self.min_quality = float(unc.get("min_quality", DEFAULT_MIN_QUALITY))
        self.min_cycles = int(unc.get("min_cycles", DEFAULT_MIN_CYCLES))
        return self

    def _load_cnn(self, ort: Any) -> None:
        """Open the per-cycle CNN named by ``card_cnn.json`` (absent card: features only)."""
        self.cnn_card, self._cnn = {}, None
        if not self.cnn_card_path.is_file():
            return
        try:
            card = json.loads(self.cnn_card_path.read_text())
            path = self.cnn_card_path.with_name(card["file"])
            comb = card["combine"]
            w_cnn, w_lr, slope = (float(comb[k]) for k in ("w_cnn", "w_features", "slope"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"cannot read CNN model card {self.cnn_card_path}: {e}") from e
        if not path.is_file():
            raise ModelError(f"CNN model file {path} (named by {self.cnn_card_path.name}) "
                             "not found")
        if self.verify and _sha256(path) != card.get("sha256"):
            raise ModelError(f"sha256 of {path.name} must be {card.get('sha256')} (card), "
                             f"got {_sha256(path)}")
        from telediag.models.pcg_abnormal.cnn_spec import N_BANDS, N_FRAMES

        if card.get("inputs", {}).get("shape") != ["N", N_BANDS, N_FRAMES]:
            raise ModelError(f"CNN card input shape must be ['N', {N_BANDS}, {N_FRAMES}], got "
                             f"{card.get('inputs', {}).get('shape')}; retrain the CNN")
        from telediag.models.pcg_abnormal.cnn_spec import NORMALISATIONS

        if card.get("inputs", {}).get("normalisation", "median") not in NORMALISATIONS:
            raise ModelError(f"CNN card inputs.normalisation must be one of {NORMALISATIONS}, "
                             f"got {card.get('inputs', {}).get('normalisation')!r}")
        if not all(np.isfinite([w_cnn, w_lr, slope])):
            raise ModelError("CNN card combine weights must be finite")
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            self._cnn = ort.InferenceSession(str(path), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path}: {e}") from e
        self.cnn_card = card

    def cycle_logits(self, cycles: ArrayLike) -> NDArray[np.float32]:
        """CNN logit of each normalised cycle image ``(n, N_BANDS, N_FRAMES)`` -> ``(n,)``.

        Raises
        ------
        telediag.errors.ModelError
            No CNN loaded, or a wrong input shape.
        """
        if self._sess is None:
            self.load()
        if self._cnn is None:
            raise ModelError("no per-cycle CNN loaded (card_cnn.json absent)")
        from telediag.models.pcg_abnormal.cnn_spec import N_BANDS, N_FRAMES

        c = np.ascontiguousarray(np.asarray(cycles, dtype=np.float32))
        if c.ndim != 3 or c.shape[1:] != (N_BANDS, N_FRAMES):
            raise ModelError(f"cycles must have shape (n, {N_BANDS}, {N_FRAMES}), got {c.shape}")
        if c.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._cnn.run(None, {"cycles": c})[0][:, 0], dtype=np.float32)

    def features(self, audio: ArrayLike, fs: int) -> NDArray[np.float32]:
        """Feature vector (length :data:`N_FEATURES`) of one recording.

        Examples
        --------
        >>> import numpy as np
        >>> f = PCGClassifier().features(np.random.default_rng(1).standard_normal(9000), 3000)
        >>> f.shape == (N_FEATURES,)
        True
        """
        return recording_features(audio, fs)

    def predict_features(self, feats: ArrayLike) -> NDArray[np.float32]:
        """Abnormal probabilities of a batch of feature vectors, shape (N, N_FEATURES) -> (N,).

        Examples
        --------
        >>> import numpy as np
        >>> clf = PCGClassifier().load()
        >>> clf.predict_features(np.full((2, N_FEATURES), np.nan, dtype=np.float32)).shape
        (2,)
        """
        if self._sess is None:
            self.load()
        f = np.ascontiguousarray(np.asarray(feats, dtype=np.float32))
        if f.ndim == 1:
            f = f[None, :]
        if f.ndim != 2 or f.shape[1] != N_FEATURES:
            raise ModelError(f"features must have shape (N, {N_FEATURES}), got {f.shape}")
        return np.asarray(self._sess.run(None, {"features": f})[0], dtype=np.float32)

    def predict(self, audio: ArrayLike, fs: int) -> tuple[float, str]:
        """``(abnormal_prob, label)`` of one recording.

        ``label`` is ``"abnormal"`` when ``abnormal_prob >= threshold``, else ``"normal"``, or
        ``"uncertain"`` (no decision) when fewer than :attr:`min_cycles` complete heart cycles
        were segmented or the segmenter's quality index is below :attr:`min_quality`;
        ``abnormal_prob`` is still returned then, but it is not a decision.

        Raises
        ------
        telediag.errors.DSPError
            Silent, too short (< :data:`MIN_DURATION_S` s), non-finite or not 1-D input, or a
            bad sample rate.

        Examples
        --------
        >>> import numpy as np
        >>> p, lab = PCGClassifier().predict(np.random.default_rng(2).standard_normal(8000), 2000)
        >>> lab in LABELS
        True
        """
        d = self.predict_details(audio, fs)
        return d["abnormal_prob"], d["label"]

    def predict_details(self, audio: ArrayLike, fs: int) -> dict[str, Any]:
        """:meth:`predict` plus reliability hints.

        Returns ``{"abnormal_prob", "p_features", "p_cnn", "label", "threshold", "n_cycles",
        "quality", "low_confidence"}`` (``p_features``: the feature model alone; ``p_cnn``: the
        per-cycle CNN alone, uncalibrated, None without a CNN or a complete cycle;
        ``abnormal_prob`` combines them as the CNN card says); ``low_confidence`` is True when fewer than :attr:`min_cycles`
        complete cycles were segmented or the segmenter's quality index is below
        :attr:`min_quality` (default 3 and 0.2); ``label`` is then ``"uncertain"``.

        Examples
        --------
        >>> import numpy as np
        >>> d = PCGClassifier().predict_details(np.random.default_rng(3).standard_normal(8000),
        ...                                     2000)
        >>> sorted(d)[:3]
        ['abnormal_prob', 'label', 'low_confidence']
        """
        if self._sess is None:
            self.load()
        x, _, fs_i = _prepare(audio, fs)
        ana = analyze_signal(x, fs_i)
        f = recording_features(x, fs_i, analysis=ana)
        p = p_features = float(self.predict_features(f)[0])
        p_cnn = None
        if self._cnn is not None:
            cyc, _ = cycle_log_power(x, fs_i, segments=list(ana.segments))
            if cyc.shape[0] > 0:
                norm = str(self.cnn_card["inputs"].get("normalisation", "median"))
                z_cnn = float(np.mean(self.cycle_logits(normalise_recording(cyc, norm))))
                p_cnn = float(1.0 / (1.0 + np.exp(-z_cnn)))
                comb = self.cnn_card["combine"]
                q_f = min(max(p_features, 1e-6), 1.0 - 1e-6)
                z = float(comb["slope"]) * (float(comb["w_cnn"]) * z_cnn
                                            + float(comb["w_features"])
                                            * float(np.log(q_f / (1.0 - q_f))))
                p = float(1.0 / (1.0 + np.exp(-z)))
        n_cyc = int(round(float(np.expm1(f[FEATURE_NAMES.index("r_log_ncycles")]))))
        q = float(f[FEATURE_NAMES.index("r_quality")])
        low = bool(n_cyc < self.min_cycles or not q >= self.min_quality)
        return {
            "abnormal_prob": p,
            "p_features": p_features,
            "p_cnn": p_cnn,
            "label": "uncertain" if low else CLASSES[int(p >= self.threshold)],
            "threshold": self.threshold,
            "n_cycles": n_cyc,
            "quality": q,
            "low_confidence": low,
        }
