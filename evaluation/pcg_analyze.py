"""Offline heart-sound analysis of a file: ``analyze_pcg(path) -> dict``.

Reads a WAV file (any rate, 16/24/32-bit PCM, 8-bit unsigned or float, mono or the first
channel) or a WFDB record (``.hea``; the first signal named PCG, else signal 0) and runs
:func:`telediag.dsp.pcg.analyze_signal`.

Example (command line)::

    python -m telediag.evaluation.pcg_analyze ../shared/data/pcg2016/training-a/a0001.wav
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
import wave
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.pcg import PCGSegParams, analyze_signal
from telediag.errors import DataError, DSPError

__all__ = ["analyze_pcg", "read_pcg", "read_wav"]


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


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def analyze_pcg(path: str | Path, params: PCGSegParams | None = None) -> dict[str, Any]:
    """Segment a heart-sound file and summarise it.

    Returns
    -------
    dict
        ``{"segments": [{"start": s, "end": s, "state": "S1"|"systole"|"S2"|"diastole"}, ...],
        "heart_rate_bpm", "systolic_interval_s", "diastolic_interval_s", "quality",
        "duration_s", "fs"}``; times in seconds from the start of the file, unknown values
        ``None`` (JSON null).

    Raises
    ------
    telediag.errors.DataError
        Unreadable file or a sample rate/format the chain cannot process.

    Examples
    --------
    >>> r = analyze_pcg("../shared/data/pcg2016/training-a/a0001.wav")  # doctest: +SKIP
    >>> r["segments"][0]["state"]  # doctest: +SKIP
    'S2'
    """
    x, fs = read_pcg(path)
    try:
        a = analyze_signal(x, fs, params)
    except DSPError as e:
        raise DataError(f"{path}: {e}") from e
    return {
        "segments": [s.to_dict() for s in a.segments],
        "heart_rate_bpm": _num(a.heart_rate_bpm),
        "systolic_interval_s": _num(a.systolic_interval_s),
        "diastolic_interval_s": _num(a.diastolic_interval_s),
        "quality": float(a.quality),
        "duration_s": float(a.duration_s),
        "fs": int(a.fs),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the analysis of each file as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--no-segments", action="store_true", help="omit the segment list")
    args = ap.parse_args(argv)
    for path in args.paths:
        r = analyze_pcg(path)
        if args.no_segments:
            r["n_segments"] = len(r.pop("segments"))
        json.dump({"path": str(path), **r}, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
