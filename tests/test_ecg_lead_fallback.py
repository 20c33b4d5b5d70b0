"""Analysis-lead fallback (``lead_fallback``): when the detection lead comes off and another lead is
usable, beats, rate, rhythm and alarms go on from that lead (OUTPUTS.md 4.5 "Analysis lead").

Before, only the technical alarm remained: asystole, brady, tachy, runs, pauses and AF were no longer
monitored although a good lead was there. Real MIT-BIH 119 (60 s, MLII + V1), lead 0 spoiled for 20 s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag.engine.config import load_config
from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysisParams
from telediag.transports.wire import Chunk

wfdb = pytest.importorskip("wfdb")

FS = 360.0
NAMES = ("MLII", "V1")
PHYSIO = {"asystole", "brady", "tachy", "pause", "afib", "vrun"}


def run(x: np.ndarray, chunk_s: float = 1.0, **params: Any) -> list[Chunk]:
    """The built-in ``ecg_analysis`` stage (classifier on), fed ``x`` in ``chunk_s`` chunks; all records."""
    sc = next(s for s in load_config().pipelines["ecg"] if s.name == "analysis")
    st = sc.stage_type(dataclasses.replace(sc.params, **params), name="analysis")
    st.open(StreamSpec("s/ecg", "ecg", FS, NAMES, ("mV", "mV")))
    n = max(1, round(chunk_s * FS))
    recs: list[Chunk] = []
    for i, k in enumerate(range(0, len(x), n)):
        recs += st.process(Chunk.signal("ecg", "s/ecg", i, round(k / FS * 1e9), x[k:k + n], FS, NAMES,
                                        ("mV", "mV"))).records
    return recs + st.close().records


def alarms(recs: list[Chunk]) -> list[dict[str, Any]]:
    return [r.body for r in recs if r.kind == "alarm"]


def on(recs: list[Chunk]) -> set[str]:
    return {a["type"] for a in alarms(recs) if a["state"] == "on" or a["type"] == "pause"}


def switches(recs: list[Chunk]) -> list[dict[str, Any]]:
    return [r.body for r in recs if r.kind == "event" and r.body.get("type") == "analysis_lead"]


def beats(recs: list[Chunk]) -> list[tuple[float, str, bool, str | None]]:
    """(time s, lead, usable, label) of every published beat."""
    return [(b["sample"] / FS, r.body["lead"], b["usable"], b["label"]) for r in recs if r.kind == "beats"
            for b in r.body["beats"]]


@pytest.fixture(scope="module")
def rec119(mitdb: Path) -> tuple[np.ndarray, np.ndarray]:
    r = wfdb.rdrecord(str(mitdb / "119"), sampto=int(60 * FS))
    ann = wfdb.rdann(str(mitdb / "119"), "atr", sampto=int(60 * FS))
    ref = np.array([s for s, c in zip(ann.sample, ann.symbol, strict=True) if c in "NLRejAaJSVEFfQ/"]) / FS
    return r.p_signal.copy(), ref


def spoil(x: np.ndarray, kind: str, a_s: float = 20.0, b_s: float = 40.0) -> np.ndarray:
    y = x.copy()
    a, b = int(a_s * FS), int(b_s * FS)
    if kind == "nan":
        y[a:b, 0] = np.nan
    elif kind == "flat":
        y[a:b, 0] = 0.0
    elif kind == "noise50":
        y[a:b, 0] = np.random.default_rng(0).normal(0.0, 50.0, b - a)
    return y


def asystole(x: np.ndarray, a_s: float, b_s: float) -> np.ndarray:
    """Both leads a connected, isoelectric line (30 uV noise at the baseline) over [a_s, b_s)."""
    y = x.copy()
    a, b = int(a_s * FS), int(b_s * FS)
    y[a:b] = np.random.default_rng(0).standard_normal((b - a, 2)) * 0.03 + x[a:b].mean(0)
    return y


@pytest.mark.parametrize("kind", ["nan", "flat", "noise50"])
def test_detection_moves_to_the_usable_lead_and_back(rec119: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    x, ref = rec119
    recs = run(spoil(x, kind))
    sw = switches(recs)
    # to V1 once lead 0 was unusable for the technical-alarm delay (2 s), back 10 s after it is usable again
    assert [(e["from"], e["to"], e["reason"]) for e in sw] == [("MLII", "V1", "unusable"),
                                                              ("V1", "MLII", "preferred_usable")], sw
    assert 21.0 <= sw[0]["sample"] / FS <= 23.0 and 50.0 <= sw[1]["sample"] / FS <= 59.0, sw
    # the technical alarm stays on (on lead 0); no physiological alarm from the lost lead
    tech = [a for a in alarms(recs) if a["category"] == "technical"]
    assert tech and all(a["lead"] == "MLII" for a in tech)
    assert {a["type"] for a in tech} & {"leads_off", "signal_unusable"}
    assert not on(recs) & PHYSIO, alarms(recs)
    # beats go on from V1 (unlabelled: the classifier reads MLII), then MLII labelled again
    bt = beats(recs)
    mid = [b for b in bt if 23.0 <= b[0] < 40.0 and b[2]]
    n_ref = int(np.sum((ref >= 23.0) & (ref < 40.0)))
    assert {b[1] for b in mid} == {"V1"} and all(b[3] is None for b in mid)
    assert abs(len(mid) - n_ref) <= 1, (len(mid), n_ref)
    assert all(b[1] == "MLII" and b[3] is not None for b in bt if b[0] >= sw[1]["sample"] / FS + 1.0)
    # chunk invariance: the same beats, alarms and events with 0.7 s chunks
    other = run(spoil(x, kind), chunk_s=0.7)
    assert beats(other) == bt and alarms(other) == alarms(recs) and switches(other) == sw


def test_without_fallback_monitoring_stops(rec119: tuple[np.ndarray, np.ndarray]) -> None:
    # the gap this closes: with lead_fallback = false no usable beat comes while lead 0 is off
    x, _ = rec119
    recs = run(spoil(x, "nan"), lead_fallback=False)
    assert not switches(recs)
    assert not [b for b in beats(recs) if 23.0 <= b[0] < 40.0 and b[2]]


def test_outputs_unchanged_while_the_preferred_lead_is_usable(rec119: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = rec119
    y = x.copy()
    y[int(20 * FS):int(40 * FS), 1] = np.nan  # the OTHER lead off: nothing moves
    for sig in (x, y):
        a, b = run(sig), run(sig, lead_fallback=False)
        assert [(r.kind, r.body) for r in a] == [(r.kind, r.body) for r in b]
        assert not switches(a)


def test_true_asystole_with_lead0_off_still_alarms(rec119: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = rec119
    # lead 0 comes off at 15 s, the heart stops at 20 s (both leads isoelectric): before, only LEADS OFF
    y = asystole(x, 20.0, 50.0)
    y[int(15 * FS):int(50 * FS), 0] = np.nan
    recs = run(y)
    asy = [a for a in alarms(recs) if a["type"] == "asystole" and a["state"] == "on"]
    assert asy and 19.0 <= asy[0]["onset_sample"] / FS <= 23.0 and asy[0]["lead"] == "V1", alarms(recs)
    assert "leads_off" in on(recs)
    # lead 0 off at 15 s and V1 isoelectric from 16 s: no usable lead is left; V1 is a connected
    # isoelectric line (usable most of the last minute) and asystole is judged on it
    y = asystole(x, 16.0, 50.0)
    y[int(15 * FS):int(50 * FS), 0] = np.nan
    recs = run(y)
    asy = [a for a in alarms(recs) if a["type"] == "asystole" and a["state"] == "on"]
    # counted from the last beat found (20.2 s, in V1's last usable block): on at 24.2 s, 8.8 s after the
    # last true beat (EC13: within 10 s)
    assert asy and asy[0]["onset_sample"] / FS <= 21.0 and asy[0]["lead"] == "V1", alarms(recs)
    assert alarms(run(y, chunk_s=0.7)) == alarms(recs)
    # asystole on both leads first, then lead 0 comes off: the alarm stays on until the beats return
    y = asystole(x, 20.0, 50.0)
    y[int(25 * FS):int(50 * FS), 0] = np.nan
    al = alarms(run(y))
    asy = [a for a in al if a["type"] == "asystole"]
    assert [a["state"] for a in asy] == ["on", "off"] and asy[1]["end_sample"] / FS >= 50.0, al


def test_an_intermittent_electrode_does_not_make_analysis_flap(rec119: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = rec119
    y = x.copy()
    for a in range(15, 45, 6):  # lead 0 off 3 s, on 3 s, five times
        y[int(a * FS):int((a + 3) * FS), 0] = np.nan
    recs = run(y)
    sw = switches(recs)
    assert len(sw) <= 2 and sw[0]["to"] == "V1", sw  # away once; back (if at all) after 10 s usable
    assert all(e["sample"] / FS >= 52.0 for e in sw[1:]), sw
    assert not on(recs) & PHYSIO, alarms(recs)


def test_offline_analysis_equals_the_stage(rec119: tuple[np.ndarray, np.ndarray]) -> None:
    from telediag.evaluation.ecg_analyze import analyze_recording
    from telediag.sources.readers import Recording

    x, _ = rec119
    y = spoil(x, "nan")
    res = analyze_recording(Recording(y, FS, NAMES, ("mV", "mV"), "119"), chunk_s=2.5)
    recs = run(y)
    assert [(b["sample"] / FS, b["usable"], b["label"]) for b in res["beats"]] == \
        [(t, u, lab) for t, _, u, lab in beats(recs)]
    assert res["alarms"] == [a for a in alarms(recs) if not (a.get("detail") or {}).get("reason")]


def test_lead_fallback_is_validated() -> None:
    with pytest.raises(ValueError, match="lead_fallback"):
        EcgAnalysisParams(lead_fallback="yes")  # type: ignore[arg-type]
    sc = next(s for s in load_config().pipelines["ecg"] if s.name == "analysis")
    assert sc.params.lead_fallback is True  # engine/default.toml


def test_close_on_another_lead_announces_the_return_and_the_viewer_follows(
        rec119: tuple[np.ndarray, np.ndarray]) -> None:
    from telediag.viewer.bridge import alarm_view

    x, _ = rec119
    y = x.copy()
    y[int(20 * FS):, 0] = np.nan  # lead 0 off to the end of the stream
    sw = switches(run(y))
    assert [(e["to"], e["reason"]) for e in sw] == [("V1", "unusable"), ("MLII", "stream_closed")], sw
    views = [alarm_view(e, "s/ecg", "event", e["t_ns"]) for e in sw]
    assert [(v["key"], v["state"], v["technical"], v["priority"]) for v in views if v] == [
        ("s/ecg:analysis_lead", "on", True, "low"), ("s/ecg:analysis_lead", "off", True, "low")]
    assert views[0] is not None and views[0]["text"] == "ECG ANALYSIS ON V1"


def test_a_lead_that_misses_beats_is_no_fallback() -> None:
    # lead 1 shows only every other complex (a bigeminy whose ectopic beats are isoelectric on that
    # lead, as on MIT-BIH 207's V1): analysing it after lead 0 comes off would report half the rate
    # (a false BRADY); the concordance check over the history keeps analysis on lead 0 (technical alarm)
    rng = np.random.default_rng(2)
    t = np.arange(int(60 * FS)) / FS
    x = np.zeros((t.size, 2))
    for i, b in enumerate(np.arange(0.5, 59.5, 0.75)):  # 80/min
        q = np.exp(-((t - b) ** 2) / (2 * 0.012**2))
        x[:, 0] += q
        x[:, 1] += 0.8 * q if i % 2 == 0 else 0.0
    x += rng.normal(0.0, 0.01, x.shape)
    x[int(20 * FS):int(45 * FS), 0] = np.nan
    recs = run(x)
    assert not switches(recs)
    assert "leads_off" in on(recs) and not on(recs) & PHYSIO, alarms(recs)
    half = x.copy()  # the same lead 1 with every complex: a fallback
    half[:, 1] = 0.8 * np.nan_to_num(ecg_like(t)) + rng.normal(0.0, 0.01, t.size)
    assert [e["to"] for e in switches(run(half))][:1] == ["V1"]


def ecg_like(t: np.ndarray) -> np.ndarray:
    return sum(np.exp(-((t - b) ** 2) / (2 * 0.012**2)) for b in np.arange(0.5, 59.5, 0.75))  # type: ignore[return-value]
