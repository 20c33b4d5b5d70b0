"""Rate monitor: the displayed heart rate (ANSI/AAMI EC13) and rolling HRV, with their
periodic readings, fed with usable beats only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from telediag.dsp.hr import HeartRateMeter
from telediag.dsp.hrv import NORMAL_SYMBOLS, HRVMeter

__all__ = ["RateMonitor", "num"]


def num(v: float) -> float | None:
    """A msgpack/JSON-safe float: NaN and inf become ``None``."""
    f = float(v)
    return f if math.isfinite(f) else None


class RateMonitor:
    """Heart rate and HRV of one stream, with readings every ``hr_step`` / ``hrv_step`` samples.

    ``stamp(k)`` gives the published ``(sample, t_ns)`` of received sample ``k``.

    Examples
    --------
    >>> m = RateMonitor(HeartRateMeter(360.0), HRVMeter(360.0), 360, 1800, 300.0, lambda k: (k, k))
    >>> r = m.beats_hr([100, 388, 676])
    >>> [x["hr_bpm"] for x in r]
    [None, None, 75.0]
    """

    def __init__(self, hr: HeartRateMeter, hrv: HRVMeter, hr_step: int, hrv_step: int, hrv_window_s: float,
                 stamp: Callable[[int], tuple[int, int]]) -> None:
        self.hr, self.hrv = hr, hrv
        self.hr_step, self.hrv_step = hr_step, hrv_step
        self.next_hr_tick, self.next_hrv_tick = hr_step, hrv_step
        self.hrv_window_s = hrv_window_s
        self.hrv_last: dict[str, Any] | None = None
        self.stamp = stamp

    def beats_hr(self, samples: Sequence[int]) -> list[dict[str, Any]]:
        """Feed usable beats (received indices, in order) to the rate meter; one reading each."""
        out = []
        for s, h in zip(*self.hr.update_lists(list(samples)), strict=True):
            src, t = self.stamp(s)
            out.append({"sample": src, "t_ns": t, "hr_bpm": num(h), "on_beat": True, "signal_ok": True})
        return out

    def beats_hrv(self, samples: Sequence[int], labels: Sequence[str | None]) -> None:
        """Feed usable beats to the HRV meter (only normal-to-normal intervals when labelled)."""
        normal = None if all(lab is None for lab in labels) else \
            [lab is None or lab in NORMAL_SYMBOLS for lab in labels]
        last = self.hrv.update_last_lists(list(samples), normal)
        if last is not None:
            sample, n_nn, n_diff, mean_nn, sdnn, rmssd, pnn50, mean_hr = last
            self.hrv_last = {
                "as_of_sample": self.stamp(sample)[0], "n_nn": n_nn, "n_diff": n_diff,
                "mean_nn_ms": num(mean_nn), "sdnn_ms": num(sdnn), "rmssd_ms": num(rmssd), "pnn50": num(pnn50),
                "mean_hr_bpm": num(mean_hr),
            }

    @property
    def next_tick(self) -> int:
        """Received sample of the next periodic reading."""
        return min(self.next_hr_tick, self.next_hrv_tick)

    def hr_reading(self, sample: int, signal_ok: bool) -> dict[str, Any]:
        """The displayed rate at the tick ``sample`` (advances the HR tick)."""
        src, t = self.stamp(sample)
        self.next_hr_tick += self.hr_step
        return {"sample": src, "t_ns": t, "hr_bpm": num(self.hr.at(sample)), "on_beat": False,
                "signal_ok": signal_ok}

    def hrv_reading(self, sample: int) -> dict[str, Any]:
        """The HRV body at the tick ``sample`` (advances the HRV tick)."""
        src, t = self.stamp(sample)
        self.next_hrv_tick += self.hrv_step
        body: dict[str, Any] = {"sample": src, "t_ns": t, "window_s": self.hrv_window_s}
        if self.hrv_last is None:
            body.update({"as_of_sample": None, "n_nn": 0, "n_diff": 0, "mean_nn_ms": None,
                         "sdnn_ms": None, "rmssd_ms": None, "pnn50": None, "mean_hr_bpm": None})
        else:
            body.update(self.hrv_last)
        return body
