"""Memoised filter design: identical to SciPy, and callers get private copies."""

from __future__ import annotations

import numpy as np
import scipy.signal as sps

from telediag.dsp.design import butter_sos, ecg_bandpass, sosfilt_zi


def test_butter_sos_equals_scipy_and_returns_copies() -> None:
    for order, wn, btype, fs in ((2, 40.0, "highpass", 360.0), (4, (0.5, 40.0), "bandpass", 500.0),
                                 (3, (0.1, 0.3), "bandpass", None)):
        ref = sps.butter(order, wn, btype=btype, fs=fs, output="sos")
        a = butter_sos(order, wn, btype, fs=fs)
        assert np.array_equal(a, ref) and a.flags.writeable
        a[:] = 0.0  # must not poison the cache
        assert np.array_equal(butter_sos(order, wn, btype, fs=fs), ref)


def test_sosfilt_zi_cached_copy() -> None:
    sos = ecg_bandpass(360.0)
    z = sosfilt_zi(sos)
    assert np.array_equal(z, sps.sosfilt_zi(sos))
    z[:] = 1.0
    assert np.array_equal(sosfilt_zi(sos), sps.sosfilt_zi(sos))
