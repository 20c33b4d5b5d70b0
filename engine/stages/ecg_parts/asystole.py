"""Asystole evidence: which quality blocks of the analysis lead count as usable for asystole and pause.

A block the quality gate finds usable counts; so does an unusable one that is a connected isoelectric
line (IEC 60601-2-27: a connected lead without QRS is asystole, not a technical condition) unless the
detector keeps finding beats in a regular run there (a low-voltage ECG that the quality scores as
noise); a block whose baseline stepped (electrode pop, amplifier recovery) never counts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from telediag.engine.stages.ecg_parts.clock import SignalHistory
from telediag.engine.stages.ecg_parts.gate import Decided

__all__ = ["BASELINE_STEP_MV", "ISOELECTRIC_MV", "NOISE_BITS", "REGULAR_MAD", "REGULAR_RR", "AsystoleEvidence",
           "iso_range"]

ISOELECTRIC_MV = 0.2
"""An unusable quality block whose only fault is a low SQI / heavy noise and whose detrended 5-95 %
range on the lead is under this (mV) is a connected isoelectric line (asystole, fine noise), counted
as usable for asystole and pause (:meth:`AsystoleEvidence.isoelectric`)."""
BASELINE_STEP_MV = 1.0
"""A quality block whose mean (analysis lead) moved by more than this (mV) from the previous block's
is not usable for asystole and pause (:meth:`AsystoleEvidence.baseline_step`)."""
REGULAR_RR = 8
REGULAR_MAD = 0.05
"""Beats found in a regular run (:meth:`AsystoleEvidence.regular_beat_in`) keep a low-amplitude block
from counting as isoelectric for asystole."""
NOISE_BITS = (1 << 3) | (1 << 7)  # quality flags: heavy_noise in the block, heavy_noise event active


def iso_range(y: NDArray[np.float64], lim: float) -> bool:
    """Whether the finite samples ``y`` (one quality block of one lead), detrended, have a 5-95 %
    range under ``lim`` (an isoelectric line)."""
    if not np.isfinite(y).all():
        return False
    t = np.arange(y.size, dtype=np.float64)
    r = y - np.polyval(np.polyfit(t, y, 1), t)
    lo, hi = np.percentile(r, (5.0, 95.0))
    return bool(hi - lo < lim)


def _no_switch(sample: int) -> int:
    return 0


class AsystoleEvidence:
    """Per-block asystole usability on the analysis lead, and the detector's latest beats.

    ``history`` is the stage's raw signal history (the blocks are read from it, so a block is judged
    after its samples were pushed); ``iso_lims`` / ``step_lims`` are, per lead, :data:`ISOELECTRIC_MV`
    and :data:`BASELINE_STEP_MV` in the lead's units (``None``: units unknown, no test);
    ``seg_start(sample)`` is the sample where the analysis lead in force at ``sample`` took over
    (0: the stream start; see :class:`~.leads.LeadFallback`).

    API: :meth:`found_beats` with every decided beat (usable or not, in every chunk), then
    :meth:`block` for each quality block in order; :attr:`iso` is the last block's isoelectric
    verdict (the rate ticks' ``asystole_ok``); :attr:`found` the latest beats (``Decided``).

    Examples
    --------
    >>> import numpy as np
    >>> h = SignalHistory(np.zeros((3600, 1)))
    >>> h.push(np.zeros((360, 1)))
    >>> ev = AsystoleEvidence(360.0, h, [0.2], [1.0])
    >>> ev.block(0, 360, ok=False, flags=1 << 3, lead=0)   # a noisy-scored flat trace: isoelectric
    True
    >>> ev.block(0, 360, ok=False, flags=1, lead=0)        # leads-off flag: not asystole evidence
    False
    """

    __slots__ = ("_fs", "_history", "_iso_lims", "_last_mean", "_n_found", "_seg_start", "_step_lead",
                 "_step_lims", "found", "iso")

    def __init__(self, fs: float, history: SignalHistory, iso_lims: Sequence[float | None],
                 step_lims: Sequence[float | None], lead: int = 0,
                 seg_start: Callable[[int], int] = _no_switch) -> None:
        self._fs = fs
        self._history = history
        self._iso_lims = list(iso_lims)
        self._step_lims = list(step_lims)
        self._seg_start = seg_start
        self._step_lead = lead
        self._last_mean: float | None = None
        self._n_found = 0
        self.found: deque[Decided] = deque(maxlen=64)  # the detector's latest beats, usable or not
        self.iso = False

    def found_beats(self, decided: list[Decided]) -> None:
        """Remember the detector's beats (usable or not; call in every chunk: a beat decided in a chunk
        that completes no block must count, else the test depends on the chunking)."""
        self.found.extend(decided)
        self._n_found += len(decided)

    def block(self, b0: int, hop: int, ok: bool, flags: int, lead: int) -> bool:
        """Whether quality block ``[b0, b0 + hop)`` analysed on ``lead`` (quality verdict ``ok``, quality
        ``flags``) is usable for asystole and pause; sets :attr:`iso`."""
        self.iso = not ok and self.isoelectric(b0, hop, flags, lead) and not self.regular_beat_in(b0, b0 + hop)
        step = self.baseline_step(b0, hop, lead)
        return (ok or self.iso) and not step

    def isoelectric(self, b0: int, hop: int, flags: int, lead: int) -> bool:
        """Whether quality block ``b0`` of ``lead``, unusable, is a connected isoelectric line: no
        leads-off, flat-line or saturation flag (only low SQI / heavy noise: a trace without QRS
        complexes scores as noise) and, detrended, a 5-95 % range under ``ISOELECTRIC_MV``.
        Such a block counts as usable for asystole and pause; brady/tachy and AF still skip it."""
        lim = self._iso_lims[lead]
        if flags & ~NOISE_BITS or lim is None:
            return False
        w = self._history.window(b0, b0 + hop)
        if w is None:
            return False
        return iso_range(w[:, lead], lim)

    def regular_beat_in(self, b0: int, b1: int) -> bool:
        """Whether a beat the detector found (usable or not) in samples ``[b0, b1)`` keeps that
        low-amplitude block from counting as isoelectric: a beat that ends a regular run - the median
        of the last ``REGULAR_RR`` intervals between found beats lies in 0.3-2 s and their median
        absolute deviation is under ``REGULAR_MAD`` of it - or any beat while fewer than
        ``REGULAR_RR + 1`` have been found (no evidence yet either way). The detector also finds
        "beats" in the fine noise of an isoelectric lead, but at a fast, irregular rate: 0.4 % of them
        end such a run on 30 uV noise at 360 Hz and 2 kHz, against 90 % on the 0.2 mV QRS of PhysioNet
        2016 a0001's ECG, which the quality scores as noise (it raised a false ASYSTOLE)."""
        found = self.found
        n = len(found)
        seg = self._seg_start(b0)  # only beats found on the lead analysed in this block count
        for i in range(n - 1, -1, -1):
            s, _, r, _ = found[i]
            if s < b0:
                break
            if s >= b1 or r >= b1:  # only the beats known when the block's last sample came (chunking)
                continue
            if not seg:
                if self._n_found - (n - 1 - i) < REGULAR_RR + 1:  # beats found up to this one
                    return True
            else:  # on a lead analysed since a switch, only a regular run of beats found on it counts: the
                # switch to a lead without a usable ECG needs that lead usable most of the last minute, so
                # it is no chronically low-voltage one, and its first beats must not delay asystole
                k = sum(1 for j in range(i + 1) if found[j][0] >= seg)
                if k < REGULAR_RR + 1 and not (n == found.maxlen and found[0][0] >= seg):
                    continue
            if i < REGULAR_RR:
                continue
            rr = np.diff(np.asarray([found[j][0] for j in range(i - REGULAR_RR, i + 1)], dtype=np.float64)) / self._fs
            m = float(np.median(rr))
            if 0.3 <= m <= 2.0 and float(np.median(np.abs(rr - m))) < REGULAR_MAD * m:
                return True
        return False

    def baseline_step(self, b0: int, hop: int, lead: int) -> bool:
        """Whether ``lead``'s mean moved by more than ``BASELINE_STEP_MV`` from the previous quality
        block to this one (an electrode pop or amplifier recovery: the QRS can shrink to nothing on
        this lead for seconds while the heart beats); such a block is not usable for asystole and
        pause. Remembers this block's mean."""
        if lead != self._step_lead:  # another analysis lead: its own baseline
            self._step_lead, self._last_mean = lead, None
        lim = self._step_lims[lead]
        if lim is None:
            return False
        w = self._history.window(b0, b0 + hop)
        if w is None:
            self._last_mean = None
            return False
        m = float(w[:, lead].sum()) / w.shape[0]  # np.mean's own arithmetic (sum, then divide) without its overhead
        prev, self._last_mean = self._last_mean, (m if math.isfinite(m) else None)
        return prev is not None and math.isfinite(m) and abs(m - prev) > lim
