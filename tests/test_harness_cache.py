"""Harness cache keys are algorithm versions: the plug-in's file, its helpers, a ``version`` attribute."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from telediag.evaluation.harness import evaluate, load_function, resolve_detector
from telediag.evaluation.harness_identity import ResultCache, algorithm_identity, dependency_files

DETECTOR = '''
import numpy as np
from {helper} import THRESHOLD, envelope


def detect(signal, fs):
    e = envelope(signal, fs)
    th = THRESHOLD * np.percentile(e, 99)
    above = np.flatnonzero((e[1:-1] > th) & (e[1:-1] >= e[:-2]) & (e[1:-1] >= e[2:])) + 1
    peaks, last = [], -10**9
    for i in above:
        if i - last > 0.25 * fs:
            peaks.append(i)
            last = i
    return np.asarray(peaks)
'''

HELPER = '''
import numpy as np

THRESHOLD = {thr}


def envelope(x, fs):
    w = int(0.08 * fs)
    return np.convolve(np.diff(x, prepend=x[0]) ** 2, np.ones(w) / w, mode="same")
'''


def _write(folder: Path, helper: str, thr: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "det_main.py").write_text(DETECTOR.format(helper=helper))
    return folder / "det_main.py"


def test_editing_a_sibling_helper_invalidates(mitdb: Path, tmp_path: Path) -> None:
    det = _write(tmp_path / "plug", "det_helper_a", 0.3)
    (tmp_path / "plug" / "det_helper_a.py").write_text(HELPER.format(thr=0.3))
    spec, cache = f"{det}:detect", tmp_path / "cache"
    first = evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache)
    assert first.cached == {"101": False} and first.gross.tp > 50
    again = evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache)
    assert again.cached == {"101": True} and again.per_record == first.per_record
    # the helper (not the detector's own file) changes: a new key, and the new code runs
    (tmp_path / "plug" / "det_helper_a.py").write_text(HELPER.format(thr=80.0))
    edited = evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache)
    assert edited.cached == {"101": False}
    assert edited.gross.tp < first.gross.tp
    assert evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache).cached == {"101": True}


def test_editing_an_imported_module_elsewhere_invalidates(mitdb: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "det_helper_b.py").write_text(HELPER.format(thr=0.3))
    monkeypatch.syspath_prepend(str(lib))
    det = _write(tmp_path / "plug", "det_helper_b", 0.3)
    spec, cache = f"{det}:detect", tmp_path / "cache"
    ident1 = resolve_detector(spec).identity
    assert lib / "det_helper_b.py" in dependency_files(sys.modules["det_helper_b"])
    first = evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache)
    assert evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache).cached == {"101": True}
    (lib / "det_helper_b.py").write_text(HELPER.format(thr=80.0))
    assert resolve_detector(spec).identity != ident1
    edited = evaluate(spec, mitdb, names=["101"], max_seconds=60, cache_dir=cache)
    assert edited.cached == {"101": False}
    assert edited.gross.tp < first.gross.tp  # the edited helper was re-imported, not the stale one


def test_package_siblings_and_version_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mydetpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "algo.py").write_text("def detect(x, fs):\n    return []\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, name, ident = load_function("mydetpkg.sub.algo:detect")
    assert name == "mydetpkg.sub.algo:detect" and ident.startswith("module:mydetpkg.sub.algo:detect:")
    # a sibling module of the same top-level package is part of the version
    (pkg / "unrelated.py").write_text("X = 2\n")
    assert load_function("mydetpkg.sub.algo:detect")[2] != ident
    _, _, same = load_function("mydetpkg.sub.algo:detect")
    assert load_function("mydetpkg.sub.algo:detect")[2] == same  # nothing changed: same identity

    def f(x: np.ndarray, fs: float) -> np.ndarray:
        return x

    base = algorithm_identity(f)
    f.version = "2"  # type: ignore[attr-defined]
    assert algorithm_identity(f) != base


def test_installed_code_uses_distribution_version() -> None:
    assert dependency_files(sys.modules["numpy"]) == []
    assert algorithm_identity(np.argmax) == algorithm_identity(np.argmax)


def test_result_cache_rejects_foreign_and_corrupt_files(tmp_path: Path) -> None:
    c = ResultCache(tmp_path)
    c.put({"k": 1}, [1, 2, 3])
    assert c.get({"k": 1}) == [1, 2, 3] and c.get({"k": 2}) is None
    (f,) = tmp_path.glob("*.json")
    f.write_text("{not json")
    assert c.get({"k": 1}) is None
    f.write_text(json.dumps({"key": {"k": 999}, "payload": 5}))
    assert c.get({"k": 1}) is None
    off = ResultCache(tmp_path / "off", enabled=False)
    off.put({"k": 1}, 1)
    assert off.get({"k": 1}) is None and not (tmp_path / "off").exists()


def test_entry_point_names_a_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    from telediag.errors import ConfigError
    from telediag.evaluation.harness_tasks import resolve_plugin

    (tmp_path / "ep_plug.py").write_text("def classify(x, fs, beats):\n    return ['N'] * len(beats)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = md.EntryPoints([md.EntryPoint("my-cls", "ep_plug:classify", "telediag.harness")])
    monkeypatch.setattr(md, "entry_points", lambda group=None: eps if group == "telediag.harness" else md.EntryPoints([]))
    p = resolve_plugin("beats", "my-cls")
    assert p.name == "my-cls" and p.fn(None, 360.0, [1, 2]) == ["N", "N"]
    assert p.identity.startswith("module:ep_plug:classify:")
    with pytest.raises(ConfigError, match="entry point"):
        resolve_plugin("beats", "no-such-plugin")
