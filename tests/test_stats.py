"""Latency histogram: the fast summary equals the reference quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from telediag.engine.stats import LatencyHistogram, StreamStats


@pytest.mark.parametrize("seed", range(20))
def test_summary_matches_quantile(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h = LatencyHistogram()
    for v in rng.lognormal(mean=-5 + seed % 5, sigma=1.0 + seed % 3, size=1 + seed * 37):
        h.record(float(v))
    s = h.summary_ms()
    assert s["count"] == h.count
    for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert s[key] == round(h.quantile(q) * 1e3, 4)
    assert s["max"] == round(h.max_s * 1e3, 4)


def test_empty_and_stream_export() -> None:
    assert LatencyHistogram().summary_ms() == {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0,
                                               "mean": 0.0}
    st = StreamStats(kind="ecg")
    for v in (0.001, 0.002, 0.002, 0.5):
        st.latency.record(v)
    d = st.as_dict()
    assert d["latency_ms"] == st.latency.summary_ms()
    assert sum(c for _, c in d["latency_hist"]["counts"]) == 4
    assert all(st.latency.counts[b] == c for b, c in d["latency_hist"]["counts"])
