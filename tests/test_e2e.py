"""End to end: engine and source agent as real processes over TCP loopback.

A real MIT-BIH record is replayed at max speed while malformed messages are thrown
at the ingest socket; every sample must arrive filtered, in order, with no gap, equal
to one-pass SciPy filtering, and every malformed message must be rejected, counted
and reported without losing a valid sample.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from scipy.signal import sosfilt, sosfilt_zi

from telediag.client import Subscriber
from telediag.dsp.design import ecg_bandpass
from telediag.sources.readers import read_wfdb
from telediag.transports.wire import Chunk, encode

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _bad_messages() -> list[list[bytes]]:
    good = [bytes(f) for f in encode(Chunk.signal("ecg", "evil/ecg", 0, 0, np.zeros((36, 2), "<f4"), 360.0,
                                                   ("a", "b"), ("mV", "mV")))]
    header = msgpack.unpackb(good[1])
    wrong_version = msgpack.packb({**header, "v": 9})
    unknown_kind = msgpack.packb({**header, "kind": "eeg"})
    return [
        good[:1],                                   # truncated: topic only
        good[:2],                                   # truncated: no payload frame
        [good[0], good[1], good[2][:-4]],           # payload size != shape x dtype
        [good[0], b"\x93garbage\xc1", good[2]],     # garbage header
        [good[0], b"\x80" + b"x" * 10000, good[2]], # oversized header
        [good[0], wrong_version, good[2]],          # unknown version
        [b"eeg/evil/ecg", unknown_kind, good[2]],   # unknown kind
        [b"\xff\xfe", good[1], good[2]],            # non-UTF-8 topic
    ]


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "telediag", *args]


def test_record_streams_losslessly_through_real_processes(tmp_path: Path, mitdb: Path) -> None:
    ingest = f"tcp://127.0.0.1:{free_port()}"
    publish = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "engine.toml"
    cfg.write_text(f'[engine]\ningest = "{ingest}"\npublish = "{publish}"\nstats_interval_s = 0.2\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    engine = subprocess.Popen(_cli("run", "--config", str(cfg)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env)
    record = mitdb / "101"
    try:
        sub = Subscriber(publish, topics=["ecg/", "event/", "stats/"])
        assert sub.wait_connected(30), "engine did not come up"

        bad = _bad_messages()
        ctx = zmq.Context()
        evil = ctx.socket(zmq.PUSH)
        evil.setsockopt(zmq.LINGER, 2000)
        evil.connect(ingest)
        source = subprocess.Popen(
            _cli("source", "ecg", "--wfdb", str(record), "--speed", "max", "--chunk-ms", "100",
                 "--connect", ingest, "--stream", "bed-1/ecg"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )

        def inject() -> None:  # malformed messages interleaved with the live stream
            for frames in bad:
                time.sleep(0.05)
                evil.send_multipart(frames)

        injector = threading.Thread(target=inject)
        injector.start()

        chunks: list[Chunk] = []
        events: list[dict] = []
        stats: list[dict] = []
        deadline = time.monotonic() + 120
        quiet_since = None
        while time.monotonic() < deadline:
            c = sub.recv(timeout_s=0.1)
            if c is not None and c.kind == "ecg":
                chunks.append(c)
                quiet_since = None
                continue
            if c is not None and c.kind == "event":
                events.append(c.body)
            elif c is not None and c.kind == "stats":
                stats.append(c.body)
            if source.poll() is not None and not injector.is_alive():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.5:
                    break
        injector.join()
        out, _ = source.communicate(timeout=30)
        assert source.returncode == 0, out
        evil.close()
        ctx.term()
        # one more stats round after the end of the stream
        t_end = time.monotonic() + 2
        while time.monotonic() < t_end:
            c = sub.recv(timeout_s=0.1)
            if c is not None and c.kind == "stats":
                stats.append(c.body)
            elif c is not None and c.kind == "event":
                events.append(c.body)
        sub.close()
    finally:
        engine.send_signal(signal.SIGTERM)
        try:
            log, _ = engine.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            engine.kill()
            log, _ = engine.communicate()
    assert engine.returncode == 0, log
    assert "drained and stopped" in log

    # every sample, filtered, in order, no gap
    rec = read_wfdb(record)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert {c.stream for c in chunks} == {"bed-1/ecg/filtered"}
    y = np.concatenate([c.data for c in chunks])
    x = rec.signal.astype(np.float32).astype(np.float64)  # what went on the wire
    assert y.shape == x.shape
    sos = ecg_bandpass(rec.fs, 0.5, 40.0, 4)
    ref, _ = sosfilt(sos, x, axis=0, zi=sosfilt_zi(sos)[:, :, None] * x[0][None, None, :])
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)

    # every malformed message rejected, counted and reported; the valid stream had no gap
    final = stats[-1]
    assert sum(final["rejects"].values()) == len(bad), final["rejects"]
    assert {"frame_count", "size_mismatch", "header_malformed", "header_too_large", "bad_version",
            "unknown_kind", "topic"} <= set(final["rejects"])
    rejected_events = [e for e in events if e["type"] == "rejected"]
    assert len(rejected_events) == len(bad)
    s = final["streams"]["bed-1/ecg"]
    assert s["samples_in"] == x.shape[0] and s["gaps"] == 0 and s["errors"] == 0
    assert s["latency_ms"]["count"] == len(chunks)
