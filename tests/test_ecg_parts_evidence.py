"""The analysis stage's asystole evidence and analysis-lead fallback components alone (issue 15
item 6), on synthetic blocks: each verdict and its state, without the stage."""

from __future__ import annotations

import doctest

import numpy as np

import telediag.engine.stages.ecg_parts.asystole as asystole_mod
from telediag.engine.stages.ecg_parts.asystole import AsystoleEvidence
from telediag.engine.stages.ecg_parts.clock import SignalHistory

FS = 360.0
HOP = 360
NOISY = 1 << 3  # heavy_noise: the only fault an isoelectric block may have
LEADS_OFF = 1


def _evidence(x: np.ndarray, seg_start=None) -> AsystoleEvidence:  # type: ignore[no-untyped-def]
    h = SignalHistory(np.zeros((20 * HOP, x.shape[1])))
    h.push(x)
    kw = {} if seg_start is None else {"seg_start": seg_start}
    return AsystoleEvidence(FS, h, [0.2] * x.shape[1], [1.0] * x.shape[1], 0, **kw)


def test_doctests() -> None:
    res = doctest.testmod(asystole_mod, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


def test_isoelectric_needs_a_connected_flat_lead_with_known_units() -> None:
    rng = np.random.default_rng(0)
    x = 0.02 * rng.standard_normal((2 * HOP, 1))
    x[HOP + 100:HOP + 140, 0] += 1.5  # 40 samples > 5 % of the block: outside the 5-95 % range test
    ev = _evidence(x)
    assert ev.isoelectric(0, HOP, NOISY, 0)
    assert not ev.isoelectric(0, HOP, LEADS_OFF, 0)  # leads-off: a technical condition, not asystole
    assert not ev.isoelectric(HOP, HOP, NOISY, 0)  # a complex in the block
    h = SignalHistory(np.zeros((4 * HOP, 1)))
    h.push(x)
    assert not AsystoleEvidence(FS, h, [None], [None]).isoelectric(0, HOP, NOISY, 0)  # units unknown
    assert not ev.isoelectric(10 * HOP, HOP, NOISY, 0)  # not held


def test_regular_run_of_found_beats_vetoes_isoelectric() -> None:
    ev = _evidence(np.zeros((20 * HOP, 1)))
    ev.found_beats([(100, 150, 200, False)])
    assert ev.regular_beat_in(0, HOP)  # fewer than REGULAR_RR + 1 found: no evidence either way
    ev = _evidence(np.zeros((20 * HOP, 1)))
    ev.found_beats([(i * HOP + 100, i * HOP + 150, i * HOP + 200, False) for i in range(12)])  # 1 s, regular
    assert ev.regular_beat_in(11 * HOP, 12 * HOP)
    assert not ev.regular_beat_in(12 * HOP, 13 * HOP)  # no beat in the block
    rng = np.random.default_rng(1)
    s = np.cumsum(rng.integers(20, 200, 40))  # fast, irregular "beats" in fine noise
    ev = _evidence(np.zeros((20 * HOP, 1)))
    ev.found_beats([(int(v), int(v) + 1, int(v) + 1, False) for v in s])
    assert not ev.regular_beat_in(int(s[-5]), int(s[-1]) + 2)
    # after a lead switch at 11 * HOP only the beats found since count: too few for a run
    ev = _evidence(np.zeros((20 * HOP, 1)), seg_start=lambda t: 11 * HOP if t >= 11 * HOP else 0)
    ev.found_beats([(i * HOP + 100, i * HOP + 150, i * HOP + 200, False) for i in range(12)])
    assert not ev.regular_beat_in(11 * HOP, 12 * HOP)


def test_baseline_step_and_block_verdict() -> None:
    x = np.zeros((4 * HOP, 2))
    x[2 * HOP:, 0] = 1.5  # the baseline steps by 1.5 mV between blocks 1 and 2
    ev = _evidence(x)
    assert ev.block(0, HOP, True, 0, 0)  # usable, first mean
    assert ev.block(HOP, HOP, True, 0, 0)
    assert not ev.block(2 * HOP, HOP, True, 0, 0)  # usable but stepped: not for asystole
    assert not ev.iso
    assert ev.block(3 * HOP, HOP, False, NOISY, 0) and ev.iso  # unusable, isoelectric, no step
    assert not ev.baseline_step(0, HOP, 1)  # another lead: its own baseline (none yet)
    assert not ev.baseline_step(HOP, HOP, 1)
