"""``telediag analyze ecg|pcg --edf``: the analysis as EDF+ annotations, read back with pyedflib."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyedflib
import pytest
import wfdb

from telediag.cli import main
from telediag.demo import data_path


def _annotations(path: Path) -> tuple[pyedflib.EdfReader, list[tuple[float, float, str]]]:
    f = pyedflib.EdfReader(str(path))
    on, du, tx = f.readAnnotations()
    return f, list(zip(on.tolist(), du.tolist(), tx.tolist(), strict=True))


def test_analyze_ecg_edf_matches_json_and_signal(tmp_path: Path) -> None:
    src = wfdb.rdrecord(str(data_path("mitdb119_5min")), sampto=360 * 40)
    wfdb.wrsamp("ex", fs=src.fs, units=src.units, sig_name=src.sig_name, p_signal=src.p_signal,
                fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path))
    out = tmp_path / "out"
    assert main(["analyze", "ecg", str(tmp_path / "ex"), "--out-dir", str(out), "--edf",
                 str(out / "ex.edf")]) == 0
    doc = json.loads((out / "ex.json").read_text())
    f, anns = _annotations(out / "ex.edf")
    try:
        assert f.getSignalLabels() == ["MLII", "V1"] and f.getPhysicalDimension(0) == "mV"
        assert f.filetype == pyedflib.FILETYPE_EDFPLUS  # 16 bits hold the 5 uV steps of MIT-BIH
        for i in range(2):
            y = f.readSignal(i)
            assert np.max(np.abs(y - src.p_signal[:, i])) <= 0.0025  # within half of MIT-BIH's step
    finally:
        f.close()
    beats = [(o, t) for o, _, t in anns if t.startswith("beat")]
    assert len(beats) == len(doc["beats"]) > 30
    for (o, _), b in zip(beats, doc["beats"], strict=True):
        assert o == pytest.approx(b["sample"] / 360.0, abs=2e-6)


def test_analyze_pcg_edf_has_segments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["analyze", "pcg", str(data_path("a0020.wav")), "--no-classifier", "--quiet",
                 "--out-dir", str(out), "--edf", str(out)]) == 0
    doc = json.loads((out / "a0020.json").read_text())
    f, anns = _annotations(out / "a0020.edf")
    try:
        assert f.getSampleFrequency(0) == doc["fs"] and f.getSignalLabels() == ["PCG"]
        assert f.getFileDuration() == pytest.approx(doc["duration_s"], abs=1.0)
    finally:
        f.close()
    assert len(anns) == len(doc["segments"])
    for (o, d, t), s in zip(sorted(anns), sorted(doc["segments"], key=lambda s: s["start"]), strict=True):
        assert t == s["state"] and o == pytest.approx(s["start"], abs=2e-6)
        assert d == pytest.approx(s["end"] - s["start"], abs=2e-6)
