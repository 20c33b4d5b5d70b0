"""The analysis stage's asystole evidence and analysis-lead fallback components alone (issue 15
item 6), on synthetic blocks: each verdict and its state, without the stage."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import telediag.engine.stages.ecg_parts.asystole as asystole_mod
import telediag.engine.stages.ecg_parts.leads as leads_mod
from telediag.dsp.quality import SQIUpdate
from telediag.engine.stages.ecg_parts.asystole import AsystoleEvidence
from telediag.engine.stages.ecg_parts.clock import SignalHistory
from telediag.engine.stages.ecg_parts.leads import DetectorHandover, LeadFallback, lead_samples

FS = 360.0
HOP = 360
NOISY = 1 << 3  # heavy_noise: the only fault an isoelectric block may have
LEADS_OFF = 1


def _evidence(x: np.ndarray, seg_start=None) -> AsystoleEvidence:  # type: ignore[no-untyped-def]
    h = SignalHistory(np.zeros((20 * HOP, x.shape[1])))
    h.push(x)
    kw = {} if seg_start is None else {"seg_start": seg_start}
    return AsystoleEvidence(FS, h, [0.2] * x.shape[1], [1.0] * x.shape[1], 0, **kw)


@pytest.mark.parametrize("mod", [asystole_mod, leads_mod])
def test_doctests(mod: object) -> None:
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
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


# -- analysis-lead fallback ---------------------------------------------------------------
def _rows(b0: int, usable: list[list[bool]], flags: int = 0) -> SQIUpdate:
    n, c = len(usable), len(usable[0])
    u = np.array(usable, dtype=bool)
    return SQIUpdate(np.arange(b0, b0 + n * HOP, HOP, dtype=np.int64), np.where(u, 0.9, 0.1),
                     u, np.zeros((n, c, 5)), np.full((n, c), flags, np.int64))


def _spikes(n: int, every: float, start: float = 0.5) -> np.ndarray:
    y = np.zeros(n)
    for t in np.arange(start, n / FS, every):
        i = int(t * FS)
        y[max(0, i - 20):i + 20] += np.exp(-0.5 * ((np.arange(max(0, i - 20), min(n, i + 20)) - i) / 3.6) ** 2)
    return y


def test_lead_fallback_switches_on_the_technical_delay_and_returns_with_hysteresis() -> None:
    h = SignalHistory(np.zeros((40 * HOP, 2)))
    lf = LeadFallback(FS, 0, h, hop=HOP, n_tech=3, n_return=4, iso_lims=[0.2, 0.2], qrs={}, enabled=True)
    seen: list[tuple[int, int]] = []
    on_switch = lambda t, lead, verdicts: seen.append((t, lead))  # noqa: E731
    x = np.zeros((2 * HOP, 2))
    assert lf.follow(_rows(0, [[True, True]] * 2), x, 0, True, [], on_switch) is None  # all usable: nothing
    assert lf.follow(_rows(2 * HOP, [[False, True]] * 2), x, 2 * HOP, False, [], on_switch) == []  # 2 < n_tech
    sw = lf.follow(_rows(4 * HOP, [[False, True]] * 2), x, 4 * HOP, False, [], on_switch)
    assert sw == [(5 * HOP, 0, 1, "unusable")] and seen == [(5 * HOP, 1)]  # 3rd unusable block, at its end
    assert lf.active == 1 and lf.lead_at(5 * HOP - 1) == 0 and lf.lead_at(5 * HOP) == 1
    assert lf.seg_start(6 * HOP) == 5 * HOP and lf.seg_start(HOP) == 0
    # the preferred lead back: 4 usable blocks (hysteresis) before analysis returns to it
    sw = lf.follow(_rows(6 * HOP, [[True, True]] * 3), np.zeros((3 * HOP, 2)), 6 * HOP, True, [], on_switch)
    assert sw == [] and lf.active == 1
    sw = lf.follow(_rows(9 * HOP, [[True, True]]), np.zeros((HOP, 2)), 9 * HOP, True, [], on_switch)
    assert sw == [(10 * HOP, 1, 0, "preferred_usable")] and lf.lead_at(10 * HOP) == 0
    off = LeadFallback(FS, 0, h, hop=HOP, n_tech=1, n_return=1, iso_lims=[0.2, 0.2], qrs={}, enabled=False)
    assert off.follow(_rows(0, [[False, True]] * 5), np.zeros((5 * HOP, 2)), 0, False, [], on_switch) is None


def test_lead_fallback_needs_a_concordant_lead() -> None:
    n = 20 * HOP
    beats = [(int(t * FS), int(t * FS) + 50, int(t * FS) + 60, True) for t in np.arange(0.5, 20, 1.0)]
    for every, expected in ((1.0, True), (2.0, False)):  # lead 1 shows every complex / every other one
        h = SignalHistory(np.zeros((40 * HOP, 2)))
        h.push(np.stack([_spikes(n, 1.0), _spikes(n, every)], axis=1))
        lf = LeadFallback(FS, 0, h, hop=HOP, n_tech=3, n_return=4, iso_lims=[0.2, 0.2], qrs={}, enabled=True)
        assert lf.concordant(1, n, np.zeros((0, 2)), n, beats) is expected
    assert lf.concordant(1, n, np.zeros((0, 2)), n, beats[:2]) is False  # checked once per run and lead (cached)
    lf2 = LeadFallback(FS, 0, h, hop=HOP, n_tech=3, n_return=4, iso_lims=[0.2, 0.2], qrs={}, enabled=True)
    assert lf2.concordant(1, n, np.zeros((0, 2)), n, beats[:2])  # < 3 reference beats: no evidence against


def test_lead_samples_joins_history_and_chunk() -> None:
    h = SignalHistory(np.zeros((10, 1)))
    h.push(np.arange(6, dtype=np.float64)[:, None])
    x = np.arange(6, 9, dtype=np.float64)[:, None]
    np.testing.assert_array_equal(lead_samples(h, 0, 4, 8, x, 6), [4, 5, 6, 7])
    assert lead_samples(h, 0, -5, 2, x, 6) is None


def test_detector_handover_keeps_the_beat_series_across_a_switch() -> None:
    from telediag.dsp.qrs import QRSDetector

    n = 16 * HOP
    sig = np.stack([_spikes(n, 1.0), 0.5 * _spikes(n, 1.0)], axis=1)
    h = SignalHistory(np.zeros((40 * HOP, 2)))
    ho = DetectorHandover(FS, {}, h)
    det = QRSDetector(FS)
    pre = 12 * HOP
    b0, _ = ho.shift(*det.process_with_confirm(sig[:pre, 0]))
    h.push(sig[:pre])
    t = pre + HOP // 2  # the switch to lead 1 takes effect mid-chunk
    det2, b1, c1 = ho.run(det, sig[pre:], pre, [(t, 0, 1, "unusable")])
    assert det2 is not det
    beats = np.concatenate([b0, b1])
    assert np.all(np.diff(beats) > 0.9 * FS) and np.all(np.diff(beats[beats > 4 * HOP]) < 1.1 * FS)  # none twice, none lost
    assert beats[-1] > n - 2 * HOP and np.all(c1 >= b1)
