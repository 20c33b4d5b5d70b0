"""Throughput of the whole ECG chain (filter + QRS + HR + HRV + quality) through the stages.

The default ``ecg`` pipeline (``ecg_analysis`` then ``ecg_filter``) runs on a 2-lead 360 Hz
record (MIT-BIH 208, first 10 minutes; a seeded synthetic ECG when the data are absent) fed
in 1 s chunks directly to the stages (no sockets), one core.  Peers in the same run: each
building block alone (filter stage, QRS detector, quality, analysis stage without the
filter), so the cost of the glue (record building, HR/HRV meters) is visible.  Each test
prints ``x real time`` (record seconds per wall-clock second, one core).  Issue 4's target
for the full chain *with the beat classifier* was >= 5,000 x real time per core; issue 15's
is >= 3,000 x with classification **and** AF detection (the default config since issue 15:
``classify = "on"``, ``rhythm = true``). Peers: the chain without the classifier, and with the
classifier but without AF (``rhythm = false``), in the same run; issue 17 item 3 asks >= 5,000 x for
the chain with the classifier, and capacity on 250 ms chunks, whose per-chunk overhead the
250 ms peer shows. Outputs of the speed work are pinned by ``tests/test_ecg_golden.py``,
``tests/test_ecg_trees.py`` and ``tests/test_ecg_fast_paths.py`` (never wall-clock asserts).

Run: ``pytest benchmarks/bench_ecg_chain.py -s`` (smoke: ``--benchmark-disable``).

The full-chain tests also time each 1 s chunk through the stages in one extra (untimed by the
benchmark) pass and leave those compute latencies for ``telediag bench``'s latency CDFs
(:func:`telediag.evaluation.bench_cli.record_latency`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag import engine as engine_pkg
from telediag.dsp.qrs import QRSDetector
from telediag.dsp.quality import SignalQuality
from telediag.engine.config import Config, parse_config
from telediag.engine.stage import Stage, StreamSpec
from telediag.evaluation.bench_cli import record_latency
from telediag.evaluation.ecg_analyze import build_pipeline
from telediag.transports.wire import Chunk

SECONDS = 600.0
FS = 360.0


def _signal() -> tuple[np.ndarray, float, str]:
    env = os.environ.get("TELEDIAG_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    mit = base / "mitdb"
    if (mit / "208.dat").exists():
        from telediag.sources.readers import read_wfdb

        r = read_wfdb(mit / "208")
        return np.ascontiguousarray(r.signal[: int(SECONDS * r.fs)]), r.fs, "mitdb 208"
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * FS)) / FS
    x = np.zeros(t.size)
    for b in np.cumsum(0.8 + 0.05 * rng.standard_normal(int(SECONDS / 0.8))):
        i = int(b * FS)
        lo, hi = max(0, i - 20), min(t.size, i + 20)
        x[lo:hi] += np.exp(-0.5 * ((t[lo:hi] - b) / 0.01) ** 2)
    sig = np.stack([x, 0.5 * x], axis=1) + 0.02 * rng.standard_normal((t.size, 2))
    return sig, FS, "synthetic"


@pytest.fixture(scope="module")
def ecg() -> tuple[list[Chunk], np.ndarray, float, str]:
    x, fs, name = _signal()
    step = int(fs)
    chunks = [
        Chunk.signal("ecg", "bench/ecg", k, round(i * 1e9 / fs), x[i : i + step], fs, ("MLII", "V1"), ("mV", "mV"))
        for k, i in enumerate(range(0, x.shape[0], step))
    ]
    return chunks, x, fs, name


def _config(classify: bool, rhythm: bool = True) -> Config:
    """The built-in default config with the beat classifier on or off (and AF detection on or off)."""
    doc = tomllib.loads((Path(engine_pkg.__file__).parent / "default.toml").read_text(encoding="utf-8"))
    doc["pipeline"]["ecg"]["analysis"]["classify"] = "on" if classify else "off"
    doc["pipeline"]["ecg"]["analysis"]["rhythm"] = rhythm
    return parse_config(doc, f"default.toml + classify={classify} rhythm={rhythm}")


def _stages(fs: float, only: str | None = None, classify: bool = False, rhythm: bool = True) -> list[Stage]:
    spec = StreamSpec("bench/ecg", "ecg", fs, ("MLII", "V1"), ("mV", "mV"))
    stages = build_pipeline(_config(classify, rhythm), spec)
    if only is not None:
        stages = [s for s in stages if s.type_name == only]
    return stages


def _chain(
    chunks: list[Chunk], fs: float, only: str | None = None, classify: bool = False, rhythm: bool = True
) -> Callable[[], int]:
    def run() -> int:
        stages = _stages(fs, only, classify, rhythm)
        n = 0
        for c in chunks:
            x: Chunk | None = c
            for s in stages:
                assert x is not None
                out = s.process(x)
                n += len(out.records)
                x = out.signal
        for s in stages:
            n += len(s.close().records)
        return n

    return run


def _record_chunk_latency(benchmark: Any, chunks: list[Chunk], stages: list[Stage], label: str) -> None:
    """Compute time of each chunk through ``stages`` (one pass, after the warm-up), in ms."""
    import time

    ms = []
    for c in chunks:
        t0 = time.perf_counter()
        x: Chunk | None = c
        for s in stages:
            assert x is not None
            x = s.process(x).signal
        ms.append((time.perf_counter() - t0) * 1e3)
    record_latency(label, ms, kind="compute", source="bench_ecg_chain.py", extra_info=benchmark.extra_info,
                   note="1 s chunks of 2-lead 360 Hz ECG through the stages, one core, no sockets")


def _measure(benchmark: Any, fn: Callable[[], Any], seconds: float, label: str, rounds: int = 5) -> Any:
    fn()  # warm-up: Numba compile/caches
    out = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        best = stats.stats.min
        print(f"\n{label}: {seconds / best:,.0f} x real time per core ({best * 1e3:.1f} ms for {seconds:.0f} s)")
    return out


def test_full_chain_stages_1s_chunks(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    chunks, x, fs, name = ecg
    n_records = _measure(benchmark, _chain(chunks, fs), x.shape[0] / fs, f"full ECG chain ({name}, 2 leads)")
    assert n_records > len(chunks)  # hr + quality records at least once per second
    _record_chunk_latency(benchmark, chunks, _stages(fs), "ECG chain compute per 1 s chunk")


def test_full_chain_with_classifier_1s_chunks(
    benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]
) -> None:
    """Issue 15's measure: the default chain, ``classify = "on"`` (feature builder + ONNX) and AF."""
    chunks, x, fs, name = ecg
    n_records = _measure(
        benchmark, _chain(chunks, fs, classify=True), x.shape[0] / fs,
        f"full ECG chain + beat classifier + AF ({name}, 2 leads)",
    )
    assert n_records > len(chunks)
    _record_chunk_latency(benchmark, chunks, _stages(fs, classify=True),
                          "ECG chain + beat classifier compute per 1 s chunk")


def test_peer_classifier_without_af(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    chunks, x, fs, name = ecg
    _measure(benchmark, _chain(chunks, fs, classify=True, rhythm=False), x.shape[0] / fs,
             "full ECG chain + beat classifier, AF off")


def test_peer_classifier_quarter_second_chunks(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    """Issue 17.3's chunking: the default chain (classifier + AF) on 250 ms chunks, so the
    per-chunk overhead (4x as many calls as with 1 s chunks) is visible beside the 1 s figure."""
    chunks, x, fs, name = ecg
    step = int(fs) // 4
    quarter = [Chunk.signal("ecg", "bench/ecg", k, round(i * 1e9 / fs), x[i : i + step], fs, ("MLII", "V1"),
                            ("mV", "mV")) for k, i in enumerate(range(0, x.shape[0], step))]
    n_records = _measure(benchmark, _chain(quarter, fs, classify=True), x.shape[0] / fs,
                         f"full ECG chain + beat classifier + AF, 250 ms chunks ({name})")
    assert n_records > len(chunks)


def test_peer_analysis_stage_only(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    chunks, x, fs, name = ecg
    _measure(benchmark, _chain(chunks, fs, "ecg_analysis"), x.shape[0] / fs, "ecg_analysis stage alone")


def test_peer_filter_stage_only(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    chunks, x, fs, name = ecg
    _measure(benchmark, _chain(chunks, fs, "ecg_filter"), x.shape[0] / fs, "ecg_filter stage alone")


def test_peer_qrs_detector_only(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    chunks, x, fs, _ = ecg
    lead = [np.ascontiguousarray(c.data[:, 0], dtype=np.float64) for c in chunks]

    def run() -> int:
        det = QRSDetector(fs)
        return sum(det.process(v).size for v in lead) + det.flush().size

    _measure(benchmark, run, x.shape[0] / fs, "QRSDetector alone (1 lead)")


def test_peer_quality_only(benchmark: Any, ecg: tuple[list[Chunk], np.ndarray, float, str]) -> None:
    chunks, x, fs, _ = ecg
    data = [np.asarray(c.data, dtype=np.float64) for c in chunks]

    def run() -> int:
        sq = SignalQuality(fs, 2)
        return sum(sq.process(v)[0].block_start.size for v in data)

    _measure(benchmark, run, x.shape[0] / fs, "SignalQuality alone (2 leads)")
