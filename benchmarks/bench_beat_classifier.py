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


def compare(old_dir: Path, rounds: int = 7) -> list[str]:
    """Per-beat cost of an older model directory (``card.json`` + ``.onnx``, e.g. 2.0.0 from
    git) against the shipped one, interleaved in this process, one thread: the engine's tree
    kernel (:func:`telediag.engine.stages.ecg_parts.trees.fast_classifier`) and ONNX Runtime,
    batches of 1 and 256, on the features of MIT-BIH 208 (best of ``rounds``). A model with a
    narrower ``rr`` input gets the first columns (the older builder's, which come first)."""
    import time

    from telediag.dsp.qrs import detect
    from telediag.engine.stages.ecg_parts.trees import fast_classifier

    x, fs = _signal()
    f = beat_features(x, fs, detect(x, fs))
    out = []
    models = {"old": BeatClassifier.load(directory=old_dir), "new": BeatClassifier.load()}
    rr = {}
    for k, m in models.items():
        width = int(m.model.card["inputs"][1]["shape"][1])
        rr[k] = np.ascontiguousarray(f.rr[:, :width])
    morph = np.ascontiguousarray(f.morph[:, :2])
    fast = {k: fast_classifier(m) for k, m in models.items()}

    def per_beat(fn, batch: int) -> float:  # type: ignore[no-untyped-def]
        n = 1024 if batch > 1 else 256
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for i in range(0, n, batch):
                fn(i, i + batch)
            best = min(best, (time.perf_counter() - t) / n)
        return best * 1e6

    for batch in (1, 256):
        res = {}
        for _ in range(2):  # interleaved twice, best kept
            for k, m in models.items():
                ort_fn = lambda a, b, m=m, k=k: m.model.run({"morph": morph[a:b], "rr": rr[k][a:b]})  # noqa: E731
                res[("ort", k)] = min(res.get(("ort", k), 1e9), per_beat(ort_fn, batch))
                if fast[k] is not None:
                    fk = fast[k]
                    res[("kernel", k)] = min(res.get(("kernel", k), 1e9),
                                             per_beat(lambda a, b, fk=fk, k=k: fk.probs(rr[k][a:b]), batch))
        for eng in ("kernel", "ort"):
            if ("kernel" == eng) and (("kernel", "old") not in res or ("kernel", "new") not in res):
                continue
            o, n_ = res[(eng, "old")], res[(eng, "new")]
            out.append(f"{eng:6s} batch {batch:3d}: old {o:6.1f} us/beat, new {n_:6.1f} us/beat ({n_ / o:.2f}x)")
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="old vs shipped beat model, per-beat cost in one run")
    ap.add_argument("--compare", type=Path, required=True,
                    help="directory with the older card.json + ecg_beats.onnx")
    for line in compare(ap.parse_args().compare):
        print(line)
