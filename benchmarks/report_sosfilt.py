"""Print a Markdown table of streaming throughput, telediag SosFilter vs scipy.signal.sosfilt.

Same cells and workload as ``benchmarks/bench_sosfilt.py`` (8th-order 0.5-40 Hz band-pass at
360 Hz, 36,000 samples per channel per round, cut into chunks), measured in one process with
``timeit``-style repetition: each cell runs ``--repeat`` rounds per implementation, the two
implementations interleaved, and the best (minimum) round is reported, which is the least
disturbed by other load on the machine.

Run from the repository root::

    python benchmarks/report_sosfilt.py [--repeat 7] [--total 36000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sosfilt import (  # noqa: E402
    CHANNELS,
    CHUNKS,
    TOTAL_SAMPLES,
    bandpass_8th_order,
    make_chunks,
    make_stream,
)


def best_round_s(run, repeat: int) -> float:
    """Minimum wall time of ``repeat`` calls of ``run`` (after one untimed call)."""
    run()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="rounds per cell and implementation")
    ap.add_argument("--total", type=int, default=TOTAL_SAMPLES, help="samples per round")
    args = ap.parse_args(argv)
    sos = bandpass_8th_order()
    print(
        f"8th-order Butterworth band-pass 0.5-40 Hz @ 360 Hz ({sos.shape[0]} biquads), "
        f"{args.total} samples/channel/round, best of {args.repeat}; "
        f"Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"Numba {numba.__version__}, {platform.machine()}\n"
    )
    print(
        "| chunk | channels | telediag (Msample/s) | SciPy (Msample/s) | ours / SciPy | "
        "telediag µs/call | SciPy µs/call |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for chunk in CHUNKS:
        for n_ch in CHANNELS:
            chunks = make_chunks(chunk, n_ch, total=args.total)
            n_calls = len(chunks)
            t_ours = best_round_s(make_stream("telediag", sos, chunks), args.repeat)
            t_ref = best_round_s(make_stream("scipy", sos, chunks), args.repeat)
            samples = args.total * n_ch
            print(
                f"| {chunk} | {n_ch} | {samples / t_ours / 1e6:.2f} | {samples / t_ref / 1e6:.2f} "
                f"| **{t_ref / t_ours:.1f}×** | {t_ours / n_calls * 1e6:.2f} "
                f"| {t_ref / n_calls * 1e6:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
