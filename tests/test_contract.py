"""Contract pieces that need no engine: integer streams with gain/baseline (PROTOCOL.md 6.1),
the output schemas themselves, and the documents that name them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from telediag.client import Subscriber
from telediag.errors import ProtocolError
from telediag.transports.outputs import EVENT_TYPES, SCHEMA_KINDS, check_body, schema
from telediag.transports.wire import ANNOTATION_KINDS, REASONS, Chunk, encode, physical

ROOT = Path(__file__).resolve().parents[1]


def _int_chunk(meta: dict) -> Chunk:
    x = np.array([[1224, -500], [1024, 0], [824, 500]], "<i2")
    return Chunk.signal("ecg", "bed/ecg", 0, 0, x, 360.0, ["II", "V1"], ["mV", "mV"], meta=meta)


def test_physical_applies_gain_and_baseline_per_channel() -> None:
    c = _int_chunk({"gain": [200.0, 1000], "baseline": [1024, 0]})
    np.testing.assert_allclose(physical(c), [[1.0, -0.5], [0.0, 0.0], [-1.0, 0.5]])
    np.testing.assert_array_equal(physical(_int_chunk({})), _int_chunk({}).data.astype(float))
    np.testing.assert_allclose(physical(_int_chunk({"gain": [2, 4]})), _int_chunk({}).data / [2, 4])
    for bad in ({"gain": [200.0]}, {"gain": [0, 1]}, {"gain": "x"}, {"gain": [1, 1], "baseline": [True, 0]},
                {"gain": [float("nan"), 1]}):
        with pytest.raises(ProtocolError, match="bad_field"):
            physical(_int_chunk(bad))


def test_subscriber_delivers_physical_units_on_request() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", ["ecg/"], physical=True) as sub, \
                Subscriber(f"tcp://127.0.0.1:{port}", ["ecg/"]) as raw:
            time.sleep(0.3)  # slow joiner
            pub.send_multipart(encode(_int_chunk({"gain": [200.0, 1000.0], "baseline": [1024, 0], "k": 1})))
            pub.send_multipart(encode(_int_chunk({"gain": [1.0]})))  # malformed: skipped, counted
            c = sub.recv(timeout_s=5)
            r = raw.recv(timeout_s=5)
            assert c is not None and r is not None
            assert c.data.dtype == np.float64 and c.meta == {"k": 1}
            np.testing.assert_allclose(c.data, [[1.0, -0.5], [0.0, 0.0], [-1.0, 0.5]])
            assert r.data.dtype == np.int16 and r.meta["gain"] == [200.0, 1000.0]
            assert sub.recv(timeout_s=0.5) is None and sub.bad == {"bad_field": 1}
    finally:
        pub.close(0)
        ctx.term()


def test_every_schema_is_valid_json_schema() -> None:
    import jsonschema

    for kind in sorted(SCHEMA_KINDS):
        jsonschema.Draft202012Validator.check_schema(schema(kind))
    assert SCHEMA_KINDS == ANNOTATION_KINDS  # every annotation kind has a body schema


@pytest.mark.parametrize(("kind", "body"), [
    ("beats", {"beats": [], "lead": "II", "channel": 0, "fs": 360.0, "quality_hold": "verdict", "counters": {}}),
    ("event", {"type": "no_such_event"}),
    ("event", {"type": "gap", "stream": "s"}),  # fields missing
    ("hr", {"readings": [{"sample": -1, "t_ns": 0, "hr_bpm": 60, "on_beat": True, "signal_ok": True}],
            "rule": "median", "n_intervals": 8, "min_rr_s": 0.2, "asystole_s": 4.0, "every_s": 1.0}),
    ("alarm", {"type": "vtach?", "state": "on", "onset_sample": 0, "onset_ns": 0, "end_sample": None,
               "end_ns": None, "detail": None, "lead": "II"}),
    ("polyp", {"polyp_probability": 1.5}),
    ("alarm", {"type": "afib", "state": "on", "onset_sample": 0, "onset_ns": 0, "end_sample": None,
               "end_ns": None, "detail": {"nrmssd": 0.2, "cv_dd": 0.5, "valid": 24, "p_corr": 1.5}, "lead": "II"}),
    ("alarm", {"type": "afib", "state": "off", "onset_sample": 0, "onset_ns": 0, "end_sample": 9,
               "end_ns": 9, "detail": {"reason": None}, "lead": "II"}),
])
def test_schemas_catch_drift(kind: str, body: dict) -> None:
    """The schemas are not vacuous: renamed/missing fields, bad values and unknown types fail."""
    with pytest.raises(ProtocolError, match="body_malformed"):
        check_body(kind, body)


def test_outputs_md_names_every_event_type_reason_and_kind() -> None:
    text = (ROOT / "transports" / "OUTPUTS.md").read_text(encoding="utf-8")
    from telediag.transports.outputs import ENGINE_REASONS

    for name in [*EVENT_TYPES, *REASONS, *ENGINE_REASONS]:
        assert f"`{name}`" in text, f"OUTPUTS.md does not mention `{name}`"
    for kind in SCHEMA_KINDS:
        assert f"`{kind}/" in text and f"{kind}.schema.json" in text, kind


def test_protocol_md_reason_table_lists_every_engine_reason() -> None:
    text = (ROOT / "transports" / "PROTOCOL.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([a-z_]+)`", text, re.M))
    from telediag.transports.outputs import ENGINE_REASONS

    assert set(REASONS) | set(ENGINE_REASONS) <= rows, sorted(set(REASONS) | set(ENGINE_REASONS) - rows)


def test_schema_files_are_shipped_as_package_data() -> None:
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "schemas/*.json" in doc["tool"]["setuptools"]["package-data"]["telediag.transports"]
    for f in (ROOT / "transports" / "schemas").glob("*.json"):
        json.loads(f.read_text(encoding="utf-8"))


def test_an_af_transition_detail_never_holds_nan() -> None:
    """OUTPUTS.md 1 and 4.5: an ``afib`` off because the window ran out of valid RR pairs (a
    short ``af_window`` and trigeminy) has ``nrmssd``/``cv_dd`` null, never NaN."""
    from telediag.dsp.af import AFDetector, AFParams

    fs = 360.0
    rr = np.random.default_rng(0).uniform(0.45, 1.1, 300)
    s = np.cumsum((rr * fs).astype(int)) + 1000
    labels = ["N"] * 60 + ["V" if k % 3 == 2 else "N" for k in range(240)]
    tr, _ = AFDetector(fs, AFParams(window=4, min_valid=3, back=2)).beats(s, labels)
    offs = [t.detail for t in tr if t.state == "off"]
    assert any(d["valid"] < 2 for d in offs), offs  # the case: fewer than two valid pairs left
    for t in tr:
        assert all(not (isinstance(v, float) and np.isnan(v)) for v in t.detail.values()), t
        assert isinstance(t.detail["valid"], int)
    check_body("alarm", {"type": "afib", "state": "off", "onset_sample": 0, "onset_ns": 0, "end_sample": 1,
                         "end_ns": 1, "detail": offs[-1], "lead": "II"})



def test_ecg_sample_indices_do_not_drift_under_timestamp_jitter(mitdb: Path) -> None:
    """OUTPUTS.md 3: a ``t0_ns`` less than 0.1 s off on a contiguous ``seq`` is timestamp jitter:
    the sample count goes on (no index skipped, no new time anchor), so every ECG item's
    ``sample`` stays the index in the source's sample stream and ``t_ns`` its time from the
    first chunk (+-3 ms jitter on 1 s chunks moved the last beat of 300 s by ~100 samples)."""
    from telediag.engine.config import load_config
    from telediag.engine.stage import StreamSpec
    from telediag.evaluation.ecg_analyze import build_pipeline, run_pipeline
    from telediag.sources.readers import read_wfdb

    rec = read_wfdb(mitdb / "101")
    n_chunks, c = 300, 360
    x = rec.signal[: n_chunks * c].astype(np.float32)
    jitter = np.random.default_rng(0).integers(-3_000_000, 3_000_000, n_chunks)

    def run(jit: np.ndarray) -> list[dict]:
        chunks = [Chunk.signal("ecg", "j/ecg", i, i * 10**9 + int(jit[i]), x[i * c:(i + 1) * c], rec.fs,
                               list(rec.channels), list(rec.units)) for i in range(n_chunks)]
        recs = run_pipeline(build_pipeline(load_config(), StreamSpec.of(chunks[0])), chunks)
        return [r.body for r in recs if r.kind in ("beats", "hr", "alarm")]

    ref, jit = run(np.zeros(n_chunks, np.int64)), run(jitter)
    beats = [b["sample"] for body in jit for b in body.get("beats", [])]
    assert beats == [b["sample"] for body in ref for b in body.get("beats", [])] and len(beats) > 300
    for body in jit:
        for it in body.get("beats", []) + body.get("readings", []):
            assert abs(it["t_ns"] - it["sample"] * 1e9 / rec.fs) < 1e8, it  # within the jitter bound
