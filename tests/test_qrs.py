"""Streaming QRS detector: oracles, chunk invariance, robustness, sample rates, real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from telediag.dsp import _qrs_kernels as K
from telediag.dsp.qrs import QRSDetector, detect, detect_with_confirm
from telediag.errors import DSPError
from telediag.evaluation.ec57 import gross, match_beats, reference_beats, vf_intervals


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------
def synthetic_ecg(
    fs: float, seconds: float, seed: int = 0, noise: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """Sum-of-Gaussians PQRST beats with variable RR, baseline wander and noise (mV).

    Returns the signal and the R-peak sample indices.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    x = np.zeros(n)
    beats = []
    tr = 0.5
    while tr < seconds - 0.6:
        amp = 1.0 + 0.2 * rng.standard_normal()
        for dt, a, w in ((-0.2, 0.12, 0.025), (-0.03, -0.1, 0.008), (0.0, 1.0, 0.01),
                         (0.03, -0.25, 0.009), (0.28, 0.3, 0.05)):
            x += amp * a * np.exp(-0.5 * ((t - tr - dt) / w) ** 2)
        beats.append(round(tr * fs))
        tr += 0.8 + 0.1 * rng.standard_normal()
    x += 0.3 * np.sin(2 * np.pi * 0.2 * t) + noise * rng.standard_normal(n)
    return x, np.asarray(beats)


def _data_dir() -> Path | None:
    env = os.environ.get("TELEDIAG_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base if (base / "mitdb").is_dir() else None


@pytest.fixture(scope="module")
def mitdb() -> Path:
    d = _data_dir()
    if d is None:
        pytest.skip("MIT-BIH data not found: set TELEDIAG_DATA or provide ../shared/data/mitdb")
    return d / "mitdb"


def _read(mitdb: Path, rec: str, seconds: float | None = None):  # type: ignore[no-untyped-def]
    from telediag.evaluation.wfdb_io import read_annotation, read_record

    r = read_record(mitdb / rec)
    a = read_annotation(mitdb / rec)
    x = r.signal
    ref = reference_beats(a)
    vf = vf_intervals(a, x.size)
    if seconds is not None:
        n = int(seconds * r.fs)
        x = x[:n]
        ref = ref[ref < n]
    return x, r.fs, ref, vf


def stream(det: QRSDetector, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out = []
    pos = 0
    for s in sizes:
        out.append(det.process(x[pos:pos + s]))
        pos += s
    out.append(det.process(x[pos:]))
    out.append(det.flush())
    return np.concatenate(out)


def random_chunks(n: int, rng: np.random.Generator, max_size: int) -> list[int]:
    sizes = []
    total = 0
    while total < n:
        s = int(rng.integers(0, max_size + 1))
        sizes.append(s)
        total += s
    return sizes


# --------------------------------------------------------------------------------------
# oracle tests of the front end
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs", [125.0, 360.0, 1000.0])
def test_front_end_matches_scipy_and_numpy(fs: float) -> None:
    x, _ = synthetic_ecg(fs, 6.0, seed=1)
    det = QRSDetector(fs)
    d = det._d
    w = int(d.kparams[K.P_W])
    bp, f = K.qrs_features(x, d.sos, d.zi_unit, w)
    bp_ref, _ = sps.sosfilt(d.sos, x, zi=d.zi_unit * x[0])
    np.testing.assert_allclose(bp, bp_ref, rtol=1e-12, atol=1e-12)
    sq = np.diff(bp_ref, prepend=0.0) ** 2
    f_ref = np.convolve(sq, np.ones(w))[: x.size]
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-12)
    # The streaming kernel's running integrator (ring buffer) agrees with the oracle.
    det.process(x)
    st = det.state
    ring = st.integ.size
    idx = np.arange(x.size - ring + 8, x.size)
    np.testing.assert_allclose(st.integ[idx % ring], f_ref[idx], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(st.bp[idx % ring], bp_ref[idx], rtol=1e-12, atol=1e-12)


def test_design_is_in_seconds() -> None:
    for fs in (125.0, 360.0, 2000.0):
        det = QRSDetector(fs)
        assert det.detection_delay_s < 0.55
        assert int(det._d.kparams[K.P_W]) == round(0.12 * fs)


# --------------------------------------------------------------------------------------
# synthetic behaviour
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0, 1000.0, 2000.0])
def test_synthetic_all_beats(fs: float) -> None:
    x, ref = synthetic_ecg(fs, 30.0, seed=2)
    beats = detect(x, fs)
    s = match_beats(ref, beats, fs)
    assert (s.fn, s.fp) == (0, 0)
    assert abs(s.mean_err_ms) < 8.0


def test_chunk_invariance_synthetic() -> None:
    fs = 360.0
    x, _ = synthetic_ecg(fs, 20.0, seed=3, noise=0.05)
    ref = detect(x, fs)
    rng = np.random.default_rng(7)
    for max_size in (1, 3, 50, 1000, 5000):
        got = stream(QRSDetector(fs), x, random_chunks(x.size, rng, max_size))
        np.testing.assert_array_equal(got, ref)


def test_confirmation_delay_bounded() -> None:
    fs = 360.0
    x, _ = synthetic_ecg(fs, 30.0, seed=4)
    det = QRSDetector(fs)
    b, c = det.process_with_confirm(x)
    assert b.size > 30
    assert np.all(c >= b)
    late = b > det.params.learn_s * fs  # the learning period is released at its end
    assert np.all((c - b)[late] <= det.detection_delay_s * fs)
    assert np.all(np.diff(b) > 0)


def test_inverted_polarity_identical() -> None:
    fs = 360.0
    x, _ = synthetic_ecg(fs, 20.0, seed=5)
    np.testing.assert_array_equal(detect(-x, fs), detect(x, fs))


def test_scale_invariance_and_low_amplitude() -> None:
    fs = 360.0
    x, ref = synthetic_ecg(fs, 20.0, seed=6)
    base = detect(x, fs)
    np.testing.assert_array_equal(detect(x * 2.0**-12, fs), base)  # exact: power of two
    low = detect(x * 1e-3, fs)  # 1 uV-scale QRS
    s = match_beats(ref, low, fs)
    assert (s.fn, s.fp) == (0, 0)


def test_constant_and_empty_signals() -> None:
    for fs in (125.0, 360.0):
        assert detect(np.zeros(int(10 * fs)), fs).size == 0
        assert detect(np.full(int(10 * fs), 3.7), fs).size == 0
    det = QRSDetector(360.0)
    assert det.process(np.zeros(0)).size == 0
    assert det.process(np.array([1.0])).size == 0
    assert det.flush().size == 0
    assert detect(np.zeros(0), 360.0).size == 0


def test_nan_runs_no_crash_no_phantoms() -> None:
    fs = 360.0
    x, ref = synthetic_ecg(fs, 30.0, seed=8)
    y = x.copy()
    gaps = [
        (int(5 * fs), int(7.3 * fs)),
        (int(12 * fs), int(12 * fs) + 1),
        (int(15 * fs), int(15.05 * fs)),
        (int(22 * fs), int(26 * fs)),
    ]
    for a, b in gaps:
        y[a:b] = np.nan
    y[int(12 * fs)] = np.inf
    beats = detect(y, fs)
    # Nothing inside a gap, and beats well clear of the gaps are still found.
    for a, b in gaps:
        assert not np.any((beats >= a) & (beats < b))
    clear = np.ones(ref.size, dtype=bool)
    for a, b in gaps:
        clear &= ~((ref > a - 0.3 * fs) & (ref < b + 0.6 * fs))
    s = match_beats(ref[clear], beats, fs)
    assert s.fn == 0 and s.tp == int(clear.sum())
    unmatched = [t for t in beats if np.min(np.abs(ref - t)) > 0.15 * fs]
    assert unmatched == []
    # All-NaN input is fine too.
    assert detect(np.full(5000, np.nan), fs).size == 0


def test_int16_clipping_and_dtype() -> None:
    fs = 360.0
    x, ref = synthetic_ecg(fs, 20.0, seed=9)
    adc = np.clip(np.round(x * 200), -120, 120).astype(np.int16)  # R peaks saturate
    s = match_beats(ref, detect(adc, fs), fs)
    assert (s.fn, s.fp) == (0, 0)
    sat = np.clip(np.round(x * 30000), -32768, 32767).astype(np.int16)
    s = match_beats(ref, detect(sat, fs), fs)
    assert (s.fn, s.fp) == (0, 0)


def test_state_snapshot_round_trip() -> None:
    fs = 250.0
    x, _ = synthetic_ecg(fs, 20.0, seed=10)
    det = QRSDetector(fs)
    a = det.process(x[:2000])
    snap = det.state
    b = det.process(x[2000:])
    det2 = QRSDetector(fs)
    det2.state = snap
    np.testing.assert_array_equal(det2.process(x[2000:]), b)
    assert a.size + b.size > 0
    det.reset()
    np.testing.assert_array_equal(
        np.concatenate([det.process(x), det.flush()]), detect(x, fs)
    )


def test_validation_errors() -> None:
    with pytest.raises(DSPError, match="fs"):
        QRSDetector(100.0)
    with pytest.raises(DSPError, match="fs"):
        QRSDetector(float("nan"))
    with pytest.raises(DSPError, match="unknown"):
        QRSDetector(360.0, threshold=0.3)
    with pytest.raises(DSPError, match="refractory_s"):
        QRSDetector(360.0, refractory_s=0.0)
    with pytest.raises(DSPError, match="f_lo_hz"):
        QRSDetector(360.0, f_lo_hz=30.0, f_hi_hz=20.0)
    det = QRSDetector(360.0)
    with pytest.raises(DSPError, match="1-D"):
        det.process(np.zeros((10, 2)))
    with pytest.raises(DSPError, match="dtype"):
        det.process(np.zeros(10, dtype=complex))
    det.flush()
    with pytest.raises(DSPError, match="flushed"):
        det.process(np.zeros(10))
    with pytest.raises(DSPError, match="state"):
        det.state = "nope"  # type: ignore[assignment]


# --------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------
def test_chunk_invariance_real(mitdb: Path) -> None:
    x, fs, _, _ = _read(mitdb, "208", seconds=60.0)
    ref = detect(x, fs)
    assert ref.size > 60
    rng = np.random.default_rng(11)
    for max_size in (1, 7, 360, 4000):
        got = stream(QRSDetector(fs), x, random_chunks(x.size, rng, max_size))
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("fs_new", [125, 250, 500, 1000])
def test_resampled_record(mitdb: Path, fs_new: int) -> None:
    x, fs, ref, _ = _read(mitdb, "119", seconds=300.0)
    y = sps.resample_poly(x, fs_new, int(fs))
    ref_new = np.round(ref * fs_new / fs).astype(np.int64)
    s = match_beats(ref_new, detect(y, float(fs_new)), float(fs_new))
    assert s.se >= 0.995 and s.ppv >= 0.995, s
    assert abs(s.mean_err_ms) < 15.0


def test_inverted_real(mitdb: Path) -> None:
    x, fs, _, _ = _read(mitdb, "106", seconds=120.0)
    np.testing.assert_array_equal(detect(-x, fs), detect(x, fs))


@pytest.mark.slow
def test_mitdb_floor(mitdb: Path) -> None:
    """Regression floor on whole records (lead 0, 150 ms, VF episodes excluded)."""
    scores = {}
    for rec in ("101", "106", "119", "203", "208", "223"):
        x, fs, ref, vf = _read(mitdb, rec)
        beats, confirm = detect_with_confirm(x, fs)
        scores[rec] = match_beats(ref, beats, fs, exclude=vf)
        assert np.all(confirm >= beats)
        bound = QRSDetector(fs).detection_delay_s * fs
        late = beats > 2.0 * fs  # beats of the learning period are released at its end
        flushed = confirm == x.size - 1
        assert np.all((confirm - beats)[late & ~flushed] <= bound)
    g = gross(scores)
    assert g.se >= 0.995 and g.ppv >= 0.995, scores


def test_startup_step_does_not_blind_the_detector(tmp_path) -> None:  # noqa: ANN001
    """A recorder settling from 0 to its offset at switch-on (PhysioNet 2016 a0001's ECG
    jumps 0 -> 4.7 mV in 10 ms) must not set the signal level for the rest of the record."""
    fs = 500.0
    t = np.arange(int(60 * fs)) / fs
    beats_s = np.arange(0.7, 59.5, 0.9)
    x = np.zeros_like(t)
    for b in beats_s:  # 0.4 mV QRS-like spikes
        x += 0.4 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    x += 4.7 * np.clip(t / 0.01, 0, 1)  # the start-up step
    from telediag.dsp.qrs import detect

    found = detect(x, fs) / fs
    hit = sum(np.min(np.abs(found - b)) < 0.05 for b in beats_s)
    assert hit >= len(beats_s) - 1
    assert len(found) <= len(beats_s) + 1  # at most the step itself as a phantom
