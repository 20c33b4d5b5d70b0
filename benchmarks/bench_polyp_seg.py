"""Per-frame latency of the polyp segmenter on 640x480 RGB frames, 1 and 2 ORT threads.

Run::

    pytest benchmarks/bench_polyp_seg.py --benchmark-only          # timings
    pytest benchmarks/bench_polyp_seg.py --benchmark-disable       # smoke mode (CI)

Frame: the first Kvasir-SEG validation image resized to 640x480 when the data is present,
else a seeded synthetic frame (the network's cost does not depend on the content).
``predict`` is the whole per-frame path (validation, anti-aliased resize to 256x256, ONNX
Runtime, bilinear upsampling of the probability map to 640x480, threshold, connected-component
boxes) with the model card's default test-time augmentation; ``predict_tta`` times the same path
with each TTA mode (``none``: one pass; ``h``: frame + horizontal flip as a batch of 2; ``hv``:
batch of 3) on one thread, so the cost of TTA is measured against its peers in the same run;
``network`` is ONNX Runtime alone on a preprocessed input (one pass) and ``preprocess`` the resize
alone.
``extra_info`` holds p50/p99 in ms and frames per second (p50). The real-time target is 30 fps
(<= 33 ms, aimed at <= 25 ms) on one core.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag.models.polyp_seg import PolypSegmenter
from telediag.models.polyp_seg._resize import resize


def _frame() -> np.ndarray:
    base = Path(os.environ.get("TELEDIAG_DATA", Path(__file__).resolve().parents[1].parent
                               / "shared" / "data"))
    img_dir = base / "kvasir-seg" / "validation" / "images"
    if img_dir.is_dir():
        from telediag.evaluation.seg_metrics import read_rgb

        rgb = read_rgb(sorted(img_dir.iterdir())[0])
    else:
        rgb = np.random.default_rng(0).integers(0, 256, (352, 352, 3), dtype=np.uint8)
    return np.clip(np.rint(resize(rgb, 480, 640)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return _frame()


def _segmenter(threads: int, frame: np.ndarray, tta: str | None = None) -> PolypSegmenter:
    seg = PolypSegmenter(threads=threads, tta=tta).load()
    for _ in range(5):  # warm up ORT allocations and the cached resampling matrices
        seg.predict(frame)
    return seg


def _percentiles(benchmark: Any) -> None:
    stats = getattr(benchmark, "stats", None)
    data = getattr(getattr(stats, "stats", None), "data", None)
    if data:
        ms = np.asarray(data) * 1e3
        p50 = float(np.percentile(ms, 50))
        benchmark.extra_info.update(
            p50_ms=round(p50, 2), p99_ms=round(float(np.percentile(ms, 99)), 2),
            fps_p50=round(1e3 / p50, 1),
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_predict_640x480(benchmark: Any, frame: np.ndarray, threads: int) -> None:
    seg = _segmenter(threads, frame)
    benchmark.group = f"polyp_seg 640x480, {threads} thread(s)"
    r = benchmark.pedantic(seg.predict, args=(frame,), rounds=100, iterations=1, warmup_rounds=3)
    assert r.mask.shape == (480, 640)
    _percentiles(benchmark)


@pytest.mark.parametrize("tta", ["none", "h", "hv"])
def test_predict_tta(benchmark: Any, frame: np.ndarray, tta: str) -> None:
    seg = _segmenter(1, frame, tta)
    benchmark.group = "polyp_seg 640x480, 1 thread, TTA modes"
    r = benchmark.pedantic(seg.predict, args=(frame,), rounds=100, iterations=1, warmup_rounds=3)
    assert r.mask.shape == (480, 640)
    _percentiles(benchmark)


@pytest.mark.parametrize("threads", [1, 2])
def test_network_only(benchmark: Any, frame: np.ndarray, threads: int) -> None:
    seg = _segmenter(threads, frame)
    x = seg.preprocess(frame)
    benchmark.group = f"polyp_seg 640x480, {threads} thread(s)"
    out = benchmark.pedantic(seg.predict_batch_prob, args=(x,), rounds=100, iterations=1,
                             warmup_rounds=3)
    assert out.shape == (1, seg.input_size // 2, seg.input_size // 2)
    _percentiles(benchmark)


def test_preprocess_only(benchmark: Any, frame: np.ndarray) -> None:
    seg = _segmenter(1, frame)
    benchmark.group = "polyp_seg 640x480, 1 thread(s)"
    x = benchmark.pedantic(seg.preprocess, args=(frame,), rounds=100, iterations=1,
                           warmup_rounds=3)
    assert x.shape == (1, 3, seg.input_size, seg.input_size)
    _percentiles(benchmark)
