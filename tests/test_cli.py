"""The ``telediag`` CLI: help everywhere, config check, status and tail against a live engine."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from telediag.cli import build_parser, main
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.transports.wire import Chunk, encode


def _subcommands(parser):  # noqa: ANN001, ANN202
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [name]
                for rest in _subcommands(sub):
                    yield [name, *rest]


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = list(_subcommands(build_parser()))
    assert ["run"] in paths and ["source", "ecg"] in paths and ["tail"] in paths and ["status"] in paths
    for path in paths:
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        assert e.value.code == 0
        assert "usage: telediag" in capsys.readouterr().out


def test_run_check_prints_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--check"]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "tcp://127.0.0.1:5555" in out


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nworkers = -1\n")
    assert main(["run", "--config", str(bad), "--check"]) == 2
    assert "telediag: error:" in capsys.readouterr().err
    assert main(["source", "ecg", "--wfdb", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_status_and_tail_read_a_live_engine() -> None:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.2))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    try:
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.connect(eng.ingest_endpoint)

        done = threading.Event()

        def feed() -> None:
            for seq in range(100_000):
                if done.is_set():
                    break
                c = Chunk.signal("ecg", "cli/ecg", seq, time.time_ns(), np.zeros((36, 1)), 360.0, ("I",), ("mV",))
                p.send_multipart(encode(c))
                time.sleep(0.05)

        t = threading.Thread(target=feed)
        t.start()
        tail = subprocess.run([sys.executable, "-m", "telediag", "tail", eng.publish_endpoint, "ecg/",
                               "--duration", "6", "--period", "0.5"], capture_output=True, text=True, timeout=90)
        status = subprocess.run([sys.executable, "-m", "telediag", "status", eng.publish_endpoint],
                                capture_output=True, text=True, timeout=90)
        done.set()
        t.join()
        p.close()
        ctx.term()
    finally:
        eng.stop()
        eng.join(10)
    assert tail.returncode == 0, tail.stderr
    assert "ecg/cli/ecg/filtered" in tail.stdout and "msg/s" in tail.stdout
    assert status.returncode == 0, status.stderr
    assert "cli/ecg" in status.stdout and "latency p50" in status.stdout
