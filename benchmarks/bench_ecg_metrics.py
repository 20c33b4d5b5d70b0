"""Benchmark: heart-rate meter, rolling HRV and signal quality against plain NumPy/SciPy peers.

Each group times telediag's streaming kernel and a straightforward NumPy/SciPy computation of
the same quantity on the same seeded input, in the same run (Numba is warmed first):

* ``hr``: 2,400 beats (about 30 min) through :class:`HeartRateMeter` vs a NumPy sliding
  median of the last 8 RR intervals;
* ``hrv``: 5-min rolling SDNN/RMSSD over 2,400 beats vs a per-beat NumPy window;
* ``quality``: 10 min of 2-lead ECG at 360 Hz in 1-s chunks through :class:`SignalQuality`
  vs SciPy ``sosfilt`` + ``scipy.stats.kurtosis`` on 8-s windows at a 1-s hop.

Run::

    pytest benchmarks/bench_ecg_metrics.py                       # timings
    pytest benchmarks/bench_ecg_metrics.py --benchmark-disable   # smoke mode (CI)
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as sps
from numpy.lib.stride_tricks import sliding_window_view
from scipy.stats import kurtosis

from telediag.dsp.hr import HeartRateMeter
from telediag.dsp.hrv import HRVMeter
from telediag.dsp.quality import SignalQuality

FS = 360.0


def _beats(n: int = 2400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr = 0.75 * (1 + 0.05 * rng.standard_normal(n))
    return np.round(np.cumsum(rr) * FS).astype(np.int64)


def _ecg(dur_s: float = 600.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(dur_s * FS)
    t = np.arange(n) / FS
    x = np.zeros((n, 2))
    for b in np.arange(0.3, dur_s, 0.8):
        x[:, 0] += 1.2 * np.exp(-0.5 * ((t - b) / 0.01) ** 2)
        x[:, 1] += 0.6 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    return x + 0.02 * rng.standard_normal((n, 2))


def _hr_telediag(beats: np.ndarray) -> np.ndarray:
    m = HeartRateMeter(FS)
    return np.asarray(m.update(beats)["hr_bpm"])


def _hr_numpy(beats: np.ndarray) -> np.ndarray:
    rr = np.diff(beats).astype(np.float64)
    med = np.median(sliding_window_view(rr, 8), axis=1)
    return 60.0 * FS / med


def _hrv_telediag(beats: np.ndarray) -> np.ndarray:
    return np.asarray(HRVMeter(FS).update(beats)["rmssd_ms"])


def _hrv_numpy(beats: np.ndarray) -> np.ndarray:
    rr = np.diff(beats) * (1000.0 / FS)
    end = beats[1:]
    w = int(300 * FS)
    lo = np.searchsorted(end, end - w, side="right")
    out = np.empty((rr.size, 2))
    for i in range(rr.size):
        x = rr[lo[i] : i + 1]
        ok = x.size > 1
        out[i, 0] = np.sqrt(np.mean(np.diff(x) ** 2)) if ok else np.nan
        out[i, 1] = np.std(x, ddof=1) if ok else np.nan
    return out[:, 0]


def _quality_telediag(x: np.ndarray) -> int:
    sq = SignalQuality(FS, 2)
    n = 0
    hop = int(FS)
    for i in range(0, x.shape[0], hop):
        rows, _ = sq.process(x[i : i + hop])
        n += rows.block_start.size
    return n


def _quality_scipy(x: np.ndarray) -> int:
    sos = sps.butter(2, [1.0, 40.0], "bandpass", fs=FS, output="sos")
    sos_q = sps.butter(2, [5.0, 15.0], "bandpass", fs=FS, output="sos")
    sos_h = sps.butter(2, 40.0, "highpass", fs=FS, output="sos")
    bp = sps.sosfilt(sos, x, axis=0)
    q = sps.sosfilt(sos_q, x, axis=0)
    h = sps.sosfilt(sos_h, x, axis=0)
    hop = int(FS)
    n = 0
    for end in range(8 * hop, x.shape[0] + 1, hop):
        s = slice(end - 8 * hop, end)
        kurtosis(bp[s], axis=0, fisher=False)
        kurtosis(np.diff(bp[s], axis=0), axis=0, fisher=False)
        p = np.sum(bp[s] ** 2, axis=0)
        np.sum(q[s] ** 2, axis=0) / p
        np.sum(h[s] ** 2, axis=0) / p
        n += 1
    return n


@pytest.fixture(scope="module")
def beats() -> np.ndarray:
    b = _beats()
    _hr_telediag(b[:20])  # warm Numba
    _hrv_telediag(b[:20])
    return b


@pytest.fixture(scope="module")
def ecg() -> np.ndarray:
    x = _ecg()
    _quality_telediag(x[: int(20 * FS)])  # warm Numba
    return x


@pytest.mark.benchmark(group="hr")
@pytest.mark.parametrize("impl", ["telediag", "numpy"])
def test_bench_hr(benchmark, beats: np.ndarray, impl: str) -> None:  # type: ignore[no-untyped-def]
    fn = _hr_telediag if impl == "telediag" else _hr_numpy
    out = benchmark(fn, beats)
    assert np.nanmedian(out) == pytest.approx(80.0, rel=0.05)


@pytest.mark.benchmark(group="hrv")
@pytest.mark.parametrize("impl", ["telediag", "numpy"])
def test_bench_hrv(benchmark, beats: np.ndarray, impl: str) -> None:  # type: ignore[no-untyped-def]
    fn = _hrv_telediag if impl == "telediag" else _hrv_numpy
    out = benchmark(fn, beats)
    assert np.isfinite(out[-1])


@pytest.mark.benchmark(group="quality")
@pytest.mark.parametrize("impl", ["telediag", "scipy"])
def test_bench_quality(benchmark, ecg: np.ndarray, impl: str) -> None:  # type: ignore[no-untyped-def]
    fn = _quality_telediag if impl == "telediag" else _quality_scipy
    n = benchmark(fn, ecg)
    assert n > 500
