"""The video worker in its own OS process (issue 21 item 3, ``[engine] video_worker = "process"``).

Same outputs as the thread mode; ``kill -9`` of the video process mid-stream, with two ECG
streams running beside it, in both biosignal worker modes: the ECG streams lose nothing, a
replacement video process takes the stream over (``worker_restarted`` / ``stream_restarted``
events) and polyp records and annotated frames resume. Uses the test-only stand-in segmenter.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pytest
import zmq
from test_video_engine import Feed, collect, encoded, redrawn, stream_stats, subscribe, video_config
from test_video_fallback import FALLBACK_NAME

from telediag.client import Subscriber
from telediag.engine.runtime import Engine
from telediag.engine.video_proc import VideoProcess
from telediag.transports.outputs import check_body
from telediag.transports.wire import Chunk, encode


def proc_engine(worker_mode: str = "thread", model: str = FALLBACK_NAME, spares: int = 0) -> Engine:
    cfg = video_config(model)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, video_worker="process", worker_mode=worker_mode, spare_workers=spares))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    assert isinstance(eng.video_worker, VideoProcess)
    assert eng.video_worker.serving.wait(90)  # imports take seconds on a loaded machine
    return eng


def test_video_process_publishes_what_the_thread_worker_does() -> None:
    eng = proc_engine()
    try:
        sub = subscribe(eng)
        feed = Feed(eng)
        feed.send(encoded(45))
        out = collect(sub)
        feed.close()
        sub.close()
        pid = eng.video_worker.pid
    finally:
        eng.stop()
        eng.join(30)
    assert pid is not None and pid != os.getpid()
    st = stream_stats(out)
    assert st["chunks_in"] == 45 and st["errors"] == 0 and st["gaps"] == 0
    polyp = out["polyp"]
    assert len(polyp) - redrawn(out) + st["drops"] == 45 and len(polyp) >= 10
    for c in polyp:
        b = c.body
        assert b["t0_ns"] == feed.sent[b["seq"]] and b["model"] == FALLBACK_NAME
    assert len(out["annotated"]) == len(polyp)
    stats = [s for s in out["stats"] if "t/endo" in s["streams"]][-1]
    assert stats["worker"] == "video" and stats["pid"] == pid and stats["process_restarts"] == 0
    assert stats["forward_drops"] == 0
    assert eng.video_worker.last_stats["analysed_frames"] >= 10  # kept for the metrics exporter


def _ecg(stream: str, seq: int, x: np.ndarray) -> Chunk:
    return Chunk.signal("ecg", stream, seq, time.time_ns(), x, 360.0, ("I",), ("mV",), meta={"session": "v"})


@pytest.mark.parametrize("worker_mode", ["thread", "process"])
def test_kill_9_of_the_video_process_loses_no_ecg_and_video_resumes(worker_mode: str) -> None:
    eng = proc_engine(worker_mode, spares=1)  # a warm spare video process takes over
    ecg_streams = ["vp-1/ecg", "vp-2/ecg"]
    n_ecg = 60  # 100 ms chunks: 6 s
    try:
        deadline = time.monotonic() + 90
        while not eng.video_worker.spare_warm() and time.monotonic() < deadline:
            time.sleep(0.1)  # (a loaded machine: the spare's imports)
        assert eng.video_worker.spare_warm()
        sub = subscribe(eng, topics=("polyp/", "video/", "event/", "stats/engine/video"))
        ecg_sub = Subscriber(eng.publish_endpoint, topics=["ecg/"])
        assert ecg_sub.wait_connected(5)
        ecg_got: dict[str, list[int]] = {s: [] for s in ecg_streams}
        done = threading.Event()

        def listen() -> None:
            while not done.is_set():
                c = ecg_sub.recv(timeout_s=0.05)
                if c is not None and c.kind == "ecg":
                    ecg_got[c.stream.removesuffix("/filtered")].append(int(c.meta["src_seq"]))

        lt = threading.Thread(target=listen, daemon=True)
        lt.start()

        def send_ecg() -> None:
            ctx = zmq.Context()
            p = ctx.socket(zmq.PUSH)
            p.setsockopt(zmq.LINGER, 2000)
            p.connect(eng.ingest_endpoint)
            rng = np.random.default_rng(1)
            for k in range(n_ecg):
                for s in ecg_streams:
                    p.send_multipart(encode(_ecg(s, k, rng.standard_normal((36, 1)) * 0.01)))
                time.sleep(0.1)
            p.close()
            ctx.term()

        et = threading.Thread(target=send_ecg, daemon=True)
        et.start()
        feed = Feed(eng)
        pk = encoded(120)
        feed.send(pk[:45])  # 1.5 s: the video process starts and analyses
        pid = eng.video_worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        feed.send(pk[45:])  # 2.5 s more while a replacement starts
        out = collect(sub, quiet_s=1.5)
        et.join(30)
        time.sleep(0.5)
        done.set()
        lt.join(5)
        feed.close()
        sub.close()
        ecg_sub.close()
        new_pid = eng.video_worker.pid
    finally:
        eng.stop()
        eng.join(30)
    # ECG beside it: nothing lost, no gap
    for s in ecg_streams:
        assert ecg_got[s] == list(range(n_ecg)), s
    # the video process was replaced and said so
    assert new_pid is not None and new_pid != pid
    restarted = [e for e in out["events"] if e["type"] == "worker_restarted"]
    assert len(restarted) == 1 and restarted[0]["worker"] == "video" and restarted[0]["exitcode"] == -9
    for e in out["events"]:
        check_body("event", e)  # the published contract (OUTPUTS.md, event.schema.json)
    sr = [e for e in out["events"] if e["type"] == "stream_restarted"]
    assert len(sr) == 1 and sr[0]["reason"] == "worker_restarted" and 0 <= sr[0]["last_seq"] < 45
    # video resumed: fresh analyses and annotated frames from packets sent after the kill
    after = [c.body for c in out["polyp"] if c.body["seq"] >= 60 and not c.body["reused"]]
    assert len(after) >= 10
    assert max(c.body["seq"] for c in out["polyp"]) >= 110
    assert any(c.seq >= 60 for c in out["annotated"]) or len(out["annotated"]) > 0
    last = [s for s in out["stats"] if "t/endo" in s["streams"]][-1]
    assert last["process_restarts"] == 1 and last["pid"] == new_pid
    assert last["streams"]["t/endo"]["restarts"] == 1


def test_unknown_video_worker_mode_is_a_config_error() -> None:
    from telediag.engine.config import EngineSettings
    from telediag.errors import ConfigError

    with pytest.raises(ConfigError, match="video_worker must be 'thread' or 'process'"):
        EngineSettings(video_worker="fork")


