"""Digest of everything the ECG chain publishes, to compare two checkouts (speed work: identical outputs).

Runs the default ``ecg`` pipeline (classifier on/off, AF on/off) on real records with a NaN
stretch and a timestamp gap, and prints one SHA-256 per configuration over every published
record (kind, time, full body: beats, labels, probabilities, HR, HRV, quality, alarms, events).
Run it in two checkouts (e.g. ``git worktree add /tmp/before <commit>``, run there with
``PYTHONPATH`` pointing at that tree's package) and compare the lines: equal digests mean
byte-identical outputs. ``tests/test_ecg_golden.py`` is the CI guard; this covers more.

    python benchmarks/ecg_outputs_digest.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (record, seconds, chunk seconds)
CASES = (("mitdb/208", 600, 1.0), ("mitdb/201", 900, 1.0), ("mitdb/119", 300, 0.25), ("mitdb/203", 300, 1.0))


def digests(data: Path) -> list[str]:
    """One line per (record, classify, rhythm): counts per record kind and the SHA-256 of all records."""
    import bench_ecg_chain as b

    from telediag.sources.readers import read_wfdb
    from telediag.transports.wire import Chunk

    lines = []
    for rec, secs, chunk_s in CASES:
        r = read_wfdb(data / rec)
        fs = r.fs
        x = np.array(r.signal[: int(secs * fs)], dtype=np.float64)
        x[int(100 * fs):int(104 * fs), 0] = np.nan  # leads off on the detection lead
        step = int(fs * chunk_s)
        chunks = [Chunk.signal("ecg", "bench/ecg", k, round(i * 1e9 / fs) + (5 * 10**9 if i > 200 * fs else 0),
                               x[i:i + step], fs, ("MLII", "V1"), ("mV", "mV"))  # a 5 s gap after 200 s
                  for k, i in enumerate(range(0, x.shape[0], step))]
        for classify, rhythm in ((True, True), (False, True), (True, False)):
            stages = b._stages(fs, classify=classify, rhythm=rhythm)
            recs = []
            for c in chunks:
                y = c
                for s in stages:
                    o = s.process(y)
                    recs += [(q.kind, q.t0_ns, q.body) for q in o.records]
                    y = o.signal
            for s in stages:
                recs += [(q.kind, q.t0_ns, q.body) for q in s.close().records]
            kinds: dict[str, int] = {}
            for k, _, _ in recs:
                kinds[k] = kinds.get(k, 0) + 1
            h = hashlib.sha256(repr(recs).encode()).hexdigest()[:20]
            lines.append(f"{rec} classify={classify} rhythm={rhythm} {dict(sorted(kinds.items()))} {h}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    for line in digests(args.data):
        print(line, flush=True)


if __name__ == "__main__":
    main()
