"""Rhythm alarms from beats, labels and heart rate: streaming, explicit state, sample time.

Alarm types and their rules (all thresholds are parameters of :class:`AlarmParams`):

``asystole``
    No beat for ``asystole_s`` (default 4 s) while the signal is judged usable. Onset is the
    last beat; it ends at the next beat. (ANSI/AAMI EC13 requires the asystole alarm within
    10 s of onset.) An unusable signal raises no asystole (a technical ``leads_off``/noise
    event is reported by the quality stage instead).
``brady`` / ``tachy``
    Extreme bradycardia / tachycardia: the displayed heart rate below ``brady_bpm`` (40) or
    above ``tachy_bpm`` (150) for ``sustain_s`` (5 s); ends when it has been back inside the
    limits (with ``hysteresis_bpm``) for ``sustain_s``.
``vrun``
    Ventricular run: ``vrun_beats`` (3) or more consecutive ``V`` beats; onset at the first
    V, end at the last V of the run (ventricular tachycardia when the run's rate exceeds
    100 bpm is noted in ``detail``).
``pause``
    An RR interval longer than ``pause_s`` (2.5 s) between two beats; a momentary event with
    onset at the first beat and end at the second (reported when the second beat arrives).
``ectopy``
    Frequent ectopy: more than ``ectopy_per_min`` (6) ectopic (``S`` or ``V``) beats in the
    last 60 s; ends when the count falls to ``ectopy_per_min`` or fewer.

Each alarm is reported as an :class:`AlarmEvent` with ``state`` ``"on"`` (and its onset)
and later ``"off"`` (with onset and end); ``pause`` is reported once, already ended.
Feeding beats and ticks in any grouping gives the same events (tested).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from telediag.errors import DSPError

ECTOPIC = frozenset({"S", "V"})


@dataclass(frozen=True, slots=True)
class AlarmParams:
    """Alarm thresholds (seconds, bpm, beats)."""

    asystole_s: float = 4.0
    brady_bpm: float = 40.0
    tachy_bpm: float = 150.0
    hysteresis_bpm: float = 5.0
    sustain_s: float = 5.0
    vrun_beats: int = 3
    pause_s: float = 2.5
    ectopy_per_min: float = 6.0

    def __post_init__(self) -> None:
        if not 1.0 <= self.asystole_s <= 30.0:
            raise DSPError(f"asystole_s must be in [1, 30] s, got {self.asystole_s}")
        if not 0 < self.brady_bpm < self.tachy_bpm:
            raise DSPError(f"need 0 < brady_bpm < tachy_bpm, got {self.brady_bpm}, {self.tachy_bpm}")
        if self.vrun_beats < 2:
            raise DSPError(f"vrun_beats must be >= 2, got {self.vrun_beats}")
        if not 0.5 <= self.pause_s <= 30:
            raise DSPError(f"pause_s must be in [0.5, 30] s, got {self.pause_s}")
        if self.sustain_s < 0 or self.ectopy_per_min < 0 or self.hysteresis_bpm < 0:
            raise DSPError("sustain_s, ectopy_per_min and hysteresis_bpm must be >= 0")


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One alarm transition.

    ``onset``/``end`` are sample indices (``end`` is None while the alarm is on).
    """

    type: str
    state: str
    onset: int
    end: int | None
    detail: dict[str, Any]


@dataclass(slots=True)
class AlarmState:
    last_beat: int | None = None
    active: dict[str, int] = field(default_factory=dict)  # type -> onset sample
    v_run: list[int] = field(default_factory=list)
    ectopics: deque[int] = field(default_factory=deque)
    rate_out_since: dict[str, int] = field(default_factory=dict)
    rate_in_since: dict[str, int] = field(default_factory=dict)
    last_tick: int = -1


class RhythmAlarms:
    """Streaming rhythm alarms (see the module docstring).

    Parameters
    ----------
    fs : float
        Sample rate of the beat sample indices.
    params : AlarmParams, optional

    Examples
    --------
    >>> a = RhythmAlarms(360.0)
    >>> ev = a.beats([0, 300, 600, 900], ["N", "V", "V", "V"])
    >>> [(e.type, e.state) for e in ev]
    [('vrun', 'on')]
    """

    def __init__(self, fs: float, params: AlarmParams | None = None) -> None:
        if not fs > 0:
            raise DSPError(f"fs must be positive, got {fs}")
        self.fs = float(fs)
        self.p = params or AlarmParams()
        self.state = AlarmState()

    def _on(self, kind: str, onset: int, detail: dict[str, Any], out: list[AlarmEvent]) -> None:
        if kind not in self.state.active:
            self.state.active[kind] = onset
            out.append(AlarmEvent(kind, "on", onset, None, detail))

    def _off(self, kind: str, end: int, detail: dict[str, Any], out: list[AlarmEvent]) -> None:
        onset = self.state.active.pop(kind, None)
        if onset is not None:
            out.append(AlarmEvent(kind, "off", onset, end, detail))

    def beats(self, samples: Any, labels: Any = None) -> list[AlarmEvent]:
        """Feed beats in time order (labels: beat codes or None); return alarm transitions."""
        st, p, fs = self.state, self.p, self.fs
        out: list[AlarmEvent] = []
        labels = list(labels) if labels is not None else [None] * len(samples)
        for s, lab in zip((int(x) for x in samples), labels, strict=True):
            # a tick may not have seen this gap yet: asystole is judged on the gap itself
            if st.last_beat is not None:
                rr = (s - st.last_beat) / fs
                if rr >= p.asystole_s and "asystole" not in st.active:
                    self._on("asystole", st.last_beat, {"rr_s": rr}, out)
                if rr > p.pause_s:
                    out.append(AlarmEvent("pause", "off", st.last_beat, s, {"rr_s": round(rr, 3)}))
            self._off("asystole", s, {}, out)
            # ventricular runs
            if lab == "V":
                st.v_run.append(s)
                if len(st.v_run) == p.vrun_beats:
                    self._on("vrun", st.v_run[0], {"beats": len(st.v_run)}, out)
            else:
                if "vrun" in st.active:
                    run = st.v_run
                    rate = 60.0 * (len(run) - 1) * fs / (run[-1] - run[0]) if len(run) > 1 else 0.0
                    self._off("vrun", run[-1], {"beats": len(run), "rate_bpm": round(rate, 1),
                                                "vtach": rate > 100.0}, out)
                st.v_run = []
            # frequent ectopy over the last minute
            if lab in ECTOPIC:
                st.ectopics.append(s)
            self._ectopy(s, out)
            st.last_beat = s
        return out

    def _ectopy(self, now: int, out: list[AlarmEvent]) -> None:
        st, p = self.state, self.p
        window = int(60 * self.fs)
        while st.ectopics and st.ectopics[0] <= now - window:
            st.ectopics.popleft()
        n = len(st.ectopics)
        if n > p.ectopy_per_min:
            self._on("ectopy", st.ectopics[0], {"per_min": n}, out)
        elif n <= p.ectopy_per_min and "ectopy" in st.active:
            self._off("ectopy", now, {"per_min": n}, out)

    def tick(self, sample: int, hr_bpm: float | None, signal_ok: bool = True) -> list[AlarmEvent]:
        """Advance time to ``sample`` with the displayed heart rate; return transitions."""
        st, p, fs = self.state, self.p, self.fs
        out: list[AlarmEvent] = []
        sample = int(sample)
        if sample <= st.last_tick:
            return out
        st.last_tick = sample
        if st.last_beat is not None and signal_ok and (sample - st.last_beat) / fs >= p.asystole_s:
            self._on("asystole", st.last_beat, {}, out)
        self._ectopy(sample, out)
        sustain = int(p.sustain_s * fs)
        for kind, outside, inside in (
            ("brady", lambda h: h < p.brady_bpm, lambda h: h >= p.brady_bpm + p.hysteresis_bpm),
            ("tachy", lambda h: h > p.tachy_bpm, lambda h: h <= p.tachy_bpm - p.hysteresis_bpm),
        ):
            valid = hr_bpm is not None and hr_bpm > 0 and signal_ok
            if valid and hr_bpm is not None and outside(hr_bpm):
                st.rate_in_since.pop(kind, None)
                since = st.rate_out_since.setdefault(kind, sample)
                if sample - since >= sustain:
                    self._on(kind, since, {"hr_bpm": round(float(hr_bpm), 1)}, out)
            else:
                st.rate_out_since.pop(kind, None)
                if kind in st.active and (not valid or hr_bpm is None or inside(hr_bpm)):
                    since = st.rate_in_since.setdefault(kind, sample)
                    if sample - since >= sustain:
                        st.rate_in_since.pop(kind, None)
                        self._off(kind, since, {"hr_bpm": None if hr_bpm is None else round(float(hr_bpm), 1)}, out)
        return out

    @property
    def active(self) -> dict[str, int]:
        """Alarms on now, with their onset samples."""
        return dict(self.state.active)
