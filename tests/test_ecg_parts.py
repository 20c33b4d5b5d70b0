"""Components of the ``ecg_analysis`` stage, each alone (issue 15 item 6): doctests, the
gap-aware sample clock, the quality gate, the AF kernel against its NumPy oracle."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import telediag.dsp.af as af_mod
import telediag.dsp.alarms as alarms_mod
import telediag.engine.stages.ecg_parts.clock as clock_mod
import telediag.engine.stages.ecg_parts.gate as gate_mod
import telediag.engine.stages.ecg_parts.rate as rate_mod
import telediag.engine.stages.ecg_parts.rhythm as rhythm_mod
from telediag.dsp.af import AFDetector, AFParams, af_features
from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
from telediag.engine.stages.ecg_parts.clock import Timeline
from telediag.errors import DSPError
from telediag.evaluation.ecg_analyze import collect
from telediag.transports.wire import Chunk

FS = 360.0


@pytest.mark.parametrize("mod", [af_mod, alarms_mod, clock_mod, gate_mod, rate_mod, rhythm_mod])
def test_doctests(mod: object) -> None:
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert res.attempted > 0 and res.failed == 0


def test_timeline_source_index_skips_lost_samples_and_ignores_jitter() -> None:
    tl = Timeline(FS)
    assert tl.observe(0, 10**9) == 0
    assert tl.observe(360, 2 * 10**9 + 1000) == 0  # jitter below half a sample
    assert tl.observe(720, 5 * 10**9) == 2 * 360  # two 1 s chunks lost
    assert tl.source(719) == 719 and tl.source(720) == 3 * 360 + 720 - 360 * 1
    assert tl.observe(1080, 5 * 10**9) == 0  # stamped earlier than expected: clock step back, no loss
    assert tl.source(1080) == tl.source(1079) + 1
    assert tl.lost == 720


def test_stage_reports_source_sample_indices_after_a_two_chunk_gap() -> None:
    """A beat at source sample 2294 after a two-chunk gap is reported as 2294, not 1574."""
    fs = FS
    t = np.arange(int(30 * fs)) / fs
    x = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01**2))[:, None]
    st = EcgAnalysis(EcgAnalysisParams())
    st.open(StreamSpec("g/ecg", "ecg", fs, ("II",), ("mV",)))
    recs = []
    dropped = {3, 4}  # chunks 3 and 4 (1 s each) never arrive
    for k in range(30):
        if k in dropped:
            continue
        c = Chunk.signal("ecg", "g/ecg", k, k * 10**9, x[k * 360:(k + 1) * 360], fs, ("II",), ("mV",))
        recs += st.process(c).records
    recs += st.close().records
    flat = collect(recs)
    got = [b["sample"] for b in flat["beats"]]
    true = np.round((np.arange(0.4, 30, 0.8)) * fs).astype(int)
    lost = set(range(3 * 360, 5 * 360))
    expect = [int(s) for s in true if int(s) not in lost and not (3 * 360 - 20 <= s < 5 * 360 + 20)]
    # every beat away from the gap edges is reported at its source index (within 2 samples)
    for s in expect[3:]:
        assert min(abs(g - s) for g in got) <= 2, s
    assert not any(3 * 360 <= g < 5 * 360 for g in got)
    for b in flat["beats"]:
        assert b["t_ns"] == round(b["sample"] * 1e9 / fs)
    ticks = [h["sample"] for h in flat["hr"] if not h["on_beat"]]
    assert ticks == sorted(ticks) and ticks[-1] == 29 * 360  # the 1 s readings continue in source time
    blocks = [b["sample"] for b in flat["blocks"]]
    assert 5 * 360 in blocks and 3 * 360 not in blocks


def test_af_kernel_equals_its_numpy_oracle_for_any_grouping() -> None:
    rng = np.random.default_rng(3)
    rr = np.r_[np.full(50, 0.8), rng.uniform(0.35, 1.2, 200), 0.8 + 0.02 * rng.standard_normal(60)]
    ok = rng.random(rr.size) > 0.05
    ref = af_features(rr, ok)
    p = AFParams()
    for groups in ([rr.size], [1] * rr.size, [7, 100, 3, 200]):
        ring = np.full((p.window + 1, 4), np.nan)
        pos = np.zeros(1, np.int64)
        out = []
        k = 0
        for g in groups:
            if k >= rr.size:
                break
            o = np.empty((min(g, rr.size - k), af_mod.N_FEATURES))
            af_mod._af_kernel(rr[k:k + g], af_mod._validity(rr[k:k + g], ok[k:k + g], p), ring, pos, p.window, p.trim, o)
            out.append(o)
            k += g
        np.testing.assert_allclose(np.concatenate(out), ref, rtol=1e-12, equal_nan=True)


def test_af_detector_finds_irregular_rhythm_not_regular_or_bigeminy() -> None:
    rng = np.random.default_rng(4)
    af = rng.uniform(0.4, 1.1, 150)
    bigem = np.tile([0.55, 1.05], 80)  # ventricular bigeminy, unlabelled
    sinus = 0.8 + 0.03 * rng.standard_normal(200)  # sinus with normal variability
    for rr, expect in ((af, True), (bigem, False), (sinus, False)):
        beats = np.cumsum(np.r_[0, rr] * FS).astype(int)
        tr, state = AFDetector(FS).beats(beats)
        assert bool(state[-1]) is expect and (len(tr) > 0) is expect
    # chunking of the beats does not matter
    beats = np.cumsum(np.r_[0, np.full(40, 0.8), af, np.full(60, 0.8)] * FS).astype(int)
    d1, d2 = AFDetector(FS), AFDetector(FS)
    t1, s1 = d1.beats(beats)
    parts = [d2.beats(beats[a:b]) for a, b in ((0, 13), (13, 100), (100, beats.size))]
    assert [t for p in parts for t in p[0]] == t1 and np.concatenate([p[1] for p in parts]).tolist() == s1.tolist()


def test_af_labels_and_breaks() -> None:
    rng = np.random.default_rng(5)
    rr = rng.uniform(0.4, 1.1, 100)
    beats = np.cumsum(np.r_[0, rr] * FS).astype(int)
    tr, _ = AFDetector(FS).beats(beats, ["V"] * beats.size)  # every interval ectopic: not measured
    assert tr == []
    tr, _ = AFDetector(FS).beats(beats, None, np.ones(beats.size, bool))  # every interval broken
    assert tr == []
    with pytest.raises(DSPError):
        AFParams(on=0.05, off=0.1)


def test_classifier_problem_never_refuses_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety: with classify = "on" a missing or failing model leaves the stream monitored
    (beats, HR, alarms), unlabelled, with one classifier_unavailable event."""
    import telediag.engine.stages.ecg_analysis as ea

    t = np.arange(int(20 * FS)) / FS
    x = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01**2))[:, None]

    def run() -> dict:
        st = EcgAnalysis(EcgAnalysisParams(classify="on"))
        st.open(StreamSpec("c/ecg", "ecg", FS, ("II",), ("mV",)))
        recs = []
        for k in range(20):
            recs += st.process(Chunk.signal("ecg", "c/ecg", k, k * 10**9, x[k * 360:(k + 1) * 360], FS,
                                            ("II",), ("mV",))).records
        recs += st.close().records
        ev = [r.body for r in recs if r.kind == "event" and r.body.get("type") == "classifier_unavailable"]
        return {"flat": collect(recs), "events": ev}

    def broken(*_: object, **__: object) -> object:
        raise RuntimeError("no model file")

    monkeypatch.setattr(ea, "classifier", broken)
    r = run()
    assert len(r["flat"]["beats"]) >= 20 and all(b["label"] is None for b in r["flat"]["beats"])
    assert len(r["events"]) == 1 and "no model file" in r["events"][0]["detail"]
    assert any(h["hr_bpm"] == pytest.approx(75.0, abs=0.5) for h in r["flat"]["hr"])

    class Failing:
        def classify(self, feats: object) -> object:
            raise RuntimeError("feature size mismatch")

    monkeypatch.setattr(ea, "classifier", lambda *a, **k: Failing())
    r = run()
    assert len(r["flat"]["beats"]) >= 20 and all(b["label"] is None for b in r["flat"]["beats"])
    assert len(r["events"]) == 1 and "feature size mismatch" in r["events"][0]["detail"]
    # the event is part of the published contract (transports/schemas/event.schema.json)
    import json
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[1] / "transports" / "schemas" / "event.schema.json")
                        .read_text(encoding="utf-8"))
    jsonschema.validate(r["events"][0], schema)


def test_af_scoring_ec57_counts_and_reference_parsing() -> None:
    """benchmarks/af_accuracy.py's EC57 AF episode/duration statistics (doctests + a real record)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "af_accuracy.py"
    spec = importlib.util.spec_from_file_location("af_accuracy", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["af_accuracy"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    res = doctest.testmod(mod)
    assert res.attempted >= 2 and res.failed == 0
    s = mod.score_episodes([(0, 100), (200, 300)], [(50, 250)])
    assert s.table == {"episode_se": 100.0, "episode_ppv": 100.0, "duration_se": 50.0, "duration_ppv": 50.0}
    assert mod.score_episodes([], [(0, 10)]).table["duration_ppv"] == 0.0
    mod.test_af_scoring_smoke()  # skips without the data
