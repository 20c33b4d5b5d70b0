"""AF atrial-activity gate (issue 15 item 2): the P-wave correlation of :mod:`telediag.dsp.atrial`
alone (streaming == offline, real MIT-BIH 201 AF vs sinus), and in the live ``ecg`` stage
(irregular RR with P waves is not AF; the same RR without P waves is; any chunking)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import wfdb

import telediag.dsp.atrial as atrial_mod
from telediag.dsp.af import AFDetector
from telediag.dsp.atrial import PWaveTracker, p_wave_correlation, p_window
from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
from telediag.engine.stages.ecg_parts.clock import SignalHistory
from telediag.transports.wire import Chunk

FS = 360.0


def test_doctests() -> None:
    assert doctest.testmod(atrial_mod).failed == 0


def _ref_201(mitdb: Path, minutes: float) -> tuple[np.ndarray, np.ndarray, list[str | None], list[tuple[int, str]]]:
    n = int(minutes * 60 * FS)
    rec = wfdb.rdrecord(str(mitdb / "201"), sampto=n)
    ann = wfdb.rdann(str(mitdb / "201"), "atr", sampto=n)
    beats = [(int(s), sym) for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym.isalpha() or sym in "/!"]
    rhythm = [(int(s), a.strip("\x00")) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note, strict=True)
              if sym == "+"]
    lab = [("N" if sym in "NLRej" else "S" if sym in "AaJS" else "V") for _, sym in beats]
    return rec.p_signal[:, 0], np.array([s for s, _ in beats]), lab, rhythm  # type: ignore[return-value]


def test_streaming_equals_offline_for_any_grouping(mitdb: Path) -> None:
    x, s, lab, _ = _ref_201(mitdb, 4)
    ref = p_wave_correlation(x, s, lab, FS)
    a, b = p_window(FS)
    rng = np.random.default_rng(0)
    for _ in range(3):
        tr = PWaveTracker(FS)
        got, k = [], 0
        while k < s.size:
            g = int(rng.integers(1, 9))
            seg = np.stack([x[r - a:r - b] if r >= a else np.full(a - b, np.nan) for r in s[k:k + g]])
            got.append(tr.beats(seg, lab[k:k + g]))
            k += g
        np.testing.assert_array_equal(np.concatenate(got), ref)
    assert np.isnan(ref[[i for i, v in enumerate(lab) if v == "V"]]).all()  # V beats take no part
    # the stage's path: windows read from its ring buffer (10 s), chunks of 1 s, beats 0.5 s late
    h, tr, got, k = SignalHistory(np.zeros((int(10 * FS), 1))), PWaveTracker(FS), [], 0
    for c in range(0, x.size, int(FS)):
        h.push(x[c:c + int(FS), None])
        j = int(np.searchsorted(s, h.end - int(0.5 * FS)))
        got.append(tr.from_ring(h.buf, h.end, 0, s[k:j], lab[k:j]))
        k = j
    got.append(tr.from_ring(h.buf, h.end, 0, s[k:], lab[k:]))
    np.testing.assert_array_equal(np.concatenate(got), ref)


def test_p_waves_absent_in_af_present_in_sinus_on_mitdb_201(mitdb: Path) -> None:
    """201: AF for 0-378 s, then nodal/sinus rhythm from 385 s (reference rhythm labels)."""
    x, s, lab, rhythm = _ref_201(mitdb, 8)
    assert rhythm[0][1] == "(AFIB" and any(a == "(N" for _, a in rhythm)
    c = p_wave_correlation(x, s, lab, FS)
    n_start = next(t for t, a in rhythm if a == "(N")
    af = c[(s > 60 * FS) & (s < rhythm[1][0])]
    sinus = c[(s > n_start + 30 * FS)]
    assert np.nanmedian(af) < 0.2 < 0.8 < np.nanmedian(sinus)


def _synthetic(rr: np.ndarray, p_wave: bool, seed: int) -> np.ndarray:
    """R spikes at the RR intervals, with (or without) a P wave 0.16 s before each, a T wave,
    and (without P waves) 6 Hz fibrillatory waves of random phase."""
    rng = np.random.default_rng(seed)
    beats = np.cumsum(np.r_[1.0, rr])
    n = int((beats[-1] + 1.0) * FS)
    t = np.arange(n) / FS
    x = 0.01 * rng.standard_normal(n)
    for b in beats:
        w = slice(max(0, int((b - 0.4) * FS)), min(n, int((b + 0.5) * FS)))
        tt = t[w] - b
        x[w] += 1.2 * np.exp(-tt**2 / (2 * 0.012**2)) + 0.25 * np.exp(-(tt - 0.28) ** 2 / (2 * 0.04**2))
        if p_wave:
            x[w] += 0.15 * np.exp(-(tt + 0.16) ** 2 / (2 * 0.02**2))
    if not p_wave:
        phase = np.cumsum(2 * np.pi * (6.0 + 0.8 * np.sin(2 * np.pi * 0.13 * t)) / FS)
        x += 0.06 * np.sin(phase + rng.uniform(0, 2 * np.pi))
    return x


def _afib_alarms(x: np.ndarray, chunk_s: float, **params: float) -> list[tuple[str, int]]:
    st = EcgAnalysis(EcgAnalysisParams(classify="off", **params))  # type: ignore[arg-type]
    st.open(StreamSpec("t/ecg", "ecg", FS, ("II",), ("mV",)))
    out = []
    step = int(chunk_s * FS)
    for k in range(0, x.size, step):
        out += st.process(Chunk.signal("ecg", "t/ecg", k // step, round(k * 1e9 / FS), x[k:k + step, None], FS,
                                       channels=("II",), units=("mV",))).records
    out += st.close().records
    return [(r.body["state"], r.body["onset_sample"]) for r in out
            if r.topic.startswith("alarm/") and r.body["type"] == "afib"]


def test_irregular_rhythm_with_p_waves_is_not_af_in_the_stage() -> None:
    rr = np.random.default_rng(7).uniform(0.5, 1.1, 150)  # as irregular as AF
    with_p = _afib_alarms(_synthetic(rr, True, 1), 1.0)
    without_p = _afib_alarms(_synthetic(rr, False, 1), 1.0)
    assert with_p == []  # P waves before every beat: sinus arrhythmia / atrial ectopy, not AF
    assert without_p and without_p[0][0] == "on"
    assert _afib_alarms(_synthetic(rr, False, 1), 0.25) == without_p  # any chunking
    assert _afib_alarms(_synthetic(rr, True, 1), 1.0, af_p_on=1.0, af_p_off=1.0)  # gate off: RR only
    with pytest.raises(ValueError, match="p_on <= p_off"):
        EcgAnalysisParams(af_p_on=0.7, af_p_off=0.6)


def test_detector_gate_thresholds() -> None:
    rng = np.random.default_rng(4)
    beats = np.cumsum(np.r_[0, rng.uniform(0.4, 1.1, 150)] * FS).astype(int)
    high, low = np.full(beats.size, 0.95), np.full(beats.size, 0.05)
    assert AFDetector(FS).beats(beats, None, None, high)[0] == []
    tr, _ = AFDetector(FS).beats(beats, None, None, low)
    assert [t.state for t in tr] == ["on"] and tr[0].detail["p_corr"] == 0.05
    # P waves come back in the middle of the irregular run: AF ends
    back = np.r_[low[:100], high[100:]]
    assert [t.state for t in AFDetector(FS).beats(beats, None, None, back)[0]] == ["on", "off"]
    with pytest.raises(ValueError):
        PWaveTracker(FS, alpha=0.0)


def _episodes_201(mitdb: Path, t0: float, t1: float) -> list[tuple[float, float]]:
    import dataclasses

    from telediag.engine.config import load_config
    from telediag.evaluation.ecg_analyze import analyze_recording
    from telediag.sources.readers import read_wfdb

    full = read_wfdb(mitdb / "201")
    a, b = int(t0 * full.fs), int(t1 * full.fs)
    res = analyze_recording(dataclasses.replace(full, signal=full.signal[a:b]), config=load_config())
    return [(e["onset_sample"] / full.fs + t0, e["end_sample"] / full.fs + t0) for e in res["rhythm"]["episodes"]]


def test_af_ends_with_the_p_waves_on_mitdb_201(mitdb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """201, 420-660 s: sinus, AF 477-514 s (reference), then an irregular sinus rhythm with
    premature/blocked atrial beats. The default analysis finds the AF and ends it when the P
    waves come back; RR irregularity alone kept it on past 600 s."""
    eps = _episodes_201(mitdb, 420, 660)
    assert len(eps) == 1 and eps[0][0] < 514 and 477 < eps[0][1] < 560
    from telediag.engine.stages.ecg_parts.rhythm import RhythmMonitor

    monkeypatch.setattr(RhythmMonitor, "attach", lambda self, history, lead: None)  # RR only
    assert any(e > 600 for _, e in _episodes_201(mitdb, 420, 660))


def test_af_entry_does_not_read_s_labels_on_mitdb_201(mitdb: Path) -> None:
    """AF on 201 (0-378 s) is found with every beat labelled S exactly as with every beat N:
    the detector reads RR and P waves only (a beat model that labels AF beats S - ecg_beats
    2.2.0 - silenced AF through the old S-fraction gate)."""
    x, s, lab, rhythm = _ref_201(mitdb, 8)
    runs = {}
    for name in ("N", "S"):
        labs: list[str | None] = [name if v != "V" else "V" for v in lab]
        tr, state = AFDetector(FS).beats(s, labs, None, p_wave_correlation(x, s, labs, FS))
        runs[name] = ([(t.state, t.beat) for t in tr], state.tolist())
    assert runs["S"] == runs["N"]
    trans, state = runs["S"]
    af_end = rhythm[1][0]
    assert trans and trans[0][0] == "on" and trans[0][1] < 60 * FS
    assert np.mean(np.array(state)[(s > 60 * FS) & (s < af_end)]) > 0.9
