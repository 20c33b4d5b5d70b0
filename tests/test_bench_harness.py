"""``telediag bench`` (report from a tiny suite) and the QRS research harness (``telediag harness``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from telediag.cli import main as cli_main
from telediag.errors import ConfigError, DataError
from telediag.evaluation import bench_cli
from telediag.evaluation.ec57 import BeatScore
from telediag.evaluation.harness import evaluate, find_records, resolve_detector

TINY_SUITE = '''
import pytest


def _work(n):
    return sum(i * i for i in range(n))


@pytest.mark.benchmark(group="toy")
@pytest.mark.parametrize("impl", ["telediag", "numpy"])
def test_toy(benchmark, impl):
    n = 200 if impl == "telediag" else 2000
    assert benchmark(_work, n) > 0
'''

TOY_DETECTOR = '''
import numpy as np

THRESHOLD = {thr}


def detect(signal, fs):
    """Local maxima of the squared slope above a fraction of its 99th percentile, 250 ms apart."""
    d = np.diff(signal) ** 2
    e = np.convolve(d, np.ones(int(0.08 * fs)) / int(0.08 * fs), mode="same")
    th = THRESHOLD * np.percentile(e, 99)
    peaks = []
    last = -10**9
    i = 1
    while i < e.size - 1:
        if e[i] > th and e[i] >= e[i - 1] and e[i] >= e[i + 1] and i - last > 0.25 * fs:
            lo, hi = max(0, i - int(0.1 * fs)), min(signal.size, i + int(0.1 * fs))
            peaks.append(lo + int(np.argmax(np.abs(signal[lo:hi] - np.median(signal[lo:hi])))))
            last = i
        i += 1
    return np.asarray(peaks)
'''

RECORDS = ["101", "106"]


# --- telediag bench ---------------------------------------------------------------------------

def test_is_peer_and_ratios() -> None:
    assert bench_cli.is_peer("test_peer_decode_only")
    assert bench_cli.is_peer("test_encode_decode[wire-pickle]")
    assert not bench_cli.is_peer("test_encode_decode[wire-wire]")
    assert not bench_cli.is_peer("test_telediag_streaming_1s_chunks")
    rows = [bench_cli.BenchRow("g", "a", 2.0, 2.0, 0.0, 3, False),
            bench_cli.BenchRow("g", "b", 1.0, 1.0, 0.0, 3, False),
            bench_cli.BenchRow("g", "scipy", 10.0, 10.0, 0.0, 3, True),
            bench_cli.BenchRow("h", "numpy_only", 1.0, 1.0, 0.0, 3, True)]
    assert bench_cli.peer_ratios(rows) == [("g: scipy", 10.0)]
    md = bench_cli.render_report(rows, {"mode": "test"})
    assert "| scipy | peer | 10 s | 10 s | 0 ns | 3 | 10.00 |" in md
    assert "| b | telediag | 1 s |" in md and "## h" in md


def test_find_benchmarks_error_says_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no bench_"):
        bench_cli.find_benchmarks(tmp_path)
    assert bench_cli.find_benchmarks().name == "benchmarks"  # this checkout, found from here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench_cli, "__file__", str(tmp_path / "evaluation" / "bench_cli.py"))
    with pytest.raises(ConfigError, match="source checkout"):
        bench_cli.find_benchmarks()


def test_bench_cli_tiny_suite_writes_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the 'bench' extra; the report itself needs no plots
    suite = tmp_path / "suites"
    suite.mkdir()
    (suite / "bench_toy.py").write_text(TINY_SUITE)
    out = tmp_path / "report"
    rc = cli_main(["bench", "--quick", "--benchmarks", str(suite), "--out", str(out)])
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "## toy" in md
    assert "| benchmark | impl | median |" in md
    assert "| test_toy[telediag] | telediag |" in md and "| test_toy[numpy] | peer |" in md
    assert (out / "speed_ratios.png").stat().st_size > 1000
    doc = json.loads((out / "benchmarks.json").read_text())
    assert {b["name"] for b in doc["benchmarks"]} == {"test_toy[telediag]", "test_toy[numpy]"}
    # -k selects: only one benchmark, no peer, so no ratio plot
    out2 = tmp_path / "report2"
    assert cli_main(["bench", "--quick", "--benchmarks", str(suite), "--out", str(out2),
                     "-k", "telediag"]) == 0
    assert "test_toy[numpy]" not in (out2 / "report.md").read_text()
    assert not (out2 / "speed_ratios.png").exists()
    assert cli_main(["bench", "--quick", "--benchmarks", str(suite), "--out", str(out2),
                     "-k", "no_such_benchmark"]) == 2


# --- harness ----------------------------------------------------------------------------------

def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="module:function"):
        resolve_detector("nonsense")
    with pytest.raises(ConfigError, match="not found"):
        resolve_detector(str(tmp_path / "missing.py") + ":detect")
    (tmp_path / "d.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no function 'detect'"):
        resolve_detector(str(tmp_path / "d.py") + ":detect")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_detector("telediag_no_such_module:detect")
    with pytest.raises(DataError, match="does not exist"):
        find_records(tmp_path / "nope")


def test_harness_builtin_matches_direct_scoring(mitdb: Path, tmp_path: Path) -> None:
    from telediag.dsp.qrs import detect
    from telediag.evaluation.ec57 import match_beats, reference_beats, vf_intervals
    from telediag.evaluation.wfdb_io import read_annotation, read_record

    res = evaluate("telediag", mitdb, names=RECORDS, max_seconds=150, cache_dir=tmp_path / "c")
    assert list(res.per_record) == RECORDS
    for name in RECORDS:
        r = read_record(mitdb / name)
        x = r.signal[: int(150 * r.fs)]
        ann = read_annotation(mitdb / name)
        ref = reference_beats(ann)
        ref = ref[ref < x.size]
        want = match_beats(ref, detect(x, r.fs), r.fs, exclude=vf_intervals(ann, x.size))
        assert res.per_record[name] == want
    assert res.gross.tp + res.gross.fn > 300  # ~2 x 150 s of beats
    assert res.gross.f1 > 0.95
    assert math.isclose(res.seconds, 300.0, rel_tol=1e-3)


def test_harness_plugin_file_cache_hit_and_invalidation(mitdb: Path, tmp_path: Path) -> None:
    det = tmp_path / "toy_det.py"
    det.write_text(TOY_DETECTOR.format(thr=0.3))
    spec = f"{det}:detect"
    cache = tmp_path / "cache"
    first = evaluate(spec, mitdb, names=RECORDS, max_seconds=120, cache_dir=cache)
    assert first.cached == {"101": False, "106": False}
    assert first.gross.tp > 100  # the toy finds beats; it is scored for real
    assert len(list(cache.glob("*.json"))) == 2

    again = evaluate(spec, mitdb, names=RECORDS, max_seconds=120, cache_dir=cache)
    assert again.cached == {"101": True, "106": True}
    assert again.per_record == first.per_record
    assert math.isnan(again.x_realtime)

    # another length is another key
    other = evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache)
    assert other.cached == {"101": False}

    # editing the source invalidates: a much higher threshold finds fewer beats
    det.write_text(TOY_DETECTOR.format(thr=50.0))
    edited = evaluate(spec, mitdb, names=RECORDS, max_seconds=120, cache_dir=cache)
    assert edited.cached == {"101": False, "106": False}
    assert edited.gross.tp < first.gross.tp


def test_harness_module_function_and_callable(mitdb: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_toy_qrs.py").write_text(TOY_DETECTOR.format(thr=0.3))
    monkeypatch.syspath_prepend(str(tmp_path))
    a = evaluate("my_toy_qrs:detect", mitdb, names=["101"], max_seconds=60, cache_dir=tmp_path / "c")
    assert a.detector == "my_toy_qrs:detect" and a.cached == {"101": False}

    def empty(x: np.ndarray, fs: float) -> np.ndarray:
        return np.zeros(0)

    b = evaluate(empty, mitdb, names=["101"], max_seconds=60, use_cache=False)
    assert b.per_record["101"] == BeatScore(0, a.gross.tp + a.gross.fn, 0)

    def bad(x: np.ndarray, fs: float) -> np.ndarray:
        return np.ones((3, 2))

    with pytest.raises(DataError, match="1-D array"):
        evaluate(bad, mitdb, names=["101"], max_seconds=10, use_cache=False)


def test_harness_cli(mitdb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    det = tmp_path / "toy_det.py"
    det.write_text(TOY_DETECTOR.format(thr=0.3))
    argv = ["harness", f"{det}:detect", "--data", str(mitdb), "--records", ",".join(RECORDS),
            "--max-seconds", "120", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 0
    cap = capsys.readouterr()
    assert "| 101 |" in cap.out and "| **gross** |" in cap.out
    assert "| telediag |" in cap.out and "F1 % per record" in cap.out
    assert "0/2 records from the cache" in cap.err
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [d["detector"] for d in doc["detectors"]] == ["toy_det:detect", "telediag"]
    assert (tmp_path / "o" / "report.md").read_text().startswith("**toy_det:detect")
    assert cli_main(argv) == 0
    assert "2/2 records from the cache" in capsys.readouterr().err
    assert cli_main(["harness", "telediag", "--data", str(mitdb), "--records", "nope"]) == 2


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from telediag.evaluation.harness import _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = _Progress(2, "det", stream)
        bar.step("101")
        bar.step("106")
    assert "[############............] 1/2 101" in tty.getvalue()
    assert tty.getvalue().endswith("\n") and "2/2 106" in tty.getvalue()
    assert pipe.getvalue() == ""
