"""Inference API over ZeroMQ: framing, validation errors, deadlines, concurrency, CLI parity."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from telediag.api import ApiError, ApiServer, InferenceClient, Limits, ModelRegistry, Service
from telediag.api.ops import OpOutput, OpSpec, default_ops, encode_png
from telediag.api.schema import Param, pack_header

FS = 360.0


def _ecg(seconds: float = 10.0, fs: float = FS, seed: int = 0) -> np.ndarray:
    """Seeded synthetic 2-lead ECG-like signal (Gaussian R waves at 75 bpm plus noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fs)) / fs
    r = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.012**2))
    return np.stack([r, 0.5 * r], axis=1) + 0.01 * rng.standard_normal((t.size, 2))


def _test_ops(gate: threading.Event, calls: list[int]) -> dict[str, OpSpec]:
    ops = default_ops()

    def slow(ctx: Any, p: dict[str, Any], inp: Any) -> OpOutput:
        calls.append(1)
        gate.wait(p["wait_s"])
        return OpOutput({"slept": True})

    ops["test.block"] = OpSpec("test.block", "blocks until released", (Param("wait_s", "number", default=10.0),),
                               None, slow)
    return ops


@pytest.fixture()
def gate() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


@pytest.fixture()
def server(gate: threading.Event) -> Iterator[ApiServer]:
    calls: list[int] = []
    svc = Service(ModelRegistry(roots=[]), workers=3, max_pending=8, ops=_test_ops(gate, calls),
                  limits=Limits(max_payload_bytes=1 << 20, max_header_bytes=4096))
    srv = ApiServer(svc, "tcp://127.0.0.1:*").start()
    srv.calls = calls  # type: ignore[attr-defined]
    yield srv
    gate.set()
    srv.stop(close_service=True)


@pytest.fixture()
def client(server: ApiServer) -> Iterator[InferenceClient]:
    with InferenceClient(server.endpoint, timeout_s=20, retries=0) as c:
        yield c


def _raw(server: ApiServer, frames: list[bytes], kind: int = zmq.DEALER) -> dict[str, Any]:
    """Send raw frames from a fresh socket; return the decoded reply header."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(10_000), "no reply"
        rep = s.recv_multipart()
    finally:
        s.close(0)
    if kind == zmq.DEALER and rep[0] == b"":
        rep = rep[1:]
    return msgpack.unpackb(rep[0], raw=False)


# --------------------------------------------------------------------------- basics


def test_health_and_models(client: InferenceClient) -> None:
    h = client.health()
    assert h["status"] == "ok" and h["api_version"] == 1
    assert h["ops"]["health"] == "available" and h["ops"]["ecg.analyze"] == "available"
    assert client.models() == []


def test_ecg_result_equals_local_analysis(client: InferenceClient) -> None:
    from telediag.evaluation.ecg_analyze import analyze_recording
    from telediag.sources.readers import Recording

    x = _ecg()
    remote = client.analyze_ecg(x, FS, channels=["MLII", "V1"], name="syn")
    local = analyze_recording(Recording(x, FS, ("MLII", "V1"), ("mV", "mV"), "syn"))
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert len(remote["beats"]) >= 10
    assert client.last_timing["run_ms"] > 0


def test_ecg_lead_by_name_and_float32(client: InferenceClient) -> None:
    x = _ecg().astype(np.float32)
    r = client.analyze_ecg(x, FS, channels=["I", "II"], lead="II")
    assert r["lead"] == {"index": 1, "name": "II"}
    assert r["n_samples"] == x.shape[0]


def test_req_socket_and_dealer_without_delimiter(server: ApiServer) -> None:
    head = pack_header({"v": 1, "op": "health", "id": 7})
    rep = _raw(server, [head], kind=zmq.REQ)
    assert rep["ok"] and rep["id"] == 7
    rep = _raw(server, [head], kind=zmq.DEALER)  # no empty delimiter
    assert rep["ok"] and rep["id"] == 7


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("header", "code", "needle"),
    [
        ({"v": 2, "op": "health", "id": "a"}, "unsupported_version", "header.v must be 1"),
        ({"v": 1, "op": "nope", "id": "a"}, "unknown_op", "nope"),
        ({"v": 1, "op": "health"}, "bad_request", "header.id is required"),
        ({"v": 1, "id": "a"}, "bad_request", "header.op is required"),
        ({"v": 1, "op": "health", "id": "a", "bogus": 1}, "bad_request", "bogus"),
        ({"v": 1, "op": "health", "id": "a", "params": {"x": 1}}, "bad_request", "unknown parameter"),
        ({"v": 1, "op": "health", "id": "a", "deadline_ms": -5}, "bad_request", "deadline_ms"),
        ({"v": 1, "op": "health", "id": True}, "bad_request", "header.id"),
        ({"v": 1, "op": "ecg.analyze", "id": "a", "params": {"fs": 360}}, "bad_request", "exactly 1 payload frame (the signal), got 0"),
    ],
)
def test_header_errors(server: ApiServer, header: dict[str, Any], code: str, needle: str) -> None:
    rep = _raw(server, [b"", pack_header(header)])
    assert rep["ok"] is False
    assert rep["error"]["code"] == code, rep
    assert needle in rep["error"]["message"]


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (msgpack.packb({"v": msgpack.ExtType(1, b"x")}), "extension"),
        (b"", "empty"),
    ],
)
def test_malformed_headers(server: ApiServer, frame: bytes, needle: str) -> None:
    frames = [b"", frame] if frame else [b"", b"", b""]
    rep = _raw(server, frames)
    assert rep["error"]["code"] == "bad_request"
    assert needle in rep["error"]["message"]


def test_payload_errors(server: ApiServer) -> None:
    x = np.zeros((400, 2), "<f4")
    base = {"v": 1, "op": "ecg.analyze", "id": 1, "params": {"fs": 360.0}, "dtype": "<f4"}
    rep = _raw(server, [b"", pack_header({**base, "shape": [400, 3]}), x.tobytes()])
    assert rep["error"]["code"] == "bad_request" and "expected 4800" in rep["error"]["message"]
    rep = _raw(server, [b"", pack_header({**base, "shape": [400, 2], "dtype": ">f4"}), x.tobytes()])
    assert rep["error"]["code"] == "bad_request" and "dtype" in rep["error"]["message"]
    big = np.zeros((200_000, 2), "<f4")  # 1.6 MB > the 1 MiB limit of the fixture
    rep = _raw(server, [b"", pack_header({**base, "shape": [200_000, 2]}), big.tobytes()])
    assert rep["error"]["code"] == "payload_too_large" and "limit" in rep["error"]["message"]
    rep = _raw(server, [b"", b"\x81" + b"\xa1v" + b"\xda" + (5000).to_bytes(2, "big") + b"x" * 5000])
    assert rep["error"]["code"] == "payload_too_large" and "header" in rep["error"]["message"]
    rep = _raw(server, [b"", pack_header({**base, "shape": [400, 2]}), x.tobytes(), b"extra"])
    assert rep["error"]["code"] == "bad_request" and "exactly 1 payload" in rep["error"]["message"]


@pytest.mark.parametrize(
    ("kwargs", "code", "needle"),
    [
        ({"fs": 100.0}, "bad_request", "params.fs must be in [125, 2000], got 100.0"),
        ({"fs": 2500.0}, "bad_request", "params.fs"),
        ({"fs": FS, "channels": ["a"]}, "bad_request", "params.channels must have one entry per signal column (2)"),
        ({"fs": FS, "lead": 5}, "bad_request", "params.lead"),
        ({"fs": FS, "lead": "V5"}, "bad_request", "not a channel"),
    ],
)
def test_ecg_param_errors(client: InferenceClient, kwargs: dict[str, Any], code: str, needle: str) -> None:
    fs = kwargs.pop("fs")
    with pytest.raises(ApiError) as ei:
        client.analyze_ecg(_ecg(2.0), fs, **kwargs)
    assert ei.value.code == code
    assert needle in ei.value.message


def test_ecg_input_errors(client: InferenceClient) -> None:
    with pytest.raises(ApiError, match="at least 1 s") as ei:
        client.analyze_ecg(np.zeros((100, 1)), FS)
    assert ei.value.code == "invalid_input"
    x = _ecg(2.0)
    x[5, 0] = np.inf
    with pytest.raises(ApiError, match="infinities") as ei:
        client.analyze_ecg(x, FS)
    x[5, 0] = np.nan  # NaN marks a missing sample: accepted
    assert client.analyze_ecg(x, FS)["n_samples"] == x.shape[0]
    with pytest.raises(ApiError, match="1 to 16 channels"):
        client.analyze_ecg(np.zeros((400, 17)), FS)


def test_pcg_errors(client: InferenceClient) -> None:
    with pytest.raises(ApiError, match=r"params.fs must be in \[800, 384000\]"):
        client.analyze_pcg(np.zeros(4000), 500)
    with pytest.raises(ApiError, match="mono"):
        client.analyze_pcg(np.zeros((4000, 2)), 2000)
    r = client.analyze_pcg(np.zeros(4000), 2000, classify=False)
    assert r["segments"] == [] and r["quality"] == 0.0 and r["abnormal_prob"] is None


def test_model_infer_unknown_model(client: InferenceClient) -> None:
    with pytest.raises(ApiError) as ei:
        client.infer_model("nope", {"x": np.zeros((1, 4), np.float32)})
    assert ei.value.code == "unknown_model"


def test_image_segment_unavailable_or_works(client: InferenceClient, server: ApiServer) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    if server.service.available()["image.segment"] is not None:
        with pytest.raises(ApiError) as ei:
            client.segment_image(rgb)
        assert ei.value.code == "unavailable" and "polyp_seg" in ei.value.message
        return
    r = client.segment_image(rgb)
    assert r["mask"].shape == (64, 64) and r["height"] == 64
    r2 = client.segment_image(encode_png(rgb), mask="png")
    assert bytes(r2["mask"][:8]) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- scheduling


def test_slow_request_does_not_block_others(server: ApiServer, gate: threading.Event) -> None:
    slow_reply: list[Any] = []

    def slow() -> None:
        with InferenceClient(server.endpoint, timeout_s=30, retries=0) as c:
            slow_reply.append(c.request("test.block", {"wait_s": 30.0})[0])

    t = threading.Thread(target=slow)
    t.start()
    with InferenceClient(server.endpoint, timeout_s=30, retries=0) as c:
        while not server.calls:  # type: ignore[attr-defined]
            c.health()
        r = c.analyze_ecg(_ecg(3.0), FS)  # answered while the slow call still holds a worker
        assert r["n_samples"] == int(3.0 * FS)
        assert not slow_reply and t.is_alive()
    gate.set()
    t.join(30)
    assert slow_reply == [{"slept": True}]


def test_deadline_exceeded(server: ApiServer, gate: threading.Event) -> None:
    with InferenceClient(server.endpoint, timeout_s=30, retries=0) as c:
        with pytest.raises(ApiError) as ei:
            c.request("test.block", {"wait_s": 0.3}, deadline_ms=50)
        assert ei.value.code == "deadline_exceeded" and "after its deadline" in ei.value.message


def test_deadline_while_queued_and_busy(gate: threading.Event) -> None:
    calls: list[int] = []
    svc = Service(ModelRegistry(roots=[]), workers=1, max_pending=2, ops=_test_ops(gate, calls))
    srv = ApiServer(svc, "tcp://127.0.0.1:*").start()
    results: dict[str, Any] = {}

    def call(key: str, **kw: Any) -> None:
        with InferenceClient(srv.endpoint, timeout_s=30, retries=0) as c:
            try:
                results[key] = c.request("test.block", {"wait_s": 30.0}, **kw)[0]
            except ApiError as e:
                results[key] = e.code

    try:
        t1 = threading.Thread(target=call, args=("first",))
        t1.start()
        with InferenceClient(srv.endpoint, timeout_s=30, retries=0) as c:
            while not calls:
                c.health()
            t2 = threading.Thread(target=call, args=("queued",), kwargs={"deadline_ms": 100})
            t2.start()
            while c.health()["pending"] < 2:
                pass
            with pytest.raises(ApiError) as ei:  # the only worker is blocked and the queue is full
                c.request("test.block", {"wait_s": 0.0})
            assert ei.value.code == "busy"
        time.sleep(0.2)  # let the queued call's 100 ms deadline pass while the worker is held
        gate.set()
        t1.join(30)
        t2.join(30)
        assert results == {"first": {"slept": True}, "queued": "deadline_exceeded"}
    finally:
        gate.set()
        srv.stop(close_service=True)


def test_client_timeout_and_retry(gate: threading.Event) -> None:
    calls: list[int] = []
    svc = Service(ModelRegistry(roots=[]), workers=2, ops=_test_ops(gate, calls))
    srv = ApiServer(svc, "tcp://127.0.0.1:*").start()
    try:
        with InferenceClient(srv.endpoint, timeout_s=0.3, retries=0) as c:
            with pytest.raises(ApiError) as ei:
                c.request("test.block", {"wait_s": 5.0})
            assert ei.value.code == "timeout"
        # the first attempt blocks a worker; the retry (same id) is served by the other one
        # once the gate opens, and the stale reply to the first attempt is ignored
        with InferenceClient(srv.endpoint, timeout_s=0.3, retries=3) as c:
            threading.Timer(0.5, gate.set).start()
            assert c.request("test.block", {"wait_s": 5.0})[0] == {"slept": True}
            assert c.health()["status"] == "ok"
    finally:
        gate.set()
        srv.stop(close_service=True)


def test_no_server_is_unreachable_and_a_silent_server_times_out() -> None:
    with InferenceClient("tcp://127.0.0.1:9", timeout_s=0.2, retries=1) as c, pytest.raises(ApiError) as ei:
        c.health()
    assert ei.value.code == "unreachable" and "tcp://127.0.0.1:9" in ei.value.message
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)  # completes the handshake, never answers
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with InferenceClient(f"tcp://127.0.0.1:{port}", timeout_s=0.5, retries=1) as c, \
                pytest.raises(ApiError) as ei:
            c.health()
        assert ei.value.code == "timeout" and "attempt 2/2" in ei.value.message
    finally:
        silent.close(0)


def test_many_concurrent_clients(server: ApiServer) -> None:
    x = _ecg(4.0)
    want = None
    errors: list[BaseException] = []
    got: list[str] = []

    def worker(k: int) -> None:
        try:
            with InferenceClient(server.endpoint, timeout_s=60, retries=2) as c:
                for _ in range(3):
                    for _attempt in range(200):  # "busy" is the admission limit working: back off, retry
                        try:
                            got.append(json.dumps(c.analyze_ecg(x, FS), sort_keys=True))
                            break
                        except Exception as e:  # noqa: BLE001
                            if "busy" not in str(e):
                                raise
                            time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(got) == 36
    want = got[0]
    assert all(g == want for g in got)


# --------------------------------------------------------------------------- CLI parity on real data


def _write_excerpt(src: Path, out: Path, seconds: float) -> str:
    import wfdb

    rec = wfdb.rdrecord(str(src), physical=False, sampto=int(seconds * 360))
    wfdb.wrsamp(src.name + "x", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(out))
    return str(out / (src.name + "x"))


@pytest.mark.data
def test_cli_infer_ecg_equals_analyze_ecg(mitdb: Path, tmp_path: Path, server: ApiServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from telediag.cli import main

    rec = _write_excerpt(mitdb / "208", tmp_path, 60.0)
    assert main(["analyze", "ecg", rec, "--out-dir", str(tmp_path / "out")]) == 0
    offline = json.loads((tmp_path / "out" / "208x.json").read_text())
    capsys.readouterr()
    assert main(["infer", "ecg", rec, "--addr", server.endpoint]) == 0
    online = json.loads(capsys.readouterr().out)
    assert online == offline
    assert len(online["beats"]) > 50


@pytest.mark.data
def test_cli_infer_pcg_equals_analyze_pcg(shared_data: Path, tmp_path: Path, server: ApiServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from telediag.cli import main

    wav = shared_data / "pcg2016" / "training-a" / "a0001.wav"
    if not wav.exists():
        pytest.skip(f"{wav} not found")
    assert main(["analyze", "pcg", str(wav), "--out-dir", str(tmp_path), "--quiet"]) == 0
    offline = json.loads((tmp_path / "a0001.json").read_text())
    capsys.readouterr()
    assert main(["infer", "pcg", str(wav), "--addr", server.endpoint]) == 0
    online = json.loads(capsys.readouterr().out)
    assert online == offline
    assert len(online["segments"]) > 10


def test_cli_infer_health_and_errors(server: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    from telediag.cli import main

    assert main(["infer", "health", "--addr", server.endpoint, "--indent", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    assert main(["infer", "models", "--addr", server.endpoint]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["infer", "ecg", "--addr", server.endpoint]) == 2  # no INPUT
