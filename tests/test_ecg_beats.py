"""ECG beat classifier: features (determinism, streaming, fs invariance) and the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from telediag.dsp.qrs import detect
from telediag.errors import ModelError
from telediag.models.ecg_beats import CARD_PATH, MODEL_DIR, BeatClassifier
from telediag.models.ecg_beats.features import (
    AAMI_CLASSES,
    LOOKAHEAD_BEATS,
    N_MORPH,
    N_RAW,
    N_RR,
    RR_FEATURES,
    TEMPLATE_FEATURES,
    BeatFeatures,
    BeatFeatureStream,
    aami_label,
    beat_features,
)
from telediag.models.runtime import file_sha256


def _synthetic(fs: float, seconds: float = 30.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    rr = 0.8 + 0.05 * rng.standard_normal(int(seconds / 0.6))
    rr[7::9] *= 0.6  # premature beats
    times = np.cumsum(rr)
    times = times[times < seconds - 1.0]
    x = 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(t.size)
    for b in times:
        x += np.exp(-0.5 * ((t - b) / 0.012) ** 2) + 0.15 * np.exp(-0.5 * ((t - b - 0.25) / 0.04) ** 2)
    return x, np.round(times * fs).astype(np.int64)


def _record(mitdb: Path, name: str, seconds: float | None = None) -> tuple[np.ndarray, float, object]:
    import wfdb

    rec = wfdb.rdrecord(str(mitdb / name))
    ann = wfdb.rdann(str(mitdb / name), "atr")
    lead = rec.sig_name.index("MLII")
    x = rec.p_signal[:, lead].astype(np.float64)
    if seconds is not None:
        x = x[: int(seconds * rec.fs)]
    return x, float(rec.fs), ann


# -- features ---------------------------------------------------------------------------------
def test_aami_mapping() -> None:
    assert [aami_label(s) for s in "NLRejAaJSVEF/fQ"] == [0] * 5 + [1] * 4 + [2] * 2 + [3] + [4] * 3
    assert aami_label("+") == aami_label("!") == aami_label("~") == -1
    assert AAMI_CLASSES == ("N", "S", "V", "F", "Q")


def test_features_shapes_and_determinism() -> None:
    x, b = _synthetic(360.0)
    f1 = beat_features(x, 360.0, b)
    f2 = beat_features(x.copy(), 360.0, b.copy())
    assert f1.rr.shape == (b.size, N_RR) and f1.morph.shape == (b.size, 2, N_MORPH)
    assert f1.rr.dtype == np.float32 and f1.morph.dtype == np.float32
    np.testing.assert_array_equal(f1.rr, f2.rr)
    np.testing.assert_array_equal(f1.morph, f2.morph)
    assert np.all(np.isfinite(f1.rr)) and np.all(np.isfinite(f1.morph))
    # premature beats: previous RR shorter than the local mean
    assert f1.rr[7::9, 3].max() < 0.8 < f1.rr[1:7, 3].min()


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_equals_one_pass(seed: int) -> None:
    fs = 250.0
    x, b = _synthetic(fs, 40.0, seed)
    whole = beat_features(x, fs, b)
    rng = np.random.default_rng(seed)
    s = BeatFeatureStream(fs)
    parts, pos, given = [], 0, 0
    delay = int(0.4 * fs)  # beats reported 0.4 s after their R peak, like the detector
    while pos < x.size:
        end = min(x.size, pos + int(rng.integers(1, 700)))
        new = b[(b < end - delay) & (np.arange(b.size) >= given)]
        given += new.size
        parts.append(s.push(x[pos:end], new))
        pos = end
    parts.append(s.push([], b[given:]))
    parts.append(s.finish())
    got = BeatFeatures.concat(parts)
    np.testing.assert_array_equal(got.beats, whole.beats)
    np.testing.assert_array_equal(got.rr, whole.rr)
    np.testing.assert_array_equal(got.morph, whole.morph)


def test_stream_waits_for_the_lookahead_beats() -> None:
    """A beat is emitted once LOOKAHEAD_BEATS later beats are known (its RR context)."""
    fs = 360.0
    x, b = _synthetic(fs)
    s = BeatFeatureStream(fs)
    out = s.push(x[: b[6] + 10], b[:7])
    n_ok = 7 - LOOKAHEAD_BEATS
    assert out.beats.tolist() == b[:n_ok].tolist()
    assert s.pending == tuple(int(v) for v in b[n_ok:7])
    assert s.push(x[b[6] + 10 : b[7] + 10], b[7:8]).beats.tolist() == [int(b[n_ok])]


def test_stream_rejects_bad_input() -> None:
    s = BeatFeatureStream(360.0)
    with pytest.raises(ModelError, match="one or two leads"):
        s.push(np.zeros((10, 3)))
    with pytest.raises(ModelError, match="non-finite"):
        s.push(np.full((10, 2), np.nan))
    assert s.n_leads is None  # a rejected push does not fix the lead count
    with pytest.raises(ModelError, match="beyond"):
        s.push(np.zeros(100), [150])
    s.push(np.zeros(100), [50])
    with pytest.raises(ModelError, match="increasing"):
        s.push(np.zeros(10), [40])
    with pytest.raises(ModelError, match="non-finite"):
        s.push(np.array([np.nan]))
    with pytest.raises(ModelError, match="fs"):
        BeatFeatureStream(50.0)


def test_context_sees_prematurity_against_the_surrounding_rhythm() -> None:
    """A slow sinus rhythm whose RR drifts by +-20 % with atrial premature beats only 20 %
    early (no compensatory pause): against the patient mean the premature RRs overlap the
    normal ones, against the median of the surrounding RRs (both sides) they stand apart."""
    fs = 128.0
    k = np.arange(300)
    rr = 1.1 * (1 + 0.2 * np.sin(2 * np.pi * k / 80))
    prem = np.zeros(k.size, bool)
    prem[13::17] = True
    rr[prem] *= 0.8
    times = 1.0 + np.concatenate([[0.0], np.cumsum(rr)])
    t = np.arange(int((times[-1] + 1.0) * fs)) / fs
    x = np.zeros(t.size)
    for tb in times:
        x += np.exp(-0.5 * ((t - tb) / 0.015) ** 2)
    b = np.round(times * fs).astype(np.int64)
    f = beat_features(x, fs, b)
    is_prem = np.r_[False, prem]  # rr[i] ends at beat i + 1
    col = {n: RR_FEATURES.index(n) for n in ("pre_rel", "c_pre", "c_pair")}
    body = np.arange(b.size) > 40  # after the 300 s patient mean has some history
    pre_rel = f.rr[:, col["pre_rel"]]
    assert pre_rel[is_prem & body].max() > pre_rel[~is_prem & body].min()  # overlap
    c_pre = f.rr[:, col["c_pre"]]
    assert c_pre[is_prem & body].max() < 0.9 < 0.92 < c_pre[~is_prem & body].min()
    # no compensatory pause: (r0 + r1) / 2 stays below the surrounding median
    assert np.median(f.rr[is_prem & body, col["c_pair"]]) < 0.95


@pytest.mark.data
def test_features_fs_invariant(mitdb: Path) -> None:
    """Record 119 (60 s) at 360 Hz and resampled to 250 Hz gives near-identical inputs."""
    x, fs, _ = _record(mitdb, "119", 60.0)
    x250 = sps.resample_poly(x, 25, 36)
    b360 = detect(x, fs)
    b250 = detect(x250, 250.0)
    f360 = beat_features(x, fs, b360)
    f250 = beat_features(x250, 250.0, b250)
    # pair beats detected at both rates (within 10 ms)
    j = np.searchsorted(b250 / 250.0, b360 / fs)
    j = np.clip(j, 0, b250.size - 1)
    jm = np.clip(j - 1, 0, b250.size - 1)
    near = np.where(np.abs(b250[jm] / 250.0 - b360 / fs) < np.abs(b250[j] / 250.0 - b360 / fs), jm, j)
    ok = np.abs(b250[near] / 250.0 - b360 / fs) < 0.010
    assert ok.mean() > 0.97
    i360, i250 = np.flatnonzero(ok)[5:], near[ok][5:]
    n_rate = N_RAW - len(TEMPLATE_FEATURES)  # RR features and RR context: nearly equal
    rank = RR_FEATURES.index("c_rank")  # a count of RRs shorter than this one: ties flip
    cols = np.setdiff1d(np.arange(n_rate), [rank])
    np.testing.assert_allclose(f250.rr[i250][:, cols], f360.rr[i360][:, cols], rtol=0.05, atol=0.02)
    assert np.mean(np.abs(f250.rr[i250, rank] - f360.rr[i360, rank]) > 0.15) < 0.02
    # template features (widths, slopes, small differences) and the per-patient normalised
    # columns (differences to a running median, near 0) move more, but little typically
    dt = np.abs(f250.rr[i250, n_rate:] - f360.rr[i360, n_rate:])
    # (a d_ column is judged on the scale of its raw column)
    src = [RR_FEATURES.index(n[2:]) if n.startswith("d_") else i for i, n in enumerate(RR_FEATURES)]
    scale = 1.0 + np.median(np.abs(f360.rr[i360][:, src[n_rate:]]), axis=0)
    assert np.all(np.median(dt, axis=0) < 0.05 * scale)
    d = np.abs(f250.morph[i250, 0] - f360.morph[i360, 0])
    assert np.median(d) < 0.02 and np.percentile(d, 99) < 0.15


# -- shipped model ----------------------------------------------------------------------------
def test_card_and_sha256() -> None:
    card = json.loads(CARD_PATH.read_text())
    assert card["classes"] == list(AAMI_CLASSES)
    assert card["sha256"] == file_sha256(MODEL_DIR / card["file"])
    for v in card["variants"].values():
        assert v["sha256"] == file_sha256(MODEL_DIR / v["file"])
    assert [i["name"] for i in card["inputs"]] == ["morph", "rr"]
    m = card["metrics"]["gbt"]  # the protocols are recorded: CV per database, both directions
    assert m["cv"]["pooled"]["classes"]["S"]["n_ref"] > 12000
    assert m["cv"]["mitdb"]["classes"]["V"]["n_ref"] > 3000
    for k in ("train_DS1_test_svdb", "train_svdb_test_DS1"):
        assert 0.0 <= m[k]["sveb_f1_ec57"] <= 1.0
    assert "reproduce" in card and card["version"] >= "2.0.0"


def test_card_has_no_nan() -> None:
    """``telediag infer models`` and strict JSON readers reject NaN: the card writes null."""

    def bad(token: str) -> None:
        raise AssertionError(f"card.json holds {token}")

    json.loads(CARD_PATH.read_text(), parse_constant=bad)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_classify_shapes_and_probabilities(variant: str) -> None:
    card = json.loads(CARD_PATH.read_text())
    if variant not in card["variants"]:
        pytest.skip(f"{variant} variant not shipped (see card.json)")
    clf = BeatClassifier.load(variant)  # type: ignore[arg-type]
    x, b = _synthetic(360.0)
    labels, probs = clf.classify(clf.features(x, 360.0, b))
    assert labels.shape == (b.size,) and probs.shape == (b.size, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(probs >= 0)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    e_labels, e_probs = clf.classify(BeatFeatures.empty())
    assert e_labels.shape == (0,) and e_probs.shape == (0, 5)


def test_load_unknown_variant() -> None:
    with pytest.raises(ModelError, match="variant"):
        BeatClassifier.load("fp16")  # type: ignore[arg-type]


def _labelled(mitdb: Path, name: str) -> tuple[BeatFeatures, np.ndarray]:
    from telediag.models.ecg_beats.train import match

    x, fs, ann = _record(mitdb, name)
    b = detect(x, fs)
    f = beat_features(x, fs, b)
    lab = np.array([aami_label(s) for s in ann.symbol])  # type: ignore[attr-defined]
    keep = lab >= 0
    ref = np.asarray(ann.sample)[keep]  # type: ignore[attr-defined]
    m = match(b, ref, int(0.15 * fs))
    y = np.where(m >= 0, lab[keep][np.maximum(m, 0)], -1)
    return f, y


def test_int8_variant_is_the_fp32_trees() -> None:
    """Trees have no quantised form: the ``int8`` name stays loadable and is the same file."""
    card = json.loads(CARD_PATH.read_text())
    assert card["variants"]["int8"]["file"] == card["variants"]["fp32"]["file"]
    x, b = _synthetic(360.0)
    f = beat_features(x, 360.0, b)
    np.testing.assert_array_equal(BeatClassifier.load("int8").classify(f)[1],
                                  BeatClassifier.load("fp32").classify(f)[1])


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize(("record", "floor"), [("101", 0.95), ("208", 0.80)])
def test_accuracy_regression_guard(mitdb: Path, record: str, floor: float) -> None:
    """Regression guard only: these are TRAINING records, not a metric (see card.json)."""
    f, y = _labelled(mitdb, record)
    labels, _ = BeatClassifier.load().classify(f)
    k = y >= 0
    assert (labels[k] == y[k]).mean() >= floor


def test_classifier_streaming_path_equals_offline() -> None:
    clf = BeatClassifier.load()
    fs = 360.0
    x, b = _synthetic(fs, 30.0, seed=4)
    whole = clf.features(x, fs, b)
    state = clf.stream(fs)
    half = x.size // 2
    p1 = clf.features(x[:half], fs, b[b < half - 200], rr_state=state)
    p2 = clf.features(x[half:], fs, b[b >= half - 200], rr_state=state)
    got = BeatFeatures.concat([p1, p2, state.finish()])
    np.testing.assert_array_equal(got.rr, whole.rr)
    np.testing.assert_array_equal(clf.classify(got)[1], clf.classify(whole)[1])
    with pytest.raises(ModelError, match="fs"):
        clf.features(x[:10], 250.0, [], rr_state=state)


def test_engine_stage_labels_beats_when_classification_is_on(tmp_path) -> None:  # noqa: ANN001
    """With ``classify = "on"`` the analysis stage publishes AAMI labels and probabilities, and
    ``telediag analyze ecg --wfdb-ann`` writes them as annotation symbols."""
    from pathlib import Path

    import wfdb

    from telediag.cli import main

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"
    if not (data / "119.hea").exists():
        import pytest

        pytest.skip("MIT-BIH data not found")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[pipeline.ecg.analysis]\nstage = "ecg_analysis"\nclassify = "on"\n')
    rec = tmp_path / "r119"
    r = wfdb.rdrecord(str(data / "119"), sampto=360 * 120)
    wfdb.wrsamp("r119", fs=r.fs, units=r.units, sig_name=r.sig_name, p_signal=r.p_signal, fmt=["16", "16"],
                write_dir=str(tmp_path))
    assert main(["analyze", "ecg", str(rec), "--out-dir", str(tmp_path / "out"), "--wfdb-ann", "cls",
                 "--config", str(cfg)]) == 0
    ann = wfdb.rdann(str(tmp_path / "out" / "r119"), "cls")
    ref = wfdb.rdann(str(data / "119"), "atr", sampto=360 * 120)
    beats = [s for s in ann.symbol if s not in ("+", "~")]  # rhythm and noise marks aside
    assert beats and set(beats) <= {"N", "S", "V", "F", "Q"}
    n_v_ref = sum(s == "V" for s in ref.symbol)
    assert n_v_ref > 20 and abs(sum(s == "V" for s in beats) - n_v_ref) <= 0.2 * n_v_ref


def test_two_lead_features_are_accepted_and_the_second_lead_is_ignored() -> None:
    """Offline and streaming builders take (n, 2); the one-lead model reads channels 0-1."""
    clf = BeatClassifier.load()
    fs = 360.0
    x, b = _synthetic(fs, 30.0, seed=5)
    two = np.stack([x, 0.5 * np.roll(x, 7)], axis=1)
    f1 = clf.features(x, fs, b)
    f2 = clf.features(two, fs, b)
    assert f1.morph.shape[1] == 2 and f2.morph.shape[1] == 4
    np.testing.assert_array_equal(f2.morph[:, :2], f1.morph)
    np.testing.assert_array_equal(f2.rr, f1.rr)
    np.testing.assert_array_equal(clf.classify(f2)[1], clf.classify(f1)[1])
    state = clf.stream(fs)
    half = x.size // 2
    got = BeatFeatures.concat([
        clf.features(two[:half], fs, b[b < half - 200], rr_state=state),
        clf.features(two[half:], fs, b[b >= half - 200], rr_state=state),
        state.finish(),
    ])
    np.testing.assert_array_equal(got.morph, f2.morph)
    with pytest.raises(ModelError, match="channels"):
        clf.classify(BeatFeatures(f1.beats, f1.rr, np.ascontiguousarray(f1.morph[:, :1])))


def test_shipped_model_merges_fusion_into_normal() -> None:
    """The card's decision rule (F merged into N, chosen by record CV) is in the graph."""
    card = json.loads(CARD_PATH.read_text())
    rule = card["decision"]
    assert rule["f_into"] == "N" and rule["f_min"] == 1.0
    rng = np.random.default_rng(0)
    morph = rng.standard_normal((400, 2, N_MORPH)).astype(np.float32)
    rr = rng.uniform(0.3, 2.0, (400, N_RR)).astype(np.float32)
    labels, probs = BeatClassifier.load().classify(BeatFeatures(np.arange(400), rr, morph))
    assert np.all(probs[:, AAMI_CLASSES.index("F")] == 0) and "F" not in {AAMI_CLASSES[i] for i in labels}
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_exported_trees_equal_lightgbm() -> None:
    """The ONNX export (trees + F -> N merge + the morph/rr contract) reproduces LightGBM."""
    pytest.importorskip("lightgbm")  # the 'train' extra
    pytest.importorskip("onnxmltools")
    import argparse
    import tempfile

    from telediag.models.ecg_beats.train import export_onnx, fit_gbt, ort_predict, predict

    rng = np.random.default_rng(0)
    y = rng.choice(5, 3000, p=[0.6, 0.15, 0.15, 0.05, 0.05])
    x = rng.normal(0.0, 1.0, (y.size, N_RR)).astype(np.float32)
    x[:, 3] += y  # learnable
    a = argparse.Namespace(leaves=7, lr=0.2, rounds=10, seed=0, weight_power=0.5)
    booster = fit_gbt(x, y, a)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(booster, path)
        got = ort_predict(path, x)
    want = predict(booster, x)
    assert np.all(got[:, 3] == 0) and np.all(want[:, 3] == 0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_card_rr_contract_matches_builder() -> None:
    """The shipped card, the ONNX graph and the feature builder agree on the RR inputs."""
    import onnxruntime as ort

    from telediag.models.ecg_beats.features import RR_FEATURES

    card = json.loads(CARD_PATH.read_text())
    rr = next(i for i in card["inputs"] if i["name"] == "rr")
    assert rr["features"] == list(RR_FEATURES) and rr["shape"] == ["batch", N_RR]
    sess = ort.InferenceSession(str(MODEL_DIR / card["file"]), providers=["CPUExecutionProvider"])
    dims = {i.name: i.shape for i in sess.get_inputs()}
    assert dims["rr"][1] == N_RR and dims["morph"][1:] == [2, N_MORPH]
