"""Physiological timing alarms (asystole, pause, brady) the engine's ECG stage raises on whole records.

Usage::

    python benchmarks/alarm_sweep.py [--data DIR] [--out alarms.json]

Runs the built-in ``ecg_analysis`` stage (classification on) over every MIT-BIH record in
``DIR/mitdb`` and the noise stress records ``DIR/nstdb/118e*`` in 1 s chunks and prints the
asystole / pause / brady alarms it raises (none of these records has an asystole; MIT-BIH 116 and
208 get a false one after an artefact, safety audit). ``--out`` saves them to compare two checkouts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import wfdb

from telediag.engine.config import load_config
from telediag.engine.stage import StreamSpec
from telediag.evaluation.wfdb_io import data_dir, list_records
from telediag.transports.wire import Chunk

KINDS = ("asystole", "pause", "brady")


def sweep(base: Path) -> dict[str, list[tuple[str, float]]]:
    analysis = next(s for s in load_config().pipelines["ecg"] if s.name == "analysis")
    res: dict[str, list[tuple[str, float]]] = {}
    for db, names in (("mitdb", None), ("nstdb", ["118e24", "118e12", "118e00", "118e_6"])):
        d = base / db
        for r in names or list_records(d):
            if not (d / f"{r}.hea").exists():
                continue
            rec = wfdb.rdrecord(str(d / r))
            x, fs, ch, un = rec.p_signal, float(rec.fs), tuple(rec.sig_name), tuple(rec.units)
            st = analysis.build()
            st.open(StreamSpec("s/ecg", "ecg", fs, ch, un))
            n = int(fs)
            out: list[tuple[str, float]] = []
            for i, k in enumerate(range(0, len(x), n)):
                for c in st.process(Chunk.signal("ecg", "s/ecg", i, round(k / fs * 1e9), x[k:k + n], fs, ch,
                                                 un)).records:
                    b = c.body
                    if c.kind == "alarm" and b["type"] in KINDS and (b["state"] == "on" or b["type"] == "pause"):
                        out.append((b["type"], round(b["onset_sample"] / fs, 1)))
            res[f"{db}/{r}"] = out
            print(f"{db}/{r}", out, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    base = args.data or data_dir()
    if base is None:
        print("no data: pass --data DIR or set TELEDIAG_DATA")
        return 2
    res = sweep(Path(base))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
