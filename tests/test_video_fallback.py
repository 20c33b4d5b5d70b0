"""A TEST-ONLY stand-in for the polyp model, and checks of it on the synthetic clips.

``FallbackRednessSegmenter`` is NOT a polyp model: it thresholds the green/red ratio, which
separates the synthetic generator's paler, more orange polyp from its red mucosa and nothing
else. It exists so the video chain (decode, latest-frame-wins, masks, overlays, CLI) can be
tested before and independently of ``telediag.models.polyp_seg``; it is registered under the
name ``test-fallback-redness`` and never used by the shipped configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from telediag.engine.stages.video import register_segmenter
from telediag.sources.synth_endoscopy import EndoscopySynth

FALLBACK_NAME = "test-fallback-redness"


@dataclass(frozen=True)
class FallbackResult:
    prob_map: NDArray[np.float32]
    mask: NDArray[np.bool_]
    polyp_probability: float
    boxes: list[list[float]]


class FallbackRednessSegmenter:
    """Green/red ratio threshold on a 4x-decimated frame; ``delay_s`` simulates model time."""

    delay_s = 0.0

    def predict(self, rgb: NDArray[np.uint8]) -> FallbackResult:
        if self.delay_s:
            time.sleep(self.delay_s)  # stands for ONNX Runtime, which also releases the GIL
        small = rgb[::4, ::4].astype(np.float32)
        ratio = small[..., 1] / (small[..., 0] + 1.0)
        prob = np.clip((ratio - 0.52) / 0.11, 0.0, 1.0).astype(np.float32)
        raw = (ratio > 0.575) & (ratio < 0.72) & (small.min(axis=-1) < 200)  # not highlights
        pad = np.pad(raw, 1)
        mask = raw & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]  # no speckle
        frac = float(mask.mean())
        boxes: list[list[float]] = []
        if frac > 0.002:
            ys, xs = np.nonzero(mask)
            boxes = [[xs.min() * 4.0, ys.min() * 4.0, xs.max() * 4.0 + 3, ys.max() * 4.0 + 3, 0.9]]
        return FallbackResult(prob, mask, min(1.0, frac * 50.0), boxes)


class SlowFallbackSegmenter(FallbackRednessSegmenter):
    delay_s = 0.12


register_segmenter(FALLBACK_NAME, FallbackRednessSegmenter)
register_segmenter(FALLBACK_NAME + "-slow", SlowFallbackSegmenter)


def iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def upscale(mask: NDArray[np.bool_], shape: tuple[int, int]) -> NDArray[np.bool_]:
    f = shape[0] // mask.shape[0]
    return np.repeat(np.repeat(mask, f, 0), f, 1)[: shape[0], : shape[1]]


def test_fallback_finds_the_synthetic_polyp() -> None:
    synth = EndoscopySynth(320, 240, 30.0, seed=3)
    seg = FallbackRednessSegmenter()
    scores = []
    for i in range(0, 300, 60):
        rgb, truth = synth.frame(i)
        r = seg.predict(rgb)
        scores.append(iou(upscale(r.mask, truth.shape), truth))
        assert r.polyp_probability > 0.5
    assert np.mean(scores) > 0.5, scores


def test_fallback_sees_no_polyp_in_plain_mucosa() -> None:
    synth = EndoscopySynth(320, 240, 30.0, seed=3, polyp=False)
    seg = FallbackRednessSegmenter()
    probs = [seg.predict(synth.frame(i)[0]).polyp_probability for i in range(0, 300, 60)]
    assert max(probs) < 0.5, probs
