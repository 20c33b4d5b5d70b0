"""Issue 18, item 4: the bugs a new user hit from a fresh clone, each reproduced.

Each test failed before its fix (the closing note of issue 18 names the fix of each).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "telediag", *args]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens


# ---------------------------------------------------------------- models list with NaN in a card
def _nan_card_model(root: Path) -> None:
    from test_api_registry import onnx_scale_model

    d = root / "nanmodel"
    d.mkdir(parents=True)
    blob = onnx_scale_model(2.0)
    (d / "m.onnx").write_bytes(blob)
    # what json.dumps writes for a PPV of 0/0: not JSON (RFC 8259), accepted by Python's reader
    (d / "card.json").write_text(
        '{"name": "nanmodel", "version": 1, "file": "m.onnx", "sha256": "%s", "task": "t",'
        ' "inputs": [{"name": "X", "shape": ["batch", 4], "dtype": "float32"}],'
        ' "outputs": [{"name": "Y", "shape": ["batch", 4], "dtype": "float32"}],'
        ' "metrics": {"ppv": NaN, "se": Infinity}}' % hashlib.sha256(blob).hexdigest())


def test_models_list_survives_nan_in_a_card_over_http_and_zmq(tmp_path: Path) -> None:
    """``GET /v1/models`` answered 500 and ``telediag infer models`` crashed on NaN in card.json."""
    from telediag.api import ApiServer, InferenceClient, ModelRegistry, Service
    from telediag.api.http import HttpGateway

    _nan_card_model(tmp_path)
    svc = Service(ModelRegistry(roots=[("user", tmp_path)]), workers=1)
    gw = HttpGateway(svc, "127.0.0.1", 0).start()
    srv = ApiServer(svc, f"tcp://127.0.0.1:{_closed_port()}").start()
    try:
        with urllib.request.urlopen(gw.url + "/v1/models", timeout=30) as r:
            assert r.status == 200
            doc = json.loads(r.read(), parse_constant=lambda c: pytest.fail(f"{c} in the reply"))
        (m,) = doc["result"]["models"] if isinstance(doc["result"], dict) else doc["result"]
        assert m["card"]["metrics"] == {"ppv": None, "se": None}
        c = InferenceClient(srv.addr, timeout_s=20, retries=0)
        try:
            (m2,) = c.models()
        finally:
            c.close()
        assert m2["card"]["metrics"] == {"ppv": None, "se": None}
    finally:
        srv.stop()
        gw.stop()
        svc.close()


def test_shipped_model_cards_are_strict_json() -> None:
    """No NaN/Infinity in any shipped card (a JSON reader in another language rejects them)."""
    for card in sorted(ROOT.glob("models/*/card.json")):
        def bad(c: str, card: Path = card) -> None:
            raise AssertionError(f"{card.relative_to(ROOT)} contains {c}: write null instead")

        json.loads(card.read_text(encoding="utf-8"), parse_constant=bad)
    assert math.isnan(float("nan"))  # the helper above is what fails, not this line
