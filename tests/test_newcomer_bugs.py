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
    card = json.dumps({"name": "nanmodel", "version": 1, "file": "m.onnx", "task": "t",
                       "sha256": hashlib.sha256(blob).hexdigest(),
                       "inputs": [{"name": "X", "shape": ["batch", 4], "dtype": "float32"}],
                       "outputs": [{"name": "Y", "shape": ["batch", 4], "dtype": "float32"}],
                       "metrics": {"ppv": float("nan"), "se": float("inf")}})  # allow_nan: writes NaN
    assert "NaN" in card and "Infinity" in card
    (d / "card.json").write_text(card)


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


# ---------------------------------------------------------------- addresses without tcp://
def test_addresses_host_port_means_tcp_and_garbage_is_a_usage_error(tmp_path: Path, capsys) -> None:
    """``--connect localhost:5555`` printed a raw ZMQError traceback."""
    from telediag.cli import main
    from telediag.errors import ConfigError
    from telediag.transports.sockets import endpoint

    assert endpoint("localhost:5555") == "tcp://localhost:5555"
    assert endpoint(" tcp://127.0.0.1:* ") == "tcp://127.0.0.1:*"
    for bad in ("localhost", "udp://h:1", "tcp://h", "tcp://h:99999", ""):
        with pytest.raises(ConfigError, match="invalid address"):
            endpoint(bad)
    csv = tmp_path / "x.csv"
    csv.write_text("time,I\n0,0\n0.01,1\n")
    with pytest.raises(SystemExit) as ei:
        main(["source", "ecg", "--csv", str(csv), "--connect", "localhost"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "invalid address 'localhost'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["tail", "nonsense"])
    assert "invalid address 'nonsense'" in capsys.readouterr().err


# ---------------------------------------------------------------- a source without an engine
def test_source_without_an_engine_fails_instead_of_reporting_success(tmp_path: Path) -> None:
    """A replay to an absent engine printed "sent N chunks" after lingering 30 s, exit 0."""
    csv = tmp_path / "x.csv"
    csv.write_text("time,I\n" + "".join(f"{i / 100},{i % 7}\n" for i in range(200)))
    port = _closed_port()
    t0 = time.monotonic()
    r = subprocess.run(_cli("source", "ecg", "--csv", str(csv), "--speed", "max", "--connect",
                            f"127.0.0.1:{port}", "--connect-timeout", "2"),
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode != 0, r.stdout
    assert f"no engine reached at tcp://127.0.0.1:{port}" in r.stderr
    assert "sent" not in r.stdout.split("\n", 1)[-1]  # no success line
    assert time.monotonic() - t0 < 25  # not the 30 s linger of old (generous bound for a busy CI)


def test_replay_reports_whether_an_engine_was_reached() -> None:
    """The library call says ``reached=False`` (and a connect timeout raises) without an engine."""
    import numpy as np

    from telediag.errors import EngineError
    from telediag.sources.readers import Recording
    from telediag.sources.replay import replay

    rec = Recording(np.zeros((100, 1)), 100.0, ("I",), ("mV",), "z")
    addr = f"tcp://127.0.0.1:{_closed_port()}"
    assert replay(rec, kind="ecg", stream="z/ecg", connect=addr, speed=float("inf"), linger_s=0.2).reached is False
    with pytest.raises(EngineError, match="no engine reached"):
        replay(rec, kind="ecg", stream="z/ecg", connect=addr, speed=1000.0, chunk_ms=10, linger_s=0.2,
               connect_timeout_s=0.3, loop=True)


# ---------------------------------------------------------------- infer --http to a closed port
def test_http_client_to_a_closed_port_says_connection_refused() -> None:
    """``telediag infer --http`` to a closed port said ``timeout``."""
    from telediag.api.client import HttpInferenceClient
    from telediag.api.schema import ApiError

    port = _closed_port()
    c = HttpInferenceClient(f"http://127.0.0.1:{port}", timeout_s=5, retries=2)
    t0 = time.monotonic()
    with pytest.raises(ApiError) as ei:
        c.health()
    assert ei.value.code == "unreachable" and "connection refused" in ei.value.message
    assert time.monotonic() - t0 < 4  # not retried: a refusal is final
    r = subprocess.run(_cli("infer", "health", "--http", f"http://127.0.0.1:{port}"), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "connection refused" in r.stderr and "timeout" not in r.stderr


# ---------------------------------------------------------------- the README's TOML example
def test_readme_toml_example_keeps_the_ecg_analysis(tmp_path: Path) -> None:
    """Saved as a config, the README's example replaced the whole ECG pipeline (no beats, no HR)."""
    import re

    from telediag.engine.config import default_config, load_config

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "README has no TOML example"
    for i, block in enumerate(blocks):
        cfg_path = tmp_path / f"readme{i}.toml"
        cfg_path.write_text(block)
        cfg = load_config(cfg_path)
        for kind, stages in default_config().pipelines.items():
            kept = [s.name for s in cfg.pipelines[kind]]
            missing = [s.name for s in stages if s.name not in kept]
            assert not missing, f"README TOML block {i} drops the built-in {kind} stage(s) {missing}"


# ---------------------------------------------------------------- packaging metadata
def test_pyproject_license_is_an_spdx_string() -> None:
    """setuptools warned that ``project.license`` as a table is deprecated (PEP 639)."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert doc["project"]["license"] == "MIT"
    req = [r for r in doc["build-system"]["requires"] if r.startswith("setuptools")]
    assert req == ["setuptools>=77"]  # the first setuptools that reads a license string (PEP 639)


# ---------------------------------------------------------------- tail exits when the engine stops
def test_tail_exits_when_the_engine_stops() -> None:
    """``telediag tail`` kept printing "(no messages)" forever after the engine stopped."""
    from telediag.engine.config import parse_config
    from telediag.engine.runtime import Engine

    pub = f"tcp://127.0.0.1:{_closed_port()}"
    eng = Engine(parse_config({"engine": {"ingest": f"tcp://127.0.0.1:{_closed_port()}", "publish": pub,
                                          "stats_interval_s": 0.2}}), drain_idle_s=0.1)
    eng.start()
    tail = subprocess.Popen(_cli("tail", pub, "--period", "0.5", "--idle-timeout", "0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert tail.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "stats/engine" not in tail.stdout.readline():
            pass  # tail is up and sees the engine
        eng.stop()
        eng.join(30)
        out, err = tail.communicate(timeout=30)  # before: never returned
        assert tail.returncode == 0
        assert "went away" in err
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()


def test_tail_without_an_engine_gives_up_after_its_idle_timeout() -> None:
    r = subprocess.run(_cli("tail", f"tcp://127.0.0.1:{_closed_port()}", "--idle-timeout", "1.5"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no engine reached" in r.stderr


# ---------------------------------------------------------------- telediag demo
def test_demo_help_is_current_and_has_a_viewer_port(capsys) -> None:
    """``telediag demo --help`` said "modalities not built yet" and had no viewer-port option."""
    from telediag.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "not built yet" not in out
    for needle in ("--viewer-port", "5565", "5566", "8080", "endoscopy", "heart sounds"):
        assert needle in out, needle


@pytest.mark.parametrize("which", ["--ingest", "--publish"])
def test_demo_bind_error_is_one_clear_line(which: str, capsys) -> None:
    """A taken demo port printed its error twice (the address repeated, no hint)."""
    import zmq

    from telediag.cli import main

    ctx = zmq.Context()
    squat = ctx.socket(zmq.PULL)
    port = squat.bind_to_random_port("tcp://127.0.0.1")
    addr = f"tcp://127.0.0.1:{port}"
    other = f"tcp://127.0.0.1:{_closed_port()}"
    args = {"--ingest": other, "--publish": other, which: addr}
    try:
        rc = main(["demo", "--duration", "1", "--no-viewer", "--record-dir", "",
                   "--ingest", args["--ingest"], "--publish", args["--publish"]])
    finally:
        squat.close(0)
        ctx.term()
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].count(addr) == 1 and "already in use" in lines[0] and which in lines[0]


# ---------------------------------------------------------------- documented paths and examples
def test_data_paths_in_docs_and_help_exist(shared_data: Path) -> None:
    """API.md's example read ``mitdb/100``, a record that is not in the data."""
    import re

    files = [ROOT / "README.md", ROOT / "api" / "API.md", ROOT / "core" / "cli.py",
             *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "transports").glob("*.md"))]
    missing = []
    for f in files:
        for m in re.finditer(r"\.\./shared/data/([\w.-]+(?:/[\w.-]+)*)", f.read_text(encoding="utf-8")):
            rel = m.group(1).rstrip(".")
            p = shared_data / rel
            if not (p.exists() or p.with_suffix(".hea").exists() or any(p.parent.glob(p.name + ".*"))):
                missing.append(f"{f.relative_to(ROOT)}: ../shared/data/{rel}")
    assert not missing, missing


def test_api_md_python_example_runs_verbatim(shared_data: Path) -> None:
    """The first Python example of API.md, with only the data folder and server address substituted."""
    import contextlib
    import io
    import re

    from telediag.api import ApiServer, ModelRegistry, Service

    text = (ROOT / "api" / "API.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    svc = Service(ModelRegistry(roots=[]), workers=1)
    srv = ApiServer(svc, f"tcp://127.0.0.1:{_closed_port()}").start()
    try:
        code = code.replace("../shared/data", str(shared_data)).replace("tcp://127.0.0.1:5557", srv.addr)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "API.md", "exec"), {})  # noqa: S102 - our own documentation
        assert out.getvalue().strip()
    finally:
        srv.stop()
        svc.close()


# ---------------------------------------------------------------- the README's command table
def test_readme_command_table_lists_every_command() -> None:
    """The README's table lacked ``source video``, ``analyze image|video`` and the demo's ports."""
    import argparse

    from telediag.cli import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = "\n".join(ln for ln in readme.splitlines() if ln.startswith("|"))

    def leaves(p: argparse.ArgumentParser, prefix: list[str]) -> list[str]:
        out: list[str] = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    sub = [x for x in sp._actions if isinstance(x, argparse._SubParsersAction)]
                    out += leaves(sp, [*prefix, name]) if sub and name != "keys" else [" ".join([*prefix, name])]
        return out

    missing = [c for c in leaves(build_parser(), []) if f"telediag {c}" not in table]
    assert not missing, f"commands missing from README's table: {missing}"
    for port in ("5565", "5566", "8080"):
        assert port in table


def test_video_source_without_an_engine_fails_instead_of_reporting_success() -> None:
    clip = ROOT / "demo" / "data" / "endoscopy_synth.mp4"
    port = _closed_port()
    r = subprocess.run(_cli("source", "video", "--input", str(clip), "--frames", "5", "--speed", "10",
                            "--connect", f"127.0.0.1:{port}"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"no engine reached at tcp://127.0.0.1:{port}" in r.stderr


def test_stethoscope_capture_says_whether_an_engine_was_reached() -> None:
    """The live capture path (a stand-in PyAudio device): reached=False without an engine."""
    import numpy as np
    from test_audio_source import FakeAudio, Puller

    from telediag.sources.audio import AudioCapture

    rate, fpb = 4000, 200
    puller = Puller()
    try:
        for addr, want in ((f"tcp://127.0.0.1:{_closed_port()}", False), (puller.addr, True)):
            fake = FakeAudio(np.zeros(rate, dtype="<i2"), rate, speed=50.0)
            cap = AudioCapture("stetho", addr, "s/pcg", rate_hz=rate, frames_per_buffer=fpb,
                               duration_s=4 * fpb / rate, pyaudio_module=fake, log=lambda s: None)
            assert cap.run().reached is want
    finally:
        chunks = puller.finish(0.3)
    assert len(chunks) == 4


def test_replay_waits_for_an_engine_that_binds_late() -> None:
    """An engine still starting (cold cache) when the replay has queued everything gets it all."""
    import threading

    import numpy as np
    import zmq

    from telediag.sources.readers import Recording
    from telediag.sources.replay import replay
    from telediag.transports.wire import decode

    rec = Recording(np.zeros((500, 1)), 100.0, ("I",), ("mV",), "z")
    port = _closed_port()
    out: list = []
    t = threading.Thread(target=lambda: out.append(replay(
        rec, kind="ecg", stream="z/ecg", connect=f"tcp://127.0.0.1:{port}", speed=float("inf"), linger_s=10,
        connect_timeout_s=8)))
    t.start()
    time.sleep(1.5)  # everything is queued by now; the "engine" binds only now
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    got = []
    try:
        while len(got) < 50 and pull.poll(5000):
            got.append(decode(pull.recv_multipart()).seq)
    finally:
        t.join(20)
        pull.close(0)
        ctx.term()
    assert out and out[0].reached is True
    assert got == list(range(50))
