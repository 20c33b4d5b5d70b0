"""Beat classifier inference cost per beat: batched (64, 256) and unbatched (1), one thread.

fp32 and int8 ONNX models run with ONNX Runtime (intra/inter-op threads = 1) on real beat
inputs (MIT-BIH 208, first 10 minutes; seeded synthetic inputs when the data are absent);
the feature builder's cost per beat is measured too, and its per-patient normalisation step
alone (:func:`test_patient_norm`).  Target: <= 20 us per beat batched.
``extra_info["us_per_beat"]`` holds the per-beat figure.

Run: ``pytest benchmarks/bench_beat_classifier.py`` (smoke: ``--benchmark-disable``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from telediag.models.ecg_beats import BeatClassifier
from telediag.models.ecg_beats.features import BeatFeatures, beat_features

SECONDS = 600.0


def _signal() -> tuple[np.ndarray, float]:
    env = os.environ.get("TELEDIAG_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    rec = base / "mitdb" / "208"
    if rec.with_suffix(".dat").exists():
        import wfdb

        r = wfdb.rdrecord(str(rec), sampto=int(SECONDS * 360))
        return r.p_signal[:, r.sig_name.index("MLII")].astype(np.float64), float(r.fs)
    fs = 360.0
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * fs)) / fs
    x = 0.02 * rng.standard_normal(t.size)
    for b in np.cumsum(0.8 + 0.1 * rng.standard_normal(int(SECONDS / 0.8) - 2)):
        x += np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    return x, fs


@pytest.fixture(scope="module")
def feats() -> BeatFeatures:
    from telediag.dsp.qrs import detect

    x, fs = _signal()
    return beat_features(x, fs, detect(x, fs))


@pytest.mark.parametrize("variant", ["fp32", "int8"])
@pytest.mark.parametrize("batch", [1, 64, 256])
def test_classify(benchmark, feats: BeatFeatures, variant: str, batch: int) -> None:  # type: ignore[no-untyped-def]
    try:
        clf = BeatClassifier.load(variant, intra_op_threads=1)  # type: ignore[arg-type]
    except Exception as e:  # int8 may not be shipped
        pytest.skip(f"{variant}: {e}")
    n = (len(feats) // batch) * batch
    chunks = [
        BeatFeatures(feats.beats[i : i + batch], feats.rr[i : i + batch], feats.morph[i : i + batch])
        for i in range(0, min(n, 1024 if batch > 1 else 256), batch)
    ]
    model = clf.model
    inputs = [c.inputs() for c in chunks]
    model.warmup(batch)

    def run() -> None:
        for inp in inputs:
            model.run(inp)

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    beats = batch * len(inputs)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_beat"] = benchmark.stats.stats.median / beats * 1e6
    benchmark.extra_info["beats_per_round"] = beats


def test_features(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Feature construction (filter + windows + running state), per beat of 2 minutes."""
    from telediag.dsp.qrs import detect

    x, fs = _signal()
    x = x[: int(120 * fs)]
    _time_features(benchmark, x, fs, detect(x, fs))


def test_patient_norm(benchmark, feats: BeatFeatures) -> None:  # type: ignore[no-untyped-def]
    """The per-patient normalisation step alone (2.1: 49 columns minus their running median over
    256 beats), per beat: a part of :func:`test_features`, its peer in the same run."""
    from telediag.models.ecg_beats.features import PatientNorm

    rows = feats.rr.copy()
    PatientNorm().fill(rows)  # warm Numba

    def run() -> None:
        PatientNorm().fill(rows)

    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_beat"] = benchmark.stats.stats.median / len(feats) * 1e6


def test_features_two_leads(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The same with a second lead (channels 2-3 of ``morph``; the shipped model ignores them):
    the peer of :func:`test_features`, about twice its cost."""
    from telediag.dsp.qrs import detect

    x, fs = _signal()
    x = x[: int(120 * fs)]
    two = np.stack([x, 0.5 * np.roll(x, 5)], axis=1)
    _time_features(benchmark, two, fs, detect(x, fs))


def _time_features(benchmark, sig: np.ndarray, fs: float, b: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Time the offline feature builder on ``sig``'s beats ``b``; extra_info ``us_per_beat``."""
    beat_features(sig, fs, b)  # warm Numba
    benchmark.pedantic(lambda: beat_features(sig, fs, b), rounds=5, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_beat"] = benchmark.stats.stats.median / b.size * 1e6


def test_features_streaming_1s_chunks(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The streaming builder as an engine stage drives it: 1 s chunks, beats ~0.4 s late."""
    from telediag.dsp.qrs import detect
    from telediag.models.ecg_beats.features import BeatFeatureStream

    x, fs = _signal()
    x = x[: int(120 * fs)]
    b = detect(x, fs)
    step = int(fs)
    late = int(0.4 * fs)
    cuts = [int(np.searchsorted(b, i + step - late)) for i in range(0, x.size, step)]

    def run() -> int:
        s = BeatFeatureStream(fs)
        n, given = 0, 0
        for i, k in zip(range(0, x.size, step), cuts, strict=True):
            n += len(s.push(x[i : i + step], b[given:k]))
            given = k
        return n + len(s.push(x[:0], b[given:])) + len(s.finish())

    assert run() == b.size  # also warms Numba
    benchmark.pedantic(run, rounds=5, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_beat"] = benchmark.stats.stats.median / b.size * 1e6
        benchmark.extra_info["us_per_chunk"] = benchmark.stats.stats.median / len(cuts) * 1e6
