"""``telediag analyze ecg``: JSON and WFDB outputs, scoring with ``telediag score``, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import wfdb

from telediag.cli import main
from telediag.dsp.qrs import detect
from telediag.evaluation.ec57 import match_beats, reference_beats
from telediag.sources.readers import read_wfdb

FS = 360.0


def _write_csv(path: Path, x: np.ndarray, time_column: bool = True) -> None:
    if time_column:
        t = np.arange(x.shape[0]) / FS
        rows = ["time_s,I,II"] + [f"{ti:.9f},{float(a)!r},{float(b)!r}" for ti, (a, b) in zip(t, x, strict=True)]
    else:
        rows = ["I,II"] + [f"{float(a)!r},{float(b)!r}" for a, b in x]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _synth(dur_s: float) -> np.ndarray:
    t = np.arange(int(dur_s * FS)) / FS
    lead = sum(np.exp(-((t - b) ** 2) / (2 * 0.012**2)) for b in np.arange(0.4, dur_s - 0.1, 0.8))
    x = np.stack([lead, 0.5 * lead], axis=1)
    return x + np.random.default_rng(0).normal(0, 0.01, x.shape)


@pytest.mark.slow
def test_analyze_wrann_then_score_against_reference(mitdb: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rec = mitdb / "119"
    assert main(["analyze", "ecg", str(rec), "--out-dir", str(tmp_path), "--wfdb-ann", "qrs"]) == 0
    res = json.loads((tmp_path / "119.json").read_text())
    assert res["record"] == "119" and res["fs"] == 360.0 and res["lead"] == {"index": 0, "name": "MLII"}
    assert {"version", "detector", "config", "beats", "heart_rate", "hrv", "quality", "delay"} <= set(res)
    ann = wfdb.rdann(str(tmp_path / "119"), "qrs")
    beat_rows = [(smp, sym) for smp, sym in zip(ann.sample.tolist(), ann.symbol, strict=True) if sym not in "+~"]
    assert [smp for smp, _ in beat_rows] == [b["sample"] for b in res["beats"]]
    assert {sym for _, sym in beat_rows} <= {"N", "S", "V", "F", "Q"}
    assert [b["label"] or "N" for b in res["beats"]] == [sym for _, sym in beat_rows]
    # every beat the detector found on the raw lead is published (usable or not), never dropped
    sig = read_wfdb(rec).signal[:, 0]
    assert [b["sample"] for b in res["beats"]] == detect(sig, 360.0).tolist()
    assert [b["sample"] for b in res["suppressed"]] == [b["sample"] for b in res["beats"] if not b["usable"]]
    # PhysioNet rhythm annotation at the start; noise annotations mark unusable spans
    assert ann.symbol[0] == "+" and ann.aux_note[0] == "(N"
    capsys.readouterr()
    assert main(["score", str(rec), "--test-ext", "qrs", "--test-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| 119 |"))
    se, ppv = (float(v) for v in re.split(r"\s*\|\s*", row)[5:7])
    assert se >= 99.5 and ppv >= 99.5
    ref = reference_beats(wfdb.rdann(str(rec), "atr"))
    s = match_beats(ref, reference_beats(ann), 360.0)
    assert s.se == pytest.approx(se / 100, abs=1e-4) and s.ppv == pytest.approx(ppv / 100, abs=1e-4)
    # chunk length does not change the result
    out2 = tmp_path / "c"
    assert main(["analyze", "ecg", str(rec), "--out-dir", str(out2), "--chunk-s", "0.37"]) == 0
    res2 = json.loads((out2 / "119.json").read_text())
    assert res2["beats"] == res["beats"] and res2["quality"] == res["quality"]
    assert res2["heart_rate"] == res["heart_rate"] and res2["hrv"] == res["hrv"]


def test_bad_inputs_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.csv"
    _write_csv(good, _synth(20.0))
    missing = tmp_path / "nothere"
    rc = main(["analyze", "ecg", str(missing), str(good), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nothere" in err and "not found" in err
    assert (tmp_path / "o" / "good.json").exists()  # the good input is still analysed
    rc = main(["analyze", "ecg", str(good), "--lead", "3", "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "lead must be in [0, 2)" in capsys.readouterr().err
    rc = main(["analyze", "ecg", str(good), "--chunk-s", "0", "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "chunk_s" in capsys.readouterr().err
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[pipeline.ecg.a]\nstage = "ecg_analysis"\nquality_hold = "later"\n')
    rc = main(["analyze", "ecg", str(good), "--config", str(cfg), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "quality_hold" in capsys.readouterr().err
    nofs = tmp_path / "nofs.csv"
    nofs.write_text("I\n1\n2\n3\n")
    rc = main(["analyze", "ecg", str(nofs), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "fs" in capsys.readouterr().err


def test_nan_runs_and_constant_signal_give_quality_events_not_phantom_beats(tmp_path: Path) -> None:
    x = _synth(60.0)
    x[int(20 * FS): int(30 * FS)] = np.nan
    x[int(40 * FS):] = 0.25  # electrode off: constant
    path = tmp_path / "rec.csv"
    _write_csv(path, x, time_column=False)
    assert main(["analyze", "ecg", str(path), "--fs", "360", "--out-dir", str(tmp_path), "--wfdb-ann", "qrs"]) == 0
    res = json.loads((tmp_path / "rec.json").read_text())
    b = np.array([q["sample"] for q in res["beats"]])
    assert all(q["usable"] for q in res["beats"] if q["sample"] < 19 * FS)
    assert 15 <= np.sum(b < 20 * FS) <= 25
    assert not np.any((b >= 20 * FS) & (b < 30 * FS)) and not np.any(b >= 40 * FS)
    off = [(e["onset_sample"], e["end_sample"]) for e in res["quality"]["events"]
           if e["event"] == "leads_off" and e["channel"] == 0]
    assert off == [(int(20 * FS), int(30 * FS)), (int(40 * FS), None)]
    assert any(e["event"] == "leads_off" and e["onset_sample"] == int(40 * FS) and e["end_sample"] is None
               for e in res["quality"]["events"])
    late = [r for r in res["heart_rate"]["readings"] if r["sample"] > 50 * FS]
    assert late and all(r["hr_bpm"] in (0.0, None) and r["signal_ok"] is False for r in late)
    ann = wfdb.rdann(str(tmp_path / "rec"), "qrs")
    assert reference_beats(ann).tolist() == b.tolist()
    # the unusable spans carry PhysioNet noise annotations: "~" with the unusable-lead mask, 0 at the end
    noise = [(int(smp), int(sub)) for smp, sym, sub in zip(ann.sample, ann.symbol, ann.subtype, strict=True)
             if sym == "~"]
    assert noise and noise[0][1] != 0 and 19 * FS <= noise[0][0] <= 20 * FS
    assert any(sub == 0 and 30 * FS <= smp <= 33 * FS for smp, sub in noise)


def test_record_without_beats_writes_a_readable_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "flat.csv"
    _write_csv(path, np.zeros((int(10 * FS), 2)))
    assert main(["analyze", "ecg", str(path), "--out-dir", str(tmp_path), "--wfdb-ann", "qrs"]) == 0
    res = json.loads((tmp_path / "flat.json").read_text())
    assert res["beats"] == [] and res["quality"]["events"]
    ann = wfdb.rdann(str(tmp_path / "flat"), "qrs")
    assert reference_beats(ann).size == 0
