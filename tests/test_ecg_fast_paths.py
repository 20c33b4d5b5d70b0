"""Scalar fast paths of the ECG chain give exactly what the general (vectorised) code gives.

Speed work on the chain (issue 15 "Speed", issue 17 item 3) replaced some per-chunk NumPy
calls on one-element arrays by plain float arithmetic; these tests pin that the results are
bit-identical. The whole-stage outputs are pinned by ``tests/test_ecg_golden.py``.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest

from telediag.dsp.hr import HeartRateMeter, _display, _display_one
from telediag.engine.stages.ecg_parts.clock import Timeline
from telediag.errors import DSPError


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_display_one_equals_vectorised_display() -> None:
    rng = np.random.default_rng(1)
    fs, asystole = 360.0, 1440
    cases = [(float("nan"), -1, 5), (float("nan"), 10, 20), (0.0, 10, 500), (75.0, 0, 1440), (75.0, 0, 1439),
             (75.0, 0, 576), (75.0, 0, 577), (60.0, 100, 100), (float("inf"), 5, 900)]
    for _ in range(3000):
        hr = float(rng.choice([rng.uniform(20, 250), float("nan"), 60.0 * fs / rng.integers(50, 800)]))
        last = int(rng.integers(-1, 1000))
        cases.append((hr, last, max(last, 0) + int(rng.integers(0, 2000))))
    for hr, last, s in cases:
        for decay in (1.0, 2.0, 3.5):
            ref = float(_display(np.array([hr]), np.array([last], np.int64), np.array([s], np.int64),
                                 fs, asystole, decay)[0])
            assert _same(_display_one(hr, last, s, fs, asystole, decay), ref), (hr, last, s, decay)


def test_meter_at_unchanged_on_a_beat_train() -> None:
    m = HeartRateMeter(250.0)
    beats = np.cumsum(np.r_[10, np.random.default_rng(2).integers(120, 400, 60)])
    m.update(beats)
    last = int(beats[-1])
    for s in range(last, last + 1200, 7):
        st = m.state
        ref = float(_display(np.array([st.hr_bpm]), np.array([st.last_beat], np.int64), np.array([s], np.int64),
                             m.fs, m._asystole, m.decay_factor)[0])
        assert _same(m.at(s), ref)


def test_timeline_stamp_equals_source_and_t_ns() -> None:
    tl = Timeline(360.0, keep=2000)
    assert tl.stamp(5) == (tl.source(5), tl.t_ns(5))
    t = 7_000
    for k, start in enumerate(range(0, 20 * 360, 360)):
        jump = 2 * 10**9 if k in (3, 9) else (-5 * 10**8 if k == 12 else 0)
        t += jump
        tl.observe(start, t)
        t += 10**9
        for s in (start, start + 1, start + 359, max(0, start - 900)):
            assert tl.stamp(s) == (tl.source(s), tl.t_ns(s))
            # source/t_ns (first-anchor fast path) == the anchor found by bisection
            i = max(bisect.bisect_right(tl.starts, s) - 1, 0)
            assert tl.source(s) == tl.sources[i] + s - tl.starts[i]
            assert tl.t_ns(s) == tl.t0s[i] + round((s - tl.starts[i]) * 1e9 / tl.fs)


def test_filter_stage_finite_check_by_sum() -> None:
    """The filter stage looks for NaN/inf through the chunk's sum: a finite chunk whose sum
    overflows takes the careful path and still outputs no NaN; NaN samples stay NaN."""
    from telediag.engine.stage import StreamSpec
    from telediag.engine.stages.ecg import EcgFilter
    from telediag.transports.wire import Chunk

    def run(x: np.ndarray, implausible_mv: float = 500.0) -> np.ndarray:
        st = EcgFilter(EcgFilter.Params(implausible_mv=implausible_mv))
        st.open(StreamSpec("s/ecg", "ecg", 360.0, ("I", "II"), ("mV", "mV")))
        out = [st.process(Chunk.signal("ecg", "s/ecg", k, k * 10**9, x[k * 360:(k + 1) * 360], 360.0,
                                       ("I", "II"), ("mV", "mV"))).signal.data for k in range(x.shape[0] // 360)]
        return np.concatenate(out)

    x = np.random.default_rng(3).normal(size=(1440, 2))
    big = x.copy()
    big[400:402, 0] = 1.7e308  # finite, but the sum overflows
    y = run(big, implausible_mv=0.0)  # no plausibility bound
    assert not np.isnan(y[:, 1]).any() and not np.isnan(y[:402, 0]).any()
    y = run(big)  # beyond 500 mV: held and shown missing like NaN, the other lead untouched
    assert np.array_equal(np.isnan(y), (np.arange(1440) >= 400)[:, None] & (np.arange(1440) < 402)[:, None]
                          & np.array([True, False]))
    holes = x.copy()
    holes[700:720, 1] = np.nan
    holes[900, 0] = np.inf
    y = run(holes)
    assert np.array_equal(np.isnan(y), ~np.isfinite(holes))
    clean = run(x)
    assert np.array_equal(clean[:700], y[:700])


def test_hr_small_python_path_equals_kernel() -> None:
    """``update_lists`` on a short list (Python steps) == ``update`` (Numba kernel): readings and state."""
    rng = np.random.default_rng(7)
    for rule, n_int, min_int in (("median", 8, None), ("median", 5, 3), ("mean", 8, None), ("mean", 1, 1)):
        a = HeartRateMeter(360.0, n_intervals=n_int, rule=rule, min_intervals=min_int)  # type: ignore[arg-type]
        b = HeartRateMeter(360.0, n_intervals=n_int, rule=rule, min_intervals=min_int)  # type: ignore[arg-type]
        t = 5
        for _ in range(300):
            chunk = []
            for _ in range(int(rng.integers(0, 7))):
                t += int(rng.choice([0, 30, rng.integers(100, 700), 2000]))  # repeats, double detections, gaps
                chunk.append(t)
            s_list, h_list = a.update_lists(chunk)
            rows = b.update(np.array(chunk, np.int64))
            assert s_list == rows["sample"].tolist()
            assert all(_same(x, y) for x, y in zip(h_list, rows["hr_bpm"].tolist(), strict=True))
            sa, sb = a.state, b.state
            assert (sa.n_rr, sa.pos, sa.last_beat, sa.n_rejected) == (sb.n_rr, sb.pos, sb.last_beat, sb.n_rejected)
            assert _same(sa.hr_bpm, sb.hr_bpm) and _same(sa.avg_rr, sb.avg_rr)
            assert np.array_equal(sa.rr_buf, sb.rr_buf)
    m = HeartRateMeter(360.0)
    m.update_lists([10, 400])
    with pytest.raises(DSPError, match="back in time"):
        m.update_lists([300])
    with pytest.raises(DSPError, match=">= 0"):
        HeartRateMeter(360.0).update_lists([-1])


def test_hrv_update_last_equals_last_row_of_update() -> None:
    """``update_last`` (window metrics computed for the last beat only) == ``update``'s last row."""
    from telediag.dsp.hrv import HRVMeter

    rng = np.random.default_rng(9)
    a, b = HRVMeter(360.0, window_s=30.0), HRVMeter(360.0, window_s=30.0)
    t = 0
    for _ in range(400):
        chunk, labels = [], []
        for _ in range(int(rng.integers(0, 6))):
            t += int(rng.choice([rng.integers(200, 420), 90, 900]))
            chunk.append(t)
            labels.append(bool(rng.random() > 0.1))
        got = a.update_last(np.array(chunk, np.int64), np.array(labels, np.bool_))
        rows = b.update(np.array(chunk, np.int64), np.array(labels, np.bool_))
        if not rows.size:
            assert got is None
            continue
        r = rows[-1]
        want = (int(r["sample"]), int(r["n_nn"]), int(r["n_diff"]), *(float(r[k]) for k in
                ("mean_nn_ms", "sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm")))
        assert got is not None and all(_same(x, y) if isinstance(x, float) else x == y
                                       for x, y in zip(got, want, strict=True))
        for name in ("scalars", "ring_end", "ring_rr", "ring_cons"):
            assert np.array_equal(getattr(a.state, name), getattr(b.state, name))


def test_all_plausible_equals_numpy_masks() -> None:
    """The one-pass screen (EcgFilter, ecg_analysis) says True exactly when no sample is
    non-finite and none exceeds its lead's bound, for writable and read-only input."""
    from telediag.dsp.quality import all_plausible

    rng = np.random.default_rng(5)
    lims = [np.array([500.0, 500.0]), np.array([500.0, np.inf]), np.array([np.inf, np.inf]), np.array([0.5, 2.0])]
    specials = [np.nan, np.inf, -np.inf, 500.0, -500.0, 500.0000001, -1e308, 1.7e308, 0.0, -0.0]
    for _trial in range(400):
        x = rng.normal(size=(int(rng.integers(0, 40)), 2))
        for _ in range(int(rng.integers(0, 3))):
            if x.size:
                x[rng.integers(x.shape[0]), rng.integers(2)] = rng.choice(specials)
        for lim in lims:
            want = bool(np.isfinite(x).all() and not (np.abs(x) > lim).any())
            assert all_plausible(x, lim) is want, (x, lim)
            ro = x.copy()
            ro.flags.writeable = False
            assert all_plausible(ro, lim) is want
        assert all_plausible(x) is bool(np.isfinite(x).all())
    with pytest.raises(DSPError):
        all_plausible(np.zeros((3, 2))[:, :1].T.T[::2])
    with pytest.raises(DSPError):
        all_plausible(np.zeros((3, 2)), np.zeros(3))


def test_hrv_update_last_lists_equals_update_last() -> None:
    """The list path (RateMonitor's) == ``update_last`` on arrays: results, state and errors."""
    from telediag.dsp.hrv import HRVMeter

    rng = np.random.default_rng(13)
    a, b = HRVMeter(360.0, window_s=30.0), HRVMeter(360.0, window_s=30.0)
    t = 0
    for k in range(600):
        chunk, labels = [], []
        for _ in range(int(rng.integers(0, 70 if k % 50 == 0 else 6))):  # now and then > 64 beats
            t += int(rng.choice([rng.integers(200, 420), 90, 900]))
            chunk.append(t)
            labels.append(bool(rng.random() > 0.1))
        normal = None if k % 3 == 0 else labels
        got = a.update_last_lists(chunk, normal)
        want = b.update_last(np.array(chunk, np.int64), None if normal is None else np.array(normal, np.bool_))
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert all(_same(x, y) for x, y in zip(got, want, strict=True))
        for name in ("scalars", "ring_end", "ring_rr", "ring_cons"):
            assert np.array_equal(getattr(a.state, name), getattr(b.state, name))
    for bad, msg in (([t], "after the last beat"), ([t + 10, t + 5], "strictly increasing"), ([-1], ">= 0")):
        with pytest.raises(DSPError, match=msg):
            HRVMeter(360.0).update_last_lists(bad) if bad == [-1] else a.update_last_lists(bad)
    with pytest.raises(DSPError, match="labels must have shape"):
        a.update_last_lists([t + 400], [True, False])
    assert a.update_last_lists([t + 400, t + 800], [np.bool_(True), True]) is not None  # numpy bools: general path


def test_signal_history_window_equals_index_gather() -> None:
    """``SignalHistory.window`` by slices == the ring gathered by index (values, shape, layout)."""
    from telediag.engine.stages.ecg_parts.clock import SignalHistory

    rng = np.random.default_rng(21)
    for cap in (1, 7, 360):
        h = SignalHistory(np.zeros((cap, 2)))
        for _ in range(60):
            h.push(rng.normal(size=(int(rng.integers(0, 2 * cap + 3)), 2)))
            for _ in range(5):
                start = int(rng.integers(max(0, h.end - cap - 2), h.end + 2))
                stop = start + int(rng.integers(-1, cap + 2))
                got = h.window(start, stop)
                ok = not (start < max(0, h.end - cap) or stop > h.end or stop < start)
                assert (got is not None) == ok
                if got is not None:
                    want = h.buf[np.arange(start, stop) % cap]
                    assert got.shape == want.shape and got.flags.c_contiguous and got.tobytes() == want.tobytes()
