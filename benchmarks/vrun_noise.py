"""Ventricular-run (``vrun``) alarms: true VT kept vs false runs in noise, old vs new rule.

Usage::

    python benchmarks/vrun_noise.py [--data DIR] [--snr 6 0] [--guards 0 0.5 1 2] [--records 106 203 ...]

Runs the built-in ``ecg_analysis`` stage (1 s chunks, classification on) once per record and
variant, recording every call the stage makes into :class:`telediag.dsp.alarms.RhythmAlarms`
(beats, labels, quality blocks, ticks); the recorded calls are then replayed into a fresh
``RhythmAlarms`` for each ``vrun_guard_s`` (0 = the rule before the guard), so the variants see
exactly the same beats and labels. Variants:

* the clean MIT-BIH records in ``DIR/mitdb``;
* the same records plus the nstdb muscle-artefact record ``ma`` (both leads, from its first
  sample: a fixed offset) scaled to each ``--snr`` the way nstdb defines it: signal power
  S = (peak-to-peak QRS amplitude)^2 / 8 (median over the reference ``N`` beats, +-50 ms, per lead),
  noise power N = mean square of the noise after removing its 1 s moving mean (baseline);
* the nstdb noise-stress records ``118e24/12/00/_6`` (118 has no V beat: every run is false).

Scores: reference runs of >= 3 consecutive ``V`` beats (beat annotations) and reference ``(VT``
rhythm episodes, detected when a vrun alarm's onset falls inside (1 s before its start to 0.5 s
after its end; VT: to its end); delay = the time of the tick before the alarm was emitted minus the
run's first reference V; "other" = vrun alarms matching neither (false runs).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import wfdb

from telediag.dsp import alarms as AL
from telediag.engine.config import load_config
from telediag.engine.stage import StreamSpec
from telediag.evaluation.wfdb_io import data_dir, list_records
from telediag.transports.wire import Chunk

BEATS = set("NLRBAaJSVrFejnE/fQ?")


def mix_ma(x: np.ndarray, ann: Any, fs: float, snr_db: float, ma: np.ndarray) -> np.ndarray:
    """``x`` plus nstdb ``ma`` scaled per lead to ``snr_db`` (nstdb's SNR: QRS p-p^2/8 over noise power)."""
    w, nz, k = int(0.05 * fs), ma[: len(x)], np.empty(x.shape[1])
    idx = [s for s, c in zip(ann.sample, ann.symbol, strict=True) if c == "N" and w <= s < len(x) - w]
    for j in range(x.shape[1]):
        pp = float(np.median([np.ptp(x[s - w:s + w, j]) for s in idx]))
        n = nz[:, j] - np.convolve(nz[:, j], np.ones(int(fs)) / int(fs), "same")
        k[j] = np.sqrt((pp**2 / 8) / np.mean(n**2)) / 10 ** (snr_db / 20)
    return x + nz * k


def record_calls(x: np.ndarray, fs: float, ch: tuple[str, ...], un: tuple[str, ...]) -> list[Any]:
    """Run the stage over ``x``; return [(fs, params, origin, calls)] for each RhythmAlarms it made."""
    made: list[Any] = []
    orig = {k: getattr(AL.RhythmAlarms, k) for k in ("beats", "signal", "gap", "tick")}

    def wrap(k: str) -> Any:
        def f(self: Any, *a: Any, **kw: Any) -> Any:
            if not any(m[4] is self for m in made):
                made.append((self.fs, self.p, self.origin, [], self))
            next(m for m in made if m[4] is self)[3].append((k, a, kw))
            return orig[k](self, *a, **kw)
        return f

    analysis = next(s for s in load_config().pipelines["ecg"] if s.name == "analysis")
    try:
        for k in orig:
            setattr(AL.RhythmAlarms, k, wrap(k))
        st = analysis.build()
        st.open(StreamSpec("s/ecg", "ecg", fs, ch, un))
        n = int(fs)
        for i, s in enumerate(range(0, len(x), n)):
            st.process(Chunk.signal("ecg", "s/ecg", i, round(s / fs * 1e9), x[s:s + n], fs, ch, un))
        st.close()
    finally:
        for k, f in orig.items():
            setattr(AL.RhythmAlarms, k, f)
    return [m[:4] for m in made]


def replay(made: list[Any], guard: float) -> list[tuple[float, float]]:
    """(onset s, emitted at s) of every vrun alarm with ``vrun_guard_s = guard``."""
    ev: list[tuple[float, float]] = []
    for fs, p, origin, calls in made:
        q = AL.AlarmParams(**{**{f.name: getattr(p, f.name) for f in fields(AL.AlarmParams)},
                              "vrun_guard_s": guard})
        a, now = AL.RhythmAlarms(fs, q, origin=origin), 0
        for k, args, kw in calls:
            now = args[0] if k == "tick" else now
            ev += [(e.onset / fs, now / fs) for e in getattr(a, k)(*args, **kw) or []
                   if e.type == "vrun" and e.state == "on"]
    return ev


def reference(ann: Any, fs: float) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    runs, cur = [], []
    for s, c in [(s, c) for s, c in zip(ann.sample, ann.symbol, strict=True) if c in BEATS] + [(1 << 40, "N")]:
        if c == "V":
            cur.append(s)
            continue
        if len(cur) >= 3:
            runs.append((cur[0] / fs, cur[-1] / fs))
        cur = []
    vt = []
    for i, (s, a) in enumerate(zip(ann.sample, ann.aux_note, strict=True)):
        if a.startswith("(VT"):
            e = next((t for t, b in zip(ann.sample[i + 1:], ann.aux_note[i + 1:], strict=True) if b.startswith("(")),
                     ann.sample[-1])
            vt.append((s / fs, e / fs))
    return runs, vt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--snr", type=float, nargs="*", default=[6.0, 0.0])
    ap.add_argument("--guards", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--records", nargs="*", default=None)
    args = ap.parse_args()
    base = args.data or data_dir()
    if base is None:
        raise SystemExit("no data directory (--data or TELEDIAG_DATA)")
    mitdb, nstdb = base / "mitdb", base / "nstdb"
    ma = wfdb.rdrecord(str(nstdb / "ma")).p_signal
    recs = args.records or list_records(mitdb)
    for tag in ["clean", *[f"{s:g} dB" for s in args.snr]]:
        tot: dict[float, list[Any]] = {g: [0, 0, 0, 0, 0, []] for g in args.guards}  # runs, hit, vt, hit, other, delays
        for r in recs:
            rec, ann = wfdb.rdrecord(str(mitdb / r)), wfdb.rdann(str(mitdb / r), "atr")
            x, fs = rec.p_signal, float(rec.fs)
            if tag != "clean":
                x = mix_ma(x, ann, fs, float(tag.split()[0]), ma)
            made = record_calls(x, fs, tuple(rec.sig_name), tuple(rec.units))
            runs, vt = reference(ann, fs)
            line = []
            for g in args.guards:
                ev, t = replay(made, g), tot[g]
                hit = [[e for e in ev if a - 1 <= e[0] <= b + 0.5] for a, b in runs]
                vhit = [[e for e in ev if a - 1 <= e[0] <= b] for a, b in vt]
                used = {e for h in hit + vhit for e in h}
                for i, v in enumerate((len(runs), sum(map(bool, hit)), len(vt), sum(map(bool, vhit)),
                                       len(ev) - len(used))):
                    t[i] += v
                t[5] += [h[0][1] - a for h, (a, _) in zip(hit, runs, strict=True) if h]
                line.append(f"g{g:g}: {sum(map(bool, hit))}/{len(runs)} {sum(map(bool, vhit))}/{len(vt)} +{len(ev) - len(used)}")
            print(f"{tag:>6} {r}: " + "  ".join(line), flush=True)
        for g, t in tot.items():
            d = [float(v) for v in t[5]]
            print(f"== {tag} vrun_guard_s={g:g}: runs>=3V {t[1]}/{t[0]}  VT episodes {t[3]}/{t[2]}  other (false) {t[4]}"
                  f"  delay median {np.median(d) if d else float('nan'):.2f} s max {max(d) if d else float('nan'):.2f} s",
                  flush=True)
    for r in ("118e24", "118e12", "118e00", "118e_6"):
        if (nstdb / f"{r}.hea").exists():
            rec = wfdb.rdrecord(str(nstdb / r))
            made = record_calls(rec.p_signal, float(rec.fs), tuple(rec.sig_name), tuple(rec.units))
            print(f"== nstdb {r} (no V beats): vrun alarms " +
                  "  ".join(f"g{g:g}: {len(replay(made, g))}" for g in args.guards), flush=True)


if __name__ == "__main__":
    main()
