"""FHIR R4 bundles validated with fhir.resources, code systems checked; the live exporter."""

from __future__ import annotations

import dataclasses
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fhir.resources.R4B as fhir_r4b  # the dev extra installs it: a missing install must fail
import numpy as np
import pytest
import zmq

from telediag.cli import main
from telediag.client import Subscriber
from telediag.engine.config import load_config
from telediag.engine.runtime import Engine
from telediag.exports.fhir import (
    LOCAL,
    LOINC,
    SNOMED,
    UCUM,
    FhirExporter,
    FhirSettings,
    session_bundle,
)
from telediag.exports.session import load_session
from telediag.recorder import Recorder
from telediag.sources.readers import read_wfdb
from telediag.sources.replay import chunks_of
from telediag.transports.wire import Chunk, encode

T0 = 1_796_000_000_000_000_000
S = 1_000_000_000
SYSTEMS = {LOINC, SNOMED, UCUM, LOCAL, "urn:telediag:patient", "urn:telediag:encounter", "urn:telediag:bed",
           "http://terminology.hl7.org/CodeSystem/observation-category",
           "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
           "http://terminology.hl7.org/CodeSystem/v3-ActCode"}
UCUM_UNITS = {"/min", "ms", "%", "1", "s", "{beats}", "{episodes}", "{windows}"}


def loinc_ok(code: str) -> bool:
    """LOINC's mod-10 check digit (the Luhn variant LOINC documents)."""
    num, _, check = code.partition("-")
    if not (num.isdigit() and check.isdigit() and len(check) == 1):
        return False
    digits = [int(c) for c in num]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10 == int(check)


_VD = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
       [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
       [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
       [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VP = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4]]
for _i in range(2, 8):
    _VP.append([_VP[_i - 1][_VP[1][j]] for j in range(10)])


def snomed_ok(code: str) -> bool:
    """SNOMED CT concept id: Verhoeff check digit and partition ``00``/``10`` (a concept)."""
    if not code.isdigit() or not 6 <= len(code) <= 18 or code[-3:-1] not in ("00", "10"):
        return False
    c = 0
    for i, ch in enumerate(reversed(code)):
        c = _VD[c][_VP[i % 8][int(ch)]]
    return c == 0


def test_check_digit_helpers_reject_typos() -> None:
    assert loinc_ok("8867-4") and loinc_ok("80404-7") and not loinc_ok("8867-5")
    assert snomed_ok("49436004") and snomed_ok("68496003") and not snomed_ok("49436005")


def _codings(x: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(x, dict):
        if "system" in x and "code" in x:
            out.append(x)
        for v in x.values():
            out.extend(_codings(v))
    elif isinstance(x, list):
        for v in x:
            out.extend(_codings(v))
    return out


def _refs(x: Any) -> list[str]:
    out = []
    if isinstance(x, dict):
        if isinstance(x.get("reference"), str):
            out.append(x["reference"])
        for v in x.values():
            out.extend(_refs(v))
    elif isinstance(x, list):
        for v in x:
            out.extend(_refs(v))
    return out


def validate(bundle: dict[str, Any]) -> None:
    """fhir.resources (R4B models: these resources are unchanged from R4) + code-system checks."""
    fhir_r4b.get_fhir_model_class("Bundle").model_validate(bundle)
    urls = set()
    for e in bundle["entry"]:
        res = e["resource"]
        fhir_r4b.get_fhir_model_class(res["resourceType"]).model_validate(res)
        urls.add(e["fullUrl"])
    for ref in _refs(bundle):
        assert ref in urls, f"dangling reference {ref}"
    for c in _codings(bundle):
        assert c["system"] in SYSTEMS, c
        if c["system"] == LOINC:
            assert loinc_ok(c["code"]), c
        if c["system"] == SNOMED:
            assert snomed_ok(c["code"]), c
        if c["system"] == UCUM:
            assert c["code"] in UCUM_UNITS, c


def _recording(out: Path) -> dict[str, Any]:
    rec = Recorder(out)
    meta = {"patient": "MRN-0042", "patient_name": "Test Patient", "encounter": "ENC-7"}
    fs = 250.0
    for seq in range(60):
        rec.add(Chunk.signal("ecg", "bed-4/ecg/filtered", seq, T0 + seq * S, np.zeros((250, 1), np.float32) + 0.1,
                             fs, ["II"], ["mV"], meta=meta))
    hrs = [60.0 + i % 7 for i in range(50)]
    for i, h in enumerate(hrs):
        rec.add(Chunk.record("hr", "bed-4/ecg", i, T0 + i * S, {"readings": [
            {"t_ns": T0 + i * S, "hr_bpm": h, "on_beat": True}, {"t_ns": T0 + i * S, "hr_bpm": None}]}, meta=meta))
    labels = ["N"] * 40 + ["V"] * 6 + ["S"] * 4
    for i, lab in enumerate(labels):
        rec.add(Chunk.record("beats", "bed-4/ecg", i, T0 + i * S, {"beats": [
            {"sample": i * 250, "t_ns": T0 + i * S, "label": lab, "probs": {lab: 0.9}}]}, meta=meta))
    rec.add(Chunk.record("beats", "bed-4/ecg", len(labels), T0 + 55 * S, {"beats": [  # on unusable signal
        {"sample": 55 * 250, "t_ns": T0 + 55 * S, "label": "V", "probs": {"V": 0.6}, "usable": False}]}, meta=meta))
    rec.add(Chunk.record("hrv", "bed-4/ecg", 0, T0 + 50 * S, {"t_ns": T0 + 50 * S, "window_s": 300.0, "n_nn": 40,
                                                              "sdnn_ms": 42.5, "rmssd_ms": 30.25}, meta=meta))
    alarms = [{"type": "afib", "state": "on", "onset_ns": T0 + 10 * S},
              {"type": "afib", "state": "off", "onset_ns": T0 + 10 * S, "end_ns": T0 + 25 * S},
              {"type": "leads_off", "state": "on", "onset_ns": T0 + 40 * S},
              {"type": "leads_off", "state": "off", "onset_ns": T0 + 40 * S, "end_ns": T0 + 42 * S},
              {"type": "asystole", "state": "on", "onset_ns": T0 + 55 * S}]
    for i, a in enumerate(alarms):
        rec.add(Chunk.record("alarm", "bed-4/ecg", i, a["onset_ns"], a, meta=meta))
    rec.add(Chunk.record("event", "bed-5/pcg", 0, T0, {"type": "stream_opened", "stream": "bed-5/pcg", "kind": "pcg"}))
    for i in range(3):
        rec.add(Chunk.record("hr", "bed-5/pcg", i, T0 + i * S, {"t_ns": T0 + i * S, "heart_rate_bpm": 70.0 + i}))
        rec.add(Chunk.record("quality", "bed-5/pcg", i, T0 + i * 10 * S, {
            "type": "pcg_abnormal", "start_ns": T0 + i * 10 * S, "end_ns": T0 + (i + 1) * 10 * S,
            "abnormal_prob": 0.7 + 0.1 * i, "label": "abnormal 0.8" if i else "uncertain"}))
    probs = [0.2, 0.9, 0.95, 0.1, 0.1, 0.1, 0.1, 0.8]  # two episodes: frames 1-2 and frame 7
    for i, p in enumerate(probs):
        rec.add(Chunk.record("polyp", "room-1/endo", i, T0 + i * 400_000_000,
                             {"polyp_probability": p, "detected": p > 0.5, "analysed_at": 0, "input_size": [352, 352]}))
    rec.close()
    return {"hrs": hrs, "labels": labels}


def test_session_bundle_valid_and_faithful(tmp_path: Path) -> None:
    src = _recording(tmp_path / "rec")
    b = session_bundle(load_session(tmp_path / "rec"))
    validate(b)
    res = [e["resource"] for e in b["entry"]]
    by = {}
    for r in res:
        by.setdefault(r["resourceType"], []).append(r)
    # each stream's results go to its own patient: bed-4 carries MRN-0042 in its meta, the others
    # carry none and are identified by their bed (never attributed to bed-4's patient)
    pats = {p["identifier"][0]["value"]: p for p in by["Patient"]}
    assert set(pats) == {"MRN-0042", "bed-5", "room-1"}
    pat = pats["MRN-0042"]
    assert pat["name"][0]["text"] == "Test Patient" and pats["bed-5"]["identifier"][0]["system"] == "urn:telediag:bed"
    url = {id(e["resource"]): e["fullUrl"] for e in b["entry"]}
    for o in by["Observation"]:
        want = "MRN-0042" if "bed-4" in json.dumps(o.get("note", "")) or o["code"]["coding"][0]["code"] in (
            "80404-7", "rmssd", "ectopic-beats", "af-burden") else None
        if want:
            assert o["subject"]["reference"] == url[id(pat)]
    pcg_obs = [o for o in by["Observation"] if o.get("method")]
    assert pcg_obs and all(o["subject"]["reference"] == url[id(pats["bed-5"])] for o in pcg_obs)
    (enc,) = by["Encounter"]
    assert enc["identifier"][0]["value"] == "ENC-7"
    assert {d["deviceName"][0]["name"] for d in by["Device"]} >= {"telediag", "ecg_beats", "pcg_abnormal", "polyp_seg"}
    obs = by["Observation"]

    def find(code: str, stream: str | None = None) -> list[dict[str, Any]]:
        return [o for o in obs if any(c["code"] == code for c in o["code"]["coding"])
                and (stream is None or stream in json.dumps(o.get("note", [])) or stream is None)]

    hr = [o for o in find("8867-4") if o.get("method") is None]
    assert len(hr) == 1 and hr[0]["valueQuantity"]["value"] == pytest.approx(statistics.median(src["hrs"]))
    assert hr[0]["valueQuantity"]["code"] == "/min"
    pcg_hr = [o for o in find("8867-4") if o.get("method")]
    assert pcg_hr[0]["valueQuantity"]["value"] == pytest.approx(71.0)
    assert find("80404-7")[0]["valueQuantity"]["value"] == pytest.approx(42.5)
    assert find("rmssd")[0]["valueQuantity"]["value"] == pytest.approx(30.25)
    ect = find("ectopic-beats")[0]
    comp = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in ect["component"]}
    assert comp["17338001"] == 6 and comp["supraventricular-ectopic-beats"] == 4 and comp["beats-total"] == 50
    assert comp["beats-unusable"] == 1  # a beat on unusable signal is reported apart, not as a V
    assert ect["valueQuantity"]["value"] == pytest.approx(20.0)
    af = find("af-burden")[0]
    assert af["valueQuantity"]["value"] == pytest.approx(100 * 15 / 60)  # 15 s of AF in 60 s monitored
    pa = find("pcg-abnormality")[0]
    assert pa["valueCodeableConcept"]["text"] == "abnormal"  # 2 of 3 windows ("uncertain" is the third)
    assert pa["component"][0]["valueQuantity"]["value"] == pytest.approx(0.8)
    polyps = [o for o in obs if o.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code") == "68496003"]
    assert [p["component"][0]["valueQuantity"]["value"] for p in polyps] == [0.95, 0.8]
    issues = by["DetectedIssue"]
    kinds = {(d["code"]["text"], d["severity"]) for d in issues}
    assert kinds == {("alarm afib", "moderate"), ("technical alarm leads_off", "low"), ("alarm asystole", "high")}
    asy = next(d for d in issues if "asystole" in d["code"]["text"])
    assert asy["code"]["coding"][0] == {"system": SNOMED, "code": "397829000", "display": "Asystole"}
    assert "still on" in asy["detail"]
    tech = next(d for d in issues if "leads_off" in d["code"]["text"])
    assert all(c["system"] != SNOMED for c in tech["code"]["coding"])  # technical: no clinical code


def test_cli_writes_valid_bundles_for_recording_and_analysis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _recording(tmp_path / "rec")
    assert main(["fhir", str(tmp_path / "rec"), "--out", str(tmp_path / "b.json"), "--patient", "X-1"]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    validate(b)
    pat = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient")
    assert pat["identifier"][0]["value"] == "X-1"
    doc = {"beats": [{"sample": i * 300, "label": "N" if i % 5 else "V"} for i in range(100)], "fs": 300.0,
           "duration_s": 100.0, "heart_rate": {"readings": [{"hr_bpm": 60.0}]},
           "hrv": {"whole_record": {"sdnn_ms": 12.0, "rmssd_ms": 9.0, "n_nn": 80}}, "alarms": []}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    assert main(["fhir", str(tmp_path / "a.json"), "--out", str(tmp_path / "a_bundle.json")]) == 0
    validate(json.loads((tmp_path / "a_bundle.json").read_text()))
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["fhir", str(tmp_path / "bad.json")]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


class _Receiver:
    """A FHIR server stand-in: fails (the first POST hangs past the client's timeout, then 503s)
    until ``accept`` is set, then stores every bundle."""

    def __init__(self, hang_s: float) -> None:
        self.bundles: list[dict[str, Any]] = []
        self.attempts = 0
        self.accept = threading.Event()
        rx = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rx.attempts += 1
                if not rx.accept.is_set():
                    if rx.attempts == 1:
                        time.sleep(hang_s)  # a hung server: the client times out
                    self.send_response(503)
                    self.end_headers()
                    return
                rx.bundles.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_live_exporter_retries_and_never_blocks_the_engine(tmp_path: Path, mitdb: Path) -> None:
    ingest, publish = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cfg = load_config()
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, ingest=ingest, publish=publish))
    rx = _Receiver(hang_s=1.0)
    eng = Engine(cfg, drain_idle_s=0.3)
    eng.start()
    exp = FhirExporter(publish, FhirSettings(url=rx.url, interval_s=0.5, timeout_s=0.5, retries=2,
                                             backoff_s=0.1)).start()
    rec = read_wfdb(mitdb / "119")
    rec = dataclasses.replace(rec, signal=rec.signal[: int(30 * rec.fs)])
    meta = {"patient": "MRN-77", "encounter": "ENC-3"}  # the source's; the engine echoes it on its outputs
    chunks = [dataclasses.replace(c, meta={**c.meta, **meta})
              for _, c in chunks_of(rec, "ecg", "bed-7/ecg", chunk_ms=250, start_ns=T0, session="s")]
    seen: list[int] = []
    try:
        with Subscriber(publish, topics=["ecg/bed-7/ecg/filtered"]) as sub:
            time.sleep(0.5)
            push = zmq.Context.instance().socket(zmq.PUSH)
            push.connect(ingest)
            for c in chunks[:8]:
                push.send_multipart(encode(c))
            deadline = time.monotonic() + 60  # the exporter is now failing against the server
            while rx.attempts < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert rx.attempts >= 1
            for c in chunks[8:]:
                push.send_multipart(encode(c))
            push.close(linger=5000)
            deadline = time.monotonic() + 120  # generous: a loaded CI box, never reached when it passes
            while len(seen) < len(chunks) and time.monotonic() < deadline:
                c = sub.recv(timeout_s=0.5)
                if c is not None:
                    seen.append(c.seq)
        # every chunk went through the engine while no FHIR POST had succeeded
        assert len(seen) == len(chunks) and seen == sorted(seen) and not rx.bundles
        deadline = time.monotonic() + 10
        while rx.attempts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        rx.accept.set()  # the server comes back: the queued bundles are delivered
        deadline = time.monotonic() + 30
        while (exp.pending or not rx.bundles) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        exp.stop(timeout_s=10)
        eng.stop()
        eng.join(20)
        rx.close()
    assert exp.stats["failed_attempts"] >= 3 and rx.attempts >= 4  # a timeout and 503s, retried
    assert rx.bundles and exp.stats["posted"] == len(rx.bundles) and exp.stats["dropped"] == 0
    assert all(b["type"] == "transaction" for b in rx.bundles)
    for e in (e for b in rx.bundles for e in b["entry"]):
        rt = e["resource"]["resourceType"]
        if rt in ("Patient", "Device", "Encounter"):  # created once on the server, not once per interval
            assert e["request"]["method"] == "POST" and e["request"]["ifNoneExist"].startswith("identifier=urn:telediag:")
        elif rt == "DetectedIssue":  # an alarm still on is updated in place
            assert e["request"]["method"] == "PUT" and e["request"]["url"].startswith("DetectedIssue?identifier=")
        else:
            assert e["request"] == {"method": "POST", "url": rt}
    for bundle in rx.bundles:
        validate(bundle)
        res = {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}
        assert res["Patient"]["identifier"][0]["value"] == "MRN-77"
        assert res["Encounter"]["identifier"][0]["value"] == "ENC-3"
    hr = [e["resource"] for bb in rx.bundles for e in bb["entry"]
          if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "8867-4"]
    assert hr and all(40 < o["valueQuantity"]["value"] < 120 for o in hr)
    beats = sum(c["valueQuantity"]["value"] for bb in rx.bundles for e in bb["entry"]
                if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "ectopic-beats"
                for c in e["resource"]["component"] if c["code"]["coding"][0]["code"] == "beats-total")
    assert 25 <= beats <= 45  # ~30 s of record 119 (about 70 bpm): every beat in exactly one bundle


def test_settings_from_toml_reject_bad_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[export.fhir]\nurl = "http://127.0.0.1:1/fhir"\ninterval_s = 30\n')
    s = FhirSettings.from_toml(f)
    assert s is not None and s.interval_s == 30
    f.write_text('[export.fhir]\nurl = "http://127.0.0.1:1/fhir"\nintervall_s = 30\n')
    with pytest.raises(Exception, match="unknown key"):
        FhirSettings.from_toml(f)
    f.write_text('[export.fhir]\nurl = "ftp://x"\n')
    with pytest.raises(Exception, match="http"):
        FhirSettings.from_toml(f)


def test_transaction_bundle_does_not_duplicate_on_a_server() -> None:
    from telediag.exports.fhir import StreamData, build_bundle

    sd = StreamData("bed-1/ecg", "ecg", T0, T0 + 60 * S)
    sd.bodies["alarm"] = [{"type": "tachy", "state": "on", "onset_ns": T0 + 5 * S, "category": "physiological"}]
    sd.bodies["hr"] = [{"readings": [{"t_ns": T0, "hr_bpm": 155.0}]}]
    b1 = build_bundle([sd], patient={"patient": "P-9"}, bundle_type="transaction", seed="a")
    b2 = build_bundle([sd], patient={"patient": "P-9"}, bundle_type="transaction", seed="b")
    validate(b1)
    (d1,) = [e for e in b1["entry"] if e["resource"]["resourceType"] == "DetectedIssue"]
    (d2,) = [e for e in b2["entry"] if e["resource"]["resourceType"] == "DetectedIssue"]
    assert d1["resource"]["status"] == "preliminary" and d1["resource"]["severity"] == "high"
    assert d1["request"] == d2["request"] == {"method": "PUT", "url": (
        f"DetectedIssue?identifier=urn:telediag:alarm|bed-1/ecg/tachy/{T0 + 5 * S}")}
    (p1,) = [e for e in b1["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert p1["request"]["ifNoneExist"] == "identifier=urn:telediag:patient|P-9"


def test_replay_sends_patient_meta(mitdb: Path) -> None:
    """``telediag source ecg --patient/--encounter``: replay puts them in every chunk's meta (the engine
    echoes meta on its outputs: the live-exporter test above reads the patient from there)."""
    from telediag.sources.replay import replay
    from telediag.transports.wire import decode

    rec = read_wfdb(mitdb / "119")
    rec = dataclasses.replace(rec, signal=rec.signal[: int(2 * rec.fs)])
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        res = replay(rec, kind="ecg", stream="bed-8/ecg", connect=f"tcp://127.0.0.1:{port}", speed=float("inf"),
                     linger_s=2, ctx=ctx, meta={"patient": "MRN-77", "encounter": "ENC-3"})
        got = [decode(pull.recv_multipart()) for _ in range(res.chunks)]
    finally:
        pull.close(0)
        ctx.term()
    assert got and all(c.meta["patient"] == "MRN-77" and c.meta["encounter"] == "ENC-3" for c in got)
    assert all("session" in c.meta and "sent_ns" in c.meta for c in got)  # the replay's own keys stay
