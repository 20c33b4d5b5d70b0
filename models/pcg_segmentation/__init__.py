"""Trained parameters of the PCG LR-HSMM segmenter (see README.md and train.py)."""

from __future__ import annotations

import json
from pathlib import Path

from telediag.dsp.pcg import PCGSegParams
from telediag.errors import ModelError

__all__ = ["PARAMS_PATH", "load_params"]

PARAMS_PATH = Path(__file__).with_name("params.json")


def load_params(path: str | Path | None = None) -> PCGSegParams:
    """Load segmentation parameters (default: the shipped ``params.json``).

    Raises
    ------
    telediag.errors.ModelError
        Missing or malformed file.

    Examples
    --------
    >>> p = load_params()
    >>> p.weights.shape[0]
    4
    """
    p = Path(path) if path is not None else PARAMS_PATH
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot read PCG segmentation parameters {p}: {e}; re-create them with "
            "`python -m telediag.models.pcg_segmentation.train`"
        ) from e
    try:
        return PCGSegParams.from_dict(d)
    except ValueError as e:
        raise ModelError(f"{p}: {e}") from e
