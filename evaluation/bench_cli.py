"""``telediag bench``: run the benchmark suites and write a Markdown report with plots.

Usage::

    telediag bench [--quick] [--out DIR] [-k EXPR] [--benchmarks DIR] [--no-latency-scripts]
                   [--accuracy [--data DIR] [--records 101,106] [--max-seconds S]]

Runs every ``benchmarks/bench_*.py`` suite in one pytest process with pytest-benchmark
(``--benchmark-json``), then writes ``DIR/report.md``: a table per benchmark group with
telediag's implementations and the peers measured in the same run, side by side, and each
row's time relative to the fastest telediag row of its group.  ``DIR/speed_ratios.png`` plots
how many times slower each peer is (log scale).  ``--accuracy`` also runs the QRS research
harness (:mod:`telediag.evaluation.harness`) for telediag and the installed peers and plots
per-record F1 (``DIR/qrs_f1.png``).

Latency: benchmarks that measure latencies leave their raw samples (ms) with
:func:`record_latency` in the folder named by ``$TELEDIAG_BENCH_LATENCY_DIR`` (``telediag
bench`` sets it to ``DIR/latency``); the report lists p50/p95/p99/max per series and
``DIR/latency_cdf.png`` draws their CDFs (log x axis, p50 and p99 marked).  Besides the
pytest suites, ``telediag bench`` runs the two latency scripts ``benchmarks/ecg_delay_report.py``
(QRS decision delay, signal time) and ``benchmarks/load_streams.py`` (engine latency with N
real-time ECG streams), small with ``--quick``; not with ``-k`` or ``--no-latency-scripts``.

The suites live in the repository's ``benchmarks/`` folder, not in the installed package:
run from a source checkout (or pass ``--benchmarks DIR``).  Plots need matplotlib
(``pip install 'telediag[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.errors import ConfigError, TelediagError

__all__ = [
    "LATENCY_ENV",
    "BenchRow",
    "LatencySeries",
    "add_arguments",
    "find_benchmarks",
    "is_peer",
    "latency_table",
    "load_latencies",
    "latency_scripts",
    "load_rows",
    "record_latency",
    "render_report",
    "run",
]

#: Substrings of a benchmark name that mark a peer (reference) implementation.
PEER_TOKENS: tuple[str, ...] = (
    "peer", "scipy", "numpy", "sleepecg", "neurokit", "xqrs", "pan_tompkins", "json_b64", "pickle",
)

QUICK_OPTS = [
    "--benchmark-min-rounds=1", "--benchmark-max-time=0.05", "--benchmark-min-time=0",
    "--benchmark-warmup=off", "--benchmark-calibration-precision=1",
]


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One benchmark from a pytest-benchmark JSON file (times in seconds)."""

    group: str
    name: str
    median: float
    mean: float
    stddev: float
    rounds: int
    peer: bool


# ----------------------------------------------------------------------------------------
# Latency samples: written by the benchmarks, read by the report
# ----------------------------------------------------------------------------------------
#: Environment variable naming the folder where benchmarks leave raw latency samples.
LATENCY_ENV = "TELEDIAG_BENCH_LATENCY_DIR"
_MAX_SAMPLES = 100_000


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120] or "latency"


def _summary(x: NDArray[np.float64]) -> dict[str, float]:
    if x.size == 0:
        return {"n": 0, "p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"n": int(x.size), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(x.max())}


def record_latency(name: str, samples_ms: Iterable[float], *, kind: str = "end-to-end", source: str = "",
                   note: str = "", directory: str | Path | None = None,
                   extra_info: dict[str, Any] | None = None) -> Path | None:
    """Leave raw latency samples (milliseconds) where ``telediag bench`` draws them.

    Parameters
    ----------
    name : str
        Series label in the report and the plot (one file per name; recording it again
        replaces it).
    samples_ms : iterable of float
        Latencies in ms; non-finite values are dropped; more than 100,000 are thinned evenly.
    kind : str
        ``"end-to-end"`` (source timestamp -> publish), ``"compute"`` (processing time of a
        chunk) or ``"signal-time"`` (a decision delay in the signal's own time base).
    source, note : str
        Where it was measured (benchmark file and test) and a short caveat.
    directory : path, optional
        Where to write; default ``$TELEDIAG_BENCH_LATENCY_DIR``; when neither is set nothing is
        written (running a benchmark on its own costs nothing).
    extra_info : dict, optional
        A pytest-benchmark ``benchmark.extra_info``: gets ``latency_ms[name] = {n, p50, p95,
        p99, max}`` (so ``benchmarks.json`` carries the summary too).

    Returns
    -------
    Path or None
        The JSON file written.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> record_latency("toy", [1.0, 2.0, 3.0], directory=d).name
    'toy.json'
    >>> load_latencies(d)[0].summary()["p50"]
    2.0
    """
    x = np.asarray([float(v) for v in samples_ms], dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size > _MAX_SAMPLES:
        x = np.sort(x)[np.linspace(0, x.size - 1, _MAX_SAMPLES).round().astype(np.int64)]
    if extra_info is not None:
        extra_info.setdefault("latency_ms", {})[name] = {k: round(v, 4) for k, v in _summary(x).items()}
    d = directory if directory is not None else os.environ.get(LATENCY_ENV)
    if not d:
        return None
    out = Path(d)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_slug(name)}.json"
    doc = {"name": name, "kind": kind, "unit": "ms", "source": source, "note": note,
           "samples": [round(float(v), 4) for v in x]}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


@dataclass(frozen=True, slots=True)
class LatencySeries:
    """Raw latency samples of one benchmark series (ms)."""

    name: str
    kind: str
    source: str
    note: str
    samples: NDArray[np.float64]

    def summary(self) -> dict[str, float]:
        """``{n, p50, p95, p99, max}`` in ms (NaN when empty)."""
        return _summary(self.samples)


def load_latencies(directory: str | Path) -> list[LatencySeries]:
    """Every series :func:`record_latency` left in ``directory``, sorted by name.

    Unreadable files are skipped with a note on stderr.

    Examples
    --------
    >>> load_latencies("/nonexistent")
    []
    """
    d = Path(directory)
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            doc = json.loads(f.read_text())
            x = np.asarray(doc["samples"], dtype=np.float64)
            out.append(LatencySeries(str(doc["name"]), str(doc.get("kind", "")), str(doc.get("source", "")),
                                     str(doc.get("note", "")), x[np.isfinite(x)]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"telediag bench: skipping latency file {f}: {e}", file=sys.stderr)
    return sorted(out, key=lambda s: s.name)


def _ms(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def latency_table(series: list[LatencySeries]) -> str:
    """Markdown: n, p50, p95, p99 and max (ms) per series.

    Examples
    --------
    >>> s = LatencySeries("a", "compute", "x.py", "", np.arange(1.0, 101.0))
    >>> latency_table([s]).splitlines()[2]
    '| a | compute | 100 | 50.5 | 95 | 99 | 100 | x.py |'
    """
    lines = ["| series | kind | n | p50 ms | p95 ms | p99 ms | max ms | source |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for s in series:
        m = s.summary()
        lines.append(f"| {s.name} | {s.kind} | {int(m['n'])} | {_ms(m['p50'])} | {_ms(m['p95'])} | "
                     f"{_ms(m['p99'])} | {_ms(m['max'])} | {s.source} |")
    notes = [f"- {s.name}: {s.note}" for s in series if s.note]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def _plot_latency_cdf(series: list[LatencySeries], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5))
    for i, s in enumerate(series):
        x = np.sort(s.samples[s.samples > 0])
        if x.size == 0:
            continue
        y = np.arange(1, x.size + 1) / x.size
        color = f"C{i % 10}"
        ax.step(x, y, where="post", color=color, lw=1.4, label=f"{s.name} (n={x.size})")
        p50, p99 = np.percentile(x, [50, 99])
        ax.plot([p50], [0.5], "o", color=color, ms=5)
        ax.plot([p99], [0.99], "^", color=color, ms=6)
        ax.annotate(f"{p99:.3g}", (p99, 0.99), xytext=(3, -10 - 9 * (i % 3)), textcoords="offset points",
                    fontsize=6, color=color)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, color="0.7", lw=0.6, ls=":")
    ax.axhline(0.99, color="0.7", lw=0.6, ls=":")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of samples <= x")
    ax.set_title("Latency CDFs (o p50, ^ p99)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def is_peer(name: str) -> bool:
    """Whether a benchmark name denotes a peer implementation rather than telediag's.

    Examples
    --------
    >>> is_peer("test_sosfilt_stream[16-1-scipy]"), is_peer("test_telediag_offline")
    (True, False)
    """
    low = name.lower()
    return "telediag" not in low and any(t in low for t in PEER_TOKENS)


def find_benchmarks(explicit: Path | None = None) -> Path:
    """The ``benchmarks/`` folder of the source checkout.

    Looks at ``explicit``, then ``./benchmarks`` and its parents' ``benchmarks``, then the
    checkout this module is imported from (editable install).

    Raises
    ------
    telediag.errors.ConfigError
        No folder with ``bench_*.py`` files was found.
    """
    cands: list[Path] = []
    if explicit is not None:
        if not any(explicit.glob("bench_*.py")):
            raise ConfigError(f"--benchmarks {explicit} holds no bench_*.py files")
        return explicit.resolve()
    here = Path.cwd().resolve()
    cands += [p / "benchmarks" for p in (here, *here.parents)]
    cands.append(Path(__file__).resolve().parents[1] / "benchmarks")
    for c in cands:
        if c.is_dir() and any(c.glob("bench_*.py")):
            return c
    raise ConfigError(
        "telediag bench needs a source checkout of telediag: the benchmark suites live in the "
        "repository's benchmarks/ folder, which the installed package does not ship. Run it from "
        "the checkout (git clone ...; cd telediag; telediag bench) or pass --benchmarks DIR."
    )


def load_rows(data: dict[str, Any]) -> list[BenchRow]:
    """Rows of a pytest-benchmark JSON document (group = the benchmark group or its file).

    Examples
    --------
    >>> doc = {"benchmarks": [{"group": None, "name": "test_a", "fullname": "b/bench_x.py::test_a",
    ...        "stats": {"median": 1e-3, "mean": 1e-3, "stddev": 0.0, "rounds": 3}}]}
    >>> load_rows(doc)[0].group
    'bench_x'
    """
    rows = []
    for b in data.get("benchmarks", []):
        group = b.get("group") or Path(str(b.get("fullname", "")).split("::")[0]).stem or "ungrouped"
        s = b["stats"]
        rows.append(BenchRow(str(group), str(b["name"]), float(s["median"]), float(s["mean"]),
                             float(s.get("stddev", 0.0)), int(s.get("rounds", 0)), is_peer(str(b["name"]))))
    return rows


def _fmt_time(t: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= f:
            return f"{t / f:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _groups(rows: list[BenchRow]) -> dict[str, list[BenchRow]]:
    out: dict[str, list[BenchRow]] = {}
    for r in rows:
        out.setdefault(r.group, []).append(r)
    return out


def peer_ratios(rows: list[BenchRow]) -> list[tuple[str, float]]:
    """(label, peer median / fastest telediag median of the same group) for every peer row.

    Examples
    --------
    >>> rows = [BenchRow("g", "ours", 1.0, 1.0, 0, 1, False), BenchRow("g", "peer_x", 5.0, 5.0, 0, 1, True)]
    >>> peer_ratios(rows)
    [('g: peer_x', 5.0)]
    """
    out = []
    for g, rs in _groups(rows).items():
        ours = [r.median for r in rs if not r.peer]
        if not ours:
            continue
        best = min(ours)
        for r in rs:
            if r.peer and best > 0:
                out.append((f"{g}: {r.name}", r.median / best))
    return out


def render_report(rows: list[BenchRow], meta: dict[str, Any], accuracy: str | None = None,
                  plots: list[str] | None = None, latency: str | None = None) -> str:
    """The Markdown report: a table per group, telediag rows first, with ratios to the fastest.

    Examples
    --------
    >>> rows = [BenchRow("g", "ours", 1e-3, 1e-3, 0, 5, False), BenchRow("g", "peer_x", 4e-3, 4e-3, 0, 5, True)]
    >>> "| peer_x | peer | 4 ms" in render_report(rows, {})
    True
    """
    lines = ["# telediag benchmark report", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Times are the median over rounds, measured in one process in the same run; "
              "*x fastest telediag* is the row's median over the fastest telediag row of its group "
              "(> 1: slower).", ""]
    for g, rs in sorted(_groups(rows).items()):
        ours = [r.median for r in rs if not r.peer]
        best = min(ours) if ours else math.nan
        lines += [f"## {g}", "", "| benchmark | impl | median | mean | stddev | rounds | x fastest telediag |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in sorted(rs, key=lambda r: (r.peer, r.median)):
            ratio = "n/a" if math.isnan(best) or best <= 0 else f"{r.median / best:.2f}"
            lines.append(f"| {r.name} | {'peer' if r.peer else 'telediag'} | {_fmt_time(r.median)} | "
                         f"{_fmt_time(r.mean)} | {_fmt_time(r.stddev)} | {r.rounds} | {ratio} |")
        lines.append("")
    if latency:
        lines += ["## Latency", "", "Raw samples left by the latency benchmarks (`latency/*.json`); "
                  "*end-to-end*: source timestamp -> published, *compute*: processing time per chunk, "
                  "*signal-time*: decision delay in the record's own time.", "", latency, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if accuracy:
        lines += ["## QRS accuracy (EC57)", "", accuracy, ""]
    return "\n".join(lines)


def _plot_ratios(ratios: list[tuple[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.35 * len(ratios) + 1.5))
    labels = [r[0] for r in ratios]
    vals = [r[1] for r in ratios]
    ax.barh(range(len(vals)), [v - 1.0 for v in vals], left=1.0,
            color=["tab:green" if v >= 1 else "tab:red" for v in vals])
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.3g}x", (v, i), xytext=(3 if v >= 1 else -3, 0), textcoords="offset points",
                    ha="left" if v >= 1 else "right", va="center", fontsize=7)
    ax.set_yticks(range(len(vals)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("peer time / fastest telediag time (log; > 1: telediag faster)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_f1(f1: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dets = list(f1)
    recs = list(next(iter(f1.values())))
    x = np.arange(len(recs))
    w = 0.8 / max(len(dets), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(recs) * max(len(dets), 1) ** 0.5 + 2), 4))
    for i, d in enumerate(dets):
        ax.bar(x + i * w - 0.4 + w / 2, [100 * f1[d].get(r, math.nan) for r in recs], w, label=d)
    ax.set_xticks(x, recs, rotation=90, fontsize=7)
    ax.set_ylabel("F1 %")
    lo = min((100 * v for d in f1.values() for v in d.values() if not math.isnan(v)), default=90.0)
    ax.set_ylim(max(0.0, min(lo, 99.0) - 1.0), 100.2)
    ax.legend(fontsize=7, ncol=min(len(dets), 5), loc="lower left", framealpha=0.9)
    ax.set_title("QRS detection F1 per record (EC57)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` sub-command's arguments to ``parser``.

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_arguments(p)
    >>> p.parse_args(["--quick"]).quick
    True
    """
    parser.add_argument("--quick", action="store_true", help="few rounds per benchmark (a rough report)")
    parser.add_argument("--out", type=Path, default=Path("bench-report"), help="report folder (bench-report)")
    parser.add_argument("-k", dest="k", default=None, metavar="EXPR", help="pytest -k expression selecting benchmarks")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="benchmarks folder (default: benchmarks/ of the source checkout)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--accuracy", action="store_true", help="also score QRS accuracy per record (harness)")
    parser.add_argument("--data", type=Path, default=None, help="WFDB records for --accuracy (default shared mitdb)")
    parser.add_argument("--records", default=None, help="records for --accuracy (comma-separated; default all)")
    parser.add_argument("--max-seconds", type=float, default=None, help="--accuracy: first S seconds of each record")
    parser.add_argument("--cache", type=Path, default=None, help="--accuracy: harness cache folder")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="extra argument passed to pytest (repeatable)")
    parser.add_argument("--no-latency-scripts", action="store_true",
                        help="skip benchmarks/ecg_delay_report.py and load_streams.py (also skipped with -k)")


def _accuracy(args: argparse.Namespace) -> tuple[str, dict[str, dict[str, float]]]:
    from .harness import PEERS, evaluate, resolve_detector
    from .harness_cli import comparison_tables
    from .wfdb_io import data_dir

    data = args.data or data_dir("mitdb")
    if data is None:
        raise ConfigError("--accuracy needs WFDB records: pass --data DIR or set TELEDIAG_DATA")
    names = [n for n in args.records.split(",") if n] if args.records else None
    results = []
    for spec in ("telediag", *PEERS):
        try:
            det = resolve_detector(spec)
        except ConfigError as e:
            print(f"skipping {spec}: {e}", file=sys.stderr)
            continue
        results.append(evaluate(det, data, names=names, max_seconds=args.max_seconds,
                                cache_dir=args.cache, progress=sys.stderr))
    span = f", first {args.max_seconds:g} s" if args.max_seconds else ""
    text = f"Records in `{data}`{span}, lead 0.\n\n" + comparison_tables(results)
    return text, {r.detector: r.f1 for r in results}


def latency_scripts(bench: Path, quick: bool) -> list[list[str]]:
    """Commands of the latency scripts in ``bench`` (small runs when ``quick``).

    Examples
    --------
    >>> [c[1].rsplit("/", 1)[-1] for c in latency_scripts(find_benchmarks(), quick=True)]
    ['ecg_delay_report.py', 'load_streams.py']
    """
    cmds = []
    if (bench / "ecg_delay_report.py").is_file():
        cmds.append([sys.executable, str(bench / "ecg_delay_report.py"), *(["119"] if quick else [])])
    if (bench / "load_streams.py").is_file():
        n, sec = ("4", "3") if quick else ("20", "10")
        cmds.append([sys.executable, str(bench / "load_streams.py"), "--streams", n, "--seconds", sec])
    return cmds


def _run_latency_scripts(bench: Path, quick: bool, env: dict[str, str]) -> None:
    for cmd in latency_scripts(bench, quick):
        print("telediag bench: " + " ".join(cmd), file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, cwd=str(bench.parent), env=env, timeout=900)
        except subprocess.TimeoutExpired:
            print(f"telediag bench: {cmd[1]} timed out; its latencies are missing", file=sys.stderr)
            continue
        if proc.returncode != 0:
            print(f"telediag bench: {cmd[1]} exited {proc.returncode}; its latencies may be missing",
                  file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the suites, write ``report.md`` (and plots); return pytest's exit code or 0."""
    bench = find_benchmarks(args.benchmarks)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    lat_dir = (out / "latency").resolve()
    for stale in lat_dir.glob("*.json") if lat_dir.is_dir() else []:
        stale.unlink()
    jpath = (out / "benchmarks.json").resolve()
    cmd = [sys.executable, "-m", "pytest", str(bench), "-o", "python_files=bench_*.py",
           "-p", "no:cacheprovider", "-q", f"--benchmark-json={jpath}", "--benchmark-sort=name"]
    if args.quick:
        cmd += QUICK_OPTS
    if args.k:
        cmd += ["-k", args.k]
    cmd += list(args.pytest_arg)
    print("telediag bench: " + " ".join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env[LATENCY_ENV] = str(lat_dir)
    proc = subprocess.run(cmd, cwd=str(bench.parent), env=env)
    if proc.returncode == 5:
        raise ConfigError(f"no benchmarks selected in {bench}" + (f" by -k {args.k!r}" if args.k else ""))
    if proc.returncode not in (0, 1) or not jpath.is_file():
        raise TelediagError(f"pytest failed (exit {proc.returncode}) before writing {jpath}")
    if proc.returncode == 1:
        print("telediag bench: some benchmark tests failed; the report covers those that ran",
              file=sys.stderr)
    doc = json.loads(jpath.read_text())
    rows = load_rows(doc)
    mi = doc.get("machine_info", {})
    meta = {"suites": str(bench), "date": doc.get("datetime", "?"),
            "machine": f"{mi.get('cpu', {}).get('brand_raw', '?')}, python {mi.get('python_version', '?')}",
            "mode": "quick (few rounds)" if args.quick else "full", "benchmarks": len(rows)}
    if args.k:
        meta["selection"] = f"-k {args.k!r}"
    if not args.k and not getattr(args, "no_latency_scripts", False):
        _run_latency_scripts(bench, args.quick, env)
    series = load_latencies(lat_dir)
    acc_text, f1 = (None, None)
    if args.accuracy:
        acc_text, f1 = _accuracy(args)
    plots: list[str] = []
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("telediag bench: no plots (pip install matplotlib, or 'telediag[bench]')", file=sys.stderr)
        else:
            ratios = peer_ratios(rows)
            if ratios:
                _plot_ratios(ratios, out / "speed_ratios.png")
                plots.append("speed_ratios.png")
            if f1:
                _plot_f1(f1, out / "qrs_f1.png")
                plots.append("qrs_f1.png")
            if any(s.samples.size for s in series):
                _plot_latency_cdf(series, out / "latency_cdf.png")
                plots.append("latency_cdf.png")
    lat_text = latency_table(series) if series else None
    (out / "report.md").write_text(render_report(rows, meta, acc_text, plots, lat_text))
    print(f"telediag bench: wrote {out / 'report.md'} ({len(rows)} benchmarks"
          f"{', ' + ', '.join(plots) if plots else ''})", file=sys.stderr)
    return int(proc.returncode)
