"""Model registry: sha256 and input-contract checks, version resolution, atomic hot reload."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag.api import ApiServer, InferenceClient, ModelRegistry, Service
from telediag.api.registry import load_entry, read_entry
from telediag.errors import ModelError

# ----------------------------------------------------------------- a tiny ONNX writer
# (protobuf by hand so the tests need neither torch nor the onnx package: Y = X * k)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wt: int) -> bytes:
    return _varint(field << 3 | wt)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _vi(field: int, v: int) -> bytes:
    return _key(field, 0) + _varint(v)


def _value_info(name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(_ld(1, _vi(1, d) if isinstance(d, int) else _ld(2, d.encode())) for d in dims)
    tensor = _vi(1, 1) + _ld(2, shape)  # elem_type FLOAT
    return _ld(1, name.encode()) + _ld(2, _ld(1, tensor))


def onnx_scale_model(k: float, width: int = 4) -> bytes:
    """ModelProto of ``Y = X * k`` with X, Y float32 of shape (N, width)."""
    init = _vi(2, 1) + _ld(8, b"k") + _ld(9, struct.pack("<f", k))  # scalar tensor
    node = _ld(1, b"X") + _ld(1, b"k") + _ld(2, b"Y") + _ld(4, b"Mul")
    graph = (_ld(1, node) + _ld(2, b"scale") + _ld(5, init)
             + _ld(11, _value_info("X", ["N", width])) + _ld(12, _value_info("Y", ["N", width])))
    opset = _ld(1, b"") + _vi(2, 17)
    return _vi(1, 8) + _ld(2, b"telediag-test") + _ld(7, graph) + _ld(8, opset)


def install(root: Path, name: str, k: float, version: Any, *, file: str | None = None,
            sha: str | None = None, shape: list[Any] | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    fname = file or f"{name}_v{version}.onnx"
    blob = onnx_scale_model(k)
    tmp = d / (fname + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, d / fname)
    card = {"name": name, "version": version, "file": fname,
            "sha256": sha or hashlib.sha256(blob).hexdigest(),
            "inputs": [{"name": "X", "shape": shape or ["batch", 4], "dtype": "float32"}],
            "outputs": [{"name": "Y", "shape": ["batch", 4], "dtype": "float32"}], "task": "test scale"}
    tmpc = d / "card.json.tmp"
    tmpc.write_text(json.dumps(card))
    os.replace(tmpc, d / "card.json")
    return d


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_load_and_run(tmp_path: Path) -> None:
    install(tmp_path, "scale", 2.0, 1)
    reg = ModelRegistry(roots=[("user", tmp_path)])
    assert reg.names() == ["scale"]
    m = reg.get("scale")
    np.testing.assert_array_equal(m.run({"X": X})["Y"], X * 2)
    summary = reg.list()[0]
    assert summary["version"] == 1 and summary["loaded"] and summary["source"] == "user"
    with pytest.raises(ModelError, match="takes inputs"):
        m.run({"Z": X})
    with pytest.raises(ModelError, match="dimension 1 must be 4"):
        m.run({"X": np.zeros((2, 5), np.float32)})
    with pytest.raises(KeyError):
        reg.get("nope")


def test_sha256_mismatch_names_both_hashes(tmp_path: Path) -> None:
    install(tmp_path, "scale", 2.0, 1, sha="0" * 64)
    reg = ModelRegistry(roots=[("user", tmp_path)])
    actual = hashlib.sha256(onnx_scale_model(2.0)).hexdigest()
    with pytest.raises(ModelError) as ei:
        reg.get("scale")
    assert actual in str(ei.value) and "0" * 64 in str(ei.value) and "refusing" in str(ei.value)


def test_contract_mismatch(tmp_path: Path) -> None:
    install(tmp_path, "scale", 2.0, 1, shape=["batch", 5])
    with pytest.raises(ModelError, match=r"dimension 1 is 5 in the card, 4 in the ONNX file"):
        load_entry(read_entry(tmp_path / "scale", "user"))
    install(tmp_path, "scale", 2.0, 1, shape=["batch", 4, 1])
    with pytest.raises(ModelError, match="shape is"):
        load_entry(read_entry(tmp_path / "scale", "user"))


def test_bad_cards_are_listed_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{nope")
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "card.json").write_text(json.dumps({"file": "../x.onnx", "sha256": "ab"}))
    install(tmp_path, "scale", 2.0, 1)
    reg = ModelRegistry(roots=[("user", tmp_path)])
    assert reg.names() == ["scale"]
    errs = {d["name"]: d["card_error"] for d in reg.list() if "card_error" in d}
    assert "unreadable model card" in errs["broken"] and "must stay inside" in errs["escape"]


def test_user_version_overrides_package(tmp_path: Path) -> None:
    pkg, user = tmp_path / "pkg", tmp_path / "user"
    install(pkg, "scale", 2.0, 3)
    install(user, "scale", 5.0, 2)
    reg = ModelRegistry(roots=[("package", pkg), ("user", user)])
    assert reg.entry("scale").source == "package"  # higher version wins
    install(user, "scale", 5.0, "3.1")
    reg.reload()
    assert reg.entry("scale").source == "user"
    np.testing.assert_array_equal(reg.get("scale").run({"X": X})["Y"], X * 5)


def test_shipped_models_verify(tmp_path: Path) -> None:
    """Every model card shipped in the package loads: sha256 and input contract match."""
    reg = ModelRegistry(roots=[("package", Path(__file__).resolve().parents[1] / "models")])
    for d in reg.list():
        assert "card_error" not in d, d
        reg.get(d["name"])


def test_hot_reload_is_atomic(tmp_path: Path) -> None:
    install(tmp_path, "scale", 2.0, 1)
    reg = ModelRegistry(roots=[("user", tmp_path)])
    old = reg.get("scale")
    install(tmp_path, "scale", 3.0, 2)
    assert reg.reload() == ["scale"]
    new = reg.get("scale")
    assert new is not old and new.entry.version == 2
    np.testing.assert_array_equal(old.run({"X": X})["Y"], X * 2)  # in-flight holders keep the old session
    np.testing.assert_array_equal(new.run({"X": X})["Y"], X * 3)
    # a changed file with a broken hash is refused and the old version stays in service
    install(tmp_path, "scale", 4.0, 3, sha="f" * 64)
    reg.reload()
    assert reg.get("scale") is new
    assert "refusing" in reg.list()[0]["reload_error"]
    # same version, same file name, new contents (and a matching card): reloaded
    install(tmp_path, "scale", 7.0, 2, file="scale_v2.onnx")
    reg.reload()
    np.testing.assert_array_equal(reg.get("scale").run({"X": X})["Y"], X * 7)


def test_requests_across_reloads_all_succeed(tmp_path: Path) -> None:
    install(tmp_path, "scale", 1.0, 1)
    reg = ModelRegistry(roots=[("user", tmp_path)])
    svc = Service(reg, workers=3)
    srv = ApiServer(svc, "tcp://127.0.0.1:*").start()
    reg.start_watching(0.02)
    stop = threading.Event()
    seen: list[float] = []
    per_thread: list[list[float]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def hammer(i: int) -> None:
        try:
            with InferenceClient(srv.endpoint, timeout_s=30, retries=0) as c:
                while not stop.is_set():
                    y = c.infer_model("scale", {"X": X})["Y"]
                    k = float(y[0, 1])  # X[0, 1] == 1
                    assert np.array_equal(y, X * k), y
                    seen.append(k)
                    per_thread[i].append(k)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        with InferenceClient(srv.endpoint, timeout_s=30) as c:
            for version in range(2, 6):
                n = len(seen)
                install(tmp_path, "scale", float(version), version)
                while c.models()[0]["loaded_version"] != version:  # the watcher swaps it in
                    pass
                while len(seen) < n + 20:
                    pass
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        reg.stop_watching()
        srv.stop(close_service=True)
    assert not errors, errors[:3]
    assert set(seen) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # each client's requests are sequential: once one is served by a new version, no later
    # request of that client is served by an older one
    for ks in per_thread:
        assert ks and all(b >= a for a, b in zip(ks, ks[1:], strict=False)), ks
    assert reg.reloads >= 4
