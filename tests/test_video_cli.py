"""``telediag analyze image`` and ``telediag analyze video`` (with the test-only stand-in model)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from test_video_fallback import FALLBACK_NAME

from telediag.cli import main
from telediag.engine.stages.video import rle_decode
from telediag.evaluation.image_cli import read_image
from telediag.sources.synth_endoscopy import EndoscopySynth, write_clip


def write_rgb(path: Path, rgb: np.ndarray, codec: str) -> None:
    cc: Any = av.CodecContext.create(codec, "w")
    cc.width, cc.height = rgb.shape[1], rgb.shape[0]
    cc.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    if codec == "mjpeg":
        cc.time_base = Fraction(1, 25)
    cc.open()
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=cc.pix_fmt)
    path.write_bytes(b"".join(bytes(p) for p in cc.encode(frame)))


def test_analyze_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth = EndoscopySynth(240, 180, 30.0, seed=2)
    rgb, truth = synth.frame(10)
    write_rgb(tmp_path / "a.png", rgb, "png")
    write_rgb(tmp_path / "b.jpg", synth.frame(40)[0], "mjpeg")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)  # PNG is lossless
    out = tmp_path / "out"
    rc = main(["analyze", "image", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--out-dir", str(out),
               "--model", FALLBACK_NAME])
    assert rc == 0
    doc = json.loads((out / "a.json").read_text())
    assert doc["model"] == FALLBACK_NAME and doc["detected"] and doc["polyp_probability"] > 0.5
    assert (doc["width"], doc["height"]) == (240, 180) and len(doc["boxes"]) == 1
    mask = read_image(out / "a.mask.png")[..., 0]
    assert mask.shape == (180, 240) and set(np.unique(mask)) <= {0, 255}
    m = mask > 127
    assert (m & truth).sum() / (m | truth).sum() > 0.4
    small = rle_decode(doc["mask"]["rle"], (doc["mask"]["rows"], doc["mask"]["cols"]))
    assert abs(small.mean() - m.mean()) < 0.02
    assert (out / "b.json").exists() and (out / "b.mask.png").exists()
    assert "a.png: polyp probability" in capsys.readouterr().out


def test_analyze_image_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rc = main(["analyze", "image", str(tmp_path / "bad.png"), str(tmp_path / "none.png"), "--out-dir",
               str(tmp_path), "--model", FALLBACK_NAME])
    assert rc == 1
    text = capsys.readouterr().out
    assert "cannot decode image" in text and "not found" in text
    assert main(["analyze", "image", str(tmp_path / "bad.png"), "--model", "no-such-model"]) == 2


def test_analyze_video(tmp_path: Path) -> None:
    write_clip(tmp_path / "clip.mp4", 1.0, fps=20, width=160, height=120, seed=1, keyint=5)
    rc = main(["analyze", "video", str(tmp_path / "clip.mp4"), "--out-dir", str(tmp_path / "o"),
               "--model", FALLBACK_NAME])
    assert rc == 0
    lines = [json.loads(x) for x in (tmp_path / "o" / "clip.jsonl").read_text().splitlines()]
    assert [d["frame"] for d in lines] == list(range(20))
    assert lines[3]["time_s"] == pytest.approx(0.15)
    assert all(d["detected"] for d in lines)
    rc = main(["analyze", "video", str(tmp_path / "clip.mp4"), "--out-dir", str(tmp_path / "o2"), "--every", "4",
               "--max-frames", "3", "--model", FALLBACK_NAME])
    assert rc == 0
    lines = [json.loads(x) for x in (tmp_path / "o2" / "clip.jsonl").read_text().splitlines()]
    assert [d["frame"] for d in lines] == [0, 4, 8]
