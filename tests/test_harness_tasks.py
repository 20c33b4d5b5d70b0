"""Research harness tasks beyond QRS: beat classifiers, heart-sound and polyp segmenters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from telediag.cli import main as cli_main
from telediag.errors import ConfigError, DataError
from telediag.evaluation.harness_tasks import (
    AAMI,
    ClassScore,
    class_score,
    evaluate_task,
    find_images,
    find_wavs,
    resolve_plugin,
)

BEAT_RECORDS = ["119", "208"]  # both have many ventricular beats
WAVS = ["a0001", "a0002", "b0001"]

TOY_CLASSIFIER = '''
import numpy as np


def classify(signal, fs, beats):
    """V when the beat is much wider than the record's median beat, S when premature, else N."""
    w = int(0.06 * fs)
    widths = []
    for b in beats:
        seg = np.abs(signal[max(0, b - w): b + w] - np.median(signal[max(0, b - w): b + w]))
        widths.append(np.count_nonzero(seg > 0.5 * seg.max()) if seg.size else 0)
    widths = np.asarray(widths, float)
    rr = np.diff(beats, prepend=beats[0] - int(fs)) / fs
    out = np.where(widths > 1.6 * np.median(widths), "V", np.where(rr < 0.8 * np.median(rr), "S", "N"))
    return list(out)
'''

SHIFTED_PCG = '''
from telediag.dsp.pcg import segment


def segment_late(audio, fs):
    """The built-in segmentation, every boundary {shift} s late (a worse segmenter)."""
    return [(s.start + {shift}, s.end + {shift}, s.state) for s in segment(audio, fs)]
'''


# --- scoring ------------------------------------------------------------------------------

def test_class_score_ec57_conventions() -> None:
    ref = ["N"] * 5 + ["S"] * 3 + ["V"] * 4 + ["F"] * 2 + ["Q"]
    pred = ["N", "N", "N", "S", "V"] + ["S", "N", "V"] + ["V", "V", "N", "S"] + ["V", "N"] + ["V"]
    s = class_score(ref, pred)
    assert s.n == 15 and s.cm.sum(axis=1).tolist() == [5, 3, 4, 2, 1]
    # VEB: TP Vv=2, FN = V->n,s = 2, FP = Nv + Sv = 2 (Fv and Qv are not errors)
    assert (s.veb.tp, s.veb.fn, s.veb.fp) == (2, 2, 2)
    # SVEB: TP Ss=1, FN = S->n,v = 2, FP = Ns + Vs + Fs = 2
    assert (s.sveb.tp, s.sveb.fn, s.sveb.fp) == (1, 2, 2)
    assert s.per_class()["V"].fp == 4  # the plain one-vs-rest count does include Fv and Qv
    assert pytest.approx(s.accuracy) == 6 / 15
    both = s + class_score([0, 2], [0, 2])
    assert isinstance(both, ClassScore) and both.veb.tp == 3 and both.n == 17
    with pytest.raises(DataError, match="one of"):
        class_score(["N"], ["X"])
    with pytest.raises(DataError, match="0-4"):
        class_score([0], [7])


# --- beats --------------------------------------------------------------------------------

def test_beats_plugin_vs_builtin_and_cache(mitdb: Path, tmp_path: Path) -> None:
    from telediag.evaluation.wfdb_io import read_annotation
    from telediag.models.ecg_beats.features import aami_label

    (tmp_path / "toy_cls.py").write_text(TOY_CLASSIFIER)
    spec, cache = f"{tmp_path / 'toy_cls.py'}:classify", tmp_path / "cache"
    r = evaluate_task("beats", spec, mitdb, names=BEAT_RECORDS, max_seconds=240, cache_dir=cache)
    assert r.algorithm == "toy_cls:classify" and r.cached == {"119": False, "208": False}
    # oracle: every reference beat with an AAMI class inside the window is scored exactly once
    for name in BEAT_RECORDS:
        ann = read_annotation(mitdb / name)
        want = np.bincount([aami_label(s) for s, p in zip(ann.symbol, ann.sample, strict=True)
                            if aami_label(s) >= 0 and p < 240 * 360], minlength=5)
        assert r.per_item[name].cm.sum(axis=1).tolist() == want.tolist()
    assert r.gross.cm[2].sum() > 100  # record 119 and 208 have many V beats
    again = evaluate_task("beats", spec, mitdb, names=BEAT_RECORDS, max_seconds=240, cache_dir=cache)
    assert again.cached == {"119": True, "208": True}
    assert all(np.array_equal(again.per_item[k].cm, r.per_item[k].cm) for k in BEAT_RECORDS)

    b = evaluate_task("beats", "telediag", mitdb, names=BEAT_RECORDS, max_seconds=240, cache_dir=cache)
    assert b.gross.veb.se > 0.9 and b.gross.veb.ppv > 0.9  # the shipped model on V beats
    assert b.notes and "training-set figures" in b.notes[0]  # trained on DS1: said so
    assert b.gross.n == r.gross.n


def test_beats_bad_plugins(mitdb: Path) -> None:
    with pytest.raises(DataError, match="one label per beat"):
        evaluate_task("beats", lambda x, fs, b: ["N"], mitdb, names=["119"], max_seconds=30, use_cache=False)
    with pytest.raises(DataError, match="failed on 119: ZeroDivisionError"):
        evaluate_task("beats", lambda x, fs, b: 1 / 0, mitdb, names=["119"], max_seconds=30, use_cache=False)
    with pytest.raises(ConfigError, match="task must be one of"):
        resolve_plugin("qrs", "telediag")
    with pytest.raises(ConfigError, match="classifier spec"):
        resolve_plugin("beats", "nonsense")


# --- pcg-seg ------------------------------------------------------------------------------

def test_pcg_seg_plugin_equal_to_builtin_scores_equal(pcg_root: Path, tmp_path: Path) -> None:
    from telediag.dsp.pcg import segment

    found = find_wavs(pcg_root, WAVS)
    assert [f[0] for f in found] == WAVS and all(f[2].name.endswith("_StateAns.mat") for f in found)

    def same(audio: np.ndarray, fs: int) -> list[dict[str, object]]:
        return [{"start": s.start, "end": s.end, "state": s.state} for s in segment(audio, fs)]

    cache = tmp_path / "cache"
    mine = evaluate_task("pcg-seg", same, pcg_root, names=WAVS, cache_dir=cache)
    ref = evaluate_task("pcg-seg", "telediag", pcg_root, names=WAVS, cache_dir=cache)
    assert mine.per_item == ref.per_item
    assert ref.gross.s1.tp > 40 and ref.gross.s1.f1 > 0.8
    (tmp_path / "late.py").write_text(SHIFTED_PCG.format(shift=0.15))
    late = evaluate_task("pcg-seg", f"{tmp_path / 'late.py'}:segment_late", pcg_root, names=WAVS, cache_dir=cache)
    assert late.gross.s1.tp < 0.2 * ref.gross.s1.tp  # 150 ms late: outside +-60 ms
    assert evaluate_task("pcg-seg", "telediag", pcg_root, names=WAVS, cache_dir=cache).cached == dict.fromkeys(WAVS, True)
    with pytest.raises(DataError, match="segment state"):
        evaluate_task("pcg-seg", lambda a, fs: [(0.0, 0.1, "S3")], pcg_root, names=["a0001"], use_cache=False)


# --- polyp --------------------------------------------------------------------------------

def test_polyp_plugin_scores_match_direct_dice(kvasir_val: Path, tmp_path: Path) -> None:
    from telediag.evaluation.seg_metrics import dice_iou, read_mask, read_rgb

    def reddish(rgb: np.ndarray) -> np.ndarray:
        return rgb[:, :, 0].astype(float) / 255.0  # a float map: thresholded at 0.5

    items = find_images(kvasir_val, limit=3)
    r = evaluate_task("polyp", reddish, kvasir_val, limit=3, cache_dir=tmp_path / "c")
    assert list(r.per_item) == [i[0] for i in items] == ["0.jpg", "1.jpg", "2.jpg"]
    for name, img, mask in items:
        d, j = dice_iou(reddish(read_rgb(img)) > 0.5, read_mask(mask))
        assert r.per_item[name].dice == pytest.approx(d) and r.per_item[name].iou == pytest.approx(j)
    again = evaluate_task("polyp", reddish, kvasir_val, limit=3, cache_dir=tmp_path / "c")
    assert all(again.cached.values())
    assert [s.dice for s in again.per_item.values()] == [s.dice for s in r.per_item.values()]
    builtin = evaluate_task("polyp", "telediag", kvasir_val, limit=3, use_cache=False)
    assert builtin.gross.dice > r.gross.dice and builtin.gross.n == 3
    with pytest.raises(DataError, match="mask of shape"):
        evaluate_task("polyp", lambda rgb: np.zeros((2, 2), bool), kvasir_val, limit=1, use_cache=False)


# --- CLI ------------------------------------------------------------------------------------

def test_cli_tasks(mitdb: Path, pcg_root: Path, kvasir_val: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "toy_cls.py").write_text(TOY_CLASSIFIER)
    cache = str(tmp_path / "c")
    argv = ["harness", "--task", "beats", f"{tmp_path / 'toy_cls.py'}:classify", "--data", str(mitdb),
            "--records", "119", "--max-seconds", "120", "--cache", cache, "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 0
    cap = capsys.readouterr()
    assert "| 119 |" in cap.out and "VEB F1 %" in cap.out and "| telediag |" in cap.out
    assert "Gross confusion matrix" in cap.out and "0/1 records from the cache" in cap.err
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["task"] == "beats" and [a["algorithm"] for a in doc["algorithms"]] == ["toy_cls:classify", "telediag"]
    assert len(doc["algorithms"][0]["gross"]["confusion"]) == len(AAMI)
    assert cli_main(argv) == 0
    assert "1/1 records from the cache" in capsys.readouterr().err

    assert cli_main(["harness", "--task", "pcg-seg", "telediag", "--data", str(pcg_root),
                     "--records", "a0001", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "| a0001 |" in out and "S1 F1 %" in out

    assert cli_main(["harness", "--task", "polyp", "telediag", "--data", str(kvasir_val), "--limit", "2",
                     "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "| 0.jpg |" in out and "| **mean** |" in out and "mean Dice %" in out

    assert cli_main(["harness", "--task", "polyp", "telediag", "--data", str(kvasir_val), "--lead", "1"]) == 2
    assert cli_main(["harness", "--task", "pcg-seg", "telediag", "--data", str(tmp_path / "none")]) == 2
