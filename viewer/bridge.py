"""ZeroMQ -> WebSocket bridge: engine chunks to compact browser messages.

The bridge SUBscribes to one or more publish endpoints (the engine's, and optionally others
that speak wire v1), decodes every message with :func:`telediag.transports.wire.decode`,
converts it **once** into a browser message and fans it out to every connected browser
through a bounded per-client queue. A slow browser loses its *oldest* queued messages
(counted and reported to it as ``dropped``); it never slows the bridge or other browsers.

Browser messages
----------------
Annotations travel as **text** frames, one JSON object each::

    {"topic": "beats/bed-1/ecg", "kind": "beats", "stream": "bed-1/ecg", "seq": 12,
     "t0_ns": 1700000000000000000, "body": {...}, "view": {...}}

``body`` is the annotation document as published (NaN/inf become ``null``, ``bin`` becomes
its length); ``view`` is a normalised form the page relies on, built defensively here so
that the page does not depend on every producer's exact field names:

* ``beats``: ``{"beats": [{"t_ns", "sample", "label"}]}`` (label ``null`` = not classified);
* ``hr``: ``{"t_ns", "bpm"}`` (ECG ``readings[-1].hr_bpm`` or PCG ``heart_rate_bpm``);
* ``hrv``: ``{"sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm", "n_nn"}``;
* ``quality``: ``{"sqi"}`` (worst lead of the newest block) and/or ``{"abnormal_prob", "label"}``;
* ``alarm`` (and ``event`` bodies that are alarms or quality events): ``{"key", "type",
  "state": "on"|"off", "onset_ns", "priority", "text"}``; an ``analysis_lead`` event is a
  low-priority technical notice ``ECG ANALYSIS ON <lead>``, on while the ECG is analysed on another
  lead than the configured one;
* ``segments``: ``{"segments": [{"start_ns", "end_ns", "state"}]}``;
* ``polyp``: ``{"prob", "boxes": [[x0, y0, x1, y1, score]], "contours": [[x, y, ...]],
  "mask": {"w", "h", "bits"}}`` with coordinates normalised to 0..1 of the frame.

Signals and video travel as **binary** frames ``b"TDB1" + uint32-LE header length + JSON
header (space-padded to a multiple of 4 bytes) + payload``:

* signals (``ecg``, ``pcg``): header ``{"topic", "kind", "stream", "seq", "t0_ns", "rate_hz",
  "channels", "units", "n"}``, payload float32 little-endian **channel-major** (all samples
  of channel 0, then channel 1, ...). Signals faster than ``max_display_hz`` are decimated
  for display by a min/max decimator (:class:`DisplayDecimator`, keeps every peak visible);
  ``rate_hz``/``t0_ns`` describe the decimated samples.
* video: header ``{"topic", "kind": "video", "stream", "seq", "t0_ns", "width", "height",
  "src_width", "src_height"}``, payload one JPEG image. H.264 packets are decoded with PyAV,
  downscaled to at most ``video_max_width`` and re-encoded as JPEG (Pillow) in a worker
  thread, latest-frame-wins: a browser gets the newest frame of each video stream; frames
  it had no time to receive are replaced (counted in ``video_dropped``).

Control messages (text) have ``kind`` starting with ``_``: ``_hello`` on connect,
``_snapshot`` (``state`` ``"begin"``/``"end"``) around the snapshot described below,
``_bridge`` once per second with this browser's ``client`` id, its ``dropped`` count (total
and ``dropped_by_topic``: each drop is a seq gap the page will see on that topic),
``video_dropped`` and ``sent``; the bridge's ``lost``/``gaps`` (seq gaps seen upstream, i.e.
the engine's PUB high-water-mark losses), ``upstream_idle_s`` (seconds since the last
upstream message), ``engine_idle_s`` (seconds since the last engine statistics: the engine
publishes them periodically, so a large value means the engine is down), the client count
and ``clients_dropped`` (drops of every connected browser, by id). The same counters are
served as JSON on ``/stats`` and as Prometheus text on ``/metrics`` (see ``viewer/server.py``).

A browser that connects gets a **snapshot** first: the last ``history_s`` seconds of every
signal, beat, segment and event topic, the latest ``hr``/``hrv``/``quality``/``stats``/
``polyp`` of each topic and every alarm still on, so a page that (re)connects is complete at
once.

Time stamps are integers in ns in the JSON; JavaScript reads them as doubles (resolution about
256 ns at today's epoch), ample for display.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from telediag.errors import ProtocolError
from telediag.transports.webauth import patient_of_topic
from telediag.transports.wire import SIGNAL_KINDS, Chunk, decode

__all__ = [
    "MAGIC",
    "Bridge",
    "Client",
    "DisplayDecimator",
    "VideoTranscoder",
    "alarm_view",
    "annotation_view",
    "jsonable",
    "pack_binary",
    "polyp_view",
    "unpack_binary",
]

MAGIC = b"TDB1"
_STATE_KINDS = ("hr", "hrv", "quality", "stats", "polyp")  # latest per topic in the snapshot
_HISTORY_KINDS = ("beats", "segments", "event")  # last history_s seconds in the snapshot
_MAX_EVENTS_KEPT = 50
AUDIO_KINDS = ("pcg", "audio")  # signal kinds a browser can listen to


# --------------------------------------------------------------------------- encoding
def pack_binary(header: Mapping[str, Any], payload: bytes | memoryview) -> bytes:
    """A binary browser message: magic, header length, padded JSON header, payload.

    The header is padded with spaces so that the payload starts at a multiple of 4 bytes
    (a ``Float32Array`` view needs that alignment).

    Examples
    --------
    >>> msg = pack_binary({"kind": "ecg"}, b"\\x00" * 8)
    >>> h, p = unpack_binary(msg)
    >>> h["kind"], len(p), (len(msg) - len(p)) % 4
    ('ecg', 8, 0)
    """
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    head += b" " * (-(len(head) + 8) % 4)
    return b"".join((MAGIC, struct.pack("<I", len(head)), head, bytes(payload)))


def unpack_binary(msg: bytes) -> tuple[dict[str, Any], memoryview]:
    """Inverse of :func:`pack_binary` (for tests and Python clients)."""
    if msg[:4] != MAGIC or len(msg) < 8:
        raise ProtocolError("frame_count", f"binary viewer message must start with {MAGIC!r}")
    (n,) = struct.unpack("<I", msg[4:8])
    header = json.loads(msg[8 : 8 + n])
    return header, memoryview(msg)[8 + n :]


def jsonable(x: Any, _depth: int = 0) -> Any:
    """``x`` as plain JSON data: NaN/inf -> ``None``, numpy scalars -> Python, bytes -> length.

    Examples
    --------
    >>> jsonable({"a": float("nan"), "b": [np.int64(3), b"xyz"], "c": (1.5,)})
    {'a': None, 'b': [3, {'bytes': 3}], 'c': [1.5]}
    """
    if _depth > 40:
        return None
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, np.generic):
        return jsonable(x.item(), _depth + 1)
    if isinstance(x, Mapping):
        return {str(k): jsonable(v, _depth + 1) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v, _depth + 1) for v in x]
    if isinstance(x, bytes | bytearray | memoryview):
        return {"bytes": len(x)}
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), _depth + 1)
    return str(x)


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------- views
def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float) and math.isfinite(v):
        return int(round(v))
    return None


def _first(d: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return None


_ALARM_ON = {"on", "start", "started", "active", "raised", "set", "true", "1", "onset"}
_ALARM_OFF = {"off", "end", "ended", "cleared", "clear", "inactive", "resolved", "false", "0", "stop"}
_QUALITY_TEXT = {"leads_off": "LEADS OFF", "flat_line": "FLAT LINE", "saturation": "SATURATION",
                 "heavy_noise": "NOISE", "signal_unusable": "SIGNAL UNUSABLE", "afib": "AFIB",
                 "vrun": "V-RUN", "brady": "BRADY", "tachy": "TACHY"}
# Default priorities (IEC 60601-1-8 high/medium/low) when a body names none: life-threatening
# rhythms high, other rhythm alarms medium, ectopy low; technical alarms medium (leads off: the
# patient is unmonitored) or low.
_DEFAULT_PRIORITY = {"asystole": "high", "vfib": "high", "vtach": "high", "vrun": "high",
                     "brady": "medium", "tachy": "medium", "pause": "medium", "afib": "medium",
                     "ectopy": "low", "leads_off": "medium", "signal_unusable": "low"}
_TECHNICAL = {"leads_off", "signal_unusable", "flat_line", "saturation", "heavy_noise", "noise", "lead_off"}
_PRIORITIES = {"high", "medium", "low"}
# events after which a stream's alarms that were on are void (its pipeline went without ending them;
# not stream_moved: the old owner closed the pipeline, and the new owner's alarms may come first)
_VOIDS_ALARMS = frozenset({"stream_reset", "stream_restarted"})


def alarm_view(body: Any, stream: str, kind: str, t0_ns: int) -> dict[str, Any] | None:
    """Normalise an alarm (kind ``alarm``) or an alarm-like event into one banner state.

    Returns ``None`` for events that are not alarms. ``priority`` is ``"high"``,
    ``"medium"`` or ``"low"`` (IEC 60601-1-8): the body's own ``priority`` when it names one,
    else a default per type (asystole high, afib medium, ...). ``technical`` is true for
    equipment/signal alarms (leads off, signal unusable, quality events, ``category:
    "technical"``), which the page styles apart from physiological ones.

    Examples
    --------
    >>> v = alarm_view({"type": "asystole", "state": "on", "onset_ns": 5}, "bed-1/ecg", "alarm", 5)
    >>> v["key"], v["state"], v["priority"], v["technical"], v["text"]
    ('bed-1/ecg:asystole', 'on', 'high', False, 'ASYSTOLE')
    >>> t = alarm_view({"type": "leads_off", "state": "on", "category": "technical"}, "b/ecg", "alarm", 5)
    >>> t["priority"], t["technical"], t["text"]
    ('medium', True, 'LEADS OFF')
    >>> alarm_view({"type": "gap"}, "bed-1/ecg", "event", 0) is None
    True
    """
    if not isinstance(body, Mapping):
        return None
    etype = str(_first(body, "type", "alarm", "name", "kind") or "alarm")
    sub = None
    technical = False
    if kind == "event":
        if etype == "quality" and isinstance(body.get("event"), str):
            sub = str(body["event"])
            technical = True
        elif etype == "alarm":
            sub = str(_first(body, "alarm", "name", "event") or "alarm")
        elif etype == "analysis_lead":
            # the ECG is analysed on another lead than the configured one (OUTPUTS.md 4.5): a low-priority
            # technical notice while it lasts, so the page says which lead the beats and alarms come from
            to, pref = body.get("to"), body.get("preferred")
            return {"key": f"{stream}:analysis_lead", "type": "analysis_lead",
                    "state": "off" if to == pref else "on",
                    "onset_ns": _int(_first(body, "t_ns", "onset_ns")) or int(t0_ns), "priority": "low",
                    "technical": True, "text": f"ECG ANALYSIS ON {to}",
                    "message": f"{pref} unusable: beats and alarms from {to}" if to != pref else None,
                    "end_ns": None}
        else:
            return None
    else:
        sub = etype
    technical = technical or sub in _TECHNICAL or str(body.get("category", "")).lower() == "technical"
    given = str(_first(body, "priority", "level", "severity") or "").lower()
    priority = given if given in _PRIORITIES else _DEFAULT_PRIORITY.get(sub, "low" if technical else "high")
    raw_state = _first(body, "state", "status", "active", "on")
    s = str(raw_state).strip().lower() if raw_state is not None else "on"
    state = "off" if s in _ALARM_OFF else "on" if s in _ALARM_ON else "on"
    lead = body.get("lead")
    channel = lead if isinstance(lead, str) and lead else _first(body, "channel", "lead")
    key = f"{stream}:{sub}" + (f":{channel}" if channel is not None and technical else "")
    onset = _int(_first(body, "onset_ns", "start_ns", "t_ns")) or int(t0_ns)
    text = _QUALITY_TEXT.get(sub, sub.replace("_", " ").upper())
    if technical and channel is not None:
        text = f"{text} {channel}"
    msg = _first(body, "message", "text", "detail")
    return {"key": key, "type": sub, "state": state, "onset_ns": onset, "priority": priority, "technical": technical,
            "text": text, "message": str(msg) if msg is not None else None,
            "end_ns": _int(_first(body, "end_ns", "offset_ns"))}


def _box(item: Any) -> list[float] | None:
    """``[x0, y0, x1, y1, score]`` from a list or a dict in one of the usual spellings."""
    score: float | None = None
    if isinstance(item, Mapping):
        score = _num(_first(item, "score", "prob", "probability", "confidence", "p"))
        if "box" in item or "bbox" in item:
            return _box(list(_first(item, "box", "bbox"))[:4] + [score if score is not None else -1])
        if all(k in item for k in ("x0", "y0", "x1", "y1")):
            v = [item["x0"], item["y0"], item["x1"], item["y1"]]
        elif all(k in item for k in ("xmin", "ymin", "xmax", "ymax")):
            v = [item["xmin"], item["ymin"], item["xmax"], item["ymax"]]
        elif all(k in item for k in ("x", "y", "w", "h")):
            v = [item["x"], item["y"], item["x"] + item["w"], item["y"] + item["h"]]
        elif all(k in item for k in ("x", "y", "width", "height")):
            v = [item["x"], item["y"], item["x"] + item["width"], item["y"] + item["height"]]
        else:
            return None
    elif isinstance(item, list | tuple) and len(item) >= 4:
        v = list(item[:4])
        if len(item) >= 5:
            score = _num(item[4])
    else:
        return None
    nums = [_num(x) for x in v]
    if any(n is None for n in nums):
        return None
    out = [float(n) for n in nums if n is not None]
    out.append(score if score is not None else -1.0)
    return out


def _contour(item: Any) -> list[float] | None:
    """A flat ``[x, y, x, y, ...]`` list from ``[[x, y], ...]``, a flat list or a dict."""
    if isinstance(item, Mapping):
        item = _first(item, "points", "contour", "polygon", "xy")
    if not isinstance(item, list | tuple) or not item:
        return None
    flat: list[float] = []
    if isinstance(item[0], list | tuple):
        for p in item:
            if len(p) < 2:
                return None
            x, y = _num(p[0]), _num(p[1])
            if x is None or y is None:
                return None
            flat += [x, y]
    else:
        vals = [_num(v) for v in item]
        if any(v is None for v in vals) or len(vals) % 2:
            return None
        flat = [float(v) for v in vals if v is not None]
    return flat if len(flat) >= 6 else None


def _mask_bits(mask: np.ndarray, max_side: int = 96) -> dict[str, Any] | None:
    m = np.asarray(mask)
    while m.ndim > 2:
        m = m[..., 0] if m.shape[-1] <= 4 else m[0]
    if m.ndim != 2 or m.size == 0:
        return None
    step = max(1, math.ceil(max(m.shape) / max_side))
    m = m[::step, ::step]
    thr = 127 if m.dtype == np.uint8 and m.max(initial=0) > 1 else 0.5
    bits = (np.nan_to_num(m.astype(np.float32)) > thr).astype(np.uint8)
    return {"w": int(bits.shape[1]), "h": int(bits.shape[0]),
            "bits": base64.b64encode(np.packbits(bits.ravel()).tobytes()).decode()}


def _rle_decode(m: Mapping[str, Any]) -> np.ndarray:
    """A ``{"rows", "cols", "rle"}`` mask (run lengths, row-major, starting with zeros)."""
    rows, cols = int(m["rows"]), int(m["cols"])
    runs = np.asarray(m["rle"], dtype=np.int64)
    if rows <= 0 or cols <= 0 or rows * cols > 1 << 22 or runs.ndim != 1 or (runs < 0).any() \
            or int(runs.sum()) != rows * cols:
        raise ValueError("bad RLE mask")
    vals = (np.arange(runs.size) % 2).astype(np.uint8)
    return np.repeat(vals, runs).reshape(rows, cols)


def polyp_view(body: Any, frame_wh: tuple[int, int] | None = None,
               mask: np.ndarray | None = None) -> dict[str, Any]:
    """Normalise a polyp annotation: probability, boxes and contours in 0..1 frame units.

    Coordinates are taken as normalised when every one is within [0, 1.5]; otherwise they
    are divided by the frame size, from ``body`` (``width``/``height``, ``frame_width``/
    ``frame_height``, ``size``/``shape`` as ``[h, w]``) or ``frame_wh`` (the video stream's).

    Examples
    --------
    >>> v = polyp_view({"prob": 0.9, "boxes": [[64, 48, 128, 96]]}, (640, 480))
    >>> v["prob"], v["boxes"]
    (0.9, [[0.1, 0.1, 0.2, 0.2, -1.0]])
    """
    out: dict[str, Any] = {"prob": None, "boxes": [], "contours": [], "mask": None}
    if mask is not None:
        out["mask"] = _mask_bits(mask)
    if not isinstance(body, Mapping):
        return out
    wh = frame_wh
    w = _num(_first(body, "width", "frame_width", "image_width"))
    h = _num(_first(body, "height", "frame_height", "image_height"))
    shape = _first(body, "size", "shape", "frame_size")
    if w and h:
        wh = (int(w), int(h))
    elif isinstance(shape, list | tuple) and len(shape) >= 2 and _num(shape[0]) and _num(shape[1]):
        wh = (int(shape[1]), int(shape[0]))  # [h, w] as NumPy shapes
    boxes_in = _first(body, "boxes", "bboxes", "detections", "polyps")
    boxes = [b for b in (_box(x) for x in boxes_in) if b is not None] if isinstance(boxes_in, list) else []
    cont_in = _first(body, "contours", "polygons", "outlines")
    contours = [c for c in (_contour(x) for x in cont_in) if c is not None] if isinstance(cont_in, list) else []
    if isinstance(boxes_in, list):
        for x in boxes_in:  # detections may carry their own contour
            if isinstance(x, Mapping) and _first(x, "contour", "polygon", "points") is not None:
                c = _contour(x)
                if c is not None:
                    contours.append(c)
    coords = [v for b in boxes for v in b[:4]] + [v for c in contours for v in c]
    if coords and max(abs(v) for v in coords) > 1.5:
        if wh is None:
            boxes, contours = [], []
        else:
            sx, sy = 1.0 / wh[0], 1.0 / wh[1]
            boxes = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy, b[4]] for b in boxes]
            contours = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(c)] for c in contours]
    out["boxes"] = [[round(v, 5) for v in b] for b in boxes]
    out["contours"] = [[round(v, 5) for v in c] for c in contours]
    prob = _num(_first(body, "prob", "probability", "polyp_probability", "polyp_prob", "score", "p", "confidence"))
    if prob is None and boxes:
        scores = [b[4] for b in boxes if b[4] >= 0]
        prob = max(scores) if scores else None
    out["prob"] = prob
    for k in ("analysed_at", "input_size", "analyse_every", "t0_ns"):  # the engine's operating point
        v = _int(body.get(k))
        if v is not None:
            out[k] = v
    if isinstance(body.get("reused"), bool):
        out["reused"] = body["reused"]
    m = body.get("mask")
    if out["mask"] is None and isinstance(m, Mapping) and "rle" in m:  # the engine's polyp_body
        with contextlib.suppress(ValueError, TypeError):
            out["mask"] = _mask_bits(_rle_decode(m))
    if out["mask"] is None and isinstance(m, list | tuple) and m:
        with contextlib.suppress(ValueError, TypeError):
            out["mask"] = _mask_bits(np.asarray(m, dtype=np.float32))
    elif out["mask"] is None and isinstance(m, bytes | bytearray) and isinstance(shape, list | tuple):
        with contextlib.suppress(ValueError, TypeError):
            out["mask"] = _mask_bits(np.frombuffer(m, np.uint8).reshape([int(s) for s in shape][:2]))
    return out


def annotation_view(kind: str, stream: str, t0_ns: int, body: Any) -> dict[str, Any] | None:
    """The normalised ``view`` of an annotation body (see the module docstring)."""
    if not isinstance(body, Mapping):
        return None
    if kind == "beats":
        items = _first(body, "beats", "items")
        if items is None and ("sample" in body or "t_ns" in body):
            items = [body]
        fs = _num(body.get("fs"))
        beats = []
        for b in items if isinstance(items, list) else []:
            if not isinstance(b, Mapping):
                continue
            t = _int(_first(b, "t_ns", "time_ns", "peak_ns"))
            s = _int(_first(b, "sample", "peak_sample", "r_sample"))
            if t is None and s is not None and fs:
                t = int(t0_ns + 0)  # no per-beat time: fall back on the record time
            if t is None:
                continue
            label = _first(b, "label", "class", "symbol", "type")
            bv: dict[str, Any] = {"t_ns": t, "sample": s, "label": str(label) if label is not None else None}
            if b.get("usable") is False:
                bv["usable"] = False
            beats.append(bv)
        return {"beats": beats}
    if kind == "hr":
        readings = body.get("readings")
        if isinstance(readings, list) and readings:
            last = readings[-1] if isinstance(readings[-1], Mapping) else {}
            return {"t_ns": _int(last.get("t_ns")) or t0_ns,
                    "bpm": _num(_first(last, "hr_bpm", "bpm", "heart_rate_bpm"))}
        return {"t_ns": _int(body.get("t_ns")) or t0_ns,
                "bpm": _num(_first(body, "heart_rate_bpm", "hr_bpm", "bpm", "hr"))}
    if kind == "hrv":
        return {k: _num(body.get(k)) for k in ("sdnn_ms", "rmssd_ms", "pnn50", "mean_hr_bpm", "n_nn")}
    if kind == "quality":
        v: dict[str, Any] = {}
        blocks = body.get("blocks")
        if isinstance(blocks, list) and blocks and isinstance(blocks[-1], Mapping):
            sqi = blocks[-1].get("sqi")
            vals = [_num(x) for x in (sqi if isinstance(sqi, list) else [sqi])]
            vals_f = [x for x in vals if x is not None]
            v["sqi"] = min(vals_f) if vals_f else None
            usable = blocks[-1].get("usable")
            v["usable"] = all(usable) if isinstance(usable, list) else usable
        elif "sqi" in body:
            v["sqi"] = _num(body.get("sqi"))
        if "abnormal_prob" in body:
            v["abnormal_prob"] = _num(body.get("abnormal_prob"))
            v["label"] = body.get("label")
        return v
    if kind == "segments":
        segs = []
        for s in body.get("segments") or []:
            if isinstance(s, Mapping):
                a, b = _int(s.get("start_ns")), _int(s.get("end_ns"))
                if a is not None and b is not None:
                    segs.append({"start_ns": a, "end_ns": b, "state": str(s.get("state", ""))})
        return {"segments": segs}
    if kind in ("alarm", "event"):
        return alarm_view(body, stream, kind, t0_ns)
    return None


# --------------------------------------------------------------------------- decimation
@dataclass(slots=True)
class DisplayDecimator:
    """Min/max display decimation of a signal stream, exact across chunk boundaries.

    Every block of ``2 q`` input samples (``q = ceil(rate_hz / max_hz)``) becomes two output
    samples, its minimum and maximum in the order they occur, so the output runs at
    ``rate_hz / q`` and every peak stays visible (the usual "min-max" plot decimation).
    Output sample ``j`` is stamped at the time of input sample ``j q`` of the run. A chunk
    whose ``t0_ns`` does not continue the previous one (beyond half a sample) restarts the
    decimator; the incomplete block of the previous run is dropped.

    Examples
    --------
    >>> d = DisplayDecimator(1000.0, 500.0)
    >>> t0, y = d.push(0, np.array([[0.0], [3.0], [1.0], [-2.0], [5.0]]))
    >>> d.out_rate_hz, t0, y[:, 0].tolist()
    (500.0, 0, [3.0, -2.0])
    """

    rate_hz: float
    max_hz: float
    q: int = 1
    carry: np.ndarray | None = None
    carry_t0: int = 0
    expect_ns: int | None = None

    def __post_init__(self) -> None:
        self.q = max(1, math.ceil(self.rate_hz / self.max_hz - 1e-9))

    @property
    def out_rate_hz(self) -> float:
        return self.rate_hz / self.q

    def push(self, t0_ns: int, x: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Decimate one chunk ``(n, c)``; ``(t0_ns, y)`` or ``None`` when nothing is ready."""
        x = np.asarray(x, dtype=np.float32)
        n = x.shape[0]
        period = 1e9 / self.rate_hz
        if self.expect_ns is None or abs(t0_ns - self.expect_ns) > 0.5 * period:
            self.carry = None
        self.expect_ns = t0_ns + round(n * period)
        if self.q == 1:
            return (t0_ns, x) if n else None
        if self.carry is not None and self.carry.shape[0]:
            start_t = self.carry_t0
            x = np.concatenate([self.carry, x])
        else:
            start_t = t0_ns
        block = 2 * self.q
        m = (x.shape[0] // block) * block
        rest = x[m:]
        self.carry = rest.copy()
        self.carry_t0 = start_t + round(m * period)
        if m == 0:
            return None
        b = x[:m].reshape(m // block, block, x.shape[1])
        imin = np.argmin(b, axis=1)
        imax = np.argmax(b, axis=1)
        vmin = np.take_along_axis(b, imin[:, None, :], axis=1)[:, 0, :]
        vmax = np.take_along_axis(b, imax[:, None, :], axis=1)[:, 0, :]
        first_min = imin <= imax
        y = np.empty((2 * b.shape[0], x.shape[1]), np.float32)
        y[0::2] = np.where(first_min, vmin, vmax)
        y[1::2] = np.where(first_min, vmax, vmin)
        return start_t, y


# --------------------------------------------------------------------------- video
class VideoTranscoder:
    """Decode a video stream's chunks (H.264 packets or raw RGB) and re-encode JPEG.

    PyAV decodes H.264 (one codec context per stream, packets in order); frames are scaled
    to at most ``max_width`` pixels wide and compressed with Pillow. Raw video (``enc
    raw``, ``rgb24``/``gray`` arrays) is scaled and compressed the same way. Planar raw
    packets (``codec raw`` with ``enc packet``) are not supported (counted in ``errors``).
    """

    def __init__(self, max_width: int = 640, quality: int = 70) -> None:
        self.max_width = max_width
        self.quality = quality
        self._ctx: Any = None
        self.need_keyframe = False
        self.errors = 0
        self.frames = 0

    def skip(self) -> None:
        """A packet was not decoded: wait for the next keyframe before decoding again."""
        self.need_keyframe = True

    def decode(self, chunk: Chunk) -> np.ndarray | None:
        """The newest RGB frame (h, w, 3) this chunk completes, or ``None``."""
        if chunk.data is not None:
            img = chunk.data
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8, copy=False)
        if chunk.video is None or chunk.packet is None or chunk.video.codec != "h264":
            self.errors += 1
            return None
        import av

        if self.need_keyframe and not chunk.video.keyframe:
            return None
        self.need_keyframe = False
        if self._ctx is None:
            self._ctx = av.CodecContext.create("h264", "r")
        last = None
        try:
            for frame in self._ctx.decode(av.Packet(bytes(chunk.packet))):
                last = frame
        except (av.FFmpegError, ValueError):
            self.errors += 1
            self.need_keyframe = True
            return None
        if last is None:
            return None
        w, h = last.width, last.height
        if w > self.max_width:
            h = max(2, round(h * self.max_width / w / 2) * 2)
            w = self.max_width
        return last.to_ndarray(format="rgb24", width=w, height=h)

    def jpeg(self, rgb: np.ndarray) -> tuple[bytes, int, int]:
        """``(jpeg_bytes, width, height)`` of an RGB frame scaled to ``max_width``."""
        from io import BytesIO

        from PIL import Image

        im = Image.fromarray(rgb)
        if im.width > self.max_width:
            im = im.resize((self.max_width, max(2, round(im.height * self.max_width / im.width))))
        buf = BytesIO()
        im.save(buf, "JPEG", quality=self.quality)
        self.frames += 1
        return buf.getvalue(), im.width, im.height


# --------------------------------------------------------------------------- clients
class Client:
    """One browser: a bounded queue that drops its oldest message when full.

    ``put`` never blocks; ``get`` waits for the next message. Video frames are kept apart,
    newest per stream only (latest-frame-wins), and sent after the queued messages.
    Every loss is counted, in total (``dropped``, ``video_dropped``) and per topic
    (``dropped_by_topic``), so a browser's seq gaps can be traced to this queue.

    Parameters
    ----------
    maxlen : int
        Messages queued before the oldest is dropped.
    peer : str
        The browser's address (``host:port``), for statistics.

    Examples
    --------
    >>> c = Client(maxlen=2, peer="127.0.0.1:50000")
    >>> for i in range(5):
    ...     c.put(str(i), "hr/bed-1")
    >>> list(c.queue), c.dropped, c.dropped_by_topic, c.offered
    (['3', '4'], 3, {'hr/bed-1': 3}, 5)
    """

    _ids = itertools.count(1)

    def __init__(self, maxlen: int = 4000, peer: str = "", user: str | None = None,
                 allow: Callable[[str], bool] | None = None) -> None:
        self.id = next(Client._ids)
        self.peer = peer
        self.user = user
        self.allow = allow  # patient id -> may this browser see it (None: everything)
        self.listen: set[str] = set()  # base streams this browser listens to (audio messages)
        self.listen_topics: set[str] = set()  # the signal topics its audio comes from
        self.refused = 0  # messages withheld by the access list
        self.audio_only = False  # a listening socket: audio and refusals only
        self.connected = time.monotonic()
        self.queue: deque[str | bytes] = deque()
        self._queue_topics: deque[str] = deque()
        self.maxlen = maxlen
        self.video: dict[str, bytes] = {}
        self.dropped = 0
        self.dropped_by_topic: dict[str, int] = {}
        self.video_dropped = 0
        self.offered = 0  # messages and frames handed to put()/put_video()
        self.sent = 0
        self._wake = asyncio.Event()

    def put(self, msg: str | bytes, topic: str = "") -> None:
        """Queue ``msg`` (of ``topic``, for the per-topic drop count); never blocks.

        With an access list (``allow``) a message of a patient this browser may not see is
        withheld (counted in ``refused``), and engine statistics keep only its patients' streams.
        """
        if self.audio_only and topic != "_refused" and not (isinstance(msg, bytes) and topic in self.listen_topics):
            return
        if self.allow is not None and topic and not topic.startswith("_"):
            if topic.startswith("stats/"):
                if isinstance(msg, str):
                    msg = _filter_stats(msg, self.allow)
            elif not self.allow(patient_of_topic(topic)):
                self.refused += 1
                return
        self.offered += 1
        if len(self.queue) >= self.maxlen:
            self.queue.popleft()
            lost = self._queue_topics.popleft()
            self.dropped += 1
            self.dropped_by_topic[lost] = self.dropped_by_topic.get(lost, 0) + 1
        self.queue.append(msg)
        self._queue_topics.append(topic)
        self._wake.set()

    def put_video(self, stream: str, msg: bytes) -> None:
        """Offer the newest frame of ``stream``; an unsent older one is replaced (counted)."""
        if self.audio_only:
            return
        if self.allow is not None and not self.allow(stream.split("/")[0]):
            self.refused += 1
            return
        self.offered += 1
        if stream in self.video:
            self.video_dropped += 1
        self.video[stream] = msg
        self._wake.set()

    async def get(self) -> str | bytes:
        while True:
            if self.queue:
                self.sent += 1
                self._queue_topics.popleft()
                return self.queue.popleft()
            if self.video:
                key = next(iter(self.video))
                self.sent += 1
                return self.video.pop(key)
            self._wake.clear()
            await self._wake.wait()

    def stats(self) -> dict[str, Any]:
        """This browser's counters as plain data (``/stats``, ``/metrics``, ``_bridge``)."""
        return {"id": self.id, "peer": self.peer, "connected_s": round(time.monotonic() - self.connected, 3),
                "queued": len(self.queue) + len(self.video), "queue_max": self.maxlen,
                "offered": self.offered, "sent": self.sent, "dropped": self.dropped,
                "video_dropped": self.video_dropped, "dropped_by_topic": dict(self.dropped_by_topic),
                "user": self.user, "refused": self.refused, "listen": sorted(self.listen)}


def _filter_stats(msg: str, allow: Callable[[str], bool]) -> str:
    """An engine ``stats`` message with only the streams of patients ``allow`` admits."""
    try:
        doc = json.loads(msg)
        streams = doc.get("body", {}).get("streams")
    except (ValueError, AttributeError):
        return msg
    if isinstance(streams, dict):
        doc["body"]["streams"] = {k: v for k, v in streams.items() if allow(k.split("/")[0])}
        return _dumps(doc)
    return msg


# --------------------------------------------------------------------------- bridge
@dataclass(slots=True)
class _Topic:
    last_seq: int = -1
    lost: int = 0
    gaps: int = 0
    history: deque[tuple[int, str | bytes]] = field(default_factory=deque)
    latest: str | None = None


class Bridge:
    """Subscribe to wire-v1 publishers and fan chunks out to browser clients.

    Parameters
    ----------
    endpoints : sequence of str
        Publish addresses to SUBscribe to (one SUB socket connects to all of them; ZeroMQ
        reconnects by itself when a publisher restarts).
    topics : iterable of str
        Topic prefixes (default everything).
    queue_max : int
        Messages queued per browser before its oldest are dropped.
    max_display_hz : float
        Signals faster than this are min/max-decimated for display.
    history_s : float
        Seconds of signals/beats/segments/events replayed to a browser that connects.
    video_max_width, jpeg_quality : int
        JPEG re-encoding of video for the browser.
    curve_secret, server_key : str, optional
        With CurveZMQ on the engine: this bridge's ``.key_secret`` file (its public key must
        be in the engine's allow-list) and the engine's public ``.key`` file.

    Examples
    --------
    >>> b = Bridge(["tcp://127.0.0.1:5556"])
    >>> msgs = b.convert(Chunk.record("hr", "bed-1/ecg", 0, 10**9, {"readings": [{"hr_bpm": 61.0}]}))
    >>> json.loads(msgs[0])["view"]["bpm"]
    61.0
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        topics: Iterable[str] = ("",),
        queue_max: int = 4000,
        max_display_hz: float = 500.0,
        history_s: float = 10.0,
        video_max_width: int = 640,
        jpeg_quality: int = 70,
        curve_secret: str | None = None,
        server_key: str | None = None,
    ) -> None:
        if (curve_secret is None) != (server_key is None):
            from telediag.errors import ConfigError

            raise ConfigError("CurveZMQ needs both curve_secret (the viewer's .key_secret) and server_key "
                              f"(the engine's .key), got curve_secret={curve_secret!r} server_key={server_key!r}")
        self.curve = (curve_secret, server_key)
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.topics = list(topics)
        self.queue_max = queue_max
        self.max_display_hz = max_display_hz
        self.history_ns = int(history_s * 1e9)
        self.video_max_width = video_max_width
        self.jpeg_quality = jpeg_quality
        self.clients: set[Client] = set()
        self.departed = {"clients": 0, "dropped": 0, "video_dropped": 0, "sent": 0}
        self.received = 0
        self.bad: dict[str, int] = {}
        self.last_rx = 0.0
        self.last_stats = 0.0
        self.started = time.monotonic()
        self._topics: dict[str, _Topic] = {}
        self._decim: dict[str, DisplayDecimator] = {}
        self._filtered_bases: set[str] = set()
        self._alarms: dict[str, tuple[str, str]] = {}  # alarm key -> (topic, message)
        self.acks: dict[str, dict[str, Any]] = {}  # alarm key -> acknowledgement / silence record
        self._audio_src: dict[str, tuple[str, float]] = {}  # base stream -> (topic, last seen)
        self._video: dict[str, VideoTranscoder] = {}
        self._video_q: dict[str, deque[Chunk]] = {}
        self._video_busy: set[str] = set()
        self._video_wh: dict[str, tuple[int, int]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def lost(self) -> int:
        """Messages lost upstream (seq gaps), all topics."""
        return sum(t.lost for t in self._topics.values())

    @property
    def gaps(self) -> int:
        """Seq gaps seen upstream, all topics."""
        return sum(t.gaps for t in self._topics.values())

    def status(self) -> dict[str, Any]:
        """Bridge counters and, under ``per_client``, every connected browser's :meth:`Client.stats`.

        ``lost``/``gaps``: messages the bridge itself missed upstream (seq gaps: the engine's
        PUB dropped them for this subscriber). ``dropped``: per browser id, messages its
        bounded queue dropped; ``dropped_total`` also counts browsers that have left.
        """
        clients = sorted(self.clients, key=lambda c: c.id)
        return {
            "endpoints": self.endpoints,
            "clients": len(self.clients),
            "received": self.received,
            "lost": self.lost,
            "gaps": self.gaps,
            "bad": dict(self.bad),
            "upstream_idle_s": round(time.monotonic() - self.last_rx, 3) if self.last_rx else None,
            "engine_idle_s": round(time.monotonic() - self.last_stats, 3) if self.last_stats else None,
            "topics": sorted(self._topics),
            "alarms_on": sorted(self._alarms),
            "acks": dict(self.acks),
            "dropped": {str(c.id): c.dropped for c in clients},
            "dropped_total": self.departed["dropped"] + sum(c.dropped for c in clients),
            "video_dropped_total": self.departed["video_dropped"] + sum(c.video_dropped for c in clients),
            "clients_total": self.departed["clients"] + len(clients),
            "per_client": [c.stats() for c in clients],
        }

    def metrics_text(self) -> str:
        """Prometheus text (format 0.0.4) of :meth:`status`: upstream losses, per-browser drops.

        Examples
        --------
        >>> b = Bridge("tcp://127.0.0.1:5556")
        >>> "telediag_viewer_clients 0" in b.metrics_text()
        True
        """
        st = self.status()
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"))
            out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        metric("telediag_viewer_clients", "gauge", "Browsers connected", [("", st["clients"])])
        metric("telediag_viewer_clients_total", "counter", "Browsers that ever connected", [("", st["clients_total"])])
        metric("telediag_viewer_received_total", "counter", "Messages received from the engine", [("", st["received"])])
        metric("telediag_viewer_upstream_lost_total", "counter",
               "Messages the bridge missed upstream (seq gaps)", [("", st["lost"])])
        metric("telediag_viewer_upstream_gaps_total", "counter", "Seq gaps seen upstream", [("", st["gaps"])])
        metric("telediag_viewer_bad_messages_total", "counter", "Undecodable messages",
               [("", sum(st["bad"].values()))])
        metric("telediag_viewer_dropped_total", "counter",
               "Messages dropped by browser queues (all browsers, including those that left)",
               [("", st["dropped_total"])])
        metric("telediag_viewer_video_dropped_total", "counter",
               "Video frames replaced before a browser received them (all browsers)",
               [("", st["video_dropped_total"])])
        per = st["per_client"]

        def lab(c: dict[str, Any]) -> str:
            peer = str(c["peer"]).replace("\\", "\\\\").replace('"', '\\"')
            return f'{{client="{c["id"]}",peer="{peer}"}}'

        metric("telediag_viewer_client_dropped_total", "counter", "Messages dropped by this browser's queue",
               [(lab(c), c["dropped"]) for c in per])
        metric("telediag_viewer_client_video_dropped_total", "counter", "Video frames this browser missed",
               [(lab(c), c["video_dropped"]) for c in per])
        metric("telediag_viewer_client_sent_total", "counter", "Messages sent to this browser",
               [(lab(c), c["sent"]) for c in per])
        metric("telediag_viewer_client_queued", "gauge", "Messages waiting in this browser's queue",
               [(lab(c), c["queued"]) for c in per])
        return "\n".join(out) + "\n"

    def add_client(self, peer: str = "", user: str | None = None,
                   allow: Callable[[str], bool] | None = None, audio_only: bool = False) -> Client:
        """Register a browser; its queue starts with the hello message and the snapshot.

        ``user`` and ``allow`` (patient id -> bool) come from the login; a browser sees only
        the patients ``allow`` admits. An ``audio_only`` client (the page's listening socket)
        gets only the ``audio`` of the streams it listens to and refusals.
        """
        c = Client(self.queue_max, peer, user, allow)
        c.audio_only = audio_only
        if audio_only:
            self.clients.add(c)
            return c
        c.put(_dumps({"kind": "_hello", "endpoints": self.endpoints, "t_ns": time.time_ns(),
                      "history_s": self.history_ns / 1e9, "client": c.id, "user": user}), "_hello")
        snap = self.snapshot_topics()
        c.maxlen = max(c.maxlen, len(snap) + self.queue_max // 2)  # the snapshot alone never overflows
        c.put(_dumps({"kind": "_snapshot", "state": "begin", "count": len(snap)}), "_snapshot")
        for topic, msg in snap:
            c.put(msg, topic)
        c.put(_dumps({"kind": "_snapshot", "state": "end"}), "_snapshot")
        self.clients.add(c)
        return c

    def remove_client(self, c: Client) -> None:
        """Forget a browser (its counts stay in the ``*_total`` figures)."""
        if c in self.clients:
            self.clients.discard(c)
            self.departed["clients"] += 1
            self.departed["dropped"] += c.dropped
            self.departed["video_dropped"] += c.video_dropped
            self.departed["sent"] += c.sent

    def snapshot(self) -> list[str | bytes]:
        """Messages that bring a new browser up to date (see the module docstring)."""
        return [m for _, m in self.snapshot_topics()]

    def snapshot_topics(self) -> list[tuple[str, str | bytes]]:
        """:meth:`snapshot` with each message's topic (for per-patient access filtering)."""
        out: list[tuple[str, str | bytes]] = []
        for name in sorted(self._topics):
            t = self._topics[name]
            out.extend((name, m) for _, m in t.history)
            if t.latest is not None:
                out.append((name, t.latest))
        out.extend(self._alarms.values())
        for key, ack in self.acks.items():
            out.append((ack["topic"], _dumps({"kind": "_ack", "key": key, **ack})))
        return out

    # -- alarm acknowledgement ---------------------------------------------------------
    def acknowledge(self, key: str, user: str | None, action: str = "ack", silence_s: float = 120.0) -> dict[str, Any]:
        """Record who acknowledged (``ack``) or silenced (``silence``, audio paused for
        ``silence_s``) the active alarm ``key`` and tell every browser allowed to see it.

        Raises ``KeyError`` when no such alarm is on. The record goes when the alarm ends.
        """
        if key not in self._alarms:
            raise KeyError(key)
        topic = self._alarms[key][0]
        now_ns = time.time_ns()
        rec = dict(self.acks.get(key, {}))
        rec.update({"topic": topic, "stream": topic.split("/", 1)[1] if "/" in topic else topic})
        if action == "silence":
            rec.update({"silenced_by": user, "silenced_at_ns": now_ns,
                        "silenced_until_ns": now_ns + int(silence_s * 1e9)})
        else:
            rec.update({"acked_by": user, "acked_at_ns": now_ns})
        self.acks[key] = rec
        msg = _dumps({"kind": "_ack", "key": key, **rec})
        for c in self.clients:
            c.put(msg, topic)
        return rec

    # -- listening ---------------------------------------------------------------------
    def _audio(self, chunk: Chunk) -> None:
        """Full-rate mono audio of a heart-sound (or other audio) stream for listening browsers.

        The raw stream is preferred (full band); the engine's ``/filtered`` one is used when no
        raw stream has been seen for 3 s. Header ``{"kind": "audio", "topic", "stream", "base",
        "seq", "t0_ns", "rate_hz", "n"}``, payload float32 samples of channel 0.
        """
        assert chunk.data is not None and chunk.rate_hz is not None
        base = chunk.stream[: -len("/filtered")] if chunk.stream.endswith("/filtered") else chunk.stream
        t = time.monotonic()
        src = self._audio_src.get(base)
        raw = not chunk.stream.endswith("/filtered")
        if src is None or src[0] == chunk.topic or raw or t - src[1] > 3.0:
            self._audio_src[base] = (chunk.topic, t)
        else:
            return
        listeners = [c for c in self.clients if base in c.listen]
        if not listeners:
            return
        x = np.asarray(chunk.data, dtype="<f4")
        x = x[:, 0] if x.ndim == 2 else x.ravel()
        msg = pack_binary({"topic": chunk.topic, "kind": "audio", "stream": chunk.stream, "base": base,
                           "seq": chunk.seq, "t0_ns": chunk.t0_ns, "rate_hz": chunk.rate_hz, "n": int(x.shape[0])},
                          np.ascontiguousarray(x).tobytes())
        for c in listeners:
            c.listen_topics.add(chunk.topic)
            c.put(msg, chunk.topic)

    def _track(self, chunk: Chunk) -> _Topic:
        t = self._topics.get(chunk.topic)
        if t is None:
            t = self._topics[chunk.topic] = _Topic()
        if t.last_seq >= 0 and chunk.seq > t.last_seq + 1:
            t.lost += chunk.seq - t.last_seq - 1
            t.gaps += 1
        elif t.last_seq >= 0 and chunk.seq <= t.last_seq:  # restarted publisher
            t.history.clear()
        t.last_seq = chunk.seq
        return t

    def _remember(self, t: _Topic, end_ns: int, msg: str | bytes) -> None:
        t.history.append((end_ns, msg))
        limit = end_ns - self.history_ns
        while t.history and (t.history[0][0] < limit or len(t.history) > 2000):
            t.history.popleft()

    # -- conversion --------------------------------------------------------------------
    def convert(self, chunk: Chunk) -> list[str | bytes]:
        """Browser messages for one non-video chunk (also records history and state)."""
        t = self._track(chunk)
        kind = chunk.kind
        if kind in SIGNAL_KINDS and chunk.data is not None:
            if kind in AUDIO_KINDS and chunk.rate_hz:
                self._audio(chunk)
            if chunk.stream.endswith("/filtered"):
                self._filtered_bases.add(f"{kind}/{chunk.stream[: -len('/filtered')]}")
            elif chunk.topic in self._filtered_bases:
                return []  # the page shows the filtered stream of this signal
            return self._signal(chunk, t)
        if kind == "video":
            return []
        head: dict[str, Any] = {"topic": chunk.topic, "kind": kind, "stream": chunk.stream,
                                "seq": chunk.seq, "t0_ns": chunk.t0_ns}
        body = chunk.body
        view: dict[str, Any] | None
        if kind == "polyp":
            view = polyp_view(body, self._video_wh.get(chunk.stream),
                              chunk.data if chunk.data is not None else None)
            head["view"] = view
        else:
            head["body"] = jsonable(body) if kind != "stats" or body is not None else None
            if body is None and chunk.data is not None:
                head["body"] = {"array": list(chunk.data.shape)}
            view = annotation_view(kind, chunk.stream, chunk.t0_ns, body)
            if view is not None:
                head["view"] = view
        msg = _dumps(head)
        voided: list[str | bytes] = []
        if kind == "event" and isinstance(body, Mapping) and body.get("type") in _VOIDS_ALARMS:
            voided = self._void_alarms(str(body.get("stream") or chunk.stream), str(body["type"]))
        if kind in ("alarm", "event") and view is not None and "key" in view:
            if view["state"] == "on":
                self._alarms[view["key"]] = (chunk.topic, msg)
            else:
                self._alarms.pop(view["key"], None)
                self.acks.pop(view["key"], None)
        if kind in _HISTORY_KINDS:
            self._remember(t, chunk.t0_ns, msg)
            if kind == "event":
                while len(t.history) > _MAX_EVENTS_KEPT:
                    t.history.popleft()
        elif kind in _STATE_KINDS:
            t.latest = msg
        return [msg, *voided]

    def _void_alarms(self, sid: str, why: str) -> list[str | bytes]:
        """End the alarms still on for stream ``sid`` whose pipeline is gone without ending them
        (``stream_reset``, a replaced worker: OUTPUTS.md 4.5): an ``off`` view for each, so no
        banner stays on that nothing would ever end."""
        out: list[str | bytes] = []
        for key in [k for k in self._alarms if k.startswith(sid + ":")]:
            _, old = self._alarms.pop(key)
            self.acks.pop(key, None)
            head = json.loads(old)
            head["view"] = {**head.get("view", {}), "state": "off", "message": f"ended: {why}"}
            out.append(_dumps(head))
        return out

    def _signal(self, chunk: Chunk, t: _Topic) -> list[str | bytes]:
        assert chunk.data is not None and chunk.rate_hz is not None
        d = self._decim.get(chunk.topic)
        if d is None or d.rate_hz != chunk.rate_hz:
            d = self._decim[chunk.topic] = DisplayDecimator(chunk.rate_hz, self.max_display_hz)
        res = d.push(chunk.t0_ns, chunk.data)
        if res is None:
            return []
        t0, y = res
        header = {"topic": chunk.topic, "kind": chunk.kind, "stream": chunk.stream, "seq": chunk.seq,
                  "t0_ns": t0, "rate_hz": d.out_rate_hz, "channels": list(chunk.channels),
                  "units": list(chunk.units), "n": int(y.shape[0])}
        payload = np.ascontiguousarray(y.T, dtype="<f4").tobytes()
        msg = pack_binary(header, payload)
        self._remember(t, t0 + round(y.shape[0] * 1e9 / d.out_rate_hz), msg)
        return [msg]

    # -- video -------------------------------------------------------------------------
    def _video_chunk(self, chunk: Chunk) -> None:
        self._track(chunk)
        if chunk.video is not None:
            self._video_wh[chunk.stream] = (chunk.video.width, chunk.video.height)
        elif chunk.data is not None:
            self._video_wh[chunk.stream] = (int(chunk.data.shape[1]), int(chunk.data.shape[0]))
        tr = self._video.get(chunk.stream)
        if tr is None:
            tr = self._video[chunk.stream] = VideoTranscoder(self.video_max_width, self.jpeg_quality)
        if not self.clients:
            tr.skip()
            return
        q = self._video_q.setdefault(chunk.stream, deque())
        if chunk.data is not None:
            q.clear()  # raw frames are independent: keep the newest only
        elif len(q) > 120:  # decoder far behind: drop and resume at a keyframe
            q.clear()
            tr.skip()
        q.append(chunk)
        if chunk.stream not in self._video_busy:
            self._video_busy.add(chunk.stream)
            self._spawn(self._video_worker(chunk.stream))

    def _transcode(self, tr: VideoTranscoder, chunks: list[Chunk]) -> tuple[bytes, int, int, Chunk] | None:
        frame = None
        last = chunks[-1]
        for c in chunks:
            f = tr.decode(c)
            if f is not None:
                frame, last = f, c
        if frame is None:
            return None
        jpg, w, h = tr.jpeg(frame)
        return jpg, w, h, last

    async def _video_worker(self, stream: str) -> None:
        loop = asyncio.get_running_loop()
        q = self._video_q[stream]
        tr = self._video[stream]
        try:
            while q:
                batch = list(q)
                q.clear()
                assert self._pool is not None
                res = await loop.run_in_executor(self._pool, self._transcode, tr, batch)
                if res is None:
                    continue
                jpg, w, h, c = res
                src = self._video_wh.get(stream, (w, h))
                msg = pack_binary({"topic": c.topic, "kind": "video", "stream": stream, "seq": c.seq,
                                   "t0_ns": c.t0_ns, "width": w, "height": h,
                                   "src_width": src[0], "src_height": src[1]}, jpg)
                for cl in self.clients:
                    cl.put_video(stream, msg)
        finally:
            self._video_busy.discard(stream)

    # -- running -----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def handle_frames(self, frames: Sequence[Any]) -> None:
        """Decode one multipart message and fan it out (malformed ones are counted)."""
        try:
            chunk = decode(frames)
        except ProtocolError as e:
            self.bad[e.reason] = self.bad.get(e.reason, 0) + 1
            return
        self.received += 1
        self.last_rx = time.monotonic()
        if chunk.kind == "stats" and chunk.stream.startswith("engine"):
            self.last_stats = self.last_rx
        if chunk.kind == "video":
            self._video_chunk(chunk)
            return
        topic = chunk.topic
        for msg in self.convert(chunk):
            for c in self.clients:
                c.put(msg, topic)

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until ``stop`` is set; a status message goes to every client each second."""
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        secret, server_key = self.curve
        if secret is not None and server_key is not None:
            from telediag.transports.security import secure_client

            secure_client(sock, secret, server_key)
        for t in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        for ep in self.endpoints:
            sock.connect(ep)
        sync: zmq.Socket[Any] = zmq.Socket.shadow(sock.underlying)  # non-blocking draining without awaiting
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="viewer-video")
        next_status = time.monotonic() + 1.0
        try:
            while not stop.is_set():
                timeout = max(0.0, next_status - time.monotonic())
                if await sock.poll(int(timeout * 1000) + 1):
                    for _ in range(1000):  # drain what is there, then yield to the senders
                        try:
                            frames = sync.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.handle_frames(frames)
                    await asyncio.sleep(0)
                if time.monotonic() >= next_status:
                    self.broadcast_status()
                    next_status = time.monotonic() + 1.0
        finally:
            for task in list(self._tasks):
                task.cancel()
            sock.close(0)
            ctx.term()
            self._pool.shutdown(wait=False, cancel_futures=True)

    def broadcast_status(self) -> None:
        t = time.monotonic()
        idle = round(t - self.last_rx, 2) if self.last_rx else None
        stats_idle = round(t - self.last_stats, 2) if self.last_stats else None
        dropped = {str(c.id): c.dropped for c in self.clients}
        for c in self.clients:
            c.put(_dumps({"kind": "_bridge", "client": c.id, "dropped": c.dropped, "video_dropped": c.video_dropped,
                          "dropped_by_topic": c.dropped_by_topic, "sent": c.sent,
                          "lost": self.lost, "gaps": self.gaps, "bad": sum(self.bad.values()),
                          "upstream_idle_s": idle, "engine_idle_s": stats_idle,
                          "clients": len(self.clients), "clients_dropped": dropped,
                          "received": self.received}), "_bridge")
