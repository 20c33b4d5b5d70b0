"""Per-cycle CNN of the PCG abnormality classifier (issue 16): inputs, card, runtime.

Fast (no training).  The shipped ``pcg_abnormal_cnn.onnx`` / ``card_cnn.json`` are checked when
present; the real-data test uses PhysioNet/CinC 2016 a0001 and skips without the data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import signal
from scipy.io import wavfile

from telediag.errors import DSPError, ModelError
from telediag.models.pcg_abnormal import CNN_CARD_PATH, PCGClassifier
from telediag.models.pcg_abnormal.cnn_spec import (
    N_BANDS,
    N_FRAMES,
    augment_log_power,
    cycle_log_power,
    normalise_recording,
)

HAVE_CNN = CNN_CARD_PATH.is_file()


def _heart(fs: int, seconds: float = 12.0, seed: int = 0, murmur: float = 0.0) -> np.ndarray:
    """Seeded toy heart sound at 72 bpm (S1 50 Hz, S2 70 Hz bursts), optional systolic noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    x = 0.01 * rng.standard_normal(t.size)
    period = 60.0 / 72.0
    for k in range(int(seconds / period)):
        for onset, f0, amp in ((0.1, 50.0, 1.0), (0.42, 70.0, 0.7)):
            m = (t >= k * period + onset) & (t < k * period + onset + 0.1)
            x[m] += amp * np.sin(2 * np.pi * f0 * (t[m] - t[m][0])) * np.hanning(m.sum())
        if murmur:
            m = (t >= k * period + 0.22) & (t < k * period + 0.4)
            x[m] += murmur * rng.standard_normal(m.sum())
    return x


def test_cycle_images_shape_and_state_alignment() -> None:
    cyc, q = cycle_log_power(_heart(2000), 2000)
    assert cyc.ndim == 3 and cyc.shape[1:] == (N_BANDS, N_FRAMES) and cyc.shape[0] >= 8
    assert np.isfinite(cyc).all() and q > 0.3
    z = normalise_recording(cyc)
    s1 = z[:, :, :8].mean()
    systole = z[:, :, 10:22].mean()
    assert s1 > systole + 0.5  # S1 columns carry the sound, mid-systole is quiet


def test_systolic_murmur_fills_the_systole_columns() -> None:
    clean = normalise_recording(cycle_log_power(_heart(2000, seed=1), 2000)[0])
    mur = normalise_recording(cycle_log_power(_heart(2000, seed=1, murmur=0.2), 2000)[0])
    assert mur[:, :, 10:22].mean() > clean[:, :, 10:22].mean() + 0.3


def test_normalised_images_are_gain_and_fixed_eq_invariant() -> None:
    x = _heart(4000, seed=2, murmur=0.1)
    a = normalise_recording(cycle_log_power(x, 4000)[0])
    b = normalise_recording(cycle_log_power(37.0 * x, 4000)[0])
    np.testing.assert_allclose(a, b, atol=1e-4)
    # a gentle fixed tilt (first-order high-shelf-like FIR) moves the bands by constants only
    eq = signal.lfilter([1.0, -0.3], [1.0], x)
    c = normalise_recording(cycle_log_power(eq, 4000)[0])
    if c.shape == a.shape:
        assert float(np.median(np.abs(c - a))) < 0.1


def test_augmentation_is_finite_and_random() -> None:
    cyc, _ = cycle_log_power(_heart(2000, seed=3), 2000)
    rng = np.random.default_rng(0)
    a1 = augment_log_power(cyc, rng)
    a2 = augment_log_power(cyc, rng)
    assert a1.shape == cyc.shape and np.isfinite(a1).all()
    assert not np.allclose(a1, a2)


def test_bad_audio_is_dsp_error() -> None:
    with pytest.raises(DSPError, match="at least"):
        cycle_log_power(np.ones(100), 2000)
    with pytest.raises(DSPError, match="finite"):
        cycle_log_power(np.full(8000, np.nan), 2000)


@pytest.mark.skipif(not HAVE_CNN, reason="no card_cnn.json shipped")
def test_cnn_card_matches_file_and_contract() -> None:
    card = json.loads(CNN_CARD_PATH.read_text())
    path = CNN_CARD_PATH.with_name(card["file"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    assert card["inputs"]["shape"] == ["N", N_BANDS, N_FRAMES]
    assert path.stat().st_size < 1_000_000  # small enough for the live stage
    assert 0.0 <= card["combine"]["w_cnn"] <= 1.0 and card["combine"]["slope"] > 0
    readme = (CNN_CARD_PATH.parent / "README.md").read_text()
    assert card["sha256"] in readme


@pytest.mark.skipif(not HAVE_CNN, reason="no card_cnn.json shipped")
def test_cnn_runtime_batch_and_shape_errors() -> None:
    clf = PCGClassifier().load()
    z = normalise_recording(cycle_log_power(_heart(2000, seed=4), 2000)[0])
    batch = clf.cycle_logits(z)
    one = np.array([clf.cycle_logits(z[i : i + 1])[0] for i in range(z.shape[0])])
    np.testing.assert_allclose(batch, one, rtol=1e-4, atol=1e-5)
    assert clf.cycle_logits(np.zeros((0, N_BANDS, N_FRAMES))).shape == (0,)
    with pytest.raises(ModelError, match="cycles must have shape"):
        clf.cycle_logits(np.zeros((2, N_BANDS + 1, N_FRAMES)))


@pytest.mark.skipif(not HAVE_CNN, reason="no card_cnn.json shipped")
def test_cnn_card_sha_mismatch_is_model_error(tmp_path: Path) -> None:
    card = json.loads(CNN_CARD_PATH.read_text())
    (tmp_path / card["file"]).write_bytes(
        CNN_CARD_PATH.with_name(card["file"]).read_bytes() + b"\0")
    (tmp_path / "card_cnn.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="sha256"):
        PCGClassifier(cnn_card_path=tmp_path / "card_cnn.json").load()
    (tmp_path / card["file"]).unlink()
    with pytest.raises(ModelError, match="not found"):
        PCGClassifier(cnn_card_path=tmp_path / "card_cnn.json").load()


@pytest.mark.skipif(not HAVE_CNN, reason="no card_cnn.json shipped")
def test_predict_combines_cnn_and_features_on_a_real_recording(shared_data: Path) -> None:
    wav = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not wav.is_file():
        pytest.skip(f"{wav} not found")
    fs, x = wavfile.read(wav)
    clf = PCGClassifier().load()
    d = clf.predict_details(x, int(fs))
    assert d["p_cnn"] is not None and 0.0 <= d["p_cnn"] <= 1.0
    comb = clf.cnn_card["combine"]
    z_cnn = np.log(d["p_cnn"] / (1.0 - d["p_cnn"]))
    z_f = np.log(d["p_features"] / (1.0 - d["p_features"]))
    want = 1.0 / (1.0 + np.exp(-comb["slope"] * (comb["w_cnn"] * z_cnn
                                                  + comb["w_features"] * z_f)))
    assert d["abnormal_prob"] == pytest.approx(want, rel=1e-5)
    assert d["label"] == ("abnormal" if d["abnormal_prob"] >= 0.5 else "normal")


def test_range_normalisation_cancels_the_log_contrast_scale() -> None:
    """``"range"``: per-band offsets *and* a common scale of the log contrast (a device with
    a different dynamic range / noise floor, to first order) cancel; ``"median"`` keeps
    the scale; an unknown mode is an error."""
    L = cycle_log_power(_heart(2000, seed=5, murmur=0.1), 2000)[0]
    off = np.linspace(-2.0, 1.0, L.shape[1], dtype=np.float32)[None, :, None]
    L2 = (0.6 * L + off).astype(np.float32)
    a, b = normalise_recording(L, "range"), normalise_recording(L2, "range")
    np.testing.assert_allclose(a, b, atol=1e-4)
    m1, m2 = normalise_recording(L), normalise_recording(L2)
    np.testing.assert_allclose(0.6 * m1, m2, atol=1e-4)  # median mode: offsets only
    assert not np.allclose(m1, m2, atol=1e-2)
    with pytest.raises(ValueError, match="normalisation"):
        normalise_recording(L, "zscore")
