"""``telediag bench`` latency section: raw samples left by benchmarks, CDF plot, percentiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from telediag.cli import main as cli_main
from telediag.evaluation import bench_cli
from telediag.evaluation.bench_cli import (
    LATENCY_ENV,
    LatencySeries,
    latency_table,
    load_latencies,
    record_latency,
)

ROOT = Path(__file__).resolve().parents[1]

LATENCY_SUITE = '''
import numpy as np
import pytest

from telediag.evaluation.bench_cli import record_latency


@pytest.mark.benchmark(group="toy")
def test_toy_latency(benchmark):
    rng = np.random.default_rng(0)
    benchmark(sum, range(100))
    record_latency("toy end-to-end", rng.lognormal(1.0, 0.5, 500), source="bench_toy.py",
                   extra_info=benchmark.extra_info)
    record_latency("toy compute", rng.uniform(0.1, 0.2, 300), kind="compute", source="bench_toy.py")
'''


def test_record_and_load_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LATENCY_ENV, raising=False)
    info: dict[str, object] = {}
    assert record_latency("a", [1.0, 2.0], extra_info=info) is None  # no folder: nothing written
    assert info["latency_ms"] == {"a": {"n": 2, "p50": 1.5, "p95": 1.95, "p99": 1.99, "max": 2.0}}
    monkeypatch.setenv(LATENCY_ENV, str(tmp_path / "lat"))
    x = np.arange(1, 1001, dtype=float)
    path = record_latency("video: frame -> polyp", list(x) + [float("nan")], note="n")
    assert path is not None and path.parent == tmp_path / "lat" and "/" not in path.name
    (s,) = load_latencies(tmp_path / "lat")
    assert s.name == "video: frame -> polyp" and s.kind == "end-to-end" and s.samples.size == 1000
    m = s.summary()
    assert m["p50"] == pytest.approx(np.percentile(x, 50)) and m["p99"] == pytest.approx(np.percentile(x, 99))
    assert m["max"] == 1000.0
    # recording the same name again replaces it; too many samples are thinned, extremes kept
    record_latency("video: frame -> polyp", np.linspace(0.5, 9.5, 250_000))
    (s,) = load_latencies(tmp_path / "lat")
    assert s.samples.size == 100_000 and s.samples.min() == 0.5 and s.samples.max() == 9.5
    (tmp_path / "lat" / "broken.json").write_text("{")
    assert [t.name for t in load_latencies(tmp_path / "lat")] == ["video: frame -> polyp"]


def test_latency_table_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a = LatencySeries("a", "end-to-end", "x.py", "a note", np.array([1.0, 2.0, 3.0, 400.0]))
    b = LatencySeries("b", "compute", "y.py", "", np.array([0.01, 0.02]))
    md = latency_table([a, b])
    assert "| a | end-to-end | 4 | 2.5 |" in md and "| b | compute | 2 |" in md and "- a: a note" in md
    bench_cli._plot_latency_cdf([a, b], tmp_path / "cdf.png")
    assert (tmp_path / "cdf.png").stat().st_size > 5000


def test_bench_cli_draws_latency_cdf(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    suite = tmp_path / "suites"
    suite.mkdir()
    (suite / "bench_toy.py").write_text(LATENCY_SUITE)
    out = tmp_path / "report"
    (out / "latency").mkdir(parents=True)
    (out / "latency" / "stale.json").write_text(json.dumps({"name": "stale", "samples": [1.0]}))
    assert cli_main(["bench", "--quick", "--benchmarks", str(suite), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Latency" in md and "| toy end-to-end | end-to-end | 500 |" in md
    assert "| toy compute | compute | 300 |" in md and "stale" not in md
    assert "![latency_cdf.png](latency_cdf.png)" in md
    assert (out / "latency_cdf.png").stat().st_size > 5000
    doc = json.loads((out / "benchmarks.json").read_text())
    (b,) = doc["benchmarks"]
    assert b["extra_info"]["latency_ms"]["toy end-to-end"]["n"] == 500


def test_latency_scripts_quick_and_full() -> None:
    bench = bench_cli.find_benchmarks()
    quick = bench_cli.latency_scripts(bench, quick=True)
    full = bench_cli.latency_scripts(bench, quick=False)
    assert [Path(c[1]).name for c in quick] == ["ecg_delay_report.py", "load_streams.py"]
    assert quick[0][2:] == ["119"] and full[0][2:] == []
    assert quick[1][quick[1].index("--streams") + 1] == "4"


def _env(lat: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[LATENCY_ENV] = str(lat)
    return env


@pytest.mark.slow
def test_ecg_delay_report_leaves_samples(mitdb: Path, tmp_path: Path) -> None:
    lat = tmp_path / "lat"
    env = _env(lat)
    env.setdefault("TELEDIAG_DATA", str(mitdb.parent))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ecg_delay_report.py"), "119"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    series = {s.name: s for s in load_latencies(lat)}
    assert set(series) == {"QRS decision delay: confirm", "QRS decision delay: end_to_end"}
    conf, e2e = series["QRS decision delay: confirm"], series["QRS decision delay: end_to_end"]
    assert conf.kind == "signal-time" and conf.samples.size > 1500  # ~2,000 beats in record 119
    # the printed p50 (s) is the recorded one (ms)
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("confirm"))
    assert float(line.split("p50 ")[1].split()[0]) == pytest.approx(conf.summary()["p50"] / 1000, abs=5e-4)
    assert e2e.summary()["p50"] >= conf.summary()["p50"]  # the decision comes after confirmation


@pytest.mark.slow
def test_load_streams_leaves_engine_latencies(tmp_path: Path) -> None:
    lat = tmp_path / "lat"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_streams.py"), "--streams", "2",
                           "--seconds", "2"], cwd=ROOT, env=_env(lat), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    (s,) = load_latencies(lat)
    assert s.name == "engine ECG, 2 real-time streams" and s.source == "load_streams.py"
    assert s.samples.size == res["sampled_chunks"] > 20  # 2 streams x 20 chunks, a few may be in flight
    assert np.all(s.samples > 0)
