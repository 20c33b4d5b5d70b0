"""The video source agent: files (paced and max speed), raw frames, loop, drops, a live UDP feed."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port

from telediag.cli import main as cli_main
from telediag.errors import DataError
from telediag.sources.synth_endoscopy import write_clip
from telediag.sources.video import VideoSourceOptions, default_stream_id, run_video_source
from telediag.sources.video_codec import PacketDecoder
from telediag.transports.wire import Chunk, decode

FPS = 30.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_clip(p, 2.0, fps=FPS, width=320, height=240, seed=5, keyint=10)
    return p


class Sink:
    """A PULL socket collecting chunks in a thread (optionally slowly)."""

    def __init__(self, ctx: zmq.Context, addr: str = "tcp://127.0.0.1:*", *, rcvhwm: int = 10000,
                 delay_s: float = 0.0) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.bind(addr)
        self.addr = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.chunks: list[Chunk] = []
        self.delay_s = delay_s
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(50):
                self.chunks.append(decode(self.sock.recv_multipart()))
                if self.delay_s:
                    time.sleep(self.delay_s)

    def close(self, quiet_s: float = 0.3) -> list[Chunk]:
        n = -1
        while n != len(self.chunks):
            n = len(self.chunks)
            time.sleep(quiet_s)
        self._stop.set()
        self._t.join(5)
        self.sock.close(0)
        return self.chunks


def check_decodable(chunks: list[Chunk]) -> PacketDecoder:
    dec = PacketDecoder()
    for c in chunks:
        dec.decode(c)
    return dec


def test_file_at_real_time_is_paced_and_keyframed(clip: Path) -> None:
    ctx = zmq.Context()
    sink = Sink(ctx)
    res = run_video_source(VideoSourceOptions(str(clip), connect=sink.addr, stream="room-1/endo", keyint=15),
                           ctx=ctx)
    chunks = sink.close()
    ctx.term()
    assert res.frames == 60 and res.packets == 60 and res.dropped == 0 and not res.error
    assert [c.seq for c in chunks] == list(range(60))
    assert all(c.topic == "video/room-1/endo" for c in chunks)
    v = chunks[0].video
    assert v is not None and (v.codec, v.width, v.height, v.pix_fmt, v.fps) == ("h264", 320, 240, "yuv420p", FPS)
    assert [c.seq for c in chunks if c.video and c.video.keyframe] == [0, 15, 30, 45]
    t0 = np.array([c.t0_ns for c in chunks])
    assert np.all(np.diff(t0) > 0)
    # paced: never faster than real time (slowness of the machine can only stretch it)
    assert (t0[-1] - t0[0]) / 1e9 >= 0.9 * 59 / FPS
    assert len({c.meta["session"] for c in chunks}) == 1
    dec = check_decodable(chunks)
    assert dec.decoded == 60 and dec.errors == 0


def test_max_speed_raw_scaled_and_looped(clip: Path) -> None:
    ctx = zmq.Context()
    sink = Sink(ctx)
    res = run_video_source(VideoSourceOptions(str(clip), connect=sink.addr, stream="s/endo", codec="raw",
                                              width=160, speed=float("inf"), loop=True, max_frames=150),
                           ctx=ctx)
    chunks = sink.close()
    ctx.term()
    assert res.frames == 150 and len(chunks) == 150  # 2.5 passes over the 60-frame clip
    assert chunks[0].data is not None and chunks[0].data.shape == (120, 160, 3)
    v = chunks[0].video
    assert v is not None and (v.codec, v.pix_fmt, v.keyframe) == ("raw", "rgb24", True)
    dt = np.diff([c.t0_ns for c in chunks]) / 1e6
    np.testing.assert_allclose(dt, 1000 / FPS, atol=1.0)  # the clip's own timeline, across loops


def test_a_slow_engine_makes_the_agent_drop_and_resume_on_a_keyframe(clip: Path) -> None:
    ctx = zmq.Context()
    sink = Sink(ctx, "inproc://slow-engine", rcvhwm=1, delay_s=0.02)
    res = run_video_source(VideoSourceOptions(str(clip), connect=sink.addr, stream="s/endo", hwm=1,
                                              speed=float("inf"), keyint=300), ctx=ctx)
    chunks = sink.close()
    ctx.term()
    assert res.dropped > 0 and res.packets == len(chunks) and res.packets + res.dropped == 60
    seqs = [c.seq for c in chunks]
    after_gap = [c for prev, c in zip(chunks, chunks[1:], strict=False) if c.seq != prev.seq + 1]
    assert after_gap, seqs
    assert all(c.video is not None and c.video.keyframe for c in after_gap)  # forced keyframes
    dec = check_decodable(chunks)
    assert dec.errors == 0 and dec.skipped == 0 and dec.decoded == len(chunks)


def test_options_and_stream_ids(tmp_path: Path) -> None:
    assert default_stream_id("udp://127.0.0.1:5000") == "udp-127.0.0.1-5000/endo"
    assert default_stream_id("/dev/video0") == "dev-video0/endo"
    assert default_stream_id("rtsp://cam.local:554/live?x=1") == "rtsp-cam.local-554-live/endo"
    with pytest.raises(DataError, match="codec"):
        VideoSourceOptions("x.mp4", codec="vp9")
    with pytest.raises(DataError, match="not found"):
        run_video_source(VideoSourceOptions(str(tmp_path / "missing.mp4")))


def test_cli_source_video(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = zmq.Context()
    sink = Sink(ctx)
    rc = cli_main(["source", "video", "--input", str(clip), "--connect", sink.addr, "--speed", "max",
                   "--frames", "12", "--keyint", "4", "--stream", "cli/endo"])
    chunks = sink.close()
    ctx.term()
    assert rc == 0
    assert "12 frames 320x240" in capsys.readouterr().out
    assert [c.seq for c in chunks if c.video and c.video.keyframe] == [0, 4, 8]


@pytest.mark.slow
def test_live_udp_feed_from_ffmpeg(clip: Path) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (apt-get install -y ffmpeg): needed for the live UDP feed")
    port = free_port()
    ctx = zmq.Context()
    sink = Sink(ctx)
    out: dict[str, object] = {}
    opts = VideoSourceOptions(f"udp://127.0.0.1:{port}", connect=sink.addr, keyint=10, duration_s=8.0,
                              open_timeout_s=8.0, read_timeout_s=1.5)
    t = threading.Thread(target=lambda: out.update(res=run_video_source(opts, ctx=ctx)), daemon=True)
    t.start()
    time.sleep(0.3)
    feed = subprocess.Popen([ffmpeg, "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "mpegts",
                             f"udp://127.0.0.1:{port}?pkt_size=1316"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        feed.wait(20)
    finally:
        if feed.poll() is None:
            feed.kill()
            feed.wait(5)
    t.join(15)
    chunks = sink.close()
    ctx.term()
    assert not t.is_alive()
    res = out["res"]
    assert res.frames >= 30, res  # type: ignore[attr-defined]
    assert all(c.topic == f"video/udp-127.0.0.1-{port}/endo" for c in chunks)
    dec = check_decodable(chunks)
    assert dec.errors == 0 and dec.decoded == len(chunks)
    t0 = np.array([c.t0_ns for c in chunks])
    assert np.all(np.diff(t0) > 0)  # live: capture clock
