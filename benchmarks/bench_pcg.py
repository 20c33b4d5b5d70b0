"""Speed of the PCG chain (front end, HSMM decoding, offline and streaming segmentation).

Run::

    pytest benchmarks/bench_pcg.py --benchmark-only          # timings
    pytest benchmarks/bench_pcg.py --benchmark-disable       # smoke mode (CI)

Signal: 60 s of a real recording (a0001 looped) when the data is present, else a seeded
synthetic heart sound.  ``extra_info["x_realtime"]`` is audio seconds per wall-clock second
(one core).  Peer: the same preprocessing written with one-pass SciPy calls
(``resample_poly``, ``sosfiltfilt``, ``hilbert``), measured in the same run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import signal

from telediag.dsp import pcg
from telediag.dsp.pcg import PCGSegmenter, analyze_signal, extract_frames

SECONDS = 60.0


def _audio(fs: int) -> np.ndarray:
    base = Path(os.environ.get("TELEDIAG_DATA", Path(__file__).resolve().parents[1].parent
                               / "shared" / "data"))
    wav = base / "pcg2016" / "training-a" / "a0001.wav"
    n = int(SECONDS * 2000)
    if wav.is_file():
        from telediag.evaluation.pcg_analyze import read_wav

        x, _ = read_wav(wav)
        x = np.resize(x, n)
    else:
        rng = np.random.default_rng(0)
        x = 0.01 * rng.standard_normal(n)
        t = np.arange(200) / 2000
        burst = np.sin(2 * np.pi * 50 * t) * np.hanning(200)
        for b in np.arange(0.2, SECONDS - 1, 0.8):
            a = int(b * 2000)
            x[a : a + 200] += burst
            x[a + 600 : a + 800] += 0.6 * burst
    return x if fs == 2000 else pcg.resample(x, 2000, fs)


@pytest.fixture(scope="module")
def audio_2k() -> np.ndarray:
    x = _audio(2000)
    analyze_signal(x[:20000], 2000)  # warm up Numba (and load the model)
    PCGSegmenter(2000).process(x[:30000])
    return x


def _rt(benchmark: Any) -> None:
    if benchmark.stats is not None and benchmark.stats.stats.mean > 0:
        rt = SECONDS / benchmark.stats.stats.mean
        benchmark.extra_info["x_realtime"] = rt
        print(f"\n{benchmark.name}: {rt:.0f}x real time (mean {benchmark.stats.stats.mean * 1e3:.1f} ms "
              f"for {SECONDS:.0f} s of audio)")


def test_front_end_2k(benchmark: Any, audio_2k: np.ndarray) -> None:
    f = benchmark(extract_frames, audio_2k, 2000)
    assert f.shape == (int(SECONDS * 50), pcg.N_CHANNELS)
    _rt(benchmark)


def test_peer_scipy_preprocessing_2k(benchmark: Any, audio_2k: np.ndarray) -> None:
    """Peer: offline SciPy equivalent of the front end (zero-phase, whole-signal Hilbert)."""
    bp = signal.butter(4, [25, 400], btype="bandpass", fs=1000, output="sos")
    lp = signal.butter(1, 8, fs=1000, output="sos")

    def run(x: np.ndarray) -> np.ndarray:
        y = signal.resample_poly(x, 1, 2)
        y = signal.sosfiltfilt(bp, y)
        env = np.abs(signal.hilbert(y))
        homo = np.exp(signal.sosfiltfilt(lp, np.log(env + 1e-8)))
        return np.stack([signal.resample_poly(homo, 1, 20), signal.resample_poly(env, 1, 20)])

    out = benchmark(run, audio_2k)
    assert out.shape[1] == int(SECONDS * 50)
    _rt(benchmark)


def test_hsmm_decode(benchmark: Any, audio_2k: np.ndarray) -> None:
    frames = extract_frames(audio_2k, 2000)
    params = pcg._default_params()
    hr, sys_s, _ = pcg.estimate_heart_rate(frames[:, 0])
    states = benchmark(pcg._decode, frames, params, hr, sys_s, -1)
    assert states.shape == (frames.shape[0],)
    _rt(benchmark)


def test_segment_offline_2k(benchmark: Any, audio_2k: np.ndarray) -> None:
    """Whole offline chain at 2 kHz: front end + heart rate + emissions + HSMM."""
    a = benchmark(analyze_signal, audio_2k, 2000)
    assert len(a.segments) > 100
    _rt(benchmark)


def test_segment_offline_44k(benchmark: Any) -> None:
    x = _audio(44100)
    analyze_signal(x[:44100], 44100)
    a = benchmark.pedantic(analyze_signal, args=(x, 44100), rounds=3, iterations=1)
    assert len(a.segments) > 100
    _rt(benchmark)


def test_streaming_segmenter_2k(benchmark: Any, audio_2k: np.ndarray) -> None:
    """Streaming, 0.1 s chunks, window 8 s re-decoded every 1 s."""

    def run(x: np.ndarray) -> int:
        seg = PCGSegmenter(2000)
        n = 0
        for a in range(0, x.size, 200):
            n += len(seg.process(x[a : a + 200]))
        return n + len(seg.flush())

    n = benchmark(run, audio_2k)
    assert n > 100
    _rt(benchmark)
