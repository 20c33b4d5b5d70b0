"""The audio capture agent: a real PortAudio/ALSA capture device, and device faults.

The real-device tests use ALSA's ``file`` plugin (see ../shared/TESTING.md): a temporary HOME
holds an ``.asoundrc`` that defines ``pcm.stetho`` reading a raw 16-bit file made from a real
PCG recording, and the agent runs in a subprocess with that HOME (PortAudio reads the ALSA
configuration when it initialises). What the plugin does, measured with PortAudio 19.6 /
alsa-lib 1.2.8: its ``null`` slave has no clock, so capture runs as fast as the callback
returns (tens of millions of frames per second), and at the end of ``infile`` it neither loops
nor stops - it keeps returning the last period again. The tests therefore stop the agent with
``--duration`` = exactly the file's length, and give it a ring big enough for the whole file
(or, in the overrun test, deliberately too small).

Device loss cannot be produced with the file plugin (its stream never fails), so those tests
drive the same agent through a stand-in PyAudio module whose device stops and disappears.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import ROOT, free_port

from telediag.errors import ConfigError
from telediag.sources.audio import (
    AudioCapture,
    DeviceError,
    InputDevice,
    find_device,
    import_pyaudio,
)
from telediag.transports.wire import Chunk, decode

pyaudio = import_pyaudio()  # a hard requirement of these tests: CI installs it (audio extra)

FS = 2000  # the rate of the PhysioNet 2016 training-a recordings


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def pcg_int16(shared_data: Path) -> np.ndarray:
    from telediag.evaluation.pcg_analyze import read_wav

    path = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not path.exists():
        pytest.skip(f"PCG recording not found: {path}")
    x, fs = read_wav(path)
    assert fs == FS
    return np.round(x * 32768).clip(-32768, 32767).astype("<i2")


def alsa_home(tmp: Path, samples: np.ndarray) -> Path:
    """A HOME whose .asoundrc defines capture device ``stetho`` reading ``samples``."""
    raw = tmp / "in.raw"
    samples.astype("<i2").tofile(raw)
    (tmp / ".asoundrc").write_text(
        "pcm.stetho {\n    type file\n    slave.pcm \"null\"\n    file \"/dev/null\"\n"
        f"    infile \"{raw}\"\n    format \"raw\"\n}}\n"
    )
    return tmp


def run_cli(home: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home))
    return subprocess.run([sys.executable, "-m", "telediag", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Puller:
    """A PULL socket on a free port collecting decoded chunks on a thread."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.sock.bind(self.addr)
        self.chunks: list[Chunk] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                self.chunks.append(decode(self.sock.recv_multipart()))

    def finish(self, quiet_s: float = 0.5) -> list[Chunk]:
        n = -1
        while n != len(self.chunks):
            n = len(self.chunks)
            time.sleep(quiet_s)
        self._stop.set()
        self._t.join()
        self.sock.close(linger=0)
        self.ctx.term()
        return self.chunks


@pytest.fixture()
def puller() -> Iterator[Puller]:
    p = Puller()
    yield p
    if not p._stop.is_set():
        p.finish(0.0)


def samples_of(chunks: list[Chunk]) -> np.ndarray:
    return np.concatenate([np.asarray(c.data) for c in chunks])


# --------------------------------------------------------------------------- real ALSA device


def test_devices_lists_the_alsa_capture_device(tmp_path: Path) -> None:
    home = alsa_home(tmp_path, np.zeros(100, dtype="<i2"))
    r = run_cli(home, "devices", "--json")
    assert r.returncode == 0, r.stderr
    import json

    devs = json.loads(r.stdout)
    stetho = [d for d in devs if d["name"] == "stetho"]
    assert stetho and stetho[0]["max_input_channels"] >= 1 and stetho[0]["default_rate_hz"] > 0


def test_capture_delivers_every_sample_of_the_file_in_order(tmp_path: Path, pcg_int16: np.ndarray,
                                                            puller: Puller) -> None:
    x = pcg_int16
    home = alsa_home(tmp_path, x)
    fpb = 100
    r = run_cli(home, "source", "pcg", "--device", "stetho", "--rate", str(FS), "--frames-per-buffer", str(fpb),
                "--duration", repr(x.size / FS), "--queue-buffers", str(x.size // fpb + 8),
                "--connect", puller.addr, "--stream", "bed-1/pcg")
    assert r.returncode == 0, r.stderr
    chunks = puller.finish()
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.kind == "pcg" and c.stream == "bed-1/pcg" and c.rate_hz == FS for c in chunks)
    assert all(c.channels == ("stetho",) and c.units == ("adu",) for c in chunks)
    y = samples_of(chunks)
    assert y.dtype == np.dtype("<i2") and y.shape == (x.size, 1)
    np.testing.assert_array_equal(y[:, 0], x)
    # source timestamps follow the sample clock exactly
    t0 = chunks[0].t0_ns
    assert all(c.t0_ns == t0 + (c.seq * fpb * 1_000_000_000) // FS for c in chunks)
    last = chunks[-1].meta
    assert last["dropped_buffers"] == 0 and last["device_lost"] == 0 and last["overflows"] == 0
    assert f"sent {len(chunks)} chunks, {x.size} frames" in r.stdout


def test_captured_stethoscope_is_segmented_by_the_engine(tmp_path: Path, pcg_int16: np.ndarray) -> None:
    """Device -> PortAudio -> agent -> engine -> segments, heart rate and filtered audio."""
    import dataclasses

    from telediag.client import Subscriber
    from telediag.engine.config import load_config
    from telediag.engine.runtime import Engine

    x = pcg_int16
    home = alsa_home(tmp_path, x)
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.1))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    sub = Subscriber(eng.publish_endpoint, topics=["segments/bed-5", "hr/bed-5", "pcg/bed-5", "event/bed-5",
                                                   "stats/"])
    try:
        assert sub.wait_connected(5), "no stats from the engine"
        r = run_cli(home, "source", "pcg", "--device", "stetho", "--rate", str(FS), "--duration", repr(x.size / FS),
                    "--queue-buffers", "2000", "--connect", eng.ingest_endpoint, "--stream", "bed-5/pcg")
        assert r.returncode == 0, r.stderr
        got: list[Chunk] = []
        last = time.monotonic()
        while time.monotonic() - last < 1.0:
            c = sub.recv(timeout_s=0.05)
            if c is not None and c.kind != "stats":
                got.append(c)
                last = time.monotonic()
    finally:
        sub.close()
        eng.stop()
        eng.join(10)
    segs = [s for c in got if c.kind == "segments" for s in c.body["segments"]]
    assert len(segs) > 100 and {s["state"] for s in segs} == {"S1", "systole", "S2", "diastole"}
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(segs, segs[1:], strict=False))
    hr = [c.body for c in got if c.kind == "hr"]
    assert 55 < np.median([h["heart_rate_bpm"] for h in hr[-10:] if h["heart_rate_bpm"]]) < 70
    assert hr[-1]["source"]["dropped_buffers"] == 0 and hr[-1]["source"]["device_lost"] == 0
    filt = [c for c in got if c.kind == "pcg"]
    assert abs(sum(c.n_samples for c in filt) - x.size / 2) < 50  # 2 kHz in, 1 kHz filtered out
    assert not [c.body for c in got if c.kind == "event" and c.body["type"] in ("gap", "stage_error")]


def test_queue_overrun_is_counted_and_is_a_seq_gap(tmp_path: Path, pcg_int16: np.ndarray,
                                                   puller: Puller) -> None:
    """The free-running device outpaces the sender: a 4-buffer ring must drop, and say so."""
    x = pcg_int16
    home = alsa_home(tmp_path, x)
    fpb = 100
    r = run_cli(home, "source", "pcg", "--device", "stetho", "--rate", str(FS), "--frames-per-buffer", str(fpb),
                "--duration", repr(x.size / FS), "--queue-buffers", "4", "--connect", puller.addr,
                "--stream", "bed-1/pcg")
    assert r.returncode == 0, r.stderr
    chunks = puller.finish()
    seqs = [c.seq for c in chunks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    n_buffers = -(-x.size // fpb)
    m = re.search(r"sent (\d+) chunks, (\d+) frames .*dropped buffers (\d+) \((\d+) frames\)", r.stdout)
    assert m, r.stdout
    sent, frames, dropped, dropped_frames = map(int, m.groups())
    # every buffer of the file is either delivered or counted as dropped, never silently lost
    assert dropped > 0 and sent == len(chunks)
    assert sent + dropped == n_buffers and frames + dropped_frames == x.size
    assert len(set(range(n_buffers)) - set(seqs)) == dropped  # each drop is one missing seq
    assert chunks[-1].meta["dropped_buffers"] <= dropped
    # what arrived is exactly the file's samples at the positions its seq (and t0) say
    t0 = chunks[0].t0_ns - (seqs[0] * fpb * 1_000_000_000) // FS
    for c in chunks:
        i = c.seq * fpb
        np.testing.assert_array_equal(np.asarray(c.data)[:, 0], x[i : i + c.n_samples])
        assert c.t0_ns == t0 + (i * 1_000_000_000) // FS


def test_unsupported_rate_is_a_clear_error(tmp_path: Path) -> None:
    home = alsa_home(tmp_path, np.zeros(1000, dtype="<i2"))
    r = run_cli(home, "source", "pcg", "--device", "stetho", "--rate", "10", "--duration", "1",
                "--connect", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert "does not support int16 x 1 channel(s) at 10 Hz" in r.stderr
    assert "Invalid sample rate" in r.stderr


def test_unknown_device_and_format_are_clear_errors(tmp_path: Path) -> None:
    home = alsa_home(tmp_path, np.zeros(1000, dtype="<i2"))
    r = run_cli(home, "source", "pcg", "--device", "no-such-stethoscope", "--duration", "1",
                "--connect", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert "no audio input device named 'no-such-stethoscope'" in r.stderr and "'stetho'" in r.stderr
    r = run_cli(home, "source", "pcg", "--device", "stetho", "--format", "int24")
    assert r.returncode == 2 and "invalid choice: 'int24'" in r.stderr
    with pytest.raises(ConfigError, match="sample_format must be one of"):
        AudioCapture("stetho", "tcp://127.0.0.1:1", "s/pcg", sample_format="int8")
    with pytest.raises(ConfigError, match="rate_hz"):
        AudioCapture("stetho", "tcp://127.0.0.1:1", "s/pcg", rate_hz=4000.5)  # type: ignore[arg-type]


def test_missing_pyaudio_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyaudio", None)
    with pytest.raises(ConfigError, match=r"apt-get install -y portaudio19-dev && pip install"):
        import_pyaudio()


def test_find_device_by_index_name_and_fragment() -> None:
    devs = [InputDevice(0, "HDA Intel: ALC (hw:0,0)", 2, 44100.0, "ALSA"), InputDevice(3, "stetho", 1, 4000.0, "ALSA")]
    assert find_device(devs, "3").name == "stetho"
    assert find_device(devs, 3).name == "stetho"
    assert find_device(devs, "alc").index == 0
    with pytest.raises(DeviceError, match="no audio input device with index 7"):
        find_device(devs, "7")
    with pytest.raises(DeviceError, match="ambiguous"):
        find_device(devs + [InputDevice(4, "stetho 2", 1, 4000.0, "ALSA")], "steth")


# --------------------------------------------------------------------------- device faults (stand-in PyAudio)


class FakeAudio:
    """A stand-in for the ``pyaudio`` module: one device fed from ``signal`` in real time x ``speed``.

    ``vanish_after`` buffers into the first opening, the stream stops (``stop_mode="inactive"``:
    ``is_active()`` turns False, as when ALSA reports the device gone; ``"stall"``: callbacks
    simply cease) and the device is absent from the next ``absent_sessions`` PortAudio sessions.
    The signal keeps running meanwhile (those samples are lost, as with a real device).
    """

    paInt16 = 8
    paFloat32 = 1

    def __init__(self, signal: np.ndarray, rate: int, *, vanish_after: int | None = None,
                 absent_sessions: int = 0, stop_mode: str = "inactive", speed: float = 20.0,
                 overflow_every: int = 0) -> None:
        self.signal = signal
        self.overflow_every = overflow_every
        self.rate = rate
        self.vanish_after = vanish_after
        self.absent_sessions = absent_sessions
        self.stop_mode = stop_mode
        self.speed = speed
        self.sessions = 0
        self.openings = 0
        self.t_start = time.monotonic()
        self.positions: list[int] = []  # first frame of each opening

    def PyAudio(self) -> FakePA:  # noqa: N802 - mirrors pyaudio.PyAudio
        self.sessions += 1
        present = not (self.openings >= 1 and self.absent_sessions > 0)
        if not present:
            self.absent_sessions -= 1
        return FakePA(self, present)

    def now_frame(self) -> int:
        return int((time.monotonic() - self.t_start) * self.rate * self.speed)


class FakePA:
    def __init__(self, mod: FakeAudio, present: bool) -> None:
        self.mod = mod
        self.present = present

    def get_device_count(self) -> int:
        return 2 if self.present else 1

    def get_device_info_by_index(self, i: int) -> dict[str, Any]:
        if i == 0:
            return {"name": "speaker", "maxInputChannels": 0, "defaultSampleRate": 48000.0, "hostApi": 0}
        return {"name": "stetho", "maxInputChannels": 1, "defaultSampleRate": float(self.mod.rate), "hostApi": 0}

    def get_host_api_info_by_index(self, i: int) -> dict[str, Any]:
        return {"name": "Fake"}

    def is_format_supported(self, rate: float, **kw: Any) -> bool:
        if rate != self.mod.rate:
            raise ValueError("Invalid sample rate", -9997)
        return True

    def open(self, **kw: Any) -> FakeStream:
        if self.mod.openings == 0:
            self.mod.t_start = time.monotonic()  # the first opening starts at frame 0
        self.mod.openings += 1
        return FakeStream(self.mod, kw["frames_per_buffer"], kw["stream_callback"],
                          vanish=self.mod.vanish_after if self.mod.openings == 1 else None)

    def terminate(self) -> None:
        pass


class FakeStream:
    def __init__(self, mod: FakeAudio, fpb: int, cb: Any, vanish: int | None) -> None:
        self.mod, self.fpb, self.cb, self.vanish = mod, fpb, cb, vanish
        self.active = True
        self._stop = threading.Event()
        self.pos = mod.now_frame()
        mod.positions.append(self.pos)
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            if self.vanish is not None and n >= self.vanish:
                if self.mod.stop_mode == "inactive":
                    self.active = False
                return
            end = self.pos + self.fpb
            while self.mod.now_frame() < end:
                if self._stop.wait(0.001):
                    return
            block = self.mod.signal[self.pos % self.mod.signal.size : ][: self.fpb]
            if block.size < self.fpb:
                block = np.resize(self.mod.signal, self.fpb)
            k = self.mod.overflow_every
            status = 2 if k and n % k == k - 1 else 0  # paInputOverflow
            _, flag = self.cb(block.astype("<i2").tobytes(), self.fpb, {}, status)
            self.pos = end
            n += 1
            if flag != 0:
                self.active = False
                return

    def is_active(self) -> bool:
        return self.active

    def stop_stream(self) -> None:
        self._stop.set()
        self._t.join()

    def close(self) -> None:
        self._stop.set()


@pytest.mark.parametrize("stop_mode", ["inactive", "stall"])
def test_device_that_vanishes_is_reopened_and_nothing_accepted_is_lost(stop_mode: str, puller: Puller) -> None:
    rate, fpb = 4000, 200
    sig = (np.arange(rate * 60) % 20000).astype("<i2")  # sample value = its position, mod 20000
    fake = FakeAudio(sig, rate, vanish_after=10, absent_sessions=3, stop_mode=stop_mode, speed=10.0)
    lines: list[str] = []
    cap = AudioCapture("stetho", puller.addr, "bed-2/pcg", rate_hz=rate, frames_per_buffer=fpb,
                       duration_s=40 * fpb / rate, stall_s=0.5, backoff_s=(0.02, 0.05),
                       pyaudio_module=fake, log=lines.append)
    res = cap.run()
    chunks = puller.finish(0.3)
    assert res.counters.device_lost == 1 and res.counters.reopens == 1
    assert res.counters.open_failures == 3  # the device was absent from three sessions
    assert res.frames == 40 * fpb and len(chunks) == 40
    seqs = [c.seq for c in chunks]
    # the first opening's 10 buffers, then a gap (the time the device was away), then the rest
    assert seqs[:10] == list(range(10))
    assert seqs[10] > 10 and seqs[10:] == list(range(seqs[10], seqs[10] + 30))
    t_gap = chunks[10].t0_ns - (chunks[9].t0_ns + fpb * 1_000_000_000 // rate)
    assert t_gap > 0
    assert abs((seqs[10] - 10) - t_gap / (fpb * 1e9 / rate)) <= 1.0  # seq gap ~ time away in buffers
    # every accepted sample arrives, in order, and is the device's sample for its position
    y = samples_of(chunks)[:, 0].astype(np.int64)
    p0, p1 = fake.positions[0], fake.positions[-1]
    np.testing.assert_array_equal(y[: 10 * fpb], (np.arange(p0, p0 + 10 * fpb) % sig.size) % 20000)
    np.testing.assert_array_equal(y[10 * fpb :], (np.arange(p1, p1 + 30 * fpb) % sig.size) % 20000)
    assert chunks[-1].meta["device_lost"] == 1 and chunks[-1].meta["reopens"] == 1
    assert len({c.meta["session"] for c in chunks}) == 1  # one stream for the engine, with a gap
    assert any("lost" in s for s in lines) and any("reopened" in s for s in lines)


def test_wrong_rate_on_stand_in_device_is_a_clear_error() -> None:
    fake = FakeAudio(np.zeros(100, dtype="<i2"), 4000)
    cap = AudioCapture("stetho", f"tcp://127.0.0.1:{free_port()}", "s/pcg", rate_hz=8000, pyaudio_module=fake,
                       log=lambda s: None)
    with pytest.raises(ConfigError, match=r"does not support int16 x 1 channel\(s\) at 8000 Hz.*default rate is 4000"):
        cap.run()
    cap = AudioCapture("speaker", f"tcp://127.0.0.1:{free_port()}", "s/pcg", rate_hz=4000, pyaudio_module=fake,
                       log=lambda s: None)
    with pytest.raises(DeviceError, match="no audio input device named 'speaker'"):
        cap.run()


def test_clipped_samples_are_counted_in_meta(puller: Puller) -> None:
    rate, fpb = 4000, 400
    sig = np.zeros(rate, dtype="<i2")
    sig[100:110] = 32767
    sig[500:505] = -32768
    fake = FakeAudio(sig, rate, speed=50.0)
    cap = AudioCapture("stetho", puller.addr, "s/pcg", rate_hz=rate, frames_per_buffer=fpb,
                       duration_s=2 * fpb / rate, pyaudio_module=fake, log=lambda s: None)
    cap.run()
    chunks = puller.finish(0.3)
    got = samples_of(chunks)[:, 0]
    expected = int(np.count_nonzero((got == 32767) | (got == -32768)))
    assert chunks[-1].meta["clipped"] == expected


def test_input_overflows_are_counted_and_flagged(puller: Puller) -> None:
    rate, fpb = 4000, 100
    fake = FakeAudio(np.zeros(rate, dtype="<i2"), rate, speed=50.0, overflow_every=4)
    cap = AudioCapture("stetho", puller.addr, "s/pcg", rate_hz=rate, frames_per_buffer=fpb,
                       duration_s=12 * fpb / rate, pyaudio_module=fake, log=lambda s: None)
    res = cap.run()
    chunks = puller.finish(0.3)
    assert res.counters.overflows == 3 and len(chunks) == 12
    assert [c.seq for c in chunks if c.meta["status"] & 2] == [3, 7, 11]
    # counters in meta are cumulative at send time: they never decrease and end at the total
    ov = [c.meta["overflows"] for c in chunks]
    assert ov == sorted(ov) and ov[3] >= 1 and ov[-1] == 3
