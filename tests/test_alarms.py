"""Rhythm alarms: each alarm proven on a synthetic or real case; chunk invariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from telediag.dsp.alarms import AlarmParams, RhythmAlarms
from telediag.dsp.hr import HeartRateMeter
from telediag.errors import DSPError

FS = 360.0


def run(beats: list[float], labels: list[str] | None = None, seconds: float | None = None,
        signal_ok: bool = True, params: AlarmParams | None = None, group: int = 1) -> list[tuple]:
    """Feed beats (s) and 1 s ticks with the EC13 meter's displayed rate, in time order."""
    a = RhythmAlarms(FS, params)
    hr = HeartRateMeter(FS)
    samples = [int(round(b * FS)) for b in beats]
    labels = labels or ["N"] * len(samples)
    end = int((seconds or (beats[-1] + 1)) * FS)
    events = []
    i = 0
    for tick in range(int(FS), end, int(FS)):
        j = i
        while j < len(samples) and samples[j] <= tick:
            j += 1
        for k in range(i, j, group):  # beats in groups of `group`
            sl = slice(k, min(k + group, j))
            hr.update(np.asarray(samples[sl]))
            events += a.beats(samples[sl], labels[sl])
        i = j
        events += a.tick(tick, hr.at(tick), signal_ok)
    return [(e.type, e.state, e.onset, e.end) for e in events]


def train(rate_bpm: float, start: float, stop: float) -> list[float]:
    return list(np.arange(start, stop, 60.0 / rate_bpm))


def test_asystole_on_at_last_beat_and_off_at_next() -> None:
    beats = train(75, 0.5, 10) + train(75, 17, 25)
    ev = run(beats)
    last, nxt = int(round(beats[len(train(75, 0.5, 10)) - 1] * FS)), int(round(17 * FS))
    assert ("asystole", "on", last, None) in ev and ("asystole", "off", last, nxt) in ev
    # raised within 10 s of the last beat (EC13), here at asystole_s = 4 s
    assert [e for e in ev if e[0] == "asystole"][0][2] == last


def test_no_asystole_when_the_signal_is_unusable() -> None:
    beats = train(75, 0.5, 10) + train(75, 17, 25)
    ev = run(beats, signal_ok=False)
    # the gap still shows as a pause when beats resume, but no asystole was raised while unusable
    assert not any(e[0] == "asystole" and e[1] == "on" and e[3] is None for e in ev[:-3])


@pytest.mark.parametrize(("rate", "kind"), [(35, "brady"), (170, "tachy")])
def test_extreme_rates_after_sustain(rate: float, kind: str) -> None:
    beats = train(75, 0.5, 20) + train(rate, 20, 50) + train(75, 50 + 60 / rate, 80)
    ev = run(beats)
    ons = [e for e in ev if e[0] == kind and e[1] == "on"]
    offs = [e for e in ev if e[0] == kind and e[1] == "off"]
    assert len(ons) == 1 and len(offs) == 1
    assert 20 * FS <= ons[0][2] <= 32 * FS  # onset when the displayed rate crossed the limit
    assert offs[0][3] is not None and offs[0][3] >= 50 * FS
    assert not [e for e in run(train(75, 0.5, 60)) if e[0] in ("brady", "tachy")]


def test_ventricular_run_needs_three_consecutive_v() -> None:
    beats = train(80, 0.5, 12)
    labels = ["N"] * len(beats)
    labels[3:5] = ["V", "V"]  # a couplet: no alarm
    labels[8:12] = ["V"] * 4  # a run of four
    ev = run(beats, labels)
    vr = [e for e in ev if e[0] == "vrun"]
    s = [int(round(b * FS)) for b in beats]
    assert vr == [("vrun", "on", s[8], None), ("vrun", "off", s[8], s[11])]


def test_ventricular_run_not_from_beats_in_or_just_after_unusable_signal() -> None:
    """V beats within ``vrun_guard_s`` after an unusable block start no run; an unusable span
    between two V beats ends the run (its beats in between were never seen)."""
    a = RhythmAlarms(360.0)
    a.signal(0, 360, False)  # block [0, 1 s) unusable
    assert a.beats([400, 500], ["V", "V"]) == []  # within 0.5 s of it: no part of a run
    assert a.beats([600, 700], ["V", "V"]) == []  # the run starts at 600
    assert [(e.type, e.onset) for e in a.beats([800], ["V"])] == [("vrun", 600)]
    b = RhythmAlarms(360.0)
    b.beats([1000, 1300], ["V", "V"])
    b.signal(1400, 1500, False)
    assert b.beats([1700, 2000, 2300], ["V", "V", "V"]) == []  # the span ends the run; 1700 is guarded
    assert [(e.type, e.onset) for e in b.beats([2600], ["V"])] == [("vrun", 2000)]
    c = RhythmAlarms(360.0, AlarmParams(vrun_guard_s=0.0))  # off: the old rule
    c.signal(0, 360, False)
    assert [e.type for e in c.beats([400, 500, 600], ["V", "V", "V"])] == ["vrun"]


def test_pause_reports_the_long_interval() -> None:
    beats = [0.5, 1.3, 2.1, 5.0, 5.8]
    ev = run(beats, seconds=8)
    assert ("pause", "off", int(2.1 * FS), int(5.0 * FS)) in ev
    assert not any(e[0] == "asystole" for e in ev)  # 2.9 s < asystole_s


def test_frequent_ectopy_per_minute_with_bigeminy() -> None:
    beats = train(72, 0.5, 180)
    labels = ["V" if i % 2 and 30 < b < 90 else "N" for i, b in enumerate(beats)]
    ev = run(beats, labels)
    ect = [e for e in ev if e[0] == "ectopy"]
    assert [e[1] for e in ect] == ["on", "off"]
    assert 30 * FS <= ect[0][2] <= 32 * FS and ect[1][3] is not None and ect[1][3] > 90 * FS


def test_grouping_of_beats_does_not_change_events() -> None:
    rng = np.random.default_rng(3)
    beats = list(np.cumsum(rng.uniform(0.3, 1.4, 200)))
    beats += list(beats[-1] + 8 + np.cumsum(rng.uniform(0.3, 1.4, 50)))
    labels = list(rng.choice(["N", "N", "N", "V", "S"], len(beats)))
    assert run(beats, labels, group=1) == run(beats, labels, group=7)


def test_bad_params() -> None:
    with pytest.raises(DSPError):
        AlarmParams(vrun_guard_s=-1.0)
    with pytest.raises(DSPError, match="brady_bpm < tachy_bpm"):
        AlarmParams(brady_bpm=200)
    with pytest.raises(DSPError, match="vrun_beats must be >= 2"):
        AlarmParams(vrun_beats=1)


AAMI = {**dict.fromkeys("NLRej", "N"), **dict.fromkeys("AaJS", "S"), **dict.fromkeys("VE", "V"), "F": "F",
        **dict.fromkeys("/fQ", "Q")}


@pytest.mark.parametrize(("record", "kind"), [("119", "ectopy"), ("207", "vrun"), ("203", "vrun")])
def test_real_records_raise_their_alarms(mitdb: Path, record: str, kind: str) -> None:
    ann = wfdb.rdann(str(mitdb / record), "atr")
    keep = [i for i, s in enumerate(ann.symbol) if s in AAMI]
    samples = ann.sample[keep]
    labels = [AAMI[ann.symbol[i]] for i in keep]
    a = RhythmAlarms(ann.fs)
    ev = a.beats(samples, labels)
    assert any(e.type == kind and e.state == "on" for e in ev)


def test_engine_stage_publishes_asystole_on_real_ecg(mitdb: Path) -> None:
    from telediag.engine.stage import StreamSpec
    from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
    from telediag.transports.wire import Chunk

    r = wfdb.rdrecord(str(mitdb / "119"), sampto=360 * 60)
    x = r.p_signal.copy()
    rng = np.random.default_rng(0)
    # 10 s of asystole: baseline with 30 uV of noise, electrodes still on
    x[360 * 20:360 * 30] = rng.standard_normal((3600, 2)) * 0.03 + x[360 * 20:360 * 30].mean(0)
    st = EcgAnalysis(EcgAnalysisParams())
    st.open(StreamSpec("a/ecg", "ecg", 360.0, tuple(r.sig_name), tuple(r.units)))
    alarms = []
    for k in range(0, len(x), 360):
        c = Chunk.signal("ecg", "a/ecg", k // 360, int(k / 360 * 1e9), x[k:k + 360], 360.0,
                         tuple(r.sig_name), tuple(r.units))
        alarms += [rec.body for rec in st.process(c).records if rec.kind == "alarm"]
    on = [a for a in alarms if a["type"] == "asystole" and a["state"] == "on"]
    off = [a for a in alarms if a["type"] == "asystole" and a["state"] == "off"]
    assert len(on) == 1 and len(off) == 1
    assert 19.0 <= on[0]["onset_sample"] / 360 <= 20.1 and 30.0 <= off[0]["end_sample"] / 360 <= 32.5
    assert on[0]["onset_ns"] == int(round(on[0]["onset_sample"] / 360 * 1e9)) or abs(
        on[0]["onset_ns"] - on[0]["onset_sample"] / 360 * 1e9) < 1e6
