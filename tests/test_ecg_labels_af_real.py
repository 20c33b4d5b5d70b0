"""Labels on by default and AF rhythm annotations on real records (issue 15 items 2 and 4).

``telediag analyze ecg ... --wfdb-ann EXT`` with the default configuration writes labelled
beats and PhysioNet rhythm annotations: on MIT-BIH 201 (atrial fibrillation for its first 6
minutes) an ``(AFIB`` episode overlapping the reference and no ``S`` inside it; on 220
(sinus rhythm with atrial premature beats, no AF) no AF episode, and its S labels stay S.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import wfdb

from telediag.engine.config import load_config
from telediag.evaluation.ecg_analyze import analyze_recording, write_wfdb_annotations
from telediag.sources.readers import read_wfdb

MINUTES = 10


def _reference_af(path: Path, n: int) -> list[tuple[int, int]]:
    ann = wfdb.rdann(str(path), "atr")
    out, start = [], None
    for smp, sym, aux in zip(ann.sample, ann.symbol, ann.aux_note, strict=True):
        if sym != "+":
            continue
        aux = aux.strip("\x00").strip()
        if aux == "(AFIB" and start is None:
            start = int(smp)
        elif aux != "(AFIB" and start is not None:
            out.append((start, int(smp)))
            start = None
    if start is not None:
        out.append((start, n))
    return [(a, min(b, n)) for a, b in out if a < n]


def _analyse(mitdb: Path, name: str, tmp_path: Path) -> tuple[dict, wfdb.Annotation, int]:
    cfg = load_config()
    assert any(sc.params.classify == "on" for sc in cfg.pipelines["ecg"] if hasattr(sc.params, "classify"))
    full = read_wfdb(mitdb / name)
    n = int(MINUTES * 60 * full.fs)
    rec = dataclasses.replace(full, signal=full.signal[:n])
    res = analyze_recording(rec, config=cfg)
    write_wfdb_annotations(res, tmp_path, "tst")
    return res, wfdb.rdann(str(tmp_path / name), "tst"), n


@pytest.mark.slow
def test_af_record_gets_afib_rhythm_annotations_and_labels(mitdb: Path, tmp_path: Path) -> None:
    res, ann, n = _analyse(mitdb, "201", tmp_path)
    labels = [b["label"] for b in res["beats"]]
    assert all(lab in ("N", "S", "V", "F", "Q") for lab in labels), "labels on by default"
    assert "V" in labels
    rhythm = [(int(s), a) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note, strict=True) if sym == "+"]
    assert any(a == "(AFIB" for _, a in rhythm) and any(a == "(N" for _, a in rhythm)
    eps = [(e["onset_sample"], e["end_sample"]) for e in res["rhythm"]["episodes"]]
    ref = _reference_af(mitdb / "201", n)
    both = sum(max(0, min(b, d) - max(a, c)) for a, b in eps for c, d in ref)
    assert both >= 0.5 * sum(b - a for a, b in ref)  # most of the reference AF is found
    inside = [b for b in res["beats"] if any(a <= b["sample"] < e for a, e in eps)]
    assert inside and not any(b["label"] == "S" for b in inside)  # AF beats are not SVEB


@pytest.mark.slow
def test_sinus_record_with_atrial_premature_beats_has_no_af(mitdb: Path, tmp_path: Path) -> None:
    res, ann, _ = _analyse(mitdb, "220", tmp_path)
    assert res["rhythm"]["episodes"] == []
    assert [a for sym, a in zip(ann.symbol, ann.aux_note, strict=True) if sym == "+"] == ["(N"]
    assert np.mean([b["label"] == "N" for b in res["beats"]]) > 0.8
