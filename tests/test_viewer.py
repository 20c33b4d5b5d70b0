"""The viewer's bridge without a browser: message format, decimation, views, queues, video."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import numpy as np
import pytest
import zmq
from conftest import free_port

from telediag.transports.wire import Chunk, VideoSpec, encode
from telediag.viewer.bridge import (
    Bridge,
    Client,
    DisplayDecimator,
    VideoTranscoder,
    alarm_view,
    annotation_view,
    jsonable,
    pack_binary,
    polyp_view,
    unpack_binary,
)
from telediag.viewer.server import ViewerThread


def _bridge() -> Bridge:
    return Bridge(["tcp://127.0.0.1:1"], history_s=10.0)


def test_binary_message_round_trip_and_alignment() -> None:
    for extra in range(6):
        head = {"kind": "ecg", "pad": "x" * extra}
        payload = np.arange(10, dtype="<f4").tobytes()
        msg = pack_binary(head, payload)
        h, p = unpack_binary(msg)
        assert h == head and bytes(p) == payload
        assert (len(msg) - len(payload)) % 4 == 0  # Float32Array needs 4-byte alignment


def test_signal_chunk_becomes_channel_major_float32() -> None:
    b = _bridge()
    x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    c = Chunk.signal("ecg", "bed-1/ecg/filtered", 5, 1_700_000_000_123_456_789, x, 360.0,
                     ["MLII", "V1"], ["mV", "mV"])
    (msg,) = b.convert(c)
    assert isinstance(msg, bytes)
    h, p = unpack_binary(msg)
    assert h["t0_ns"] == 1_700_000_000_123_456_789 and h["rate_hz"] == 360.0 and h["n"] == 3
    assert h["channels"] == ["MLII", "V1"] and h["topic"] == "ecg/bed-1/ecg/filtered"
    np.testing.assert_array_equal(np.frombuffer(p, "<f4").reshape(2, 3), x.T)


def test_raw_signal_is_skipped_once_its_filtered_stream_exists() -> None:
    b = _bridge()
    x = np.zeros((4, 1))
    raw = lambda seq: Chunk.signal("ecg", "bed-1/ecg", seq, seq * 10**9, x, 360.0, ["I"], ["mV"])  # noqa: E731
    assert len(b.convert(raw(0))) == 1
    b.convert(Chunk.signal("ecg", "bed-1/ecg/filtered", 0, 0, x, 360.0, ["I"], ["mV"]))
    assert b.convert(raw(1)) == []


@pytest.mark.parametrize("rate", [1000.0, 2000.0, 4000.0, 360.0])
def test_display_decimator_chunked_equals_one_pass_and_keeps_peaks(rate: float) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5003, 2)).astype(np.float32)
    one = DisplayDecimator(rate, 500.0)
    t_ref, y_ref = one.push(0, x) or (0, np.empty((0, 2)))
    chunked = DisplayDecimator(rate, 500.0)
    splits = np.sort(rng.choice(np.arange(1, 5003), 60, replace=False))
    t_first, parts, start = None, [], 0
    for part in np.split(x, splits):
        res = chunked.push(int(round(start * 1e9 / rate)), part)
        start += part.shape[0]
        if res is not None:
            t_first = res[0] if t_first is None else t_first
            parts.append(res[1])
    y = np.concatenate(parts)
    np.testing.assert_array_equal(y, y_ref)
    assert t_first == t_ref == 0
    q = one.q
    assert one.out_rate_hz == rate / q <= 500.0
    m = (x.shape[0] // (2 * q)) * 2 * q
    blocks = x[:m].reshape(-1, 2 * q, 2)
    if q > 1:  # every block's min and max survive (min/max decimation oracle)
        np.testing.assert_array_equal(np.sort(y_ref.reshape(-1, 2, 2), axis=1)[:, 0], blocks.min(axis=1))
        np.testing.assert_array_equal(np.sort(y_ref.reshape(-1, 2, 2), axis=1)[:, 1], blocks.max(axis=1))
    else:
        np.testing.assert_array_equal(y_ref, x)


def test_display_decimator_times_follow_the_input_and_restart_on_discontinuity() -> None:
    d = DisplayDecimator(1000.0, 500.0)
    x = np.arange(7, dtype=np.float32)[:, None]
    assert d.push(10**9, x)[0] == 10**9  # type: ignore[index]
    t, y = d.push(10**9 + 7_000_000, x) or (None, None)  # continues: carry of 3 samples first
    assert t == 10**9 + 4_000_000 and y is not None and y.shape[0] == 4
    t, _ = d.push(5 * 10**9, np.zeros((8, 1), np.float32)) or (None, None)  # jump: restart
    assert t == 5 * 10**9


def test_annotation_views_are_defensive() -> None:
    beats = {"beats": [{"sample": 10, "t_ns": 123, "label": "V", "probs": {"V": 0.9}},
                       {"sample": 20, "t_ns": 456, "label": None}, "junk", {"no": "time"}]}
    assert annotation_view("beats", "s", 0, beats) == {"beats": [
        {"t_ns": 123, "sample": 10, "label": "V"}, {"t_ns": 456, "sample": 20, "label": None}]}
    assert annotation_view("hr", "s", 7, {"readings": [{"t_ns": 5, "hr_bpm": 70.0}, {"t_ns": 9, "hr_bpm": 71.5}]}) \
        == {"t_ns": 9, "bpm": 71.5}
    assert annotation_view("hr", "s", 7, {"t_ns": 8, "heart_rate_bpm": None})["bpm"] is None  # type: ignore[index]
    q = annotation_view("quality", "s", 0, {"blocks": [{"sqi": [0.9, 0.4], "usable": [True, False]}]})
    assert q == {"sqi": 0.4, "usable": False}
    assert annotation_view("quality", "s", 0, {"type": "pcg_abnormal", "abnormal_prob": 0.7, "label": "abnormal"}) \
        == {"abnormal_prob": 0.7, "label": "abnormal"}
    segs = annotation_view("segments", "s", 0, {"segments": [{"start_ns": 1, "end_ns": 2, "state": "S1"}, {"x": 1}]})
    assert segs == {"segments": [{"start_ns": 1, "end_ns": 2, "state": "S1"}]}
    assert annotation_view("hrv", "s", 0, "not a dict") is None


def test_alarm_views() -> None:
    on = alarm_view({"type": "vtach", "state": "on", "onset_ns": 99}, "bed-2/ecg", "alarm", 100)
    assert on is not None and (on["key"], on["state"], on["onset_ns"], on["priority"]) == \
        ("bed-2/ecg:vtach", "on", 99, "high")
    off = alarm_view({"type": "vtach", "state": "end"}, "bed-2/ecg", "alarm", 200)
    assert off is not None and off["key"] == on["key"] and off["state"] == "off"
    tech = alarm_view({"type": "quality", "event": "leads_off", "state": "start", "channel": "V1",
                       "onset_ns": 5}, "bed-2/ecg", "event", 6)
    assert tech is not None and tech["technical"] and tech["priority"] == "medium" and tech["text"] == "LEADS OFF V1"
    # IEC 60601-1-8 priorities: the body's own, else a default per type
    assert alarm_view({"type": "afib", "state": "on"}, "b/ecg", "alarm", 1)["priority"] == "medium"  # type: ignore[index]
    assert alarm_view({"type": "ectopy", "state": "on", "priority": "HIGH"}, "b/ecg", "alarm", 1)["priority"] == "high"  # type: ignore[index]
    su = alarm_view({"type": "signal_unusable", "state": "on", "category": "technical"}, "b/ecg", "alarm", 1)
    assert su is not None and su["technical"] and su["priority"] == "low"


def test_polyp_view_reads_the_engine_body() -> None:
    """The engine's polyp body (``polyp_probability``, RLE mask) is understood (issue 18 bug)."""
    from telediag.engine.stages.video import polyp_body

    class R:
        polyp_probability = 0.99
        mask = np.zeros((48, 64), bool)
        boxes = [[8, 8, 24, 20, 0.99]]
    R.mask[8:20, 8:24] = True
    v = polyp_view(polyp_body(R(), 64, 48), (64, 48))
    assert v["prob"] == 0.99 and v["mask"] is not None and v["mask"]["w"] == 64
    assert v["boxes"] == [[0.125, 0.16667, 0.375, 0.41667, 0.99]]
    assert alarm_view({"type": "stream_opened"}, "bed-2/ecg", "event", 0) is None
    assert alarm_view({"type": "alarm", "alarm": "brady", "state": "on"}, "b/ecg", "event", 3)["type"] == "brady"  # type: ignore[index]


def test_polyp_view_normalises_boxes_contours_and_masks() -> None:
    v = polyp_view({"probability": 0.8, "detections": [{"x": 32, "y": 24, "w": 64, "h": 48, "score": 0.8,
                                                        "contour": [[32, 24], [96, 24], [96, 72]]}]}, (320, 240))
    assert v["prob"] == 0.8
    assert v["boxes"] == [[0.1, 0.1, 0.3, 0.3, 0.8]]
    assert v["contours"] == [[0.1, 0.1, 0.3, 0.1, 0.3, 0.3]]
    v = polyp_view({"boxes": [[0.1, 0.2, 0.3, 0.4, 0.6]]})  # already normalised, prob from the box
    assert v["prob"] == 0.6 and v["boxes"] == [[0.1, 0.2, 0.3, 0.4, 0.6]]
    v = polyp_view({"boxes": [[10, 10, 50, 50]]})  # pixels but no frame size: cannot place, dropped
    assert v["boxes"] == []
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 30:50] = 255
    v = polyp_view({"prob": 0.9}, None, mask)
    m = v["mask"]
    bits = np.unpackbits(np.frombuffer(base64.b64decode(m["bits"]), np.uint8))[: m["w"] * m["h"]]
    np.testing.assert_array_equal(bits.reshape(m["h"], m["w"]), (mask > 127).astype(np.uint8))


def test_jsonable_handles_nan_numpy_and_bytes() -> None:
    doc = jsonable({"a": np.float32(1.5), "b": [float("inf"), np.int16(-3)], "c": b"ab", "d": np.arange(2)})
    assert json.loads(json.dumps(doc, allow_nan=False)) == {"a": 1.5, "b": [None, -3], "c": {"bytes": 2}, "d": [0, 1]}


def test_slow_client_drops_oldest_and_never_blocks() -> None:
    c = Client(maxlen=5)
    for i in range(12):
        c.put(str(i))
    assert c.dropped == 7 and list(c.queue) == ["7", "8", "9", "10", "11"]
    c.put_video("v", b"a")
    c.put_video("v", b"b")  # latest frame wins
    assert c.video_dropped == 1

    async def drain() -> list[str | bytes]:
        return [await asyncio.wait_for(c.get(), 1.0) for _ in range(6)]

    assert asyncio.run(drain()) == ["7", "8", "9", "10", "11", b"b"]


def test_bridge_snapshot_brings_a_new_client_up_to_date() -> None:
    b = _bridge()
    x = np.zeros((36, 1))
    for seq in range(3):
        b.convert(Chunk.signal("ecg", "bed-1/ecg/filtered", seq, seq * 100_000_000, x, 360.0, ["I"], ["mV"]))
    b.convert(Chunk.record("hr", "bed-1/ecg", 0, 0, {"readings": [{"t_ns": 0, "hr_bpm": 60.0}]}))
    b.convert(Chunk.record("hr", "bed-1/ecg", 1, 0, {"readings": [{"t_ns": 0, "hr_bpm": 61.0}]}))
    b.convert(Chunk.record("alarm", "bed-1/ecg", 0, 5, {"type": "asystole", "state": "on", "onset_ns": 5}))
    b.convert(Chunk.record("alarm", "bed-1/ecg", 1, 6, {"type": "vfib", "state": "on", "onset_ns": 6}))
    b.convert(Chunk.record("alarm", "bed-1/ecg", 2, 7, {"type": "vfib", "state": "off"}))
    snap = b.snapshot()
    signals = [unpack_binary(m)[0] for m in snap if isinstance(m, bytes)]
    texts = [json.loads(m) for m in snap if isinstance(m, str)]
    assert [h["seq"] for h in signals] == [0, 1, 2]
    assert [t["view"]["bpm"] for t in texts if t["kind"] == "hr"] == [61.0]  # latest only
    assert [t["view"]["type"] for t in texts if t["kind"] == "alarm"] == ["asystole"]  # still on


def test_bridge_counts_upstream_seq_gaps() -> None:
    b = _bridge()
    for seq in (0, 1, 4, 5, 9):
        b.convert(Chunk.record("hr", "bed-1/ecg", seq, 0, {"t_ns": 0, "heart_rate_bpm": 60.0}))
    assert b.lost == 2 + 3


def _h264_packets(n: int = 12, w: int = 320, h: int = 240) -> list[tuple[bytes, bool]]:
    av = pytest.importorskip("av")
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = w, h, "yuv420p"
    cc.framerate = 25
    cc.options = {"tune": "zerolatency", "preset": "ultrafast"}
    out: list[tuple[bytes, bool]] = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 0] = 200  # red frame with a white bar
        img[40:80, (i * 10) % (w - 40) : (i * 10) % (w - 40) + 40] = 255
        f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        f.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(f)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(None)]
    return out


def test_video_transcoder_decodes_h264_and_makes_jpeg() -> None:
    from io import BytesIO

    from PIL import Image

    tr = VideoTranscoder(max_width=160)
    frames = []
    for i, (pkt, key) in enumerate(_h264_packets()):
        c = Chunk.video_packet("room-3/endo", i, i * 40_000_000, pkt, VideoSpec("h264", 320, 240, "yuv420p", 25.0, key))
        f = tr.decode(c)
        if f is not None:
            frames.append(f)
    assert len(frames) >= 10 and frames[-1].shape == (120, 160, 3)
    assert frames[-1][..., 0].mean() > 150  # mostly red
    jpg, w, h = tr.jpeg(frames[-1])
    im = Image.open(BytesIO(jpg))
    assert (im.format, im.size, (w, h)) == ("JPEG", (160, 120), (160, 120))
    # after a skip the decoder waits for a keyframe instead of decoding garbage
    tr.skip()
    c = Chunk.video_packet("room-3/endo", 99, 0, _h264_packets(3)[1][0], VideoSpec("h264", 320, 240, "yuv420p", 25.0, False))
    assert tr.decode(c) is None


def test_video_reaches_clients_latest_frame_wins() -> None:
    async def main() -> Client:
        b = _bridge()
        from concurrent.futures import ThreadPoolExecutor

        b._pool = ThreadPoolExecutor(1)
        c = b.add_client()
        img = np.zeros((48, 64, 3), np.uint8)
        for seq in range(5):
            img[:] = seq * 40
            b.handle_frames(encode(Chunk(kind="video", stream="room-3/endo", seq=seq, t0_ns=seq, data=img.copy(),
                                         video=VideoSpec("raw", 64, 48, "rgb24", 25.0, True))))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "room-3/endo" in c.video and not b._video_busy:
                break
        b._pool.shutdown()
        return c

    c = asyncio.run(main())
    h, jpg = unpack_binary(c.video["room-3/endo"])
    assert h["kind"] == "video" and h["src_width"] == 64 and bytes(jpg[:2]) == b"\xff\xd8"
    assert h["seq"] == 4  # the newest frame


def test_server_serves_page_static_files_health_and_websocket() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub.bind(ep)
    v = ViewerThread(ep, port=0)
    url = v.start()
    try:
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "/static/app.js" in page and "telediag" in page
        for name in ("app.js", "style.css"):
            assert urllib.request.urlopen(f"{url}static/{name}", timeout=5).status == 200
        health = json.loads(urllib.request.urlopen(f"{url}healthz", timeout=5).read())
        assert health["endpoints"] == [ep] and health["clients"] == 0

        async def client() -> list[dict]:
            got: list[dict] = []
            async with aiohttp.ClientSession() as s, s.ws_connect(f"{url}ws") as ws:
                end = time.monotonic() + 10
                while time.monotonic() < end and not any(m.get("kind") == "hr" for m in got):
                    pub.send_multipart(encode(Chunk.record("hr", "bed-9/ecg", len(got), 1,
                                                           {"readings": [{"t_ns": 1, "hr_bpm": 72.0}]})))
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        got.append(json.loads(msg.data))
            return got

        got = asyncio.run(client())
        assert got[0]["kind"] == "_hello"
        assert [m["kind"] for m in got[1:3]] == ["_snapshot", "_snapshot"]
        hr = [m for m in got if m["kind"] == "hr"]
        assert hr and hr[0]["view"]["bpm"] == 72.0 and hr[0]["topic"] == "hr/bed-9/ecg"
    finally:
        v.stop()
        pub.close(0)
        ctx.term()


def test_cli_viewer_serves_and_stops_on_sigint() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "telediag", "viewer", "--port", "0", "--engine",
                             "tcp://127.0.0.1:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("telediag viewer: http://127.0.0.1:"), line
        url = line.split()[2]
        assert json.loads(urllib.request.urlopen(f"{url}healthz", timeout=5).read())["clients"] == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
