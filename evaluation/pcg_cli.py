"""Offline heart-sound analysis of WAV files or WFDB records to one JSON file each.

For every INPUT, writes ``DIR/<name>.json``::

    {"segments": [{"start": s, "end": s, "state": "S1"|"systole"|"S2"|"diastole"}, ...],
     "heart_rate_bpm": ..., "abnormal_prob": ..., "label": "normal"|"abnormal"|"uncertain",
     "verdict": "abnormal 0.82"|"normal 0.91"|"uncertain",
     "systolic_interval_s": ..., "diastolic_interval_s": ..., "quality": ...,
     "duration_s": ..., "fs": ..., "source": "<input path>"}

Times are seconds from the start of the file; unknown values are ``null``. ``abnormal_prob``
and ``label`` come from the abnormality classifier (``telediag.models.pcg_abnormal``) and are
``null`` when it is not installed (or failed on that file: then ``abnormal_error`` says why);
``label`` is ``"uncertain"`` when the recording is too poor for a decision, and ``verdict`` is
the label with the probability of that label (``abnormal_prob`` for abnormal,
``1 - abnormal_prob`` for normal). A file that cannot be read or analysed is reported on
stderr and skipped; the others are still written, and the exit status is 1.

Example::

    telediag analyze pcg ../shared/data/pcg2016/training-a/a000*.wav --out-dir out/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from telediag.errors import TelediagError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``telediag analyze pcg``."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="WAV file, or WFDB record (path with or without .hea)")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="where to write <name>.json (default .)")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the abnormality classifier (abnormal_prob and label null)")
    p.add_argument("--quiet", action="store_true", help="no per-file summary lines")
    p.add_argument("--edf", default=None, metavar="OUT",
                   help="also write the heart sounds with S1/systole/S2/diastole and the abnormality result "
                        "as EDF+/BDF+ annotations: OUT file, or OUT/<name>.edf for several inputs")


def analyze_file(path: str | Path, *, classify: bool = True) -> dict[str, Any]:
    """The issue-5 JSON document of one heart-sound file.

    Raises
    ------
    telediag.errors.DataError
        Unreadable file or a rate/format the chain cannot process.

    Examples
    --------
    >>> doc = analyze_file("../shared/data/pcg2016/training-a/a0001.wav")  # doctest: +SKIP
    >>> sorted(doc)[:3]  # doctest: +SKIP
    ['abnormal_prob', 'diastolic_interval_s', 'duration_s']
    """
    from telediag.engine.stages.pcg import load_abnormality_model, verdict_text
    from telediag.evaluation.pcg_analyze import analyze_pcg, read_pcg

    res = analyze_pcg(path)
    prob: float | None = None
    label: str | None = None
    error: str | None = None
    model = load_abnormality_model() if classify else None
    if model is not None:
        x, fs = read_pcg(path)
        try:
            prob, label = model.predict(x, fs)
        except Exception as e:  # the segmentation stands; the classifier's failure is reported
            error = f"{model.name}: {type(e).__name__}: {e}"[:500]
    doc = {
        "segments": res["segments"],
        "heart_rate_bpm": res["heart_rate_bpm"],
        "abnormal_prob": prob,
        "label": label,
        "verdict": verdict_text(prob, label),
        "systolic_interval_s": res["systolic_interval_s"],
        "diastolic_interval_s": res["diastolic_interval_s"],
        "quality": res["quality"],
        "duration_s": res["duration_s"],
        "fs": res["fs"],
        "source": str(path),
    }
    if error is not None:
        doc["abnormal_error"] = error
    return doc


def _name(path: str) -> str:
    p = Path(path)
    return p.stem if p.suffix.lower() in (".wav", ".hea", ".dat") else p.name


def run(args: argparse.Namespace) -> int:
    """Run ``telediag analyze pcg``; 0 when every input was written, 1 otherwise."""
    from telediag.engine.stages.pcg import abnormality_unavailable_reason

    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TelediagError(f"--out-dir {out_dir}: cannot create it ({e})") from e
    if not args.no_classifier and abnormality_unavailable_reason() and not args.quiet:
        print(f"telediag analyze pcg: abnormal_prob/label will be null: {abnormality_unavailable_reason()}",
              file=sys.stderr)
    failed: list[str] = []
    names: dict[str, str] = {}
    for path in args.inputs:
        name = _name(path)
        if name in names:
            print(f"telediag analyze pcg: {path}: skipped, its output {name}.json is already written for "
                  f"{names[name]}", file=sys.stderr)
            failed.append(path)
            continue
        try:
            doc = analyze_file(path, classify=not args.no_classifier)
        except TelediagError as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            print(f"telediag analyze pcg: {msg}", file=sys.stderr)
            failed.append(path)
            continue
        except Exception as e:  # a classifier bug: report, continue with the other inputs
            print(f"telediag analyze pcg: {path}: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(path)
            continue
        target = out_dir / f"{name}.json"
        try:
            target.write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            print(f"telediag analyze pcg: {path}: cannot write {target} ({e})", file=sys.stderr)
            failed.append(path)
            continue
        names[name] = path
        if getattr(args, "edf", None):
            from telediag.evaluation.pcg_analyze import read_pcg
            from telediag.exports.edf import edf_target, pcg_analysis_to_edf

            x, fs = read_pcg(path)
            edf = pcg_analysis_to_edf(x, fs, doc, edf_target(args.edf, name, len(args.inputs)), name=name)
            if not args.quiet:
                print(f"{edf.path}: {edf.file_type}, {edf.annotations} annotations")
        if "abnormal_error" in doc:
            print(f"telediag analyze pcg: {path}: classifier failed, abnormal_prob/label null: "
                  f"{doc['abnormal_error']}", file=sys.stderr)
        if not args.quiet:
            hr = doc["heart_rate_bpm"]
            print(f"{target}: {len(doc['segments'])} segments, heart rate "
                  f"{'-' if hr is None else f'{hr:.1f}'} bpm, quality {doc['quality']:.2f}, "
                  f"label {doc['label']}")
    if failed:
        print(f"telediag analyze pcg: {len(failed)} of {len(args.inputs)} input(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
