"""PCG chain on real PhysioNet/CinC 2016 recordings (small subset) and the file reader."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from telediag.dsp import pcg
from telediag.errors import DataError
from telediag.evaluation.pcg_analyze import analyze_pcg, read_pcg, read_wav
from telediag.evaluation.pcg_seg import (
    ecg_heart_rate,
    f1,
    load_annotation,
    score_events,
    score_record,
)

RECORDS = [("a", "a0001"), ("b", "b0002"), ("d", "d0001")]


def _rec(root: Path, s: str, name: str) -> tuple[Path, Path]:
    return (root / f"training-{s}" / f"{name}.wav",
            root / "annotations" / f"training-{s}_StateAns" / f"{name}_StateAns.mat")


@pytest.mark.data
@pytest.mark.parametrize(("s", "name"), RECORDS)
def test_offline_segmentation_f1_floor(pcg_root: Path, s: str, name: str) -> None:
    wav, ann_path = _rec(pcg_root, s, name)
    x, fs = read_wav(wav)
    segs = pcg.segment(x, fs)
    sc = score_record(segs, load_annotation(ann_path))
    assert f1(sc["s1_tp"], sc["s1_fp"], sc["s1_fn"]) >= 0.85
    assert f1(sc["s2_tp"], sc["s2_fp"], sc["s2_fn"]) >= 0.85
    # segments are ordered, contiguous and cycle S1 -> systole -> S2 -> diastole
    order = {"S1": 0, "systole": 1, "S2": 2, "diastole": 3}
    for a, b in zip(segs[:-1], segs[1:], strict=True):
        assert b.start == pytest.approx(a.end, abs=1e-6)
        assert order[b.state] == (order[a.state] + 1) % 4


@pytest.mark.data
@pytest.mark.slow
def test_streaming_segmenter_real_record(pcg_root: Path) -> None:
    wav, ann_path = _rec(pcg_root, "a", "a0001")
    x, fs = read_wav(wav)
    results = []
    for chunk in (fs // 10, 997):
        seg = pcg.PCGSegmenter(fs)
        out = []
        for a in range(0, x.size, chunk):
            out.extend(seg.process(x[a : a + chunk]))
        out.extend(seg.flush())
        results.append(out)
        assert seg.stats is not None and seg.stats.quality > 0.2
        assert 55 < seg.stats.heart_rate_bpm < 110
    assert results[0] == results[1]  # chunk-size invariant
    segs = results[0]
    for a, b in zip(segs[:-1], segs[1:], strict=True):
        assert b.start >= a.end - 1e-6
    sc = score_record(segs, load_annotation(ann_path))
    assert f1(sc["s1_tp"], sc["s1_fp"], sc["s1_fn"]) >= 0.85
    assert f1(sc["s2_tp"], sc["s2_fp"], sc["s2_fn"]) >= 0.80


@pytest.mark.data
def test_streaming_publication_lag_is_bounded(pcg_root: Path) -> None:
    wav, _ = _rec(pcg_root, "a", "a0001")
    x, fs = read_wav(wav)
    seg = pcg.PCGSegmenter(fs)
    step = fs // 4
    worst = 0.0
    for a in range(0, fs * 20, step):
        now = (a + step) / fs
        for s in seg.process(x[a : a + step]):
            worst = max(worst, now - s.end)
    assert 0 < worst <= seg.latency_s


@pytest.mark.data
def test_analyze_pcg_wav_and_wfdb(pcg_root: Path) -> None:
    wav, _ = _rec(pcg_root, "a", "a0001")
    r = analyze_pcg(wav)
    assert set(r) == {"segments", "heart_rate_bpm", "systolic_interval_s",
                      "diastolic_interval_s", "quality", "duration_s", "fs"}
    assert r["fs"] == 2000 and r["duration_s"] == pytest.approx(35.666)
    assert 55 < r["heart_rate_bpm"] < 110
    assert 0.2 < r["systolic_interval_s"] < 0.45 and 0.3 < r["diastolic_interval_s"] < 0.9
    assert r["segments"][0]["start"] >= 0 and r["segments"][-1]["end"] <= r["duration_s"]
    r2 = analyze_pcg(wav.with_suffix(".hea"))  # WFDB record, PCG signal chosen by name
    assert r2["heart_rate_bpm"] == pytest.approx(r["heart_rate_bpm"], abs=1.0)


@pytest.mark.data
def test_wav_formats_and_rates(pcg_root: Path, tmp_path: Path) -> None:
    from scipy.io import wavfile

    wav, _ = _rec(pcg_root, "a", "a0001")
    x, fs = read_wav(wav)
    x = x[: fs * 15]
    ref = pcg.analyze_signal(x, fs)
    # 44.1 kHz stereo float32, first channel used
    y = pcg.resample(x, fs, 44100)
    p = tmp_path / "f32.wav"
    wavfile.write(p, 44100, np.stack([y, np.zeros_like(y)], axis=1).astype(np.float32))
    r = analyze_pcg(p)
    assert r["fs"] == 44100
    assert r["heart_rate_bpm"] == pytest.approx(ref.heart_rate_bpm, abs=2.0)
    # 24-bit PCM at 8 kHz through the stdlib reader
    z = pcg.resample(x, fs, 8000)
    ints = np.clip(np.round(z * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype("<i4")
    raw = np.frombuffer(ints.tobytes(), dtype=np.uint8).reshape(-1, 4)[:, :3].tobytes()
    p24 = tmp_path / "s24.wav"
    with wave.open(str(p24), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(raw)
    back, fs24 = read_wav(p24)
    assert fs24 == 8000
    np.testing.assert_allclose(back, z, atol=2.0 / (1 << 23))
    r24 = analyze_pcg(p24)
    assert r24["heart_rate_bpm"] == pytest.approx(ref.heart_rate_bpm, abs=2.0)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_wav(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DataError):
        read_wav(bad)
    with pytest.raises(DataError, match="no WAV file or WFDB header"):
        read_pcg(tmp_path / "nothing")
    low = tmp_path / "low.wav"
    with wave.open(str(low), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(500)
        w.writeframes(np.zeros(1000, dtype="<i2").tobytes())
    with pytest.raises(DataError, match="between 800"):
        analyze_pcg(low)


def test_analyze_pcg_silence(tmp_path: Path) -> None:
    p = tmp_path / "silence.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(4000)
        w.writeframes(np.zeros(4000 * 5, dtype="<i2").tobytes())
    r = analyze_pcg(p)
    assert r["segments"] == [] and r["quality"] == 0.0 and r["heart_rate_bpm"] is None


@pytest.mark.data
def test_ecg_reference_heart_rate(pcg_root: Path) -> None:
    import wfdb

    rec = wfdb.rdrecord(str(pcg_root / "training-a" / "a0001"))
    hr = ecg_heart_rate(rec.p_signal[:, 1], rec.fs)
    x, fs = read_wav(pcg_root / "training-a" / "a0001.wav")
    assert pcg.analyze_signal(x, fs).heart_rate_bpm == pytest.approx(hr, abs=5.0)


def test_score_events_one_to_one() -> None:
    ref = np.array([1.0, 2.0, 3.0])
    det = np.array([1.05, 1.06, 2.2, 2.95])
    assert score_events(ref, det, 0.06) == (2, 2, 1)
    assert score_events(ref, np.array([]), 0.06) == (0, 0, 3)


# --------------------------------------------------------------------------------------
# CirCor and Springer's segmentations (issue 16)
# --------------------------------------------------------------------------------------
def test_circor_annotation_clips_and_marks_unannotated(tmp_path: Path) -> None:
    from telediag.evaluation.pcg_seg import load_circor_annotation

    tsv = tmp_path / "x.tsv"
    tsv.write_text("0\t0.5\t0\n0.5\t0.6\t1\n0.6\t0.9\t2\n0.9\t1.0\t3\n1.0\t1.5\t4\n"
                   "1.5\t1.6\t1\n1.6\t1.9\t2\n1.9\t2.0\t3\n2.0\t9.0\t4\n")
    a = load_circor_annotation(tsv, duration_s=2.5)
    assert a.span == (0.5, 2.5)  # first annotated boundary to the clipped end
    assert (0.0, 0.5) in a.noisy
    np.testing.assert_allclose(a.centres(0), [0.55, 1.55])
    np.testing.assert_allclose(a.centres(2), [0.95, 1.95])
    tsv.write_text("0\t1\t7\n")
    with pytest.raises(DataError, match="state 0-4"):
        load_circor_annotation(tsv, 2.0)


@pytest.mark.data
def test_circor_record_loads_and_segments(shared_data: Path) -> None:
    from telediag.evaluation.pcg_seg import circor_records, load_circor_annotation, read_audio

    folder = shared_data / "circor"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"no CirCor data under {folder}")
    recs = circor_records(folder)
    assert len(recs) == 942 and all(r.set == "circor" for r in recs)
    r = next(r for r in recs if r.name == "14241_PV")
    x, fs = read_audio(r.wav)
    assert fs == 2000 and x.ndim == 1 and np.abs(x).max() <= 1.0
    ann = load_circor_annotation(r.ann, x.size / fs)
    sc = score_record(pcg.segment(x, fs), ann)
    assert f1(sc["s1_tp"], sc["s1_fp"], sc["s1_fn"]) >= 0.8


@pytest.mark.data
def test_springer_segmentation_matches_the_reference(pcg_root: Path) -> None:
    from telediag.evaluation.pcg_seg import list_records, load_springer_segments

    rec = next(r for r in list_records(pcg_root, ("a",)) if r.name == "a0001")
    segs = load_springer_segments(pcg_root, rec)
    assert segs is not None and [s.state for s in segs[:4]] == ["diastole", "S1", "systole", "S2"]
    sc = score_record(segs, load_annotation(rec.ann))
    assert f1(sc["s1_tp"], sc["s1_fp"], sc["s1_fn"]) >= 0.95
