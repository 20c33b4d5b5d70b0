"""Every message the engine publishes matches ``transports/OUTPUTS.md`` and its JSON Schemas.

One short session through the real engine (``tests/outputs_session.py``: ECG with a 2-chunk
gap and a duplicate, a flat stretch, a source restart, a changed spec, PCG with a gap, H.264
video, malformed messages, an annotation kind sent to ingest) publishes every kind of output;
each header and body is validated against ``transports/schemas``, and the contract rules that
a schema cannot express (reject fields, event topics, gap-aware sample indices) are checked.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from outputs_session import (
    CLOSE_GLITCH,
    CLOSE_LONG_SEQ,
    CLOSE_STREAM,
    ECG_CHUNK,
    ECG_STREAM,
    GAP_SEQS,
    PCG_STREAM,
    RESTART_STREAM,
    Session,
    run_session,
)

from telediag.errors import ProtocolError
from telediag.transports.outputs import EVENT_TYPES, SCHEMA_KINDS, check_body, check_header

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def session(shared_data: Path) -> Session:
    return run_session(shared_data)


def _events(ses: Session, etype: str) -> list[tuple[str, dict[str, Any]]]:
    return [(t, b) for t, h, b in ses.messages if h["kind"] == "event" and b.get("type") == etype]


def test_every_published_header_and_body_matches_its_schema(session: Session) -> None:
    failures: Counter[str] = Counter()
    for topic, header, body in session.messages:
        try:
            check_header(header, topic)
            if header["enc"] == "msgpack":
                check_body(header["kind"], body, topic)
        except ProtocolError as e:
            failures[str(e)[:300]] += 1
    assert not failures, "outputs that break their schema:\n" + "\n".join(f"{n} x {m}" for m, n in failures.items())


def test_the_session_exercised_every_output_kind(session: Session) -> None:
    """Guards the test above against passing on a session that published little."""
    kinds = Counter(h["kind"] for _, h, _ in session.messages)
    assert SCHEMA_KINDS <= set(kinds), f"never published: {sorted(SCHEMA_KINDS - set(kinds))}"
    assert {"ecg", "pcg", "video"} <= set(kinds)
    types = {b["type"] for _, h, b in session.messages if h["kind"] == "event"}
    expected = {"stream_opened", "gap", "out_of_order", "rejected", "stream_restarted", "quality", "pcg_signal",
                "pcg_discontinuity", "video_format"}
    assert expected <= types, f"never seen: {sorted(expected - types)}"
    assert types <= set(EVENT_TYPES)
    reasons = {b["reason"] for _, h, b in session.messages if h["kind"] == "event" and b["type"] == "rejected"}
    assert {"spec_changed", "chunk_too_long", "not_ingestible", "size_mismatch", "bad_field"} <= reasons, reasons
    alarms = {(b["type"], b["state"]) for _, h, b in session.messages if h["kind"] == "alarm"}
    assert {("afib", "on"), ("afib", "off"), ("leads_off", "on"), ("leads_off", "off")} <= alarms, alarms


def _non_finite(x: Any, where: str = "body") -> list[str]:
    if isinstance(x, float):
        return [] if np.isfinite(x) else [where]
    if isinstance(x, dict):
        return [w for k, v in x.items() for w in _non_finite(v, f"{where}.{k}")]
    if isinstance(x, list):
        return [w for k, v in enumerate(x) for w in _non_finite(v, f"{where}[{k}]")]
    return []


def test_no_body_holds_nan_or_infinity(session: Session) -> None:
    """OUTPUTS.md section 1: an unknown value is null; bodies never contain NaN or infinities
    (the JSON Schemas cannot say so: a NaN is a JSON Schema number)."""
    bad = [(t, w) for t, h, b in session.messages if h["enc"] == "msgpack" for w in _non_finite(b)]
    assert not bad, bad[:10]


def test_reject_events_carry_stream_and_seq_fields(session: Session) -> None:
    rejected = {b["reason"]: (t, b) for t, b in _events(session, "rejected")}
    t, b = rejected["size_mismatch"]  # a malformed message whose header named its stream and seq
    assert t == "event/engine"
    assert (b["stream"], b["seq"]) == ("evil/ecg", 0)
    t, b = rejected["header_malformed"]  # nothing readable: the fields are there, null
    assert (b["stream"], b["seq"]) == (None, None)
    assert "frame_count" in rejected


def test_spec_changed_is_published_on_the_streams_event_topic(session: Session) -> None:
    hits = [(t, b) for t, b in _events(session, "rejected") if b["reason"] == "spec_changed"]
    assert len(hits) == 1, hits
    t, b = hits[0]
    assert t == f"event/{ECG_STREAM}"
    assert b["stream"] == ECG_STREAM and isinstance(b["seq"], int)


def test_ingest_rejects_kinds_that_are_not_ingestible(session: Session) -> None:
    hits = [(t, b) for t, b in _events(session, "rejected") if b["reason"] == "not_ingestible"]
    assert len(hits) == 1, hits
    assert hits[0][1]["stream"] == "evil/hr"
    opened = {b["stream"] for _, b in _events(session, "stream_opened")}
    assert "evil/hr" not in opened


def test_a_chunk_too_long_is_rejected_on_its_stream_and_reported_as_a_gap(session: Session) -> None:
    """OUTPUTS.md 5.2 / PROTOCOL.md 8: a 61 s chunk is rejected ``chunk_too_long`` on
    ``event/<s>``, not analysed, and the next chunk reports its ``seq`` as a gap; sample indices
    after it skip its samples (section 3)."""
    hits = [(t, b) for t, b in _events(session, "rejected") if b["reason"] == "chunk_too_long"]
    assert [(t, b["stream"], b["seq"]) for t, b in hits] == [(f"event/{CLOSE_STREAM}", CLOSE_STREAM, CLOSE_LONG_SEQ)]
    assert "60 s" in hits[0][1]["detail"]
    gaps = [b for _, b in _events(session, "gap") if b["stream"] == CLOSE_STREAM]
    assert [(g["first_missing_seq"], g["last_missing_seq"], g["missing_chunks"]) for g in gaps] == [
        (CLOSE_LONG_SEQ, CLOSE_LONG_SEQ, 1)]
    beats = [bt["sample"] for _, h, b in session.messages if h["kind"] == "beats" and h["stream"] == CLOSE_STREAM
             for bt in b["beats"]]
    assert beats and max(beats) < CLOSE_LONG_SEQ * ECG_CHUNK  # nothing from the long chunk, NaN after it
    starts = [b for _, b in _events(session, "quality") if b["stream"] == CLOSE_STREAM and b["state"] == "start"
              and b["event"] == "leads_off"]
    assert starts and all(b["onset_sample"] == (CLOSE_LONG_SEQ + 61) * ECG_CHUNK for b in starts), starts


def test_an_implausible_sample_is_missing_in_the_filtered_signal(session: Session) -> None:
    """OUTPUTS.md section 4: a sample beyond 500 mV is NaN in ``ecg/<s>/filtered``, alone."""
    from telediag.transports.wire import decode

    filt = [decode(f) for f in session.raw if bytes(f[0]) == f"ecg/{CLOSE_STREAM}/filtered".encode()]
    c = next(c for c in filt if c.meta["src_seq"] == CLOSE_GLITCH[0])
    assert np.argwhere(np.isnan(c.data)).tolist() == [[CLOSE_GLITCH[1], 0]]
    assert np.isfinite(np.concatenate([c.data for c in filt if c.meta["src_seq"] < CLOSE_LONG_SEQ])).sum() == \
        CLOSE_LONG_SEQ * ECG_CHUNK * 2 - 1


def test_every_alarm_and_quality_event_on_is_ended_when_its_stream_closes(session: Session) -> None:
    """OUTPUTS.md 4.5: at stream close (new session, engine stop) every alarm still on is
    published ``off`` with ``detail.reason = "stream_closed"`` and every quality event still on
    gets its ``end`` (``reason: "stream_closed"``, on ``event/<s>`` only); the ``afib`` detail
    carries its documented keys."""
    on: dict[tuple[str, str], dict[str, Any]] = {}
    closed = []
    for _, h, b in session.messages:
        if h["kind"] == "alarm":
            key = (h["stream"], b["type"])
            if b["state"] == "on":
                assert key not in on, ("on twice", key)
                on[key] = b
                if b["type"] == "afib":
                    d = b["detail"]
                    assert isinstance(d["nrmssd"], float) and isinstance(d["cv_dd"], float), d
                    assert isinstance(d["valid"], int) and -1.0 <= d["p_corr"] <= 1.0, d
            else:
                if b["type"] != "pause":
                    assert on.pop(key)["onset_sample"] == b["onset_sample"], (key, b)
                if isinstance(b["detail"], dict) and b["detail"].get("reason") == "stream_closed":
                    closed.append(key)
        elif h["kind"] == "quality" and "events" in b:
            assert all(e.get("reason") is None for e in b["events"])
    assert not on, f"alarms left on after every stream closed: {sorted(on)}"
    assert {(CLOSE_STREAM, "afib"), (CLOSE_STREAM, "leads_off")} <= set(closed), closed
    q_open: set[tuple[str, int, str]] = set()
    q_closed = []
    for _, b in _events(session, "quality"):
        key = (b["stream"], b["channel"], b["event"])
        if b["state"] == "start":
            q_open.add(key)
        else:
            q_open.discard(key)
            if b.get("reason") == "stream_closed":
                q_closed.append(key)
    assert not q_open, q_open
    assert {(CLOSE_STREAM, 0, "leads_off"), (CLOSE_STREAM, 1, "leads_off")} <= set(q_closed), q_closed


def test_restart_needs_a_new_session_and_is_reported(session: Session) -> None:
    restarted = [t for t, _ in _events(session, "stream_restarted")]
    assert restarted == [f"event/{RESTART_STREAM}"]
    assert [b["first_seq"] for _, b in _events(session, "stream_opened") if b["stream"] == RESTART_STREAM] == [0, 0]


def test_sample_indices_count_source_samples_across_a_gap(session: Session) -> None:
    """``sample`` is the source's sample index (gap-aware): a beat after the 2-chunk gap is
    reported at its sample in the source signal, and its ``t_ns`` agrees with it."""
    from telediag.dsp.qrs import detect

    fs, t0 = session.ecg_fs, session.t0_ns
    assert session.ecg_signal is not None
    ref = np.asarray(detect(np.asarray(session.ecg_signal[:, 0], np.float64), fs))
    gap_end = (GAP_SEQS[-1] + 1) * ECG_CHUNK
    after = []
    for _, h, b in session.messages:
        if h["kind"] == "beats" and h["stream"] == ECG_STREAM:
            after += [bt for bt in b["beats"] if bt["sample"] > gap_end + 3 * fs]
    assert len(after) >= 10
    for bt in after:
        assert np.min(np.abs(ref - bt["sample"])) <= 2, f"beat at {bt['sample']} is no source beat"
        assert abs(bt["t_ns"] - (t0 + bt["sample"] * 1e9 / fs)) <= 1e9 / fs
    # every ECG body item with a sample index agrees with its source time
    for _, h, b in session.messages:
        if h["stream"] != ECG_STREAM or h["enc"] != "msgpack":
            continue
        items = b.get("beats") or b.get("readings") or b.get("blocks") or ([b] if "sample" in b else [])
        for it in items:
            if it.get("sample") is not None and it.get("t_ns") is not None:
                assert abs(it["t_ns"] - (t0 + it["sample"] * 1e9 / fs)) <= 1e9 / fs, (h["kind"], it)
    # PCG segments: start_sample is the source sample of start_ns, also after the PCG gap
    pfs = session.pcg_fs
    segs = [s for _, h, b in session.messages if h["kind"] == "segments" and h["stream"] == PCG_STREAM
            for s in b["segments"]]
    assert segs
    for s in segs:
        assert abs(s["start_sample"] - (s["start_ns"] - t0) * pfs / 1e9) <= 1, s


def _plain(x: Any) -> Any:
    """A decoded value as the outside client prints it (ints past 2**53 as strings, bytes elided)."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x if abs(x) <= 2**53 - 1 else str(x)
    if isinstance(x, float):
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(x))} bytes>"
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return [_plain(v) for v in x]


def test_an_outside_client_written_from_the_specs_decodes_every_topic(session: Session, tmp_path: Path) -> None:
    """The "Node.js client" check: tests/outside_client.mjs (plain Node, no npm package, written
    from PROTOCOL.md and OUTPUTS.md only) decodes every published message to the same values as
    the reference decoder and finds every key OUTPUTS.md documents; kept by OUTPUTS.md 4.5's
    rules alone, its view has no alarm or quality event still on once every stream closed."""
    import json
    import shutil
    import subprocess

    from telediag.transports.wire import decode

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js is not installed (apt-get install nodejs)")
    src = tmp_path / "messages.json"
    src.write_text(json.dumps([[bytes(f).hex() for f in frames] for frames in session.raw]))
    out = subprocess.run([node, str(Path(__file__).with_name("outside_client.mjs")), str(src)],
                         capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    summary = json.loads(out.pop())["summary"]
    assert len(out) == len(session.raw) > 100
    assert summary["open_alarms"] == [] and summary["open_quality"] == [], summary
    assert summary["ended_by_close"] >= 2 and summary["quality_ended_by_close"] >= 2, summary
    topics = set()
    for line, frames, (_, header, _) in zip(out, session.raw, session.messages, strict=True):
        js = json.loads(line)
        assert "error" not in js, js
        c = decode(frames)
        topics.add(c.topic.split("/")[0])
        assert (js["topic"], js["kind"], js["stream"], js["seq"], js["enc"]) == (c.topic, c.kind, c.stream, c.seq,
                                                                                 header["enc"])
        assert js["t0_ns"] == _plain(c.t0_ns) and js["meta"] == _plain(c.meta)
        if c.data is not None:
            assert js["shape"] == list(c.data.shape) and js["n"] == c.data.size
            assert js["sum"] == pytest.approx(float(np.nansum(c.data, dtype=np.float64)), rel=1e-9, abs=1e-9)
            assert js["missing_samples"] == (int(np.isnan(c.data).sum()) if c.data.dtype.kind == "f" else 0)
        elif c.body is not None:
            assert js["body"] == _plain(c.body)
            assert js["missing"] == [], (c.topic, js["missing"])
        else:
            assert js["bytes"] == len(c.packet or b"")
    assert {"ecg", "pcg", "video", "beats", "hr", "hrv", "quality", "alarm", "segments", "polyp", "event",
            "stats"} <= topics


def test_integer_ecg_with_gain_is_processed_in_physical_units(session: Session) -> None:
    """An int16 ECG stream with meta.gain/baseline is filtered and analysed in mV (PROTOCOL.md 6.1);
    a chunk with an unusable gain is rejected (bad_field) on the stream's event topic."""
    from outputs_session import INT_BASELINE, INT_GAIN, INT_STREAM

    from telediag.transports.wire import decode

    filtered = [decode(f) for f in session.raw if bytes(f[0]) == f"ecg/{INT_STREAM}/filtered".encode()]
    ref = [decode(f) for f in session.raw if bytes(f[0]) == f"ecg/{ECG_STREAM}/filtered".encode()]
    assert len(filtered) == 12 and filtered[0].data.dtype == np.float64
    assert "gain" not in filtered[0].meta and "baseline" not in filtered[0].meta
    # the same record in float mV through the same filter: equal up to the ADC rounding
    y = np.concatenate([c.data for c in filtered[:10]])
    y_ref = np.concatenate([c.data for c in ref[:10]])
    assert np.max(np.abs(y - y_ref)) < 0.02, np.max(np.abs(y - y_ref))  # mV, not ADC units
    beats = [b["sample"] for _, h, b in session.messages if h["kind"] == "beats" and h["stream"] == INT_STREAM
             for b in b["beats"]]
    ref_beats = [b["sample"] for _, h, b in session.messages if h["kind"] == "beats" and h["stream"] == ECG_STREAM
                 for b in b["beats"] if b["sample"] < 9 * ECG_CHUNK]
    assert ref_beats and all(min(abs(s - r) for r in beats) <= 1 for s in ref_beats)
    bad = [(t, b) for t, b in _events(session, "rejected") if b["reason"] == "bad_field"]
    assert [t for t, _ in bad] == [f"event/{INT_STREAM}"] and bad[0][1]["seq"] == 12
    assert INT_GAIN and INT_BASELINE
