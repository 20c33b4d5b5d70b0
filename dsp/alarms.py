"""Rhythm alarms from beats, labels and heart rate: streaming, explicit state, sample time.

Alarm types and their rules (all thresholds are parameters of :class:`AlarmParams`):

``asystole``
    No beat for ``asystole_s`` (default 4 s) of **usable** signal. Onset is the last beat (or
    ``origin``, the start of the stream, before the first beat), or the end of the latest
    unusable span after it; it ends at the next beat. (ANSI/AAMI EC13
    requires the asystole alarm within 10 s of onset.) Unusable signal raises no asystole:
    the interval is counted from where the signal became usable again.
``brady`` / ``tachy``
    Extreme bradycardia / tachycardia: the displayed heart rate below ``brady_bpm`` (40) or
    above ``tachy_bpm`` (150) for ``sustain_s`` (5 s); ends when it has been back inside the
    limits (with ``hysteresis_bpm``) for ``sustain_s``.
``vrun``
    Ventricular run: ``vrun_beats`` (3) or more consecutive ``V`` beats; onset at the first
    V, end at the last V of the run (ventricular tachycardia when the run's rate exceeds
    100 bpm is noted in ``detail``). After an ``asystole`` alarm the first
    ``vrun_settle_beats`` (16) beats, from the one that ends it, neither start nor continue
    a run: the classifier's running template (median of the last 32 beats) is then made of
    beats the detector found in the isoelectric noise, and the normal beats after a 30 s
    (60 s) asystole on MIT-BIH 119 came out ``V`` for 8 (14) beats, a false high-priority
    alarm. Those beats do not count for ``ectopy`` either. (The labeller now restarts the
    classifier's per-patient state at the first usable beat after such a stretch, so those
    labels are right again; this rule stays as a second guard.) Only an asystole does this: unusable signal (noise, ventricular flutter) does not,
    since a real run may follow or lie inside it (MIT-BIH 207).
    Noise guard: a ``V`` beat less than ``vrun_guard_s`` (0.5 s) after the end of signal judged
    unusable (a quality block reported through :meth:`RhythmAlarms.signal`, or a gap), or with
    unusable signal between it and the run's last ``V``, neither starts nor continues a run (the
    run ends there; the beat still counts for ``ectopy``). Muscle noise next to an unusable block
    is detected as beats and labelled ``V``: nstdb 118e00 / 118e_6 (record 118 has no V beat)
    raised 35 / 24 runs, now 19 / 5; the 26 MIT-BIH records with nstdb ``ma`` at 6 dB: 532 -> 344
    runs matching no reference run. Clean MIT-BIH: the same 31 of 43 reference runs of >= 3 V and
    28 of 40 VT episodes found, same delays; 3 alarms start 0.5-2.6 s later (207 at 1650 s and 217
    at 1097 s are false runs, 223 at 609 s a second alarm inside a VT episode alarmed at 578 s).
    0.5 s is about the classifier's evidence around a beat (its QRS and the RR before it); 2 s
    removes more (11 / 1, 269) but missed 6 more of the 17 true runs found at 6 dB
    (``benchmarks/vrun_noise.py``; chosen on these records, no held-out set).
``pause``
    An RR interval longer than ``pause_s`` (2.5 s) between two beats, over usable signal only
    (an interval that spans an unusable span or a gap is not measured); a momentary event with
    onset at the first beat and end at the second (reported when the second beat arrives).
``ectopy``
    Frequent ectopy: more than ``ectopy_per_min`` (6) ectopic (``S`` or ``V``) beats in the
    last 60 s; ends when the count falls to ``ectopy_per_min`` or fewer.

``brady``/``tachy`` are judged only on ticks whose signal is usable.

Technical alarms supersede physiological ones (IEC 60601-2-27 separates the two): the
caller reports every quality block (:meth:`RhythmAlarms.signal`) and every gap in the
sample stream (:meth:`RhythmAlarms.gap`); unusable signal never raises asystole, bradycardia
or pause. :class:`TechnicalAlarms` turns the blocks into the technical alarms ``leads_off``
(NaN or exactly constant signal, or at the ADC rails) and ``signal_unusable`` (any other
unusable block: noise, flat line under 10 uV, saturation).

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
    vrun_settle_beats: int = 16
    vrun_guard_s: float = 0.5

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
        if self.vrun_settle_beats < 0:
            raise DSPError(f"vrun_settle_beats must be >= 0, got {self.vrun_settle_beats}")
        if not 0.0 <= self.vrun_guard_s <= 30.0:
            raise DSPError(f"vrun_guard_s must be in [0, 30] s, got {self.vrun_guard_s}")


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
    settle_from: int | None = None  # the beat that ended the last asystole (runs settle from it)
    settle: int = 0  # labelled beats still to come before a V may count toward a run
    ectopics: deque[int] = field(default_factory=deque)
    rate_out_since: dict[str, int] = field(default_factory=dict)
    rate_in_since: dict[str, int] = field(default_factory=dict)
    last_tick: int = -1
    unusable: deque[tuple[int, int]] = field(default_factory=deque)  # recent unusable spans [a, b)
    # the same spans for the run guard (labelled beats lag the timing beats: pruned on their own)
    run_unusable: deque[tuple[int, int]] = field(default_factory=deque)


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

    def __init__(self, fs: float, params: AlarmParams | None = None, origin: int | None = None) -> None:
        if not fs > 0:
            raise DSPError(f"fs must be positive, got {fs}")
        self.fs = float(fs)
        self.p = params or AlarmParams()
        self.state = AlarmState()
        self.origin = origin  # asystole before the first beat is counted from here (None: not at all)

    def _on(self, kind: str, onset: int, detail: dict[str, Any], out: list[AlarmEvent]) -> None:
        if kind not in self.state.active:
            self.state.active[kind] = onset
            out.append(AlarmEvent(kind, "on", onset, None, detail))

    def _off(self, kind: str, end: int, detail: dict[str, Any], out: list[AlarmEvent]) -> None:
        onset = self.state.active.pop(kind, None)
        if onset is not None:
            out.append(AlarmEvent(kind, "off", onset, end, detail))

    def signal(self, start: int, stop: int, usable: bool) -> None:
        """Report that samples ``[start, stop)`` were judged usable or not (a quality block)."""
        if usable or stop <= start:
            return
        for spans in (self.state.unusable, self.state.run_unusable):
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], int(stop)))
            else:
                spans.append((int(start), int(stop)))

    def _guarded(self, s: int) -> bool:
        """Whether an unusable span lies within ``vrun_guard_s`` before beat ``s`` or between the
        current run's last beat and ``s`` (then ``s`` neither starts nor continues a run)."""
        st = self.state
        lo = s - int(round(self.p.vrun_guard_s * self.fs))
        if st.v_run:
            lo = min(lo, st.v_run[-1])
        spans = st.run_unusable
        while spans and spans[0][1] <= lo:  # labelled beats come in time order
            spans.popleft()
        return self.p.vrun_guard_s > 0 and any(a <= s and b > lo for a, b in spans)

    def gap(self, sample: int) -> None:
        """Report samples lost just before ``sample`` (no interval across it is measured)."""
        self.signal(sample, sample + 1, False)

    def _usable_from(self, a: int, b: int) -> int:
        """Start of the usable signal that ends at ``b`` and began after ``a``: the end of the
        latest unusable span overlapping ``(a, b]``, else ``a``."""
        spans = self.state.unusable
        while len(spans) > 1 and spans[1][1] <= a:  # spans wholly before ``a`` are not needed
            spans.popleft()
        start = a
        for lo, hi in spans:
            if lo > b:
                break
            if hi > a and lo <= b:
                start = max(start, hi)
        return start

    def beats(self, samples: Any, labels: Any = None, *, timing: bool = True, label_alarms: bool = True
              ) -> list[AlarmEvent]:
        """Feed beats in time order (labels: beat codes or None); return alarm transitions.

        ``timing`` false skips the interval alarms (asystole, pause) and leaves the time of the
        last beat alone; ``label_alarms`` false skips the label alarms (vrun, ectopy). A caller
        whose labels arrive late feeds each beat twice: at once with ``label_alarms=False``
        (asystole must not wait for a classifier) and labelled with ``timing=False``.
        """
        out: list[AlarmEvent] = []
        labels = list(labels) if labels is not None else [None] * len(samples)
        for s, lab in zip((int(x) for x in samples), labels, strict=True):
            if not label_alarms:
                self._timing(s, out)
                continue
            if timing:
                self._timing(s, out)
            self._label(s, lab, out)
        return out

    def _timing(self, s: int, out: list[AlarmEvent]) -> None:
        st, p, fs = self.state, self.p, self.fs
        # a tick may not have seen this gap yet: asystole is judged on the gap itself,
        # over its usable part only
        if st.last_beat is not None:
            u0 = self._usable_from(st.last_beat, s)
            rr = (s - st.last_beat) / fs
            if (s - u0) / fs >= p.asystole_s and "asystole" not in st.active:
                self._on("asystole", u0, {"rr_s": rr} if u0 == st.last_beat else
                         {"rr_s": rr, "usable_s": round((s - u0) / fs, 3)}, out)
            if rr > p.pause_s and u0 == st.last_beat:
                out.append(AlarmEvent("pause", "off", st.last_beat, s, {"rr_s": round(rr, 3)}))
        elif self.origin is not None:  # the first beat: asystole since the stream started
            u0 = self._usable_from(self.origin, s)
            if (s - u0) / fs >= p.asystole_s and "asystole" not in st.active:
                self._on("asystole", u0, {"usable_s": round((s - u0) / fs, 3)}, out)
        if "asystole" in st.active:
            st.settle_from = s
        self._off("asystole", s, {}, out)
        st.last_beat = s

    def _label(self, s: int, lab: Any, out: list[AlarmEvent]) -> None:
        st, p, fs = self.state, self.p, self.fs
        # ventricular runs: none across an asystole, nor in the beats that follow it
        if st.settle_from is not None and s >= st.settle_from:
            st.settle, st.settle_from = p.vrun_settle_beats, None
        run_lab = lab
        if st.settle > 0:
            st.settle -= 1
            run_lab = None
        # a V beat in (or just after) signal judged unusable is not trusted for a run: the
        # noise around it has already been mistaken for beats; an unusable span inside a run
        # ends it (the beats in between were never seen)
        run_v = run_lab == "V" and not self._guarded(s)
        if run_v:
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
        # frequent ectopy over the last minute (not the labels of the beats just after an asystole)
        if run_lab in ECTOPIC:
            st.ectopics.append(s)
        self._ectopy(s, out)

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

    def tick(self, sample: int, hr_bpm: float | None, signal_ok: bool = True,
             asystole_ok: bool | None = None) -> list[AlarmEvent]:
        """Advance time to ``sample`` with the displayed heart rate; return transitions.

        ``asystole_ok`` (default ``signal_ok``): whether the signal now allows judging asystole
        (a connected, isoelectric lead does, although it is no use for a rate)."""
        st, p, fs = self.state, self.p, self.fs
        out: list[AlarmEvent] = []
        sample = int(sample)
        if sample <= st.last_tick:
            return out
        st.last_tick = sample
        ref = st.last_beat if st.last_beat is not None else self.origin
        if ref is not None and (signal_ok if asystole_ok is None else asystole_ok):
            u0 = self._usable_from(ref, sample)
            if (sample - u0) / fs >= p.asystole_s:
                self._on("asystole", u0, {}, out)
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


TECHNICAL = ("leads_off", "signal_unusable")
"""Technical alarm types (:class:`TechnicalAlarms`)."""

_LEADS_OFF_BIT = 1  # bit 0 of SQIUpdate.flags: raw leads_off flag of the block


@dataclass(slots=True)
class TechnicalState:
    active: str | None = None
    onset: int = 0
    bad_run: list[tuple[int, bool]] = field(default_factory=list)  # (block start, leads-off) of the run
    good_since: int | None = None
    good_blocks: int = 0
    cause: set[str] = field(default_factory=set)


class TechnicalAlarms:
    """Technical ECG alarms from the quality verdicts of the detection lead.

    ``leads_off`` when a run of unusable blocks contains a leads-off block (NaN, exactly
    constant or railed signal), else ``signal_unusable`` (noise, flat line, saturation). An
    alarm goes on once ``on_blocks`` consecutive blocks are unusable (onset: the first of
    them) and off once ``off_blocks`` consecutive blocks are usable (end: the first of them);
    a ``signal_unusable`` alarm becomes ``leads_off`` (off, then on at that block) when a
    leads-off block follows. ``detail`` lists the causes seen (quality flags).

    Examples
    --------
    >>> t = TechnicalAlarms(360)
    >>> ev = t.blocks([0, 360, 720, 1080, 1440], [False, False, True, True, True], [1, 1, 0, 0, 0])
    >>> [(e.type, e.state, e.onset, e.end) for e in ev]
    [('leads_off', 'on', 0, None), ('leads_off', 'off', 0, 720)]
    """

    def __init__(self, hop: int, on_blocks: int = 2, off_blocks: int = 2) -> None:
        if hop < 1 or on_blocks < 1 or off_blocks < 1:
            raise DSPError(f"need hop, on_blocks, off_blocks >= 1, got {hop}, {on_blocks}, {off_blocks}")
        self.hop, self.on_blocks, self.off_blocks = int(hop), int(on_blocks), int(off_blocks)
        self.state = TechnicalState()

    def blocks(self, starts: Any, usable: Any, flags: Any) -> list[AlarmEvent]:
        """Feed quality blocks in order (start sample, usable, flag bits); return transitions."""
        from telediag.dsp.quality import EVENT_KINDS

        st = self.state
        out: list[AlarmEvent] = []
        for b0, ok, fl in zip((int(v) for v in starts), usable, (int(f) for f in flags), strict=True):
            if ok:
                st.bad_run = []
                if st.active is not None:
                    if st.good_since is None:
                        st.good_since, st.good_blocks = b0, 0
                    st.good_blocks += 1
                    if st.good_blocks >= self.off_blocks:
                        out.append(AlarmEvent(st.active, "off", st.onset, st.good_since, {"causes": sorted(st.cause)}))
                        st.active, st.good_since, st.cause = None, None, set()
                continue
            st.good_since = None
            off = bool(fl & _LEADS_OFF_BIT)
            causes = {k for i, k in enumerate(EVENT_KINDS) if fl & (1 << i) or fl & (1 << (4 + i))} or {"low_sqi"}
            if st.active is None:
                st.bad_run.append((b0, off))
                st.cause |= causes
                if len(st.bad_run) >= self.on_blocks:
                    kind = "leads_off" if any(o for _, o in st.bad_run) else "signal_unusable"
                    st.active, st.onset = kind, st.bad_run[0][0]
                    out.append(AlarmEvent(kind, "on", st.onset, None, {"causes": sorted(st.cause)}))
                    st.bad_run = []
            else:
                if off and st.active == "signal_unusable":
                    out.append(AlarmEvent("signal_unusable", "off", st.onset, b0, {"causes": sorted(st.cause)}))
                    st.active, st.onset, st.cause = "leads_off", b0, set()
                    out.append(AlarmEvent("leads_off", "on", b0, None, {"causes": sorted(causes)}))
                st.cause |= causes
        return out

    @property
    def active(self) -> str | None:
        """The technical alarm on now, if any."""
        return self.state.active
