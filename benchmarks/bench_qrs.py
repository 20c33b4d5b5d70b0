"""QRS detector throughput: telediag vs sleepecg, NeuroKit2, wfdb XQRS and Pan-Tompkins.

All detectors run on the same signal (MIT-BIH 208 and 119, lead 0, first 10 minutes each;
a seeded synthetic ECG when the data are absent) in this process, one core.  Numba is warmed
before timing.  Peers are benchmark-only dependencies (``pip install sleepecg neurokit2
py-ecg-detectors``); a missing peer is skipped.  Accuracy is in ``qrs_accuracy.py``.

Run: ``pytest benchmarks/bench_qrs.py`` (smoke: ``--benchmark-disable``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from telediag.dsp.qrs import QRSDetector, detect

SECONDS = 600.0


def _signal() -> tuple[np.ndarray, float]:
    env = os.environ.get("TELEDIAG_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    mit = base / "mitdb"
    if (mit / "208.dat").exists() and (mit / "119.dat").exists():
        from telediag.evaluation.wfdb_io import read_record

        parts = []
        fs = 360.0
        for rec in ("208", "119"):
            r = read_record(mit / rec)
            fs = r.fs
            parts.append(r.signal[: int(SECONDS * fs)])
        return np.concatenate(parts), fs
    fs = 360.0
    rng = np.random.default_rng(0)
    t = np.arange(int(2 * SECONDS * fs)) / fs
    beats = np.cumsum(0.8 + 0.1 * rng.standard_normal(int(2 * SECONDS / 0.8)))
    x = np.zeros_like(t)
    for b in beats[beats < t[-1]]:
        i = int(b * fs)
        lo, hi = max(0, i - 20), min(t.size, i + 20)
        x[lo:hi] += np.exp(-0.5 * ((t[lo:hi] - b) / 0.01) ** 2)
    return x + 0.02 * rng.standard_normal(t.size), fs


@pytest.fixture(scope="module")
def ecg() -> tuple[np.ndarray, float]:
    return _signal()


def _run(benchmark, fn: Callable[[], np.ndarray], rounds: int = 5) -> np.ndarray:  # type: ignore[no-untyped-def]
    fn()  # warm-up (Numba compile / caches)
    out = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    return np.asarray(out)


def test_telediag_offline(benchmark, ecg) -> None:  # type: ignore[no-untyped-def]
    x, fs = ecg
    beats = _run(benchmark, lambda: detect(x, fs), rounds=20)
    assert beats.size > 0.5 * x.size / fs


def test_telediag_streaming_1s_chunks(benchmark, ecg) -> None:  # type: ignore[no-untyped-def]
    x, fs = ecg
    step = int(fs)

    def run() -> np.ndarray:
        det = QRSDetector(fs)
        out = [det.process(x[i : i + step]) for i in range(0, x.size, step)]
        out.append(det.flush())
        return np.concatenate(out)

    beats = _run(benchmark, run, rounds=10)
    np.testing.assert_array_equal(beats, detect(x, fs))


def test_sleepecg(benchmark, ecg) -> None:  # type: ignore[no-untyped-def]
    sleepecg = pytest.importorskip("sleepecg")
    x, fs = ecg
    beats = _run(benchmark, lambda: sleepecg.detect_heartbeats(x, fs), rounds=20)
    assert beats.size > 0.5 * x.size / fs


def test_neurokit2(benchmark, ecg) -> None:  # type: ignore[no-untyped-def]
    nk = pytest.importorskip("neurokit2")
    x, fs = ecg

    def run() -> np.ndarray:
        _, info = nk.ecg_peaks(x, sampling_rate=int(fs))
        return np.asarray(info["ECG_R_Peaks"])

    beats = _run(benchmark, run, rounds=3)
    assert beats.size > 0.5 * x.size / fs


def test_xqrs(benchmark, ecg) -> None:  # type: ignore[no-untyped-def]
    processing = pytest.importorskip("wfdb.processing")
    x, fs = ecg
    beats = _run(benchmark, lambda: processing.xqrs_detect(x, fs=fs, verbose=False), rounds=1)
    assert beats.size > 0.5 * x.size / fs


def test_pan_tompkins(benchmark, ecg) -> None:  # type: ignore[no-untyped-def]
    ecgdetectors = pytest.importorskip("ecgdetectors")
    x, fs = ecg
    det = ecgdetectors.Detectors(fs)
    beats = _run(benchmark, lambda: det.pan_tompkins_detector(x), rounds=1)
    assert beats.size > 0.5 * x.size / fs
