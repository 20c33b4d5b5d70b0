"""Republish engine outputs as Lab Streaming Layer outlets: ``telediag lsl-out [ADDR] TOPIC...``.

One outlet per topic, created when its first message arrives (source id = the topic, so a
restarted bridge is found again by LSL recorders such as LabRecorder):

==========================  ====================================================================
topic                       outlet
==========================  ====================================================================
``ecg/…``, ``pcg/…``        type ``ECG``/``PCG``, the stream's rate, float32, one channel per lead
                            (labels and units in ``desc/channels``, the XDF convention)
``beats/…``                 type ``Markers``, irregular, string: the beat's class (``N``, ``V``, …)
``hr/…``                    type ``HeartRate``, irregular, float32 bpm (ECG readings and PCG rate)
``alarm/…``                 type ``Markers``: ``tachy on``, ``tachy off``, …
``segments/…``              type ``Markers``: ``S1``, ``systole``, ``S2``, ``diastole`` at their onsets
``polyp/…``                 type ``Probability``, irregular, float32 polyp probability per frame
anything else               type ``Markers``: the body as compact JSON (at most 2000 characters)
==========================  ====================================================================

Timestamps: a message's source time (UTC ns) becomes LSL ``local_clock`` time through one
reading of both clocks at start, so LSL consumers line it up with their other streams; each
signal chunk is pushed with its last sample's time (LSL derives the others from the rate).
Needs the ``lsl`` extra (``pip install 'telediag[lsl]'``).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np

from telediag.transports.wire import SIGNAL_KINDS, Chunk

__all__ = ["LslOut", "add_arguments", "run"]


class LslOut:
    """Map chunks to LSL outlets (see the module docstring); ``add(chunk)`` pushes one."""

    def __init__(self, *, prefix: str = "telediag", wall0_ns: int | None = None, lsl0_s: float | None = None) -> None:
        from telediag.sources.lsl import import_pylsl

        self.lsl = import_pylsl()
        self.prefix = prefix
        self.wall0_ns = time.time_ns() if wall0_ns is None else wall0_ns
        self.lsl0_s = self.lsl.local_clock() if lsl0_s is None else lsl0_s
        self.outlets: dict[str, Any] = {}
        self.pushed: dict[str, int] = {}

    def lsl_time(self, t_ns: int) -> float:
        """LSL ``local_clock`` seconds of a source time."""
        return self.lsl0_s + (t_ns - self.wall0_ns) / 1e9

    def _outlet(self, c: Chunk) -> Any:
        o = self.outlets.get(c.topic)
        if o is not None:
            return o
        lsl = self.lsl
        name = f"{self.prefix} {c.topic}"
        if c.kind in SIGNAL_KINDS:
            info = lsl.StreamInfo(name, c.kind.upper(), len(c.channels), float(c.rate_hz or 0), lsl.cf_float32, c.topic)
            chans = info.desc().append_child("channels")
            for ch, unit in zip(c.channels, c.units, strict=True):
                e = chans.append_child("channel")
                e.append_child_value("label", ch)
                e.append_child_value("unit", unit)
                e.append_child_value("type", c.kind.upper())
        elif c.kind in ("hr", "polyp"):
            info = lsl.StreamInfo(name, "HeartRate" if c.kind == "hr" else "Probability", 1, lsl.IRREGULAR_RATE,
                                  lsl.cf_float32, c.topic)
            info.desc().append_child("channels").append_child("channel").append_child_value(
                "label", "HR" if c.kind == "hr" else "polyp_probability")
        else:
            info = lsl.StreamInfo(name, "Markers", 1, lsl.IRREGULAR_RATE, lsl.cf_string, c.topic)
        info.desc().append_child_value("telediag_stream", c.stream)
        o = lsl.StreamOutlet(info, 0, 360)
        self.outlets[c.topic] = o
        self.pushed[c.topic] = 0
        return o

    def _push(self, o: Any, topic: str, value: Any, t_ns: Any) -> None:
        t = self.lsl_time(t_ns) if isinstance(t_ns, int) and not isinstance(t_ns, bool) else self.lsl.local_clock()
        o.push_sample(value, t)
        self.pushed[topic] += 1

    def add(self, c: Chunk) -> None:
        if c.kind in ("stats", "video"):
            return
        o = self._outlet(c)
        if c.kind in SIGNAL_KINDS:
            x = np.asarray(c.data, dtype=np.float32)
            last_ns = c.t0_ns + int(round((x.shape[0] - 1) * 1e9 / float(c.rate_hz or 1)))
            o.push_chunk(np.ascontiguousarray(x), self.lsl_time(last_ns))
            self.pushed[c.topic] += x.shape[0]
            return
        b = c.body if isinstance(c.body, dict) else {}
        if c.kind == "beats":
            for bt in b.get("beats") or []:
                self._push(o, c.topic, [str(bt.get("label") or "beat")], bt.get("t_ns"))
        elif c.kind == "hr":
            readings = b.get("readings")
            if readings is None and "heart_rate_bpm" in b:
                readings = [{"hr_bpm": b.get("heart_rate_bpm"), "t_ns": b.get("t_ns", c.t0_ns)}]
            for r in readings or []:
                if isinstance(r.get("hr_bpm"), (int, float)):
                    self._push(o, c.topic, [float(r["hr_bpm"])], r.get("t_ns"))
        elif c.kind == "polyp":
            if isinstance(b.get("polyp_probability"), (int, float)):
                self._push(o, c.topic, [float(b["polyp_probability"])], c.t0_ns)
        elif c.kind == "alarm":
            t = b.get("end_ns") if b.get("state") == "off" else b.get("onset_ns")
            self._push(o, c.topic, [f"{b.get('type', 'alarm')} {b.get('state', '')}".strip()], t or c.t0_ns)
        elif c.kind == "segments":
            for sg in b.get("segments") or []:
                self._push(o, c.topic, [str(sg.get("state", "segment"))], sg.get("start_ns"))
        else:
            self._push(o, c.topic, [json.dumps(b, separators=(",", ":"), default=str)[:2000]], c.t0_ns)

    def close(self) -> None:
        self.outlets.clear()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("addr", nargs="?", default="tcp://127.0.0.1:5556", help="engine publish address")
    p.add_argument("topics", nargs="*", default=None, metavar="TOPIC",
                   help="topic prefixes to republish (default: ecg/ pcg/ beats/ hr/ alarm/)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: until Ctrl-C)")
    p.add_argument("--prefix", default="telediag", help="outlet name prefix (default telediag)")
    p.add_argument("--curve-secret", metavar="FILE", help="this client's .key_secret (CurveZMQ)")
    p.add_argument("--server-key", metavar="FILE", help="the engine's public .key (CurveZMQ)")


def run(args: argparse.Namespace) -> int:
    from telediag.client import Subscriber
    from telediag.sources.replay import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)
    topics = args.topics or ["ecg/", "pcg/", "beats/", "hr/", "alarm/"]
    out = LslOut(prefix=args.prefix)
    end = time.monotonic() + args.duration if args.duration else None
    with Subscriber(args.addr, topics=topics, curve_secret=args.curve_secret, server_key=args.server_key) as sub:
        print(f"telediag lsl-out: {args.addr} {topics} -> LSL outlets '{args.prefix} <topic>'", flush=True)
        while not stop.is_set() and (end is None or time.monotonic() < end):
            c = sub.recv(timeout_s=0.2)
            if c is not None:
                if c.topic not in out.outlets:
                    print(f"telediag lsl-out: outlet '{args.prefix} {c.topic}'", flush=True)
                out.add(c)
    print(f"telediag lsl-out: pushed {out.pushed}", flush=True)
    out.close()
    return 0
