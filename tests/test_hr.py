"""Tests for the EC13-style heart-rate meter (telediag.dsp.hr)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from telediag.dsp.hr import (
    HR_READING_DTYPE,
    HeartRateMeter,
    displayed_rate,
    heart_rate,
)
from telediag.errors import DSPError

BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def beat_train(fs: float, segments: list[tuple[float, float]], t0: float = 0.5) -> np.ndarray:
    """Beats for consecutive (rate_bpm, duration_s) segments, as integer sample indices."""
    times = [t0]
    for bpm, dur in segments:
        rr = 60.0 / bpm
        end = times[-1] + dur
        while times[-1] + rr <= end + 1e-9:
            times.append(times[-1] + rr)
    return np.round(np.asarray(times) * fs).astype(np.int64)


def alternating_train(fs: float, a: float, b: float, duration_s: float) -> np.ndarray:
    """Bigeminal train: intervals alternate a, b seconds."""
    times = [0.5]
    k = 0
    while times[-1] < duration_s:
        times.append(times[-1] + (a if k % 2 == 0 else b))
        k += 1
    return np.round(np.asarray(times) * fs).astype(np.int64)


def reference_readings(
    beats: np.ndarray, fs: float, n: int, rule: str, min_rr_s: float, asystole_s: float
) -> list[tuple[int, float]]:
    """Plain-Python oracle of the documented averaging rule."""
    min_rr = int(np.ceil(min_rr_s * fs))
    max_rr = int(np.ceil(asystole_s * fs))
    out: list[tuple[int, float]] = []
    hist: list[int] = []
    last = -1
    for b in beats.tolist():
        if last >= 0:
            rr = b - last
            if rr < min_rr:
                continue
            if rr > max_rr:
                hist = []
            else:
                hist.append(rr)
        last = b
        recent = hist[-n:]
        if len(recent) >= min(2, n):
            avg = float(np.median(recent)) if rule == "median" else float(np.mean(recent))
            out.append((b, 60.0 * fs / avg))
        else:
            out.append((b, float("nan")))
    return out


def response_time(
    beats: np.ndarray, fs: float, step_sample: int, new_bpm: float, **kw: object
) -> float:
    """Seconds from the step until the display stays within EC13 tolerance of the new rate.

    Tolerance: +/-10 % or +/-5 bpm, whichever is greater (EC13 heart-rate accuracy).
    """
    q = np.arange(step_sample, int(beats[-1]), max(1, int(fs // 100)), dtype=np.int64)
    disp = displayed_rate(beats, fs, q, **kw)  # type: ignore[arg-type]
    tol = max(5.0, 0.1 * new_bpm)
    bad = np.flatnonzero(~(np.abs(disp - new_bpm) <= tol))
    if bad.size == 0:
        return 0.0
    return float((q[bad[-1]] - step_sample) / fs) + 0.01


# --------------------------------------------------------------------------------------
# basic behaviour
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0, 1000.0])
@pytest.mark.parametrize("bpm", [30.0, 60.0, 80.0, 150.0, 200.0])
def test_constant_rate_any_fs(fs: float, bpm: float) -> None:
    beats = beat_train(fs, [(bpm, 30.0)])
    r = heart_rate(beats, fs)
    assert r.dtype == HR_READING_DTYPE
    assert np.all(np.isnan(r["hr_bpm"][:2]))
    # sample quantisation of the beat times is the only error
    assert np.allclose(r["hr_bpm"][3:], bpm, rtol=1.5 / (fs * 60.0 / bpm))


def test_readings_match_oracle_random_trains() -> None:
    rng = np.random.default_rng(42)
    fs = 360.0
    for rule in ("median", "mean"):
        for n in (1, 4, 7, 8):
            rr = rng.uniform(0.3, 1.4, 400)
            # double detections, pauses longer than asystole
            rr[rng.random(rr.size) < 0.05] = rng.uniform(0.01, 0.19)
            rr[rng.random(rr.size) < 0.01] = 5.0
            beats = np.round(np.cumsum(rr) * fs).astype(np.int64)
            got = heart_rate(beats, fs, n_intervals=n, rule=rule)  # type: ignore[arg-type]
            ref = reference_readings(beats, fs, n, rule, 0.2, 4.0)
            assert got["sample"].tolist() == [s for s, _ in ref]
            np.testing.assert_allclose(got["hr_bpm"], [h for _, h in ref], rtol=1e-12)


def test_chunk_invariance_any_grouping() -> None:
    rng = np.random.default_rng(7)
    fs = 250.0
    rr = rng.uniform(0.15, 1.6, 600)
    rr[::97] = 6.0
    beats = np.round(np.cumsum(rr) * fs).astype(np.int64)
    one = HeartRateMeter(fs)
    ref = one.update(beats)
    for _ in range(5):
        m = HeartRateMeter(fs)
        cuts = np.sort(rng.choice(np.arange(1, beats.size), size=40, replace=False))
        parts = [m.update(p) for p in np.split(beats, cuts)]
        parts.append(m.update(np.zeros(0, np.int64)))  # empty update is a no-op
        got = np.concatenate(parts)
        assert got.tobytes() == ref.tobytes()
        assert m.state.last_beat == one.state.last_beat
        assert m.state.n_rejected == one.state.n_rejected
        assert np.array_equal(m.state.rr_buf, one.state.rr_buf)


def test_at_equals_displayed_rate() -> None:
    rng = np.random.default_rng(3)
    fs = 360.0
    rr = rng.uniform(0.4, 1.2, 80)
    rr[40] = 3.0  # a long pause: decaying display
    beats = np.round(np.cumsum(rr) * fs).astype(np.int64)
    m = HeartRateMeter(fs)
    queries: list[int] = []
    shown: list[float] = []
    for i, b in enumerate(beats):
        m.update(beats[i : i + 1])
        nxt = beats[i + 1] if i + 1 < beats.size else b + 6 * int(fs)
        for q in np.linspace(b, nxt - 1, 5).astype(np.int64):
            queries.append(int(q))
            shown.append(m.at(int(q)))
    offline = displayed_rate(beats, fs, np.asarray(queries, np.int64))
    np.testing.assert_array_equal(np.asarray(shown), offline)


# --------------------------------------------------------------------------------------
# EC13 behaviour
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "n", "new_bpm"),
    [("median", 8, 120.0), ("median", 8, 40.0), ("mean", 4, 120.0), ("mean", 4, 40.0)],
)
@pytest.mark.parametrize("fs", [250.0, 360.0])
def test_step_response_within_10s(rule: str, n: int, new_bpm: float, fs: float) -> None:
    """EC13:2002 4.1.2.1 f): steps 80->120 and 80->40 bpm displayed within 10 s."""
    beats = beat_train(fs, [(80.0, 30.0), (new_bpm, 30.0)])
    step = int(beat_train(fs, [(80.0, 30.0)])[-1])  # last beat at the old rate
    t = response_time(beats, fs, step, new_bpm, n_intervals=n, rule=rule)
    assert t < 10.0, f"{rule}/{n}: {t:.2f} s"
    # and the old rate is displayed right before the step
    assert displayed_rate(beats, fs, [step], n_intervals=n, rule=rule)[0] == pytest.approx(
        80.0, abs=1.0
    )


def test_step_response_figures_defaults() -> None:
    """Documented figures for the default meter (median of 8): 2.5 s up, 7.5 s down."""
    fs = 360.0
    step = int(beat_train(fs, [(80.0, 30.0)])[-1])
    up = response_time(beat_train(fs, [(80.0, 30.0), (120.0, 30.0)]), fs, step, 120.0)
    down = response_time(beat_train(fs, [(80.0, 30.0), (40.0, 30.0)]), fs, step, 40.0)
    assert 2.0 < up <= 2.6
    assert 7.0 < down <= 7.6


@pytest.mark.parametrize(
    ("name", "a", "b", "expected"),
    [
        # EC13 figure 3: expected displayed rate after 20 s (4.1.2.1 e)
        ("3a ventricular bigeminy", 0.50, 1.00, 80.0),
        ("3b slow alternating ventricular bigeminy", 0.80, 1.20, 60.0),
        ("3c rapid alternating ventricular bigeminy", 0.40, 0.60, 120.0),
        ("3d bidirectional systoles", 0.62, 0.7133, 90.0),
    ],
)
@pytest.mark.parametrize(("rule", "n"), [("median", 8), ("mean", 8), ("mean", 4)])
def test_irregular_rhythm_fig3(
    name: str, a: float, b: float, expected: float, rule: str, n: int
) -> None:
    fs = 360.0
    beats = alternating_train(fs, a, b, 40.0)
    q = np.arange(int(20.5 * fs), int(beats[-1]), 36, dtype=np.int64)
    disp = displayed_rate(beats, fs, q, n_intervals=n, rule=rule)  # type: ignore[arg-type]
    assert np.all(np.abs(disp - expected) <= 1.0), f"{name}: {np.unique(disp.round(1))}"


def test_odd_median_flaps_on_bigeminy() -> None:
    """Documented pitfall: an odd median window alternates between the two rates."""
    fs = 360.0
    beats = alternating_train(fs, 0.5, 1.0, 40.0)
    hr = heart_rate(beats, fs, n_intervals=7)["hr_bpm"][20:]
    assert np.nanmax(hr) > 110.0 and np.nanmin(hr) < 65.0


def test_double_detections_are_merged_not_counted() -> None:
    """Split-QRS / pacer-spike double detections (< 200 ms) never raise the rate."""
    fs = 500.0
    beats = beat_train(fs, [(80.0, 60.0)])
    extra = beats + int(0.12 * fs)  # every beat detected twice, 120 ms apart
    both = np.sort(np.concatenate([beats, extra]))
    m = HeartRateMeter(fs)
    r = m.update(both)
    assert m.state.n_rejected == beats.size
    assert r.size == beats.size
    assert np.allclose(r["hr_bpm"][3:], 80.0, atol=0.2)


def test_occasional_tall_t_detection_rejected_by_median() -> None:
    """One T wave detected (300 ms after R) in every 10 beats: display stays at 80."""
    fs = 360.0
    beats = beat_train(fs, [(80.0, 60.0)])
    t_waves = beats[5::10] + int(0.3 * fs)
    both = np.sort(np.concatenate([beats, t_waves]))
    q = np.arange(int(10 * fs), int(both[-1]), 36, dtype=np.int64)
    disp = displayed_rate(both, fs, q)
    assert np.all(np.abs(disp - 80.0) <= 5.0)


def test_asystole_display() -> None:
    fs = 250.0
    beats = beat_train(fs, [(60.0, 20.0)])
    m = HeartRateMeter(fs)
    assert np.isnan(m.at(0))  # nothing yet: no rate
    m.update(beats)
    last = int(beats[-1])
    assert m.at(last) == pytest.approx(60.0)
    assert m.at(last + int(1.9 * fs)) == pytest.approx(60.0)  # held
    d3 = m.at(last + int(3.0 * fs))  # decays once the pause exceeds 2 RR
    assert d3 == pytest.approx(20.0)
    assert m.at(last + int(4.0 * fs)) == 0.0  # asystole after 4 s
    assert m.at(last + int(60.0 * fs)) == 0.0
    # the rhythm resumes: the history before the standstill is dropped
    resume = last + int(8 * fs) + beat_train(fs, [(100.0, 10.0)], t0=0.0)
    r = m.update(resume)
    assert np.isnan(r["hr_bpm"][0]) and np.isnan(r["hr_bpm"][1])
    assert r["hr_bpm"][2] == pytest.approx(100.0, abs=0.5)


def test_no_valid_rate_before_two_intervals() -> None:
    m = HeartRateMeter(360.0)
    m.update([100])
    assert np.isnan(m.at(200))
    assert m.at(100 + 4 * 360) == 0.0  # a beat, then 4 s of nothing: asystole


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fs": 0.0}, "fs"),
        ({"fs": float("nan")}, "fs"),
        ({"fs": 360.0, "n_intervals": 0}, "n_intervals"),
        ({"fs": 360.0, "n_intervals": 2.5}, "n_intervals"),
        ({"fs": 360.0, "rule": "mode"}, "rule"),
        ({"fs": 360.0, "min_rr_s": -1.0}, "min_rr_s"),
        ({"fs": 360.0, "asystole_s": 0.1}, "asystole_s"),
        ({"fs": 360.0, "min_intervals": 9}, "min_intervals"),
        ({"fs": 360.0, "decay_factor": 0.5}, "decay_factor"),
    ],
)
def test_parameter_validation(kwargs: dict, match: str) -> None:
    fs = kwargs.pop("fs")
    with pytest.raises(DSPError, match=match):
        HeartRateMeter(fs, **kwargs)


def test_input_validation() -> None:
    m = HeartRateMeter(360.0)
    with pytest.raises(DSPError, match="integer"):
        m.update(np.array([1.0, 2.0]))
    with pytest.raises(DSPError, match="non-decreasing"):
        m.update(np.array([10, 5]))
    with pytest.raises(DSPError, match="1-D"):
        m.update(np.zeros((2, 2), np.int64))
    with pytest.raises(DSPError, match=">= 0"):
        m.update(np.array([-1]))
    m.update(np.array([1000]))
    with pytest.raises(DSPError, match="back in time"):
        m.update(np.array([999]))
    with pytest.raises(DSPError, match="sample must be"):
        m.at(10)
    assert m.update([]).size == 0


# --------------------------------------------------------------------------------------
# real data: MIT-BIH reference beats
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mitdb_dir() -> Path:
    d = (
        Path(
            os.environ.get(
                "TELEDIAG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
            )
        )
        / "mitdb"
    )
    if not (d / "119.atr").exists():
        pytest.skip(f"MIT-BIH data not found under {d} (set TELEDIAG_DATA)")
    return d


@pytest.mark.data
@pytest.mark.parametrize("record", ["101", "119", "201", "208"])
def test_mitdb_rate_tracks_beat_count(mitdb_dir: Path, record: str) -> None:
    """On reference beats (sinus, bigeminy 119, AF 201, PVC-rich 208), the displayed rate
    every 5 s agrees with the beat count over the preceding 8 intervals."""
    wfdb = pytest.importorskip("wfdb")
    ann = wfdb.rdann(str(mitdb_dir / record), "atr")
    keep = np.array([s in BEAT_SYMBOLS for s in ann.symbol])
    beats = np.asarray(ann.sample)[keep].astype(np.int64)
    fs = float(ann.fs)
    q = np.arange(int(20 * fs), int(beats[-1]), int(5 * fs), dtype=np.int64)
    disp = displayed_rate(beats, fs, q)
    # reference: 8 intervals counted over their time span (the true beat rate)
    idx = np.searchsorted(beats, q, side="right") - 1
    span = (beats[idx] - beats[idx - 8]) / fs
    ref = 8 * 60.0 / span
    ok = np.isfinite(disp) & (span < 12.0)
    err = np.abs(disp[ok] - ref[ok])
    assert ok.mean() > 0.95
    assert np.median(err) < 3.0
    assert np.quantile(err, 0.95) < 15.0
