"""Quality gate: per-block signal quality and the usable verdict of every detected beat."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from telediag.dsp.quality import QualityEvent, SignalQuality, SQIUpdate

__all__ = ["Decided", "QualityGate"]

Decided = tuple[int, int, int, bool]
"""A decided beat: ``(sample, confirm_sample, release_sample, usable)`` (received indices)."""


@dataclass(slots=True)
class QualityGate:
    """Runs :class:`~telediag.dsp.quality.SignalQuality` and decides each beat's ``usable`` flag.

    With ``hold`` (``quality_hold = "verdict"``) a beat waits until the verdict of the block
    holding its R peak exists, i.e. until sample ``(block + 1) * hop - 1`` has arrived
    (``release_sample``); without it a beat is decided at its confirmation on the latest
    verdict then available. ``suppress`` false makes every beat usable. No beat is dropped:
    an unusable one is returned with ``usable = False``.

    Examples
    --------
    >>> import numpy as np
    >>> g = QualityGate(SignalQuality(360.0, 1), hold=True, suppress=True, lead=0)
    >>> rows, ev = g.assess(np.zeros((720, 1)))        # constant: leads-off, unusable
    >>> g.decide(np.array([100]), np.array([200]), n_seen=720, final=False)
    [(100, 200, 359, False)]
    """

    quality: SignalQuality
    hold: bool
    suppress: bool
    lead: int
    verdicts: dict[int, bool] = field(default_factory=dict)
    blocks_done: int = 0
    pending: list[tuple[int, int]] = field(default_factory=list)
    all_ok: bool = True  # every block of the last assessment usable on ``lead``

    @property
    def hop(self) -> int:
        """Block length (samples)."""
        return int(self.quality.hop)

    def assess(self, x: NDArray[np.float64]) -> tuple[SQIUpdate, list[QualityEvent]]:
        """Feed samples ``(n, n_channels)``; the rows of newly completed blocks and events."""
        rows, events = self.quality.process(x)
        if rows.block_start.size:
            hop = self.hop
            oks = rows.usable[:, self.lead].tolist()
            self.all_ok = all(oks)
            for b, ok in zip((rows.block_start // hop).tolist(), oks, strict=True):
                self.verdicts[b] = ok
            self.blocks_done = int(rows.block_start[-1]) // hop + 1
            if len(self.verdicts) > 256:  # keep the recent ones only
                oldest = self.blocks_done - 128
                for b in [b for b in self.verdicts if b < oldest]:
                    del self.verdicts[b]
        return rows, events

    def switch(self, lead: int, blocks: dict[int, bool]) -> None:
        """The detection lead is now ``lead``: later blocks are assessed on it, and ``blocks``
        (block index -> usable on ``lead``) replaces the verdicts of blocks already assessed
        that lie after the switch (the stage's analysis-lead fallback)."""
        self.lead = lead
        self.verdicts.update(blocks)

    def verdict(self, block: int) -> bool:
        """Usable verdict of ``block``, or of the latest assessed block before it."""
        if not self.suppress:
            return True
        b = min(block, self.blocks_done - 1)
        if b < 0:
            return True  # nothing assessed yet (only reachable without hold)
        return self.verdicts.get(b, True)

    def signal_ok(self, sample: int) -> bool:
        """Latest verdict available at ``sample`` (that of the last complete block)."""
        return self.verdict((sample + 1) // self.hop - 1)

    def decide(self, beats: NDArray[np.int64], confirm: NDArray[np.int64], *, n_seen: int,
               final: bool) -> list[Decided]:
        """Beats now decided, in order, with their release sample and usable flag."""
        hop = self.hop
        out: list[Decided] = []
        if not self.hold:
            for s, c in zip(beats.tolist(), confirm.tolist(), strict=True):
                # latest verdict available when sample c arrived
                out.append((s, c, c, self.verdict(min(s // hop, (c + 1) // hop - 1))))
            return out
        if beats.size:
            self.pending.extend(zip(beats.tolist(), confirm.tolist(), strict=True))
        done = self.blocks_done
        k = 0
        for s, c in self.pending:
            b = s // hop
            if b < done:
                rel = max(c, (b + 1) * hop - 1)
            elif final:
                rel = n_seen - 1
            else:
                break
            out.append((s, c, rel, self.verdict(b)))
            k += 1
        if k:
            del self.pending[:k]
        return out
