"""Small helpers to read WFDB records and annotations for evaluation scripts and tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from telediag.errors import DataError

__all__ = ["EcgRecord", "data_dir", "list_records", "read_annotation", "read_record"]


def data_dir(sub: str | None = None) -> Path | None:
    """The shared data directory (``$TELEDIAG_DATA`` or ``../shared/data`` beside the repo).

    Returns ``None`` when it does not exist.

    Examples
    --------
    >>> p = data_dir("mitdb")
    >>> p is None or p.name == "mitdb"
    True
    """
    env = os.environ.get("TELEDIAG_DATA")
    if env:
        base = Path(env)
    else:
        base = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    p = base / sub if sub else base
    return p if p.is_dir() else None


def list_records(directory: str | Path) -> list[str]:
    """Record names (``.hea`` stems with a ``.dat``) in ``directory``, sorted.

    Examples
    --------
    >>> list_records("/nonexistent")
    []
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(h.stem for h in d.glob("*.hea") if (d / f"{h.stem}.dat").exists())


@dataclass(frozen=True, slots=True)
class EcgRecord:
    """One lead of a WFDB record in physical units.

    Attributes
    ----------
    name : str
    signal : numpy.ndarray
        float64 samples (physical units, usually mV; NaN where the ADC value is invalid).
    fs : float
    lead : str
    """

    name: str
    signal: NDArray[np.float64]
    fs: float
    lead: str


def read_record(path: str | Path, channel: int = 0) -> EcgRecord:
    """Read one channel of a WFDB record (``path`` without extension).

    Raises
    ------
    telediag.errors.DataError
        The record cannot be read or has no such channel.
    """
    import wfdb

    p = Path(path)
    try:
        rec = wfdb.rdrecord(str(p), channels=[channel])
    except Exception as e:
        raise DataError(f"cannot read WFDB record {p} channel {channel}: {e}") from e
    if rec.p_signal is None:
        raise DataError(f"record {p} has no physical signal")
    sig = np.ascontiguousarray(rec.p_signal[:, 0], dtype=np.float64)
    return EcgRecord(p.name, sig, float(rec.fs), str(rec.sig_name[0]))


def read_annotation(path: str | Path, extension: str = "atr"):  # type: ignore[no-untyped-def]
    """Read a WFDB annotation file (returns ``wfdb.Annotation``).

    Raises
    ------
    telediag.errors.DataError
        The file cannot be read.
    """
    import wfdb

    try:
        return wfdb.rdann(str(path), extension)
    except Exception as e:
        raise DataError(f"cannot read annotation {path}.{extension}: {e}") from e
