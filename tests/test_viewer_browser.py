"""The live viewer in a real headless Chromium, fed by an in-process engine and real recordings.

Scenario (one engine, one viewer, one browser page for the whole module):

* ``bed-1``: MIT-BIH record 119 (bundled demo excerpt) replayed at 3x through the engine
  (ECG filter + beats/HR/HRV/quality);
* ``bed-2``: PhysioNet 2016 record a0001 (simultaneous heart sounds and ECG, 2 kHz) at 3x
  through the engine (PCG segmentation: S1/S2 segments, PCG heart rate);
* ``room-3``: a real Kvasir-SEG polyp image panned over 24 frames, H.264 (PyAV libx264),
  with a polyp annotation from its ground-truth mask, and alarm records, both from a second
  PUB socket the bridge also subscribes to (the engine has no alarm or video stage yet).

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright
install``). Screenshots go to ``$TELEDIAG_ARTIFACTS/viewer`` (or a temporary folder) and the
last one to ``/tmp/viewer_screens/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import data_dir, free_port

from telediag.client import Subscriber
from telediag.demo import data_path
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.sources.readers import read_wfdb
from telediag.sources.replay import replay
from telediag.transports.wire import Chunk, VideoSpec, encode
from telediag.viewer.server import ViewerThread

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SPEED = 3.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _engine(ingest: str, publish: str) -> Engine:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest=ingest, publish=publish, stats_interval_s=0.5))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    return eng


def _endoscopy_clip(shared: Path | None, n: int = 24) -> tuple[list[tuple[bytes, bool]], list[dict[str, Any]], int, int]:
    """H.264 packets of a panned polyp image and one polyp annotation body per frame."""
    import av
    from PIL import Image

    img_path = shared / "kvasir-seg" / "validation" / "images" / "0.jpg" if shared else None
    if img_path is not None and img_path.exists():
        img = np.asarray(Image.open(img_path).convert("RGB"))
        mask = np.asarray(Image.open(shared / "kvasir-seg" / "validation" / "masks" / "0.jpg").convert("L")) > 127  # type: ignore[operator]
    else:  # synthetic stand-in: a pink blob on a red background
        yy, xx = np.mgrid[:352, :352]
        mask = (yy - 170) ** 2 + (xx - 190) ** 2 < 60**2
        img = np.zeros((352, 352, 3), np.uint8)
        img[...] = (150, 40, 40)
        img[mask] = (230, 140, 150)
    h, w = 320, 320
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = w, h, "yuv420p"
    cc.framerate = 10  # type: ignore[assignment]
    cc.options = {"tune": "zerolatency", "preset": "ultrafast", "g": "24"}
    packets: list[tuple[bytes, bool]] = []
    bodies = []
    for i in range(n):
        dx = int(16 * np.sin(2 * np.pi * i / n)) + 16
        frame = np.ascontiguousarray(img[16 : 16 + h, dx : dx + w])
        m = mask[16 : 16 + h, dx : dx + w]
        ys, xs = np.nonzero(m)
        cy, cx = ys.mean(), xs.mean()
        ang = np.arctan2(ys - cy, xs - cx)
        rad = np.hypot(ys - cy, xs - cx)
        contour = []
        for a in np.linspace(-np.pi, np.pi, 32, endpoint=False):  # star-shaped outline of the mask
            sel = np.abs(np.angle(np.exp(1j * (ang - a)))) < np.pi / 32
            r = rad[sel].max() if sel.any() else 0.0
            contour.append([float(cx + r * np.cos(a)), float(cy + r * np.sin(a))])
        bodies.append({"prob": 0.93, "width": w, "height": h,
                       "boxes": [[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), 0.93]],
                       "contours": [contour]})
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        packets += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(vf)]
    packets += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(None)]
    return packets, bodies, w, h


class Sources:
    """Replay agents (one thread per recording) that can be stopped and started again."""

    def __init__(self, recordings: list[tuple[Any, str, str]], ingest: str) -> None:
        self.recordings = recordings
        self.ingest = ingest
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=replay, daemon=True, kwargs=dict(
            rec=rec, kind=kind, stream=stream, connect=self.ingest, speed=SPEED, chunk_ms=100.0,
            loop=True, stop=self.stop_event, linger_s=0.2)) for rec, kind, stream in self.recordings]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)


@dataclasses.dataclass
class Live:
    ingest: str
    publish: str
    extra: str
    http_port: int
    engines: list[Engine]
    viewers: list[ViewerThread]
    has_pcg: bool
    sources: Sources
    page: Any
    pub: zmq.Socket
    pub_lock: threading.Lock
    beats: list[dict[str, Any]]
    beats_lock: threading.Lock
    shots: Path
    seq: dict[str, int]

    def state(self) -> dict[str, Any]:
        return self.page.evaluate("window.telediag.state()")

    def wait(self, js: str, timeout_s: float, what: str) -> None:
        try:
            self.page.wait_for_function(js, timeout=timeout_s * 1000, polling=100)
        except Exception as e:
            self.shot("failure")
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; state: "
                                 f"{ {k: v for k, v in self.state().items() if k != 'markers'} }") from e

    def shot(self, name: str) -> Path:
        p = self.shots / f"{name}.png"
        self.page.screenshot(path=str(p))
        return p

    def send(self, chunk: Chunk) -> None:
        seq = self.seq.get(chunk.topic, 0)
        self.seq[chunk.topic] = seq + 1
        with self.pub_lock:
            self.pub.send_multipart(encode(dataclasses.replace(chunk, seq=seq)))


def _until(cond: Callable[[], bool], timeout_s: float, step: Callable[[], None] | None = None) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if step is not None:
            step()
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: the viewer tests need `apt-get install -y chromium` "
                    "(and `pip install playwright`, never `playwright install`)")
    from playwright.sync_api import sync_playwright

    shared = data_dir() if data_dir().is_dir() else None
    art = os.environ.get("TELEDIAG_ARTIFACTS")
    shots = Path(art) / "viewer" if art else tmp_path_factory.mktemp("viewer_screens")
    shots.mkdir(parents=True, exist_ok=True)
    ingest, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    extra = f"tcp://127.0.0.1:{free_port()}"
    engine = _engine(ingest, publish)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(extra)
    http_port = free_port()
    viewer = ViewerThread([publish, extra], port=http_port)
    viewer.start()

    stop = threading.Event()
    beats: list[dict[str, Any]] = []
    beats_lock = threading.Lock()
    sub = Subscriber(publish, topics=["beats/bed-1/"])
    assert sub.wait_connected(10), "no stats from the engine"

    def collect() -> None:
        while not stop.is_set():
            c = sub.recv(timeout_s=0.1)
            if c is not None and c.kind == "beats":
                with beats_lock:
                    beats.extend(c.body["beats"])

    threads = [threading.Thread(target=collect, daemon=True)]
    recordings = [(read_wfdb(data_path("mitdb119_5min")), "ecg", "bed-1/ecg")]
    has_pcg = shared is not None and (shared / "pcg2016" / "training-a" / "a0001.hea").exists()
    if has_pcg:
        assert shared is not None
        rec2 = read_wfdb(shared / "pcg2016" / "training-a" / "a0001")
        recordings += [(rec2.select([0]), "pcg", "bed-2/pcg"), (rec2.select([1]), "ecg", "bed-2/ecg")]
    sources = Sources(recordings, ingest)
    packets, bodies, vw, vh = _endoscopy_clip(shared)
    lock = threading.Lock()
    seqs: dict[str, int] = {}

    def video() -> None:
        i, t0 = 0, time.time_ns()
        while not stop.wait(0.1):
            pkt, key = packets[i % len(packets)]
            t = t0 + i * 100_000_000
            for c in (Chunk.video_packet("room-3/endo", 0, t, pkt, VideoSpec("h264", vw, vh, "yuv420p", 10.0, key)),
                      Chunk.record("polyp", "room-3/endo", 0, t, bodies[i % len(bodies)])):
                s = seqs.get(c.topic, 0)
                seqs[c.topic] = s + 1
                with lock:
                    pub.send_multipart(encode(dataclasses.replace(c, seq=s)))
            i += 1

    threads.append(threading.Thread(target=video, daemon=True))
    for t in threads:
        t.start()
    sources.start()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000,
                                     chromium_sandbox=False)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{http_port}/", timeout=15_000)
        lv = Live(ingest, publish, extra, http_port, [engine], [viewer], has_pcg, sources, page, pub, lock,
                  beats, beats_lock, shots, {})
        try:
            yield lv
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            try:
                final = lv.shot("final")
                out = Path("/tmp/viewer_screens")
                out.mkdir(exist_ok=True)
                for p in shots.glob("*.png"):
                    shutil.copy(p, out / p.name)
                shutil.copy(final, out / "final.png")
            finally:
                browser.close()
                stop.set()
                sources.stop()
                for t in threads:
                    t.join(5)
                sub.close()
                lv.viewers[-1].stop()
                lv.engines[-1].stop()
                lv.engines[-1].join(10)
                pub.close(0)
                ctx.term()


ECG = "ecg/bed-1/ecg/filtered"


def test_page_loads_and_the_ecg_moves(live: Live) -> None:
    live.wait(f"() => {{ const s = window.telediag.state(); return s.connected && s.streams['{ECG}'] "
              f"&& s.streams['{ECG}'].head_ns !== null; }}", 20, "the bed-1 ECG stream")
    s1 = live.state()
    a = live.shot("ecg_1").read_bytes()
    time.sleep(1.0)
    s2 = live.state()
    b = live.shot("ecg_2").read_bytes()
    e1, e2 = s1["streams"][ECG], s2["streams"][ECG]
    assert e1["rate_hz"] == 360 and e1["channels"] == ["MLII", "V1"]
    assert "bed-1" in s2["patients"]
    assert e2["received"] > e1["received"] and e2["drawn"] > e1["drawn"]
    # the strip scrolls at the replay speed: about SPEED s of source time per second of wall time
    advance_s = (e2["head_ns"] - e1["head_ns"]) / 1e9
    assert 0.3 * SPEED < advance_s < 3 * SPEED, advance_s
    assert a != b, "two screenshots 1 s apart are identical: the page does not move"
    assert s2["frames"] > s1["frames"] + 10  # requestAnimationFrame keeps drawing


def test_beat_markers_are_the_published_beats(live: Live) -> None:
    live.wait("() => (window.telediag.state().markers['bed-1/ecg'] || []).length >= 12", 20, "12 beat markers")
    time.sleep(0.5)
    marks = live.state()["markers"]["bed-1/ecg"]
    with live.beats_lock:
        published = sorted(live.beats, key=lambda b: b["t_ns"])
    pub_t = np.array([b["t_ns"] for b in published], dtype=np.float64)
    assert len(pub_t) >= len(marks) - 2
    for m in marks:  # every marker sits at a published beat's exact time and sample
        i = int(np.argmin(np.abs(pub_t - m["t_ns"])))
        assert abs(pub_t[i] - m["t_ns"]) < 2000, (m, published[i])  # JS doubles: ~256 ns resolution
        assert m["sample"] == published[i]["sample"]
    lo, hi = marks[0]["t_ns"], marks[-1]["t_ns"]
    between = [b for b in published if lo - 2000 <= b["t_ns"] <= hi + 2000]
    assert len(between) == len(marks), "beats published in the page's time span are missing on the page"
    st = live.state()
    head = st["streams"][ECG]["head_ns"]
    visible = [m for m in st["markers"]["bed-1/ecg"] if head - 8e9 <= m["t_ns"] <= head]
    assert visible, "no beat marker inside the visible 8 s strip"
    hr = st["hr"]["bed-1/ecg"]
    assert hr is not None and 30 < hr < 200
    shown = live.page.locator(".row.ecg .big").first.text_content()
    assert shown == str(round(hr)) or abs(int(shown) - hr) <= 2  # may have ticked since


def test_alarm_banner_appears_and_clears(live: Live) -> None:
    onset = time.time_ns()

    def send(state: str) -> Callable[[], None]:
        return lambda: live.send(Chunk.record(
            "alarm", "bed-1/ecg", 0, onset, {"type": "asystole", "state": state, "onset_ns": onset}))

    shown = "() => [...document.querySelectorAll('section.patient[data-id=\"bed-1\"] .alarm')]" \
            ".some(d => d.textContent.startsWith('ASYSTOLE'))"
    assert _until(lambda: live.page.evaluate(shown), 10, send("on")), "no ASYSTOLE banner"
    st = live.state()
    (al,) = [a for a in st["alarms"] if a["type"] == "asystole"]
    assert al["onset_ns"] == pytest.approx(onset, abs=2000) and al["priority"] == "high"
    assert "alarming" in (live.page.locator('section.patient[data-id="bed-1"]').get_attribute("class") or "")
    live.shot("alarm")
    assert _until(lambda: not live.page.evaluate(shown), 10, send("off")), "the banner did not clear"


def test_heart_sounds_and_video_panels(live: Live) -> None:
    live.wait("() => { const s = window.telediag.state(); const v = s.video['room-3/endo']; "
              "return v && v.frames >= 5 && s.polyp['room-3/endo']; }", 20, "video frames with a polyp overlay")
    st = live.state()
    p = st["polyp"]["room-3/endo"]
    assert p["prob"] == pytest.approx(0.93) and len(p["boxes"]) == 1 and len(p["contours"]) == 1
    x0, y0, x1, y1, _ = p["boxes"][0]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    if live.has_pcg:  # real heart sounds through the engine's PCG stage
        live.wait("() => { const s = window.telediag.state(); return s.streams['pcg/bed-2/pcg/filtered'] "
                  "&& (s.segments['bed-2/pcg'] || 0) > 4; }", 30, "heart sounds with S1/S2 segments")
        pcg = live.state()["streams"]["pcg/bed-2/pcg/filtered"]
        assert pcg["rate_hz"] == 500  # 1 kHz filtered audio, min/max-decimated for display
    live.page.locator(".row.video").first.scroll_into_view_if_needed()
    live.shot("all_panels")
    time.sleep(1.2)
    st = live.state()  # rendering cost with every panel on screen: reported, not asserted
    perf = {"fps": st["fps"], "draw_ms_per_frame": round(st["draw_ms"], 2), "panels": len(st["streams"]) + len(st["video"])}
    (live.shots / "perf.json").write_text(json.dumps(perf))
    print(f"viewer rendering: {perf}")


def test_reconnects_after_engine_restart(live: Live) -> None:
    # the engine drains its queues while sources still send, so the sources stop first and
    # start again (a new session, timestamps from now) once the new engine is up
    live.sources.stop()
    old = live.engines[-1]
    old.stop()
    old.join(10)
    before = live.state()["streams"][ECG]
    live.wait("() => window.telediag.state().engine_idle_s > 1.5", 10, "the bridge to notice the engine is gone")
    live.shot("engine_down")
    live.engines.append(_engine(live.ingest, live.publish))
    live.sources.start()
    live.wait(f"() => window.telediag.state().streams['{ECG}'].received > {before['received'] + 720}", 20,
              "ECG samples after the engine restart")
    live.wait("() => window.telediag.state().engine_idle_s < 1.5", 5, "engine statistics again")
    after = live.state()
    assert after["connected"]
    # the source restarted in the past of the previous (3x) timeline: the strip starts over
    assert after["streams"][ECG]["resets"] == before["resets"] + 1
    live.wait("() => (window.telediag.state().markers['bed-1/ecg'] || []).length >= 2", 15,
              "beat markers on the new timeline")
    marks = live.state()["markers"]["bed-1/ecg"]
    assert all(m["t_ns"] <= after["streams"][ECG]["end_ns"] + 1e9 for m in marks)


def test_reconnects_after_viewer_restart(live: Live) -> None:
    connects = live.state()["connects"]
    live.viewers[-1].stop()
    live.wait("() => !window.telediag.state().connected", 10, "the page to see the WebSocket close")
    live.shot("disconnected")
    v = ViewerThread([live.publish, live.extra], port=live.http_port)
    v.start()
    live.viewers.append(v)
    live.wait(f"() => window.telediag.state().connected && window.telediag.state().connects > {connects}", 20,
              "the page to reconnect")
    before = live.state()["streams"][ECG]["received"]
    live.wait(f"() => window.telediag.state().streams['{ECG}'].received > {before + 720}", 15,
              "ECG samples after the viewer restart")
