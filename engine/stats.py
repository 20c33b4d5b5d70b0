"""Counters and latency percentiles, cheap enough to update on every chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_DECADES = (-6, 2)  # 1 us .. 100 s
_PER_DECADE = 40
_N_BINS = (_DECADES[1] - _DECADES[0]) * _PER_DECADE + 2


class LatencyHistogram:
    """Log-spaced histogram of latencies in seconds (1 µs to 100 s, 40 bins per decade).

    Percentiles are read from the bin edges, so they are accurate to ~6 % of the
    value, which is ample for p50/p99 reporting; ``max`` and ``count`` are exact.
    """

    __slots__ = ("counts", "count", "max_s", "sum_s")

    def __init__(self) -> None:
        self.counts = np.zeros(_N_BINS, dtype=np.int64)
        self.count = 0
        self.max_s = 0.0
        self.sum_s = 0.0

    @staticmethod
    def _bin(value_s: float) -> int:
        if value_s <= 10.0 ** _DECADES[0]:
            return 0
        b = int((math.log10(value_s) - _DECADES[0]) * _PER_DECADE) + 1
        return min(b, _N_BINS - 1)

    def record(self, value_s: float) -> None:
        if not math.isfinite(value_s):
            return
        value_s = max(value_s, 0.0)
        self.counts[self._bin(value_s)] += 1
        self.count += 1
        self.sum_s += value_s
        if value_s > self.max_s:
            self.max_s = value_s

    @staticmethod
    def upper_edge(b: int) -> float:
        """Upper edge (s) of bin ``b``."""
        return float(10.0 ** (_DECADES[0] + b / _PER_DECADE))

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in seconds; NaN when empty."""
        if self.count == 0:
            return float("nan")
        target = q * self.count
        cum = np.cumsum(self.counts)
        b = int(np.searchsorted(cum, target, side="left"))
        return min(self.upper_edge(b), self.max_s)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts += other.counts
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def summary_ms(self) -> dict[str, float]:
        """p50/p90/p99/max/mean in milliseconds (NaN-free: empty gives zeros and count 0)."""
        if self.count == 0:
            return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
        return self._summary(self.nonzero_bins())

    def _summary(self, bins: list[tuple[int, int]]) -> dict[str, float]:
        # same rule as :meth:`quantile`, in one pass over the (few) non-empty bins
        targets = [0.50 * self.count, 0.90 * self.count, 0.99 * self.count]
        out = []
        cum = 0
        it = iter(bins)
        b = 0
        for t in targets:
            while cum < t:
                b, c = next(it)
                cum += c
            out.append(round(min(self.upper_edge(b), self.max_s) * 1e3, 4))
        return {
            "count": self.count,
            "p50": out[0],
            "p90": out[1],
            "p99": out[2],
            "max": round(self.max_s * 1e3, 4),
            "mean": round(self.sum_s / self.count * 1e3, 4),
        }

    def nonzero_bins(self) -> list[tuple[int, int]]:
        """``(bin, count)`` of every non-empty bin (the compact form published in stats)."""
        nz = np.flatnonzero(self.counts)
        return list(zip(nz.tolist(), self.counts[nz].tolist(), strict=True))


@dataclass(slots=True)
class StreamStats:
    """Per-stream counters."""

    kind: str = ""
    chunks_in: int = 0
    samples_in: int = 0
    chunks_out: int = 0
    records_out: int = 0
    gaps: int = 0
    missing_chunks: int = 0
    out_of_order: int = 0
    restarts: int = 0
    errors: int = 0
    drops: int = 0
    last_seq: int = -1
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def as_dict(self) -> dict[str, Any]:
        lat = self.latency
        bins = lat.nonzero_bins()
        return {
            "kind": self.kind,
            "chunks_in": self.chunks_in,
            "samples_in": self.samples_in,
            "chunks_out": self.chunks_out,
            "records_out": self.records_out,
            "gaps": self.gaps,
            "missing_chunks": self.missing_chunks,
            "out_of_order": self.out_of_order,
            "restarts": self.restarts,
            "errors": self.errors,
            "drops": self.drops,
            "last_seq": self.last_seq,
            "latency_ms": lat._summary(bins) if lat.count else lat.summary_ms(),
            "latency_hist": {
                "counts": bins,
                "count": self.latency.count,
                "sum_s": self.latency.sum_s,
            },
        }


def aggregate(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several workers' stats bodies (threads or processes of one engine).

    Counters are summed, reject and error counts merged by key, and latency percentiles are
    read from the *merged* per-stream histograms (not averaged percentiles), so ``p99`` is the
    99th percentile over every measured chunk of every worker.
    """
    hist = LatencyHistogram()
    streams = 0
    chunks_in = 0
    rejects: dict[str, int] = {}
    errors: dict[str, int] = {}
    restarts = 0
    for b in bodies:
        for st in b.get("streams", {}).values():
            streams += 1
            chunks_in += int(st.get("chunks_in", 0))
            h = st.get("latency_hist") or {}
            for bin_, c in h.get("counts", []):
                if 0 <= int(bin_) < _N_BINS:
                    hist.counts[int(bin_)] += int(c)
            hist.count += int(h.get("count", 0))
            hist.sum_s += float(h.get("sum_s", 0.0))
            hist.max_s = max(hist.max_s, float(st.get("latency_ms", {}).get("max", 0.0)) / 1e3)
        for k, v in (b.get("rejects") or {}).items():
            rejects[k] = rejects.get(k, 0) + int(v)
        for k, v in (b.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + int(v)
        restarts += int(b.get("process_restarts", 0))
    return {"workers": len(bodies), "streams": streams, "chunks_in": chunks_in, "rejects": rejects,
            "errors": errors, "process_restarts": restarts, "latency_ms": hist.summary_ms()}
