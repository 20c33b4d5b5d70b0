"""The ``ecg_analysis`` stage against golden outputs captured before issue 15's refactor.

``tests/data/ecg_golden/*.json.gz`` hold what the monolithic stage (commit c94b773) published
on 240 s of MIT-BIH 119, 203, 208 and of the noise-stress record 118e_6 (``make_golden.py``).
The stage, split into components, must publish the same beats, heart-rate readings, HRV,
quality blocks and events, except for the intended changes of issue 15:

* beats in unusable blocks are published with ``usable: false`` (they were dropped and only
  listed as ``suppressed``): the usable beats equal the old beats, the flagged ones the old
  suppressed beats;
* technical alarms (``leads_off``, ``signal_unusable``) and AF episodes (``afib``) are new, and no asystole, bradycardia
  or pause is raised from unusable signal (compared on the clean records only);
* with ``classify = "on"`` the labels come from whatever beat model is installed (the golden
  files hold the 1.3.0 labels), so only sample positions and the heart rate are compared.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
from telediag.evaluation.ecg_analyze import collect, run_pipeline
from telediag.sources.readers import read_wfdb
from telediag.sources.replay import chunks_of

GOLDEN = Path(__file__).resolve().parent / "data" / "ecg_golden"
RECORDS = {"119": ("mitdb", 0), "203": ("mitdb", 0), "208": ("mitdb", 0), "118e_6": ("nstdb", 290)}
SECONDS = 240
BEAT_KEYS = ("sample", "t_ns", "confirm_sample", "release_sample", "confirm_delay_s", "delay_s", "label", "probs")
NEW_ALARMS = {"leads_off", "signal_unusable", "afib"}  # technical alarms and AF are new


def _run(shared: Path, name: str, classify: str) -> dict[str, list[dict[str, Any]]]:
    db, start_s = RECORDS[name]
    if not (shared / db / f"{name}.hea").exists():
        pytest.skip(f"{db}/{name} not in the shared data")
    full = read_wfdb(shared / db / name)
    a = int(start_s * full.fs)
    rec = dataclasses.replace(full, signal=full.signal[a:a + int(SECONDS * full.fs)])
    st = EcgAnalysis(EcgAnalysisParams(classify=classify))
    stream = f"{rec.name}/ecg"
    st.open(StreamSpec(stream, "ecg", rec.fs, tuple(rec.channels), tuple(rec.units)))
    chunks = (c for _, c in chunks_of(rec, "ecg", stream, chunk_ms=1000.0, start_ns=0, dtype="float64",
                                      session="golden"))
    return collect(run_pipeline([st], chunks))


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative: the golden files hold floats from another numpy/Numba build,
    and a kurtosis summed in another order differs in the 13th digit; any behaviour change (a beat, a
    flag, a verdict, a reading) still fails."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _golden(name: str, mode: str) -> dict[str, list[dict[str, Any]]]:
    with gzip.open(GOLDEN / f"{name}_{mode}.json.gz", "rt", encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_classify_off_matches_golden_except_intended_changes(shared_data: Path, name: str) -> None:
    old, new = _golden(name, "off"), _run(shared_data, name, "off")
    usable = [{k: b[k] for k in BEAT_KEYS} for b in new["beats"] if b.get("usable", True)]
    assert usable == old["beats"]
    flagged = [b["sample"] for b in new["beats"] if b.get("usable", True) is False]
    assert flagged == [b["sample"] for b in old["suppressed"]]
    for key in ("hr", "hrv", "blocks", "events"):
        assert _same(new[key], old[key]), key
    if not old["suppressed"]:  # clean record: the physiological alarms are unchanged
        kept = [{k: v for k, v in a.items() if k != "category"} for a in new["alarms"] if a["type"] not in NEW_ALARMS]
        assert kept == old["alarms"]


@pytest.mark.parametrize("name", ["118e_6", "208"])
def test_classify_on_matches_golden_positions_and_rate(shared_data: Path, name: str) -> None:
    old, new = _golden(name, "on"), _run(shared_data, name, "on")
    assert [b["sample"] for b in new["beats"] if b.get("usable", True)] == [b["sample"] for b in old["beats"]]
    assert all(b["label"] in ("N", "S", "V", "F", "Q") for b in new["beats"] if b.get("usable", True))
    assert _same(new["hr"], old["hr"])
    assert _same(new["blocks"], old["blocks"]) and new["events"] == old["events"]
