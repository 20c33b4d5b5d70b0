"""FHIR R4 results: a ``Bundle`` from a recording or an offline analysis, and a live exporter.

What a bundle holds (all references resolve inside it, ``urn:uuid:`` full URLs):

* ``Patient`` and ``Encounter`` from the streams' ``meta`` (``patient``, ``patient_name``,
  ``encounter``; the source agent sets them, the engine echoes them, the recorder keeps them
  in ``session.json``); without them the subject is identified by the stream's bed
  (``urn:telediag:bed``) and the bundle says so.
* ``Device``: the engine (name, version) and one per model card (name, version, sha256, the
  card's headline metrics and intended use) with ``parent`` = the engine.
* ``Observation`` (status ``final``, ``effectivePeriod`` in source time, ``device``):

  ========================  =================================================  ===========
  measure                   code                                               value / unit
  ========================  =================================================  ===========
  heart rate (ECG)          LOINC 8867-4 Heart rate                            median, /min; min/max components
  HRV SDNN                  LOINC 80404-7 R-R interval.standard deviation      ms
  HRV RMSSD                 ``urn:telediag:code`` rmssd (no LOINC term)        ms
  ectopic beats             ``urn:telediag:code`` ectopic-beats                components V, S counts ({beats}), burden %
  AF burden                 ``urn:telediag:code`` af-burden + SNOMED 49436004  %; episode count component
  heart rate (PCG)          LOINC 8867-4, method "phonocardiogram"             median, /min
  heart-sound abnormality   ``urn:telediag:code`` pcg-abnormality              normal/abnormal (v3 interpretation N/A), probability 1
  polyp detection           SNOMED 68496003 Polyp of colon (as value)          max probability component, effectivePeriod
  ========================  =================================================  ===========

* ``DetectedIssue`` per alarm episode: SNOMED CT code where one fits (tachy 3424008 Tachycardia,
  brady 48867003 Bradycardia, asystole 397829000 Asystole, afib 49436004 Atrial fibrillation)
  plus the engine's own code ``alarm-<type>``, ``identifiedPeriod``, severity (``high`` for
  asystole, extreme brady/tachycardia and ventricular runs as IEC 60601-2-27 ranks them,
  ``moderate`` other physiological, ``low`` technical: leads off, unusable signal), ``detail``.

The live exporter (:class:`FhirExporter`) is a subscriber thread beside the engine: it
collects outputs, and every ``interval_s`` a sender thread POSTs one ``transaction`` Bundle of
that interval to ``url`` with bounded retries; undelivered bundles wait in a bounded queue
(oldest dropped and counted). It never touches the engine's sockets beyond a SUB, so a slow
or dead FHIR server can never block or slow the engine.

Validated in tests with ``fhir.resources`` (its R4B models: Observation, DetectedIssue, Device,
Patient, Encounter and Bundle are unchanged from R4 4.0.1) plus LOINC/SNOMED check digits.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telediag.errors import DataError, TelediagError

__all__ = ["LOINC", "SNOMED", "UCUM", "LOCAL", "FhirExporter", "FhirSettings", "analysis_bundle",
           "session_bundle", "build_bundle", "StreamData", "model_cards"]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:telediag:code"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

#: alarm type -> (SNOMED CT code, display, severity)
ALARM_CODES: dict[str, tuple[str | None, str, str]] = {
    # IEC 60601-2-27 makes asystole, extreme brady/tachycardia and ventricular runs high priority
    "asystole": ("397829000", "Asystole", "high"),
    "brady": ("48867003", "Bradycardia", "high"),
    "tachy": ("3424008", "Tachycardia", "high"),
    "vrun": (None, "Ventricular run", "high"),
    "afib": ("49436004", "Atrial fibrillation", "moderate"),
    "pause": (None, "Pause", "moderate"),
    "ectopy": (None, "Frequent ectopic beats", "moderate"),
}
_TECHNICAL = {"leads_off", "lead_off", "signal_unusable", "unusable", "noise", "flat", "saturation", "signal_loss", "technical",
              "artifact", "artefact"}


def _iso(t_ns: int) -> str:
    """FHIR dateTime/instant (UTC, milliseconds)."""
    d = _dt.datetime.fromtimestamp(t_ns / 1e9, tz=_dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _q(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    return {"value": round(float(value), 4), "unit": unit, "system": UCUM, "code": code or unit}


def _cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": text or display}


def model_cards() -> dict[str, dict[str, Any]]:
    """The shipped model cards (``models/*/card.json``), by model name."""
    from importlib import resources

    out: dict[str, dict[str, Any]] = {}
    root = resources.files("telediag.models")
    for d in root.iterdir():
        card = d.joinpath("card.json")
        try:
            if card.is_file():
                c = json.loads(card.read_text())
                out[str(c.get("name") or d.name)] = c
        except (OSError, ValueError):
            continue
    return out


def card_summary(card: dict[str, Any]) -> str:
    """One line of a card's measured accuracy (the headline numbers it states)."""
    m = card.get("metrics")
    bits: list[str] = []

    def walk(x: Any, path: str, depth: int) -> None:
        if len(bits) >= 6 or depth > 3:
            return
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k), depth + 1)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            key = path.split(".")[-1].lower()
            if any(w in key for w in ("f1", "acc", "dice", "iou", "se", "ppv", "sp", "macc", "auc")) and key != "seed":
                bits.append(f"{path} {x:.3g}")

    walk(m, "", 0)
    note = card.get("metrics_note") or (m.get("scheme") or m.get("split") or m.get("definition") if isinstance(m, dict) else None)
    s = "; ".join(bits) if bits else "no metrics in the card"
    return s + (f" ({str(note)[:160]})" if note else "")


@dataclass
class StreamData:
    """What one source stream produced (bodies as published), for one bundle."""

    stream: str
    kind: str  # ecg / pcg / video
    start_ns: int
    end_ns: int
    bodies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> bodies
    t0s: dict[str, list[int]] = field(default_factory=dict)  # kind -> message t0_ns
    monitored_s: float | None = None  # seconds of signal (AF burden denominator)
    meta: dict[str, Any] = field(default_factory=dict)  # the source's meta (patient, encounter)


class _Ids:
    def __init__(self, seed: str) -> None:
        self.seed = seed

    def __call__(self, key: str) -> str:
        return "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"telediag:{self.seed}:{key}"))


def _alarm_episodes(bodies: Sequence[dict[str, Any]], end_ns: int) -> list[tuple[int, int | None, dict[str, Any]]]:
    open_: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
    out: list[tuple[int, int | None, dict[str, Any]]] = []
    for b in bodies:
        on = b.get("onset_ns")
        if not isinstance(on, int):
            on = b.get("t_ns") if isinstance(b.get("t_ns"), int) else None
        if on is None:
            continue
        key = (b.get("type"), b.get("lead"), b.get("onset_ns"))
        if b.get("state") == "on":
            open_[key] = (on, b)
        elif b.get("state") == "off":
            open_.pop(key, None)
            out.append((on, b.get("end_ns") if isinstance(b.get("end_ns"), int) else None, b))
        else:
            out.append((on, None, b))
    for on, b in open_.values():
        out.append((on, end_ns, {**b, "open_at_end": True}))
    out.sort(key=lambda e: e[0])
    return out


def _is_technical(b: dict[str, Any]) -> bool:
    return (b.get("class") == "technical" or b.get("category") == "technical" or b.get("technical") is True
            or str(b.get("type", "")).lower() in _TECHNICAL)


def build_bundle(
    streams: Sequence[StreamData],
    *,
    patient: dict[str, Any] | None = None,
    bundle_type: str = "collection",
    seed: str = "telediag",
    max_polyp_episodes: int = 50,
) -> dict[str, Any]:
    """A FHIR R4 Bundle (JSON dict) from the outputs of some streams; see the module docstring.

    Parameters
    ----------
    streams : sequence of StreamData
    patient : dict, optional
        ``{"patient": id, "patient_name": ..., "encounter": id}`` (stream ``meta``); ``None`` or
        empty: the subject is the first stream's bed.
    bundle_type : "collection" or "transaction"
        ``transaction`` adds ``request`` (POST) to every entry, for a FHIR server's base URL.
    seed : str
        Makes the ``urn:uuid`` ids stable for one session (same input, same ids).
    """
    from telediag import __version__

    if bundle_type not in ("collection", "transaction"):
        raise DataError(f"bundle_type must be 'collection' or 'transaction', got {bundle_type!r}")
    ids = _Ids(seed)
    entries: list[dict[str, Any]] = []

    def add(key: str, res: dict[str, Any], *, upsert: bool = False) -> str:
        """Add a resource; in a transaction, one with an identifier is created only once
        (``ifNoneExist``) or, with ``upsert``, updated in place (conditional update), so a live
        exporter does not duplicate the patient, the devices or an alarm still on."""
        url = ids(key)
        e: dict[str, Any] = {"fullUrl": url, "resource": res}
        if bundle_type == "transaction":
            rt = res["resourceType"]
            ident = (res.get("identifier") or [None])[0]
            query = f"identifier={ident['system']}|{ident['value']}" if ident else None
            if query and upsert:
                e["request"] = {"method": "PUT", "url": f"{rt}?{query}"}
            elif query:
                e["request"] = {"method": "POST", "url": rt, "ifNoneExist": query}
            else:
                e["request"] = {"method": "POST", "url": rt}
        entries.append(e)
        return url

    override = dict(patient or {})
    refs: dict[tuple[str, str], tuple[dict[str, str], dict[str, str] | None]] = {}

    def subject(sd: StreamData) -> tuple[dict[str, str], dict[str, str] | None]:
        """(patient ref, encounter ref) of a stream: ``patient`` (the caller's override) or the
        stream's own meta, else its bed. Each stream's results go to its own patient."""
        meta = {**sd.meta, **override}
        pid = meta.get("patient") or meta.get("patient_id")
        key = ("patient", str(pid)) if pid else ("bed", sd.stream.split("/")[0])
        enc_id = str(meta["encounter"]) if meta.get("encounter") else None
        if (key[0], key[1] + "|" + (enc_id or "")) in refs:
            return refs[(key[0], key[1] + "|" + (enc_id or ""))]
        if key[0] == "patient":
            pres: dict[str, Any] = {"resourceType": "Patient", "active": True,
                                    "identifier": [{"system": "urn:telediag:patient", "value": key[1]}]}
            if meta.get("patient_name"):
                pres["name"] = [{"text": str(meta["patient_name"])}]
        else:
            pres = {"resourceType": "Patient", "identifier": [{"system": "urn:telediag:bed", "value": key[1]}],
                    "active": True, "text": {"status": "generated", "div": _div(
                        f"Patient not identified by the source (no patient in the stream metadata); "
                        f"identified by the bed {key[1]}.")}}
        pkey = f"patient/{key[0]}/{key[1]}"
        if pkey not in added:
            added[pkey] = {"reference": add(pkey, pres)}
        pref = added[pkey]
        eref = None
        if enc_id:
            mine = [x for x in streams if {**x.meta, **override}.get("encounter") == enc_id]
            t0 = min(x.start_ns for x in mine)
            t1 = max(x.end_ns for x in mine)
            enc = {"resourceType": "Encounter", "status": "finished" if bundle_type == "collection" else "in-progress",
                   "class": {"system": V3_ACT, "code": "VR", "display": "virtual"},
                   "identifier": [{"system": "urn:telediag:encounter", "value": enc_id}],
                   "subject": pref, "period": {"start": _iso(t0), "end": _iso(t1)}}
            ekey = f"encounter/{enc_id}"
            if ekey not in added:
                added[ekey] = {"reference": add(ekey, enc, upsert=bundle_type == "collection")}
            eref = added[ekey]
        refs[(key[0], key[1] + "|" + (enc_id or ""))] = (pref, eref)
        return pref, eref

    added: dict[str, dict[str, str]] = {}

    engine = {"resourceType": "Device", "status": "active", "manufacturer": "telediag project",
              "identifier": [{"system": "urn:telediag:device", "value": f"telediag-{__version__}"}],
              "deviceName": [{"name": "telediag", "type": "model-name"}],
              "type": {"text": "telediagnosis signal-processing engine (decision support software)"},
              "version": [{"value": __version__}],
              "note": [{"text": "Decision support, not a diagnosis: results need review by a clinician."}]}
    engine_ref = {"reference": add("device/engine", engine)}
    model_refs: dict[str, dict[str, str]] = {}
    for name, card in sorted(model_cards().items()):
        dev = {"resourceType": "Device", "status": "active", "deviceName": [{"name": name, "type": "model-name"}],
               "identifier": [{"system": "urn:telediag:device",
                               "value": f"{name}-{card.get('version', '?')}-{str(card.get('sha256', ''))[:12]}"}],
               "type": {"text": str(card.get("task") or "model")},
               "version": [{"value": str(card.get("version", "?"))}],
               "parent": engine_ref,
               "note": [{"text": f"sha256 {card.get('sha256', '?')}; measured: {card_summary(card)}; "
                                 f"intended use: {card.get('intended_use', 'research and engineering demonstration')}"}]}
        model_refs[name] = {"reference": add(f"device/{name}", dev)}

    patient_ref: dict[str, str] = {}
    enc_ref: dict[str, str] | None = None

    def obs(key: str, code: dict[str, Any], t0: int, t1: int, *, category: str = "vital-signs",
            device: dict[str, str] | None = None, **value: Any) -> dict[str, Any]:
        o: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                             "category": [_cc(OBS_CAT, category, {"vital-signs": "Vital Signs", "procedure": "Procedure",
                                                                  "exam": "Exam", "imaging": "Imaging"}[category])],
                             "code": code, "subject": patient_ref,
                             "effectivePeriod": {"start": _iso(t0), "end": _iso(max(t0, t1))},
                             "device": device or engine_ref}
        if enc_ref:
            o["encounter"] = enc_ref
        o.update(value)
        add(key, o)
        return o

    for s in streams:
        tag = s.stream
        patient_ref, enc_ref = subject(s)
        if s.kind == "ecg":
            hrs = [r["hr_bpm"] for b in s.bodies.get("hr", []) for r in b.get("readings") or []
                   if isinstance(r.get("hr_bpm"), (int, float)) and math.isfinite(r["hr_bpm"])]
            if hrs:
                obs(f"{tag}/hr", _cc(LOINC, "8867-4", "Heart rate"), s.start_ns, s.end_ns,
                    valueQuantity=_q(statistics.median(hrs), "/min"),
                    note=[{"text": f"median of {len(hrs)} readings ({tag})"}],
                    component=[{"code": {"text": "minimum heart rate"}, "valueQuantity": _q(min(hrs), "/min")},
                               {"code": {"text": "maximum heart rate"}, "valueQuantity": _q(max(hrs), "/min")}])
            hrv = [b for b in s.bodies.get("hrv", []) if isinstance(b.get("sdnn_ms"), (int, float))]
            if hrv:
                last = hrv[-1]
                t: int = last["t_ns"] if isinstance(last.get("t_ns"), int) else s.end_ns
                t0 = t - int(float(last.get("window_s") or 0) * 1e9)
                obs(f"{tag}/sdnn", _cc(LOINC, "80404-7", "R-R interval.standard deviation (Heart rate variability)"),
                    max(t0, s.start_ns), t, valueQuantity=_q(last["sdnn_ms"], "ms"),
                    note=[{"text": f"{last.get('n_nn', '?')} NN intervals"}])
                if isinstance(last.get("rmssd_ms"), (int, float)):
                    obs(f"{tag}/rmssd", _cc(LOCAL, "rmssd", "RMSSD of NN intervals (heart rate variability)"),
                        max(t0, s.start_ns), t, valueQuantity=_q(last["rmssd_ms"], "ms"))
            allbeats = [bt for b in s.bodies.get("beats", []) for bt in b.get("beats") or []]
            labels = [bt.get("label") for bt in allbeats if bt.get("usable") is not False]
            n_unusable = len(allbeats) - len(labels)  # beats on unusable signal: counted apart
            if labels:
                n = len(labels)
                v, sv = labels.count("V"), labels.count("S")
                obs(f"{tag}/ectopy", _cc(LOCAL, "ectopic-beats", "Ectopic beat counts"), s.start_ns, s.end_ns,
                    category="procedure", device=model_refs.get("ecg_beats", engine_ref),
                    valueQuantity=_q(100.0 * (v + sv) / n, "%"),
                    component=[
                        {"code": _cc(SNOMED, "17338001", "Ventricular premature beats", "ventricular ectopic beats (V)"),
                         "valueQuantity": _q(v, "{beats}")},
                        {"code": _cc(LOCAL, "supraventricular-ectopic-beats", "Supraventricular ectopic beats (S)"),
                         "valueQuantity": _q(sv, "{beats}")},
                        {"code": _cc(LOCAL, "beats-total", "Beats detected"), "valueQuantity": _q(n, "{beats}")},
                        {"code": _cc(LOCAL, "beats-unclassified", "Beats without a class"),
                         "valueQuantity": _q(sum(1 for x in labels if not x), "{beats}")},
                        {"code": _cc(LOCAL, "beats-unusable", "Beats on unusable signal (not counted above)"),
                         "valueQuantity": _q(n_unusable, "{beats}")}])
            eps = [(on, off) for on, off, b in _alarm_episodes(s.bodies.get("alarm", []), s.end_ns)
                   if str(b.get("type", "")).lower() in ("afib", "af", "atrial_fibrillation")]
            mon = s.monitored_s if s.monitored_s else (s.end_ns - s.start_ns) / 1e9
            if mon > 0 and (s.bodies.get("beats") or eps):
                af_s = sum(((off or s.end_ns) - on) / 1e9 for on, off in eps)
                obs(f"{tag}/af-burden", {"coding": [{"system": LOCAL, "code": "af-burden", "display": "AF burden"},
                                                    {"system": SNOMED, "code": "49436004", "display": "Atrial fibrillation"}],
                                         "text": "Atrial fibrillation burden (time in AF / time monitored)"},
                    s.start_ns, s.end_ns, category="procedure", valueQuantity=_q(min(100.0, 100.0 * af_s / mon), "%"),
                    component=[{"code": _cc(LOCAL, "af-episodes", "AF episodes"), "valueQuantity": _q(len(eps), "{episodes}")},
                               {"code": _cc(LOCAL, "monitored-time", "Time monitored"), "valueQuantity": _q(mon, "s")}])
        elif s.kind == "pcg":
            hrs = [b["heart_rate_bpm"] for b in s.bodies.get("hr", [])
                   if isinstance(b.get("heart_rate_bpm"), (int, float)) and math.isfinite(b["heart_rate_bpm"])]
            if hrs:
                obs(f"{tag}/hr", _cc(LOINC, "8867-4", "Heart rate"), s.start_ns, s.end_ns,
                    valueQuantity=_q(statistics.median(hrs), "/min"), method={"text": "phonocardiogram (S1-S1 intervals)"},
                    note=[{"text": f"median of {len(hrs)} readings ({tag})"}])
            res = [b for b in s.bodies.get("quality", []) + s.bodies.get("pcg", [])
                   if b.get("type") == "pcg_abnormal" or "abnormal_prob" in b]
            probs = [float(b["abnormal_prob"]) for b in res if isinstance(b.get("abnormal_prob"), (int, float))]
            if res:
                labels = [str(b.get("label") or "").split()[0].lower() for b in res if b.get("label")]
                label = max(set(labels), key=labels.count) if labels else "unknown"
                interp = {"abnormal": ("A", "Abnormal"), "normal": ("N", "Normal")}.get(label)
                val: dict[str, Any] = {"valueCodeableConcept": {"text": label}}
                if interp:
                    val["interpretation"] = [_cc(V3_INTERP, interp[0], interp[1])]
                comps = [{"code": _cc(LOCAL, "windows", "Windows classified"), "valueQuantity": _q(len(res), "{windows}")}]
                if probs:
                    comps.insert(0, {"code": _cc(LOCAL, "abnormal-probability", "Probability of abnormal heart sounds"),
                                     "valueQuantity": _q(statistics.fmean(probs), "1")})
                obs(f"{tag}/pcg-abnormality", _cc(LOCAL, "pcg-abnormality", "Heart-sound abnormality (model)"),
                    s.start_ns, s.end_ns, category="exam", device=model_refs.get("pcg_abnormal", engine_ref),
                    component=comps, **val)
        elif s.kind == "video":
            for i, (t0, t1, p) in enumerate(polyp_episodes(s.bodies.get("polyp", []), s.t0s.get("polyp", []))[:max_polyp_episodes]):
                obs(f"{tag}/polyp/{i}", _cc(LOCAL, "polyp-detection", "Polyp detection (model)"), t0, t1,
                    category="imaging", device=model_refs.get("polyp_seg", engine_ref),
                    valueCodeableConcept=_cc(SNOMED, "68496003", "Polyp of colon"),
                    component=[{"code": _cc(LOCAL, "polyp-probability", "Highest polyp probability in the episode"),
                                "valueQuantity": _q(p, "1")}])
        for j, (on, off, b) in enumerate(_alarm_episodes(s.bodies.get("alarm", []), s.end_ns)):
            typ = str(b.get("type") or "alarm")
            tech = _is_technical(b)
            sn = ALARM_CODES.get(typ.lower())
            coding = [{"system": LOCAL, "code": f"alarm-{typ}", "display": f"telediag alarm {typ}"}]
            if sn and sn[0] and not tech:
                coding.insert(0, {"system": SNOMED, "code": sn[0], "display": sn[1]})
            det = {"resourceType": "DetectedIssue", "status": "preliminary" if b.get("open_at_end") else "final",
                   "identifier": [{"system": "urn:telediag:alarm", "value": f"{tag}/{typ}/{on}"}],
                   "code": {"coding": coding, "text": ("technical alarm " if tech else "alarm ") + typ},
                   "severity": "low" if tech else (sn[2] if sn else "moderate"),
                   "patient": patient_ref, "author": engine_ref,
                   "identifiedPeriod": {"start": _iso(on), **({"end": _iso(off)} if off else {})},
                   "detail": f"{'technical' if tech else 'physiological'} alarm {typ} on {tag}"
                             + (f" lead {b['lead']}" if b.get("lead") else "")
                             + (f" ({b['detail']})" if b.get("detail") else "")
                             + ("; still on when the recording ended" if b.get("open_at_end") else "")}
            add(f"{tag}/alarm/{j}", det, upsert=True)  # an alarm still on is updated, not duplicated
    return {"resourceType": "Bundle", "type": bundle_type, "timestamp": _iso(time.time_ns()), "entry": entries}


def _div(text: str) -> str:
    import html

    return f'<div xmlns="http://www.w3.org/1999/xhtml">{html.escape(text)}</div>'


def polyp_episodes(bodies: Sequence[dict[str, Any]], t0s: Sequence[int], gap_s: float = 1.0) -> list[tuple[int, int, float]]:
    """Consecutive detected frames (no gap over ``gap_s``) -> ``(start_ns, end_ns, max probability)``."""
    out: list[list[Any]] = []
    for b, t in zip(bodies, t0s, strict=False):
        if not b.get("detected"):
            continue
        p = float(b.get("polyp_probability") or 0.0)
        if out and t - out[-1][1] <= gap_s * 1e9:
            out[-1][1] = t
            out[-1][2] = max(out[-1][2], p)
        else:
            out.append([t, t, p])
    return [(a, b, p) for a, b, p in out]


# --------------------------------------------------------------------------- front ends

def _session_streams(session: Any) -> list[StreamData]:
    out = []
    for src, kinds in sorted(session.sources.items()):
        recs = [r for lst in kinds.values() for r in lst if isinstance(r.get("t0_ns"), int)]
        sig = session.signal_of(src)
        kind = sig.kind if sig else ("video" if "polyp" in kinds else "pcg" if "segments" in kinds else "ecg")
        opened = [r["body"] for r in kinds.get("event", []) if isinstance(r.get("body"), dict)
                  and r["body"].get("type") == "stream_opened"]
        if opened and opened[0].get("kind"):
            kind = str(opened[0]["kind"])
        # start_ns/end_ns honour source clock steps (gaps.jsonl clock_step_ns): the header t0_ns is
        # sample 0's time, the samples after a step are on the stepped timeline
        start = sig.start_ns if sig else min((r["t0_ns"] for r in recs), default=0)
        end = sig.end_ns if sig else max((r["t0_ns"] for r in recs), default=start)
        sd = StreamData(src, kind, start, end, monitored_s=sig.duration_s if sig else None,
                        meta=dict(session.meta.get(src) or next(
                            (m for k, m in sorted(session.meta.items()) if k.startswith(src + "/")), {})))
        for k, lst in kinds.items():
            sd.bodies[k] = [r["body"] for r in lst if isinstance(r.get("body"), dict)]
            sd.t0s[k] = [r.get("t0_ns", 0) for r in lst if isinstance(r.get("body"), dict)]
        out.append(sd)
    return out


def session_bundle(session: Any, *, patient: dict[str, Any] | None = None, bundle_type: str = "collection") -> dict[str, Any]:
    """The Bundle of a recording folder read by :func:`telediag.exports.session.load_session`."""
    streams = _session_streams(session)
    if not streams:
        raise DataError(f"{session.path}: no engine outputs recorded (no JSON lines)")
    return build_bundle(streams, patient=patient, bundle_type=bundle_type,
                        seed=str(Path(session.path).resolve()))


def analysis_bundle(doc: dict[str, Any], *, name: str = "analysis", patient: dict[str, Any] | None = None,
                    start_ns: int | None = None) -> dict[str, Any]:
    """The Bundle of a ``telediag analyze ecg`` or ``analyze pcg`` JSON document.

    Offline documents count time from the file's start; ``start_ns`` (default: now) anchors
    them to a clock.
    """
    t0 = time.time_ns() if start_ns is None else start_ns
    dur = float(doc.get("duration_s") or 0.0)
    end = t0 + int(dur * 1e9)
    if "beats" in doc and "heart_rate" in doc:
        fs = float(doc.get("fs") or 1.0)
        sd = StreamData(f"{name}/ecg", "ecg", t0, end, monitored_s=dur)
        sd.bodies["hr"] = [doc["heart_rate"]]
        sd.bodies["beats"] = [{"beats": doc["beats"]}]
        whole = (doc.get("hrv") or {}).get("whole_record") or {}
        if isinstance(whole.get("sdnn_ms"), (int, float)):
            sd.bodies["hrv"] = [{**whole, "t_ns": end, "window_s": dur}]

        def shift(a: dict[str, Any]) -> dict[str, Any]:
            a = dict(a)
            for k in ("onset", "end"):
                if isinstance(a.get(f"{k}_sample"), (int, float)):
                    a[f"{k}_ns"] = t0 + int(a[f"{k}_sample"] / fs * 1e9)
            return a

        sd.bodies["alarm"] = [shift(a) for a in doc.get("alarms") or []]
    elif "segments" in doc and ("abnormal_prob" in doc or "heart_rate_bpm" in doc):
        sd = StreamData(f"{name}/pcg", "pcg", t0, end, monitored_s=dur)
        if isinstance(doc.get("heart_rate_bpm"), (int, float)):
            sd.bodies["hr"] = [{"heart_rate_bpm": doc["heart_rate_bpm"]}]
        if doc.get("label") is not None:
            sd.bodies["quality"] = [{"type": "pcg_abnormal", "label": doc["label"],
                                     "abnormal_prob": doc.get("abnormal_prob")}]
    else:
        raise DataError("not a telediag analyze ecg/pcg document: expected 'beats' and 'heart_rate' "
                        "(ECG) or 'segments' and 'heart_rate_bpm' (PCG)")
    return build_bundle([sd], patient=patient, seed=f"analysis:{name}")


# --------------------------------------------------------------------------- live exporter

@dataclass(frozen=True, slots=True)
class FhirSettings:
    """``[export.fhir]``: where and how often to POST."""

    url: str
    interval_s: float = 60.0
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 1.0
    max_pending: int = 100
    # ecg/ and pcg/: the engine echoes the source's meta (patient, encounter) on signal outputs only
    topics: tuple[str, ...] = ("hr/", "hrv/", "beats/", "alarm/", "quality/", "polyp/", "event/", "ecg/", "pcg/")

    def __post_init__(self) -> None:
        if not (self.url.startswith("http://") or self.url.startswith("https://")):
            raise TelediagError(f"[export.fhir].url must be an http(s) URL, got {self.url!r}")
        for k in ("interval_s", "timeout_s"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise TelediagError(f"[export.fhir].{k} must be a positive number of seconds, got {v!r}")
        if not (isinstance(self.retries, int) and self.retries >= 0):
            raise TelediagError(f"[export.fhir].retries must be an integer >= 0, got {self.retries!r}")
        if not (isinstance(self.max_pending, int) and self.max_pending >= 1):
            raise TelediagError(f"[export.fhir].max_pending must be an integer >= 1, got {self.max_pending!r}")

    @classmethod
    def from_toml(cls, path: str | Path) -> FhirSettings | None:
        """``[export.fhir]`` of a TOML file (``None`` when the file has none); unknown keys are errors."""
        import tomllib

        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise TelediagError(f"{path}: cannot read the config ({e})") from e
        sec = (doc.get("export") or {}).get("fhir")
        if sec is None:
            return None
        if not isinstance(sec, dict):
            raise TelediagError(f"{path}: [export.fhir] must be a table")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(sec) - allowed)
        if unknown:
            raise TelediagError(f"{path}: [export.fhir] has unknown key(s) {unknown}; expected some of {sorted(allowed)}")
        if "url" not in sec:
            raise TelediagError(f"{path}: [export.fhir] needs url")
        if "topics" in sec:
            sec = {**sec, "topics": tuple(sec["topics"])}
        return cls(**sec)


class FhirExporter:
    """Subscribe to an engine's outputs and POST one transaction Bundle per interval.

    Two threads: the collector (a ZeroMQ SUB: never slows the engine, which drops for a
    subscriber that falls behind) and the sender (HTTP POST with ``retries`` attempts and
    exponential backoff; a bundle that still fails waits in a queue of at most
    ``max_pending``, the oldest dropped and counted). ``stats`` counts ``posted``,
    ``failed_attempts``, ``dropped`` and ``messages``.
    """

    def __init__(self, publish: str, settings: FhirSettings, *, patient: dict[str, Any] | None = None,
                 curve_secret: str | None = None, server_key: str | None = None) -> None:
        self.publish = publish
        self.settings = settings
        self.patient = dict(patient or {})
        self._curve = (curve_secret, server_key)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._streams: dict[str, StreamData] = {}
        self._pending: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self.stats = {"messages": 0, "bundles": 0, "posted": 0, "failed_attempts": 0, "dropped": 0}
        self.last_error: str | None = None
        self._abort = threading.Event()
        self._collector: threading.Thread | None = None
        self._sender: threading.Thread | None = None

    # collector ---------------------------------------------------------------
    def add(self, kind: str, stream: str, t0_ns: int, body: Any, meta: dict[str, Any] | None = None) -> None:
        """Take one engine output (what the collector thread does for every message).

        Signal outputs (``ecg``/``pcg``) only teach the stream's kind and its source's ``meta``
        (the engine echoes it there); their samples are not kept."""
        src = "/".join(stream.split("/")[:2])
        if kind in ("ecg", "pcg"):
            with self._lock:
                sd = self._streams.get(src)
                if sd is None:
                    sd = self._streams[src] = StreamData(src, kind, t0_ns, t0_ns)
                sd.kind = kind
                for k in ("patient", "patient_id", "patient_name", "encounter"):
                    if meta and k in meta:
                        sd.meta[k] = meta[k]
            return
        if not isinstance(body, dict):
            return
        with self._lock:
            self.stats["messages"] += 1
            sd = self._streams.get(src)
            if sd is None:
                skind = "video" if kind == "polyp" else "pcg" if kind == "segments" else "ecg"
                sd = self._streams[src] = StreamData(src, skind, t0_ns, t0_ns)
            if kind == "event" and body.get("type") == "stream_opened" and body.get("kind"):
                sd.kind = str(body["kind"])
            if kind == "hr" and "heart_rate_bpm" in body:
                sd.kind = "pcg"
            if kind == "quality" and body.get("type") == "pcg_abnormal":
                sd.kind = "pcg"
            sd.bodies.setdefault(kind, []).append(body)
            sd.t0s.setdefault(kind, []).append(t0_ns)
            sd.start_ns = min(sd.start_ns, t0_ns)
            sd.end_ns = max(sd.end_ns, t0_ns)
            if meta:  # each stream keeps its own source's patient/encounter
                for k in ("patient", "patient_id", "patient_name", "encounter"):
                    if k in meta:
                        sd.meta[k] = meta[k]

    def cut(self) -> dict[str, Any] | None:
        """Close the current interval: its transaction Bundle (``None`` when nothing came)."""
        with self._lock:
            # a stream with nothing but events (stream_opened, ...) has no result to send yet
            streams = [s for s in self._streams.values() if any(v for k, v in s.bodies.items() if k != "event")]
            # alarms still on carry over: keep their "on" bodies for the next interval
            # (kind and meta carry over too; a stream with no new result sends nothing)
            self._streams = {k: StreamData(s.stream, s.kind, s.end_ns, s.end_ns,
                                           bodies={"alarm": _still_on(s.bodies.get("alarm", []))}, meta=dict(s.meta))
                             for k, s in self._streams.items()}
            patient = dict(self.patient)
        if not streams:
            return None
        b = build_bundle(streams, patient=patient, bundle_type="transaction",
                         seed=f"live:{self.publish}:{min(s.start_ns for s in streams)}")
        self.stats["bundles"] += 1
        return b

    def _collect(self) -> None:
        from telediag.client import Subscriber

        cs, sk = self._curve
        with Subscriber(self.publish, topics=list(self.settings.topics), curve_secret=cs, server_key=sk) as sub:
            next_cut = time.monotonic() + self.settings.interval_s
            while not self._stop.is_set():
                c = sub.recv(timeout_s=min(0.2, max(0.0, next_cut - time.monotonic())))
                if c is not None and c.kind not in ("stats", "video"):
                    self.add(c.kind, c.stream, c.t0_ns, c.body, dict(c.meta) if c.meta else None)
                if time.monotonic() >= next_cut:
                    next_cut += self.settings.interval_s
                    self.submit(self.cut())
        self.submit(self.cut())  # the last partial interval

    # sender ------------------------------------------------------------------
    def submit(self, bundle: dict[str, Any] | None) -> None:
        """Queue a bundle for the sender (oldest dropped beyond ``max_pending``)."""
        if bundle is None:
            return
        with self._lock:
            self._pending.append(bundle)
            while len(self._pending) > self.settings.max_pending:
                self._pending.popleft()
                self.stats["dropped"] += 1
        self._wake.set()

    def _post(self, bundle: dict[str, Any]) -> bool:
        import urllib.error
        import urllib.request

        data = json.dumps(bundle).encode()
        req = urllib.request.Request(self.settings.url, data=data, method="POST",
                                     headers={"Content-Type": "application/fhir+json",
                                              "Accept": "application/fhir+json"})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as r:
                ok = 200 <= r.status < 300
                if not ok:
                    self.last_error = f"HTTP {r.status}"
                return ok
        except (urllib.error.URLError, OSError, ValueError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            return False

    def _deliver(self, bundle: dict[str, Any]) -> bool:
        """POST with up to ``retries`` retries, waiting ``backoff_s * 2**attempt`` between tries."""
        for attempt in range(self.settings.retries + 1):
            if self._post(bundle):
                return True
            self.stats["failed_attempts"] += 1
            if attempt < self.settings.retries and self._abort.wait(self.settings.backoff_s * 2 ** attempt):
                return False
        return False

    def _send(self) -> None:
        while not self._abort.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            collector_done = self._stop.is_set() and self._collector is not None and not self._collector.is_alive()
            failed = False
            while not self._abort.is_set():
                with self._lock:
                    bundle = self._pending[0] if self._pending else None
                if bundle is None:
                    break
                if not self._deliver(bundle):
                    failed = True
                    break
                with self._lock:
                    if self._pending and self._pending[0] is bundle:
                        self._pending.popleft()
                    self.stats["posted"] += 1
            if collector_done:
                return
            if failed and not self._stop.is_set():  # the server is down: wait before the next round
                self._abort.wait(min(60.0, self.settings.backoff_s * 2 ** self.settings.retries))

    @property
    def pending(self) -> int:
        """Bundles not delivered yet."""
        with self._lock:
            return len(self._pending)

    def start(self) -> FhirExporter:
        """Start the collector and sender threads (daemons)."""
        self._collector = threading.Thread(target=self._collect, name="fhir-collect", daemon=True)
        self._sender = threading.Thread(target=self._send, name="fhir-send", daemon=True)
        self._collector.start()
        self._sender.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop collecting, post the last interval (bounded by ``timeout_s``), join."""
        self._stop.set()
        end = time.monotonic() + timeout_s
        if self._collector is not None:
            self._collector.join(max(0.0, end - time.monotonic()))
        self._wake.set()
        if self._sender is not None:
            self._sender.join(max(0.0, end - time.monotonic()))
            if self._sender.is_alive():
                self._abort.set()
                self._sender.join(2.0)


def _still_on(alarms: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    on: dict[tuple[Any, ...], dict[str, Any]] = {}
    for b in alarms:
        key = (b.get("type"), b.get("lead"), b.get("onset_ns"))
        if b.get("state") == "on":
            on[key] = b
        elif b.get("state") == "off":
            on.pop(key, None)
    return list(on.values())
