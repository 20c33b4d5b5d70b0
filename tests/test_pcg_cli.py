"""``telediag analyze pcg`` and ``telediag source pcg --wav/--wfdb`` (replay)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port  # noqa: I001

from telediag.cli import main
from telediag.engine.stages.pcg import load_abnormality_model
from telediag.evaluation.pcg_analyze import analyze_pcg, read_pcg, read_wav
from telediag.transports.wire import decode

STATES = {"S1", "systole", "S2", "diastole"}


@pytest.fixture(scope="module")
def pcg_dir(shared_data: Path) -> Path:
    d = shared_data / "pcg2016" / "training-a"
    if not (d / "a0001.wav").exists():
        pytest.skip(f"PCG recordings not found in {d}")
    return d


def test_analyze_writes_issue5_json_and_reports_bad_inputs(tmp_path: Path, pcg_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    wfdb_copy = tmp_path / "rec"
    wfdb_copy.mkdir()
    for ext in (".hea", ".wav", ".dat"):
        if (pcg_dir / f"a0002{ext}").exists():
            shutil.copy(pcg_dir / f"a0002{ext}", wfdb_copy / f"a0002{ext}")
    out = tmp_path / "out"
    rc = main(["analyze", "pcg", str(pcg_dir / "a0001.wav"), str(bad), str(tmp_path / "missing.wav"),
               str(wfdb_copy / "a0002"), "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "broken.wav" in err and "missing.wav" in err and "2 of 4 input(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a0001.json", "a0002.json"]
    doc = json.loads((out / "a0001.json").read_text())
    for key in ("segments", "heart_rate_bpm", "abnormal_prob", "label"):
        assert key in doc
    assert doc["segments"] and all(set(s) == {"start", "end", "state"} and s["state"] in STATES
                                   for s in doc["segments"])
    assert all(a["end"] <= b["start"] + 1e-9 for a, b in zip(doc["segments"], doc["segments"][1:], strict=False))
    ref = analyze_pcg(pcg_dir / "a0001.wav")
    assert doc["segments"] == ref["segments"] and doc["heart_rate_bpm"] == ref["heart_rate_bpm"]
    assert 50 < doc["heart_rate_bpm"] < 75
    if load_abnormality_model() is None:
        assert doc["abnormal_prob"] is None and doc["label"] is None
    else:
        assert 0.0 <= doc["abnormal_prob"] <= 1.0 and doc["label"] in ("normal", "abnormal")


def test_analyze_all_good_inputs_exit_zero(tmp_path: Path, pcg_dir: Path) -> None:
    rc = main(["analyze", "pcg", str(pcg_dir / "a0001.wav"), "--out-dir", str(tmp_path), "--quiet"])
    assert rc == 0 and (tmp_path / "a0001.json").is_file()


def _pull_all(addr: str, stop: threading.Event, out: list) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(addr)
    try:
        while not stop.is_set() or s.poll(300):
            if s.poll(50):
                out.append(decode(s.recv_multipart()))
    finally:
        s.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("fmt", ["wav", "wfdb"])
def test_source_replays_a_pcg_file(fmt: str, pcg_dir: Path) -> None:
    addr = f"tcp://127.0.0.1:{free_port()}"
    got: list = []
    stop = threading.Event()
    t = threading.Thread(target=_pull_all, args=(addr, stop, got))
    t.start()
    try:
        src = ["--wav", str(pcg_dir / "a0001.wav")] if fmt == "wav" else ["--wfdb", str(pcg_dir / "a0001")]
        if fmt == "wfdb" and not (pcg_dir / "a0001.hea").exists():
            pytest.skip("no WFDB header beside a0001.wav")
        rc = main(["source", "pcg", *src, "--speed", "max", "--connect", addr, "--stream", "bed-3/pcg"])
    finally:
        stop.set()
        t.join(10)
    assert rc == 0
    x, fs = read_wav(pcg_dir / "a0001.wav") if fmt == "wav" else read_pcg(pcg_dir / "a0001")
    assert [c.seq for c in got] == list(range(len(got)))
    assert all(c.kind == "pcg" and c.stream == "bed-3/pcg" and c.rate_hz == fs for c in got)
    y = np.concatenate([np.asarray(c.data) for c in got])[:, 0]
    np.testing.assert_allclose(y, x.astype(np.float32), rtol=0, atol=0)


def test_source_needs_exactly_one_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source", "pcg"]) == 2
    assert "exactly one of --device" in capsys.readouterr().err
    assert main(["source", "pcg", "--wav", "/nonexistent.wav"]) == 2
    assert "WAV file not found" in capsys.readouterr().err


class _Clf:
    name = "stub"

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def predict(self, audio: np.ndarray, fs: int) -> tuple[float, str]:
        if self.fail:
            raise RuntimeError("model input contract violated")
        return 0.25, "normal"


@pytest.mark.parametrize("fail", [False, True])
def test_analyze_fills_abnormality_from_an_installed_classifier(fail: bool, tmp_path: Path, pcg_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from telediag.engine.stages import pcg as pcg_stage

    monkeypatch.setattr(pcg_stage, "_MODEL", [pcg_stage.AbnormalityModel(_Clf(fail), "stub")])
    monkeypatch.setattr(pcg_stage, "_MODEL_REASON", [""])
    rc = main(["analyze", "pcg", str(pcg_dir / "a0001.wav"), "--out-dir", str(tmp_path), "--quiet"])
    doc = json.loads((tmp_path / "a0001.json").read_text())
    assert rc == 0 and doc["segments"]
    if fail:
        assert doc["abnormal_prob"] is None and "model input contract violated" in doc["abnormal_error"]
    else:
        assert doc["abnormal_prob"] == 0.25 and doc["label"] == "normal" and "abnormal_error" not in doc
