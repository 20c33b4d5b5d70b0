"""EC57 beat-by-beat matcher: hand-computed cases, gross statistics, CLI."""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest

from telediag.errors import DataError
from telediag.evaluation.ec57 import (
    BeatScore,
    format_table,
    gross,
    match_beats,
    reference_beats,
    vf_intervals,
)
from telediag.evaluation.score_cli import add_arguments, run

FS = 1000.0  # 1 sample = 1 ms: windows are easy to reason about


def counts(s: BeatScore) -> tuple[int, int, int]:
    return s.tp, s.fn, s.fp


def test_perfect_match() -> None:
    s = match_beats([100, 1100, 2100], [100, 1100, 2100], FS)
    assert counts(s) == (3, 0, 0)
    assert s.se == s.ppv == s.f1 == 1.0
    assert s.mean_err_ms == 0.0 and s.sd_err_ms == 0.0


def test_window_edge_is_inclusive() -> None:
    assert counts(match_beats([1000], [1150], FS)) == (1, 0, 0)
    assert counts(match_beats([1000], [850], FS)) == (1, 0, 0)
    assert counts(match_beats([1000], [1151], FS)) == (0, 1, 1)
    assert counts(match_beats([1000], [849], FS)) == (0, 1, 1)
    assert counts(match_beats([1000], [1151], FS, window_s=0.2)) == (1, 0, 0)


def test_double_detection_counts_one_fp_and_keeps_nearest() -> None:
    s = match_beats([1000], [990, 1040], FS)
    assert counts(s) == (1, 0, 1)
    assert s.mean_err_ms == pytest.approx(-10.0)
    s = match_beats([1000], [960, 1005], FS)  # the later one is nearer
    assert counts(s) == (1, 0, 1)
    assert s.mean_err_ms == pytest.approx(5.0)


def test_test_beat_between_two_refs_goes_to_nearest() -> None:
    # 1120 is within 150 ms of both 1000 and 1200 but nearer to 1200.
    s = match_beats([1000, 1200], [1120], FS)
    assert counts(s) == (1, 1, 0)
    assert s.mean_err_ms == pytest.approx(-80.0)


def test_empty_inputs() -> None:
    s = match_beats([], [], FS)
    assert counts(s) == (0, 0, 0)
    assert math.isnan(s.se) and math.isnan(s.ppv) and math.isnan(s.f1)
    assert counts(match_beats([1, 2000], [], FS)) == (0, 2, 0)
    assert counts(match_beats([], [5, 3000], FS)) == (0, 0, 2)
    assert match_beats([1, 2000], [], FS).se == 0.0


def test_missed_and_extra_beats() -> None:
    ref = [1000, 2000, 3000, 4000]
    test = [1010, 2500, 3000, 3990, 5000]
    s = match_beats(ref, test, FS)
    assert counts(s) == (3, 1, 2)
    assert s.se == pytest.approx(0.75)
    assert s.ppv == pytest.approx(0.6)
    assert s.f1 == pytest.approx(6 / 9)
    assert s.mean_err_ms == pytest.approx(0.0)
    assert s.sd_err_ms == pytest.approx(math.sqrt(200 / 3))


def test_unsorted_and_float_input() -> None:
    s = match_beats(np.array([3000.0, 1000.0]), [1000, 3000], FS)
    assert counts(s) == (2, 0, 0)


def test_start_skips_beats_before() -> None:
    ref = [100, 1000, 2000, 3000]
    test = [100, 1500, 3000]
    s = match_beats(ref, test, FS, start_s=1.8)
    assert counts(s) == (1, 1, 0)  # 2000 missed, 3000 matched; 1500 FP is before start
    s = match_beats(ref, test, FS, start_s=1.2)
    assert counts(s) == (1, 1, 1)


def test_exclude_vf_intervals() -> None:
    ref = [100, 5000]
    test = [100, 2000, 2300, 2600, 5000, 7000]
    ex = [(1900, 2700)]
    assert counts(match_beats(ref, test, FS, exclude=ex)) == (2, 0, 1)
    assert counts(match_beats(ref, test, FS)) == (2, 0, 4)


def test_sample_rate_scales_window() -> None:
    # 54 samples at 360 Hz = 150 ms exactly.
    assert counts(match_beats([360], [414], 360.0)) == (1, 0, 0)
    assert counts(match_beats([360], [415], 360.0)) == (0, 1, 1)


def test_bad_input() -> None:
    with pytest.raises(DataError):
        match_beats([[1, 2]], [1], FS)
    with pytest.raises(DataError):
        match_beats([1], [np.nan], FS)
    with pytest.raises(DataError):
        match_beats([1], [1], 0.0)


def test_gross_sums_counts_and_pools_errors() -> None:
    a = match_beats([1000, 2000], [1010, 2010], FS)
    b = match_beats([1000, 2000, 3000], [990, 2000], FS)
    g = gross({"a": a, "b": b})
    assert counts(g) == (4, 1, 0)
    assert g.mean_err_ms == pytest.approx(2.5)
    assert g.sd_err_ms == pytest.approx(np.std([10, 10, -10, 0]))
    assert counts(gross([a, b])) == (4, 1, 0)


def test_reference_beats_and_vf_intervals() -> None:
    ann = SimpleNamespace(
        sample=[10, 20, 30, 40, 50, 60, 70, 80],
        symbol=["N", "+", "x", "[", "!", "]", "V", "~"],
    )
    assert reference_beats(ann).tolist() == [10, 70]
    assert vf_intervals(ann).tolist() == [[40, 60]]
    open_ann = SimpleNamespace(sample=[10, 20], symbol=["[", "!"])
    assert vf_intervals(open_ann, end_sample=99).tolist() == [[10, 99]]


def test_format_table() -> None:
    t = format_table({"100": BeatScore(9, 1, 0), "101": BeatScore(10, 0, 2)}, title="x")
    lines = t.splitlines()
    assert lines[0] == "**x**"
    assert "| 100 | 9 | 1 | 0 | 90.00 | 100.00 |" in t
    assert lines[-1].startswith("| **gross** | 19 | 1 | 2 |")


def test_cli_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    wfdb = pytest.importorskip("wfdb")
    fs = 250
    ref = np.array([100, 400, 700, 1000])
    test = np.array([102, 400, 850, 1000])
    wfdb.wrann("rec", "atr", ref, symbol=["N"] * 4, fs=fs, write_dir=str(tmp_path))
    wfdb.wrann("rec", "qrs", test, symbol=["N"] * 4, fs=fs, write_dir=str(tmp_path))
    (tmp_path / "rec.hea").write_text(f"rec 1 {fs} 1200\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([str(tmp_path), "--test-ext", "qrs", "--skip-s", "0"])
    assert run(args) == 0
    args = p.parse_args([str(tmp_path / "missing"), "--test-ext", "qrs"])
    assert run(args) == 2
