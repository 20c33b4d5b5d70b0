"""The ``ecg_analysis`` stage: beats/HR/HRV/quality records, suppression, chunk invariance,
offline equality and the live engine replaying a real record."""

from __future__ import annotations

import dataclasses
import doctest
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import telediag.engine.stages.ecg_analysis as ea_mod
import telediag.evaluation.ecg_analyze as analyze_mod
from telediag.client import Subscriber
from telediag.dsp.qrs import detect, detect_with_confirm
from telediag.engine.config import Config, load_config, parse_config
from telediag.engine.runtime import Engine
from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import BeatBatch, EcgAnalysis, EcgAnalysisParams, Timeline
from telediag.errors import ConfigError
from telediag.evaluation.ecg_analyze import build_pipeline, collect, run_pipeline
from telediag.sources.readers import Recording, read_wfdb
from telediag.sources.replay import chunks_of
from telediag.transports.wire import Chunk, encode

FS = 360.0


def synth(dur_s: float, rr_s: float = 0.8, seed: int = 0, n_ch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic ECG (QRS, S and T waves + white noise) and its true R peaks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur_s * FS)) / FS
    r = np.arange(0.4, dur_s - 0.1, rr_s)
    lead = np.zeros(t.size)
    for b in r:
        lead += (np.exp(-((t - b) ** 2) / (2 * 0.012**2))
                 - 0.25 * np.exp(-((t - b - 0.03) ** 2) / (2 * 0.01**2))
                 + 0.2 * np.exp(-((t - b - 0.25) ** 2) / (2 * 0.04**2)))
    x = np.stack([lead * (1.0 - 0.4 * c) for c in range(n_ch)], axis=1)
    x += rng.normal(0.0, 0.01, x.shape)
    return x, np.round(r * FS).astype(np.int64)


def stage_for(n_ch: int = 2, **params: Any) -> EcgAnalysis:
    st = EcgAnalysis(EcgAnalysisParams(**params))
    chans = ("I", "II", "III")[:n_ch]
    st.open(StreamSpec("t/ecg", "ecg", FS, chans, ("mV",) * n_ch))
    return st


def feed(st: EcgAnalysis, x: np.ndarray, splits: Sequence[int], t0_ns: int = 0, close: bool = True) -> list[Chunk]:
    recs: list[Chunk] = []
    chans = st.spec.channels if st.spec else ()
    start = 0
    for seq, part in enumerate(np.split(x, list(splits))):
        c = Chunk.signal("ecg", "t/ecg", seq, t0_ns + round(start * 1e9 / FS), part, FS, chans,
                         ("mV",) * len(chans))
        out = st.process(c)
        assert out.signal is c  # passes the raw chunk on unchanged
        recs += out.records
        start += part.shape[0]
    if close:
        recs += st.close().records
    return recs


def samples(beats: list[dict[str, Any]]) -> list[int]:
    return [b["sample"] for b in beats]


# --------------------------------------------------------------------------------------
# unit tests on synthetic signals
# --------------------------------------------------------------------------------------
def test_doctests() -> None:
    for mod in (ea_mod, analyze_mod):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0


def test_beats_equal_detect_on_raw_signal_and_records_are_complete() -> None:
    x, true = synth(40.0)
    recs = feed(stage_for(), x, [1000, 5000, 5001, 9000])
    flat = collect(recs)
    ref = detect(x[:, 0], FS)
    got = samples(flat["beats"])  # every detected beat is published (usable or not)
    assert got == ref.tolist()
    assert np.max(np.abs(ref - true[: ref.size])) <= 3  # the detector finds the true peaks
    assert not flat["suppressed"]  # clean signal: nothing flagged unusable
    b = flat["beats"][10]
    assert set(b) == {"sample", "t_ns", "confirm_sample", "release_sample", "confirm_delay_s",
                      "delay_s", "label", "probs", "usable"}
    assert all(b["usable"] is True for b in flat["beats"])
    assert b["t_ns"] == round(b["sample"] * 1e9 / FS) and b["label"] is None and b["probs"] is None
    # every record body is msgpack-able (re-encode through the wire) and of the expected kinds
    for r in recs:
        encode(r)
    kinds = {r.kind for r in recs}
    assert kinds == {"beats", "hr", "hrv", "quality"}
    beat_bodies = [r.body for r in recs if r.kind == "beats"]
    assert beat_bodies[-1]["counters"] == {"beats": len(flat["beats"]), "unusable": 0, "suppressed": 0}
    assert all(body["beats"] for body in beat_bodies)  # only published when there are beats
    # HR: one reading per beat, one per second; 75 bpm
    ticks = [h for h in flat["hr"] if not h["on_beat"]]
    assert [h["sample"] for h in ticks] == [int(k * FS) for k in range(1, 40)]
    assert ticks[-1]["hr_bpm"] == pytest.approx(75.0, abs=0.5)
    assert sum(h["on_beat"] for h in flat["hr"]) == len(flat["beats"])
    # HRV every 5 s, quality blocks every second
    assert [h["sample"] for h in flat["hrv"]] == [int(k * 5 * FS) for k in range(1, 8)]
    assert flat["hrv"][-1]["n_nn"] > 30 and flat["hrv"][-1]["sdnn_ms"] < 5.0
    assert len(flat["blocks"]) == 40 and all(all(b["usable"]) for b in flat["blocks"][1:])


def test_outputs_do_not_depend_on_chunking() -> None:
    x, _ = synth(60.0, rr_s=0.7, seed=3)
    x[int(20 * FS): int(24 * FS)] = np.nan  # leads-off: events and a pause
    rng = np.random.default_rng(5)
    outs = []
    for splits in ([], np.sort(rng.choice(np.arange(1, x.shape[0]), 300, replace=False)),
                   list(range(1, x.shape[0], 1))[::97]):
        outs.append(collect(feed(stage_for(), x, list(splits))))
    assert outs[0]["beats"] and outs[0]["events"]
    for o in outs[1:]:
        assert o == outs[0]


def test_unusable_signal_flags_its_beats_and_reports_events() -> None:
    x, _ = synth(80.0)
    rng = np.random.default_rng(1)
    noise = (int(20 * FS), int(35 * FS))
    x[noise[0]: noise[1]] += rng.normal(0.0, 1.0, (noise[1] - noise[0], 2))
    gap = (int(45 * FS), int(55 * FS))
    x[gap[0]: gap[1]] = np.nan
    recs = feed(stage_for(), x, list(range(360, x.shape[0], 360)))
    flat = collect(recs)
    assert samples(flat["beats"]) == sorted(samples(flat["beats"]))
    b = np.array([x["sample"] for x in flat["beats"] if x["usable"]])
    assert not np.any((b >= noise[0]) & (b < noise[1])), "phantom beats from noise"
    assert not np.any((b >= gap[0]) & (b < gap[1]))
    assert np.sum(b >= 60 * FS) >= 20  # detection resumes after the unusable stretches
    # the detector did fire in the noise; those beats are published with usable false (and
    # listed in the quality records' "suppressed"), never dropped
    s = np.array([x["sample"] for x in flat["beats"] if not x["usable"]])
    assert np.sum((s >= noise[0]) & (s < noise[1])) > 10
    assert s.tolist() == samples(flat["suppressed"])
    last_counters = [r.body["counters"] for r in recs if r.kind == "quality"][-1]
    assert last_counters == {"beats": len(b), "unusable": len(s), "suppressed": len(s)}
    # heart rate and HRV ignore them: one on-beat reading per usable beat
    assert sum(h["on_beat"] for h in flat["hr"]) == len(b)
    kinds = {(e["event"], e["state"]) for e in flat["events"]}
    assert {("heavy_noise", "start"), ("heavy_noise", "end"), ("leads_off", "start"), ("leads_off", "end")} <= kinds
    lo = [e for e in flat["events"] if e["event"] == "leads_off" and e["state"] == "end" and e["channel"] == 0][0]
    assert lo["onset_sample"] == gap[0] and lo["end_sample"] == gap[1]
    assert lo["onset_ns"] == round(gap[0] * 1e9 / FS) and lo["lead"] == "I"
    # quality events also travel on the event stream, with the same bodies
    ev_recs = [r for r in recs if r.kind == "event"]
    assert [r.body for r in ev_recs] == flat["events"] and all(r.topic == "event/t/ecg" for r in ev_recs)
    # HR readings while the signal is unusable say so
    ticks = {h["sample"]: h for h in flat["hr"] if not h["on_beat"]}
    assert ticks[int(50 * FS)]["signal_ok"] is False and ticks[int(10 * FS)]["signal_ok"] is True


def test_asystole_decays_heart_rate_to_zero() -> None:
    x, _ = synth(40.0)
    x[int(20 * FS):, :] = np.random.default_rng(2).normal(0.0, 0.01, (x.shape[0] - int(20 * FS), 2))
    flat = collect(feed(stage_for(), x, list(range(36, x.shape[0], 36))))
    last_beat = [b["sample"] for b in flat["beats"] if b["usable"]][-1]
    ticks = [h for h in flat["hr"] if not h["on_beat"]]
    before = [h["hr_bpm"] for h in ticks if h["sample"] < last_beat]
    after = [h["hr_bpm"] for h in ticks if h["sample"] >= last_beat + 4 * FS]
    assert before[-1] == pytest.approx(75.0, abs=0.5)
    assert after and all(v == 0.0 for v in after)
    assert not any(h["hr_bpm"] for h in flat["hr"] if h["sample"] > 25 * FS)


def test_constant_and_nan_signals_give_events_not_beats() -> None:
    for x in (np.zeros((int(20 * FS), 2)), np.full((int(20 * FS), 2), np.nan)):
        flat = collect(feed(stage_for(), x, [100, 2000]))
        assert flat["beats"] == [] and flat["suppressed"] == []
        assert {e["event"] for e in flat["events"]} == {"leads_off"}
        assert all(h["hr_bpm"] is None for h in flat["hr"])


def test_quality_hold_modes_and_delays() -> None:
    x, _ = synth(60.0, rr_s=0.75, seed=4)
    hold = collect(feed(stage_for(), x, [5000]))["beats"]
    none = collect(feed(stage_for(quality_hold="none"), x, [5000]))["beats"]
    assert samples(hold) == samples(none)  # clean signal: same beats
    hop = int(FS)
    for b in hold:
        assert b["release_sample"] == max(b["confirm_sample"], (b["sample"] // hop + 1) * hop - 1)
        assert b["delay_s"] == pytest.approx((b["release_sample"] - b["sample"]) / FS)
    for b in none:
        assert b["release_sample"] == b["confirm_sample"] and b["delay_s"] == b["confirm_delay_s"]
    st = stage_for()
    late = [b["delay_s"] for b in hold if b["sample"] > 3 * FS]
    assert max(late) <= max(st.detection_delay_s, 1.0) + 1e-9
    assert max(b["delay_s"] for b in none if b["sample"] > 3 * FS) <= st.detection_delay_s


def test_suppress_unusable_false_publishes_every_detected_beat() -> None:
    x, _ = synth(40.0)
    x[int(10 * FS): int(30 * FS)] += np.random.default_rng(3).normal(0, 1.0, (int(20 * FS), 2))
    flat = collect(feed(stage_for(suppress_unusable=False), x, [7000]))
    assert samples(flat["beats"]) == detect(x[:, 0], FS).tolist() and flat["suppressed"] == []


def test_beat_hook_labels_are_published_and_used_by_hrv() -> None:
    x, _ = synth(40.0)
    seen: list[BeatBatch] = []

    def hook(batch: BeatBatch) -> None:
        seen.append(batch)
        for i, s in enumerate(batch.samples.tolist()):
            batch.labels[i] = "V" if (s // int(0.8 * FS)) % 5 == 0 else "N"
            batch.probs[i] = {"N": 0.9, "V": 0.1}
        w = batch.history.window(int(batch.samples[-1]) - 36, int(batch.samples[-1]) + 36)
        assert w is not None and w.shape == (72, 2)

    st = stage_for()
    st.add_beat_hook(hook)
    flat = collect(feed(st, x, [3000, 9000]))
    assert seen and {b["label"] for b in flat["beats"]} == {"N", "V"}
    assert all(b["probs"] == {"N": 0.9, "V": 0.1} for b in flat["beats"])
    plain = collect(feed(stage_for(), x, [3000, 9000]))
    assert flat["hrv"][-1]["n_nn"] < plain["hrv"][-1]["n_nn"]  # ectopic-labelled intervals left out


def test_timestamps_follow_chunk_time_across_gaps() -> None:
    x, _ = synth(20.0)
    st = stage_for()
    half = x.shape[0] // 2
    recs = []
    for seq, (part, t0) in enumerate(((x[:half], 10**9), (x[half:], 10**9 + 60 * 10**9))):
        recs += st.process(Chunk.signal("ecg", "t/ecg", seq, t0, part, FS, ("I", "II"), ("mV", "mV"))).records
    recs += st.close().records
    beats = collect(recs)["beats"]
    # sample = index in the source's stream: after the gap it skips the samples lost, so
    # sample and time agree on both sides of it
    assert any(b["sample"] >= 60 * FS for b in beats) and any(b["sample"] < half for b in beats)
    assert not any(half <= b["sample"] < 60 * FS for b in beats)
    for b in beats:
        assert b["t_ns"] == 10**9 + round(b["sample"] * 1e9 / FS)
    tl = Timeline(FS)
    tl.observe(0, 0)
    tl.observe(360, 10**9 + 1000)  # jitter below half a sample: same timeline
    assert tl.starts == [0]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="lead must be in"):
        stage_for(n_ch=2, lead=2)
    with pytest.raises(ConfigError, match="125, 2000"):
        EcgAnalysis(EcgAnalysisParams()).open(StreamSpec("s", "ecg", 50.0, ("I",), ("mV",)))
    doc = {"pipeline": {"ecg": {"a": {"stage": "ecg_analysis", "qrs": {"threshold_fraction": 0.3}}}}}
    with pytest.raises(ConfigError, match="threshold_frac"):
        parse_config(doc)
    for bad in ({"quality_hold": "maybe"}, {"hr_rule": "mode"}, {"hrv_every_s": 0.0}, {"banana": 1}):
        with pytest.raises(ConfigError):
            parse_config({"pipeline": {"ecg": {"a": {"stage": "ecg_analysis", **bad}}}})
    with pytest.raises(ConfigError, match="min_rr_s"):
        stage_for(hr_min_rr_s=5.0)
    cfg = parse_config({"pipeline": {"ecg": {"a": {"stage": "ecg_analysis", "qrs": {"threshold_frac": 0.3}}}}})
    st = cfg.pipelines["ecg"][0].build()
    st.open(StreamSpec("s", "ecg", FS, ("I",), ("mV",)))
    assert isinstance(st, EcgAnalysis) and st.state.detector.params.threshold_frac == 0.3


def test_default_config_runs_analysis_on_raw_signal_before_filter() -> None:
    names = [sc.stage_type.type_name for sc in load_config().pipelines["ecg"]]
    assert names.index("ecg_analysis") < names.index("ecg_filter")


# --------------------------------------------------------------------------------------
# real records
# --------------------------------------------------------------------------------------
def _head(rec: Recording, seconds: float) -> Recording:
    n = int(seconds * rec.fs)
    return dataclasses.replace(rec, signal=np.ascontiguousarray(rec.signal[:n]))


@pytest.mark.slow
def test_real_record_chunk_invariance_and_equality_with_detect(mitdb: Path) -> None:
    rec = _head(read_wfdb(mitdb / "208"), 180.0)
    ref_b, ref_c = detect_with_confirm(rec.signal[:, 0], rec.fs)
    results = []
    for chunk_ms in (1000.0, 37.0):
        spec = StreamSpec("208/ecg", "ecg", rec.fs, rec.channels, rec.units)
        stages = build_pipeline(load_config(), spec)
        chunks = (c for _, c in chunks_of(rec, "ecg", "208/ecg", chunk_ms=chunk_ms, start_ns=0, dtype="float64"))
        results.append(collect(run_pipeline(stages, chunks)))
    assert results[0] == results[1]
    flat = results[0]
    got = sorted(samples(flat["beats"]) + samples(flat["suppressed"]))
    assert got == ref_b.tolist()
    conf = {b["sample"]: b["confirm_sample"] for b in flat["beats"]}
    assert all(conf[s] == c for s, c in zip(ref_b.tolist(), ref_c.tolist(), strict=True) if s in conf)


def _engine_config() -> Config:
    cfg = load_config()
    return dataclasses.replace(cfg, engine=dataclasses.replace(
        cfg.engine, ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", stats_interval_s=0.2))


@pytest.fixture()
def engine() -> Iterator[Engine]:
    eng = Engine(_engine_config(), drain_idle_s=0.1)
    eng.start()
    yield eng
    eng.stop()
    eng.join(10)


def _pct(a: Sequence[float]) -> str:
    v = np.asarray(a)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return f"p50 {p50:.3f} p90 {p90:.3f} p99 {p99:.3f} max {v.max():.3f} s (n={v.size})"


@pytest.mark.slow
def test_engine_publishes_beats_equal_to_offline_analysis(engine: Engine, mitdb: Path) -> None:
    rec = _head(read_wfdb(mitdb / "208"), 150.0)
    stream = "bed-7/ecg"
    chunk_ms = 100.0
    sub = Subscriber(engine.publish_endpoint,
                     topics=[f"{k}/{stream}" for k in ("beats", "hr", "hrv", "quality", "event")] + ["stats/"])
    try:
        assert sub.wait_connected(5)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(engine.ingest_endpoint)
        for _, c in chunks_of(rec, "ecg", stream, chunk_ms=chunk_ms, start_ns=0, dtype="float64"):
            push.send_multipart(encode(c))  # max speed: as fast as the engine accepts
        got: list[Chunk] = []
        deadline = time.monotonic() + 60.0
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < 3.0:  # generous: shared CPUs stall
            c = sub.recv(timeout_s=0.05)
            if c is None or c.kind == "stats":
                continue
            last = time.monotonic()
            got.append(c)
        push.close()
        ctx.term()
    finally:
        sub.close()
    # offline: the same stages, fed the same samples (in 1 s chunks), not closed (the engine
    # closes a stream only when it stops)
    spec = StreamSpec(stream, "ecg", rec.fs, rec.channels, rec.units)
    stages = build_pipeline(load_config(), spec)
    off: list[Chunk] = []
    for _, c in chunks_of(rec, "ecg", stream, chunk_ms=1000.0, start_ns=0, dtype="float64"):
        x: Chunk | None = c
        for s in stages:
            assert x is not None
            out = s.process(x)
            off += out.records
            x = out.signal
    live, ref = collect(got), collect(off)
    assert len(live["beats"]) > 200
    assert live["beats"] == ref["beats"]  # same samples, times, confirmations, delays
    assert live["hr"] == ref["hr"] and live["hrv"] == ref["hrv"]
    assert live["blocks"] == ref["blocks"] and live["events"] == ref["events"]
    assert live["suppressed"] == ref["suppressed"]
    assert {"beats", "hr", "hrv", "quality"} <= {c.kind for c in got}
    # delays: detector confirmation and end to end (quality hold), after the learning period
    fs = rec.fs
    n = int(chunk_ms * fs / 1000)
    beats = [b for b in live["beats"] if b["sample"] >= 3 * fs]
    conf = [b["confirm_delay_s"] for b in beats]
    e2e = [b["delay_s"] for b in beats]
    # the sample that ends the chunk in which the beat was decided, as a live source sends it
    pub = [((b["release_sample"] // n + 1) * n - 1 - b["sample"]) / fs for b in beats]
    print(f"\n208 first 150 s, {len(beats)} beats: confirm {_pct(conf)}\n  end-to-end {_pct(e2e)}\n"
          f"  end of publishing chunk ({chunk_ms:g} ms chunks) {_pct(pub)}")
    bound = max(stages[0].detection_delay_s, 1.0)  # type: ignore[attr-defined]
    assert max(conf) <= stages[0].detection_delay_s  # type: ignore[attr-defined]
    if all(b["label"] is None for b in live["beats"]):  # classify off: detector + quality hold only
        assert max(e2e) <= bound + 1e-9
    else:  # classify on (the default): a beat also waits for its label (the next beat or more)
        rel = [b["release_sample"] for b in live["beats"]]
        assert rel == sorted(rel) and np.percentile(e2e, 50) <= bound + 2.0
    assert np.percentile(conf, 50) <= 0.35


@pytest.mark.data
@pytest.mark.parametrize("record", ["119", "208"])
def test_heart_rate_does_not_wait_for_the_classifier(mitdb: Path, record: str) -> None:
    """With classification on, beats are published one RR later, but HR readings (and the
    rate alarms fed by them) are exactly those of the unlabelled pipeline, at the same time."""
    rec = read_wfdb(mitdb / record)
    x = rec.signal[: int(120 * FS)]
    splits = list(range(360, x.shape[0], 360))

    def run(classify: str) -> tuple[list[Any], list[Any], list[Any]]:
        st = stage_for(classify=classify)
        recs = feed(st, x, splits)
        # group by the chunk that published them: (chunk index, readings)
        hr = [r.body["readings"] for r in recs if r.kind == "hr"]
        beats = [b for r in recs if r.kind == "beats" for b in r.body["beats"]]
        alarms = [(r.body["type"], r.body["state"], r.body["onset_sample"]) for r in recs if r.kind == "alarm"
                  and r.body["type"] in ("asystole", "brady", "tachy", "extreme_brady", "extreme_tachy")]
        return hr, beats, alarms

    hr_off, beats_off, alarms_off = run("off")
    hr_on, beats_on, alarms_on = run("on")
    assert hr_on == hr_off
    assert alarms_on == alarms_off
    assert samples(beats_on) == samples(beats_off)
    assert all(b["label"] in ("N", "S", "V", "F", "Q") for b in beats_on)
    # the labelled beats themselves are released later (they wait for the next beat)
    delay_on = np.mean([b["delay_s"] for b in beats_on])
    delay_off = np.mean([b["delay_s"] for b in beats_off])
    assert delay_on > delay_off + 0.3
