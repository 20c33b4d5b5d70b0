"""CPU per chunk period of N ECG streams: synchronised stream starts vs starts spread out.

Why the 250 ms load test stalls: every stream does some work once per block of its own samples
(the 1 s signal-quality block, the 5 s HRV tick, counted from the stream's first sample). When all
streams start in the same chunk period (as ``load_streams.py`` starts them by default, and as every
source does after an engine restart), that work falls in the same period for every stream, so every
4th 250 ms period carries ~2.5x the CPU of the others. This script runs the engine's ECG chain
(the pipeline of ``load_streams.py``: analysis with beat classification, then the published
filter) in-process, without sockets, and prints the CPU time of each chunk period for all streams:

    python benchmarks/period_load.py --streams 300 --periods 48 --chunk-ms 250
    python benchmarks/period_load.py --streams 300 --periods 48 --chunk-ms 250 --spread

``--spread``: stream ``i`` has already run ``i mod 20`` chunks (5 s at 250 ms) before the measured
window, as if the monitors had been connected at different times. CPU time (``process_time``), so
the figures hold on a loaded machine; one thread, one core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from load_streams import CLASSIFY_PIPELINE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=300)
    ap.add_argument("--periods", type=int, default=48)
    ap.add_argument("--chunk-ms", type=float, default=250.0)
    ap.add_argument("--record", default=str(Path(__file__).parents[1] / ".." / "shared" / "data" / "mitdb" / "119"))
    ap.add_argument("--spread", action="store_true", help="de-phase the streams by 0-19 chunks")
    a = ap.parse_args()

    from telediag.engine.config import load_config
    from telediag.engine.stage import StreamSpec
    from telediag.sources.readers import read_wfdb
    from telediag.transports.wire import Chunk

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CLASSIFY_PIPELINE.format(classify="on"))
    cfg = load_config(f.name)
    Path(f.name).unlink()
    sig = read_wfdb(a.record).signal.astype(np.float32)
    fs = 360.0
    per = int(round(fs * a.chunk_ms / 1000))
    lead = 20 if a.spread else 0
    span = per * (a.periods + lead + 1)
    streams = []
    for i in range(a.streams):
        spec = StreamSpec.of(Chunk.signal("ecg", f"s{i}/ecg", 0, 0, sig[:per], fs, ("MLII", "V1"), ("mV", "mV")))
        stages = []
        for sc in cfg.pipelines["ecg"]:
            st = sc.build()
            spec = st.open(spec)
            stages.append(st)
        streams.append((stages, (i * 7919) % (len(sig) - span), i % 20 if a.spread else 0))

    def step(stages: list, off: int, k: int) -> None:
        o = off + k * per
        x: Chunk | None = Chunk.signal("ecg", "s/ecg", k, int(k * a.chunk_ms * 1e6), sig[o:o + per], fs,
                                       ("MLII", "V1"), ("mV", "mV"))
        for st in stages:
            if x is None:
                break
            x = st.process(x).signal

    for stages, off, pre in streams:  # de-phased streams: their first chunks before the window
        for k in range(pre):
            step(stages, off, k)
    cpu = []
    for k in range(a.periods):
        t = time.process_time()
        for stages, off, pre in streams:
            step(stages, off, k + pre)
        cpu.append((time.process_time() - t) * 1e3)
    c = np.array(cpu[4:])  # the first second: learning periods
    budget = a.chunk_ms
    print(f"{a.streams} streams x {a.chunk_ms:g} ms chunks, {'spread' if a.spread else 'synchronised'} starts: "
          f"CPU per period median {np.median(c):.1f} ms, max {c.max():.1f} ms ({c.max() / np.median(c):.2f}x median; "
          f"{(c > budget).sum()} of {len(c)} periods over the {budget:g} ms budget), mean {c.mean() / a.streams * 1e3:.0f} us "
          "per chunk")
    print("per period (ms):", " ".join(f"{v:.0f}" for v in cpu))


if __name__ == "__main__":
    main()
