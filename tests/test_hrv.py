"""Tests for RR series and rolling time-domain HRV (telediag.dsp.hrv)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from telediag.dsp.hrv import (
    HRV_DTYPE,
    HRVMeter,
    normal_from_symbols,
    rolling_hrv,
    rr_series,
    time_domain,
)
from telediag.errors import DSPError

BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")
FIELDS = ("mean_nn_ms", "sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm")


# --------------------------------------------------------------------------------------
# plain-numpy oracle of the documented definitions
# --------------------------------------------------------------------------------------
def oracle_classify(
    beats: np.ndarray, normal: np.ndarray, fs: float, lo: float = 0.3, hi: float = 2.0, rel=0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rr = np.diff(beats)
    ok = normal[:-1] & normal[1:] & (rr >= np.ceil(lo * fs)) & (rr <= np.floor(hi * fs))
    nn = np.zeros_like(ok)
    nn[1:] = ok[1:] & ok[:-1] & (np.abs(rr[1:] - rr[:-1]) <= rel * rr[:-1])
    cons = np.zeros_like(nn)
    cons[1:] = nn[1:] & nn[:-1]
    return rr, nn, cons


def oracle_rolling(
    beats: np.ndarray, normal: np.ndarray, fs: float, window_s: float, min_nn: int = 2
) -> np.ndarray:
    rr, nn, cons = oracle_classify(beats, normal, fs)
    rr_ms = rr * 1000.0 / fs
    end = beats[1:]
    w = int(round(window_s * fs))
    rows = np.full((rr.size, 5), np.nan)
    for i in range(rr.size):
        lo = end[i] - w
        inwin = (end > lo) & (end <= end[i])
        x = rr_ms[nn & inwin]
        j = np.flatnonzero(cons & inwin)
        j = j[j >= 1]
        j = j[end[j - 1] > lo]
        d = rr_ms[j] - rr_ms[j - 1]
        if x.size >= min_nn:
            rows[i, 0] = x.mean()
            rows[i, 1] = x.std(ddof=1) if x.size >= 2 else np.nan
            rows[i, 4] = 60000.0 / x.mean()
            if d.size:
                rows[i, 2] = np.sqrt(np.mean(d**2))
                rows[i, 3] = 100.0 * np.mean(np.abs(d) > 50.0)
    return rows


def random_beats(rng: np.random.Generator, fs: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random RR series with slow drift, ectopics, artefacts and labels."""
    base = 0.8 + 0.15 * np.sin(np.arange(n) / 30.0)
    rr = base * (1 + 0.06 * rng.standard_normal(n))
    ect = rng.random(n) < 0.05
    rr[ect] *= 0.6
    rr[rng.random(n) < 0.01] = 2.5  # out-of-range pause
    rr[rng.random(n) < 0.01] = 0.2  # too short
    beats = np.round(np.cumsum(rr) * fs).astype(np.int64)
    normal = ~(ect | (rng.random(n) < 0.03))
    return beats, normal


# --------------------------------------------------------------------------------------
# oracle and invariance tests
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fs", [250.0, 360.0, 1000.0])
@pytest.mark.parametrize("window_s", [10.0, 60.0, 300.0])
def test_rolling_matches_numpy_oracle(fs: float, window_s: float) -> None:
    rng = np.random.default_rng(int(fs + window_s))
    beats, normal = random_beats(rng, fs, 700)
    got = rolling_hrv(beats, fs, normal, window_s=window_s)
    assert got.dtype == HRV_DTYPE
    assert got.size == beats.size - 1
    np.testing.assert_array_equal(got["sample"], beats[1:])
    ref = oracle_rolling(beats, normal, fs, window_s)
    for k, name in enumerate(FIELDS):
        np.testing.assert_allclose(got[name], ref[:, k], rtol=1e-10, atol=1e-9, err_msg=name)


def test_unlabelled_matches_oracle() -> None:
    rng = np.random.default_rng(11)
    fs = 500.0
    beats, _ = random_beats(rng, fs, 500)
    got = rolling_hrv(beats, fs, window_s=120.0)
    ref = oracle_rolling(beats, np.ones(beats.size, bool), fs, 120.0)
    for k, name in enumerate(FIELDS):
        np.testing.assert_allclose(got[name], ref[:, k], rtol=1e-10, atol=1e-9, err_msg=name)


def test_streaming_equals_offline_any_chunking() -> None:
    rng = np.random.default_rng(5)
    fs = 360.0
    beats, normal = random_beats(rng, fs, 900)
    ref = rolling_hrv(beats, fs, normal, window_s=60.0)
    for _ in range(4):
        m = HRVMeter(fs, window_s=60.0)
        cuts = np.sort(rng.choice(np.arange(1, beats.size), size=60, replace=False))
        rows = [
            m.update(b, n)
            for b, n in zip(np.split(beats, cuts), np.split(normal, cuts), strict=True)
        ]
        rows.append(m.update(np.zeros(0, np.int64)))
        assert np.concatenate(rows).tobytes() == ref.tobytes()


def test_rr_series_and_whole_record_summary_agree_with_oracle() -> None:
    rng = np.random.default_rng(8)
    fs = 250.0
    beats, normal = random_beats(rng, fs, 400)
    s = rr_series(beats, fs, normal)
    rr, nn, cons = oracle_classify(beats, normal, fs)
    np.testing.assert_array_equal(s.nn, nn)
    np.testing.assert_array_equal(s.consecutive, cons)
    np.testing.assert_allclose(s.rr_ms, rr * 1000.0 / fs)
    td = time_domain(s)
    # a window longer than the record gives the whole-record values in the last row
    last = rolling_hrv(beats, fs, normal, window_s=1e6)[-1]
    assert td.n_nn == last["n_nn"] and td.n_diff == last["n_diff"]
    for name in FIELDS:
        assert getattr(td, name) == pytest.approx(float(last[name]), rel=1e-10)
    x = s.rr_ms[s.nn]
    assert td.sdnn_ms == pytest.approx(float(np.std(x, ddof=1)))


# --------------------------------------------------------------------------------------
# definitions on hand-made series
# --------------------------------------------------------------------------------------
def test_alternating_series_known_values() -> None:
    fs = 1000.0
    rr = np.tile([800, 850], 50)
    beats = np.concatenate([[0], np.cumsum(rr)]).astype(np.int64)
    last = rolling_hrv(beats, fs, window_s=1000.0)[-1]
    assert last["rmssd_ms"] == pytest.approx(50.0)
    assert last["pnn50"] == 0.0  # NN50 counts differences of *more than* 50 ms
    # the first interval has no predecessor and is not NN
    assert last["mean_nn_ms"] == pytest.approx(np.mean(rr[1:]))
    assert last["mean_hr_bpm"] == pytest.approx(60000.0 / np.mean(rr[1:]))
    assert last["sdnn_ms"] == pytest.approx(np.std(rr[1:], ddof=1))
    rr2 = np.tile([800, 860], 50)
    beats2 = np.concatenate([[0], np.cumsum(rr2)]).astype(np.int64)
    assert rolling_hrv(beats2, fs, window_s=1000.0)[-1]["pnn50"] == 100.0


def test_labelled_ectopic_excludes_adjacent_intervals() -> None:
    fs = 1000.0
    beats = np.cumsum([0, 800, 800, 800, 500, 1100, 800, 800, 800]).astype(np.int64)
    syms = ["N", "N", "N", "N", "V", "N", "N", "N", "N"]
    s = rr_series(beats, fs, syms)
    # intervals: 1st has no predecessor; N-V and V-N excluded; the one after has an
    # excluded predecessor
    assert s.nn.tolist() == [False, True, True, False, False, False, True, True]
    assert s.consecutive.tolist() == [False, False, True, False, False, False, False, True]
    # the same rhythm unlabelled: the percentage filter catches coupling and pause
    s2 = rr_series(beats, fs)
    assert s2.nn.tolist() == [False, True, True, False, False, False, True, True]


def test_window_eviction() -> None:
    fs = 100.0
    # 20 beats at 1.0 s, then 20 at 0.9 s: a 5-s window only sees the recent ones
    rr = np.r_[np.full(20, 100), np.full(20, 90)]
    beats = np.cumsum(np.r_[0, rr]).astype(np.int64)
    rows = rolling_hrv(beats, fs, window_s=5.0)
    assert rows[-1]["mean_nn_ms"] == pytest.approx(900.0)
    assert rows[-1]["n_nn"] == 6  # ends s, s - 0.9, ..., s - 4.5 lie in (s - 5 s, s]
    assert rows[-1]["sdnn_ms"] == 0.0


def test_nan_until_enough_nn() -> None:
    rows = rolling_hrv([0, 360, 720], 360.0)
    assert np.isnan(rows["sdnn_ms"]).all() and np.isnan(rows["rmssd_ms"]).all()
    rows = rolling_hrv([0, 360, 720, 1080], 360.0, min_nn=1)
    assert rows["mean_nn_ms"][-1] == pytest.approx(1000.0)


def test_normal_from_symbols() -> None:
    assert normal_from_symbols("NLRVAe").tolist() == [True, True, True, False, False, False]
    assert normal_from_symbols("NV", normal="V").tolist() == [False, True]


def test_validation() -> None:
    with pytest.raises(DSPError, match="fs"):
        HRVMeter(0.0)
    with pytest.raises(DSPError, match="window_s"):
        HRVMeter(360.0, window_s=-1.0)
    with pytest.raises(DSPError, match="max_rr_s"):
        HRVMeter(360.0, min_rr_s=1.0, max_rr_s=0.5)
    with pytest.raises(DSPError, match="min_nn"):
        HRVMeter(360.0, min_nn=0)
    m = HRVMeter(360.0)
    with pytest.raises(DSPError, match="strictly increasing"):
        m.update([5, 5])
    with pytest.raises(DSPError, match="labels"):
        m.update([1, 2], labels=[True])
    with pytest.raises(DSPError, match="labels"):
        m.update([1, 2], labels=np.array([1.0, 2.0]))
    m.update([100])
    with pytest.raises(DSPError, match="after the last beat"):
        m.update([100])


# --------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mitdb_dir() -> Path:
    root = os.environ.get(
        "TELEDIAG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
    d = Path(root) / "mitdb"
    if not (d / "119.atr").exists():
        pytest.skip(f"MIT-BIH data not found under {d} (set TELEDIAG_DATA)")
    return d


@pytest.mark.data
@pytest.mark.parametrize("record", ["106", "119"])
def test_mitdb_labelled_beats_oracle_and_ectopy(mitdb_dir: Path, record: str) -> None:
    """Real beat series with PVCs: streaming equals the oracle, and labels matter."""
    wfdb = pytest.importorskip("wfdb")
    ann = wfdb.rdann(str(mitdb_dir / record), "atr")
    keep = np.array([s in BEAT_SYMBOLS for s in ann.symbol])
    beats = np.asarray(ann.sample)[keep].astype(np.int64)
    syms = np.asarray(ann.symbol)[keep]
    normal = normal_from_symbols(syms)
    fs = float(ann.fs)
    m = HRVMeter(fs)
    rows = np.concatenate(
        [
            m.update(b, s)
            for b, s in zip(*(np.array_split(a, 7) for a in (beats, syms)), strict=True)
        ]
    )
    ref = oracle_rolling(beats, normal, fs, 300.0)
    for k, name in enumerate(FIELDS):
        np.testing.assert_allclose(rows[name], ref[:, k], rtol=1e-10, atol=1e-9, err_msg=name)
    # with PVCs treated as normal (and only the 20 % filter left) RMSSD rises
    no_labels = rolling_hrv(beats, fs)
    late = rows["sample"] > 300 * fs
    assert np.nanmedian(rows["rmssd_ms"][late]) <= np.nanmedian(no_labels["rmssd_ms"][late])
    assert np.all(rows["sdnn_ms"][late] < 300.0)
