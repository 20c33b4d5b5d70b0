"""Readers for recorded biosignals: WFDB records, EDF files and CSV tables.

Every reader returns a :class:`Recording` (physical units, float64, samples x
channels) so replay agents and offline analysis treat all formats alike.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telediag.errors import DataError


@dataclass(frozen=True, slots=True)
class Recording:
    """A multichannel recording in physical units.

    Attributes
    ----------
    signal : ndarray, shape (n_samples, n_channels), float64
    fs : float
        Sample rate in Hz.
    channels, units : tuple of str
    name : str
        Record name (file stem).
    """

    signal: np.ndarray
    fs: float
    channels: tuple[str, ...]
    units: tuple[str, ...]
    name: str

    @property
    def duration_s(self) -> float:
        return self.signal.shape[0] / self.fs

    def select(self, leads: list[int] | None) -> Recording:
        """Keep only the given channel indices (all when ``None``)."""
        if leads is None:
            return self
        n = self.signal.shape[1]
        for i in leads:
            if not -n <= i < n:
                raise DataError(f"lead index {i} out of range: {self.name} has {n} channel(s) {list(self.channels)}")
        return Recording(
            np.ascontiguousarray(self.signal[:, leads]),
            self.fs,
            tuple(self.channels[i] for i in leads),
            tuple(self.units[i] for i in leads),
            self.name,
        )


def read_wfdb(path: str | Path) -> Recording:
    """Read a WFDB record (``path`` without extension, or with ``.hea``/``.dat``)."""
    import wfdb

    p = Path(path)
    if p.suffix in (".hea", ".dat", ".atr"):
        p = p.with_suffix("")
    if not p.with_suffix(".hea").exists():
        raise DataError(f"WFDB record {str(p)!r} not found (no {p.with_suffix('.hea').name})")
    try:
        rec = wfdb.rdrecord(str(p))
    except Exception as e:
        raise DataError(f"cannot read WFDB record {str(p)!r}: {e}") from e
    sig = np.asarray(rec.p_signal, dtype=np.float64)
    if sig.ndim == 1:
        sig = sig[:, None]
    fs = float(rec.fs)
    return Recording(
        np.ascontiguousarray(sig),
        fs,
        tuple(str(c) for c in rec.sig_name),
        tuple(str(u) for u in rec.units),
        p.name,
    )


def read_edf(path: str | Path) -> Recording:
    """Read an EDF/EDF+ file; all signals must share one sample rate."""
    try:
        import pyedflib
    except ImportError as e:  # pragma: no cover - core dependency
        raise DataError("EDF input needs pyedflib: pip install pyedflib") from e
    p = Path(path)
    if not p.exists():
        raise DataError(f"EDF file {str(p)!r} not found")
    try:
        with pyedflib.EdfReader(str(p)) as f:
            n = f.signals_in_file
            rates = [float(f.getSampleFrequency(i)) for i in range(n)]
            if len(set(rates)) != 1:
                raise DataError(f"{p.name}: signals have different sample rates {rates}; pick one rate")
            sig = np.stack([f.readSignal(i) for i in range(n)], axis=1).astype(np.float64)
            labels = tuple(str(lbl) for lbl in f.getSignalLabels())
            units = tuple(str(f.getPhysicalDimension(i)) for i in range(n))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read EDF file {str(p)!r}: {e}") from e
    return Recording(np.ascontiguousarray(sig), rates[0], labels, units, p.stem)


def read_csv(path: str | Path, fs: float | None = None, units: str = "mV") -> Recording:
    """Read a CSV table: a header row of channel names, one row per sample.

    A first column named ``time``/``time_s``/``t`` (seconds) gives the sample rate;
    otherwise ``fs`` is required.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"CSV file {str(p)!r} not found")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration as e:
            raise DataError(f"{p.name}: empty CSV file") from e
        rows = list(reader)
    try:
        data = np.array([[float(v) for v in r] for r in rows if r], dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{p.name}: non-numeric value in CSV body: {e}") from e
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] != len(header):
        raise DataError(f"{p.name}: expected {len(header)} numeric columns in every row and at least 2 rows")
    if header[0].lower() in ("time", "time_s", "t", "seconds"):
        dt = np.diff(data[:, 0])
        if not np.all(dt > 0):
            raise DataError(f"{p.name}: time column must increase")
        fs_t = 1.0 / float(np.median(dt))
        if fs is not None and abs(fs_t - fs) > 0.01 * fs:
            raise DataError(f"{p.name}: --fs {fs} disagrees with the time column ({fs_t:.3f} Hz)")
        fs = fs or fs_t
        header, data = header[1:], data[:, 1:]
    if fs is None or not np.isfinite(fs) or fs <= 0:
        raise DataError(f"{p.name}: no time column, so a positive sample rate (fs) is required; got {fs}")
    return Recording(np.ascontiguousarray(data), float(fs), tuple(header), (units,) * len(header), p.stem)


def read_any(path: str | Path, fs: float | None = None) -> Recording:
    """Read by extension: ``.edf`` -> EDF, ``.csv`` -> CSV, otherwise a WFDB record."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".edf":
        return read_edf(p)
    if ext == ".csv":
        return read_csv(p, fs=fs)
    return read_wfdb(p)
