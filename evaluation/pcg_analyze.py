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
from pathlib import Path
from typing import Any

from telediag.dsp.pcg import PCGSegParams, analyze_signal
from telediag.errors import DataError, DSPError
from telediag.sources.readers import read_pcg, read_wav

__all__ = ["analyze_pcg", "read_pcg", "read_wav"]  # the readers live in telediag.sources.readers


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
