"""Layering: a lower layer never imports a higher one (issue 18, item 5).

The order, lowest first (a module may import its own layer and any layer below it):

====  ===============================================================================
rank  layer
====  ===============================================================================
0     ``telediag`` package root and ``telediag.errors``
1     ``dsp`` (signal processing, no I/O), ``transports`` (wire format, sockets, codec)
2     ``models`` (runtime inference)
3     ``engine``
4     ``sources``
5     applications of the runtime, peers of each other: ``evaluation`` (offline analysis and
      scoring), the offline model tools inside ``models`` (:data:`TRAINING_MODULES`:
      ``train.py``, ``distill.py``, ``variants.py``, ``experiments.py``, ``cnn_cv.py``, ``cnn_train.py``: they live next to the model
      they produce, and no runtime module may import them), ``api``, ``client``, ``recorder``,
      ``viewer``, ``exports``, ``report``
6     ``demo`` and the command line ``telediag.cli`` / ``telediag.__main__``
====  ===============================================================================

Every ``import``/``from ... import`` counts, also the lazy ones inside functions: a lazy upward
import is still a dependency. The scan is static (AST), so it also covers code paths no test
executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

def _package_dirs() -> dict[str, str]:
    """Top-level source directory -> dotted package, from pyproject.toml's package-dir."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = doc["tool"]["setuptools"]["package-dir"]
    return {d: pkg for pkg, d in mapping.items() if "/" not in d}


PACKAGE_DIRS = _package_dirs()

LAYERS: dict[str, int] = {
    "telediag": 0,
    "telediag.errors": 0,
    "telediag.dsp": 1,
    "telediag.transports": 1,
    "telediag.models": 2,
    "telediag.engine": 3,
    "telediag.sources": 4,
    "telediag.evaluation": 5,
    "telediag.training": 5,  # pseudo-layer: see _layer_key
    "telediag.api": 5,
    "telediag.client": 5,
    "telediag.recorder": 5,
    "telediag.viewer": 5,
    "telediag.exports": 5,
    "telediag.report": 5,
    "telediag.demo": 6,
    "telediag.cli": 6,
    "telediag.__main__": 6,
}

#: Offline tools inside the models package (training, distillation, variant measurement): rank 5.
TRAINING_MODULES = ("train", "cnn_cv", "cnn_train", "distill", "variants", "experiments")

#: Temporary exceptions: (importing module, imported module) -> reason. Keep empty.
ALLOWED: dict[tuple[str, str], str] = {}


def _layer_key(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "telediag":
        raise ValueError(module)
    if len(parts) == 1:
        return "telediag"
    # any component: `from telediag.models.x.train import fit` gives telediag.models.x.train.fit
    if parts[1] == "models" and any(p in TRAINING_MODULES for p in parts[2:]):
        return "telediag.training"
    key = ".".join(parts[:2])
    if key not in LAYERS:
        raise AssertionError(f"{module}: package {key} has no layer; add it to LAYERS in {__file__}")
    return key


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    pkg = PACKAGE_DIRS[rel.parts[0]]
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([pkg, *parts])


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute imported module) for every telediag import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "telediag"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "telediag":
                continue
            for a in node.names:  # `from pkg import name`: name may be a submodule (e.g. train)
                sub = f"{target}.{a.name}"
                if target == "telediag" and sub not in LAYERS:
                    sub = "telediag"  # from telediag import __version__
                out.append((node.lineno, sub))
    return out


def test_every_package_has_a_layer() -> None:
    missing = sorted({pkg for pkg in PACKAGE_DIRS.values() if _layer_key(pkg) not in LAYERS})
    assert not missing


def _sources() -> list[Path]:
    files: list[Path] = []
    for d in PACKAGE_DIRS:
        files += sorted((ROOT / d).rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def upward_imports() -> list[str]:
    bad = []
    for path in _sources():
        mod = _module_name(path)
        rank = LAYERS[_layer_key(mod)]
        for line, target in _imports(path, mod):
            trank = LAYERS[_layer_key(target)]
            if trank > rank and (mod, target) not in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} (layer {rank}) imports "
                           f"{target} (layer {trank})")
    return bad


def test_no_upward_imports() -> None:
    bad = upward_imports()
    assert not bad, "upward imports (see the layer table in tests/test_layering.py):\n" + "\n".join(bad)


def test_allow_list_entries_are_still_needed() -> None:
    live = set()
    for path in _sources():
        mod = _module_name(path)
        live |= {(mod, t) for _, t in _imports(path, mod)}
    stale = [k for k in ALLOWED if k not in live]
    assert not stale, f"remove stale ALLOWED entries: {stale}"


@pytest.mark.parametrize(
    ("module", "source", "upward"),
    [
        ("telediag.dsp.pcg", "from telediag.models.pcg_segmentation import load_params\n", True),
        ("telediag.engine.stages.video", "import telediag.sources.video_codec\n", True),
        ("telediag.sources.pcg_cli", "def f():\n    from telediag.evaluation import x\n", True),
        ("telediag.models.polyp_seg", "from telediag.models.polyp_seg import train\n", True),
        ("telediag.models.pcg_abnormal", "from telediag.models.pcg_abnormal.train import fit\n", True),
        ("telediag.models.pcg_abnormal", "from .cnn_train import fit\n", True),
        ("telediag.models.polyp_seg.train", "from telediag.evaluation.seg_metrics import f\n", False),
        ("telediag.sources.replay", "from telediag import cli\n", True),
        ("telediag.engine.stage", "from ..transports.wire import Chunk\n", False),
        ("telediag.engine.stage", "from ..sources import replay\n", True),
    ],
)
def test_scanner_catches_upward_imports(tmp_path: Path, module: str, source: str, upward: bool) -> None:
    """The scanner itself: each line above is (or is not) flagged as an upward import."""
    f = tmp_path / "m.py"
    f.write_text(source)
    rank = LAYERS[_layer_key(module)]
    ranks = [LAYERS[_layer_key(t)] for _, t in _imports(f, module)]
    assert ranks, source
    assert any(r > rank for r in ranks) is upward
