"""The engine's PCG stage: segments, heart rate, filtered audio, events; and the whole engine."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import sosfilt

from telediag.client import Subscriber
from telediag.dsp.design import ecg_bandpass
from telediag.dsp.pcg import PCGSegmenter, resample, segment
from telediag.engine import stages as _stages  # noqa: F401 - registers the stages
from telediag.engine.config import load_config, parse_config
from telediag.engine.runtime import Engine
from telediag.engine.stage import StreamSpec
from telediag.engine.stages import pcg as pcg_stage
from telediag.engine.stages.pcg import AbnormalityModel, PcgSegment, PcgSegmentParams
from telediag.errors import ConfigError
from telediag.evaluation.pcg_analyze import read_wav
from telediag.sources.pcg_cli import recording_of
from telediag.sources.replay import replay
from telediag.transports.wire import Chunk

T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def a0001(shared_data: Path) -> tuple[np.ndarray, int]:
    path = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not path.exists():
        pytest.skip(f"PCG recording not found: {path}")
    return read_wav(path)


def spec(fs: float, units: str = "FS", n_ch: int = 1) -> StreamSpec:
    return StreamSpec("t/pcg", "pcg", float(fs), tuple(f"c{i}" for i in range(n_ch)), (units,) * n_ch)


def chunk(seq: int, t0: int, data: np.ndarray, fs: float, units: str = "FS", meta: dict | None = None) -> Chunk:
    d = data if data.ndim == 2 else data[:, None]
    return Chunk.signal("pcg", "t/pcg", seq, t0, d, float(fs), tuple(f"c{i}" for i in range(d.shape[1])),
                        (units,) * d.shape[1], meta=meta or {})


def run_stage(x: np.ndarray, fs: int, splits: np.ndarray, params: PcgSegmentParams | None = None,
              units: str = "FS", t0: int = T0) -> tuple[list[Chunk], list[Chunk]]:
    st = PcgSegment(params or PcgSegmentParams())
    st.open(spec(fs, units, 1 if x.ndim == 1 else x.shape[1]))
    recs: list[Chunk] = []
    sig: list[Chunk] = []
    start = 0
    for i, part in enumerate(np.split(x, splits)):
        out = st.process(chunk(i, t0 + (start * 1_000_000_000) // fs, part, fs, units))
        start += part.shape[0]
        recs += out.records
        if out.signal is not None:
            sig.append(out.signal)
    recs += st.close().records
    return recs, sig


def segs_of(recs: list[Chunk]) -> list[dict]:
    return [s for c in recs if c.kind == "segments" for s in c.body["segments"]]


def of_kind(recs: list[Chunk], kind: str, etype: str | None = None) -> list[dict]:
    return [c.body for c in recs if c.kind == kind and (etype is None or c.body.get("type") == etype)]


# --------------------------------------------------------------------------- the stage alone


def test_outputs_do_not_depend_on_chunking_and_match_the_segmenter(a0001: tuple[np.ndarray, int]) -> None:
    x, fs = a0001
    x = x[: 20 * fs]
    rng = np.random.default_rng(5)
    r1, s1 = run_stage(x, fs, np.arange(fs // 10, x.size, fs // 10))
    r2, s2 = run_stage(x, fs, np.sort(rng.choice(np.arange(1, x.size), 37, replace=False)))
    assert segs_of(r1) == segs_of(r2) and len(segs_of(r1)) > 40
    assert of_kind(r1, "hr") == of_kind(r2, "hr")
    np.testing.assert_array_equal(np.concatenate([c.data for c in s1]), np.concatenate([c.data for c in s2]))
    # the same segments as PCGSegmenter run directly over the whole input, in source time
    seg = PCGSegmenter(fs)
    ref = seg.process(x) + seg.flush()
    got = segs_of(r1)
    assert [(s["start_s"], s["end_s"], s["state"]) for s in got] == [(s.start, s.end, s.state) for s in ref]
    assert all(s["start_ns"] == T0 + round(s["start_s"] * 1e9) for s in got)
    assert all(s["start_sample"] == round(s["start_s"] * fs) for s in got)
    # segments are final, in order and contiguous
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(got, got[1:], strict=False))
    hr = of_kind(r1, "hr")
    assert len(hr) >= 15 and all(h["t_ns"] > T0 for h in hr)
    assert 50 < np.median([h["heart_rate_bpm"] for h in hr[-5:]]) < 75  # ~61 bpm per the offline analysis


def test_filtered_audio_is_band_passed_1khz_with_exact_timing() -> None:
    fs = 4000
    t = np.arange(fs * 3) / fs
    x = 0.3 * np.sin(2 * np.pi * 100 * t) + 0.3 * np.sin(2 * np.pi * 3 * t) + 0.3 * np.sin(2 * np.pi * 900 * t)
    recs, sig = run_stage(x, fs, np.arange(333, x.size, 333))
    assert all(c.rate_hz == 1000.0 and c.stream == "t/pcg/filtered" for c in sig)
    # every filtered chunk starts where the previous ended (sample clock at 1 kHz)
    n = 0
    for c in sig:
        assert c.t0_ns == T0 + n * 1_000_000
        n += c.n_samples
    y = np.concatenate([c.data for c in sig])[:, 0].astype(np.float64)
    # oracle: offline resample_poly-equivalent resampling, then the same band-pass from rest
    ref = sosfilt(ecg_bandpass(1000.0, 25.0, 400.0, 4), resample(x, fs, 1000))
    assert 2980 <= y.size <= ref.size  # all but the resampler delay (a few ms)
    np.testing.assert_allclose(y, ref[: y.size], rtol=0, atol=1e-6)  # float32 on the wire
    tail = y[1500:]  # after the start-up transient: only the 100 Hz tone is in the 25-400 Hz band
    assert abs(np.std(tail) / (0.3 / np.sqrt(2)) - 1) < 0.1


def test_silence_publishes_no_signal_and_no_segments() -> None:
    fs = 4000
    x = np.zeros(fs * 12, dtype="<i2")
    recs, sig = run_stage(x, fs, np.arange(400, x.size, 400), units="adu")
    assert segs_of(recs) == []
    hr = of_kind(recs, "hr")
    assert hr and all(h["quality"] == 0.0 and h["heart_rate_bpm"] is None for h in hr)
    ev = of_kind(recs, "event", "pcg_signal")
    assert [e["state"] for e in ev] == ["no_signal"]
    assert sig and all(c.units == ("FS",) and not np.any(c.data) for c in sig)


def test_clipping_is_counted_and_published(a0001: tuple[np.ndarray, int]) -> None:
    x, fs = a0001
    xi = np.clip(np.round(x[: 10 * fs] * 32768 * 16), -32768, 32767).astype("<i2")  # 24 dB too hot
    n_clip = int(np.count_nonzero((xi == 32767) | (xi == -32768)))
    assert n_clip > 100
    recs, _ = run_stage(xi, fs, np.arange(fs // 10, xi.size, fs // 10),
                        PcgSegmentParams(event_interval_s=0.0), units="adu")
    ev = of_kind(recs, "event", "clipping")
    assert ev and ev[-1]["count"] == n_clip and sum(e["new"] for e in ev) == n_clip
    assert of_kind(recs, "hr")[-1]["source"]["clipped"] == n_clip
    # segmentation still runs on the clipped signal
    assert len(segs_of(recs)) > 10


def test_source_counters_from_meta_become_events() -> None:
    fs = 2000
    st = PcgSegment(PcgSegmentParams(event_interval_s=1.0))
    st.open(spec(fs, "adu"))
    block = np.zeros((200, 1), dtype="<i2")
    base = {"overflows": 0, "dropped_buffers": 0, "dropped_frames": 0, "device_lost": 0, "reopens": 0, "clipped": 0}
    metas = [base, dict(base, overflows=1), dict(base, overflows=2), dict(base, overflows=2, device_lost=1),
             dict(base, overflows=2, device_lost=1, reopens=1, dropped_buffers=3, dropped_frames=600)]
    recs: list[Chunk] = []
    for i, m in enumerate(metas):
        recs += st.process(chunk(i, T0 + i * 100_000_000, block, fs, "adu", meta=m)).records
    types = [e["type"] for e in of_kind(recs, "event")]
    assert types.count("input_overflow") == 1  # the second one is within event_interval_s
    assert "device_lost" in types and "device_reopened" in types
    d = of_kind(recs, "event", "dropped_buffers")
    assert d == [dict(d[0], count=3, new=3, frames=600)]


def test_time_discontinuity_restarts_segmentation_at_the_new_time(a0001: tuple[np.ndarray, int]) -> None:
    x, fs = a0001
    a, b = x[: 15 * fs], x[15 * fs : 30 * fs]
    st = PcgSegment(PcgSegmentParams())
    st.open(spec(fs))
    recs: list[Chunk] = []
    for i, part in enumerate(np.array_split(a, 30)):
        recs += st.process(chunk(i, T0 + (sum(p.size for p in np.array_split(a, 30)[:i]) * 10**9) // fs,
                                 part, fs)).records
    t_b = T0 + 20 * 10**9  # 5 s later than where the first part ended
    for j, part in enumerate(np.array_split(b, 30)):
        off = sum(p.size for p in np.array_split(b, 30)[:j])
        recs += st.process(chunk(100 + j, t_b + (off * 10**9) // fs, part, fs)).records
    recs += st.close().records
    ev = of_kind(recs, "event", "pcg_discontinuity")
    assert len(ev) == 1 and ev[0]["gap_ns"] == 5 * 10**9
    segs = segs_of(recs)
    before = [s for s in segs if s["end_ns"] <= T0 + 15 * 10**9]
    after = [s for s in segs if s["start_ns"] >= t_b]
    assert len(before) + len(after) == len(segs) and len(before) > 20 and len(after) > 20
    # the second part is segmented as if it were a stream of its own, shifted to its time
    seg = PCGSegmenter(fs)
    ref = seg.process(b) + seg.flush()
    assert [(s["start_ns"] - t_b, s["state"]) for s in after] == [(round(r.start * 1e9), r.state) for r in ref]
    assert all(s["start_s"] >= 20.0 for s in after)


def test_wrong_rate_or_channel_is_refused_with_a_clear_error() -> None:
    st = PcgSegment(PcgSegmentParams())
    with pytest.raises(ConfigError, match="800..384000 Hz.*got 500 Hz"):
        st.open(spec(500))
    with pytest.raises(ConfigError, match="channel=1 but stream 't/pcg' has 1 channel"):
        PcgSegment(PcgSegmentParams(channel=1)).open(spec(4000))
    with pytest.raises(ConfigError, match="hop_s must be >= 1.0"):
        parse_config({"pipeline": {"pcg": {"segment": {"stage": "pcg_segment", "hop_s": 0.5}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"pipeline": {"pcg": {"segment": {"stage": "pcg_segment", "windw_s": 8.0}}}})


class _FakeClassifier:
    name = "fake-abnormal"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, audio: np.ndarray, fs: int) -> dict:
        self.calls.append(audio.size)
        return {"abnormal_prob": float(np.clip(np.std(audio) * 10, 0, 1)), "label": "normal"}


def test_abnormality_per_window_when_a_classifier_is_installed(monkeypatch: pytest.MonkeyPatch,
                                                               a0001: tuple[np.ndarray, int]) -> None:
    x, fs = a0001
    fake = _FakeClassifier()
    monkeypatch.setattr(pcg_stage, "_MODEL", [AbnormalityModel(fake, fake.name)])
    recs, _ = run_stage(x[: 25 * fs], fs, np.arange(fs // 4, 25 * fs, fs // 4))
    q = of_kind(recs, "quality", "pcg_abnormal")
    assert len(q) == 2 and fake.calls == [10 * fs, 10 * fs]
    assert q[0]["start_ns"] == T0 and q[0]["end_ns"] == T0 + 10 * 10**9 and q[1]["start_ns"] == T0 + 10 * 10**9
    assert all(0 <= r["abnormal_prob"] <= 1 and r["label"] == "normal" and r["model"] == "fake-abnormal" for r in q)


def test_no_classifier_means_no_abnormality_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcg_stage, "_MODEL", [None])
    monkeypatch.setattr(pcg_stage, "_MODEL_REASON", ["not installed"])
    recs, _ = run_stage(np.zeros(2000 * 12), 2000, np.arange(2000, 2000 * 12, 2000))
    assert of_kind(recs, "quality") == []


# --------------------------------------------------------------------------- the whole engine


@pytest.fixture()
def engine() -> Iterator[Engine]:
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.1))
    eng = Engine(cfg, drain_idle_s=0.1)
    eng.start()
    yield eng
    eng.stop()
    eng.join(10)


def collect(sub: Subscriber, quiet_s: float = 1.0, max_s: float = 60.0) -> list[Chunk]:
    out: list[Chunk] = []
    end = time.monotonic() + max_s
    last = time.monotonic()
    while time.monotonic() < end and time.monotonic() - last < quiet_s:
        c = sub.recv(timeout_s=0.05)
        if c is not None and c.kind != "stats":
            out.append(c)
            last = time.monotonic()
    return out


def test_engine_segments_a_replayed_recording(engine: Engine, shared_data: Path) -> None:
    path = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not path.exists():
        pytest.skip(f"PCG recording not found: {path}")
    rec = recording_of(str(path))
    sub = Subscriber(engine.publish_endpoint, topics=["segments/", "hr/", "pcg/", "event/", "stats/"])
    try:
        assert sub.wait_connected(5), "no stats from the engine"
        sent: list[Chunk] = []
        t = threading.Thread(target=lambda: replay(rec, kind="pcg", stream="a0001/pcg",
                                                   connect=engine.ingest_endpoint, speed=float("inf"),
                                                   chunk_ms=100.0, on_chunk=sent.append))
        t.start()
        t.join(60)
        got = collect(sub)
    finally:
        sub.close()
    # segments arrive, in order, in source time, consistent with the offline segmentation
    seg_recs = [c for c in got if c.kind == "segments"]
    assert [c.seq for c in seg_recs] == list(range(len(seg_recs)))
    segs = [s for c in seg_recs for s in c.body["segments"]]
    t0 = sent[0].t0_ns
    assert len(segs) > 100
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(segs, segs[1:], strict=False))
    assert all(s["start_ns"] == t0 + round(s["start_s"] * 1e9) for s in segs)
    off = segment(rec.signal[:, 0].astype(np.float32), int(rec.fs))
    s1_on = np.array([s["start_s"] for s in segs if s["state"] == "S1"])
    s1_off = np.array([s.start for s in off if s.state == "S1"])
    near = np.abs(s1_on[:, None] - s1_off[None, :]).min(axis=1)
    assert np.mean(near <= 0.06) >= 0.9, f"streaming S1 onsets far from the offline ones: {near}"
    assert abs(len(s1_on) - len(s1_off)) <= 3
    # heart rate records and the filtered audio
    hr = [c.body for c in got if c.kind == "hr"]
    assert len(hr) >= 25 and 55 < np.median([h["heart_rate_bpm"] for h in hr[-10:]]) < 70
    filt = [c for c in got if c.kind == "pcg" and c.stream == "a0001/pcg/filtered"]
    assert [c.seq for c in filt] == list(range(len(filt))) and filt[0].rate_hz == 1000.0
    assert abs(sum(c.n_samples for c in filt) - rec.signal.shape[0] / 2) < 50
    events = [c.body for c in got if c.kind == "event"]
    assert any(e["type"] == "stream_opened" and e["stages"] == ["pipeline.pcg.segment"] for e in events)
    assert not [e for e in events if e["type"] in ("stage_error", "gap", "stream_refused")]


def test_engine_refuses_a_pcg_stream_at_a_wrong_rate(engine: Engine) -> None:
    import zmq

    from telediag.transports.wire import encode

    sub = Subscriber(engine.publish_endpoint, topics=["event/", "stats/"])
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(engine.ingest_endpoint)
    try:
        assert sub.wait_connected(5)
        for i in range(3):
            push.send_multipart(encode(chunk(i, T0 + i * 10**8, np.zeros((50, 1), "<i2"), 500.0, "adu")))
        events = [c.body for c in collect(sub, quiet_s=0.5, max_s=10)]
    finally:
        push.close()
        ctx.term()
        sub.close()
    refused = [e for e in events if e["type"] == "stream_refused"]
    assert len(refused) == 1 and "got 500 Hz" in refused[0]["detail"]


def test_verdict_text_states_the_label_and_its_own_probability() -> None:
    from telediag.engine.stages.pcg import verdict_text

    assert verdict_text(0.82, "abnormal") == "abnormal 0.82"
    assert verdict_text(0.09, "normal") == "normal 0.91"  # probability of *normal*
    assert verdict_text(0.55, "uncertain") == "uncertain"
    assert verdict_text(None, None) is None
    assert verdict_text(0.7, None) == "abnormal 0.70"
