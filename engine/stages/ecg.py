"""ECG stages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telediag.dsp.design import chain, ecg_bandpass, notch, steady_state_zi
from telediag.dsp.quality import all_plausible
from telediag.dsp.sosfilt import SosFilter
from telediag.engine.stage import Outputs, Stage, StageParams, StreamSpec, register, signal_like
from telediag.engine.stages.ecg_analysis import _UNITS_PER_MV
from telediag.errors import ConfigError
from telediag.transports.wire import Chunk


@dataclass(frozen=True, slots=True)
class EcgFilterParams(StageParams):
    """Parameters of :class:`EcgFilter`.

    ``order`` is the Butterworth prototype order of each edge, so the band-pass has
    ``2 * order`` poles; ``notch_hz`` is 0 (off), 50 or 60; ``init`` is ``"steady"``
    (initial state at steady state for the first sample, no start-up transient) or
    ``"zero"``. A sample beyond ``implausible_mv`` (default 500 mV, on channels whose unit is mV,
    uV or V; 0: off) is treated like a non-finite one: one glitch of 1e30 would otherwise ring in
    the IIR state, and fill the displayed trace, for minutes.
    """

    publish: bool = True
    low_hz: float = 0.5
    high_hz: float = 40.0
    order: int = 4
    notch_hz: float = 0.0
    notch_q: float = 30.0
    init: str = "steady"
    suffix: str = "filtered"
    implausible_mv: float = 500.0

    def __post_init__(self) -> None:
        if not 0.0 < self.low_hz < self.high_hz:
            raise ValueError(f"need 0 < low_hz < high_hz, got low_hz={self.low_hz}, high_hz={self.high_hz}")
        if not 1 <= self.order <= 8:
            raise ValueError(f"order must be in 1..8, got {self.order}")
        if self.notch_hz not in (0.0, 50.0, 60.0):
            raise ValueError(f"notch_hz must be 0 (off), 50 or 60, got {self.notch_hz}")
        if self.init not in ("steady", "zero"):
            raise ValueError(f"init must be 'steady' or 'zero', got {self.init!r}")
        if not (np.isfinite(self.implausible_mv) and self.implausible_mv >= 0):
            raise ValueError(f"implausible_mv must be >= 0 (0: off), got {self.implausible_mv!r}")
        if not self.suffix or "/" in self.suffix:
            raise ValueError(f"suffix must be a non-empty name without '/', got {self.suffix!r}")


@register
class EcgFilter(Stage):
    """Streaming band-pass (and optional powerline notch) for any number of ECG leads.

    The output equals ``scipy.signal.sosfilt`` run once over the whole stream with the
    same sections and initial state, whatever the chunking (the state is carried).
    """

    type_name = "ecg_filter"
    Params = EcgFilterParams
    kinds = frozenset({"ecg"})

    def open(self, spec: StreamSpec) -> StreamSpec:
        p = self.params
        assert isinstance(p, EcgFilterParams)
        if p.high_hz >= spec.rate_hz / 2:
            raise ConfigError(
                f"[{self.name}].high_hz={p.high_hz} must be below Nyquist ({spec.rate_hz / 2} Hz) "
                f"of stream {spec.stream!r}"
            )
        sos = ecg_bandpass(spec.rate_hz, p.low_hz, p.high_hz, p.order)
        if p.notch_hz:
            sos = chain(sos, notch(spec.rate_hz, p.notch_hz, p.notch_q))
        self.sos = sos
        self._filter: SosFilter | None = None
        self._n_channels = spec.n_channels
        self._last = np.zeros(spec.n_channels)
        upm = [_UNITS_PER_MV.get(u.strip().lower()) for u in spec.units]
        self._lim = (np.array([p.implausible_mv * u if u else np.inf for u in upm]) if p.implausible_mv > 0
                     and len(upm) == spec.n_channels and any(upm) else None)
        self._lim_all = np.full(spec.n_channels, np.inf) if self._lim is None else self._lim.copy()
        self._lim_all.flags.writeable = False
        self.spec = spec
        self.out_stream = f"{spec.stream}/{p.suffix}"
        return StreamSpec(self.out_stream, spec.kind, spec.rate_hz, spec.channels, spec.units)

    def process(self, chunk: Chunk) -> Outputs:
        x = np.asarray(chunk.data, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.shape[1] != self._n_channels:
            raise ConfigError(
                f"stream {chunk.stream!r} opened with {self._n_channels} channel(s), chunk has {x.shape[1]}"
            )
        if self._filter is None:
            if len(x) == 0:  # the steady state needs a first sample; wait for one
                return Outputs(signal=signal_like(chunk, x.copy(), self.out_stream))
            if self.params.init == "steady":  # type: ignore[attr-defined]
                first = np.array([col[np.isfinite(col)][0] if np.isfinite(col).any() else 0.0 for col in x.T])
                zi = steady_state_zi(self.sos, self._n_channels, first)
                self._last = first
                self._filter = SosFilter(self.sos, self._n_channels, zi=zi)
            else:
                self._filter = SosFilter(self.sos, self._n_channels)
        bad = None
        # one pass for the common chunk (every sample finite and plausible); else the masks
        if not (x.flags.c_contiguous and all_plausible(x, self._lim_all)):
            bad = None if np.isfinite(x.sum()) else ~np.isfinite(x)
            if self._lim is not None and len(x) and (bad is not None or (np.abs(x).max(axis=0) > self._lim).any()):
                wild = np.abs(x) > self._lim  # NaN compares false
                bad = wild if bad is None else bad | wild
        if bad is not None:
            # NaN/inf (leads off, lost samples) must not poison the filter state: hold the
            # last finite value through the run for the filter, and output NaN there
            x = _hold_last_finite(x, bad, self._last)
        y = self._filter.process(x)
        if len(x):
            self._last = x[-1].copy()
        if bad is not None:
            y[bad] = np.nan
        return Outputs(signal=signal_like(chunk, y, self.out_stream))


def _hold_last_finite(x: np.ndarray, bad: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Replace non-finite samples by the last finite value of their channel."""
    x = x.copy()
    for c in range(x.shape[1]):
        b = bad[:, c]
        if not b.any():
            continue
        col = x[:, c]
        idx = np.where(~b, np.arange(len(col)), -1)
        np.maximum.accumulate(idx, out=idx)
        held = np.where(idx >= 0, col[np.maximum(idx, 0)], last[c])
        x[:, c] = held
    return x
