"""Tests for streaming ECG signal quality (telediag.dsp.quality)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as sps
from scipy.stats import kurtosis

from telediag.dsp.quality import (
    EVENT_KINDS,
    QualityEvent,
    QualityReport,
    SignalQuality,
    assess,
)
from telediag.errors import DSPError

# --------------------------------------------------------------------------------------
# synthetic fixtures
# --------------------------------------------------------------------------------------


def synth_ecg(
    fs: float, dur_s: float, bpm: float = 72.0, seed: int = 0, noise_mv: float = 0.01
) -> np.ndarray:
    """Gaussian-wave ECG (P, Q, R, S, T) in mV with jittered RR, baseline wander, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur_s * fs)) / fs
    x = np.zeros_like(t)
    waves = [
        (0.12, -0.18, 0.025),
        (-0.1, -0.03, 0.008),
        (1.2, 0.0, 0.010),
        (-0.25, 0.03, 0.010),
        (0.3, 0.28, 0.045),
    ]
    beat = 0.3
    while beat < dur_s:
        for amp, off, w in waves:
            x += amp * np.exp(-0.5 * ((t - beat - off) / w) ** 2)
        beat += 60.0 / bpm * (1 + 0.03 * rng.standard_normal())
    return x + 0.15 * np.sin(2 * np.pi * 0.2 * t) + noise_mv * rng.standard_normal(t.size)


def events_of(rep: QualityReport, kind: str, channel: int = 0) -> list[QualityEvent]:
    return [e for e in rep.events if e.kind == kind and e.channel == channel]


def messy_two_lead(fs: float, seed: int = 0) -> np.ndarray:
    """Two leads with every condition: clean, NaN run, flat, clipping, heavy noise."""
    rng = np.random.default_rng(seed)
    n = int(90 * fs)
    x = np.stack([synth_ecg(fs, 90, seed=seed), synth_ecg(fs, 90, 95, seed=seed + 1)], 1)
    x[int(10 * fs) : int(14.5 * fs), 0] = np.nan
    x[int(20 * fs) : int(28 * fs), 0] = 0.3 + 0.002 * rng.standard_normal(int(8 * fs))
    x[int(40 * fs) : int(55 * fs), 1] += 0.8 * rng.standard_normal(int(15 * fs))
    x[int(60 * fs) : int(70 * fs), 1] = np.clip(x[int(60 * fs) : int(70 * fs), 1], -0.2, 0.4)
    x[int(80 * fs) : n, 0] = -2.0
    return x


# --------------------------------------------------------------------------------------
# streaming == offline, oracles
# --------------------------------------------------------------------------------------
def test_chunk_invariance_bitwise() -> None:
    fs = 250.0
    x = messy_two_lead(fs)
    ref = assess(x, fs)
    rng = np.random.default_rng(1)
    for sizes in ([1] * 10 + [x.shape[0]], None, None, None):
        sq = SignalQuality(fs, 2)
        ups, evs = [], []
        i = 0
        while i < x.shape[0]:
            k = sizes.pop(0) if sizes else int(rng.integers(0, 700))
            u, e = sq.process(x[i : i + k])
            ups.append(u)
            evs.extend(e)
            i += k
        rep = QualityReport.from_stream(fs, sq.hop, 2, ups, evs)
        for name in ("block_start", "sqi", "usable", "features", "flags"):
            a = getattr(rep.sqi_rows, name)
            b = getattr(ref.sqi_rows, name)
            assert a.tobytes() == b.tobytes(), name
        assert rep.events == ref.events
    assert sq.assessed_until == (x.shape[0] // sq.hop) * sq.hop


def test_features_match_scipy_oracle() -> None:
    """Window kurtosis, slope kurtosis and band-power ratios equal scipy computations."""
    fs = 360.0
    rng = np.random.default_rng(2)
    x = synth_ecg(fs, 40) + 0.05 * rng.standard_normal(int(40 * fs))
    x += 0.3  # a DC offset: the filters start in steady state
    rep = assess(x, fs, window_s=8.0)
    sos_bp = sps.butter(2, [1.0, 40.0], "bandpass", fs=fs, output="sos")
    sos_q = sps.butter(2, [5.0, 15.0], "bandpass", fs=fs, output="sos")
    sos_h = sps.butter(2, 40.0, "highpass", fs=fs, output="sos")
    bp = sps.sosfilt(sos_bp, x, zi=sps.sosfilt_zi(sos_bp) * x[0])[0]
    q = sps.sosfilt(sos_q, x, zi=sps.sosfilt_zi(sos_q) * x[0])[0]
    h = sps.sosfilt(sos_h, x, zi=sps.sosfilt_zi(sos_h) * x[0])[0]
    d = np.diff(bp, prepend=bp[0])
    hop = 360
    for b in (0, 3, 7, 8, 20, 38):
        lo = max(0, (b - 7) * hop)
        s = slice(lo, (b + 1) * hop)
        f = rep.sqi_rows.features[b, 0]
        assert f[0] == pytest.approx(kurtosis(bp[s], fisher=False), rel=1e-7)
        assert f[1] == pytest.approx(kurtosis(d[s], fisher=False), rel=1e-7)
        assert f[2] == pytest.approx(np.sum(q[s] ** 2) / np.sum(bp[s] ** 2), rel=1e-9)
        assert f[3] == pytest.approx(np.sum(h[s] ** 2) / np.sum(bp[s] ** 2), rel=1e-9)
        assert f[4] == 0.0


@pytest.mark.parametrize("fs", [125.0, 250.0, 360.0, 500.0, 1000.0])
def test_clean_synthetic_scores_high_at_any_fs(fs: float) -> None:
    rep = assess(synth_ecg(fs, 40), fs)
    assert np.all(rep.sqi_rows.sqi > 0.9)
    assert rep.sqi_rows.usable.all()
    assert rep.events == []


def test_white_noise_is_heavy_noise() -> None:
    fs = 360.0
    rng = np.random.default_rng(4)
    x = synth_ecg(fs, 60)
    x[int(20 * fs) : int(40 * fs)] += 0.6 * rng.standard_normal(int(20 * fs))
    rep = assess(x, fs)
    ev = events_of(rep, "heavy_noise")
    assert len(ev) == 1
    assert 20 * fs <= ev[0].onset <= 24 * fs
    assert ev[0].end is not None and 40 * fs <= ev[0].end <= 50 * fs
    beats_noisy = np.arange(int(25 * fs), int(39 * fs), int(fs))
    beats_clean = np.arange(int(52 * fs), int(59 * fs), int(fs))
    assert not rep.usable_mask(beats_noisy).any()
    assert rep.usable_mask(beats_clean).all()


# --------------------------------------------------------------------------------------
# lead and ADC events
# --------------------------------------------------------------------------------------
def test_nan_run_is_leads_off_with_block_boundaries() -> None:
    fs = 250.0
    x = synth_ecg(fs, 40)
    x[int(10 * fs) : int(16 * fs)] = np.nan
    rep = assess(x, fs)
    ev = events_of(rep, "leads_off")
    assert ev == [QualityEvent("leads_off", 0, int(10 * fs), int(16 * fs))]
    blk = rep.sqi_rows.block_start
    inside = (blk >= 10 * fs) & (blk < 16 * fs)
    assert np.all(rep.sqi_rows.sqi[inside, 0] == 0.0)
    assert not rep.usable_mask(np.array([int(12 * fs)])).any()


def test_constant_lead_is_leads_off_and_rails() -> None:
    fs = 250.0
    x = synth_ecg(fs, 30)
    x[int(5 * fs) : int(12 * fs)] = 0.7  # exactly constant
    rep = assess(x, fs)
    assert events_of(rep, "leads_off") == [QualityEvent("leads_off", 0, int(5 * fs), int(12 * fs))]
    # pinned to a rail with a few jittering samples: still leads-off via the rail rule
    y = np.round(synth_ecg(fs, 30) * 200).astype(np.int16)
    y[int(5 * fs) : int(12 * fs)] = 2047
    y[int(5 * fs) + 3 :: 50][: int(7 * fs) // 50 - 1] = 2046
    rep = assess(y, fs, units_per_mv=200.0, adc_min=-2048, adc_max=2047)
    ev = events_of(rep, "leads_off")
    assert len(ev) == 1 and ev[0].onset == int(5 * fs) and ev[0].end == int(12 * fs)


def test_flat_line_needs_min_duration() -> None:
    fs = 360.0
    rng = np.random.default_rng(5)
    x = synth_ecg(fs, 60)
    x[int(10 * fs) : int(13 * fs)] = 0.1 + 0.002 * rng.standard_normal(int(3 * fs))  # 3 s
    x[int(30 * fs) : int(40 * fs)] = 0.1 + 0.002 * rng.standard_normal(int(10 * fs))  # 10 s
    rep = assess(x, fs)
    ev = events_of(rep, "flat_line")
    assert len(ev) == 1, ev  # the 3-s segment is shorter than flat_min_s = 4 s
    assert 30 * fs <= ev[0].onset <= 31 * fs
    assert ev[0].end is not None and 40 * fs <= ev[0].end <= 42 * fs
    # the 3-s segment still zeroes the SQI of its blocks (raw flag), no event
    blk = rep.sqi_rows.block_start
    assert np.all(rep.sqi_rows.sqi[(blk >= 11 * fs) & (blk < 12 * fs), 0] == 0.0)


def int16_clipped_ecg(fs: float, gain: float) -> np.ndarray:
    """A high-gain recording whose R waves exceed the int16 range and clip."""
    x = synth_ecg(fs, 40) * gain
    x[int(10 * fs) : int(20 * fs)] *= 4.0
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("limits", [True, False])
def test_int16_saturation(limits: bool) -> None:
    fs = 500.0
    gain = 22000.0  # 1.2 mV R waves reach 26400 counts; x4 clips them at 32767 (to 1/3 of their height)
    x = int16_clipped_ecg(fs, gain)
    kw: dict = {"units_per_mv": gain}
    if limits:
        kw.update(adc_min=-32768, adc_max=32767)
    rep = assess(x, fs, **kw)
    ev = events_of(rep, "saturation")
    assert len(ev) == 1, ev
    assert 10 * fs <= ev[0].onset <= 11.5 * fs
    assert ev[0].end is not None and 20 * fs <= ev[0].end <= 23 * fs
    assert events_of(rep, "leads_off") == []
    # unclipped at the same gain: no saturation event
    clean = np.round(synth_ecg(fs, 40) * gain).astype(np.int16)
    assert events_of(assess(clean, fs, **kw), "saturation") == []


def test_events_do_not_flap() -> None:
    """Leads falling off every other second: one event, not a burst of them."""
    fs = 250.0
    x = synth_ecg(fs, 60)
    for k in range(10, 30, 2):
        x[int(k * fs) : int((k + 1) * fs)] = np.nan
    rep = assess(x, fs)
    ev = events_of(rep, "leads_off")
    assert ev == [QualityEvent("leads_off", 0, int(10 * fs), int(29 * fs))]


def test_streaming_reports_start_then_end() -> None:
    fs = 200.0
    sq = SignalQuality(fs, 1)
    x = synth_ecg(fs, 30)
    x[int(10 * fs) : int(15 * fs)] = np.nan
    _, e1 = sq.process(x[: int(12 * fs)])
    assert e1 == [QualityEvent("leads_off", 0, int(10 * fs), None)]
    _, e2 = sq.process(x[int(12 * fs) :])
    assert e2 == [QualityEvent("leads_off", 0, int(10 * fs), int(15 * fs))]


def test_usable_mask_any_lead_and_unassessed() -> None:
    fs = 250.0
    x = messy_two_lead(fs)
    rep = assess(x, fs)
    s = np.array([int(12 * fs), int(45 * fs), int(85 * fs), 10**9])
    m0 = rep.usable_mask(s, channel=0)
    m1 = rep.usable_mask(s, channel=1)
    assert m0.tolist() == [False, True, False, False]
    assert m1.tolist() == [True, False, True, False]
    assert rep.usable_mask(s).tolist() == [True, True, True, False]
    kinds = {(e.kind, e.channel) for e in rep.events}
    assert {("leads_off", 0), ("flat_line", 0), ("heavy_noise", 1), ("saturation", 1)} <= kinds


def test_validation() -> None:
    with pytest.raises(DSPError, match="fs"):
        SignalQuality(50.0, 1)
    with pytest.raises(DSPError, match="n_channels"):
        SignalQuality(250.0, 0)
    with pytest.raises(DSPError, match="window_s"):
        SignalQuality(250.0, 1, hop_s=1.0, window_s=2.5)
    with pytest.raises(DSPError, match="adc_min"):
        SignalQuality(250.0, 2, adc_min=[0, 0], adc_max=[1, -1])
    with pytest.raises(DSPError, match="units_per_mv"):
        SignalQuality(250.0, 2, units_per_mv=[1.0, 2.0, 3.0])
    with pytest.raises(DSPError, match="noise_on"):
        SignalQuality(250.0, 1, noise_on=0.6, noise_off=0.5)
    sq = SignalQuality(250.0, 2)
    with pytest.raises(DSPError, match="shape"):
        sq.process(np.zeros((10, 3)))
    with pytest.raises(DSPError, match="real numeric"):
        sq.process(np.zeros((10, 2), complex))
    rep = assess(np.zeros((1000, 2)), 250.0)
    with pytest.raises(DSPError, match="channel"):
        rep.usable_mask([1], channel=2)
    assert EVENT_KINDS == ("leads_off", "flat_line", "saturation", "heavy_noise")


def test_per_lead_units_and_limits() -> None:
    fs = 250.0
    a = synth_ecg(fs, 30)
    x = np.stack([a, a * 200.0], 1)  # same ECG in mV and in counts
    rep = assess(x, fs, units_per_mv=[1.0, 200.0], adc_min=[-5.0, -1000.0], adc_max=[5.0, 1000])
    np.testing.assert_allclose(rep.sqi_rows.sqi[:, 0], rep.sqi_rows.sqi[:, 1], atol=1e-9)


# --------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root() -> Path:
    d = Path(
        os.environ.get(
            "TELEDIAG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
        )
    )
    if not (d / "nstdb" / "118e_6.hea").exists() or not (d / "mitdb" / "101.hea").exists():
        pytest.skip(f"nstdb/mitdb data not found under {d} (set TELEDIAG_DATA)")
    return d


def _read(path: Path) -> tuple[np.ndarray, float]:
    wfdb = pytest.importorskip("wfdb")
    rec = wfdb.rdrecord(str(path))
    return np.asarray(rec.p_signal), float(rec.fs)


def _noise_segments(block_start: np.ndarray, fs: float, window_s: float = 8.0) -> np.ndarray:
    """Blocks whose whole window lies in the NSTDB noisy 2-min segments (from 5 min on,
    2 min noisy / 2 min clean)."""
    t = block_start / fs
    noisy = np.zeros(t.size, bool)
    for s0 in range(300, 1800, 240):
        noisy |= (t + 1 - window_s >= s0) & (t + 1 <= s0 + 120)
    return noisy


@pytest.mark.data
@pytest.mark.slow
def test_nstdb_noisier_record_scores_lower(data_root: Path) -> None:
    low, fs = _read(data_root / "nstdb" / "118e_6")
    high, _ = _read(data_root / "nstdb" / "118e24")
    r_low = assess(low, fs)
    r_high = assess(high, fs)
    sel = _noise_segments(r_low.sqi_rows.block_start, fs)
    q_low = r_low.sqi_rows.sqi[sel].mean(axis=0)
    q_high = r_high.sqi_rows.sqi[sel].mean(axis=0)
    assert np.all(q_high > 0.9), q_high
    assert np.all(q_low < 0.5), q_low
    assert np.all(q_high - q_low > 0.5)
    # the first 5 minutes are identical clean ECG in both records
    first = r_low.sqi_rows.block_start < 295 * fs
    assert r_low.sqi_rows.sqi[first].mean() > 0.9
    # fewer usable blocks in the -6 dB record, and heavy-noise events only there
    assert r_low.sqi_rows.usable[sel].mean() < 0.4
    assert r_high.sqi_rows.usable[sel].mean() > 0.95
    assert events_of(r_low, "heavy_noise") and not events_of(r_high, "heavy_noise")


@pytest.mark.data
@pytest.mark.parametrize("name", ["bw", "ma"])
def test_nstdb_noise_only_records_score_low(data_root: Path, name: str) -> None:
    x, fs = _read(data_root / "nstdb" / name)
    x = x[: int(600 * fs)]
    rep = assess(x, fs)
    assert rep.sqi_rows.sqi.mean() < 0.25
    assert rep.sqi_rows.usable.mean() < 0.1


@pytest.mark.data
@pytest.mark.parametrize("record", ["101", "106", "112", "115", "116", "118", "119", "122"])
def test_mitdb_clean_records_score_high(data_root: Path, record: str) -> None:
    x, fs = _read(data_root / "mitdb" / record)
    x = x[: int(600 * fs)]
    rep = assess(x, fs)
    q = rep.sqi_rows.sqi[:, 0]  # MLII
    assert q.mean() > 0.85
    assert rep.sqi_rows.usable.any(axis=1).mean() > 0.95


@pytest.mark.data
def test_real_record_chunk_invariance(data_root: Path) -> None:
    x, fs = _read(data_root / "nstdb" / "118e00")
    x = x[int(290 * fs) : int(420 * fs)]
    ref = assess(x, fs)
    sq = SignalQuality(fs, 2)
    rng = np.random.default_rng(9)
    cuts = np.sort(rng.choice(np.arange(1, x.shape[0]), 50, replace=False))
    outs = [sq.process(p) for p in np.split(x, cuts)]
    rep = QualityReport.from_stream(
        fs, sq.hop, 2, [o[0] for o in outs], [e for o in outs for e in o[1]]
    )
    assert rep.sqi_rows.sqi.tobytes() == ref.sqi_rows.sqi.tobytes()
    assert rep.events == ref.events


@pytest.mark.data
def test_mitdb_116_real_adc_clipping(data_root: Path) -> None:
    """Record 116 hits the bottom ADC rail (0 of 0..2047) around 1001 s and 1390 s: found
    as saturation from the digital samples, and every saturation event has rail samples."""
    wfdb = pytest.importorskip("wfdb")
    rec = wfdb.rdrecord(str(data_root / "mitdb" / "116"), physical=False)
    x = np.asarray(rec.d_signal)
    fs = float(rec.fs)
    rep = assess(x, fs, units_per_mv=200.0, adc_min=0, adc_max=2047)
    sat = events_of(rep, "saturation", 0)
    assert any(e.onset <= 1002 * fs and (e.end or 0) >= 1002 * fs for e in sat)
    for e in sat:
        end = e.end if e.end is not None else x.shape[0]
        seg = x[e.onset : end, 0]
        assert np.any((seg <= 0) | (seg >= 2047))
    assert events_of(rep, "saturation", 1) == []
