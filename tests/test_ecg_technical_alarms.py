"""Technical alarms supersede physiological ones (issue 15 item 5; IEC 60601-2-27).

Leads-off or unusable signal raises ``leads_off`` / ``signal_unusable`` on ``alarm/<stream>``
and never asystole, bradycardia or pause; true asystole and bradycardia on clean signal still
alarm. Each combination is run through the ``ecg_analysis`` stage on a seeded synthetic ECG.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from telediag.dsp.alarms import RhythmAlarms, TechnicalAlarms
from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
from telediag.transports.wire import Chunk

FS = 360.0
PHYSIO_SILENT = {"asystole", "brady", "pause"}


def ecg(dur_s: float, rr_s: float = 0.8, seed: int = 0) -> np.ndarray:
    """Seeded synthetic ECG (1 mV QRS, T wave, 10 uV noise), 2 leads, mV."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur_s * FS)) / FS
    lead = np.zeros(t.size)
    for b in np.arange(0.4, dur_s - 0.1, rr_s):
        lead += (np.exp(-((t - b) ** 2) / (2 * 0.012**2)) - 0.25 * np.exp(-((t - b - 0.03) ** 2) / (2 * 0.01**2))
                 + 0.2 * np.exp(-((t - b - 0.25) ** 2) / (2 * 0.04**2)))
    x = np.stack([lead, 0.6 * lead], axis=1)
    return x + rng.normal(0.0, 0.01, x.shape)


def alarms_of(x: np.ndarray, **params: Any) -> list[dict[str, Any]]:
    st = EcgAnalysis(EcgAnalysisParams(**params))
    st.open(StreamSpec("t/ecg", "ecg", FS, ("I", "II"), ("mV", "mV")))
    out = []
    for k in range(0, x.shape[0], 360):
        c = Chunk.signal("ecg", "t/ecg", k // 360, round(k * 1e9 / FS), x[k:k + 360], FS, ("I", "II"), ("mV", "mV"))
        out += [r.body for r in st.process(c).records if r.kind == "alarm"]
    out += [r.body for r in st.close().records if r.kind == "alarm"]
    return out


def kinds(alarms: list[dict[str, Any]], state: str = "on") -> set[str]:
    return {a["type"] for a in alarms if a["state"] == state or (a["type"] == "pause" and state == "on")}


def span(x: np.ndarray, a_s: float, b_s: float) -> slice:
    return slice(int(a_s * FS), int(b_s * FS))


@pytest.mark.parametrize("seconds", [3.0, 10.0])
def test_nan_run_raises_leads_off_not_asystole_or_pause(seconds: float) -> None:
    x = ecg(40.0)
    x[span(x, 20.0, 20.0 + seconds)] = np.nan
    al = alarms_of(x)
    assert "leads_off" in kinds(al) and not kinds(al) & PHYSIO_SILENT, al
    on = [a for a in al if a["type"] == "leads_off" and a["state"] == "on"][0]
    off = [a for a in al if a["type"] == "leads_off" and a["state"] == "off"][0]
    assert 19.0 <= on["onset_sample"] / FS <= 20.0 and 20.0 + seconds <= off["end_sample"] / FS <= 24.0 + seconds
    assert on["category"] == "technical"


def test_constant_signal_leads_off() -> None:
    x = ecg(40.0)
    x[span(x, 20.0, 28.0)] = 0.123  # exactly constant: electrode off, amplifier holding
    al = alarms_of(x)
    assert "leads_off" in kinds(al) and not kinds(al) & PHYSIO_SILENT, al


def test_flat_line_under_10_uv_is_signal_unusable_not_asystole() -> None:
    x = ecg(40.0)
    rng = np.random.default_rng(7)
    x[span(x, 20.0, 30.0)] = rng.normal(0.0, 0.001, (int(10 * FS), 2))  # 1 uV: a flat trace
    al = alarms_of(x)
    assert kinds(al) & {"signal_unusable", "leads_off"} and not kinds(al) & PHYSIO_SILENT, al


def test_heavy_noise_is_signal_unusable_not_asystole_pause_or_brady() -> None:
    x = ecg(60.0)
    rng = np.random.default_rng(8)
    x[span(x, 20.0, 35.0)] += rng.normal(0.0, 1.0, (int(15 * FS), 2))
    al = alarms_of(x)
    assert "signal_unusable" in kinds(al) and not kinds(al) & PHYSIO_SILENT, al
    assert any(a["type"] == "signal_unusable" and a["state"] == "off" for a in al)


def test_true_asystole_on_clean_signal_still_alarms() -> None:
    x = ecg(40.0)
    rng = np.random.default_rng(9)
    x[span(x, 20.0, 30.0)] = rng.normal(0.0, 0.03, (int(10 * FS), 2))  # standstill, 30 uV baseline noise
    al = alarms_of(x)
    on = [a for a in al if a["type"] == "asystole" and a["state"] == "on"]
    assert len(on) == 1 and 19.0 <= on[0]["onset_sample"] / FS <= 20.1
    assert on[0]["category"] == "physiological"


def test_bradycardia_on_clean_signal_still_alarms() -> None:
    al = alarms_of(ecg(60.0, rr_s=1.9))  # 31.6 bpm
    assert "brady" in kinds(al) and not kinds(al) & {"leads_off", "signal_unusable"}, al


def test_pause_on_clean_signal_still_alarms() -> None:
    x = ecg(40.0)
    rng = np.random.default_rng(10)
    x[span(x, 20.1, 23.2)] = rng.normal(0.0, 0.03, (int(23.2 * FS) - int(20.1 * FS), 2))  # a 3.2 s pause
    al = alarms_of(x)
    assert "pause" in kinds(al) and not kinds(al) & {"leads_off", "signal_unusable"}, al


def test_alarm_unit_interval_over_unusable_signal_is_not_measured() -> None:
    a = RhythmAlarms(FS)
    a.beats([0, 288])
    a.signal(360, 720, False)  # one unusable block between the beats
    ev = a.beats([288 + int(6 * FS)])  # 6 s interval, 4.8 s of it after the unusable span
    assert [e.type for e in ev if e.state == "on"] == ["asystole"] and ev[0].onset == 720
    a2 = RhythmAlarms(FS)
    a2.beats([0, 288])
    a2.signal(400, 1400, False)
    assert a2.beats([288 + int(3 * FS)]) == []  # no pause, no asystole across noise
    a3 = RhythmAlarms(FS)
    a3.beats([0, 288])
    a3.gap(500)
    assert a3.beats([288 + int(3 * FS)]) == []  # nor across a gap
    a4 = RhythmAlarms(FS)
    a4.beats([0, 288])
    a4.signal(500, 1000, False)
    assert a4.tick(288 + int(4.2 * FS), 0.0, True) == []  # asystole counts from the usable signal
    assert [e.type for e in a4.tick(1000 + int(4 * FS), 0.0, True)] == ["asystole"]


def test_technical_alarm_unit_switches_to_leads_off() -> None:
    t = TechnicalAlarms(360, 2, 2)
    ev = t.blocks([0, 360, 720, 1080, 1440, 1800], [False, False, False, True, True, True], [8, 8, 1, 0, 0, 0])
    assert [(e.type, e.state, e.onset, e.end) for e in ev] == [
        ("signal_unusable", "on", 0, None), ("signal_unusable", "off", 0, 720),
        ("leads_off", "on", 720, None), ("leads_off", "off", 720, 1080)]
    assert t.active is None
    assert TechnicalAlarms(360, 2, 2).blocks([0, 360], [False, True], [8, 0]) == []  # one block: no alarm
