"""EDF+/BDF+ export, read back with pyedflib (EDFlib, a reader written elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyedflib
import pytest

from telediag.errors import DataError
from telediag.exports.edf import EdfAnnotation, EdfSignal, session_to_edf, write_edf
from telediag.exports.session import load_session
from telediag.recorder import Recorder
from telediag.transports.wire import Chunk

T0 = 1_796_000_000_250_000_000  # 2026-12-01T..:..:..25, a quarter second past a whole second


def _read(path: Path) -> tuple[pyedflib.EdfReader, list[tuple[float, float, str]]]:
    f = pyedflib.EdfReader(str(path))
    on, du, tx = f.readAnnotations()
    return f, list(zip(on.tolist(), du.tolist(), tx.tolist(), strict=True))


def test_two_rates_gap_and_annotations_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.4, 3600)  # 10 s at 360 Hz, mV
    b = rng.normal(0, 50.0, 2500)  # 10 s at 250 Hz, uV
    a[3 * 360 : 5 * 360] = np.nan  # records 3 and 4 lost in both signals -> EDF+D
    b[3 * 250 : 5 * 250] = np.nan
    a[7 * 360 + 10 : 7 * 360 + 20] = np.nan  # a partly lost record stays, marked
    anns = [EdfAnnotation(0.5, None, "beat N p=0.98"), EdfAnnotation(6.25, 2.5, "alarm tachycardia"),
            EdfAnnotation(8.0, 1.0, "unusable MLII")]
    out = tmp_path / "x.edf"
    info = write_edf(out, [EdfSignal("MLII", "mV", 360.0, a, resolution=0.005),
                           EdfSignal("EEG", "uV", 250.0, b, resolution=0.5)], anns, start_ns=T0,
                     patient="P-17 F X Jane_Doe")
    assert info.file_type == "EDF+C" and info.skipped_records == 0 and info.records == 10
    f, got = _read(out)
    try:
        assert f.filetype == pyedflib.FILETYPE_EDFPLUS and f.signals_in_file == 2
        assert f.getSignalLabels() == ["MLII", "EEG"]
        assert [f.getPhysicalDimension(i) for i in range(2)] == ["mV", "uV"]
        assert [f.getSampleFrequency(i) for i in range(2)] == [360.0, 250.0]
        assert f.getPatientCode() == "P-17" and f.getPatientName() == "Jane Doe"
        st = f.getStartdatetime()
        assert (st.hour, st.minute, st.second) == (int(T0 // 1e9 % 86400 // 3600), int(T0 // 1e9 % 3600 // 60),
                                                    int(T0 // 1e9 % 60))
        # samples within half a step of the source; lost ones are 0 (and annotated below)
        for i, src in enumerate((a, b)):
            y = f.readSignal(i)
            assert y.shape == src.shape
            fin = np.isfinite(src)
            assert np.max(np.abs(y[fin] - src[fin])) <= info.steps[i] / 2 + 1e-12
            assert np.all(np.abs(y[~fin]) <= info.steps[i])
    finally:
        f.close()
    texts = [t for _, _, t in got]
    # EDFlib reports onsets from the file's start (the header second plus its fraction)
    for want in anns:
        hit = [(o, d) for o, d, t in got if t == want.text]
        assert len(hit) == 1 and hit[0][0] == pytest.approx(want.onset_s, abs=2e-6)
        assert hit[0][1] == pytest.approx(-1 if want.duration_s is None else want.duration_s, abs=2e-6)
    lost = sorted((o, d) for o, d, t in got if t == "signal lost MLII")
    assert lost == [pytest.approx((3.0, 2.0)), pytest.approx((7 + 10 / 360, 10 / 360), abs=2e-6)]
    assert "signal lost EEG" in texts


def test_bits_auto_picks_bdf_when_16_bits_lose_precision(tmp_path: Path) -> None:
    x = np.sin(np.arange(2000) / 30.0) * 300.0  # range 600 units
    fine = write_edf(tmp_path / "fine.bdf", [EdfSignal("PCG", "", 1000.0, x, resolution=1e-4)], start_ns=T0)
    coarse = write_edf(tmp_path / "coarse.edf", [EdfSignal("PCG", "", 1000.0, x, resolution=0.05)], start_ns=T0)
    assert fine.file_type == "BDF+C" and coarse.file_type == "EDF+C"
    for info, ftype in ((fine, pyedflib.FILETYPE_BDFPLUS), (coarse, pyedflib.FILETYPE_EDFPLUS)):
        f = pyedflib.EdfReader(str(info.path))
        try:
            assert f.filetype == ftype
            assert np.max(np.abs(f.readSignal(0) - x)) <= info.steps[0] / 2 + 1e-9
        finally:
            f.close()
    assert fine.steps[0] < 1e-4 < coarse.steps[0] <= 0.05


def test_bad_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no finite sample"):
        write_edf(tmp_path / "x.edf", [EdfSignal("A", "mV", 100.0, np.full(100, np.nan))], start_ns=T0)
    with pytest.raises(DataError, match="bits"):
        write_edf(tmp_path / "x.edf", [EdfSignal("A", "mV", 100.0, np.zeros(100))], start_ns=T0, bits=12)
    with pytest.raises(DataError, match="data-record duration"):
        write_edf(tmp_path / "x.edf", [EdfSignal("A", "mV", 100.37, np.zeros(100))], start_ns=T0)


def _recording(out: Path) -> tuple[np.ndarray, list[dict], list[dict]]:
    """A recorder folder from synthetic engine outputs: ECG with a lost second, beats, alarms."""
    fs = 360.0
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.3, (int(8 * fs), 2)).astype(np.float32)
    rec = Recorder(out)
    meta = {"patient": "MRN-0042", "encounter": "ENC-7"}
    for seq in range(8):
        if seq == 4:
            continue  # a lost second
        blk = x[int(seq * fs) : int((seq + 1) * fs)]
        rec.add(Chunk.signal("ecg", "bed-9/ecg/filtered", seq, T0 + int(seq * 1e9), blk, fs, ["MLII", "V1"],
                             ["mV", "mV"], meta=meta))
    beats = [{"sample": int(s), "t_ns": T0 + int(round(s * 1e9 / fs)), "label": lab,
              "probs": {"N": 0.9 if lab == "N" else 0.05, "V": 0.9 if lab == "V" else 0.05}}
             for s, lab in ((100, "N"), (400, "V"), (700, "N"), (2000, "N"))]
    beats[-1]["usable"] = False
    for i, bt in enumerate(beats):
        rec.add(Chunk.record("beats", "bed-9/ecg", i, bt["t_ns"], {"beats": [bt], "lead": "MLII"}, meta=meta))
    on = T0 + 2_000_000_000
    alarms = [{"type": "tachycardia", "state": "on", "onset_ns": on, "end_ns": None},
              {"type": "tachycardia", "state": "off", "onset_ns": on, "end_ns": on + 1_500_000_000},
              {"type": "afib", "state": "on", "onset_ns": on + 3_000_000_000, "end_ns": None}]
    for i, al in enumerate(alarms):
        rec.add(Chunk.record("alarm", "bed-9/ecg", i, al["onset_ns"], al, meta=meta))
    rec.add(Chunk.record("quality", "bed-9/ecg", 0, T0, {"hop_s": 1.0, "channels": ["MLII", "V1"], "blocks": [
        {"sample": 360, "t_ns": T0 + 1_000_000_000, "usable": [True, False]},
        {"sample": 720, "t_ns": T0 + 2_000_000_000, "usable": [True, False]}]}, meta=meta))
    rec.close()
    return x, beats, alarms


def test_recording_to_edf_matches_the_source(tmp_path: Path) -> None:
    x, beats, _ = _recording(tmp_path / "rec")
    session = load_session(tmp_path / "rec")
    assert session.meta["bed-9/ecg/filtered"]["patient"] == "MRN-0042"
    (info,) = session_to_edf(session, tmp_path / "edf")
    assert info.file_type == "EDF+C"  # 16 bits hold 0.5 uV over this range
    f, got = _read(info.path)
    try:
        assert f.getPatientCode() == "MRN-0042"
        for i in range(2):
            y = f.readSignal(i)
            src = x[:, i].astype(np.float64)
            assert y.shape == src.shape
            # the recorder keeps 10 nV steps; EDF adds at most half its own step
            ok = np.r_[0:4 * 360, 5 * 360:8 * 360]
            assert np.max(np.abs(y[ok] - src[ok])) <= info.steps[i] / 2 + 1e-5
            assert np.all(np.abs(y[4 * 360:5 * 360]) <= info.steps[i])
    finally:
        f.close()
    beat_anns = [(o, t) for o, _, t in got if t.startswith("beat ")]
    assert [t for _, t in beat_anns] == ["beat N p=0.90", "beat V p=0.90", "beat N p=0.90",
                                         "beat N p=0.90 unusable"]
    for (o, _), bt in zip(beat_anns, beats, strict=True):
        assert o == pytest.approx(bt["sample"] / 360.0, abs=2e-6)
    alarm = [(o, d) for o, d, t in got if t == "alarm tachycardia"]
    assert alarm == [pytest.approx((2.0, 1.5), abs=2e-6)]
    af = [(o, d, t) for o, d, t in got if t.startswith("AF episode")]
    assert len(af) == 1 and af[0][0] == pytest.approx(5.0, abs=2e-6)
    assert af[0][1] == pytest.approx(3.0, abs=2e-6) and "still on at end" in af[0][2]
    assert [(o, d) for o, d, t in got if t == "unusable V1"] == [pytest.approx((1.0, 2.0), abs=2e-6)]
    assert [(o, d) for o, d, t in got if t.startswith("signal lost")] == [pytest.approx((4.0, 1.0), abs=2e-6)] * 2


def test_discontinuous_option_leaves_out_lost_records(tmp_path: Path) -> None:
    """EDF+D: pyedflib, MNE and edfio cannot read it, so its bytes are parsed here."""
    x = np.arange(1000, dtype=np.float64)
    x[300:500] = np.nan  # records 3 and 4 (100 Hz, 1 s records)
    info = write_edf(tmp_path / "d.edf", [EdfSignal("A", "mV", 100.0, x, resolution=1.0)],
                     start_ns=T0, discontinuous=True)
    assert info.file_type == "EDF+D" and info.records == 8
    raw = (tmp_path / "d.edf").read_bytes()
    assert raw[192:197] == b"EDF+D" and int(raw[236:244]) == 8
    ann_spr = int(raw[256 + 2 * 216 + 8: 256 + 2 * 216 + 16])  # 2nd signal's samples per record
    rec_bytes = 2 * (100 + ann_spr)
    onsets = [raw[768 + k * rec_bytes + 200: 768 + k * rec_bytes + rec_bytes].split(b"\x14")[0]
              for k in range(8)]
    assert [float(o) for o in onsets] == [0.25 + s for s in (0, 1, 2, 5, 6, 7, 8, 9)]


def test_record_format_edf_writes_edf_when_the_recording_stops(tmp_path: Path) -> None:
    import socket
    import threading
    import time

    import zmq

    from telediag.cli import main
    from telediag.transports.wire import encode

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)  # XPUB: we see the recorder's subscription before sending
    pub.bind(addr)
    x = np.random.default_rng(7).normal(0, 0.5, (1000, 1)).astype(np.float32)

    def publish() -> None:
        if not pub.poll(20_000):  # the recorder's SUB subscribed
            return
        pub.recv()
        time.sleep(0.1)
        for k in range(10):
            pub.send_multipart(encode(Chunk.signal("ecg", "bed-2/ecg/filtered", k, T0 + k * 400_000_000,
                                                   x[k * 100:(k + 1) * 100], 250.0, ["II"], ["mV"])))
        pub.send_multipart(encode(Chunk.record("beats", "bed-2/ecg", 0, T0 + S_ONE, {"beats": [
            {"sample": 250, "t_ns": T0 + S_ONE, "label": "V", "probs": {"V": 0.97}}]})))

    t = threading.Thread(target=publish)
    t.start()
    try:
        assert main(["record", addr, "--out-dir", str(tmp_path), "--duration", "2.5", "--format", "edf"]) == 0
    finally:
        t.join()
        pub.close(0)
    f, got = _read(tmp_path / "bed-2_ecg_filtered.edf")
    try:
        y = f.readSignal(0)
        assert y.shape == (1000,) and np.max(np.abs(y - x[:, 0])) < 1e-4
    finally:
        f.close()
    assert [(pytest.approx(o, abs=2e-6), t) for o, _, t in got] == [(1.0, "beat V p=0.97")]


S_ONE = 1_000_000_000


@pytest.mark.parametrize("step_s", [7200, -3600])
def test_source_clock_step_keeps_every_sample_at_its_source_time(tmp_path: Path, step_s: int) -> None:
    """A source clock step (2 h forward / 1 h back, gaps.jsonl clock_step_ns) used to move the
    header t0_ns to the post-step timeline: every sample before the step was exported off by the
    step. Now a file per stretch, each at its own source time, in EDF and FHIR alike."""
    import calendar

    from telediag.exports.fhir import _session_streams

    fs, step = 360.0, step_s * 10**9
    x = np.sin(np.arange(int(4 * fs)) / 9.0)[:, None] * np.r_[1.0, 0.5]  # 4 s, 2 leads; step after 2 s
    x[int(2 * fs):, 1] = np.nan  # V1 lost after the step (a file where one lead has no sample)
    t0s = [T0, T0 + 10**9, T0 + step + 2 * 10**9, T0 + step + 3 * 10**9]
    rec = Recorder(tmp_path / "rec")
    for seq, t0 in enumerate(t0s):
        rec.add(Chunk.signal("ecg", "bed-3/ecg/filtered", seq, t0, x[int(seq * fs):int((seq + 1) * fs)], fs,
                             ["MLII", "V1"], ["mV", "mV"]))
    beats = [{"sample": 100, "t_ns": T0 + round(100 * 1e9 / fs), "label": "N"},  # before the step
             {"sample": 900, "t_ns": T0 + step + round(900 * 1e9 / fs), "label": "V"}]  # after it
    for i, bt in enumerate(beats):
        rec.add(Chunk.record("beats", "bed-3/ecg", i, bt["t_ns"], {"beats": [bt]}))
    rec.add(Chunk.record("alarm", "bed-3/ecg", 0, T0 + 10**9 // 2,
                         {"type": "tachycardia", "state": "on", "onset_ns": T0 + 10**9 // 2}))
    rec.close()
    session = load_session(tmp_path / "rec")
    (sig,) = session.signals
    assert sig.t0_ns == T0  # the header keeps sample 0's time
    assert sig.t_ns(100) == beats[0]["t_ns"] and sig.t_ns(900) == beats[1]["t_ns"]
    assert [sig.index_of(bt["t_ns"]) for bt in beats] == [100, 900]
    import wfdb  # the recorder's own WFDB beat annotations (both beats arrived after the step)

    assert wfdb.rdann(str(tmp_path / "rec" / "bed-3_ecg_filtered"), "beats").sample.tolist() == [100, 900]
    from telediag.report.build import _sig_slice  # the PDF report's strips

    for bt in beats:
        assert np.allclose(_sig_slice(sig, bt["t_ns"], 3 / fs), x[bt["sample"]:bt["sample"] + 3, 0], atol=1e-5)
    infos = session_to_edf(session, tmp_path / "edf")
    assert [i.path.name for i in infos] == ["bed-3_ecg_filtered.edf", "bed-3_ecg_filtered.seg2.edf"]
    for k, (info, first) in enumerate(zip(infos, (0, 720), strict=True)):
        f, got = _read(info.path)
        try:
            st = f.getStartdatetime()
            # EDFlib's subsecond is in 100 ns units (its datetime's microseconds are not)
            start_ns = calendar.timegm(st.timetuple()) * 10**9 + f.starttime_subsecond * 100
            assert start_ns == t0s[2 * k]  # the source time of the file's first sample
            assert f.getNSamples()[0] == 720
            y = f.readSignal(0)
            assert np.max(np.abs(y - x[first:first + 720, 0])) <= info.steps[0] / 2 + 1e-5
        finally:
            f.close()
        # each beat/alarm in the file of its stretch, at its source time
        bt = beats[k]
        hit = [o for o, _, t in got if t.startswith("beat ")]
        assert hit == [pytest.approx((bt["t_ns"] - start_ns) / 1e9, abs=2e-6)]
        alarm = [o for o, _, t in got if t.startswith("alarm tachycardia")]
        assert alarm == ([pytest.approx(0.5, abs=2e-6)] if k == 0 else [])
        assert any(t.startswith(f"source clock step {step_s:+.3f} s") for _, _, t in got)
        assert [(o, d) for o, d, t in got if t == "signal lost V1"] == ([] if k == 0 else [(0.0, 2.0)])
    # FHIR: the stream's period covers both stretches on their own timelines
    (sd,) = _session_streams(session)
    assert (sd.start_ns, sd.end_ns) == (min(T0, T0 + step + 2 * 10**9), max(T0 + 2 * 10**9, T0 + step + 4 * 10**9))
    assert session.start_ns == sd.start_ns and session.end_ns == sd.end_ns
