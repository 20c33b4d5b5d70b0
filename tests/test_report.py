"""The teleconsultation report: the PDF rendered to PNG by poppler, the HTML in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from telediag.cli import main
from telediag.demo import data_path
from telediag.recorder import Recorder
from telediag.report.build import (
    MM,
    PAGE,
    STATEMENT,
    ecg_strip,
    most_irregular_minute,
)
from telediag.transports.wire import Chunk

T0 = 1_796_000_000_000_000_000
S = 1_000_000_000
FS = 250.0
CHROMIUM = "/usr/bin/chromium"


def _ecg(n_s: float, beat_s: list[float]) -> np.ndarray:
    """A flat line with a 1.2 mV, 40 ms triangle per beat (physical units, mV)."""
    x = np.zeros(int(n_s * FS))
    k = np.concatenate([np.linspace(0, 1.2, 6), np.linspace(1.2, -0.2, 5)[1:]])
    for t in beat_s:
        i = int(t * FS)
        x[i : i + k.size] += k[: max(0, min(k.size, x.size - i))]
    return x


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rec")
    rng = np.random.default_rng(5)
    beats_s = list(np.cumsum(np.r_[0.4, np.full(60, 0.8), 0.8 + rng.uniform(-0.3, 0.3, 80), np.full(60, 0.8)]))
    beats_s = [t for t in beats_s if t < 178]
    x = _ecg(180, beats_s)
    rec = Recorder(out)
    meta = {"patient": "MRN-0042", "encounter": "ENC-7"}
    for k in range(180):
        rec.add(Chunk.signal("ecg", "bed-4/ecg/filtered", k, T0 + k * S, x[int(k * FS):int((k + 1) * FS), None],
                             FS, ["II"], ["mV"], meta=meta))
    labels = ["V" if i % 10 == 5 else "N" for i in range(len(beats_s))]
    for i, (t, lab) in enumerate(zip(beats_s, labels, strict=True)):
        rec.add(Chunk.record("beats", "bed-4/ecg", i, T0 + int(t * S), {"beats": [
            {"sample": int(t * FS), "t_ns": T0 + int(t * S), "label": lab, "probs": {lab: 0.9}}]}, meta=meta))
        if i:
            rec.add(Chunk.record("hr", "bed-4/ecg", i, T0 + int(t * S), {"readings": [
                {"t_ns": T0 + int(t * S), "hr_bpm": 60.0 / (t - beats_s[i - 1])}]}, meta=meta))
    al = [{"type": "tachy", "state": "on", "onset_ns": T0 + 20 * S},
          {"type": "tachy", "state": "off", "onset_ns": T0 + 20 * S, "end_ns": T0 + 30 * S},
          {"type": "afib", "state": "on", "onset_ns": T0 + 60 * S},
          {"type": "afib", "state": "off", "onset_ns": T0 + 60 * S, "end_ns": T0 + 120 * S}]
    for i, a in enumerate(al):
        rec.add(Chunk.record("alarm", "bed-4/ecg", i, a["onset_ns"], a, meta=meta))
    rec.add(Chunk.record("quality", "bed-4/ecg", 0, T0, {"hop_s": 1.0, "channels": ["II"], "blocks": [
        {"t_ns": T0 + k * S, "usable": [k % 10 != 0]} for k in range(180)]}))
    # heart sounds: 10 s of noise bursts at S1/S2
    pcg = rng.normal(0, 0.05, int(10 * 1000)).astype(np.float32)
    segs = []
    for c in range(12):
        b = 0.2 + c * 0.8
        for st, a, z in (("S1", 0, 0.1), ("systole", 0.1, 0.3), ("S2", 0.3, 0.4), ("diastole", 0.4, 0.8)):
            segs.append({"start_ns": T0 + int((b + a) * S), "end_ns": T0 + int((b + z) * S), "state": st})
            if st in ("S1", "S2"):
                i0, i1 = int(round((b + a) * 1000)), int(round((b + z) * 1000))
                pcg[i0:i1] += rng.normal(0, 1.0, i1 - i0).astype(np.float32)
    for k in range(10):
        rec.add(Chunk.signal("pcg", "bed-5/pcg/filtered", k, T0 + k * S, pcg[k * 1000:(k + 1) * 1000, None], 1000.0,
                             ["PCG"], [""]))
    rec.add(Chunk.record("segments", "bed-5/pcg", 0, T0, {"segments": segs}))
    rec.add(Chunk.record("quality", "bed-5/pcg", 0, T0, {"type": "pcg_abnormal", "start_ns": T0, "end_ns": T0 + 10 * S,
                                                         "abnormal_prob": 0.82, "label": "abnormal"}))
    rec.add(Chunk.record("hr", "bed-5/pcg", 0, T0 + 8 * S, {"t_ns": T0 + 8 * S, "heart_rate_bpm": 75.0, "quality": 0.9}))
    # endoscopy: the bundled clip stands in for the annotated video, with detections on two stretches
    rec.add(Chunk.record("event", "room-1/endo", 0, T0, {"type": "stream_opened", "stream": "room-1/endo",
                                                         "kind": "video"}))
    for i in range(50):
        p = 0.9 if 10 <= i < 20 or 35 <= i < 40 else 0.1
        rec.add(Chunk.record("polyp", "room-1/endo", i, T0 + i * 40_000_000,
                             {"polyp_probability": p, "detected": p > 0.5, "analysed_at": 0}))
    rec.close()
    shutil.copy(data_path("endoscopy_synth.mp4"), out / "room-1_endo_annotated.mp4")
    (out / "room-1_endo_annotated.frames.jsonl").write_text(
        "".join(f'{{"t0_ns": {T0 + i * 40_000_000}, "seq": {i}, "keyframe": {str(i == 0).lower()}}}\n' for i in range(50)))
    return out


def test_strip_is_25_mm_per_s_and_10_mm_per_mv() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=PAGE)
    ax = ecg_strip(fig, (15, 50, 250, 30), np.sin(np.arange(2500) / 30.0), FS, mv_span=3.0)
    pos = ax.get_position()
    w_mm, h_mm = pos.width * PAGE[0] / MM, pos.height * PAGE[1] / MM
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert w_mm / (x1 - x0) == pytest.approx(25.0) and h_mm / (y1 - y0) == pytest.approx(10.0)
    plt.close(fig)


def test_most_irregular_minute_finds_the_irregular_stretch() -> None:
    t = np.cumsum(np.r_[np.full(80, 0.8), 0.8 + np.resize([0.25, -0.25], 80), np.full(80, 0.8)])
    start, rmssd = most_irregular_minute([{"t_ns": T0 + int(v * S)} for v in t], T0, T0 + int(t[-1] * S))
    assert 60 <= (start - T0) / S <= 110 and rmssd > 300


def _pdftoppm() -> str:
    exe = shutil.which("pdftoppm")
    assert exe, "pdftoppm missing: apt-get install -y poppler-utils (make sysdeps)"
    return exe


def test_pdf_pages_and_figure_content(recording: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    assert main(["report", str(recording), "--out", str(pdf)]) == 0
    subprocess.run([_pdftoppm(), "-r", "40", "-png", str(pdf), str(tmp_path / "p")], check=True)
    pages = sorted(tmp_path.glob("p-*.png"))
    # summary, ECG trends, alarm strips, irregular minute, heart sounds, endoscopy, models
    assert len(pages) == 7
    text = subprocess.run([shutil.which("pdftotext") or "pdftotext", "-layout", str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout
    # only the ECG source sent a patient: the header says whose each stream is (never one for all)
    assert "Patients: bed-4/ecg MRN-0042; bed-5/pcg not identified; room-1/endo not identified" in text
    assert "Decision support, not a diagnosis" in text
    assert "AF burden" in text and "33.3 % of 0:03:00 monitored, 1 episode(s)" in text
    assert "Ectopy burden" in text and "alarm tachy" in text and "alarm afib" in text
    assert "abnormal in 1 of 1 windows; mean P(abnormal) 0.82" in text
    assert "II usable 90 %" in text
    assert "25 mm/s, 10 mm/mV" in text and "most irregular minute" in text
    from PIL import Image

    def colour_fraction(page: Path, rgb: tuple[int, int, int], tol: int = 30) -> float:
        a = np.asarray(Image.open(page).convert("RGB")).astype(int)
        return float((np.abs(a - np.array(rgb)).sum(axis=2) < tol).mean())

    strips = pages[2]
    assert colour_fraction(strips, (0xf7, 0xc6, 0xc6)) > 0.02  # the pink 1-mm grid
    assert colour_fraction(strips, (0x11, 0x11, 0x11), tol=120) > 0.002  # the trace
    assert colour_fraction(pages[0], (0xf7, 0xc6, 0xc6)) < 0.001  # none on the summary
    endo = np.asarray(Image.open(pages[5]).convert("RGB")).astype(int)
    h = endo.shape[0]
    thumbs = endo[int(0.45 * h):int(0.9 * h)]
    assert ((thumbs[..., 0] > 120) & (thumbs[..., 1] < 110)).mean() > 0.02  # reddish endoscopy thumbnails


def test_html_renders_in_headless_chromium(recording: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y chromium (make sysdeps)")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    bundle = tmp_path / "bundle" / "bundle.json"  # the report links the session's bundle and EDF+ files
    bundle.parent.mkdir()
    assert main(["fhir", str(recording), "--out", str(bundle)]) == 0
    shutil.copy(bundle, recording / "bundle.json")
    try:
        assert main(["report", str(recording), "--out", str(out)]) == 0
    finally:
        (recording / "bundle.json").unlink()
    n = 7  # summary, ECG trends, alarm strips, irregular minute, heart sounds, endoscopy, models
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, timeout=30_000,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(out.as_uri(), timeout=15_000)
            assert page.locator("#statement").inner_text() == STATEMENT
            assert page.locator("section").count() == n == 7
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
            assert len(sizes) == n and all(c and w > 1000 for c, w in sizes)
            body = page.locator("body").inner_text()
            assert "MRN-0042" in page.locator("section#s0 img").get_attribute("alt") or "Summary" in body
            assert "ECG bed-4/ecg: AF burden" in body and "33.3 %" in body
            link = page.locator("a", has_text="bundle.json")
            assert link.count() == 1 and (out.parent / link.get_attribute("href")).resolve() == (recording / "bundle.json")
        finally:
            browser.close()
