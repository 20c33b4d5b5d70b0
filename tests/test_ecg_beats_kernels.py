"""Numba feature kernels of the beat classifier against a NumPy/SciPy reference (the oracle).

The reference below is the original pure-Python feature builder (deques, ``np.interp``,
``np.median``) run on the whole record filtered by ``scipy.signal.sosfilt``; the shipped
:class:`BeatFeatureStream` (Numba kernels, ring buffers, running sorted medians) must give
the same float32 features (within 1e-5 relative) and identical results under any chunking.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from telediag.dsp.design import ecg_bandpass
from telediag.dsp.qrs import detect
from telediag.errors import ModelError
from telediag.models.ecg_beats import _feature_kernels as fk
from telediag.models.ecg_beats.features import (
    ABSOLUTE_RATE,
    AMP_HALF_S,
    BAND_HZ,
    IRREG_BEATS,
    LOCAL_BEATS,
    MEDIAN_BEATS,
    N_BASE_RR,
    N_MORPH,
    N_RAW,
    N_RR,
    NORM_BEATS,
    NORM_FEATURES,
    NORM_SOURCE,
    PATIENT_WINDOW_S,
    POST_S,
    PRE_S,
    RAW_FEATURES,
    SCALE_BEATS,
    TEMPLATE_BEATS,
    BeatFeatures,
    BeatFeatureStream,
    PatientNorm,
    beat_features,
)


# -- the oracle ---------------------------------------------------------------------------------
def reference_features(x: np.ndarray, fs: float, beats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-beat features computed the slow, obvious way (one pass over a whole record)."""
    sos = ecg_bandpass(fs, *BAND_HZ)
    y, _ = sps.sosfilt(sos, x, zi=sps.sosfilt_zi(sos) * x[0])
    grid = np.arange(y.size, dtype=np.float64)
    offsets = np.linspace(-PRE_S, POST_S, N_MORPH)
    amp_half = max(1, int(round(AMP_HALF_S * fs)))
    amp_off = np.linspace(-AMP_HALF_S, AMP_HALF_S, 2 * amp_half + 1)
    rr_times: deque[int] = deque()
    rr_values: deque[float] = deque()
    amps: deque[float] = deque(maxlen=SCALE_BEATS)
    templates: deque[np.ndarray] = deque(maxlen=TEMPLATE_BEATS)
    prev = -1
    rr_out = np.empty((beats.size, N_BASE_RR), np.float32)
    morph_out = np.empty((beats.size, 2, N_MORPH), np.float32)
    for k, beat in enumerate(beats.tolist()):
        nxt = int(beats[k + 1]) if k + 1 < beats.size else -1
        pre = (beat - prev) / fs if prev >= 0 else -1.0
        post = (nxt - beat) / fs if nxt >= 0 else -1.0
        if pre < 0 and post < 0:
            pre = post = 1.0
        elif pre < 0:
            pre = post
        elif post < 0:
            post = pre
        if prev >= 0:
            rr_times.append(beat)
            rr_values.append(pre)
        while rr_times and rr_times[0] < beat - PATIENT_WINDOW_S * fs:
            rr_times.popleft()
            rr_values.popleft()
        if rr_values:
            vals = np.array(rr_values)
            patient = vals.mean()
            local = vals[-LOCAL_BEATS:].mean()
            local_cv = vals[-LOCAL_BEATS:].std() / local
            med = float(np.median(vals[-MEDIAN_BEATS:]))
            irr = _reference_irregularity(vals[-IRREG_BEATS:])
            irr[3] /= med
        else:
            patient = local = med = pre
            local_cv = 0.0
            irr = [0.0, 0.0, 0.0, 0.0]
        prev = beat
        ratios = np.array([pre / patient, post / patient, local / patient, pre / local,
                           post / pre, post / local, local_cv])
        extra = np.array([pre / med, post / med, med / patient, *irr])
        rr_out[k] = np.concatenate([np.clip(ratios, 0.0, 5.0), np.clip([patient, pre], 0.0, 5.0),
                                    np.clip(extra, 0.0, 5.0)])
        w = np.interp(beat + offsets * fs, grid, y)
        seg = np.interp(beat + amp_off * fs, grid, y)
        amps.append(seg.max() - seg.min())
        scale = np.median(np.array(amps))
        w = w / scale if scale > 1e-9 else np.zeros_like(w)
        diff = w - np.median(np.stack(templates), axis=0) if templates else np.zeros_like(w)
        templates.append(w)
        morph_out[k] = np.stack([w, diff])
    ctx = reference_context(np.asarray(beats, np.int64), fs)
    tpl = reference_template(morph_out)
    raw = np.concatenate([rr_out, ctx, tpl], axis=1)
    return np.concatenate([raw, reference_norm(raw)], axis=1), morph_out


def reference_context(b: np.ndarray, fs: float) -> np.ndarray:
    """RR context of every beat of a whole record (vectorised; RR indices clamped at the ends)."""
    n = b.size
    rr = np.empty(max(n, 2))
    if n >= 2:
        rr[1:n] = np.diff(b) / fs
        rr[0] = rr[1]
    else:
        rr[:] = 1.0
    last = max(n - 1, 1)
    idx = np.arange(n)

    def r(m: int) -> np.ndarray:
        return rr[np.clip(idx + m, 1, last)]

    r0, r1, r2, rm1 = r(0), r(1), r(2), r(-1)
    w = np.stack([r(m) for m in [*range(-fk.CTX_PAST, 0), *range(2, 2 + fk.CTX_FUTURE)]], axis=1)
    med = np.median(w, axis=1)
    long = np.sort(np.stack([r(m) for m in range(-fk.CTX_LONG, 0)], axis=1), axis=1)
    med32 = np.median(long, axis=1)
    q75 = long[:, (3 * (fk.CTX_LONG - 1)) // 4]
    med8 = np.median(w[:, : fk.CTX_PAST], axis=1)
    mad = np.median(np.abs(w - med[:, None]), axis=1)
    f = np.stack([
        r0 / med, r1 / med, (r0 + r1) / (2 * med), rm1 / med, r2 / med, r0 / rm1,
        r0 / ((rm1 + r2) / 2), med - r0, med, mad / med, (w < r0[:, None]).mean(axis=1),
        r0 / w.min(axis=1), r0 / med32, r1 / r0, (r0 + r1) / (rm1 + r2),
        r0 / np.minimum(rm1, r1), r0 / np.maximum(rm1, r1), r0 / q75, med8 / med32,
    ], axis=1)
    lo = np.zeros(f.shape[1])
    lo[7] = -5.0
    return np.clip(f, lo, 5.0).astype(np.float32)


def reference_template(m: np.ndarray) -> np.ndarray:
    """Beat-versus-template features of morphology rows (n, 2, 96), vectorised."""
    x = m[:, 0].astype(np.float64)
    t = x - m[:, 1].astype(np.float64)
    q, p, tt = slice(fk.Q_LO, fk.Q_HI), slice(fk.P_LO, fk.P_HI), slice(fk.T_LO, fk.T_HI)
    bx = x[:, fk.B_LO : fk.B_HI].mean(axis=1, keepdims=True)
    bt = t[:, fk.B_LO : fk.B_HI].mean(axis=1, keepdims=True)

    def corr(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=1, keepdims=True)
        c = c - c.mean(axis=1, keepdims=True)
        return (a * c).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (c * c).sum(axis=1) + 1e-12)

    def rms(a: np.ndarray) -> np.ndarray:
        return np.sqrt((a * a).mean(axis=1) + 1e-12)

    rms_t = rms(t[:, q] - bt)
    ax, at = np.abs(x[:, q] - bx), np.abs(t[:, q] - bt)
    wx = ax.sum(axis=1) / (ax.max(axis=1) + 1e-9)
    wt = at.sum(axis=1) / (at.max(axis=1) + 1e-9)
    sx = np.abs(np.diff(x[:, q], axis=1)).max(axis=1)
    st = np.abs(np.diff(t[:, q], axis=1)).max(axis=1)
    xmax, xmin = (x[:, q] - bx).max(axis=1), (x[:, q] - bx).min(axis=1)
    tmax, tmin = (t[:, q] - bt).max(axis=1), (t[:, q] - bt).min(axis=1)
    pp_x = x[:, p].max(axis=1) - x[:, p].min(axis=1)
    pp_t = t[:, p].max(axis=1) - t[:, p].min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.stack([
            corr(x, t), corr(x[:, q], t[:, q]), corr(x[:, p], t[:, p]), corr(x[:, tt], t[:, tt]),
            np.log(rms(x[:, q] - bx) / rms_t), rms(x[:, q] - t[:, q]) / rms_t,
            rms(x[:, p] - t[:, p]) / rms_t, rms(x[:, tt] - t[:, tt]) / rms_t,
            wx, wx / wt, np.log(sx / (st + 1e-9)), xmax, xmin, xmax - tmax, xmin - tmin,
            pp_x, pp_x / (pp_t + 1e-6),
            (x[:, tt].mean(axis=1) - bx[:, 0]) - (t[:, tt].mean(axis=1) - bt[:, 0]),
        ], axis=1)
    return np.clip(np.where(np.isnan(f), 0.0, f), -20.0, 20.0).astype(np.float32)


def _reference_irregularity(v: np.ndarray) -> list[float]:
    """Normalised RMSSD, pNN50, Poincare SD1/SD2 and median |successive difference| (s) of
    the RRs ``v`` (0 with < 3 RRs)."""
    if v.size < 3:
        return [0.0, 0.0, 0.0, 0.0]
    d = np.diff(v)
    sd1_sq = d.var() / 2.0
    sd2_sq = 2.0 * v.var() - sd1_sq
    ratio = float(np.sqrt(sd1_sq / sd2_sq)) if sd2_sq > 1e-12 else 0.0
    return [float(np.sqrt(np.mean(d * d)) / v.mean()), float(np.mean(np.abs(d) > 0.05)), ratio,
            float(np.median(np.abs(d)))]


def _synthetic(fs: float, seconds: float, seed: int, rate_s: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian QRS + T waves, RR jitter, premature beats, pauses and a baseline wander."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    rr = rate_s * (1 + 0.08 * rng.standard_normal(int(seconds / rate_s * 1.3) + 4))
    rr[5::7] *= 0.6  # premature
    rr[11::23] *= 2.2  # pauses
    times = np.cumsum(np.clip(rr, 0.25, None))
    times = times[times < seconds - 0.5]
    x = 0.2 * np.sin(2 * np.pi * 0.2 * t) + 0.02 * rng.standard_normal(t.size)
    amp = 1 + 0.3 * rng.standard_normal(times.size)
    for a, b in zip(amp, times, strict=True):
        lo, hi = np.searchsorted(t, [b - 0.3, b + 0.6])
        tt = t[lo:hi]
        x[lo:hi] += a * np.exp(-0.5 * ((tt - b) / 0.012) ** 2) + 0.2 * np.exp(-0.5 * ((tt - b - 0.25) / 0.04) ** 2)
    return x, np.round(times * fs).astype(np.int64)


def _assert_close(got: BeatFeatures, rr: np.ndarray, morph: np.ndarray, morph2: np.ndarray | None = None) -> None:
    """Single lead: channels 0-1 equal the oracle and 2-3 are zero; two leads: 2-3 equal the
    oracle run on the second lead (with the same beats)."""
    np.testing.assert_allclose(got.rr, rr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.morph[:, :2], morph, rtol=1e-5, atol=1e-6)
    if morph2 is None:
        assert np.all(got.morph[:, 2:] == 0)
    else:
        np.testing.assert_allclose(got.morph[:, 2:], morph2, rtol=1e-5, atol=1e-6)


def reference_norm(raw: np.ndarray) -> np.ndarray:
    """Per-patient normalised columns the obvious way: each NORM_SOURCE column minus its
    median over this beat and the previous NORM_BEATS - 1 beats."""
    cols = [RAW_FEATURES.index(n) for n in NORM_SOURCE]
    x = raw[:, cols].astype(np.float64)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = x[i] - np.median(x[max(0, i - NORM_BEATS + 1) : i + 1], axis=0)
    return out.astype(np.float32)


def test_patient_norm_equals_reference_with_a_full_ring() -> None:
    """More rows than NORM_BEATS (the ring evicts), pushed in uneven pieces, with ties."""
    rng = np.random.default_rng(7)
    raw = rng.normal(size=(3 * NORM_BEATS + 17, N_RR)).astype(np.float32)
    raw[::5, :] = np.round(raw[::5, :], 1)  # repeated values
    raw[:, N_RAW:] = np.nan  # filled by the kernel
    want = reference_norm(raw[:, :N_RAW])
    pn = PatientNorm()
    for lo, hi in ((0, 1), (1, 40), (40, 300), (300, raw.shape[0])):
        pn.fill(raw[lo:hi])
    np.testing.assert_allclose(raw[:, N_RAW:], want, rtol=1e-6, atol=1e-6)
    assert NORM_FEATURES == tuple("d_" + n for n in NORM_SOURCE)
    assert not set(NORM_SOURCE) & set(ABSOLUTE_RATE)


# -- against the oracle ------------------------------------------------------------------------
@pytest.mark.parametrize(("fs", "seconds", "seed", "rate_s"), [
    (360.0, 60.0, 0, 0.8),
    (250.0, 45.0, 1, 0.6),
    (500.0, 30.0, 2, 1.0),
    (128.0, 420.0, 3, 0.9),  # > PATIENT_WINDOW_S: RR ring eviction; > 64 beats: full rings
])
def test_features_equal_reference(fs: float, seconds: float, seed: int, rate_s: float) -> None:
    x, b = _synthetic(fs, seconds, seed, rate_s)
    assert b.size > 20
    rr, morph = reference_features(x, fs, b)
    _assert_close(beat_features(x, fs, b), rr, morph)


@pytest.mark.parametrize(("fs", "seed"), [(360.0, 0), (250.0, 4)])
def test_two_lead_features_equal_reference(fs: float, seed: int) -> None:
    """The second lead is windowed at the detection lead's beats, with its own scale/template."""
    x, b = _synthetic(fs, 90.0, seed)
    x2, _ = _synthetic(fs, 90.0, seed + 100)  # another morphology (beats elsewhere)
    x2 = -0.5 * x + 0.3 * x2
    rr, morph = reference_features(x, fs, b)
    _, morph2 = reference_features(x2, fs, b)
    _assert_close(beat_features(np.stack([x, x2], axis=1), fs, b), rr, morph, morph2)


def test_rr_ring_grows_beyond_initial_capacity() -> None:
    fs = 100.0  # 0.3 s beats for 400 s: ~1000 RRs inside the 300 s window (ring starts at 512)
    x, b = _synthetic(fs, 400.0, 5, rate_s=0.3)
    assert np.sum(b > b[-1] - PATIENT_WINDOW_S * fs) > 600
    rr, morph = reference_features(x, fs, b)
    _assert_close(beat_features(x, fs, b), rr, morph)


def test_edge_cases_equal_reference() -> None:
    fs = 360.0
    x, b = _synthetic(fs, 20.0, 6)
    for beats in (b[:1], b[:2], np.array([3, 40, 7100]), np.array([x.size - 2])):
        rr, morph = reference_features(x, fs, beats)
        _assert_close(beat_features(x, fs, beats), rr, morph)
    flat = np.zeros(3000)  # zero amplitude: morphology is zero, no division by zero
    got = beat_features(flat, fs, np.array([500, 800, 1100]))
    assert np.all(got.morph == 0) and np.all(np.isfinite(got.rr))


def _beats_at(rr: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    times = 0.5 + np.concatenate([[0.0], np.cumsum(rr)])
    t = np.arange(int((times[-1] + 1.0) * fs)) / fs
    x = np.zeros(t.size)
    for b in times:
        x += np.exp(-0.5 * ((t - b) / 0.012) ** 2)
    return x, np.round(times * fs).astype(np.int64)


def test_irregularity_features_tell_fibrillation_from_ectopy() -> None:
    """Sinus rhythm with premature beats vs an irregularly irregular (AF-like) rhythm."""
    fs = 360.0
    rng = np.random.default_rng(11)
    sinus = 0.8 * (1 + 0.02 * rng.standard_normal(120))
    sinus[10::12] *= 0.65  # isolated premature beats with a compensatory pause
    sinus[11::12] *= 1.3
    af = rng.uniform(0.4, 1.1, 120)  # irregularly irregular
    names = ("irr_rmssd", "irr_pnn50", "irr_sd1sd2", "irr_mad", "pre_med")
    from telediag.models.ecg_beats.features import RR_FEATURES

    col = {n: RR_FEATURES.index(n) for n in names}
    fx = {}
    for name, rr in (("sinus", sinus), ("af", af)):
        x, b = _beats_at(rr, fs)
        rr_ref, morph_ref = reference_features(x, fs, b)
        f = beat_features(x, fs, b)
        _assert_close(f, rr_ref, morph_ref)
        fx[name] = f.rr[40:]  # after the 32-RR window has filled
    for n in ("irr_rmssd", "irr_pnn50", "irr_mad"):
        assert fx["af"][:, col[n]].min() > fx["sinus"][:, col[n]].max(), n
    # Poincare SD1/SD2: about 1 for independent RRs, small for a slowly modulated sinus rhythm
    assert 0.6 < np.median(fx["af"][:, col["irr_sd1sd2"]]) < 1.5
    resp = 0.8 + 0.06 * np.sin(2 * np.pi * np.arange(120) / 16)  # respiratory arrhythmia
    xr, br = _beats_at(resp, fs)
    f = beat_features(xr, fs, br).rr[40:]
    assert np.max(f[:, col["irr_sd1sd2"]]) < 0.5
    # the robust median is not pulled by the ectopic beats: premature beats stand out
    prem = fx["sinus"][:, col["pre_med"]]
    assert prem.min() < 0.72 and np.median(prem) == pytest.approx(1.0, abs=0.03)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("record", ["208", "201"])
def test_features_equal_reference_on_mitdb(mitdb: Path, record: str) -> None:
    import wfdb

    rec = wfdb.rdrecord(str(mitdb / record), sampto=int(600 * 360))
    lead = rec.sig_name.index("MLII") if "MLII" in rec.sig_name else 0
    x = rec.p_signal[:, lead].astype(np.float64)
    b = detect(x, float(rec.fs))
    x2 = rec.p_signal[:, 1 - lead].astype(np.float64)
    rr, morph = reference_features(x, float(rec.fs), b)
    _, morph2 = reference_features(x2, float(rec.fs), b)
    _assert_close(beat_features(np.stack([x, x2], axis=1), float(rec.fs), b), rr, morph, morph2)


# -- chunk invariance -------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "max_chunk", "leads"), [
    (0, 2, 1), (1, 50, 1), (2, 400, 1), (3, 5000, 1), (4, 3, 2), (5, 300, 2), (6, 5000, 2),
])
def test_any_chunking_gives_identical_features(seed: int, max_chunk: int, leads: int) -> None:
    fs = 360.0
    x, b = _synthetic(fs, 90.0 if max_chunk > 3 else 25.0, seed)
    if leads == 2:
        x = np.stack([x, 0.7 * np.roll(x, 9) + 0.1], axis=1)
    whole = beat_features(x, fs, b)
    rng = np.random.default_rng(seed)
    s = BeatFeatureStream(fs)
    parts, pos, given = [], 0, 0
    while pos < x.size:
        end = min(x.size, pos + int(rng.integers(1, max_chunk + 1)))
        delay = int(rng.integers(0, int(0.5 * fs)))  # beats reported 0-0.5 s late
        k = given + int(np.searchsorted(b[given:], end - delay))
        parts.append(s.push(x[pos:end], b[given:k]))
        given, pos = k, end
    parts.append(s.push(np.empty((0, leads)) if leads == 2 else np.empty(0), b[given:]))
    parts.append(s.finish())
    got = BeatFeatures.concat(parts)
    np.testing.assert_array_equal(got.beats, whole.beats)
    np.testing.assert_array_equal(got.rr, whole.rr)
    np.testing.assert_array_equal(got.morph, whole.morph)


def test_strided_and_list_inputs_are_accepted() -> None:
    fs = 360.0
    x, b = _synthetic(fs, 20.0, 7)
    two = np.stack([x, -x], axis=1)  # a strided column view, as an engine stage passes it
    s = BeatFeatureStream(fs)
    got = BeatFeatures.concat([s.push(two[:, 0], b.tolist()), s.finish()])
    np.testing.assert_array_equal(got.morph, beat_features(x, fs, b).morph)
    s2 = BeatFeatureStream(fs)  # both strided columns as one (n, 2) array
    got2 = BeatFeatures.concat([s2.push(two[:, ::-1], b.tolist()), s2.finish()])
    np.testing.assert_array_equal(got2.morph, beat_features(np.stack([-x, x], axis=1), fs, b).morph)


def test_lead_count_is_fixed_by_the_first_push() -> None:
    fs = 360.0
    x, b = _synthetic(fs, 10.0, 8)
    s = BeatFeatureStream(fs)
    assert s.n_leads is None
    s.push(np.empty(0))  # no samples: still undecided
    s.push(np.stack([x[:500], x[:500]], axis=1), b[b < 400])
    assert s.n_leads == 2
    with pytest.raises(ModelError, match="2 lead"):
        s.push(x[500:600])
    with pytest.raises(ModelError, match=r"shape \(n,\) or \(n, 2\)"):
        BeatFeatureStream(fs).push(np.zeros((10, 3)))
    with pytest.raises(ModelError, match="n_leads"):
        BeatFeatureStream(fs, n_leads=3)
    one = BeatFeatureStream(fs, n_leads=1)
    with pytest.raises(ModelError, match="1 lead"):
        one.push(np.zeros((10, 2)))


# -- kernel building blocks -----------------------------------------------------------------------
def test_interp_clamped_equals_numpy_interp() -> None:
    rng = np.random.default_rng(0)
    buf = rng.standard_normal(50)
    pos = np.concatenate([rng.uniform(-5, 55, 200), np.arange(-2.0, 53.0)])
    out = np.empty_like(pos)
    fk.interp_clamped(buf, pos, out)
    np.testing.assert_allclose(out, np.interp(pos, np.arange(50.0), buf), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cap", [1, 2, 7, 32])
def test_sorted_replace_running_median_equals_numpy(cap: int) -> None:
    rng = np.random.default_rng(cap)
    values = np.round(rng.standard_normal(300), 1)  # many ties
    ring: deque[float] = deque(maxlen=cap)
    s = np.zeros(cap)
    count = 0
    for v in values.tolist():
        full = count == cap
        fk.sorted_replace(s, count, ring[0] if full else 0.0, v, full)
        ring.append(v)
        count = min(count + 1, cap)
        np.testing.assert_array_equal(s[:count], np.sort(np.array(ring)))
        assert fk._median_sorted(s, count) == np.median(np.array(ring))


def test_all_finite() -> None:
    assert fk.all_finite(np.zeros(5)) and fk.all_finite(np.empty(0))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(5)
        x[3] = bad
        assert not fk.all_finite(x)
