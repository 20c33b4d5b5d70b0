"""The viewer bridge behind CurveZMQ: an allowed viewer key streams, an unknown one gets nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_security import _engine, _rec, keys  # noqa: F401 - the engine's key fixture and helpers, reused

from telediag.errors import ConfigError
from telediag.sources.replay import replay
from telediag.viewer.bridge import Bridge
from telediag.viewer.server import ViewerThread


def test_bridge_needs_both_key_files(keys: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="needs both"):
        Bridge("tcp://127.0.0.1:1", curve_secret=str(keys / "viewer.key_secret"))


def test_viewer_with_allowed_key_streams_and_unknown_key_gets_nothing(keys: Path) -> None:  # noqa: F811
    eng = _engine(keys)
    ok = ViewerThread(eng.publish_endpoint, port=0, curve_secret=str(keys / "viewer.key_secret"),
                      server_key=str(keys / "engine.key"))
    bad = ViewerThread(eng.publish_endpoint, port=0, curve_secret=str(keys / "intruder.key_secret"),
                       server_key=str(keys / "engine.key"))
    try:
        ok.start()
        bad.start()
        deadline = time.monotonic() + 10
        while ok.status()["engine_idle_s"] is None and time.monotonic() < deadline:
            time.sleep(0.05)  # engine stats arrive once the CURVE handshake is through
        assert ok.status()["engine_idle_s"] is not None, "the allowed viewer never heard the engine"
        replay(_rec(), kind="ecg", stream="secure-view/ecg", connect=eng.ingest_endpoint, speed=float("inf"),
               curve_secret=str(keys / "bed7.key_secret"), server_key=str(keys / "engine.key"), linger_s=5)
        topic = "ecg/secure-view/ecg/filtered"
        deadline = time.monotonic() + 10
        while topic not in ok.status()["topics"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st_ok, st_bad = ok.status(), bad.status()
    finally:
        ok.stop()
        bad.stop()
        eng.stop()
        eng.join(10)
    assert topic in st_ok["topics"] and st_ok["lost"] == 0
    assert st_bad["received"] == 0 and st_bad["topics"] == []
