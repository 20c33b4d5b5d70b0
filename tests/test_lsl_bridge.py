"""The LSL bridge against real liblsl (pylsl), inside a network namespace with only loopback.

LSL finds peers by multicast/broadcast; each case runs in a child process under
``unshare -n`` (its own network namespace, ``lo`` up, nothing else) with an ``lsl_api.cfg``
that keeps resolution on this machine, so the tests neither see nor disturb other LSL
streams. Where namespaces are not allowed (not root, no user namespaces) they skip and say so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

LSL_CFG = """[ports]
IPv6 = disable
[multicast]
ResolveScope = machine
[lab]
KnownPeers = {127.0.0.1}
"""


def _namespace_reason() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare(1) and ip(8) (util-linux, iproute2)"
    try:
        r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n failed: {e}"
    if r.returncode != 0:
        return f"network namespaces are not allowed here (unshare -n: {r.stderr.decode().strip()[:200]})"
    return None


def _in_namespace(case: str, tmp_path: Path) -> None:
    reason = _namespace_reason()
    if reason:
        pytest.skip(f"LSL tests run in a private network namespace: {reason}")
    import pylsl  # noqa: F401 - the lsl extra is part of the dev install: a missing pylsl fails here

    cfg = tmp_path / "lsl_api.cfg"
    cfg.write_text(LSL_CFG)
    env = {**os.environ, "LSLAPICFG": str(cfg)}
    r = subprocess.run(["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" "{__file__}" {case}'],
                       capture_output=True, timeout=120, env=env, cwd=str(tmp_path))
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, out[-4000:]
    assert f"CASE {case} OK" in out, out[-4000:]


def test_lsl_source_is_lossless_maps_time_and_reports_gaps(tmp_path: Path) -> None:
    _in_namespace("source", tmp_path)


def test_lsl_out_republishes_signals_beats_and_hr(tmp_path: Path) -> None:
    _in_namespace("out", tmp_path)


# --------------------------------------------------------------------------- the cases (child process)

def case_source() -> None:
    import pylsl
    import zmq

    from telediag.sources.lsl import run_lsl_source
    from telediag.transports.wire import decode

    fs, n = 250.0, 1000
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (n, 2)).astype(np.float32)
    lost = range(300, 350)  # never pushed: a 0.2 s hole in the timestamps
    info = pylsl.StreamInfo("test-ecg", "ECG", 2, fs, pylsl.cf_float32, "dev-1")
    chans = info.desc().append_child("channels")
    for lab in ("MLII", "V1"):
        ch = chans.append_child("channel")
        ch.append_child_value("label", lab)
        ch.append_child_value("unit", "mV")
    outlet = pylsl.StreamOutlet(info, 13, 360)
    t_start = pylsl.local_clock()
    wall_start = time.time_ns()

    def produce() -> None:
        assert outlet.wait_for_consumers(20)
        time.sleep(0.3)
        i = 0
        while i < n:
            j = min(n, i + 13)
            if 300 <= i < 350:
                i = 350
                continue
            j = min(j, 300) if i < 300 else j
            outlet.push_chunk(x[i:j].tolist(), t_start + (j - 1) / fs)  # time of the chunk's last sample
            i = j
            time.sleep(0.002)

    threading.Thread(target=produce, daemon=True).start()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://engine")
    push = ctx.socket(zmq.PUSH)
    push.connect("inproc://engine")
    res = run_lsl_source(name="test-ecg", sock=push, chunk_ms=100, resolve_timeout_s=10, idle_timeout_s=2.0)
    chunks = []
    while pull.poll(100):
        chunks.append(decode(pull.recv_multipart()))
    push.close(0)
    pull.close(0)
    ctx.term()
    assert res.chunks == len(chunks) and res.stream == "lsl-test-ecg/ecg"
    assert [c.channels for c in chunks[:1]] == [("MLII", "V1")] and chunks[0].units == ("mV", "mV")
    got = np.concatenate([c.data for c in chunks])
    keep = np.r_[0:300, 350:n]
    assert got.shape == (len(keep), 2) and np.array_equal(got, x[keep])  # lossless, bit-exact float32
    assert len(res.gaps) == 1 and res.gaps[0].at == 300 and res.gaps[0].samples == len(lost)
    seqs = [c.seq for c in chunks]
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:], strict=False))  # the engine will see a seq gap
    # timeline: t0 of every chunk = first sample time + index / fs; the hole keeps its length
    idx = 0
    t00 = chunks[0].t0_ns
    for c in chunks:
        if idx == 300:
            idx = 350
        assert abs(c.t0_ns - (t00 + idx * 1e9 / fs)) <= 1_000
        idx += c.n_samples
    # LSL time -> UTC: the first sample's LSL time was t_start; within a few ms of the wall clock then
    assert abs(t00 - wall_start) < 50_000_000, (t00 - wall_start) / 1e6
    print("CASE source OK", flush=True)


def case_out() -> None:
    import pylsl

    from telediag.client.lsl_out import LslOut
    from telediag.transports.wire import Chunk

    fs = 250.0
    t0 = time.time_ns()
    out = LslOut(prefix="td")
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (500, 1)).astype(np.float32)
    sig = [Chunk.signal("ecg", "bed-1/ecg/filtered", k, t0 + int(k * 25 * 1e9 / fs), x[k * 25:(k + 1) * 25], fs,
                        ["II"], ["mV"]) for k in range(20)]
    beats = [{"t_ns": t0 + int(s * 1e9 / fs), "label": lab} for s, lab in ((50, "N"), (260, "V"), (470, "N"))]
    bchunk = Chunk.record("beats", "bed-1/ecg", 0, beats[0]["t_ns"], {"beats": beats})
    hchunk = Chunk.record("hr", "bed-1/ecg", 0, t0, {"readings": [{"t_ns": t0 + 10**9, "hr_bpm": 72.5},
                                                                  {"t_ns": t0 + 2 * 10**9, "hr_bpm": None}]})
    for c in (sig[0], bchunk, hchunk):
        out._outlet(c)  # outlets first, so the inlets below are connected before data flows
    inlets = {}
    for topic in ("ecg/bed-1/ecg/filtered", "beats/bed-1/ecg", "hr/bed-1/ecg"):
        (info,) = pylsl.resolve_byprop("name", f"td {topic}", 1, 10)
        inl = pylsl.StreamInlet(info, 360, 0, True)
        inl.open_stream(10)
        inlets[topic] = inl
    for o in out.outlets.values():
        assert o.wait_for_consumers(10)
    time.sleep(0.3)
    for c in [*sig, bchunk, hchunk]:
        out.add(c)

    def pull(topic: str, want: int) -> tuple[list, list]:
        data: list = []
        ts: list = []
        deadline = time.monotonic() + 10
        while len(data) < want and time.monotonic() < deadline:
            d, t = inlets[topic].pull_chunk(timeout=0.5)
            data += d
            ts += t
        return data, ts

    d, ts = pull("ecg/bed-1/ecg/filtered", 500)
    assert np.array_equal(np.asarray(d, dtype=np.float32), x)
    want_ts = np.array([out.lsl_time(t0 + int(round(i * 1e9 / fs))) for i in range(500)])
    assert np.max(np.abs(np.asarray(ts) - want_ts)) < 1e-5
    info = inlets["ecg/bed-1/ecg/filtered"].info()
    assert info.type() == "ECG" and info.nominal_srate() == fs
    assert info.desc().child("channels").child("channel").child_value("label") == "II"
    d, ts = pull("beats/bed-1/ecg", 3)
    assert [v[0] for v in d] == ["N", "V", "N"]
    assert np.allclose(ts, [out.lsl_time(b["t_ns"]) for b in beats], atol=1e-6)
    d, ts = pull("hr/bed-1/ecg", 1)
    assert d == [[72.5]] and abs(ts[0] - out.lsl_time(t0 + 10**9)) < 1e-6
    print("CASE out OK", flush=True)


if __name__ == "__main__":
    {"source": case_source, "out": case_out}[sys.argv[1]]()
