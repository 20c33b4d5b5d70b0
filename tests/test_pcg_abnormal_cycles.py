"""Per-cycle CNN inputs of :mod:`telediag.models.pcg_abnormal.cycles` (Potes et al. 2016)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from test_pcg_abnormal import _synthetic_pcg  # the same seeded toy heart sound (reused, not copied)

from telediag.dsp.pcg import Segment, analyze_signal
from telediag.errors import DSPError
from telediag.models.pcg_abnormal.cycles import (
    BANDS_HZ,
    CYCLE_FRAMES,
    CYCLE_RATE,
    band_envelopes,
    cycle_inputs,
    normalise_cycles,
)


def test_band_envelope_picks_the_tone_band() -> None:
    t = np.arange(4000) / 1000.0
    for band, f0 in enumerate((35.0, 60.0, 130.0, 300.0)):
        env = band_envelopes(np.sin(2 * np.pi * f0 * t))
        assert env.shape == (len(BANDS_HZ), 4000 // (1000 // CYCLE_RATE))
        mid = env[:, 20:-20].mean(axis=1)
        assert int(np.argmax(mid)) == band
        assert mid[band] == pytest.approx(1.0, rel=0.15)  # unit sine -> envelope ~1


def test_cycle_inputs_shape_range_alignment_and_determinism() -> None:
    x = _synthetic_pcg(2000)
    c = cycle_inputs(x, 2000)
    assert c.dtype == np.float32 and c.ndim == 3 and c.shape[1:] == (4, CYCLE_FRAMES)
    assert c.shape[0] >= 6  # 10 s at 72 bpm: about 11 cycles
    assert np.all(c >= 0.0) and np.all(c <= 1.0 + 1e-6)
    # S1 (50 Hz, 45-80 Hz band) sits at the start of every cycle: its peak within 0.15 s
    first = np.argmax(c[:, 1, :], axis=1) / CYCLE_RATE
    assert np.median(first) < 0.15
    # zero after the next S1 onset (cycle 0.83 s long, input 2.5 s)
    assert np.all(c[:, :, int(1.0 * CYCLE_RATE):] == 0.0)
    np.testing.assert_array_equal(c, cycle_inputs(x, 2000))


def test_cycle_inputs_gain_invariant_and_given_segments() -> None:
    x = _synthetic_pcg(2000, seed=3)
    a = cycle_inputs(x, 2000)
    np.testing.assert_allclose(cycle_inputs(50.0 * x, 2000), a, atol=1e-5)
    segs = analyze_signal(x, 2000).segments
    np.testing.assert_array_equal(cycle_inputs(x, 2000, segments=segs), a)
    assert cycle_inputs(x, 2000, segments=[Segment(0.0, 10.0, "diastole")]).shape[0] == 0


def test_cycle_inputs_bad_input() -> None:
    with pytest.raises(DSPError, match="at least"):
        cycle_inputs(np.ones(100), 2000)
    with pytest.raises(DSPError, match="fs"):
        cycle_inputs(np.ones(10000), 100)


def test_cycle_inputs_real_record(shared_data: Path) -> None:
    p = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not p.exists():
        pytest.skip(f"PhysioNet/CinC 2016 recording not found: {p}")
    fs, x = wavfile.read(p)
    c = cycle_inputs(x, int(fs))
    assert c.shape[0] > 20 and np.isfinite(c).all()


def test_normalise_cycles_modes() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.0, 2.0, size=(5, 4, CYCLE_FRAMES))
    cyc = normalise_cycles(raw, "cycle")
    np.testing.assert_allclose(cyc.max(axis=2), 1.0, rtol=1e-6)
    rec = normalise_cycles(raw, "recording")
    ref = np.median(raw.max(axis=2), axis=0)  # numpy oracle
    np.testing.assert_allclose(rec, np.clip(raw / ref[None, :, None], 0, 4), rtol=1e-6)
    lg = normalise_cycles(raw, "recording_log")
    np.testing.assert_allclose(lg, 1 + np.log10(np.maximum(rec, 1e-3)) / 3, rtol=1e-5,
                               atol=1e-6)
    assert normalise_cycles(np.zeros((0, 4, CYCLE_FRAMES))).shape == (0, 4, CYCLE_FRAMES)
    with pytest.raises(DSPError, match="norm"):
        normalise_cycles(raw, "max")
    with pytest.raises(DSPError, match="shape"):
        normalise_cycles(raw[:, :3], "cycle")


def test_cnn_experiment_learns_a_toy_problem() -> None:
    pytest.importorskip("torch")
    from telediag.models.pcg_abnormal.cnn_cv import fit_cnn, predict_cnn

    rng = np.random.default_rng(1)
    n_rec, per = 40, 6
    y = (np.arange(n_rec) % 2).astype(np.int64)
    sets = np.array(["a", "b"] * (n_rec // 2))[np.argsort(rng.random(n_rec))]
    rec = np.repeat(np.arange(n_rec), per)
    C = rng.uniform(0.0, 0.2, size=(rec.size, 4, CYCLE_FRAMES)).astype(np.float32)
    C[y[rec] == 1, 2, 20:40] += 0.8  # "systolic murmur" in the 80-200 Hz band
    train = np.arange(n_rec) < 30
    net = fit_cnn(C, rec, y, sets, train, seed=0, epochs=4, per_epoch=512)
    p = predict_cnn(net, C, rec, ~train)
    assert p.shape == (10,) and np.all((p >= 0) & (p <= 1))
    assert np.mean((p >= 0.5) == (y[~train] == 1)) >= 0.9
