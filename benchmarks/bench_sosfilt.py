"""Benchmark: streaming SOS filter, telediag (Numba) vs scipy.signal.sosfilt with carried zi.

Every cell streams the same fixed number of samples (``TOTAL_SAMPLES`` per channel per round)
through an 8th-order Butterworth band-pass (0.5-40 Hz at 360 Hz; 4 biquads), cut into chunks
of ``chunk`` samples, so the per-round times of all cells are directly comparable.  Cells are
grouped by (chunk, channels) so pytest-benchmark's table shows the two implementations side
by side.

Run::

    pytest benchmarks/bench_sosfilt.py                       # timings
    pytest benchmarks/bench_sosfilt.py --benchmark-disable   # smoke mode (CI)
    python benchmarks/report_sosfilt.py                      # Markdown table of ratios
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.signal as sps

from telediag.dsp import SosFilter, ecg_bandpass

FS_HZ = 360.0
TOTAL_SAMPLES = 36_000  # per channel per round: 100 s of ECG at 360 Hz
CHUNKS = (1, 8, 36, 360, 3600)
CHANNELS = (1, 2, 12)
IMPLS = ("telediag", "scipy")


def bandpass_8th_order() -> np.ndarray:
    """0.5-40 Hz Butterworth band-pass at 360 Hz: prototype order 4 -> 8 poles, 4 sections."""
    return ecg_bandpass(FS_HZ, 0.5, 40.0, order=4)


def make_chunks(chunk: int, n_channels: int, total: int = TOTAL_SAMPLES, seed: int = 0) -> list:
    """A seeded synthetic signal pre-cut into C-contiguous (chunk, n_channels) arrays."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((total, n_channels))
    return [np.ascontiguousarray(x[i : i + chunk]) for i in range(0, total, chunk)]


def make_stream(impl: str, sos: np.ndarray, chunks: list) -> Callable[[], np.ndarray]:
    """Return a zero-argument callable that streams all ``chunks`` once (state carried).

    The callable returns the last output chunk.  Numba is compiled (warmed) here, before any
    timing.
    """
    n_channels = chunks[0].shape[1]
    if impl == "telediag":
        filt = SosFilter(sos, n_channels)
        filt.process(chunks[0])  # warm-up: JIT / cache load
        filt.reset()
        process = filt.process

        def run_ours() -> np.ndarray:
            y = chunks[0]
            for c in chunks:
                y = process(c)
            return y

        return run_ours
    if impl == "scipy":
        state = [np.zeros((sos.shape[0], 2, n_channels))]
        sosfilt = sps.sosfilt

        def run_scipy() -> np.ndarray:
            zi = state[0]
            y = chunks[0]
            for c in chunks:
                y, zi = sosfilt(sos, c, axis=0, zi=zi)
            state[0] = zi
            return y

        return run_scipy
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_channels", CHANNELS)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_sosfilt_stream(benchmark, impl: str, n_channels: int, chunk: int) -> None:
    sos = bandpass_8th_order()
    chunks = make_chunks(chunk, n_channels)
    run = make_stream(impl, sos, chunks)
    benchmark.group = f"sosfilt chunk={chunk:>4} ch={n_channels:>2}"
    benchmark.extra_info["samples_per_round"] = TOTAL_SAMPLES
    benchmark.extra_info["channels"] = n_channels
    benchmark.extra_info["chunk"] = chunk
    last = benchmark(run)
    assert last.shape == chunks[-1].shape


@pytest.mark.parametrize("n_channels", CHANNELS)
def test_streams_agree(n_channels: int) -> None:
    """The benchmarked runners compute the same thing (guards against benchmarking a no-op)."""
    sos = bandpass_8th_order()
    chunks = make_chunks(36, n_channels, total=3600)
    ours = make_stream("telediag", sos, chunks)()
    ref = make_stream("scipy", sos, chunks)()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
