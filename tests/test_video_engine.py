"""The engine's video path in-process: latest-frame-wins, masks, overlays and faults.

Uses the test-only ``test-fallback-redness`` segmenter (tests/test_video_fallback.py), never
the shipped model, so these tests check the plumbing, not segmentation accuracy.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pytest
import zmq
from test_video_fallback import FALLBACK_NAME

from telediag.client import Subscriber
from telediag.engine.config import load_config, parse_config
from telediag.engine.runtime import Engine
from telediag.engine.stages.video import load_segmenter, rle_decode
from telediag.errors import ModelError
from telediag.sources.synth_endoscopy import EndoscopySynth
from telediag.sources.video_codec import H264Encoder, PacketDecoder
from telediag.transports.wire import Chunk, VideoSpec, encode

FPS = 30.0
KEYINT = 10


def video_config(model: str = FALLBACK_NAME, annotate_keyint: int = 15):
    cfg = parse_config({"pipeline": {"video": {
        "decode": {"stage": "video_decode"},
        "polyp": {"stage": "polyp_seg", "model": model},
        "annotate": {"stage": "video_encode", "publish": True, "keyint": annotate_keyint},
    }}}, "<test>", base=load_config())
    return dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.1))


@pytest.fixture()
def make_engine() -> Iterator:
    engines: list[Engine] = []

    def make(model: str = FALLBACK_NAME) -> Engine:
        eng = Engine(video_config(model), drain_idle_s=0.1)
        eng.start()
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.stop()
        eng.join(10)


@lru_cache(maxsize=8)
def encoded(n: int, w: int = 320, h: int = 240, seed: int = 0, keyint: int = KEYINT
            ) -> tuple[tuple[bytes, bool], ...]:
    synth = EndoscopySynth(w, h, FPS, seed=seed)
    enc = H264Encoder(w, h, FPS, keyint=keyint, threads=1)
    return tuple((p.data, p.keyframe) for i in range(n) for p in enc.encode(synth.frame(i)[0]))


class Feed:
    """Push H.264 packets to the engine, paced like a camera; t0 = wall clock at send."""

    def __init__(self, eng: Engine, stream: str = "t/endo") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(eng.ingest_endpoint)
        self.stream = stream
        self.seq = 0
        self.sent: dict[int, int] = {}  # seq -> t0

    def send(self, pkts, w: int = 320, h: int = 240, *, fps: float | None = FPS, skip: set[int] = frozenset(),
             corrupt: set[int] = frozenset()) -> None:
        t_next = time.monotonic()
        rng = np.random.default_rng(0)
        for data, key in pkts:
            seq = self.seq
            self.seq += 1
            if seq in skip:
                continue
            if seq in corrupt:
                data = b"\x00\x00\x00\x01" + rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
            if fps:
                time.sleep(max(0.0, t_next - time.monotonic()))
                t_next += 1 / fps
            t0 = time.time_ns()
            self.sent[seq] = t0
            c = Chunk.video_packet(self.stream, seq, t0, data, VideoSpec("h264", w, h, "yuv420p", FPS, key),
                                   meta={"session": "a", "sent_ns": t0})
            self.sock.send_multipart(encode(c))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def subscribe(eng: Engine, topics=("polyp/", "video/", "event/", "stats/engine/video")) -> Subscriber:
    sub = Subscriber(eng.publish_endpoint, topics=list(topics))
    assert sub.wait_connected(5)
    return sub


def collect(sub: Subscriber, quiet_s: float = 0.8, max_s: float = 20.0) -> dict[str, list]:
    out: dict[str, list] = {"polyp": [], "annotated": [], "events": [], "stats": []}
    end = time.monotonic() + max_s
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet_s:
        c = sub.recv(timeout_s=0.05)
        if c is None:
            continue
        if c.kind == "stats":
            out["stats"].append(c.body)
            continue
        last = time.monotonic()
        if c.kind == "polyp":
            out["polyp"].append(c)
        elif c.kind == "video":
            out["annotated"].append(c)
        elif c.kind == "event":
            out["events"].append(c.body)
    return out


def stream_stats(out: dict[str, list], sid: str = "t/endo") -> dict:
    return [s for s in out["stats"] if sid in s["streams"]][-1]["streams"][sid]


def redrawn(out: dict[str, list], sid: str = "t/endo") -> int:
    """Frames dropped before analysis that still got a (reused) record and overlay (worker stats)."""
    return int([s for s in out["stats"] if sid in s["streams"]][-1]["redrawn_frames"])


def test_every_frame_is_decoded_and_analysis_or_drop_accounts_for_it(make_engine) -> None:
    eng = make_engine()
    sub = subscribe(eng)
    feed = Feed(eng)
    feed.send(encoded(45))
    out = collect(sub)
    feed.close()
    polyp = out["polyp"]
    st = stream_stats(out)
    assert st["chunks_in"] == 45 and st["errors"] == 0 and st["gaps"] == 0
    # each decoded frame is analysed (or re-used by the stage) or counted as dropped; a dropped
    # frame may still have been redrawn with the last analysis (then it has a record too)
    assert len(polyp) - redrawn(out) + st["drops"] == 45
    assert len(polyp) >= 10
    synth = EndoscopySynth(320, 240, FPS, seed=0)
    ious = []
    for c in polyp:
        b = c.body
        assert c.stream == "t/endo" and b["t0_ns"] == feed.sent[b["seq"]] == c.t0_ns
        assert b["model"] == FALLBACK_NAME and (b["width"], b["height"]) == (320, 240)
        assert c.meta["pub_ns"] >= b["t0_ns"] and b["proc_ms"] >= 0
        # issue 21: which frame's analysis this is, at which input size (reused when skipped)
        assert b["analysed_at"] == (b["t0_ns"] if not b["reused"] else feed.sent[b["analysed_seq"]])
        assert b["analyse_every"] in (1, 2) and b["target_fps"] == FPS and "input_size" not in b  # stand-in
        m = rle_decode(b["mask"]["rle"], (b["mask"]["rows"], b["mask"]["cols"]))
        truth = synth.frame(b["seq"])[1]
        ri = (np.arange(m.shape[0]) + 0.5) * 240 / m.shape[0]
        ci = (np.arange(m.shape[1]) + 0.5) * 320 / m.shape[1]
        t = truth[ri.astype(int)[:, None], ci.astype(int)[None, :]]
        ious.append((m & t).sum() / max((m | t).sum(), 1))
        for x0, y0, x1, y1, _ in b["boxes"]:
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
    assert np.mean(ious) > 0.4  # the mask travels with the right geometry
    seqs = [c.body["seq"] for c in polyp]
    assert seqs == sorted(seqs)
    # the annotated stream: one H.264 packet per analysed frame, decodable, overlay drawn
    ann = out["annotated"]
    assert [c.stream for c in ann] == ["t/endo/annotated"] * len(polyp)
    dec = PacketDecoder()
    pics = [f.rgb() for c in ann for f in dec.decode(c)]
    assert len(pics) == len(ann) and dec.errors == 0
    green = (pics[-1][..., 1] > 200) & (pics[-1][..., 0] < 80)
    assert green.sum() > 50  # the mask outline
    assert st["latency_ms"]["count"] == len(polyp) - redrawn(out)
    types = [e["type"] for e in out["events"]]
    assert "stream_opened" in types and "video_format" in types


def test_slow_model_drops_frames_but_decodes_every_packet(make_engine) -> None:
    eng = make_engine(FALLBACK_NAME + "-slow")  # 120 ms per frame at 30 fps: ~1 in 4 analysed
    sub = subscribe(eng)
    feed = Feed(eng)
    feed.send(encoded(60))
    out = collect(sub)
    feed.close()
    st = stream_stats(out)
    n = len(out["polyp"])
    assert st["chunks_in"] == 60 and st["gaps"] == 0
    assert n - redrawn(out) + st["drops"] == 60
    assert st["drops"] > 20 and n >= 5
    # frames dropped for a newer one still reach the annotated stream with the last overlay
    assert redrawn(out) > 0 and len(out["annotated"]) == n
    # 120 ms per analysis = 4 frame intervals: before the redraw only ~1 in 4 frames was annotated
    assert len(out["annotated"]) >= 50
    re_used = [c.body for c in out["polyp"] if c.body["reused"]]
    assert re_used and all(b["analysed_seq"] < b["seq"] for b in re_used)
    assert [e for e in out["events"] if e["type"] == "video_decode_error"] == []
    # latest-frame-wins: the analysed frames are spread over the clip, ending near its end
    assert out["polyp"][-1].body["seq"] >= 50


def test_router_drops_when_the_video_worker_is_swamped(make_engine) -> None:
    eng = make_engine(FALLBACK_NAME + "-slow")
    sub = subscribe(eng)
    feed = Feed(eng)
    for _ in range(3):  # 3 bursts of 90 packets as fast as possible
        feed.send(encoded(90), fps=None)
        time.sleep(0.4)
    out = collect(sub)
    feed.close()
    st = stream_stats(out)
    assert sum(eng.video_dropped.values()) > 0
    assert st["gaps"] > 0 and st["drops"] >= st["missing_chunks"] > 0
    assert st["chunks_in"] + sum(eng.video_dropped.values()) == 270
    assert [e for e in out["events"] if e["type"] == "video_decode_error"] == []  # resynced on keyframes
    assert any(e["type"] == "video_gap" for e in out["events"])
    assert len(out["polyp"]) >= 2


def test_seq_gap_resyncs_at_the_next_keyframe(make_engine) -> None:
    eng = make_engine()
    sub = subscribe(eng)
    feed = Feed(eng)
    feed.send(encoded(40), skip={12, 13, 14})
    out = collect(sub)
    feed.close()
    st = stream_stats(out)
    assert st["missing_chunks"] == 3 and st["drops"] >= 3
    seqs = [c.body["seq"] for c in out["polyp"]]
    assert not any(12 <= s < 20 for s in seqs)  # nothing shown from a broken reference chain
    assert max(seqs) >= 35
    assert [e for e in out["events"] if e["type"] == "video_decode_error"] == []


def test_corrupt_packets_are_reported_and_the_stream_recovers(make_engine) -> None:
    eng = make_engine()
    sub = subscribe(eng)
    feed = Feed(eng)
    feed.send(encoded(40), corrupt={5, 6, 22})
    out = collect(sub)
    feed.close()
    errs = [e for e in out["events"] if e["type"] == "video_decode_error"]
    assert errs and "seq" in errs[0]
    st = stream_stats(out)
    assert st["chunks_in"] == 40 and st["errors"] == 0  # decoder errors are not stage crashes
    seqs = [c.body["seq"] for c in out["polyp"]]
    assert any(s >= 30 for s in seqs)


def test_resolution_change_mid_stream(make_engine) -> None:
    eng = make_engine()
    sub = subscribe(eng)
    feed = Feed(eng)
    feed.send(encoded(20))
    feed.send(encoded(20, 160, 120, seed=1), 160, 120)
    out = collect(sub)
    feed.close()
    fmts = [(e["width"], e["height"]) for e in out["events"] if e["type"] == "video_format"]
    assert fmts == [(320, 240), (160, 120)]
    sizes = [(c.body["width"], c.body["height"]) for c in out["polyp"]]
    assert sizes[0] == (320, 240) and sizes[-1] == (160, 120)
    dec = PacketDecoder()
    shapes = [f.rgb().shape[:2] for c in out["annotated"] for f in dec.decode(c)]
    assert shapes[0] == (240, 320) and shapes[-1] == (120, 160) and dec.errors == 0
    assert len(shapes) == len(out["annotated"])  # the re-opened encoder starts with a keyframe


def test_stall_and_resume(make_engine) -> None:
    eng = make_engine()
    sub = subscribe(eng)
    feed = Feed(eng)
    pk = encoded(40)
    feed.send(pk[:15])
    time.sleep(1.8)
    feed.send(pk[15:])
    out = collect(sub)
    feed.close()
    types = [e["type"] for e in out["events"]]
    assert "video_stalled" in types and "video_resumed" in types
    assert types.index("video_stalled") < types.index("video_resumed")
    resumed = next(e for e in out["events"] if e["type"] == "video_resumed")
    assert resumed["seq"] == 15 and resumed["silent_s"] >= 1.0
    st = stream_stats(out)
    assert st["gaps"] == 0 and st["chunks_in"] == 40
    assert max(c.body["seq"] for c in out["polyp"]) >= 35


def test_late_joining_viewer_decodes_within_one_keyframe_interval(make_engine) -> None:
    eng = make_engine()
    first = subscribe(eng)
    feed = Feed(eng)
    pk = encoded(90)
    feed.send(pk[:37])
    late = Subscriber(eng.publish_endpoint, topics=["video/t/endo/annotated"])
    time.sleep(0.3)  # the subscription reaches the engine (slow joiner), video keeps flowing
    feed.send(pk[37:])
    got = collect(late)["annotated"]
    collect(first)
    feed.close()
    late.close()
    first.close()
    assert got and got[0].seq > 0  # it really joined mid-stream
    dec = PacketDecoder()
    first_pic = next(i for i, c in enumerate(got) if dec.decode(c))
    assert first_pic < 15  # annotate keyint (15): a keyframe within one interval
    assert got[first_pic].video is not None and got[first_pic].video.keyframe
    assert dec.errors == 0


def test_missing_model_refuses_the_stream_with_a_clear_reason(make_engine, monkeypatch) -> None:
    eng = make_engine("no-such-model")
    sub = subscribe(eng)
    feed = Feed(eng)
    feed.send(encoded(5))
    out = collect(sub)
    feed.close()
    refused = [e for e in out["events"] if e["type"] == "stream_refused"]
    assert refused and "unknown polyp segmenter 'no-such-model'" in refused[0]["detail"]
    assert out["polyp"] == [] and out["annotated"] == []
    monkeypatch.setitem(sys.modules, "telediag.models.polyp_seg", None)  # import fails
    with pytest.raises(ModelError, match="polyp segmentation model is not installed"):
        load_segmenter("polyp_seg")
