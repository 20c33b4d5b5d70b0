"""Oracle tests for telediag.dsp.sosfilt / telediag.dsp.design against scipy.signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal as sps
import wfdb
from hypothesis import given, settings
from hypothesis import strategies as st

from telediag.dsp import (
    SosFilter,
    SosState,
    chain,
    ecg_bandpass,
    notch,
    sosfilt,
    steady_state_zi,
)
from telediag.dsp.sosfilt import (
    _from_kernel_state,
    _sosfilt_kernel,
    _to_kernel_state,
    validate_sos,
)
from telediag.errors import DSPError

REL_TOL = 1e-12


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def random_design(rng: np.random.Generator) -> np.ndarray:
    """A random stable SOS filter: family x band type x order, or a notch chain."""
    kind = rng.choice(["butter", "cheby1", "cheby2", "ellip", "notch"])
    fs = float(rng.choice([125.0, 250.0, 360.0, 500.0, 1000.0, 4000.0]))
    nyq = fs / 2.0
    if kind == "notch":
        parts = [notch(fs, float(rng.uniform(0.05, 0.45) * fs), float(rng.uniform(1.0, 50.0)))]
        if rng.random() < 0.5:
            parts.append(ecg_bandpass(fs, 0.01 * nyq, 0.8 * nyq, int(rng.integers(1, 5))))
        return chain(*parts)
    btype = rng.choice(["lowpass", "highpass", "bandpass", "bandstop"])
    order = int(rng.integers(1, 9))
    if btype in ("lowpass", "highpass"):
        wn: float | list[float] = float(rng.uniform(0.005, 0.9)) * nyq
    else:
        lo = float(rng.uniform(0.005, 0.5))
        hi = float(rng.uniform(lo + 0.05, 0.95))
        wn = [lo * nyq, hi * nyq]
    if kind == "butter":
        sos = sps.butter(order, wn, btype=btype, fs=fs, output="sos")
    elif kind == "cheby1":
        sos = sps.cheby1(order, 1.0, wn, btype=btype, fs=fs, output="sos")
    elif kind == "cheby2":
        sos = sps.cheby2(order, 40.0, wn, btype=btype, fs=fs, output="sos")
    else:
        sos = sps.ellip(order, 1.0, 40.0, wn, btype=btype, fs=fs, output="sos")
    return np.asarray(sos, dtype=np.float64)


def random_splits(rng: np.random.Generator, n: int) -> list[int]:
    """Chunk boundaries 0 = b0 <= b1 <= ... <= n including empty and 1-sample chunks."""
    bounds = [0]
    while bounds[-1] < n:
        r = rng.random()
        if r < 0.15:
            step = 0  # empty chunk
        elif r < 0.45:
            step = 1
        elif r < 0.8:
            step = int(rng.integers(2, 40))
        else:
            step = int(rng.integers(40, 700))
        bounds.append(min(n, bounds[-1] + step))
    return bounds


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= REL_TOL * scale, f"max abs diff {err:g} > {REL_TOL:g} * {scale:g}"


# --------------------------------------------------------------------------------------
# oracle: scipy.signal.sosfilt
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_one_pass_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sos = random_design(rng)
    n_ch = int(rng.integers(1, 13))
    x = rng.standard_normal((int(rng.integers(1, 3000)), n_ch)) * 10 ** rng.uniform(-3, 3)
    zi = rng.standard_normal((sos.shape[0], 2, n_ch))
    y, zf = sosfilt(sos, x, zi=zi)
    y_ref, zf_ref = sps.sosfilt(sos, x, axis=0, zi=zi)
    assert_close(y, y_ref)
    assert_close(zf, zf_ref)
    y0, _ = sosfilt(sos, x)
    assert_close(y0, sps.sosfilt(sos, x, axis=0))


@pytest.mark.parametrize("seed", range(20))
def test_random_chunks_match_scipy_with_carried_zi(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    sos = random_design(rng)
    n_ch = int(rng.integers(1, 13))
    n = int(rng.integers(0, 2500))
    x = rng.standard_normal((n, n_ch))
    bounds = random_splits(rng, n)
    zi_ours = np.zeros((sos.shape[0], 2, n_ch))
    zi_ref = zi_ours.copy()
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        y, zi_ours = sosfilt(sos, x[a:b], zi=zi_ours)
        if b > a:
            y_ref, zi_ref = sps.sosfilt(sos, x[a:b], axis=0, zi=zi_ref)
        else:  # scipy cannot filter an empty chunk with zi (reshape error): state unchanged
            y_ref = np.empty((0, n_ch))
        assert_close(y, y_ref)
        assert_close(zi_ours, zi_ref)
        outs.append(y)
    chunked = np.concatenate(outs, axis=0) if outs else np.empty((0, n_ch))
    one_pass, zf = sosfilt(sos, x)
    # our own kernel: chunked == one pass, bit for bit
    np.testing.assert_array_equal(chunked, one_pass)
    np.testing.assert_array_equal(zi_ours, zf)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ch=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_hypothesis_any_chunking_equals_one_pass(seed: int, n_ch: int, cuts: list[int]) -> None:
    rng = np.random.default_rng(seed)
    sos = random_design(rng)
    x = rng.standard_normal((400, n_ch))
    bounds = [0, *sorted(cuts), 400]  # duplicates give empty chunks
    f = SosFilter(sos, n_ch)
    chunked = np.concatenate(
        [f.process(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    )
    np.testing.assert_array_equal(chunked, sosfilt(sos, x)[0])
    assert_close(chunked, sps.sosfilt(sos, x, axis=0))


def test_one_channel_1d_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    sos = ecg_bandpass(360.0)
    x = rng.standard_normal(1234)
    zi = rng.standard_normal((4, 2))
    y, zf = sosfilt(sos, x, zi=zi)
    y_ref, zf_ref = sps.sosfilt(sos, x, zi=zi)
    assert y.shape == (1234,) and zf.shape == (4, 2)
    assert_close(y, y_ref)
    assert_close(zf, zf_ref)


def test_kernel_direct_and_in_place() -> None:
    rng = np.random.default_rng(3)
    sos = ecg_bandpass(360.0)
    for n_ch in (1, 5, 8, 13):
        x = rng.standard_normal((300, n_ch))
        zi = rng.standard_normal((4, 2, n_ch))
        zs = _to_kernel_state(zi)  # kernel layout (2, n_sections, n_channels)
        y = np.empty_like(x)
        _sosfilt_kernel(sos, x, zs, y)
        y_ref, zf_ref = sps.sosfilt(sos, x, axis=0, zi=zi)
        assert_close(y, y_ref)
        assert_close(_from_kernel_state(zs), zf_ref)
        xi = x.copy()
        _sosfilt_kernel(sos, xi, _to_kernel_state(zi), xi)  # y aliases x
        np.testing.assert_array_equal(xi, y)


def test_non_contiguous_and_fortran_inputs() -> None:
    rng = np.random.default_rng(11)
    sos = ecg_bandpass(250.0, order=3)
    base = rng.standard_normal((600, 6))
    for x in (base[::2], np.asfortranarray(base), base[:, ::2]):
        assert_close(sosfilt(sos, x)[0], sps.sosfilt(sos, x, axis=0))
        f = SosFilter(sos, x.shape[1])
        np.testing.assert_array_equal(f.process(x), sosfilt(sos, x)[0])


def test_readonly_and_unaligned_inputs() -> None:
    """Zero-copy wire payloads are read-only and may be unaligned; both must work."""
    rng = np.random.default_rng(12)
    sos = ecg_bandpass(360.0)
    for n_ch in (1, 3, 12):
        x = rng.standard_normal((200, n_ch))
        ref = sps.sosfilt(sos, x, axis=0)
        readonly = np.frombuffer(x.tobytes(), dtype=np.float64).reshape(200, n_ch)
        raw = np.frombuffer(b"\0" + x.tobytes(), dtype=np.uint8)
        unaligned = np.frombuffer(raw.data, dtype=np.float64, offset=1).reshape(200, n_ch)
        assert not readonly.flags.writeable and not unaligned.flags.aligned
        for xin in (readonly, unaligned):
            f = SosFilter(sos, n_ch)
            assert_close(np.concatenate([f.process(xin[:7]), f.process(xin[7:])]), ref)
            assert_close(sosfilt(sos, xin)[0], ref)


def test_empty_input_returns_state_unchanged() -> None:
    sos = ecg_bandpass(360.0)
    zi = np.arange(24.0).reshape(4, 2, 3)
    y, zf = sosfilt(sos, np.empty((0, 3)), zi=zi)
    assert y.shape == (0, 3)
    np.testing.assert_array_equal(zf, zi)


# --------------------------------------------------------------------------------------
# purity / dtypes
# --------------------------------------------------------------------------------------
def test_inputs_not_mutated() -> None:
    rng = np.random.default_rng(5)
    sos = chain(ecg_bandpass(360.0), notch(360.0, 60.0))
    x = rng.standard_normal((500, 2))
    zi = rng.standard_normal((5, 2, 2))
    copies = (sos.copy(), x.copy(), zi.copy())
    sosfilt(sos, x, zi=zi)
    f = SosFilter(sos, 2, zi=zi)
    f.process(x)
    for orig, cp in zip((sos, x, zi), copies, strict=True):
        np.testing.assert_array_equal(orig, cp)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8, np.float32, np.bool_, ">f8"])
def test_real_dtypes_converted_to_float64(dtype: str | type) -> None:
    rng = np.random.default_rng(2)
    x: np.ndarray = (rng.standard_normal((400, 2)) * 100).astype(dtype)
    sos = ecg_bandpass(360.0)
    y, zf = sosfilt(sos, x)
    assert y.dtype == np.float64 and zf.dtype == np.float64
    assert_close(y, sps.sosfilt(sos, x.astype(np.float64), axis=0))
    f = SosFilter(sos, 2)
    np.testing.assert_array_equal(f.process(x), y)


@pytest.mark.parametrize("bad", [np.ones((5, 2), complex), np.array([["a"]]), np.ones(3, object)])
def test_non_real_dtypes_rejected(bad: np.ndarray) -> None:
    with pytest.raises(DSPError, match="x must be a real numeric array"):
        sosfilt(ecg_bandpass(360.0), bad)


# --------------------------------------------------------------------------------------
# validation messages
# --------------------------------------------------------------------------------------
def test_wrong_zi_shape_message() -> None:
    sos = ecg_bandpass(360.0)
    with pytest.raises(DSPError, match=r"zi must have shape \(4, 2, 2\), got \(4, 2\)"):
        sosfilt(sos, np.zeros((10, 2)), zi=np.zeros((4, 2)))
    with pytest.raises(DSPError, match=r"zi must have shape \(4, 2\), got \(4, 2, 1\)"):
        sosfilt(sos, np.zeros(10), zi=np.zeros((4, 2, 1)))
    with pytest.raises(DSPError, match=r"zi must have shape \(4, 2, 3\), got \(4, 2, 2\)"):
        SosFilter(sos, 3, zi=np.zeros((4, 2, 2)))


def test_sos_validation_messages() -> None:
    good = ecg_bandpass(360.0)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(DSPError, match="sos must contain only finite values"):
        sosfilt(bad, np.zeros(4))
    bad = good.copy()
    bad[0, 3] = 2.0
    with pytest.raises(DSPError, match=r"a0\) must be 1"):
        SosFilter(bad, 1)
    with pytest.raises(DSPError, match=r"sos must have shape \(n_sections >= 1, 6\), got \(4, 5\)"):
        sosfilt(good[:, :5], np.zeros(4))
    with pytest.raises(DSPError, match=r"got \(0, 6\)"):
        validate_sos(np.zeros((0, 6)))


def test_x_validation_messages() -> None:
    sos = ecg_bandpass(360.0)
    with pytest.raises(
        DSPError, match=r"x must be 1-D .* or 2-D .*, got 3-D with shape \(2, 3, 4\)"
    ):
        sosfilt(sos, np.zeros((2, 3, 4)))
    f = SosFilter(sos, 3)
    with pytest.raises(DSPError, match=r"x must have shape \(n_samples, 3\), got \(10, 2\)"):
        f.process(np.zeros((10, 2)))
    with pytest.raises(DSPError, match=r"x must have shape \(n_samples, 3\), got \(10,\)"):
        f.process(np.zeros(10))
    with pytest.raises(DSPError, match="x must be 1-D"):
        f.process(np.zeros((1, 1, 3)))
    with pytest.raises(DSPError, match="n_channels must be >= 1, got 0"):
        SosFilter(sos, 0)
    with pytest.raises(DSPError, match='zi must be None, "steady" or an array'):
        SosFilter(sos, 1, zi="rest")  # type: ignore[arg-type]
    assert issubclass(DSPError, ValueError)


# --------------------------------------------------------------------------------------
# SosFilter
# --------------------------------------------------------------------------------------
def test_sosfilter_state_reset_and_roundtrip() -> None:
    rng = np.random.default_rng(9)
    sos = chain(ecg_bandpass(500.0, 1.0, 100.0, order=3), notch(500.0, 50.0))
    x = rng.standard_normal((1000, 4))
    zi0 = rng.standard_normal((4, 2, 4))
    f = SosFilter(sos, 4, zi=zi0)
    ref, zf_ref = sps.sosfilt(sos, x, axis=0, zi=zi0)
    y1 = f.process(x[:333])
    snap = f.state
    assert isinstance(snap, SosState)
    y2 = f.process(x[333:])
    assert_close(np.concatenate([y1, y2]), ref)
    assert_close(f.state.zi, zf_ref)
    # restore the snapshot and replay: identical
    f.state = snap
    np.testing.assert_array_equal(f.process(x[333:]), y2)
    f.reset()
    np.testing.assert_array_equal(f.process(x), np.concatenate([y1, y2]))


def test_sosfilter_1d_single_channel() -> None:
    rng = np.random.default_rng(4)
    sos = ecg_bandpass(360.0)
    x = rng.standard_normal(777)
    f = SosFilter(sos, 1)
    y = np.concatenate([f.process(x[:1]), f.process(x[1:1]), f.process(x[1:])])
    assert y.shape == (777,)
    assert_close(y, sps.sosfilt(sos, x))


def test_sosfilter_steady_start() -> None:
    rng = np.random.default_rng(6)
    sos = chain(ecg_bandpass(360.0), notch(360.0, 60.0))
    offset = np.array([1000.0, -250.0, 3.0])
    x = offset + rng.standard_normal((720, 3))
    f = SosFilter(sos, 3, zi="steady")
    assert f.state.awaiting_steady
    assert f.process(np.empty((0, 3))).shape == (0, 3)
    y = np.concatenate([f.process(x[:1]), f.process(x[1:])])
    zi_ref = sps.sosfilt_zi(sos)[:, :, None] * x[0][None, None, :]
    assert_close(y, sps.sosfilt(sos, x, axis=0, zi=zi_ref)[0])
    # a band-pass started at steady state shows no offset transient
    assert np.max(np.abs(y)) < 10.0
    f.reset()
    assert f.state.awaiting_steady
    np.testing.assert_array_equal(f.process(x), y)


# --------------------------------------------------------------------------------------
# design helpers
# --------------------------------------------------------------------------------------
def test_ecg_bandpass_response() -> None:
    fs = 360.0
    sos = ecg_bandpass(fs, 0.5, 40.0, order=4)
    assert sos.shape == (4, 6)  # 4 biquads = 8th-order band-pass
    _, poles, _ = sps.sos2zpk(sos)
    assert poles.size == 8 and np.all(np.abs(poles) < 1.0)
    w, h = sps.freqz_sos(sos, worN=[0.5, 10.0, 40.0, 120.0], fs=fs)
    g = np.abs(h)
    assert g[1] == pytest.approx(1.0, abs=1e-3)
    assert g[0] == pytest.approx(2**-0.5, abs=1e-6)
    assert g[2] == pytest.approx(2**-0.5, abs=1e-6)
    assert g[3] < 5e-3  # ~ -55 dB 1.6 octaves above the upper edge


def test_notch_and_chain() -> None:
    sos = notch(360.0, 60.0, q=30.0)
    assert sos.shape == (1, 6) and sos[0, 3] == 1.0
    _, h = sps.freqz_sos(sos, worN=[60.0, 20.0], fs=360.0)
    assert abs(h[0]) < 1e-9 and abs(h[1]) == pytest.approx(1.0, abs=1e-2)
    c = chain(ecg_bandpass(360.0), sos)
    assert c.shape == (5, 6)
    np.testing.assert_array_equal(c[4], sos[0])


def test_design_validation_messages() -> None:
    with pytest.raises(DSPError, match=r"high_hz must be below .*fs/2 = 50 Hz \(fs = 100 Hz\)"):
        ecg_bandpass(100.0, 0.5, 60.0)
    with pytest.raises(DSPError, match=r"freq_hz must be below .*fs = 100 Hz.*freq_hz = 50 Hz"):
        notch(100.0, 50.0)
    with pytest.raises(DSPError, match="low_hz must be below high_hz"):
        ecg_bandpass(360.0, 40.0, 0.5)
    with pytest.raises(DSPError, match="fs must be a positive"):
        ecg_bandpass(-1.0)
    with pytest.raises(DSPError, match="order must be an int >= 1"):
        ecg_bandpass(360.0, order=0)
    with pytest.raises(DSPError, match="q must be a positive"):
        notch(360.0, 60.0, q=0.0)
    with pytest.raises(DSPError, match="chain needs at least one"):
        chain()
    with pytest.raises(DSPError, match=r"sos\[1\] must have shape"):
        chain(ecg_bandpass(360.0), np.zeros((2, 5)))


def test_steady_state_zi() -> None:
    sos = ecg_bandpass(360.0, order=2)
    x0 = np.array([1.0, -2.0])
    zi = steady_state_zi(sos, 2, x0)
    assert zi.shape == (2, 2, 2)
    np.testing.assert_allclose(zi[:, :, 1], -2.0 * sps.sosfilt_zi(sos))
    lp = np.asarray(sps.butter(3, 10.0, fs=360.0, output="sos"))
    y, _ = sosfilt(lp, np.full((50, 2), 5.0), zi=steady_state_zi(lp, 2, 5.0))
    np.testing.assert_allclose(y, 5.0, rtol=1e-12)  # DC gain 1: starts in steady state
    with pytest.raises(DSPError, match=r"x0 must be a scalar or have shape \(2,\), got \(3,\)"):
        steady_state_zi(sos, 2, np.zeros(3))


# --------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------
@pytest.mark.data
@pytest.mark.slow
def test_real_record_random_chunks_equal_scipy_one_pass(mitdb: Path) -> None:
    # `mitdb` fixture (tests/conftest.py) skips with a message when the data is absent
    rng = np.random.default_rng(2024)
    rec_name = sorted(p.stem for p in mitdb.glob("*.hea"))[0]
    rec = wfdb.rdrecord(str(mitdb / rec_name), sampto=120_000, physical=False, return_res=16)
    digital = np.asarray(rec.d_signal)  # int16 ADC units
    assert digital.dtype == np.int16
    fs = float(rec.fs)
    sos = chain(ecg_bandpass(fs), notch(fs, 60.0))
    ref = sps.sosfilt(sos, digital.astype(np.float64), axis=0)
    f = SosFilter(sos, digital.shape[1])
    bounds = random_splits(rng, digital.shape[0])
    y = np.concatenate(
        [f.process(digital[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    )
    assert_close(y, ref)
    np.testing.assert_array_equal(y, sosfilt(sos, digital)[0])
