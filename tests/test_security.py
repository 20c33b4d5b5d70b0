"""CurveZMQ: an unknown key is refused, and the bytes on the wire are not plaintext."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.errors import ConfigError, DataError
from telediag.sources.readers import Recording
from telediag.sources.replay import replay
from telediag.transports import security

STREAM = "secret-bed-7/ecg"


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    for name in ("engine", "bed7", "viewer", "intruder"):
        security.generate(name, d)
    security.allow(d / "bed7.key", d / "allowed")
    security.allow(d / "viewer.key", d / "allowed")
    return d


def _engine(keys: Path | None, ingest: str = "tcp://127.0.0.1:*") -> Engine:
    cfg = load_config()
    sec = cfg.security
    if keys is not None:
        sec = dataclasses.replace(sec, curve=True, server_secret=str(keys / "engine.key_secret"),
                                  allow_dir=str(keys / "allowed"))
    cfg = dataclasses.replace(cfg, security=sec, engine=dataclasses.replace(
        cfg.engine, ingest=ingest, publish="tcp://127.0.0.1:*", stats_interval_s=0.2))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    return eng


def _rec(seconds: float = 2.0) -> Recording:
    t = np.arange(int(360 * seconds)) / 360
    sig = np.stack([np.sin(2 * np.pi * 1.2 * t), np.cos(2 * np.pi * 1.2 * t)], axis=1)
    return Recording(sig, 360.0, ("I", "II"), ("mV", "mV"), "synthetic")


def _collect(sub: Subscriber, seconds: float) -> list:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c = sub.recv(timeout_s=0.1)
        if c is not None and c.kind == "ecg":
            out.append(c)
    return out


def test_keys_cli_helpers(keys: Path) -> None:
    assert set(security.allowed(keys / "allowed")) == {"bed7", "viewer"}
    assert security.revoke("viewer", keys / "allowed")
    assert set(security.allowed(keys / "allowed")) == {"bed7"}
    with pytest.raises(ConfigError, match="already exists"):
        security.generate("bed7", keys)
    with pytest.raises(ConfigError, match="only a public key"):
        security.load_secret(keys / "bed7.key")
    assert (keys / "bed7.key_secret").stat().st_mode & 0o077 == 0


def test_config_requires_keys_when_curve_is_on(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[security]\ncurve = true\n")
    with pytest.raises(ConfigError, match="needs server_secret"):
        load_config(p)


def test_allowed_keys_stream_and_unknown_keys_are_refused(keys: Path) -> None:
    eng = _engine(keys)
    try:
        ok_sub = Subscriber(eng.publish_endpoint, ["ecg/", "stats/"], curve_secret=str(keys / "viewer.key_secret"),
                            server_key=str(keys / "engine.key"))
        bad_sub = Subscriber(eng.publish_endpoint, ["ecg/"], curve_secret=str(keys / "intruder.key_secret"),
                             server_key=str(keys / "engine.key"))
        plain_sub = Subscriber(eng.publish_endpoint, ["ecg/"])
        assert ok_sub.wait_connected(10)
        # the intruder's data never reaches a pipeline
        replay(_rec(), kind="ecg", stream="intruder/ecg", connect=eng.ingest_endpoint, speed=float("inf"),
               curve_secret=str(keys / "intruder.key_secret"), server_key=str(keys / "engine.key"), linger_s=0.5)
        replay(_rec(), kind="ecg", stream=STREAM, connect=eng.ingest_endpoint, speed=float("inf"),
               curve_secret=str(keys / "bed7.key_secret"), server_key=str(keys / "engine.key"), linger_s=5)
        got = _collect(ok_sub, 2.0)
        assert {c.stream for c in got} == {f"{STREAM}/filtered"}
        assert sum(c.n_samples for c in got) == 720
        assert _collect(bad_sub, 0.5) == [] and _collect(plain_sub, 0.5) == []
        stats = eng.workers[0].stats_body()
        assert set(stats["streams"]) == {STREAM}
        for s in (ok_sub, bad_sub, plain_sub):
            s.close()
    finally:
        eng.stop()
        eng.join(10)


class _Tap:
    """A TCP relay on loopback that records every byte a client sends."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.captured = bytearray()
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, record: bool) -> None:
        try:
            while not self.stop.is_set():
                data = a.recv(65536)
                if not data:
                    break
                if record:
                    self.captured += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize("curve", [False, True])
def test_bytes_on_the_wire_are_not_plaintext(keys: Path, curve: bool) -> None:
    eng = _engine(keys if curve else None)
    port = int(eng.ingest_endpoint.rsplit(":", 1)[1])
    tap = _Tap(port)
    kw = {"curve_secret": str(keys / "bed7.key_secret"), "server_key": str(keys / "engine.key")} if curve else {}
    try:
        sub = Subscriber(eng.publish_endpoint, ["ecg/", "stats/"], **(
            {"curve_secret": str(keys / "viewer.key_secret"), "server_key": str(keys / "engine.key")} if curve else {}))
        assert sub.wait_connected(10)
        rec = _rec()
        replay(rec, kind="ecg", stream=STREAM, connect=f"tcp://127.0.0.1:{tap.port}", speed=float("inf"),
               linger_s=5, **kw)
        got = _collect(sub, 2.0)
        sub.close()
    finally:
        tap.close()
        eng.stop()
        eng.join(10)
    assert sum(c.n_samples for c in got) == rec.signal.shape[0]  # the data went through the tap
    captured = bytes(tap.captured)
    samples = rec.signal[:36].astype("<f4").tobytes()
    plaintext_seen = STREAM.encode() in captured or samples in captured
    assert plaintext_seen is (not curve)
    if curve:
        assert b"CURVE" in captured[:200]  # the ZMTP greeting names the mechanism


def _kinds_seen(sub: Subscriber, seconds: float) -> set[str]:
    seen = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c = sub.recv(timeout_s=0.1)
        if c is not None and c.kind != "stats":
            seen.add(c.topic)
    return seen


def test_pcg_and_video_agents_use_curve_keys(keys: Path) -> None:
    """Every source agent takes --curve-secret/--server-key; an unknown key gets nothing in."""
    from telediag.cli import main
    from telediag.sources.video import VideoSourceOptions, run_video_source

    demo = Path(__file__).resolve().parents[1] / "demo" / "data"
    eng = _engine(keys)
    try:
        sub = Subscriber(eng.publish_endpoint, ["pcg/", "video/", "polyp/", "stats/"],
                         curve_secret=str(keys / "viewer.key_secret"), server_key=str(keys / "engine.key"))
        assert sub.wait_connected(10)
        common = ["--connect", eng.ingest_endpoint, "--server-key", str(keys / "engine.key")]
        from telediag.sources.pcg_cli import recording_of

        # a lossless agent whose key is refused has no link: it waits (here until told to stop)
        stop = threading.Event()
        threading.Timer(1.5, stop.set).start()
        r = replay(recording_of(str(demo / "a0020.wav")), kind="pcg", stream="intr/pcg",
                   connect=eng.ingest_endpoint, speed=float("inf"), curve_secret=str(keys / "intruder.key_secret"),
                   server_key=str(keys / "engine.key"), linger_s=0.2, stop=stop)
        assert r.interrupted
        assert main(["source", "pcg", "--wav", str(demo / "a0020.wav"), "--speed", "max", "--stream", "bed7/pcg",
                     "--curve-secret", str(keys / "bed7.key_secret"), *common]) == 0
        for who in ("intruder", "bed7"):  # (the agent drops what a refused link cannot take)
            res = run_video_source(VideoSourceOptions(
                str(demo / "endoscopy_synth.mp4"), connect=eng.ingest_endpoint, stream=f"{who}/endo",
                speed=float("inf"), max_frames=5, curve_secret=str(keys / f"{who}.key_secret"),
                server_key=str(keys / "engine.key")))
            assert res.frames == 5
        seen = _kinds_seen(sub, 4.0)
        assert "pcg/bed7/pcg/filtered" in seen and any(t.startswith("video/bed7/endo") for t in seen)
        assert not any("intr" in t for t in seen)
        assert set(eng.workers[0].stats_body()["streams"]) == {"bed7/pcg"}
        sub.close()
        with pytest.raises(DataError, match="both"):
            VideoSourceOptions("x.mp4", curve_secret=str(keys / "bed7.key_secret"))
    finally:
        eng.stop()
        eng.join(10)
