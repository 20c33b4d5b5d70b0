"""Offline ECG analysis that runs the engine's own ``ecg`` pipeline stages.

Nothing here re-implements the analysis: :func:`analyze_recording` builds the ``ecg``
pipeline of an engine configuration (:func:`telediag.engine.config.load_config`: the
built-in default or a user file), opens every stage on the record's stream spec, feeds the
record through them in chunks exactly as a :class:`telediag.engine.worker.Worker` does
(each stage gets the previous stage's ``signal`` output; ``close()`` at the end) and collects
the records the stages publish.  So the beats, heart rate, HRV and quality of an offline run
equal those of the engine replaying the same samples (chunk timestamps from
:func:`telediag.sources.replay.chunks_of` with ``start_ns = 0``, so ``t_ns`` is the time since
the start of the record).  The engine's ``ecg_analysis`` stage is chunk invariant, so the
chunk length only changes how results are grouped, never what they are; float32 transport
(the replay default) rounds the samples and may move a beat by a sample or change a
borderline decision, so compare against a float64 replay for exact equality.

Examples
--------
>>> import numpy as np
>>> from telediag.sources.readers import Recording
>>> fs = 360.0
>>> t = np.arange(int(30 * fs)) / fs
>>> x = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.01**2))[:, None]
>>> res = analyze_recording(Recording(x, fs, ("II",), ("mV",), "demo"))
>>> len(res["beats"]), res["beats"][0]["sample"], res["heart_rate"]["readings"][-1]["hr_bpm"]
(37, 144, 75.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from telediag import __version__
from telediag.engine.config import Config, StageConfig, load_config
from telediag.engine.stage import Stage, StreamSpec
from telediag.engine.stages.ecg_analysis import EcgAnalysis, EcgAnalysisParams
from telediag.errors import ConfigError, DataError
from telediag.sources.readers import Recording
from telediag.sources.replay import chunks_of
from telediag.transports.wire import Chunk

__all__ = [
    "analyze_recording",
    "build_pipeline",
    "collect",
    "delay_summary",
    "rhythm_episodes",
    "run_pipeline",
    "wfdb_annotation_rows",
    "write_json",
    "with_classify",
    "write_wfdb_annotations",
]


def build_pipeline(config: Config, spec: StreamSpec, lead: int | None = None) -> list[Stage]:
    """Build and open the ``ecg`` pipeline of ``config`` for ``spec``.

    Parameters
    ----------
    config : Config
        Engine configuration; its ``ecg`` pipeline must contain an ``ecg_analysis`` stage.
    spec : StreamSpec
        The stream the record is sent as.
    lead : int, optional
        Overrides the ``lead`` of every ``ecg_analysis`` stage.

    Returns
    -------
    list of Stage
        Opened stages, in pipeline order.

    Raises
    ------
    telediag.errors.ConfigError
        No ``ecg_analysis`` stage, or a stage refuses the stream (e.g. lead out of range).
    """
    sections: Sequence[StageConfig] = config.pipelines.get("ecg", ())
    if not any(sc.stage_type is EcgAnalysis for sc in sections):
        raise ConfigError(
            f"{config.source}: the ecg pipeline has no 'ecg_analysis' stage "
            f"(stages: {[sc.name for sc in sections]})"
        )
    stages: list[Stage] = []
    s = spec
    for sc in sections:
        params = sc.params
        if lead is not None and isinstance(params, EcgAnalysisParams):
            params = dataclasses.replace(params, lead=lead)
        stage = sc.stage_type(params, name=f"pipeline.ecg.{sc.name}")
        s = stage.open(s)
        stages.append(stage)
    return stages


def with_classify(config: Config | None, mode: str) -> Config:
    """``config`` (default: the built-in one) with ``classify = mode`` in every ``ecg_analysis`` stage.

    Examples
    --------
    >>> cfg = with_classify(None, "off")
    >>> [sc.params.classify for sc in cfg.pipelines["ecg"] if sc.stage_type is EcgAnalysis]
    ['off']
    """
    cfg = config if config is not None else load_config()
    if mode not in ("on", "off", "auto"):
        raise ConfigError(f"classify must be 'on', 'off' or 'auto', got {mode!r}")
    ecg = tuple(dataclasses.replace(sc, params=dataclasses.replace(sc.params, classify=mode))
                if sc.stage_type is EcgAnalysis else sc for sc in cfg.pipelines.get("ecg", ()))
    return dataclasses.replace(cfg, pipelines={**cfg.pipelines, "ecg": ecg})


def run_pipeline(stages: Sequence[Stage], chunks: Iterable[Chunk]) -> list[Chunk]:
    """Feed ``chunks`` through ``stages`` as the engine worker does; return all records.

    Examples
    --------
    >>> run_pipeline([], [])
    []
    """
    records: list[Chunk] = []
    for chunk in chunks:
        x: Chunk | None = chunk
        for stage in stages:
            if x is None:
                break
            out = stage.process(x)
            records.extend(out.records)
            x = out.signal
    for stage in stages:
        records.extend(stage.close().records)
    return records


def collect(records: Iterable[Chunk]) -> dict[str, list[dict[str, Any]]]:
    """Flatten the records of one stream: beats, HR readings, HRV ticks, quality rows, events.

    Returns
    -------
    dict
        ``beats``, ``suppressed``, ``hr``, ``hrv``, ``blocks``, ``events`` (quality events
        from ``event`` records) and ``alarms`` lists, in publishing order.

    Examples
    --------
    >>> sorted(collect([]))
    ['alarms', 'beats', 'blocks', 'events', 'hr', 'hrv', 'suppressed']
    """
    out: dict[str, list[dict[str, Any]]] = {
        "beats": [], "suppressed": [], "hr": [], "hrv": [], "blocks": [], "events": [], "alarms": []
    }
    for r in records:
        b = r.body
        if r.kind == "beats":
            out["beats"].extend(b["beats"])
        elif r.kind == "hr":
            out["hr"].extend(b["readings"])
        elif r.kind == "hrv":
            out["hrv"].append(b)
        elif r.kind == "quality":
            out["blocks"].extend(b["blocks"])
            out["suppressed"].extend(b["suppressed"])
        elif r.kind == "event" and b.get("type") == "quality":
            if b.get("reason") != "stream_closed":  # a record's end is not the end of an event
                out["events"].append(b)
        elif r.kind == "alarm":
            if not (isinstance(b.get("detail"), dict) and b["detail"].get("reason") == "stream_closed"):
                out["alarms"].append(b)
    return out


def _pct(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(a.max())}


def delay_summary(beats: Sequence[dict[str, Any]], skip_s: float = 0.0) -> dict[str, Any]:
    """Distribution of the beat decision delays (s): detector confirmation and end to end.

    Parameters
    ----------
    beats : sequence of dict
        Beat dicts as published (``sample``, ``confirm_delay_s``, ``delay_s``).
    skip_s : float
        Ignore beats before this time (e.g. the detector's 2 s learning period), using the
        sample rate implied by ``delay_s`` and ``release_sample``.

    Examples
    --------
    >>> delay_summary([{"sample": 0, "confirm_delay_s": 0.3, "delay_s": 0.5}])["end_to_end"]["p50"]
    0.5
    """
    sel = [b for b in beats if b.get("time_s", math.inf) >= skip_s] if skip_s > 0 else list(beats)
    return {
        "confirm": _pct([b["confirm_delay_s"] for b in sel]),
        "end_to_end": _pct([b["delay_s"] for b in sel]),
    }


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def analyze_recording(
    rec: Recording,
    *,
    config: Config | None = None,
    lead: int | None = None,
    chunk_s: float = 1.0,
    source: str | None = None,
) -> dict[str, Any]:
    """Analyse a recording with the engine's ``ecg`` pipeline; return a JSON-able dict.

    Parameters
    ----------
    rec : Recording
        The record (physical units; NaN marks missing samples).
    config : Config, optional
        Engine configuration (default: :func:`~telediag.engine.config.load_config`).
    lead : int, optional
        Detection lead (default: the config's ``lead``).
    chunk_s : float
        Chunk length fed to the stages (0 < chunk_s <= 60); does not change the results.
    source : str, optional
        Input path recorded in the result.

    Returns
    -------
    dict
        ``version``, ``record``, ``source``, ``fs``, ``n_samples``, ``duration_s``,
        ``channels``, ``units``, ``lead``, ``detector``, ``config``, ``beats`` (``sample``,
        ``time_s``, ``label``, ``probs``, ``confirm_sample``, ``release_sample``,
        ``delay_s``, ``confirm_delay_s``), ``suppressed``, ``heart_rate``, ``hrv``,
        ``quality`` (events, per-lead SQI summary, blocks) and ``delay``.

    Raises
    ------
    telediag.errors.DataError
        Empty record or bad ``chunk_s``.
    telediag.errors.ConfigError
        Bad configuration or lead index.
    """
    if not (math.isfinite(chunk_s) and 0 < chunk_s <= 60):
        raise DataError(f"chunk_s must be in (0, 60] seconds, got {chunk_s}")
    sig = np.asarray(rec.signal)
    if sig.ndim != 2 or sig.shape[0] == 0 or sig.shape[1] == 0:
        raise DataError(f"{rec.name}: empty record (signal shape {sig.shape})")
    cfg = config if config is not None else load_config()
    stream = f"{rec.name}/ecg"
    spec = StreamSpec(stream, "ecg", float(rec.fs), tuple(rec.channels), tuple(rec.units))
    stages = build_pipeline(cfg, spec, lead)
    analysis = next(s for s in stages if isinstance(s, EcgAnalysis))
    ap = analysis.params
    assert isinstance(ap, EcgAnalysisParams)
    chunks = (c for _, c in chunks_of(rec, "ecg", stream, chunk_ms=chunk_s * 1000.0, start_ns=0,
                                      dtype="float64", session="offline"))
    flat = collect(run_pipeline(stages, chunks))
    fs = float(rec.fs)
    episodes = rhythm_episodes(flat["alarms"], int(sig.shape[0]))
    beats = [
        {"sample": b["sample"], "time_s": b["sample"] / fs, "label": b["label"], "probs": b["probs"],
         "usable": b.get("usable", True),
         "confirm_sample": b["confirm_sample"], "release_sample": b["release_sample"],
         "confirm_delay_s": b["confirm_delay_s"], "delay_s": b["delay_s"]}
        for b in flat["beats"]
    ]
    _af_beats_are_normal(beats, episodes)
    from telediag.dsp.hrv import rr_series, time_domain

    good = [b for b in beats if b["usable"]]
    samples = np.array([b["sample"] for b in good], dtype=np.int64)
    labels = None if all(b["label"] is None for b in good) else [b["label"] or "N" for b in good]
    td = time_domain(rr_series(samples, fs, labels))
    blocks = flat["blocks"]
    per_lead: dict[str, Any] = {}
    for c, name in enumerate(rec.channels):
        sqi = np.array([np.nan if b["sqi"][c] is None else b["sqi"][c] for b in blocks], dtype=np.float64)
        usable = np.array([bool(b["usable"][c]) for b in blocks], dtype=bool)
        per_lead[name] = {
            "mean_sqi": _num(np.nanmean(sqi)) if sqi.size and np.isfinite(sqi).any() else None,
            "min_sqi": _num(np.nanmin(sqi)) if sqi.size and np.isfinite(sqi).any() else None,
            "usable_fraction": float(usable.mean()) if usable.size else None,
        }
    events = _merge_events(flat["events"])
    detector = analysis.state.detector
    return {
        "version": __version__,
        "record": rec.name,
        "source": source,
        "fs": fs,
        "n_samples": int(sig.shape[0]),
        "duration_s": sig.shape[0] / fs,
        "channels": list(rec.channels),
        "units": list(rec.units),
        "lead": {"index": ap.lead, "name": rec.channels[ap.lead]},
        "detector": {
            "name": "telediag.dsp.qrs.QRSDetector (Pan-Tompkins style, streaming)",
            "params": dataclasses.asdict(detector.params),
            "detection_delay_bound_s": detector.detection_delay_s,
        },
        "config": {
            "source": cfg.source,
            "chunk_s": chunk_s,
            "stages": [{"name": s.name, "stage": s.type_name, "params": _jsonable(dataclasses.asdict(s.params))}
                       for s in stages],
        },
        "beats": beats,
        "suppressed": flat["suppressed"],
        "heart_rate": {"rule": ap.hr_rule, "n_intervals": ap.hr_intervals, "asystole_s": ap.hr_asystole_s,
                       "every_s": ap.hr_every_s, "readings": flat["hr"]},
        "hrv": {
            "window_s": ap.hrv_window_s,
            "rolling": flat["hrv"],
            "whole_record": {k: (_num(v) if isinstance(v, float) else v)
                             for k, v in dataclasses.asdict(td).items()},
        },
        "quality": {
            "hop_s": analysis.state.quality.hop / fs,
            "events": events,
            "sqi": per_lead,
            "blocks": blocks,
        },
        "alarms": flat["alarms"],
        "classifier": {"mode": ap.classify, "error": analysis.classifier_error or None},
        "rhythm": {"episodes": episodes,
                   "af_s": sum((e["end_sample"] - e["onset_sample"]) / fs for e in episodes if e["rhythm"] == "AFIB")},
        "classes": {lab: sum(1 for b in beats if b.get("label") == lab) for lab in ("N", "S", "V", "F", "Q")},
        "delay": delay_summary(beats),
        "counters": {"beats": len(beats), "usable": len(good), "unusable": len(beats) - len(good),
                     "suppressed": len(flat["suppressed"])},
    }


_RHYTHM_OF_ALARM = {"afib": "AFIB", "aflutter": "AFL"}


def rhythm_episodes(alarms: Sequence[dict[str, Any]], n_samples: int) -> list[dict[str, Any]]:
    """Rhythm episodes (``AFIB``, ``AFL``) from the alarm bodies: one per on/off pair; an
    episode still on at the end of the record runs to ``n_samples``.

    Examples
    --------
    >>> rhythm_episodes([{"type": "afib", "state": "on", "onset_sample": 10, "end_sample": None},
    ...                  {"type": "afib", "state": "off", "onset_sample": 10, "end_sample": 90}], 100)
    [{'rhythm': 'AFIB', 'onset_sample': 10, 'end_sample': 90}]
    """
    out: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    for a in alarms:
        rh = _RHYTHM_OF_ALARM.get(a["type"])
        if rh is None:
            continue
        if a["state"] == "on":
            ep = {"rhythm": rh, "onset_sample": int(a["onset_sample"]), "end_sample": None}
            open_[rh] = ep
            out.append(ep)
        elif rh in open_:
            open_.pop(rh)["end_sample"] = int(a["end_sample"])
    for ep in out:
        if ep["end_sample"] is None:
            ep["end_sample"] = int(n_samples)
    return out


def _af_beats_are_normal(beats: list[dict[str, Any]], episodes: Sequence[dict[str, Any]]) -> None:
    """Offline, the whole AF episode is known: an ``S`` label anywhere inside it becomes ``N``
    (live, the stage relabels from the AF decision on)."""
    spans = [(e["onset_sample"], e["end_sample"]) for e in episodes if e["rhythm"] in ("AFIB", "AFL")]
    if not spans:
        return
    for b in beats:
        if b["label"] == "S" and any(a <= b["sample"] < e for a, e in spans):
            b["label"] = "N"


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = str(v)
        elif isinstance(v, dict):
            out[k] = _jsonable(v)
        else:
            out[k] = v
    return out


def _merge_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per quality event: an ``end`` record replaces its ``start`` record."""
    merged: list[dict[str, Any]] = []
    open_idx: dict[tuple[str, int, int], int] = {}
    for ev in events:
        key = (ev["event"], ev["channel"], ev["onset_sample"])
        item = {k: ev[k] for k in ("event", "lead", "channel", "onset_sample", "end_sample")}
        if ev["state"] == "start":
            open_idx[key] = len(merged)
            merged.append(item)
        elif key in open_idx:
            merged[open_idx.pop(key)] = item
        else:
            merged.append(item)
    return merged


def write_json(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/<record>.json``; return its path."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{result['record']}.json"
    path.write_text(json.dumps(result, separators=(",", ":"), allow_nan=False), encoding="utf-8")
    return path


def wfdb_annotation_rows(result: dict[str, Any]) -> list[tuple[int, str, int, str]]:
    """The annotations :func:`write_wfdb_annotations` writes: ``(sample, symbol, subtype, aux)``.

    * every detected beat, usable or not, with its label as symbol (``N`` when unlabelled);
    * noise annotations ``~`` as PhysioNet writes them: at each change of the set of unusable
      leads, subtype = bit mask of the unusable leads (bit ``c``: lead ``c``), and a ``~``
      with subtype 0 where every lead is usable again;
    * rhythm annotations ``+`` with aux ``(AFIB`` at each AF onset and ``(N`` at its end and at
      the first beat of a record that starts outside AF (PhysioNet's rhythm labels).

    Examples
    --------
    >>> res = {"fs": 360.0, "beats": [{"sample": 100, "label": None}, {"sample": 400, "label": "V"}],
    ...        "quality": {"hop_s": 1.0, "blocks": [{"sample": 0, "usable": [True, True]},
    ...                                             {"sample": 360, "usable": [False, True]},
    ...                                             {"sample": 720, "usable": [True, True]}]},
    ...        "rhythm": {"episodes": []}}
    >>> wfdb_annotation_rows(res)
    [(100, '+', 0, '(N'), (100, 'N', 0, ''), (360, '~', 1, ''), (400, 'V', 0, ''), (720, '~', 0, '')]
    """
    rows: list[tuple[int, str, int, str]] = []
    for b in result["beats"]:
        rows.append((int(b["sample"]), b["label"] or "N", 0, ""))
    mask = 0
    for blk in result.get("quality", {}).get("blocks", []):
        m = sum(1 << c for c, u in enumerate(blk["usable"]) if not u)
        if m != mask:
            rows.append((int(blk["sample"]), "~", m, ""))
            mask = m
    episodes = result.get("rhythm", {}).get("episodes", [])
    first = min((r[0] for r in rows if r[1] != "~"), default=None)
    if first is not None and not any(e["onset_sample"] <= first < e["end_sample"] for e in episodes):
        rows.append((first, "+", 0, "(N"))
    for e in episodes:
        rows.append((int(e["onset_sample"]), "+", 0, f"({e['rhythm']}"))
        rows.append((int(e["end_sample"]), "+", 0, "(N"))
    order = {"+": 0, "~": 1}
    rows.sort(key=lambda r: (r[0], order.get(r[1], 2)))
    return rows


def write_wfdb_annotations(result: dict[str, Any], out_dir: str | Path, extension: str) -> Path:
    """Write beats, noise and rhythm annotations as WFDB file ``out_dir/<record>.<extension>``.

    See :func:`wfdb_annotation_rows`. The file is readable with
    ``wfdb.rdann(str(out_dir / record), extension)``; ``telediag score`` reads only its beats.
    """
    import wfdb

    if not extension.isalnum():
        raise DataError(f"--wfdb-ann extension must be letters/digits, got {extension!r}")
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = wfdb_annotation_rows(result)
    if not rows:
        # wrann cannot write an empty file; one "~" (noise/no beats) annotation keeps the file
        # readable and contains no beat
        rows = [(0, "~", 0, "")]
    n_max = int(result.get("n_samples", 0))
    if n_max:  # an episode running to the end is closed on the last sample
        rows = [(min(r[0], n_max - 1), *r[1:]) for r in rows]
    wfdb.wrann(result["record"], extension, np.array([r[0] for r in rows], dtype=np.int64),
               symbol=[r[1] for r in rows], subtype=np.array([r[2] for r in rows], dtype=np.int64),
               aux_note=[r[3] for r in rows], fs=result["fs"], write_dir=str(d))
    return d / f"{result['record']}.{extension}"
