"""Cost of the AF detector's P-wave gate (issue 15 item 2): the rhythm monitor with and without it.

The engine's :class:`~telediag.engine.stages.ecg_parts.rhythm.RhythmMonitor` is fed the beats of
MIT-BIH 208's first 10 minutes (``telediag.dsp.qrs.detect``; a seeded synthetic ECG without the
data) in 1 s chunks, with the raw signal pushed into a 10 s :class:`SignalHistory` as the stage
does; the peer is the same monitor without the history (RR-only detection). The difference is
the gate's cost (one Numba kernel per chunk reading the PR windows from the ring buffer).
Printed: ms per 600 s of ECG and us per beat, CPU time (``time.process_time``, best of 5).

Run: ``python benchmarks/bench_af_gate.py`` or ``pytest benchmarks/bench_af_gate.py -s``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from telediag.dsp.qrs import detect
from telediag.engine.stages.ecg_parts.clock import SignalHistory
from telediag.engine.stages.ecg_parts.rhythm import RhythmMonitor

SECONDS = 600.0


def _signal() -> tuple[np.ndarray, float]:
    env = os.environ.get("TELEDIAG_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if (base / "mitdb" / "208.dat").exists():
        from telediag.sources.readers import read_wfdb

        r = read_wfdb(base / "mitdb" / "208")
        return np.ascontiguousarray(r.signal[: int(SECONDS * r.fs)]), r.fs
    fs = 360.0
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * fs)) / fs
    x = np.zeros(t.size)
    for b in np.cumsum(rng.uniform(0.5, 1.1, int(SECONDS / 0.8))):
        i = int(b * fs)
        lo, hi = max(0, i - 20), min(t.size, i + 20)
        x[lo:hi] += np.exp(-0.5 * ((t[lo:hi] - b) / 0.01) ** 2)
    return np.stack([x, 0.5 * x], axis=1) + 0.02 * rng.standard_normal((t.size, 2)), fs


def _beats(x: np.ndarray, fs: float) -> np.ndarray:
    return np.asarray(detect(x[:, 0], fs), dtype=np.int64)


def run(x: np.ndarray, fs: float, beats: np.ndarray, gate: bool) -> float:
    """CPU seconds of the rhythm monitor over the record, 1 s chunks, beats 0.5 s late."""
    m = RhythmMonitor(fs)
    h = SignalHistory(np.zeros((int(10 * fs), x.shape[1])))
    if gate:
        m.attach(h, 0)
    step, bi = int(fs), 0
    t0 = time.process_time()
    for k in range(0, x.shape[0], step):
        h.push(x[k:k + step])
        j = int(np.searchsorted(beats, k + step - int(0.5 * fs)))
        if j > bi:
            m.beats(beats[bi:j].tolist(), ["N"] * (j - bi))
        bi = j
    return time.process_time() - t0


def measure(rounds: int = 5) -> dict[str, float]:
    x, fs = _signal()
    beats = _beats(x, fs)
    run(x, fs, beats, True)  # compile
    with_gate = min(run(x, fs, beats, True) for _ in range(rounds))
    without = min(run(x, fs, beats, False) for _ in range(rounds))
    return {"beats": float(beats.size), "with_gate_ms": 1e3 * with_gate, "without_gate_ms": 1e3 * without,
            "gate_us_per_beat": 1e6 * (with_gate - without) / max(1, beats.size)}


def test_af_gate_cost() -> None:
    r = measure(rounds=2)
    print(f"\nrhythm monitor, {SECONDS:.0f} s, {r['beats']:.0f} beats: with P-wave gate {r['with_gate_ms']:.1f} ms, "
          f"without {r['without_gate_ms']:.1f} ms, gate {r['gate_us_per_beat']:.1f} us/beat (CPU time)")
    assert r["beats"] > 100


if __name__ == "__main__":
    r = measure()
    print({k: round(v, 2) for k, v in r.items()})
