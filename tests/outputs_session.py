"""A short engine session that makes the engine publish every kind of output it has.

Used by ``tests/test_outputs_schema.py`` (every published body against its JSON Schema in
``transports/schemas``) and runnable by hand to look at the traffic::

    .venv/bin/python tests/outputs_session.py /tmp/capture.json

One in-process :class:`~telediag.engine.runtime.Engine` (default pipelines), fed over TCP
loopback with: 40 s of MIT-BIH record 101 (two chunks dropped at seq 10-11 for a gap, then one
duplicate), a flat stretch for quality events, 12 s of a PhysioNet 2016 heart-sound recording,
20 synthetic endoscopy frames (H.264), malformed messages, a chunk whose channels changed
(``spec_changed``), an annotation kind sent to ingest (``hr``: not ingestible), a source
restart (new ``meta.session``), and 30 s of MIT-BIH 201 (atrial fibrillation: an ``afib``
alarm; one implausible 1e4 mV sample) followed by a 61 s chunk (``chunk_too_long``) and 12 s of
NaN (leads off), left open so that the engine's stop ends its alarms and quality events
(``stream_closed``). Everything published is collected.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ECG_STREAM = "room-1/ecg"
PCG_STREAM = "room-1/pcg"
VIDEO_STREAM = "room-1/endo"
RESTART_STREAM = "room-2/ecg"
INT_STREAM = "room-4/ecg"  # int16 ADC units with meta.gain / meta.baseline (PROTOCOL.md 6.1)
INT_GAIN = (200.0, 100.0)
INT_BASELINE = (1024, -7)
CLOSE_STREAM = "room-5/ecg"  # AF, then a chunk too long, then leads off; still on at engine stop
CLOSE_RECORD = "201"
CLOSE_AF_S = 30  # seconds of the record sent before the long chunk
CLOSE_LONG_SEQ = CLOSE_AF_S  # the seq of the 61 s chunk (rejected: chunk_too_long)
CLOSE_GLITCH = (5, 100)  # (seq, row) of the 1e4 mV sample on lead 0 (NaN in ecg/<s>/filtered)
ECG_CHUNK = 360  # 1 s at 360 Hz
GAP_SEQS = (10, 11)  # ECG chunks never sent: a 2-chunk gap
PCG_GAP_SEQS = (60, 61)  # PCG chunks (0.1 s each) never sent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Session:
    """What one session sent and what the engine published."""

    messages: list[tuple[str, dict[str, Any], Any]] = field(default_factory=list)  # topic, header, body
    raw: list[list[bytes]] = field(default_factory=list)  # the frames as received, same order
    int_adu: np.ndarray | None = None  # what INT_STREAM sent (int16 ADC units)
    ecg_signal: np.ndarray | None = None  # the full source signal of ECG_STREAM (all chunks, sent or not)
    ecg_fs: float = 360.0
    pcg_fs: float = 2000.0
    t0_ns: int = 0


def _header(frames: list[zmq.Frame]) -> dict[str, Any]:
    import msgpack

    return dict(msgpack.unpackb(frames[1].bytes, raw=False))


def run_session(data_dir: Path, *, ecg_seconds: int = 40, pcg_seconds: int = 12) -> Session:
    from telediag.engine.config import load_config, parse_config
    from telediag.engine.runtime import Engine
    from telediag.sources.readers import read_pcg, read_wfdb
    from telediag.sources.synth_endoscopy import EndoscopySynth
    from telediag.transports.video_codec import H264Encoder
    from telediag.transports.wire import Chunk, VideoSpec, decode, encode

    ingest = f"tcp://127.0.0.1:{free_port()}"
    publish = f"tcp://127.0.0.1:{free_port()}"
    cfg = parse_config({"engine": {"ingest": ingest, "publish": publish, "stats_interval_s": 0.25}},
                       base=load_config())
    eng = Engine(cfg, drain_idle_s=0.5)
    eng.start()
    ses = Session()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(eng.publish_endpoint)
    received: list[list[bytes]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set() or sub.poll(300):
            if sub.poll(100):
                received.append([bytes(f) for f in sub.recv_multipart()])

    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(ingest)
    th = threading.Thread(target=reader, daemon=True)
    try:
        # wait for the subscription to reach the engine (stats arrive every 0.25 s)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not sub.poll(100):
            pass
        th.start()
        t0 = 1_700_000_000_000_000_000
        ses.t0_ns = t0

        def send(c: Chunk) -> None:
            push.send_multipart(encode(c))

        # ---- ECG: a real record, a 2-chunk gap, a duplicate, a flat stretch (quality events)
        rec = read_wfdb(data_dir / "mitdb" / "101")
        fs = rec.fs
        x = rec.signal[: int(ecg_seconds * fs)].astype(np.float32).copy()
        x[int(30 * fs): int(36 * fs)] = 0.0  # exactly constant: flat line / leads off
        ses.ecg_signal, ses.ecg_fs = x, fs
        n_chunks = x.shape[0] // ECG_CHUNK
        for seq in range(n_chunks):
            if seq in GAP_SEQS:
                continue
            blk = x[seq * ECG_CHUNK:(seq + 1) * ECG_CHUNK]
            c = Chunk.signal("ecg", ECG_STREAM, seq, t0 + int(round(seq * ECG_CHUNK * 1e9 / fs)), blk, fs,
                             list(rec.channels), list(rec.units), meta={"session": "s1", "sent_ns": time.time_ns()})
            send(c)
            if seq == 20:
                send(c)  # duplicate: out_of_order
        # spec_changed: same stream, other channels
        send(Chunk.signal("ecg", ECG_STREAM, n_chunks, t0 + int(n_chunks * ECG_CHUNK * 1e9 / fs),
                          x[:ECG_CHUNK, :1], fs, ["II"], ["mV"], meta={"session": "s1"}))

        # ---- a source restart: a new meta.session on an open stream
        for session, seqs in (("a", range(3)), ("b", range(2))):
            for seq in seqs:
                send(Chunk.signal("ecg", RESTART_STREAM, seq, t0 + seq * 10**9, x[seq * ECG_CHUNK:(seq + 1) * ECG_CHUNK],
                                  fs, list(rec.channels), list(rec.units), meta={"session": session}))

        # ---- integer ECG with gain/baseline: the engine works in physical units; then a bad gain
        adu = np.round(x[: 12 * ECG_CHUNK] * np.array(INT_GAIN) + np.array(INT_BASELINE)).astype("<i2")
        for seq in range(12):
            send(Chunk.signal("ecg", INT_STREAM, seq, t0 + int(round(seq * ECG_CHUNK * 1e9 / fs)),
                              adu[seq * ECG_CHUNK:(seq + 1) * ECG_CHUNK], fs, list(rec.channels), list(rec.units),
                              meta={"session": "i1", "gain": list(INT_GAIN), "baseline": list(INT_BASELINE)}))
        send(Chunk.signal("ecg", INT_STREAM, 12, t0 + int(round(12 * ECG_CHUNK * 1e9 / fs)), adu[:ECG_CHUNK], fs,
                          list(rec.channels), list(rec.units), meta={"session": "i1", "gain": [0.0, 1.0]}))
        ses.int_adu = adu

        # ---- AF, one implausible sample, a chunk too long (rejected, then a gap), leads off left on
        af = read_wfdb(data_dir / "mitdb" / CLOSE_RECORD)
        y = af.signal[: CLOSE_AF_S * ECG_CHUNK].astype(np.float32).copy()
        y[CLOSE_GLITCH[0] * ECG_CHUNK + CLOSE_GLITCH[1], 0] = 1e4
        long = np.resize(y, (61 * ECG_CHUNK, y.shape[1]))
        nan = np.full((ECG_CHUNK, y.shape[1]), np.nan, np.float32)
        for seq in range(CLOSE_LONG_SEQ + 13):
            blk = (y[seq * ECG_CHUNK:(seq + 1) * ECG_CHUNK] if seq < CLOSE_LONG_SEQ else
                   long if seq == CLOSE_LONG_SEQ else nan)
            t_s = seq if seq <= CLOSE_LONG_SEQ else seq + 60  # the long chunk lasts 61 s
            send(Chunk.signal("ecg", CLOSE_STREAM, seq, t0 + t_s * 10**9, blk, af.fs, list(af.channels),
                              list(af.units), meta={"session": "c1"}))

        # ---- PCG
        audio, pfs = read_pcg(data_dir / "pcg2016" / "training-a" / "a0001.wav")
        audio = audio[: pcg_seconds * pfs].astype(np.float32)
        ses.pcg_fs = float(pfs)
        step = pfs // 10
        for seq in range(audio.size // step):
            if seq in PCG_GAP_SEQS:
                continue
            send(Chunk.signal("pcg", PCG_STREAM, seq, t0 + int(seq * step * 1e9 / pfs),
                              audio[seq * step:(seq + 1) * step, None], float(pfs), ["PCG"], [""],
                              meta={"session": "p1"}))

        # ---- video: synthetic endoscopy, H.264
        w, h, fps = 160, 128, 10.0
        synth = EndoscopySynth(w, h, fps, seed=3)
        enc = H264Encoder(w, h, fps, keyint=10, threads=1)
        vseq = 0
        for i in range(20):
            for p in enc.encode(synth.frame(i)[0]):
                send(Chunk.video_packet(VIDEO_STREAM, vseq, time.time_ns(), p.data,
                                        VideoSpec("h264", w, h, "yuv420p", fps, p.keyframe),
                                        meta={"session": "v1", "sent_ns": time.time_ns()}))
                vseq += 1
                time.sleep(1 / fps / 2)

        # ---- malformed messages and a kind that is not ingestible
        good = [bytes(f) for f in encode(Chunk.signal("ecg", "evil/ecg", 0, 0, np.zeros((36, 1), "<f4"), 360.0,
                                                       ["I"], ["mV"]))]
        push.send_multipart([good[0], good[1], good[2][:-4]])  # size_mismatch
        push.send_multipart([good[0], b"\x93garbage\xc1", good[2]])  # header_malformed
        push.send_multipart(good[:2])  # frame_count
        send(Chunk.record("hr", "evil/hr", 0, t0, {"readings": []}))  # not ingestible

        time.sleep(1.0)
    finally:
        push.close()
        eng.stop()
        try:
            eng.join(60)
        finally:
            done.set()
            if th.is_alive():
                th.join(10)
            sub.close(0)
            ctx.term()
    ses.raw = received
    for frames in received:
        c = decode(frames)
        ses.messages.append((c.topic, _header([zmq.Frame(f) for f in frames]),
                             c.body if c.body is not None else None))
    return ses


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/telediag-capture.json")
    root = Path(__file__).resolve().parents[1]
    from os import environ

    data = Path(environ.get("TELEDIAG_DATA", root.parent / "shared" / "data"))
    ses = run_session(data)
    docs = [{"topic": t, "header": h, "body": b} for t, h, b in ses.messages]
    out.write_text(json.dumps(docs, default=lambda o: o.hex() if isinstance(o, bytes) else str(o), indent=1))
    kinds: dict[str, int] = {}
    for t, _, b in ses.messages:
        key = t.split("/")[0] + (f":{b.get('type')}" if isinstance(b, dict) and "type" in b else "")
        kinds[key] = kinds.get(key, 0) + 1
    print(json.dumps(kinds, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
