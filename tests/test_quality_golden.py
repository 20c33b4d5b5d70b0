"""The quality kernel's outputs against those of the kernel before its speed rewrite.

``dsp/quality.py``'s per-sample loop was restructured for speed (lead by lead, with the filter
states and block sums in registers; session 3 of issues 15/17). Every output
(block starts, SQI, usable, features, flags, events) on real MIT-BIH / noise-stress data, as it
was streamed before the rewrite (commit e420d48), pins the rewrite to the same outputs (bit for bit
in one environment: checked again on 2026-12-03 with both trees side by side): clean
and noisy records, NaN and inf runs, a constant (leads-off) stretch, clipping with and without
known ADC rails, in 1 s chunks, 97-sample chunks and random chunk sizes. Only recorded data and
exact arithmetic build the inputs (no transcendental functions whose last bit may vary by CPU).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from telediag.dsp.quality import SignalQuality
from telediag.sources.readers import read_wfdb

pytestmark = pytest.mark.data

#: The pre-rewrite kernel's outputs (commit e420d48) on the cases below, every chunking: ``"<case>|<chunk
#: samples, 0: random sizes>|<field>"`` -> array (``events``: the JSON list of each call's ``repr``).
#: Written by ``python tests/test_quality_golden.py OUT.npz`` run against e420d48's tree (a worktree
#: on ``PYTHONPATH``). They were first SHA-256 digests, bit for bit; a fresh install (numpy 2.4.6, wfdb
#: on pandas 3.1) moved the features in the 13th digit for the old and the new kernel alike (inputs read
#: differently), so floats are compared to 1e-9 relative and everything else exactly.
REFERENCE = Path(__file__).resolve().parent / "data" / "quality_golden_e420d48.npz"
FIELDS = ("block_start", "sqi", "usable", "features", "flags")


def _outputs(x: np.ndarray, fs: float, cut: int, **kw: float) -> dict[str, np.ndarray]:
    sq = SignalQuality(fs, x.shape[1], **kw)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
    events: list[str] = []
    rng = np.random.default_rng(1)
    i = 0
    while i < x.shape[0]:
        n = cut if cut > 0 else int(rng.integers(1, round(3 * fs)))
        rows, ev = sq.process(x[i:i + n])
        i += n
        for k in FIELDS:
            parts[k].append(np.asarray(getattr(rows, k)))
        events.append(repr(ev))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["events"] = np.array(json.dumps(events))
    return out


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


def test_quality_outputs_as_before_rewrite(data_root: Path) -> None:
    ref = np.load(REFERENCE)
    n = 0
    for name, (x, fs, kw) in _cases(data_root).items():
        for cut in (int(fs), 97, 0):
            for field, got in _outputs(x, fs, cut, **kw).items():
                want = ref[f"{name}|{cut}|{field}"]
                where = f"{name}, chunks of {cut or 'random'}: {field}"
                if got.dtype.kind == "f":
                    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0, equal_nan=True, err_msg=where)
                else:
                    assert got.dtype == want.dtype and np.array_equal(got, want), where
                n += 1
    assert n == len(ref.files)


if __name__ == "__main__":  # write the reference with whatever tree telediag imports from
    import sys

    root = Path(os.environ.get("TELEDIAG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    arrays = {f"{name}|{cut}|{field}": a for name, (x, fs, kw) in _cases(root).items()
              for cut in (int(fs), 97, 0) for field, a in _outputs(x, fs, cut, **kw).items()}
    np.savez_compressed(sys.argv[1], **arrays)
