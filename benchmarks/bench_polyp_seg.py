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
``variants_side_by_side`` runs every variant of the card (``fp32`` = 0.2.0, ``int8``, ``student``,
``student_int8``) with 1 and 2 threads, interleaved round by round, and reports each one's
speed ratio to fp32 from the same run (wall and calling-thread CPU time; on a loaded shared
machine the CPU-time ratio with one thread is the steadier figure, with two threads only the
wall time counts, as the second ORT thread's time is not the caller's).
``extra_info`` holds p50/p99 in ms and frames per second (p50). The real-time target is 30 fps
(<= 33 ms, aimed at <= 25 ms) on one core.
"""

from __future__ import annotations

import os
import time
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
    stride = int(seg.card.get("variants", {}).get(seg.variant, {}).get("output_stride", 2))
    assert out.shape == (1, seg.input_size // stride, seg.input_size // stride)
    _percentiles(benchmark)


def test_preprocess_only(benchmark: Any, frame: np.ndarray) -> None:
    seg = _segmenter(1, frame)
    benchmark.group = "polyp_seg 640x480, 1 thread(s)"
    x = benchmark.pedantic(seg.preprocess, args=(frame,), rounds=100, iterations=1,
                           warmup_rounds=3)
    assert x.shape == (1, 3, seg.input_size, seg.input_size)
    _percentiles(benchmark)


def test_variants_side_by_side(benchmark: Any, frame: np.ndarray) -> None:
    """Every variant of the card, interleaved round by round (same machine load for all).

    ``extra_info``: per variant and ORT thread count, the median wall and calling-thread CPU
    time of ``predict`` (the whole per-frame path) and of the network alone, and the ratios
    fp32 / variant (> 1: faster than the 0.2.0 network) from this same run.
    """
    import json

    from telediag.models.polyp_seg import CARD_PATH

    card = json.loads(CARD_PATH.read_text())
    names = list(card.get("variants", {"fp32": {}}))
    rounds = 3 if benchmark.disabled else 40
    segs = {(n, t): PolypSegmenter(threads=t, variant=n).load() for n in names for t in (1, 2)}
    xs = {k: s.preprocess(frame) for k, s in segs.items()}
    times: dict[tuple[str, int], dict[str, list[float]]] = {
        k: {"wall": [], "cpu": [], "net_wall": [], "net_cpu": []} for k in segs}

    def run() -> None:
        for _ in range(3):
            for s in segs.values():
                s.predict(frame)
        for _ in range(rounds):
            for k, s in segs.items():
                w, c = time.perf_counter(), time.thread_time()
                s.predict(frame)
                times[k]["wall"].append(time.perf_counter() - w)
                times[k]["cpu"].append(time.thread_time() - c)
                w, c = time.perf_counter(), time.thread_time()
                s.predict_batch_prob(xs[k])
                times[k]["net_wall"].append(time.perf_counter() - w)
                times[k]["net_cpu"].append(time.thread_time() - c)

    benchmark.pedantic(run, rounds=1, iterations=1)
    med = {k: {m: float(np.median(v)) * 1e3 for m, v in d.items()} for k, d in times.items()}
    print("\npolyp_seg variants, 640x480 frame, medians over", rounds, "interleaved rounds")
    print("variant        thr  predict_ms  cpu_ms  net_ms  net_cpu_ms  x_fp32(pred)  x_fp32(net)  x_fp32(cpu)")
    for (n, t), m in med.items():
        ref = med.get(("fp32", t), m)
        row = {"predict_ms": round(m["wall"], 2), "predict_cpu_ms": round(m["cpu"], 2),
               "network_ms": round(m["net_wall"], 2), "network_cpu_ms": round(m["net_cpu"], 2),
               "ratio_vs_fp32_predict": round(ref["wall"] / m["wall"], 2),
               "ratio_vs_fp32_network": round(ref["net_wall"] / m["net_wall"], 2),
               "ratio_vs_fp32_predict_cpu": round(ref["cpu"] / m["cpu"], 2)}
        benchmark.extra_info[f"{n}_{t}t"] = row
        print(f"{n:14s} {t:3d} {row['predict_ms']:11.2f} {row['predict_cpu_ms']:7.2f} "
              f"{row['network_ms']:7.2f} {row['network_cpu_ms']:11.2f} {row['ratio_vs_fp32_predict']:13.2f} "
              f"{row['ratio_vs_fp32_network']:12.2f} {row['ratio_vs_fp32_predict_cpu']:12.2f}")
    assert all(len(d["wall"]) == rounds for d in times.values())
