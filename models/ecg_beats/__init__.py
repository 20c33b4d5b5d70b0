"""ECG beat classifier: AAMI EC57 classes N, S, V, F, Q from one lead (see README.md).

Version 2: gradient-boosted trees (ONNX ``TreeEnsembleClassifier``) on per-patient
normalised RR, RR-context and beat-versus-template features, trained on MIT-BIH DS1 and the
MIT-BIH Supraventricular Arrhythmia Database (360 and 128 Hz, two leads per patient).
The feature builder also takes two leads (``(n, 2)``: the detection lead first); the model
reads the detection lead's features only, so :meth:`BeatClassifier.classify` ignores the
extra morphology channels.

Offline use::

    clf = BeatClassifier.load()                      # or variant="int8"
    beats = telediag.dsp.qrs.detect(mlii, fs)
    feats = clf.features(mlii, fs, beats)            # one row per beat
    labels, probs = clf.classify(feats)              # labels index AAMI_CLASSES

Streaming use (an engine stage): keep one :class:`BeatFeatureStream` per stream and pass it
as ``rr_state``; each call returns the beats that became classifiable.  A beat needs the
RRs of the :data:`~telediag.models.ecg_beats.features.LOOKAHEAD_BEATS` (2) beats after it
(its RR context), so it is classified about two RR intervals (plus the detector's
confirmation delay) after its R peak; :meth:`BeatFeatureStream.finish` emits the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from telediag.errors import ModelError
from telediag.models.ecg_beats.features import (
    AAMI_CLASSES,
    BeatFeatures,
    BeatFeatureStream,
    beat_features,
)
from telediag.models.runtime import OnnxModel, load_card

__all__ = [
    "AAMI_CLASSES",
    "CARD_PATH",
    "MODEL_DIR",
    "BeatClassifier",
    "BeatFeatureStream",
    "BeatFeatures",
    "beat_features",
]

MODEL_DIR = Path(__file__).resolve().parent
CARD_PATH = MODEL_DIR / "card.json"


class BeatClassifier:
    """The shipped ONNX beat classifier with its feature builder.

    Parameters
    ----------
    model : OnnxModel
        A loaded model with inputs ``morph`` and ``rr`` and output ``probs``.

    Examples
    --------
    >>> import numpy as np
    >>> clf = BeatClassifier.load()
    >>> fs = 360.0
    >>> t = np.arange(int(8 * fs)) / fs
    >>> ecg = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.012 ** 2))
    >>> beats = np.round((np.arange(10) * 0.8 + 0.4) * fs).astype(np.int64)
    >>> labels, probs = clf.classify(clf.features(ecg, fs, beats))
    >>> probs.shape
    (10, 5)
    """

    def __init__(self, model: OnnxModel) -> None:
        names = [s.name for s in model.inputs]
        if names != ["morph", "rr"] or "probs" not in model.output_names:
            raise ModelError(
                f"a beat classifier needs inputs ['morph', 'rr'] and output 'probs', got "
                f"{names} -> {list(model.output_names)}"
            )
        self.model = model
        shape = model.inputs[0].shape
        self.morph_channels = int(shape[1]) if len(shape) == 3 and shape[1] else 2

    @classmethod
    def load(
        cls,
        variant: Literal["fp32", "int8"] = "fp32",
        *,
        directory: str | Path | None = None,
        intra_op_threads: int = 1,
    ) -> BeatClassifier:
        """Load the shipped model (``variant`` ``"fp32"`` or ``"int8"``), checked against its card.

        Trees have no quantised form: since 2.0.0 ``"int8"`` names the same file as ``"fp32"``.

        Raises
        ------
        telediag.errors.ModelError
            Unknown variant, missing file or card, or a SHA-256 / contract mismatch.
        """
        d = Path(directory) if directory is not None else MODEL_DIR
        card = load_card(d / "card.json")
        variants = card.get("variants") or {}
        if variant not in variants:
            raise ModelError(
                f"variant must be one of {sorted(variants)}, got {variant!r}"
            )
        return cls(
            OnnxModel(
                d / str(variants[variant]["file"]),
                card=card,
                intra_op_threads=intra_op_threads,
            )
        )

    @staticmethod
    def stream(fs: float) -> BeatFeatureStream:
        """A new streaming feature builder for one stream (pass it as ``rr_state``)."""
        return BeatFeatureStream(fs)

    @staticmethod
    def features(
        signal: ArrayLike,
        fs: float,
        beats: ArrayLike,
        rr_state: BeatFeatureStream | None = None,
    ) -> BeatFeatures:
        """Model inputs for beats of one lead (MLII or the closest limb lead, mV), or two
        (shape ``(n, 2)``, that lead first; the second adds morphology channels 2-3).

        Without ``rr_state`` the whole record is processed (every beat is returned). With a
        :class:`BeatFeatureStream`, ``signal`` is the next chunk and ``beats`` the beats newly
        detected (absolute sample indices); only the beats that became classifiable are
        returned, the others wait in the state.
        """
        if rr_state is None:
            return beat_features(signal, fs, beats)
        if rr_state.fs != float(fs):
            raise ModelError(f"rr_state was built for fs = {rr_state.fs:g} Hz, got fs = {fs!r}")
        return rr_state.push(signal, beats)

    def classify(self, features: BeatFeatures) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Class indices (into :data:`AAMI_CLASSES`) and probabilities, shape (n, 5).

        Morphology channels beyond the model's (a second lead for a one-lead model) are
        ignored; fewer than the model's raise :class:`~telediag.errors.ModelError`.
        """
        if len(features) == 0:
            return np.empty(0, np.int64), np.empty((0, len(AAMI_CLASSES)), np.float32)
        inputs = features.inputs()
        n_ch = inputs["morph"].shape[1] if inputs["morph"].ndim == 3 else -1
        if n_ch < self.morph_channels:
            raise ModelError(
                f"morph must have {self.morph_channels} channels (or more), got shape "
                f"{inputs['morph'].shape}"
            )
        if n_ch > self.morph_channels:
            inputs["morph"] = np.ascontiguousarray(inputs["morph"][:, : self.morph_channels])
        probs: Any = self.model.run(inputs)["probs"]
        return np.asarray(probs.argmax(axis=1), np.int64), np.asarray(probs, np.float32)
