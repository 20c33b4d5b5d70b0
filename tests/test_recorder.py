"""The recorder: WFDB signal + beat annotations + JSON lines, across an engine restart."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import wfdb
import zmq

from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.recorder import Recorder
from telediag.sources.readers import read_wfdb
from telediag.sources.replay import chunks_of
from telediag.transports.wire import encode


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_recording_survives_engine_restart_and_replays(tmp_path: Path, mitdb: Path) -> None:
    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, ingest=ingest, publish=publish,
                                                              stats_interval_s=0.2))
    rec = read_wfdb(mitdb / "119")
    rec = dataclasses.replace(rec, signal=rec.signal[: int(60 * rec.fs)])
    t0 = time.time_ns()
    chunks = [c for _, c in chunks_of(rec, "ecg", "bed-3/ecg", chunk_ms=500, start_ns=t0, session="s")]
    half = len(chunks) // 2
    lost = range(half, half + 4)  # 2 s never reach the second engine

    out = tmp_path / "rec"
    recorder = Recorder(out)
    stop = threading.Event()
    received: list = []

    def record() -> None:
        with Subscriber(publish, topics=[""]) as sub:
            while not stop.is_set():
                c = sub.recv(timeout_s=0.1)
                if c is not None:
                    recorder.add(c)
                    received.append(c.topic)

    t = threading.Thread(target=record)
    t.start()

    def run_engine(parts: list) -> None:
        eng = Engine(cfg, drain_idle_s=0.3)
        eng.start()
        time.sleep(1.0)  # the recorder's SUB reconnects to the new engine
        ctx = zmq.Context()
        p = ctx.socket(zmq.PUSH)
        p.setsockopt(zmq.LINGER, 5000)
        p.connect(ingest)
        for c in parts:
            p.send_multipart(encode(c))
        p.close()
        ctx.term()
        time.sleep(1.0)
        eng.stop()
        eng.join(20)

    run_engine(chunks[:half])
    run_engine([c for i, c in enumerate(chunks) if i >= half and i not in lost])
    time.sleep(0.5)
    stop.set()
    t.join(10)
    recorder.close()

    name = "bed-3_ecg_filtered"
    r = wfdb.rdrecord(str(out / name))
    n = rec.signal.shape[0]
    assert r.p_signal.shape == (n, 2) and r.fs == rec.fs
    gap = slice(int(chunks[lost[0]].t0_ns - t0) * 360 // 10**9, int(chunks[lost[-1] + 1].t0_ns - t0) * 360 // 10**9)
    assert np.isnan(r.p_signal[gap]).all()
    assert np.isfinite(np.delete(r.p_signal, np.r_[gap], axis=0)).all()
    gaps = (out / f"{name}.gaps.jsonl").read_text().splitlines()
    assert len(gaps) == 1 and '"samples": 720' in gaps[0]
    # beats were recorded as WFDB annotations on the same timeline
    beats_file = out / f"{name}.beats"
    if beats_file.exists():  # present when the ECG analysis stage is in the pipeline
        ann = wfdb.rdann(str(out / name), "beats")
        ref = wfdb.rdann(str(mitdb / "119"), "atr", sampto=n)
        ref_beats = ref.sample[np.isin(ref.symbol, list("NLRBAaJSVrFejnE/fQ"))]
        near = np.abs(ann.sample[:, None] - ref_beats[None, :]).min(axis=1) <= 0.15 * 360
        assert near.mean() > 0.97
    # the recording replays through the source agent's reader
    back = read_wfdb(out / name)
    assert back.signal.shape == (n, 2) and back.channels == ("MLII", "V1")
