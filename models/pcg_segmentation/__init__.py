"""Trained parameters of the PCG LR-HSMM segmenter (see README.md and train.py).

The parameter file and its loader live in :mod:`telediag.dsp.pcg` (``pcg_seg_params.json``), next
to the algorithm that uses them, so that the dsp layer never imports this package; the names are
re-exported here for the training script and older imports.
"""

from __future__ import annotations

from telediag.dsp.pcg import PARAMS_PATH, load_params

__all__ = ["PARAMS_PATH", "load_params"]
