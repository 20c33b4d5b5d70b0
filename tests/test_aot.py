"""Ahead-of-time compiled kernels (engine/aot.py, issue 18 item 3): the same outputs as Numba's JIT.

The extension is built by ``make`` (``python -m telediag.engine.aot build``). These tests run the
engine's ECG and PCG pipelines over real recordings (the demo's bundled MIT-BIH 119 and PhysioNet
2016 a0020) twice in one process: first with the AOT overloads installed (and checked to be the
ones called: no kernel compiles), then with every exported signature compiled by the JIT, which
replaces the AOT overload in its dispatcher; every published record and signal must be identical,
byte for byte on the wire.

Where the extension is absent or stale (a kernel edited since the build) the comparison is skipped
with the reason, except under CI (``CI=true``), where ``make`` has just built it and a skip would
hide a broken build.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag.engine import aot
from telediag.engine.config import load_config
from telediag.engine.stage import StreamSpec
from telediag.sources.readers import read_pcg, read_wfdb
from telediag.transports.wire import Chunk, decode, encode

DEMO = Path(__file__).resolve().parents[1] / "demo" / "data"


def _require_aot() -> dict[str, Any]:
    st = aot.install()
    if not st["aot"]:
        if os.environ.get("CI") == "true":
            pytest.fail(f"AOT kernels not in use under CI: {st['reason']}")
        pytest.skip(f"AOT kernels not in use: {st['reason']}")
    return st


def _run(kind: str, sig: np.ndarray, fs: float, channels: tuple[str, ...], units: tuple[str, ...],
         chunk_s: float) -> list[bytes]:
    """Every output (records and the passed-on signal) of ``kind``'s default pipeline, encoded."""
    stages = [sc.build() for sc in load_config().pipelines[kind]]
    spec = StreamSpec("aot/test", kind, fs, channels, units)
    for st in stages:
        spec = st.open(spec)
    n = int(round(fs * chunk_s))
    out: list[bytes] = []
    for seq, i in enumerate(range(0, len(sig) - n + 1, n)):
        c = Chunk.signal(kind, "aot/test", seq, seq * int(chunk_s * 1e9), sig[i:i + n].astype(np.float32), fs,
                         channels, units)
        x: Chunk | None = decode(encode(c))
        for st in stages:
            if x is None:
                break
            o = st.process(x)
            recs = list(o.records)
            if o.deferred is not None:
                d = o.deferred
                recs += d.resume(d.run([d.item])[0]).records
            out += [b"".join(bytes(f) for f in encode(r)) for r in recs]
            x = o.signal
        if x is not None:
            out.append(b"".join(bytes(f) for f in encode(x)))
    for st in stages:
        st.close()
    return out


def _top_level_compiles(fn: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    """Call ``fn``; return its result and the telediag kernels for which a call from Python found
    no matching overload (Numba then compiles, or loads from its cache: either way not AOT code)."""
    from numba.core.dispatcher import Dispatcher

    names: list[str] = []
    real = Dispatcher._compile_for_args

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        names.append(f"{self.py_func.__module__}.{self.py_func.__qualname__}")
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Dispatcher, "_compile_for_args", spy)
        res = fn()
    return res, [n for n in names if n.startswith("telediag.")]


def _jit_every_exported_signature() -> int:
    """Compile (or load from the Numba cache) the JIT overload of every AOT-exported signature; the
    dispatcher then calls the JIT code for those types instead of the AOT code."""
    usable, _ = aot._usable(json.loads(aot.MANIFEST.read_text()))
    n = 0
    for e in usable:
        disp: Any = importlib.import_module(e["module"])
        for part in e["qualname"].split("."):
            disp = getattr(disp, part)
        disp.compile(tuple(aot._type_from_json(a) for a in e["args"]))
        n += 1
    sf = importlib.import_module("telediag.dsp.sosfilt")
    sf._fast_entry = None  # picks the JIT entry point again on next use
    return n


@pytest.fixture(scope="module")
def records() -> dict[str, tuple[np.ndarray, float]]:
    ecg = read_wfdb(str(DEMO / "mitdb119_5min"))
    pcg, fs = read_pcg(str(DEMO / "a0020.wav"))
    return {"ecg": (ecg.signal[: int(120 * ecg.fs)], float(ecg.fs)), "pcg": (np.asarray(pcg)[: 20 * fs], float(fs))}


def test_aot_outputs_equal_jit_on_real_records(records: dict[str, tuple[np.ndarray, float]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _require_aot()
    ecg, fs_e = records["ecg"]
    pcg, fs_p = records["pcg"]
    pcg = pcg.reshape(len(pcg), -1)

    def both() -> tuple[list[bytes], list[bytes]]:
        return (_run("ecg", ecg, fs_e, ("MLII", "V1"), ("mV", "mV"), 0.1),
                _run("pcg", pcg, fs_p, ("stetho",), ("adu",), 0.1))

    (aot_ecg, aot_pcg), compiled = _top_level_compiles(both, monkeypatch)
    manifest = json.loads(aot.MANIFEST.read_text())
    usable, _ = aot._usable(manifest)  # all of them unless a kernel was edited since the build
    exported = {f"{e['module']}.{e['qualname']}" for e in usable}
    edited = {f"{e['module']}.{e['qualname']}" for e in manifest["entries"]} - exported
    assert not exported & set(compiled), f"AOT kernels were JIT-compiled or loaded instead of called: {compiled}"
    # and no other kernel either: real data (read-only arrays from the wire, float32 and float64
    # chunks) calls exactly the signatures the build's synthetic warm-up recorded
    assert set(compiled) <= edited, f"kernels not covered by the AOT build: {set(compiled) - edited}"
    assert len(aot_ecg) > 1000 and len(aot_pcg) > 100
    assert any(b"beats" in r[:64] for r in aot_ecg), "no beat published: the comparison would be empty"

    assert _jit_every_exported_signature() > 0
    (jit_ecg, jit_pcg), _ = _top_level_compiles(both, monkeypatch)
    assert len(jit_ecg) == len(aot_ecg) and len(jit_pcg) == len(aot_pcg)
    bad = [i for i, (a, b) in enumerate(zip(aot_ecg, jit_ecg, strict=True)) if a != b]
    assert not bad, f"{len(bad)} ECG outputs differ, first #{bad[0]}"
    bad = [i for i, (a, b) in enumerate(zip(aot_pcg, jit_pcg, strict=True)) if a != b]
    assert not bad, f"{len(bad)} PCG outputs differ, first #{bad[0]}"


def test_stale_or_missing_extension_falls_back_to_jit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edited kernel source JITs (its signatures only), another CPU or no manifest: nothing installed."""
    if not aot.MANIFEST.exists():
        pytest.skip("AOT kernels not built")
    m = json.loads(aot.MANIFEST.read_text())
    qrs = next(e for e in m["entries"] if e["qualname"] == "qrs_process")
    rel = "dsp/_qrs_kernels.py"
    assert rel in qrs["files"]
    stale = dict(m, sources={**m["sources"], rel: "0" * 64})
    usable, changed = aot._usable(stale)
    assert rel in changed
    assert all(rel not in e["files"] for e in usable) and qrs not in usable
    assert len(usable) < len(m["entries"])
    fake = tmp_path / "engine"
    fake.mkdir()
    other = dict(m, machine=dict(m["machine"], cpu="some-other-cpu"))
    (fake / "_aot_kernels.json").write_text(json.dumps(other))
    monkeypatch.setattr(aot, "MANIFEST", fake / "_aot_kernels.json")
    assert "built for another cpu" in str(aot._load())
    monkeypatch.setattr(aot, "MANIFEST", tmp_path / "absent.json")
    assert str(aot._load()).startswith("not built")
    monkeypatch.setenv("TELEDIAG_AOT", "0")
    assert aot._load() == "disabled by TELEDIAG_AOT=0"


def test_build_without_a_c_compiler_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """No C compiler: ``make``'s ``build --optional`` goes on (exit 0, a warning), the kernels then JIT."""
    monkeypatch.setattr(aot.shutil, "which", lambda _name: None)
    assert aot.main(["build", "--optional", "--out", str(tmp_path)]) == 0
    assert "no C compiler" in capsys.readouterr().err
    assert aot.main(["build", "--out", str(tmp_path)]) == 1
    assert not list(tmp_path.iterdir())
