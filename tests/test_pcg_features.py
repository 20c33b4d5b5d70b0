"""Emission features of the PCG segmenter: the 150-400 Hz channel and the log-envelopes."""

from __future__ import annotations

import numpy as np
import pytest

from telediag.dsp import pcg
from telediag.errors import DSPError


def _oracle_features(frames: np.ndarray) -> np.ndarray:
    """Plain NumPy re-statement of :func:`pcg.emission_features` (documented layout)."""
    g = frames[:, list(pcg.LOG_CHANNELS)]
    floor = 1e-3 * np.median(np.abs(g), axis=0) + 1e-300
    base = np.hstack((frames, np.log(np.maximum(g, floor))))
    # robust z-score: moments of the column clipped at its 1st / 99th percentiles
    c = np.empty_like(base)
    for j in range(base.shape[1]):
        lo, hi = np.percentile(base[:, j], 1.0), np.percentile(base[:, j], 99.0)
        c[:, j] = np.minimum(np.maximum(base[:, j], lo), hi)
    mu, sd = c.mean(axis=0), c.std(axis=0)
    sd[sd <= 1e-12 * (np.abs(mu) + 1e-30)] = 1.0
    z = np.clip((base - mu) / sd, -8.0, 8.0)
    n = z.shape[0]
    idx = np.arange(n)
    at = lambda k: z[np.clip(idx + k, 0, n - 1)]  # noqa: E731  (edge values repeated)
    return np.hstack((z, 0.5 * (at(1) - at(-1)), at(-2), at(2)))


def test_emission_features_match_oracle() -> None:
    rng = np.random.default_rng(3)
    f = np.abs(rng.standard_normal((300, pcg.N_CHANNELS))) + 0.01
    f[::7, 4] = -1e-4  # decimation ringing below zero: floored, still finite
    got = pcg.emission_features(f)
    assert got.shape == (300, 4 * (pcg.N_CHANNELS + len(pcg.LOG_CHANNELS)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _oracle_features(f), rtol=1e-10, atol=1e-10)


def test_a_loud_artefact_does_not_shrink_the_heart_sounds() -> None:
    """Issue 16: one knock 1000x the heart sounds leaves the other frames' features as they
    were (a plain mean/sd z-score would squash every heart sound towards zero)."""
    rng = np.random.default_rng(5)
    f = np.abs(rng.standard_normal((500, pcg.N_CHANNELS))) + 0.01
    knock = f.copy()
    knock[250] = 1000.0
    a, b = pcg.emission_features(f), pcg.emission_features(knock)
    far = np.r_[0:240, 260:500]  # away from the knock's +-2-frame context
    np.testing.assert_allclose(b[far, :9], a[far, :9], atol=0.1)
    assert np.all(np.abs(b) <= 8.0 + 1e-12)  # the knock itself is clipped, not unbounded
    # contrast: a plain z-score of the raw envelope would squash the other frames
    raw = knock[:, 0]
    assert np.std(((raw - raw.mean()) / raw.std())[far]) < 0.1
    assert np.std(b[far, 0]) > 0.8


def test_emission_features_are_gain_invariant_and_handle_silence() -> None:
    rng = np.random.default_rng(4)
    f = np.abs(rng.standard_normal((200, pcg.N_CHANNELS))) + 0.01
    np.testing.assert_allclose(pcg.emission_features(f), pcg.emission_features(1e-3 * f),
                               atol=1e-8)
    assert np.all(np.abs(pcg.emission_features(np.zeros((50, pcg.N_CHANNELS)))) < 1e-9)
    assert pcg.emission_features(np.zeros((0, pcg.N_CHANNELS))).shape[0] == 0
    with pytest.raises(DSPError, match="frames must have shape"):
        pcg.emission_features(np.zeros((10, 4)))


def test_high_band_channel_separates_pitch() -> None:
    """250 Hz bursts light the 150-400 Hz channel, 50 Hz bursts the low bands."""
    fs = 2000
    t = np.arange(int(0.06 * fs)) / fs
    x = np.zeros(9 * fs)
    lo = np.sin(2 * np.pi * 50 * t) * np.hanning(t.size)
    hi = np.sin(2 * np.pi * 250 * t) * np.hanning(t.size)
    k_lo, k_hi = [], []
    for sec in range(8):  # a burst in every 0.5 s block: none is taken for a spike
        for onset, burst, ks in ((sec + 0.25, lo, k_lo), (sec + 0.75, hi, k_hi)):
            n0 = int(onset * fs)
            x[n0 : n0 + t.size] += burst
            ks.append(int(round((onset + 0.03) * 50)))  # burst centre in frames
    f = pcg.extract_frames(x, fs)
    assert np.mean(f[k_hi, 4]) > 5 * np.mean(f[k_lo, 4])
    assert np.mean(f[k_lo, 2]) > 5 * np.mean(f[k_hi, 2])


def test_feature_cache_of_another_front_end_is_rebuilt(pcg_root, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A cache with the right records but 4-channel frames (an older front end) is not reused."""
    from telediag.evaluation.pcg_seg import list_records, load_feature_cache

    names = [f"{r.set}/{r.name}" for r in list_records(pcg_root, ("d",))]
    assert names
    cache = tmp_path / "frames.npz"
    n = 10 * len(names)
    np.savez(cache, names=np.asarray(names), offsets=np.arange(0, n + 1, 10),
             frames=np.zeros((n, 4)), durations=np.ones(len(names)))
    data = load_feature_cache(pcg_root, cache, sets=("d",))
    assert all(f.shape[1] == pcg.N_CHANNELS for f in data["frames"])
    assert data["frames"][0].shape[0] > 10  # real frames, not the stale zeros
    with np.load(cache) as z:
        assert z["frames"].shape[1] == pcg.N_CHANNELS  # the cache was rewritten
