"""Fault: the engine is killed and restarted mid-stream.

The source agent keeps running and resumes by itself (PUSH reconnects and blocks
while no engine is there); the subscriber reconnects by itself; and from ``src_seq``
on the published chunks the subscriber knows exactly which source ranges it never saw.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from telediag.client import Subscriber

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "telediag", *args]


def test_engine_killed_and_restarted_mid_stream(tmp_path: Path, mitdb: Path) -> None:
    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cfg = tmp_path / "engine.toml"
    cfg.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 0.2\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start_engine() -> subprocess.Popen[str]:
        return subprocess.Popen(_cli("run", "--config", str(cfg)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)

    engine = start_engine()
    sub = Subscriber(publish, topics=["ecg/", "event/", "stats/"])
    source = None
    try:
        assert sub.wait_connected(60), "engine did not come up"
        seconds, speed = 40.0, 8.0  # 400 chunks of 100 ms over ~5 s
        source = subprocess.Popen(
            _cli("source", "ecg", "--wfdb", str(mitdb / "100" if (mitdb / "100.hea").exists() else mitdb / "101"),
                 "--seconds", str(seconds), "--speed", str(speed), "--connect", ingest, "--stream", "bed-9/ecg"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        src_seqs: list[int] = []
        opened: list[dict] = []
        killed_at = restarted_at = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            c = sub.recv(timeout_s=0.05)
            if c is not None and c.kind == "ecg":
                src_seqs.append(int(c.meta["src_seq"]))
            elif c is not None and c.kind == "event" and c.body.get("type") == "stream_opened":
                opened.append(c.body)
            if killed_at is None and len(src_seqs) >= 80:
                engine.send_signal(signal.SIGKILL)  # no drain, no goodbye
                engine.wait(10)
                killed_at = len(src_seqs)
                time.sleep(0.5)
                engine = start_engine()
                restarted_at = time.monotonic()
            if source.poll() is not None and restarted_at and src_seqs and src_seqs[-1] == 399:
                break
        out, _ = source.communicate(timeout=60)
        assert source.returncode == 0, out
    finally:
        sub.close()
        if source is not None and source.poll() is None:
            source.kill()
        engine.send_signal(signal.SIGTERM)
        try:
            engine.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            engine.kill()
    assert killed_at is not None
    n = int(seconds * 10)
    # in order, each source chunk at most once, through to the very last one after the restart
    assert src_seqs == sorted(set(src_seqs)) and src_seqs[-1] == n - 1
    received = set(src_seqs)
    lost = [s for s in range(n) if s not in received]
    # what was lost is one contiguous range around the kill; the subscriber can name it exactly
    if lost:
        assert lost == list(range(lost[0], lost[-1] + 1))
        assert lost[0] >= killed_at - 1
    # the restarted engine announced where it picked the stream up
    assert len(opened) >= 1 and opened[-1]["first_seq"] in received
    assert opened[-1]["first_seq"] == min(s for s in src_seqs if s > (lost[-1] if lost else killed_at - 1))
