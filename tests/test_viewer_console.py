"""The remote physician's console in a real headless Chromium (issue 20, issue 18's viewer bugs).

One synthetic real-time publisher (``viewer_feed.Feed``: what the engine publishes for two
patients, heart sounds for ``bed-2``, the engine's polyp overlay stream for ``room-3``), one
viewer, one browser page for the module; a second viewer with TLS + login for the access test.

* issue 18: the POLYP probability and the page's own overlay for ``video/<s>/annotated``;
* listening: a known tone burst goes source -> bridge -> page -> AudioWorklet -> stethoscope
  filters -> the page's output tap and is found there at its source time + the measured delay;
* review: 10 min ring, freeze, scroll, calipers, event list -> strip, ack / silence with who,
  IEC 60601-1-8 priority styles, colour-blind-safe beat shapes, keyboard;
* access: login form, per-patient filtering in the browser, refusals audited.

Needs Debian ``chromium`` and ``pip install playwright`` (never ``playwright install``).
Screenshots go to ``$TELEDIAG_ARTIFACTS/console`` (or a temporary folder) and ``/tmp/viewer_screens``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from viewer_feed import Feed

from telediag.transports.webauth import AccessConfig, make_self_signed
from telediag.transports.wire import Chunk
from telediag.viewer.server import ViewerThread

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--autoplay-policy=no-user-gesture-required"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


class Console:
    def __init__(self, page: Any, feed: Feed, viewer: ViewerThread, shots: Path, audit: Path) -> None:
        self.page, self.feed, self.viewer, self.shots, self.audit = page, feed, viewer, shots, audit

    def js(self, expr: str) -> Any:
        return self.page.evaluate(expr)

    def wait(self, js: str, timeout_s: float, what: str) -> None:
        try:
            self.page.wait_for_function(js, timeout=timeout_s * 1000, polling=100)
        except Exception as e:
            self.shot("failure")
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from e

    def shot(self, name: str) -> Path:
        p = self.shots / f"console_{name}.png"
        self.page.screenshot(path=str(p))
        return p

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit.read_text().splitlines()] if self.audit.exists() else []


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (and pip install playwright)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000, chromium_sandbox=False)
        yield b
        b.close()


@pytest.fixture(scope="module")
def console(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    art = os.environ.get("TELEDIAG_ARTIFACTS")
    shots = Path(art) / "console" if art else tmp_path_factory.mktemp("console_screens")
    shots.mkdir(parents=True, exist_ok=True)
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    feed = Feed(f"tcp://127.0.0.1:{free_port()}", patients=2, pcg_patients=(2,)).start()
    viewer = ViewerThread(feed.endpoint, port=0, audit=audit)
    url = viewer.start()
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, timeout=15_000)
    c = Console(page, feed, viewer, shots, audit)
    try:
        c.wait("() => window.telediag.state().patients.includes('bed-2')", 20, "the synthetic patients")
        yield c
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        try:
            out = Path("/tmp/viewer_screens")
            out.mkdir(exist_ok=True)
            for p in shots.glob("*.png"):
                shutil.copy(p, out / p.name)
        finally:
            context.close()
            viewer.stop()
            feed.stop()


def _pixel(c: Console, sel: str, fx: float, fy: float) -> list[int]:
    return c.js(f"""() => {{ const cv = document.querySelector({json.dumps(sel)}); const ctx = cv.getContext("2d");
        return Array.from(ctx.getImageData(Math.round(cv.width * {fx}), Math.round(cv.height * {fy}), 1, 1).data); }}""")


def test_polyp_probability_and_page_overlay_for_the_engine_overlay_stream(console: Console) -> None:
    """Issue 18: the panel of video/room-3/endo/annotated reads polyp/room-3/endo (0.99)
    and the page draws its own mask overlay (failed before: '--' and no overlay)."""
    c = console
    c.wait("() => { const v = window.telediag.state().video['room-3/endo/annotated']; "
           "return v && v.frames >= 3 && v.overlays > 5; }", 20, "video frames with the page's overlay")
    v = c.js("() => window.telediag.state().video['room-3/endo/annotated']")
    assert v["ann_stream"] == "room-3/endo" and v["prob_text"] == "99%"
    sel = 'section.patient[data-id="room-3"] .row.video canvas'
    c.page.locator(sel).scroll_into_view_if_needed()
    r, g, _, _ = _pixel(c, sel, 0.5, 0.5)      # the polyp's centre: pink (220, 140, 150) under a green mask
    assert g > r, f"no mask overlay at the polyp centre: rgb {r, g}"
    c.shot("polyp")
    c.page.keyboard.press("o")                   # overlay off: the frame's own colour again
    time.sleep(0.3)
    r2, g2, _, _ = _pixel(c, sel, 0.5, 0.5)
    c.page.keyboard.press("o")
    assert r2 > g2, f"overlay toggle did nothing: rgb {r2, g2}"


def test_listen_tone_burst_reaches_the_page_output_at_the_right_time(console: Console) -> None:
    c = console
    card = 'section.patient[data-id="bed-2"]'
    c.page.locator(f"{card} .amode").select_option("bell")
    c.page.locator(f"{card} .b-listen").click()
    c.wait("() => { const a = window.telediag.state().audio; return a.state === 'running' && a.delays > 20; }", 20,
           "audio playing with delay reports")
    st = c.js("() => window.telediag.state().audio")
    assert st["listening"] == "bed-2/pcg" and st["mode"] == "bell"
    assert [f[1] for f in st["filters"]] == pytest.approx([20, 20, 200, 200])
    c.feed.quiet_pcg = True
    time.sleep(2.5)                                   # the AGC settles on the faint noise
    c.js("() => window.telediag.audio.tapArm(true)")
    burst_ns = time.time_ns() + 1_500_000_000
    c.feed.burst_at_ns = burst_ns
    while time.time_ns() < burst_ns + 1_500_000_000:
        time.sleep(0.1)
    found = c.js(f"() => window.telediag.audio.tapFind(0.3, {burst_ns / 1e6 - 800})")
    st = c.js("() => window.telediag.state().audio")
    c.js("() => window.telediag.audio.tapArm(false)")
    c.feed.quiet_pcg = False
    c.feed.burst_at_ns = None
    c.shot("listening")
    print(f"listen: delay p50 {st['delay_p50_ms']:.1f} ms p95 {st['delay_p95_ms']:.1f} ms, "
          f"underruns {st['underruns']}, burst found {found}; {st}")
    assert found is not None, "the tone burst never reached the page's output"
    near = c.js(f"() => window.telediag.audio.delayNear({found['wall_ms']})")   # the delay measured then
    assert near is not None
    assert abs(found["wall_ms"] - (burst_ns / 1e6 + near)) < 30, (found["wall_ms"] - burst_ns / 1e6, near)
    assert 135 < found["freq_hz"] < 165, found
    assert 0 < st["delay_p50_ms"] < 1000, st
    lines = [x for x in c.audit_lines() if x["action"] == "listen"]
    assert lines and lines[-1]["what"] == "bed-2/pcg" and lines[-1]["patient"] == "bed-2"
    c.page.locator(f"{card} .b-listen").click()      # stop
    c.wait("() => window.telediag.state().audio.listening === null", 5, "listening to stop")


def test_review_ring_freeze_scroll_calipers_events_and_alarm_handling(console: Console) -> None:
    c = console
    # 11 minutes of history for a new patient: the page keeps >= 10 min
    c.feed.ecg_history("bed-9", 660.0)
    c.wait("() => { const r = window.telediag.review('bed-9'); return r && r.span_s >= 600; }", 20,
           "10 minutes of bed-9 in the page")
    c.page.locator('section.patient[data-id="bed-9"]').focus()
    c.page.keyboard.press("Space")
    c.page.keyboard.press("Home")
    r9 = c.js("() => window.telediag.review('bed-9')")
    assert r9["frozen"] and r9["span_s"] >= 600
    c.page.keyboard.press("End")
    assert not c.js("() => window.telediag.review('bed-9')")["frozen"]

    card = 'section.patient[data-id="bed-1"]'
    cv = c.page.locator(f"{card} .row.ecg canvas")
    cv.scroll_into_view_if_needed()
    box = cv.bounding_box()
    assert box is not None
    c.page.mouse.click(box["x"] + 300, box["y"] + 100)
    c.page.mouse.click(box["x"] + 500, box["y"] + 100)
    rv = c.js("() => window.telediag.review('bed-1')")
    assert rv["frozen"] and len(rv["calipers"]) == 2
    px_per_ms = max(2, box["width"] / 200) * 25 / 1000       # 25 mm/s on the page's own mm
    d = abs(rv["calipers"][1] - rv["calipers"][0])
    assert d == pytest.approx(200 / px_per_ms, abs=2 / px_per_ms)
    assert f"{d:.0f} ms" in rv["caliper_text"] and f"{60000 / d:.1f} bpm" in rv["caliper_text"]
    c.page.keyboard.press("ArrowLeft")
    assert c.js("() => window.telediag.review('bed-1')")["view_end_ms"] == pytest.approx(rv["view_end_ms"] - 2000, abs=1)
    c.shot("calipers")
    c.page.keyboard.press("End")

    # alarms: priorities, technical, event list -> strip, ack and silence with who/when
    onset = time.time_ns() - 3_000_000_000
    for typ, extra in (("asystole", {}), ("afib", {}), ("leads_off", {"category": "technical", "lead": "V1"}),
                       ("ectopy", {})):
        c.feed.send(Chunk.record("alarm", "bed-1/ecg", 0, onset, {"type": typ, "state": "on", "onset_ns": onset, **extra}))
    c.wait(f"() => document.querySelectorAll('{card} .alarm').length === 4", 10, "four alarm banners")
    styles = c.js(f"""() => [...document.querySelectorAll('{card} .alarm')].map(d => {{ const s = getComputedStyle(d);
        return [d.dataset.type, d.dataset.priority, d.classList.contains('technical'), s.animationName, s.animationDuration,
                s.backgroundColor, d.querySelector('.tag').textContent]; }})""")
    by = {s[0]: s for s in styles}
    assert [s[0] for s in styles] == ["asystole", "afib", "leads_off", "ectopy"]   # high, medium, technical, low
    assert by["asystole"][1:5] == ["high", False, "flash-high", "0.5s"]          # 2 Hz
    assert by["afib"][1:5] == ["medium", False, "flash-med", "1.667s"]          # 0.6 Hz
    assert by["ectopy"][1:4] == ["low", False, "none"]                            # steady
    assert by["leads_off"][2] and by["leads_off"][6].startswith("TECH")
    assert by["asystole"][5] != by["afib"][5] != by["ectopy"][5]
    c.shot("alarms")
    c.page.locator(f"{card} .events button").first.click()
    rv = c.js("() => window.telediag.review('bed-1')")
    assert rv["frozen"] and rv["mark"] == pytest.approx(onset / 1e6, abs=1)
    assert rv["view_end_ms"] - onset / 1e6 == pytest.approx(3200, abs=1)
    c.shot("event_jump")
    c.page.locator(f'{card} .alarm[data-type="asystole"] .b-ack').click()
    c.wait("() => (window.telediag.acks()['bed-1/ecg:asystole'] || {}).acked_by === 'local'", 5, "the ack")
    c.wait(f"() => document.querySelector('{card} .alarm[data-type=asystole]').classList.contains('acked')", 5,
           "the acknowledged banner")
    c.page.locator(card).focus()
    c.page.keyboard.press("s")
    c.wait("() => Object.values(window.telediag.acks()).filter(a => a.silenced_by === 'local').length === 4", 5,
           "silence on every alarm")
    ack = c.js("() => window.telediag.acks()['bed-1/ecg:asystole']")
    assert ack["silenced_until_ns"] - ack["silenced_at_ns"] == 120_000_000_000
    assert abs(ack["acked_at_ns"] - time.time_ns()) < 30e9
    acts = [(x["action"], x["what"]) for x in c.audit_lines()]
    assert ("ack", "bed-1/ecg:asystole") in acts and ("silence", "bed-1/ecg:afib") in acts
    c.shot("acked")
    for typ in ("asystole", "afib", "leads_off", "ectopy"):
        c.feed.send(Chunk.record("alarm", "bed-1/ecg", 0, onset, {"type": typ, "state": "off", "onset_ns": onset,
                                                                  **({"category": "technical", "lead": "V1"} if typ == "leads_off" else {})}))
    c.wait(f"() => document.querySelectorAll('{card} .alarm').length === 0", 10, "alarms to clear")
    c.page.keyboard.press("End")
    # colour-blind-safe beat classes: shape + letter per class; unusable beats flagged
    marks = c.js("() => window.telediag.state().markers['bed-1/ecg']")
    assert {m["label"] for m in marks} >= {"N", "V", "S"}


def test_login_and_per_patient_access_in_the_browser(console: Console, browser: Any, tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", ["127.0.0.1"], days=2)
    acc = AccessConfig()
    acc.set_user("dr-a", password="pw-a", patients=["bed-1"])
    acc.save(tmp_path / "access.toml")
    audit = tmp_path / "audit.jsonl"
    v = ViewerThread(console.feed.endpoint, port=0, tls_cert=cert, tls_key=key, access=tmp_path / "access.toml",
                     audit=audit)
    url = v.start()
    ctx = browser.new_context(viewport={"width": 1200, "height": 800}, ignore_https_errors=True)
    try:
        page = ctx.new_page()
        page.goto(url)
        assert page.url.endswith("/login")
        page.fill("input[name=user]", "dr-a")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        assert "Wrong user name or password" in page.content()
        page.fill("input[name=user]", "dr-a")
        page.fill("input[name=password]", "pw-a")
        page.click("button[type=submit]")
        page.wait_for_function("() => window.telediag && window.telediag.state().patients.includes('bed-1')",
                               timeout=20_000, polling=100)
        time.sleep(1.5)
        st = page.evaluate("() => window.telediag.state()")
        assert st["user"] == "dr-a" and st["patients"] == ["bed-1"], st["patients"]
        page.evaluate("() => window.telediag.sendOp({op: 'listen', stream: 'bed-2/pcg', on: true})")
        page.wait_for_function("() => window.telediag.refused().length > 0", timeout=5000)
        assert "bed-2" in page.evaluate("() => window.telediag.refused()[0].reason")
        page.screenshot(path=str(console.shots / "console_login_access.png"))
    finally:
        ctx.close()
        v.stop()
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    acts = {(x["user"], x["action"], x["ok"]) for x in lines}
    assert ("dr-a", "login", False) in acts and ("dr-a", "login", True) in acts and ("dr-a", "view", True) in acts
    assert any(x["action"] == "refused" and x["patient"] == "bed-2" and x["user"] == "dr-a" for x in lines)
