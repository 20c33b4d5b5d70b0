"""The polyp stage when it cannot keep up: lower input size, every second frame, said so.

The stage's clock is replaced by a fake one that only the stand-in segmenter advances (by a
cost per call that scales with the input size's pixel count), so the adaptation is tested
deterministically, without wall-clock timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from telediag.engine.stage import StreamSpec
from telediag.engine.stages.video import PolypSegment, register_segmenter
from telediag.errors import ConfigError
from telediag.transports.outputs import check_body
from telediag.transports.wire import Chunk, VideoSpec

W, H, FPS = 160, 120, 30.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Res:
    prob_map: np.ndarray
    mask: np.ndarray
    polyp_probability: float
    boxes: list[list[float]]
    input_size: int


@dataclass
class CostlySegmenter:
    """Stand-in: a fixed square mask; each call costs ``ms`` x (size / 256)^2 of fake time."""

    ms: float = 10.0
    sizes: tuple[int, ...] = (256, 224, 192)
    clock: FakeClock = field(default_factory=FakeClock)
    calls: list[int] = field(default_factory=list)

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return self.sizes

    def predict(self, rgb: np.ndarray, input_size: int | None = None) -> Res:
        s = input_size or self.sizes[0]
        self.calls.append(s)
        self.clock.t += self.ms * (s / self.sizes[0]) ** 2 / 1e3
        m = np.zeros(rgb.shape[:2], bool)
        m[40:80, 60:100] = True
        return Res(m.astype(np.float32), m, 0.9, [[60, 40, 100, 80, 0.9]], s)


class SingleSize(CostlySegmenter):
    """A segmenter with one input size (no ``input_sizes``): only frame skipping is left."""

    @property
    def input_sizes(self) -> tuple[int, ...]:  # type: ignore[override]
        return ()

    def predict(self, rgb: np.ndarray, input_size: int | None = None) -> Res:
        assert input_size is None  # never asked for a size it cannot do
        return super().predict(rgb, None)


_current: dict[str, Any] = {}
register_segmenter("test-costly", lambda: _current["seg"])


def make_stage(seg: CostlySegmenter, **params: Any) -> PolypSegment:
    _current["seg"] = seg
    st = PolypSegment(PolypSegment.Params(model="test-costly", **params))
    st.open(StreamSpec("t/endo", "video", 0.0))
    st._clock = seg.clock
    return st


def frame(seq: int) -> Chunk:
    rgb = np.full((H, W, 3), 90, np.uint8)
    return Chunk(kind="video", stream="t/endo", seq=seq, t0_ns=1_000_000 + seq * 33_333_333, data=rgb,
                 video=VideoSpec("raw", W, H, "rgb24", FPS, keyframe=True), meta={})


def run(st: PolypSegment, seqs: range | list[int]) -> list[tuple[dict[str, Any], Chunk | None]]:
    out = []
    for q in seqs:
        o = st.process(frame(q))
        assert len(o.records) == 1  # a record for every frame, analysed or not
        check_body("polyp", o.records[0].body)  # the published contract (OUTPUTS.md schema)
        out.append((o.records[0].body, o.signal))
    return out


def test_keeps_up_every_frame_full_size() -> None:
    seg = CostlySegmenter(ms=10.0)
    res = run(make_stage(seg), range(60))
    assert all(b["analysed_at"] == b["t0_ns"] and not b["reused"] for b, _ in res)
    assert {b["input_size"] for b, _ in res} == {256}
    assert all(b["analyse_every"] == 1 and b["target_fps"] == 30.0 for b, _ in res)
    assert seg.calls == [256] * 60


def test_behind_lowers_the_input_size_and_says_so() -> None:
    seg = CostlySegmenter(ms=40.0)  # 256: 40 ms > 0.8 x 33 ms; 192: 22.5 ms fits
    res = run(make_stage(seg), range(60))
    tail = [b for b, _ in res[10:]]
    assert {b["input_size"] for b in tail} == {192}
    assert all(not b["reused"] and b["analysed_at"] == b["t0_ns"] for b in tail)  # still every frame
    assert res[0][0]["input_size"] == 256


def test_far_behind_analyses_every_second_frame_and_reuses_the_overlay() -> None:
    seg = CostlySegmenter(ms=80.0)  # even 192 every frame (45 ms) is over budget
    st = make_stage(seg)
    res = run(st, range(60))
    tail = res[20:]
    assert {b["analyse_every"] for b, _ in tail} == {2}
    fresh = [b for b, _ in tail if not b["reused"]]
    reused = [b for b, _ in tail if b["reused"]]
    assert len(fresh) == len(reused) == 20  # alternate
    for b in reused:  # said so: the analysis it shows is the previous frame's
        assert b["analysed_seq"] == b["seq"] - 1 and b["analysed_at"] == b["t0_ns"] - 33_333_333
        assert b["boxes"] == [[60.0, 40.0, 100.0, 80.0, 0.9]] and b["detected"]
    first = tail[0][1]
    assert first is not None and (first.data != 90).any()  # overlay drawn (outline, box, bar)
    for b, sig in tail:  # the annotated stream gets every frame, the same overlay on each
        assert sig is not None and sig.seq == b["seq"]
        np.testing.assert_array_equal(sig.data, first.data)  # identical frames, same overlay
    assert len(seg.calls) < 45


def test_recovers_when_the_model_gets_fast_again() -> None:
    seg = CostlySegmenter(ms=80.0)
    st = make_stage(seg, recover_frames=10)
    run(st, range(40))
    assert st.ladder[st.level][1] == 2
    seg.ms = 5.0
    res = run(st, range(40, 200))
    assert res[-1][0]["input_size"] == 256 and res[-1][0]["analyse_every"] == 1
    assert not res[-1][0]["reused"]


def test_repeated_drops_before_the_stage_step_down() -> None:
    seg = CostlySegmenter(ms=1.0)  # cheap model, but the worker keeps dropping frames (seq gaps)
    st = make_stage(seg)
    run(st, [0, 1, 3, 5, 7])
    assert st.level == 1 and st.ladder[1] == (224, 1)  # one step: smaller input first
    run(st, [9, 11, 13, 15, 17, 19])
    assert st.level == 2  # still dropping after the settling frames: one more step


def test_a_single_gap_is_not_behind() -> None:
    seg = CostlySegmenter(ms=1.0)
    st = make_stage(seg)
    res = run(st, [*range(0, 20), *range(21, 40)])  # one lost frame
    assert st.level == 0 and all(not b["reused"] and b["input_size"] == 256 for b, _ in res)


def test_single_size_model_skips_frames_instead() -> None:
    seg = SingleSize(ms=60.0)
    res = run(make_stage(seg), range(40))
    assert {b["analyse_every"] for b, _ in res[10:]} == {2}
    assert any(b["reused"] for b, _ in res)


def test_target_fps_below_the_source_rate() -> None:
    seg = CostlySegmenter(ms=1.0)
    res = run(make_stage(seg, target_fps=15.0), range(20))
    assert [b["reused"] for b, _ in res[:6]] == [False, True, False, True, False, True]
    assert all(b["target_fps"] == 15.0 for b, _ in res)


def test_adapt_off_analyses_every_frame_at_full_size() -> None:
    seg = CostlySegmenter(ms=200.0)
    res = run(make_stage(seg, adapt=False), range(20))
    assert all(not b["reused"] and b["input_size"] == 256 for b, _ in res)


def test_min_input_size_bounds_the_ladder() -> None:
    seg = CostlySegmenter(ms=40.0)
    st = make_stage(seg, min_input_size=224)
    assert st.ladder == [(256, 1), (224, 1), (256, 2), (224, 2)]
    res = run(st, range(40))
    assert min(b["input_size"] for b, _ in res) == 224


@pytest.mark.parametrize("bad", [{"target_fps": -1.0}, {"budget": 0.0}, {"min_input_size": 8},
                                 {"recover_frames": 0}])
def test_bad_params(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PolypSegment.Params(**bad)


def test_reuse_draws_the_last_analysis_on_a_frame_dropped_before_the_stage() -> None:
    """Issue 21: a frame the worker drops for a newer one still gets a record and the overlay."""
    seg = CostlySegmenter(ms=10.0)
    st = make_stage(seg)
    assert st.reuse(frame(0)).records == []  # nothing analysed yet: nothing to draw, nothing said
    res = run(st, [1])
    o = st.reuse(frame(2))
    assert len(seg.calls) == 1  # no model call
    (rec,) = o.records
    b = rec.body
    check_body("polyp", b)
    assert b["reused"] and b["seq"] == 2 and b["analysed_seq"] == 1 and b["analysed_at"] == frame(1).t0_ns
    assert b["boxes"] == res[0][0]["boxes"] and b["input_size"] == 256
    assert o.signal is not None and o.signal.seq == 2 and o.signal.stream == "t/endo/annotated"
    np.testing.assert_array_equal(o.signal.data, res[0][1].data)  # same frame content, same overlay


def test_frames_redrawn_for_the_worker_count_as_drops_for_the_adaptation() -> None:
    seg = CostlySegmenter(ms=10.0)  # fits the budget: only the drops can make it step down
    st = make_stage(seg)
    run(st, [0])
    for q in range(1, 40, 2):  # every other frame dropped by the worker (then redrawn)
        assert st.reuse(frame(q)).records
        run(st, [q + 1])
    assert st.level > 0
    seg2 = CostlySegmenter(ms=10.0)
    st2 = make_stage(seg2)
    run(st2, range(40))  # the same frames, none dropped: stays at the top
    assert st2.level == 0
