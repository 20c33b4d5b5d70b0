"""Sample clock of an ECG stream: source sample indices and source time, gap-aware.

The stage counts the samples it *receives*; its components (detector, quality, meters) run
on that contiguous stream. Published bodies use the **source** sample index: the index in
the source's sample stream since the stream opened, so after a gap it skips by the samples
lost (a beat at source sample 2294 after a two-chunk gap is reported as 2294, not 1574).
The number lost is read from the chunk timestamps: a chunk whose ``t0_ns`` lies later than
the continuation of the previous one by more than half a sample period starts after
``round((t0_ns - expected_ns) * fs / 1e9)`` lost samples. A chunk stamped *earlier* than
expected (a clock step back) starts a new time anchor but loses no index.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = ["SignalHistory", "Timeline"]


@dataclass(slots=True)
class Timeline:
    """Maps received sample indices to source sample indices and source time (ns).

    An anchor ``(sample, t0_ns, source)`` is added when a chunk's ``t0_ns`` departs from the
    current timeline by more than half a sample period (start, gap, clock step); received
    sample ``k`` is at ``t0 + round((k - sample) * 1e9 / fs)`` and has source index
    ``source + (k - sample)`` of the last anchor at or before it. Anchors older than
    ``keep`` samples are dropped (the oldest kept one extrapolates).

    Examples
    --------
    >>> tl = Timeline(1000.0)
    >>> tl.observe(0, 5_000), tl.observe(1000, 10**9 + 5_000)   # continues: no new anchor
    (0, 0)
    >>> tl.observe(2000, 5 * 10**9)          # gap: new anchor, 3000 samples lost
    3000
    >>> tl.t_ns(1500), tl.t_ns(2001), tl.source(1500), tl.source(2001)
    (1500005000, 5001000000, 1500, 5001)
    """

    fs: float
    keep: int = 1 << 62
    starts: list[int] = field(default_factory=list)
    t0s: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    lost: int = 0

    def t_ns(self, sample: int) -> int:
        """Source time of received sample ``sample`` (ns)."""
        starts = self.starts
        if not starts:
            return round(sample * 1e9 / self.fs)
        if len(starts) == 1 or sample < starts[1]:  # one anchor, or before the second: the first
            i = 0
        else:
            i = max(bisect.bisect_right(starts, sample) - 1, 0)
        return self.t0s[i] + round((sample - starts[i]) * 1e9 / self.fs)

    def source(self, sample: int) -> int:
        """Source sample index of received sample ``sample`` (skips the samples lost in gaps)."""
        starts = self.starts
        if not starts:
            return sample
        if len(starts) == 1 or sample < starts[1]:  # one anchor, or before the second: the first
            i = 0
        else:
            i = max(bisect.bisect_right(starts, sample) - 1, 0)
        return self.sources[i] + (sample - starts[i])

    def stamp(self, sample: int) -> tuple[int, int]:
        """``(source(sample), t_ns(sample))`` with one anchor look-up.

        >>> Timeline(1000.0).stamp(1500)
        (1500, 1500000000)
        """
        starts = self.starts
        if not starts:
            return sample, round(sample * 1e9 / self.fs)
        if len(starts) == 1 or sample < starts[1]:
            i = 0
        else:
            i = max(bisect.bisect_right(starts, sample) - 1, 0)
        d = sample - starts[i]
        return self.sources[i] + d, self.t0s[i] + round(d * 1e9 / self.fs)

    def observe(self, start: int, t0_ns: int) -> int:
        """Register that received sample ``start`` was stamped ``t0_ns``; return the samples
        lost just before it (0 unless the stamp is later than the timeline expects)."""
        if not self.starts:
            self.starts.append(start)
            self.t0s.append(int(t0_ns))
            self.sources.append(start)
            return 0
        expected = self.t_ns(start)
        if abs(expected - t0_ns) * self.fs <= 0.5e9:
            return 0
        lost = max(0, round((t0_ns - expected) * self.fs / 1e9))
        self.sources.append(self.source(start) + lost)
        self.starts.append(start)
        self.t0s.append(int(t0_ns))
        self.lost += lost
        while len(self.starts) > 1 and self.starts[1] <= start - self.keep:
            del self.starts[0]
            del self.t0s[0]
            del self.sources[0]
        return lost


@dataclass(slots=True)
class SignalHistory:
    """The last ``capacity`` raw samples of every lead (a ring buffer) for beat hooks.

    Examples
    --------
    >>> h = SignalHistory(np.zeros((4, 1)))
    >>> h.push(np.arange(6.0)[:, None])
    >>> h.window(3, 6)[:, 0].tolist(), h.window(0, 3) is None
    ([3.0, 4.0, 5.0], True)
    """

    buf: NDArray[np.float64]
    end: int = 0  # absolute index one past the newest sample

    def push(self, x: NDArray[np.float64]) -> None:
        """Append samples ``x`` (n, n_channels)."""
        cap = self.buf.shape[0]
        n = x.shape[0]
        if n >= cap:
            self.buf[:] = x[n - cap :]
            self.buf[:] = np.roll(self.buf, (self.end + n) % cap, axis=0)
        else:
            i = self.end % cap
            k = min(n, cap - i)
            self.buf[i : i + k] = x[:k]
            self.buf[: n - k] = x[k:]
        self.end += n

    def window(self, start: int, stop: int) -> NDArray[np.float64] | None:
        """Samples ``[start, stop)`` (a copy), or ``None`` when not all of them are held."""
        cap = self.buf.shape[0]
        if start < max(0, self.end - cap) or stop > self.end or stop < start:
            return None
        i, n = start % cap, stop - start
        if i + n <= cap:  # one slice (a copy, as ``buf[np.arange(start, stop) % cap]`` gives)
            return self.buf[i:i + n].copy()
        return np.concatenate((self.buf[i:], self.buf[:n - (cap - i)]))
