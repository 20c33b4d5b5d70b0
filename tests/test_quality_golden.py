"""The quality kernel's outputs, bit for bit, against digests captured before its speed rewrite.

``dsp/quality.py``'s per-sample loop was restructured for speed (lead by lead, with the filter
states and block sums in registers; session 3 of issues 15/17). The SHA-256 of every output
(block starts, SQI, usable, features, flags, events) on real MIT-BIH / noise-stress data, as it
was streamed before the rewrite (commit e420d48), pins the rewrite to identical outputs: clean
and noisy records, NaN and inf runs, a constant (leads-off) stretch, clipping with and without
known ADC rails, in 1 s chunks, 97-sample chunks and random chunk sizes. Only recorded data and
exact arithmetic build the inputs (no transcendental functions whose last bit may vary by CPU).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from telediag.dsp.quality import SignalQuality
from telediag.sources.readers import read_wfdb

pytestmark = pytest.mark.data

#: (case, chunk samples (0: random sizes)) -> digest at commit e420d48
GOLDEN = {
    ("208", 360): "262857e854e89183",
    ("208", 97): "178517a1e4f832ba",
    ("208", 0): "140e100b894e1f3c",
    ("208_messy", 360): "eea387ff160e8245",
    ("208_messy", 97): "50b10af189b6f58f",
    ("208_messy", 0): "20b0adc281d0aa5a",
    ("208_adc", 360): "2b052c23abc7ab6c",
    ("208_adc", 97): "aab271ac68b9064c",
    ("208_adc", 0): "aa1ef29bc8543b67",
    ("118e_6", 360): "45d3b339a9b31e1a",
    ("118e_6", 97): "78f8e3bf6877ff9c",
    ("118e_6", 0): "f6ac3f479cbab343",
}


def _digest(x: np.ndarray, fs: float, cut: int, **kw: float) -> str:
    sq = SignalQuality(fs, x.shape[1], **kw)
    h = hashlib.sha256()
    rng = np.random.default_rng(1)
    i = 0
    while i < x.shape[0]:
        n = cut if cut > 0 else int(rng.integers(1, 3 * fs))
        rows, ev = sq.process(x[i:i + n])
        i += n
        for a in (rows.block_start, rows.sqi, rows.usable, rows.features, rows.flags):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr(ev).encode())
    return h.hexdigest()[:16]


def _cases(data_root: Path) -> dict[str, tuple[np.ndarray, float, dict[str, float]]]:
    out: dict[str, tuple[np.ndarray, float, dict[str, float]]] = {}
    r = read_wfdb(data_root / "mitdb" / "208")
    fs = r.fs
    x = np.array(r.signal[: int(300 * fs)], dtype=np.float64)
    out["208"] = (x, fs, {})
    m = x.copy()
    m[int(30 * fs):int(34.5 * fs), 0] = np.nan  # leads off (NaN)
    m[int(50 * fs):int(50 * fs) + 7, 1] = np.inf  # a few inf samples
    m[int(70 * fs):int(80 * fs), 0] = 0.25  # exactly constant
    m[int(100 * fs):int(130 * fs), 1] = np.clip(m[int(100 * fs):int(130 * fs), 1], -0.5, 0.75)  # clipped
    m[int(150 * fs):int(160 * fs), 0] += np.where(np.arange(int(10 * fs)) % 3 == 0, 1.5, -0.75)  # HF noise
    out["208_messy"] = (m, fs, {})
    d = np.round(x * 200.0 + 1024.0)
    seg = slice(int(200 * fs), int(220 * fs))
    d[seg, 0] = np.clip((d[seg, 0] - 1024.0) * 8.0 + 1024.0, 0.0, 2047.0)  # at both ADC rails
    out["208_adc"] = (d.astype(np.int16).astype(np.float64), fs,
                      {"units_per_mv": 200.0, "adc_min": 0.0, "adc_max": 2047.0})
    r = read_wfdb(data_root / "nstdb" / "118e_6")
    out["118e_6"] = (np.array(r.signal[: int(300 * r.fs)], dtype=np.float64), r.fs, {})
    return out


@pytest.fixture(scope="module")
def data_root() -> Path:
    d = Path(os.environ.get("TELEDIAG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (d / "mitdb" / "208.hea").exists() or not (d / "nstdb" / "118e_6.hea").exists():
        pytest.skip(f"mitdb/208 or nstdb/118e_6 not found under {d} (set TELEDIAG_DATA)")
    return d


def test_quality_outputs_bitwise_as_before_rewrite(data_root: Path) -> None:
    got = {}
    for name, (x, fs, kw) in _cases(data_root).items():
        for cut in (int(fs), 97, 0):
            got[(name, cut)] = _digest(x, fs, cut, **kw)
    assert got == GOLDEN
