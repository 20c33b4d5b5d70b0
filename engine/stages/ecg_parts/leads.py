"""Analysis-lead fallback: which lead the ECG is analysed on, block by block, and where it changed.

The analysis lead moves when it has been unusable for the technical alarm's delay (``n_tech`` quality
blocks) to the preferred lead if that is usable over that time, else to the usable lead with the best
mean SQI over it, else - when the analysis lead is off (leads-off, flat line or saturation, not mere
noise) - to a lead that is a connected isoelectric line over it and was usable in at least half of the
last ``LEAD_TRUST_BLOCKS`` blocks (so that asystole is still recognised); a lead is taken only if a QRS
detector on it finds the beats the analysis lead found before (:meth:`LeadFallback.concordant`). It
returns to the preferred lead once that has been usable for ``LEAD_RETURN_S``.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.qrs import QRSDetector
from telediag.dsp.quality import SQIUpdate
from telediag.engine.stages.ecg_parts.asystole import NOISE_BITS, iso_range
from telediag.engine.stages.ecg_parts.clock import SignalHistory
from telediag.engine.stages.ecg_parts.gate import Decided

__all__ = ["LEAD_MATCH", "LEAD_RETURN_S", "LEAD_TRUST_BLOCKS", "LEAD_WARM_S", "LeadFallback", "Switch",
           "lead_samples"]

LEAD_RETURN_S = 10.0
"""Analysis-lead fallback: the preferred lead must have been usable this long (s, in whole quality
blocks) before analysis returns to it (hysteresis against flapping on an intermittent electrode)."""
LEAD_WARM_S = 1.0
"""A detector started on a new analysis lead first runs over that lead's last ``learn_s`` + this
many seconds (from the signal history), so its learning period is over when it takes over."""
LEAD_MATCH = 0.8
"""A lead is a fallback only if a detector on it finds at least this fraction of the beats the analysis
lead found before it became unusable (over the signal history; :meth:`LeadFallback.concordant`)."""
LEAD_TRUST_BLOCKS = 60
"""A connected isoelectric lead is a fallback (for asystole) only when it was usable in at least
half of the last this many quality blocks: a lead that never showed a usable ECG (MIT-BIH 101's
0.07 mV V1) is no witness of asystole."""

Switch = tuple[int, int, int, str]
"""An analysis-lead change: ``(sample where it takes effect, from lead, to lead, reason)``."""


def lead_samples(history: SignalHistory, lead: int, a: int, b: int, x: NDArray[np.float64], start: int
                 ) -> NDArray[np.float64] | None:
    """Samples ``[a, b)`` of ``lead``: from ``history`` (before ``start``) and the chunk ``x`` (from
    ``start``), before the chunk is pushed to the history; ``None`` if not all held."""
    parts = []
    if a < start:
        w = history.window(a, min(b, start))
        if w is None:
            return None
        parts.append(w[:, lead])
    if b > start:
        parts.append(x[max(a, start) - start:b - start, lead])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class LeadFallback:
    """The analysis lead over time, and the decision to change it (one stream).

    ``history`` is the stage's raw signal history (read before each chunk is pushed to it);
    ``iso_lims`` per lead the isoelectric limit in its units (``None``: unknown units);
    ``qrs`` the QRS detector parameters (a detector runs on a candidate lead); ``enabled`` false
    (``lead_fallback = false`` or a single lead) keeps ``preferred`` for ever.

    API: :meth:`follow` once per chunk with its quality rows (returns the switches decided,
    calling ``on_switch`` at each); :attr:`active` the lead analysed now; :meth:`lead_at` /
    :meth:`seg_start` the lead in force at a received sample and where it took over;
    :attr:`sw_at` (empty while no switch ever happened) and :attr:`sw_lead` the switch record.

    Examples
    --------
    >>> import numpy as np
    >>> lf = LeadFallback(360.0, 0, SignalHistory(np.zeros((3600, 2))), hop=360, n_tech=2, n_return=3,
    ...                   iso_lims=[0.2, 0.2], qrs={}, enabled=True)
    >>> lf.lead_at(1000), lf.seg_start(1000)
    (0, 0)
    """

    __slots__ = ("_checked", "_enabled", "_fs", "_history", "_hop", "_iso_lims", "_n_return", "_n_tech",
                 "_pref_ok", "_qrs", "_recent", "active", "bad", "preferred", "sw_at", "sw_lead")

    def __init__(self, fs: float, preferred: int, history: SignalHistory, *, hop: int, n_tech: int, n_return: int,
                 iso_lims: Sequence[float | None], qrs: Mapping[str, Any], enabled: bool) -> None:
        self._fs = fs
        self.preferred = preferred
        self._history = history
        self._hop = hop
        self._n_tech = n_tech
        self._n_return = n_return
        self._iso_lims = list(iso_lims)
        self._qrs = dict(qrs)
        self._enabled = enabled
        self.active = preferred  # the analysis (detection) lead now
        self.bad = 0  # consecutive unusable blocks of the analysis lead
        self._pref_ok = 0  # consecutive usable blocks of the preferred lead (while on another)
        self._recent: deque[tuple[Any, Any, Any, Any]] = deque(maxlen=LEAD_TRUST_BLOCKS)
        self.sw_at: list[int] = []  # sample where each analysis-lead change took effect ...
        self.sw_lead: list[int] = []  # ... and the lead from there on
        self._checked: dict[tuple[int, int], bool] = {}  # (lead, start of the unusable run) -> concordant

    def lead_at(self, sample: int) -> int:
        """The analysis lead in force at received sample ``sample``."""
        at = self.sw_at
        if not at or sample < at[0]:
            return self.preferred
        return self.sw_lead[bisect.bisect_right(at, sample) - 1]

    def seg_start(self, sample: int) -> int:
        """Received sample where the analysis lead in force at ``sample`` took over (0: the start)."""
        at = self.sw_at
        if not at or sample < at[0]:
            return 0
        return at[bisect.bisect_right(at, sample) - 1]

    def follow(self, rows: SQIUpdate, x: NDArray[np.float64], start: int, all_ok: bool, found: Iterable[Decided],
               on_switch: Callable[[int, int, dict[int, bool]], None]) -> list[Switch] | None:
        """Follow the analysis lead over a chunk's quality blocks (``rows``; ``x`` the chunk from received
        sample ``start``, not yet in the history; ``all_ok``: every block usable on every lead; ``found``
        the detector's latest beats). Returns the switches decided (they take effect at the end of the
        block that decided them), ``None`` when nothing was to decide; ``on_switch(t, lead, verdicts)``
        is called at each, ``verdicts`` the new lead's usable verdict of the chunk's later blocks
        (by block index)."""
        if not self._enabled or not rows.block_start.size:
            return None
        self._recent.append((rows.block_start, rows.usable, rows.sqi, rows.flags))
        if not (self.bad or not all_ok or self.active != self.preferred):
            return None  # the preferred lead usable throughout: nothing to decide
        u = rows.usable
        al, pref = self.active, self.preferred
        hop = self._hop
        starts = rows.block_start.tolist()
        ok_l = u.tolist()
        out: list[Switch] = []
        for i, b0 in enumerate(starts):
            self.bad = 0 if ok_l[i][al] else self.bad + 1
            if al != pref:
                self._pref_ok = self._pref_ok + 1 if ok_l[i][pref] else 0
            new, why = -1, ""
            if self.bad >= self._n_tech:
                new, why = self._candidate(al, len(starts) - 1 - i, x, start, found)
            elif al != pref and self._pref_ok >= self._n_return:
                new, why = pref, "preferred_usable"
            if new < 0 or new == al:
                continue
            t = b0 + hop
            out.append((t, al, new, why))
            self._record(t, new)
            on_switch(t, new, {b // hop: bool(ok_l[j][new]) for j, b in enumerate(starts) if j > i})
            al = new
        return out

    def _record(self, t: int, lead: int) -> None:
        self.sw_at.append(t)
        self.sw_lead.append(lead)
        if len(self.sw_at) > 4096:  # the recent switches are enough (alarm onsets, pending beats)
            del self.sw_at[:2048], self.sw_lead[:2048]
        self.active = lead
        self.bad = 0
        self._pref_ok = 0

    def _candidate(self, al: int, later: int, x: NDArray[np.float64], start: int, found: Iterable[Decided]
                   ) -> tuple[int, str]:
        """The lead to analyse instead of ``al`` (unusable for the last ``n_tech`` blocks of the recent
        rows, minus the ``later`` blocks of this chunk not reached yet), or ``(-1, "")``."""
        n_tech = self._n_tech
        hop = self._hop
        rec = list(self._recent)
        starts = np.concatenate([r[0] for r in rec])
        usable = np.concatenate([r[1] for r in rec])
        sqi = np.concatenate([r[2] for r in rec])
        flags = np.concatenate([r[3] for r in rec])
        if later:
            starts, usable, sqi, flags = starts[:-later], usable[:-later], sqi[:-later], flags[:-later]
        if starts.size < n_tech:
            return -1, ""
        last = slice(starts.size - n_tech, starts.size)
        pref = self.preferred
        ok: NDArray[np.bool_] = np.asarray(usable[last].all(axis=0))
        ok[al] = False
        if ok.any():
            if ok[pref]:
                return pref, "unusable"
            m = np.where(ok, np.nan_to_num(sqi[last], nan=0.0).mean(axis=0), -1.0)
            k = int(np.argmax(m))
            return (k, "unusable") if self.concordant(k, int(starts[-1]) + hop, x, start, found) else (-1, "")
        # no usable lead: a connected isoelectric one (asystole), only when the analysis lead is off
        # (leads-off, flat line or saturation: not just noisy or isoelectric itself - a lead whose narrow QRS
        # fall outside the 5-95 % range would pass for isoelectric without a detector run on it)
        if not int(flags[-1, al]) & ~NOISE_BITS:
            return -1, ""
        trust = usable[-LEAD_TRUST_BLOCKS:].mean(axis=0)
        best, best_trust = -1, 0.5
        for k in range(usable.shape[1]):
            if k == al or trust[k] < best_trust:
                continue
            if all(self.iso_at(k, int(b), int(f), x, start)
                   for b, f in zip(starts[last].tolist(), flags[last, k].tolist(), strict=True)):
                best, best_trust = k, float(trust[k])
        if best >= 0 and self.concordant(best, int(starts[-1]) + hop, x, start, found):
            return best, "isoelectric"
        return -1, ""

    def concordant(self, lead: int, t: int, x: NDArray[np.float64], start: int, found: Iterable[Decided]) -> bool:
        """Whether a detector on ``lead`` finds the beats that the analysis lead found (``found``, the usable
        ones) before its unusable run (ending at ``t``), over the history held: at least ``LEAD_MATCH`` of
        them (within 0.15 s) and not 25 % more. A lead on which half the beats are too small to detect
        (MIT-BIH 207's V1 in R-V bigeminy: a false BRADY at half the rate) is no fallback. True (no
        evidence against) when fewer than 3 usable beats were found there. Checked once per unusable
        run and lead."""
        key = (lead, t - self.bad * self._hop)  # the candidate and where this unusable run began
        if key in self._checked:
            return self._checked[key]
        fs = self._fs
        b_end = key[1]
        w0 = max(start - self._history.buf.shape[0], self.seg_start(b_end - 1), 0)
        ok = True
        y = lead_samples(self._history, lead, w0, b_end, x, start)
        det = QRSDetector(fs, **self._qrs)
        lo = w0 + round((det.params.learn_s + 0.5) * fs)
        ref = [d[0] for d in found if d[3] and lo <= d[0] < b_end - round(0.3 * fs)]
        if y is not None and len(ref) >= 3:
            hits, _ = det.process_with_confirm(y)
            hits = hits + w0
            cand = hits[(hits >= lo) & (hits < b_end - round(0.3 * fs))]
            tol = 0.15 * fs
            hit = sum(1 for r_ in ref if cand.size and np.min(np.abs(cand - r_)) <= tol)
            ok = hit >= LEAD_MATCH * len(ref) and cand.size <= 1.25 * len(ref) + 1
        if len(self._checked) > 64:
            self._checked.clear()
        self._checked[key] = ok
        return ok

    def iso_at(self, lead: int, b0: int, flags: int, x: NDArray[np.float64], start: int) -> bool:
        """Whether block ``b0`` of ``lead`` is a connected isoelectric line (see
        :meth:`~.asystole.AsystoleEvidence.isoelectric`), read before the chunk ``x`` is pushed to the history."""
        lim = self._iso_lims[lead]
        if flags & ~NOISE_BITS or lim is None:
            return False
        y = lead_samples(self._history, lead, b0, b0 + self._hop, x, start)
        return y is not None and iso_range(y, lim)


class DetectorHandover:
    """The QRS detector's beats in received indices across analysis-lead changes.

    At a switch the old detector runs up to the switch sample; a new one on the new lead first runs
    over that lead's last ``learn_s`` + ``LEAD_WARM_S`` seconds of ``history`` (its learning period is
    over at the switch) and takes the beats from the switch on, and those the old detector could no
    longer confirm (R peaks less than its confirmation bound before the switch, not within a
    refractory period of its last beat). The stage owns the detector (``state.detector``); this
    object owns the current detector's offset, cut and confirmation clamp.
    """

    __slots__ = ("_clamp", "_cut", "_fs", "_history", "_off", "_qrs", "last")

    def __init__(self, fs: float, qrs: Mapping[str, Any], history: SignalHistory) -> None:
        self._fs = fs
        self._qrs = dict(qrs)
        self._history = history
        self._off = 0  # received index of the current detector's first sample
        self._cut = 0  # the current detector's beats before this sample are not used
        self._clamp = 0  # ... and none is confirmed before this one (its warm-up)
        self.last = -(1 << 62)  # the latest beat any detector gave

    def shift(self, beats: NDArray[np.int64], confirm: NDArray[np.int64]
              ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The current detector's beats in received indices: its offset added, those before the
        takeover cut, no confirmation before its takeover."""
        b, c = beats + self._off, confirm + self._off
        if b.size and b[0] < self._cut:
            keep = b >= self._cut
            b, c = b[keep], c[keep]
        if c.size and c[0] < self._clamp:
            c = np.maximum(c, self._clamp)
        if b.size:
            self.last = int(b[-1])
        return b, c

    def run(self, detector: QRSDetector, x: NDArray[np.float64], start: int, switched: list[Switch]
            ) -> tuple[QRSDetector, NDArray[np.int64], NDArray[np.int64]]:
        """Detection over the chunk ``x`` (from received sample ``start``, not yet in the history) in
        which the analysis lead changes (``switched``): ``(detector now, beats, confirm)``."""
        fs = self._fs
        bs: list[NDArray[np.int64]] = []
        cs: list[NDArray[np.int64]] = []
        pos = start
        for t, old, new, _ in switched:
            b, c = self.shift(*detector.process_with_confirm(x[pos - start:t - start, old]))
            bs.append(b)
            cs.append(c)
            bound = round(detector.detection_delay_s * fs)
            det = QRSDetector(fs, **self._qrs)
            warm = round((det.params.learn_s + LEAD_WARM_S) * fs)
            w0 = max(t - warm, start - self._history.buf.shape[0], 0)
            y = lead_samples(self._history, new, w0, t, x, start)
            if y is None:  # not held (cannot happen: the history holds at least the warm-up)
                w0, y = t, np.empty(0)
            detector = det
            self._off = w0
            self._cut = max(t - bound, self.last + round(det.params.refractory_s * fs))
            self._clamp = t - 1  # beats found in the warm-up are known when the switch is decided
            b, c = self.shift(*det.process_with_confirm(y))
            bs.append(b)
            cs.append(c)
            pos = t
        b, c = self.shift(*detector.process_with_confirm(x[pos - start:, switched[-1][2]]))
        bs.append(b)
        cs.append(c)
        return detector, np.concatenate(bs), np.concatenate(cs)
