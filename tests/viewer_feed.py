"""A synthetic, real-time publisher of what the engine publishes, for viewer tests and benchmarks.

It binds a PUB socket that the viewer's bridge subscribes to and sends, per patient
``bed-<i>``: a 2-lead ECG (250 Hz, 100 ms chunks) with its ``beats`` records (class pattern
N N N V N S N F N Q..., one beat in 17 flagged ``usable: false``), and optionally heart
sounds (2 kHz, 50 ms chunks, sent when complete as a capture would) with a known tone burst
at a chosen source time. Timestamps are wall-clock ``time.time_ns()`` of the first sample,
so a page can measure source-to-play delay. Only loopback addresses are used.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any

import numpy as np
import zmq

from telediag.transports.wire import Chunk, VideoSpec, encode

ECG_FS = 250.0
PCG_FS = 2000.0
LABELS = "NNNVNSNNFNNNQNNSN"


def ecg_wave(t_s: np.ndarray, rr_s: float = 0.8) -> np.ndarray:
    """A simple ECG-like wave (mV): P, QRS, T per beat, beats every ``rr_s`` seconds."""
    ph = np.mod(t_s, rr_s)
    p = 0.12 * np.exp(-((ph - 0.10) / 0.025) ** 2)
    qrs = 1.2 * np.exp(-((ph - 0.25) / 0.010) ** 2) - 0.25 * np.exp(-((ph - 0.275) / 0.012) ** 2)
    tw = 0.3 * np.exp(-((ph - 0.48) / 0.05) ** 2)
    return p + qrs + tw


def pcg_wave(t_s: np.ndarray, rr_s: float = 0.8, rng: np.random.Generator | None = None) -> np.ndarray:
    """Heart-sound-like audio: S1 (60 Hz) and S2 (90 Hz) bursts per beat plus faint noise."""
    ph = np.mod(t_s, rr_s)
    s1 = 0.2 * np.exp(-((ph - 0.26) / 0.02) ** 2) * np.sin(2 * np.pi * 60 * t_s)
    s2 = 0.15 * np.exp(-((ph - 0.56) / 0.015) ** 2) * np.sin(2 * np.pi * 90 * t_s)
    noise = (rng or np.random.default_rng(0)).normal(0, 0.001, t_s.shape)
    return s1 + s2 + noise


@dataclasses.dataclass
class Feed:
    """Publish synthetic patients in real time on ``endpoint`` (a thread per signal kind)."""

    endpoint: str
    patients: int = 2
    pcg_patients: tuple[int, ...] = (2,)
    video: bool = True
    burst_at_ns: int | None = None       # source time of a tone burst in every PCG stream
    burst_hz: float = 150.0
    burst_s: float = 0.3
    quiet_pcg: bool = False               # only faint noise (and the burst)
    sent: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.bind(self.endpoint)
        self.lock = threading.Lock()
        self.seq: dict[str, int] = {}
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.t_start = time.time_ns()

    def send(self, chunk: Chunk) -> None:
        s = self.seq.get(chunk.topic, 0)
        self.seq[chunk.topic] = s + 1
        with self.lock:
            self.pub.send_multipart(encode(dataclasses.replace(chunk, seq=s)))
        self.sent[chunk.kind] = self.sent.get(chunk.kind, 0) + 1

    def start(self) -> Feed:
        self.threads = [threading.Thread(target=self._ecg, daemon=True, name="feed-ecg")]
        if self.pcg_patients:
            self.threads.append(threading.Thread(target=self._pcg, daemon=True, name="feed-pcg"))
        if self.video:
            self.threads.append(threading.Thread(target=self._video, daemon=True, name="feed-video"))
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)
        self.pub.close(0)
        self.ctx.term()

    # -- ECG + beats ---------------------------------------------------------------------
    def ecg_history(self, patient: str, seconds: float, chunk_s: float = 1.0) -> None:
        """Send ``seconds`` of past ECG and beats at once (ending now): fills a review buffer."""
        n = int(ECG_FS * chunk_s)
        t_end = time.time_ns()
        t0 = t_end - int(seconds * 1e9)
        k = 0
        for i in range(int(seconds / chunk_s)):
            c0 = t0 + int(i * chunk_s * 1e9)
            self._ecg_chunk(patient, c0, n, k)
            k += n

    def _ecg_chunk(self, patient: str, c0: int, n: int, k0: int) -> None:
        t = (np.arange(n) + k0) / ECG_FS
        x = ecg_wave(t)
        data = np.stack([x, 0.6 * x], axis=1).astype(np.float32)
        self.send(Chunk.signal("ecg", f"{patient}/ecg/filtered", 0, c0, data, ECG_FS, ["II", "V1"], ["mV", "mV"]))
        beats = []
        for j in range(int(math.floor(t[0] / 0.8)), int(math.floor(t[-1] / 0.8)) + 1):
            tb = j * 0.8 + 0.25
            if t[0] <= tb <= t[-1]:
                b: dict[str, Any] = {"t_ns": c0 + int((tb - t[0]) * 1e9), "sample": int(round(tb * ECG_FS)),
                                     "label": LABELS[j % len(LABELS)]}
                if j % 17 == 11:
                    b["usable"] = False
                beats.append(b)
        if beats:
            self.send(Chunk.record("beats", f"{patient}/ecg", 0, beats[0]["t_ns"], {"beats": beats, "fs": ECG_FS}))
            self.send(Chunk.record("hr", f"{patient}/ecg", 0, beats[-1]["t_ns"], {"readings": [{"hr_bpm": 75.0}]}))

    def _ecg(self) -> None:
        n = int(ECG_FS * 0.1)
        k = 0
        t0 = time.time_ns()
        while not self.stop_event.is_set():
            c0 = t0 + int(k / ECG_FS * 1e9)
            wait = (c0 + 100_000_000 - time.time_ns()) / 1e9
            if wait > 0 and self.stop_event.wait(wait):
                return
            for i in range(1, self.patients + 1):
                self._ecg_chunk(f"bed-{i}", c0, n, k)
            k += n

    # -- heart sounds ------------------------------------------------------------------------
    def _pcg(self) -> None:
        n = int(PCG_FS * 0.05)
        k = 0
        t0 = time.time_ns()
        rng = np.random.default_rng(1)
        while not self.stop_event.is_set():
            c0 = t0 + int(k / PCG_FS * 1e9)
            wait = (c0 + 50_000_000 - time.time_ns()) / 1e9   # sent when its last sample exists
            if wait > 0 and self.stop_event.wait(wait):
                return
            t_ns = c0 + (np.arange(n) * 1e9 / PCG_FS).astype(np.int64)
            x = rng.normal(0, 0.001, n) if self.quiet_pcg else pcg_wave((np.arange(n) + k) / PCG_FS, rng=rng)
            if self.burst_at_ns is not None:
                rel = (t_ns - self.burst_at_ns) / 1e9
                on = (rel >= 0) & (rel < self.burst_s)
                x = x + on * np.sin(2 * np.pi * self.burst_hz * rel)
            for i in self.pcg_patients:
                self.send(Chunk.signal("pcg", f"bed-{i}/pcg", 0, c0, x.astype(np.float32), PCG_FS, ["pcg"], ["au"]))
            k += n

    # -- endoscopy: the engine's overlay stream + polyp bodies as the engine writes them --------
    def _video(self) -> None:
        from telediag.engine.stages.video import polyp_body

        w, h = 160, 120
        yy, xx = np.mgrid[:h, :w]

        class Result:
            polyp_probability = 0.99
            mask = (yy - 60) ** 2 + (xx - 80) ** 2 < 30**2
            boxes = [[50, 30, 110, 90, 0.99]]

        body = polyp_body(Result(), w, h)
        i = 0
        while not self.stop_event.wait(0.1):
            img = np.zeros((h, w, 3), np.uint8)
            img[...] = (120, 40, 40)
            img[Result.mask] = (220, 140, 150)
            img[:, (i * 4) % w] = 255
            t = time.time_ns()
            self.send(Chunk(kind="video", stream="room-3/endo/annotated", seq=0, t0_ns=t, data=img,
                            video=VideoSpec("raw", w, h, "rgb24", 10.0, keyframe=True), meta={}))
            self.send(Chunk.record("polyp", "room-3/endo", 0, t, {**body, "t0_ns": t}))
            i += 1


def main(argv: list[str] | None = None) -> int:
    """``python tests/viewer_feed.py --endpoint tcp://127.0.0.1:PORT --patients 16 --pcg 1-16 --seconds 60``."""
    import argparse

    p = argparse.ArgumentParser(description="synthetic real-time publisher for viewer benchmarks (loopback)")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--patients", type=int, default=2)
    p.add_argument("--pcg", default="", help="patients with heart sounds: '1-16' or '2,5'")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args(argv)
    pcg: list[int] = []
    for part in filter(None, a.pcg.split(",")):
        lo, _, hi = part.partition("-")
        pcg += list(range(int(lo), int(hi or lo) + 1))
    feed = Feed(a.endpoint, patients=a.patients, pcg_patients=tuple(pcg), video=not a.no_video).start()
    try:
        time.sleep(a.seconds)
    finally:
        feed.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
