"""Rhythm monitor: atrial fibrillation episodes of a stream (:mod:`telediag.dsp.af`).

Fed with the usable beats (and their labels, when classified), it publishes ``afib``
alarm transitions (onset dated back to the window's start, see
:class:`telediag.dsp.af.AFParams`) and relabels an ``S`` beat as ``N`` while AF is on: in AF
every beat is conducted from a fibrillating atrium, so "premature supraventricular" has no
meaning (AAMI EC57 counts AF beats as N). Intervals that span unusable signal or a gap are
not measured. Given the stage's signal history, it also measures each beat's P-wave
correlation (:mod:`telediag.dsp.atrial`) on the detection lead: AF needs the P waves to be
absent as well as the RR intervals to be irregular. When the stage moves detection to another
lead (:meth:`RhythmMonitor.set_lead`), each beat is measured on the lead it was detected on,
against that lead's own P-wave template (a template is never shared between leads).
"""

from __future__ import annotations

import bisect
from collections import deque

import numpy as np

from telediag.dsp.af import AFDetector, AFParams
from telediag.dsp.alarms import AlarmEvent
from telediag.dsp.atrial import PWaveTracker
from telediag.engine.stages.ecg_parts.clock import SignalHistory

__all__ = ["RhythmMonitor"]


class RhythmMonitor:
    """AF episodes and the rhythm-aware beat labels of one stream.

    Examples
    --------
    >>> import numpy as np
    >>> m = RhythmMonitor(360.0)
    >>> rng = np.random.default_rng(0)
    >>> beats = np.cumsum(np.r_[0, np.full(40, 0.8), rng.uniform(0.4, 1.0, 80)] * 360).astype(int)
    >>> labels, ev = m.beats(beats.tolist(), ["N"] * (beats.size - 1) + ["S"])
    >>> [(e.type, e.state) for e in ev], labels[-1]   # the S label inside AF is published as N
    ([('afib', 'on')], 'N')
    """

    def __init__(self, fs: float, params: AFParams | None = None, *, enabled: bool = True,
                 history: SignalHistory | None = None, lead: int = 0) -> None:
        self.enabled = enabled
        self.det = AFDetector(fs, params)
        self.history = history
        self.lead = lead
        self.pwave = PWaveTracker(fs) if history is not None else None
        self.trackers: dict[int, PWaveTracker] = {}  # other leads' trackers (after set_lead)
        self.lead_from: list[int] = []  # sample where each lead change took effect ...
        self.lead_to: list[int] = []  # ... and the lead from there on
        self.spans: deque[tuple[int, int]] = deque()
        self.onset: int | None = None
        self.last: int | None = None

    def attach(self, history: SignalHistory, lead: int) -> None:
        """Measure the P-wave correlation of the beats on ``lead`` of ``history`` (the stage's)."""
        self.history = history
        self.lead = lead
        self.pwave = PWaveTracker(self.det.fs)
        self.trackers = {lead: self.pwave}

    def set_lead(self, lead: int, sample: int) -> None:
        """Beats from ``sample`` on are detected on ``lead`` (their P waves are measured there)."""
        if self.pwave is None:
            return
        if not self.lead_from:
            self.trackers.setdefault(self.lead, self.pwave)
        self.lead_from.append(int(sample))
        self.lead_to.append(int(lead))
        if len(self.lead_from) > 1024:  # keep the recent changes (beats arrive in order)
            del self.lead_from[:512], self.lead_to[:512]

    def signal(self, start: int, stop: int, usable: bool) -> None:
        """Report a quality block ``[start, stop)``."""
        if usable or stop <= start:
            return
        if self.spans and start <= self.spans[-1][1]:
            self.spans[-1] = (self.spans[-1][0], max(self.spans[-1][1], stop))
        else:
            self.spans.append((start, stop))

    def gap(self, sample: int) -> None:
        """Samples were lost just before ``sample``."""
        self.signal(sample, sample + 1, False)

    @property
    def in_af(self) -> bool:
        """AF is on now."""
        return self.det.on

    def beats(self, samples: list[int], labels: list[str | None]) -> tuple[list[str | None], list[AlarmEvent]]:
        """Feed usable beats (in order); their rhythm-aware labels and the AF alarm transitions."""
        if not self.enabled or not samples:
            return labels, []
        if not self.spans:  # no unusable span pending: no interval is broken
            broken = [False] * len(samples)
            self.last = samples[-1]
        else:
            broken = []
            for s in samples:
                a = self.last
                while len(self.spans) > 0 and a is not None and self.spans[0][1] <= a:
                    self.spans.popleft()
                broken.append(a is not None and any(lo <= s and hi > a for lo, hi in self.spans))
                self.last = s
        trans, state = self.det.beats(samples, labels, broken, self._pcorr(samples, labels))
        events = []
        for t in trans:
            if t.state == "on":
                self.onset = t.beat
                events.append(AlarmEvent("afib", "on", t.beat, None, t.detail))
            else:
                events.append(AlarmEvent("afib", "off", self.onset if self.onset is not None else t.beat,
                                         t.beat, t.detail))
                self.onset = None
        out = [("N" if (on and lab == "S") else lab) for lab, on in zip(labels, state.tolist(), strict=True)]
        return out, events

    def _pcorr(self, samples: list[int], labels: list[str | None]) -> np.ndarray | None:
        """P-wave correlation of the beats (NaN where the history no longer holds the window)."""
        h, tr = self.history, self.pwave
        if h is None or tr is None:
            return None
        if not self.lead_from:
            return tr.from_ring(h.buf, h.end, self.lead, np.array(samples, np.int64), labels)
        # beats around a lead change: each run of beats on its own lead, with that lead's template
        out = np.empty(len(samples))
        i = 0
        while i < len(samples):
            k = bisect.bisect_right(self.lead_from, samples[i]) - 1
            lead = self.lead if k < 0 else self.lead_to[k]
            stop = self.lead_from[k + 1] if k + 1 < len(self.lead_from) else None
            j = i + 1
            while j < len(samples) and (stop is None or samples[j] < stop):
                j += 1
            tracker = self.trackers.get(lead)
            if tracker is None:
                tracker = self.trackers[lead] = PWaveTracker(self.det.fs)
            out[i:j] = tracker.from_ring(h.buf, h.end, lead, np.array(samples[i:j], np.int64), labels[i:j])
            i = j
        return out
