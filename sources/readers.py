"""Readers for recorded biosignals: WFDB records, EDF files, CSV tables and PCG audio (WAV/WFDB).

Every reader returns a :class:`Recording` (physical units, float64, samples x
channels) so replay agents and offline analysis treat all formats alike.
"""

from __future__ import annotations

import csv
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

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


# --------------------------------------------------------------------------------------
# PCG audio (moved here from telediag.evaluation.pcg_analyze: sources and the API read it)
# --------------------------------------------------------------------------------------
def read_wav(path: str | Path) -> tuple[NDArray[np.float64], int]:
    """Read the first channel of a WAV file as float64 in [-1, 1] and its sample rate.

    Supports PCM 8 (unsigned), 16, 24 and 32-bit integers and IEEE float (32/64-bit).

    Raises
    ------
    telediag.errors.DataError
        Missing, unreadable or unsupported file.

    Examples
    --------
    >>> x, fs = read_wav("../shared/data/pcg2016/training-a/a0001.wav")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"WAV file not found: {p}")
    try:
        with wave.open(str(p), "rb") as w:
            n_ch, width, fs, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
        return _decode_pcm(raw, n_ch, width, fs, p)
    except wave.Error:
        pass  # not PCM (e.g. IEEE float, WAVE_FORMAT_EXTENSIBLE float): try SciPy
    except EOFError as e:
        raise DataError(f"{p}: truncated WAV file") from e
    try:
        from scipy.io import wavfile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            fs, data = wavfile.read(str(p))
    except Exception as e:  # scipy raises ValueError/OSError variants
        raise DataError(f"{p}: not a readable WAV file ({e})") from e
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[:, 0]
    if arr.dtype.kind == "f":
        x = arr.astype(np.float64)
    elif arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        x = arr.astype(np.float64)
        if arr.dtype.kind == "u":
            x = (x - (info.max + 1) / 2) / ((info.max + 1) / 2)
        else:
            x = x / float(-int(info.min))
    else:
        raise DataError(f"{p}: unsupported WAV sample type {arr.dtype}")
    return np.ascontiguousarray(x), int(fs)


def _decode_pcm(
    raw: bytes, n_ch: int, width: int, fs: int, p: Path
) -> tuple[NDArray[np.float64], int]:
    if n_ch < 1 or fs <= 0:
        raise DataError(f"{p}: invalid WAV header (channels={n_ch}, rate={fs})")
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8)
        b = b[: b.size - b.size % 3].reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float64) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0
    else:
        raise DataError(f"{p}: unsupported WAV sample width {width} bytes (expected 1-4)")
    n = x.size // n_ch
    x = x[: n * n_ch].reshape(n, n_ch)[:, 0]
    return np.ascontiguousarray(x), int(fs)


def read_pcg(path: str | Path) -> tuple[NDArray[np.float64], int]:
    """Read a PCG recording from a WAV file or a WFDB record (``.hea``/``.dat`` or stem).

    Raises
    ------
    telediag.errors.DataError
        Missing or unreadable file.
    """
    p = Path(path)
    if p.suffix.lower() == ".wav":
        return read_wav(p)
    stem = p.with_suffix("") if p.suffix.lower() in (".hea", ".dat") else p
    hea = stem.with_suffix(".hea")
    if not hea.is_file():
        if stem.with_suffix(".wav").is_file():
            return read_wav(stem.with_suffix(".wav"))
        raise DataError(f"no WAV file or WFDB header found for {path}")
    try:
        import wfdb

        rec = wfdb.rdrecord(str(stem))
    except Exception as e:
        raise DataError(f"{hea}: unreadable WFDB record ({e})") from e
    names = [str(n).upper() for n in (rec.sig_name or [])]
    idx = names.index("PCG") if "PCG" in names else 0
    if rec.p_signal is None:
        raise DataError(f"{hea}: record has no physical signal")
    x = np.ascontiguousarray(np.asarray(rec.p_signal)[:, idx], dtype=np.float64)
    x = np.nan_to_num(x)
    return x, int(round(float(rec.fs)))
