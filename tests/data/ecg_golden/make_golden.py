"""Capture the ``ecg_analysis`` stage's outputs on real records (the golden files of
``tests/test_ecg_golden.py``).

Written once, on the monolithic stage of commit c94b773 (before issue 15's split into
components), so that the refactor can be checked against what the stage published before:

    .venv/bin/python tests/data/ecg_golden/make_golden.py [DATA_DIR]

Each ``<record>_<mode>.json.gz`` holds the flattened records (:func:`collect`) of the ``SECONDS`` of record ``<record>`` from
``start_s`` on (lead 0, 1 s float64 chunks, default parameters,
``classify`` off or on).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys
from pathlib import Path

from telediag.engine.stage import StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
from telediag.evaluation.ecg_analyze import collect, run_pipeline
from telediag.sources.readers import Recording, read_wfdb
from telediag.sources.replay import chunks_of

RECORDS = (("mitdb", "119", 0), ("mitdb", "203", 0), ("mitdb", "208", 0), ("nstdb", "118e_6", 290))
SECONDS = 240
HERE = Path(__file__).resolve().parent


def run(rec: Recording, classify: str) -> dict:
    st = EcgAnalysis(EcgAnalysisParams(classify=classify))
    stream = f"{rec.name}/ecg"
    st.open(StreamSpec(stream, "ecg", rec.fs, tuple(rec.channels), tuple(rec.units)))
    chunks = (c for _, c in chunks_of(rec, "ecg", stream, chunk_ms=1000.0, start_ns=0, dtype="float64",
                                      session="golden"))
    return collect(run_pipeline([st], chunks))


def main(data: Path, only: tuple[str, ...] = ()) -> None:
    for db, name, start_s in RECORDS:
        if only and name not in only:
            continue
        full = read_wfdb(data / db / name)
        a = int(start_s * full.fs)
        rec = dataclasses.replace(full, signal=full.signal[a:a + int(SECONDS * full.fs)])
        for mode in ("off", "on"):
            flat = run(rec, mode)
            path = HERE / f"{name}_{mode}.json.gz"
            with gzip.open(path, "wt", encoding="utf-8") as f:
                json.dump(flat, f, separators=(",", ":"))
            print(path, {k: len(v) for k, v in flat.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[4] / "shared" / "data", tuple(sys.argv[2:]))
