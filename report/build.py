"""The teleconsultation report of one recorded session: PDF (A4 landscape) and HTML.

What a specialist reads, in this order:

1. **Summary**: patient and stream ids, start/end (UTC) and duration; per ECG stream the
   heart rate (median, range), HRV (SDNN, RMSSD), beats per class and ectopy burden, AF burden
   and episodes, alarms by type; per PCG stream the heart rate and the abnormality result with
   its confidence; endoscopy detections; the signal-quality summary (usable fraction per lead,
   lost samples); the plain statement "decision support, not a diagnosis".
2. **Per ECG stream**: heart-rate trend with alarm episodes shaded, beat-class counts per
   hour, the AF episode list.
3. **ECG strips** at 25 mm/s and 10 mm/mV on a 1 mm / 5 mm grid (true to scale when the
   PDF is printed at 100 %): 10 s around every alarm onset (the first ``max_alarm_strips``;
   the report says how many were left out) and the most irregular minute (highest RMSSD of
   successive RR intervals over the minute's beats) as six 10-s rows, beats labelled.
4. **Heart sounds**: a phonocardiogram strip with S1/systole/S2/diastole shaded, the
   abnormality result per window with its probability.
5. **Endoscopy**: polyp probability over time with detection episodes, and thumbnails of the
   annotated video at each episode's most confident frame.
6. **Models**: version, sha256 and the measured accuracy stated in each model card.

Needs the ``report`` extra (matplotlib): ``pip install 'telediag[report]'``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from telediag.errors import DataError, TelediagError

__all__ = ["Report", "build_report", "write_pdf", "write_html", "ecg_strip", "STATEMENT"]

STATEMENT = ("Decision support, not a diagnosis: every result here was produced automatically by "
             "telediag and its models and must be reviewed by a qualified clinician against the signals.")
MM = 1 / 25.4  # inches per millimetre
PAGE = (297 * MM, 210 * MM)  # A4 landscape
GRID_MINOR, GRID_MAJOR, TRACE = "#f7c6c6", "#e48f8f", "#111111"
CLASS_COLORS = {"N": "#2b6cb0", "S": "#d69e2e", "V": "#c53030", "F": "#805ad5", "Q": "#718096"}


def _mpl() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - the report extra installs it
        raise TelediagError(f"telediag report needs matplotlib: pip install 'telediag[report]' ({e})") from e
    return plt


def _utc(t_ns: int | None) -> str:
    if t_ns is None:
        return "-"
    return _dt.datetime.fromtimestamp(t_ns / 1e9, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dur(s: float) -> str:
    s = max(0.0, s)
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


@dataclass
class EcgSummary:
    stream: str
    signal: Any  # SignalRecord or None
    beats: list[dict[str, Any]]
    hr: list[tuple[int, float]]  # (t_ns, bpm)
    hrv: dict[str, Any] | None
    alarms: list[tuple[int, int | None, dict[str, Any]]]  # (onset_ns, end_ns, body)
    usable: dict[str, float]  # lead -> usable fraction
    lost_s: float
    af_burden: float | None
    monitored_s: float

    @property
    def classes(self) -> Counter[str]:
        """Beat classes of the beats on usable signal (``usable: false`` beats are counted apart)."""
        return Counter((b.get("label") or "unclassified") for b in self.beats if b.get("usable") is not False)


@dataclass
class PcgSummary:
    stream: str
    signal: Any
    segments: list[dict[str, Any]]
    results: list[dict[str, Any]]
    hr: list[float]
    quality: list[float]


@dataclass
class VideoSummary:
    stream: str
    t_ns: list[int]
    prob: list[float]
    detected: list[bool]
    episodes: list[tuple[int, int, float, int]]  # start, end, max prob, t_ns of the max
    mp4: Path | None
    frames: list[dict[str, Any]]


@dataclass
class Report:
    """Everything the report shows, computed from a recording folder."""

    path: Path
    start_ns: int | None
    end_ns: int | None
    patient: dict[str, Any]
    ecg: list[EcgSummary] = field(default_factory=list)
    pcg: list[PcgSummary] = field(default_factory=list)
    video: list[VideoSummary] = field(default_factory=list)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_alarm_strips: int = 12
    #: source stream -> its own patient id (``None`` when the source sent none)
    patients: dict[str, str | None] = field(default_factory=dict)


def _bodies(recs: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(r.get("t0_ns", 0), r["body"]) for r in recs if isinstance(r.get("body"), dict)]


def build_report(session: Any, *, max_alarm_strips: int = 12) -> Report:
    """Collect the report's content from a :class:`~telediag.exports.session.Session`."""
    from telediag.exports.fhir import _alarm_episodes, model_cards, polyp_episodes

    rep = Report(Path(session.path), session.start_ns, session.end_ns, session.patient(),
                 cards=model_cards(), max_alarm_strips=max_alarm_strips)
    for src, kinds in sorted(session.sources.items()):
        sig = session.signal_of(src)
        smeta = session.meta.get(src) or next((m for k, m in sorted(session.meta.items()) if k.startswith(src + "/")), {})
        rep.patients[src] = smeta.get("patient") or smeta.get("patient_id")
        opened = [b for _, b in _bodies(kinds.get("event", [])) if b.get("type") == "stream_opened"]
        kind = (opened[0].get("kind") if opened else None) or (sig.kind if sig else None) or (
            "video" if "polyp" in kinds else "pcg" if "segments" in kinds else "ecg")
        end_ns = sig.end_ns if sig else max((r.get("t0_ns", 0) for lst in kinds.values() for r in lst), default=0)
        if kind == "ecg":
            beats = [bt for _, b in _bodies(kinds.get("beats", [])) for bt in b.get("beats") or []
                     if isinstance(bt.get("t_ns"), int)]
            hr = [(r["t_ns"], float(r["hr_bpm"])) for _, b in _bodies(kinds.get("hr", [])) for r in b.get("readings") or []
                  if isinstance(r.get("t_ns"), int) and isinstance(r.get("hr_bpm"), (int, float))]
            hrv = [b for _, b in _bodies(kinds.get("hrv", [])) if isinstance(b.get("sdnn_ms"), (int, float))]
            alarms = _alarm_episodes([b for _, b in _bodies(kinds.get("alarm", []))], end_ns)
            tot: Counter[str] = Counter()
            ok: Counter[str] = Counter()
            for _, q in _bodies(kinds.get("quality", [])):
                for blk in q.get("blocks") or []:
                    for ch, u in zip(q.get("channels") or [], blk.get("usable") or [], strict=False):
                        tot[ch] += 1
                        ok[ch] += bool(u)
            mon = sig.duration_s if sig else (end_ns - (session.start_ns or end_ns)) / 1e9
            lost = sum(g.get("duration_s", 0.0) for g in sig.gaps) if sig else 0.0
            af = [((off or end_ns) - on) / 1e9 for on, off, b in alarms if str(b.get("type")).lower() in ("afib", "af")]
            rep.ecg.append(EcgSummary(src, sig, beats, hr, hrv[-1] if hrv else None, alarms,
                                      {ch: ok[ch] / tot[ch] for ch in tot}, lost,
                                      100.0 * sum(af) / mon if mon > 0 else None, mon))
        elif kind == "pcg":
            segs = [s for _, b in _bodies(kinds.get("segments", [])) for s in b.get("segments") or []]
            res = [b for _, b in _bodies(kinds.get("quality", [])) if b.get("type") == "pcg_abnormal" or "abnormal_prob" in b]
            prate = [float(b["heart_rate_bpm"]) for _, b in _bodies(kinds.get("hr", []))
                     if isinstance(b.get("heart_rate_bpm"), (int, float))]
            ql = [float(b["quality"]) for _, b in _bodies(kinds.get("hr", [])) if isinstance(b.get("quality"), (int, float))]
            rep.pcg.append(PcgSummary(src, sig if sig and sig.kind == "pcg" else session.signal_of(src, "pcg"), segs, res,
                                      prate, ql))
        elif kind == "video":
            pol = _bodies(kinds.get("polyp", []))
            ts = [t for t, _ in pol]
            bodies = [b for _, b in pol]
            eps = []
            for a, b_, p in polyp_episodes(bodies, ts):
                best = max(((t, float(bd.get("polyp_probability") or 0)) for t, bd in pol if a <= t <= b_), key=lambda x: x[1])
                eps.append((a, b_, p, best[0]))
            vid = next((v for k, v in session.video.items() if k.startswith(src)), None)
            rep.video.append(VideoSummary(src, ts, [float(b.get("polyp_probability") or 0) for b in bodies],
                                          [bool(b.get("detected")) for b in bodies], eps,
                                          vid["mp4"] if vid else None, vid["frames"] if vid else []))
    if not (rep.ecg or rep.pcg or rep.video):
        raise DataError(f"{session.path}: nothing to report (no ECG, PCG or endoscopy outputs recorded)")
    return rep


# --------------------------------------------------------------------------- numbers


def ecg_numbers(e: EcgSummary) -> list[tuple[str, str]]:
    """The summary rows of one ECG stream (label, value)."""
    rows: list[tuple[str, str]] = []
    bpm = [v for _, v in e.hr]
    rows.append(("Heart rate", f"median {statistics.median(bpm):.0f} /min (range {min(bpm):.0f}-{max(bpm):.0f}, "
                               f"{len(bpm)} readings)" if bpm else "no reading"))
    if e.hrv:
        rows.append(("HRV", f"SDNN {e.hrv['sdnn_ms']:.0f} ms, RMSSD {e.hrv.get('rmssd_ms') or float('nan'):.0f} ms "
                            f"(last {e.hrv.get('window_s', 0):.0f}-s window, {e.hrv.get('n_nn', '?')} NN intervals)"))
    c = e.classes
    n = sum(c.values())
    if n:
        ect = c.get("V", 0) + c.get("S", 0)
        rows.append(("Beats", ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + f" (total {n})"))
        rows.append(("Ectopy burden", f"{100.0 * ect / n:.1f} % (V {c.get('V', 0)}, S {c.get('S', 0)})"))
        unusable = sum(1 for b in e.beats if b.get("usable") is False)
        if unusable:
            rows.append(("Beats on unusable signal", f"{unusable}"))
    af = [(on, off) for on, off, b in e.alarms if str(b.get("type")).lower() in ("afib", "af")]
    rows.append(("AF burden", "-" if e.af_burden is None else f"{e.af_burden:.1f} % of {_dur(e.monitored_s)} monitored, "
                 f"{len(af)} episode(s)"))
    by = Counter(str(b.get("type")) for _, _, b in e.alarms)
    rows.append(("Alarms", ", ".join(f"{k} x{v}" for k, v in sorted(by.items())) if by else "none"))
    rows.append(("Signal quality", (", ".join(f"{k} usable {100 * v:.0f} %" for k, v in e.usable.items()) or "not reported")
                 + (f"; {e.lost_s:.1f} s lost" if e.lost_s else "; no samples lost")))
    return rows


def pcg_numbers(p: PcgSummary) -> list[tuple[str, str]]:
    rows = [("Heart rate (heart sounds)", f"median {statistics.median(p.hr):.0f} /min" if p.hr else "no reading")]
    if p.results:
        labels = [str(r.get("label") or "?") for r in p.results]
        probs = [float(r["abnormal_prob"]) for r in p.results if isinstance(r.get("abnormal_prob"), (int, float))]
        top = Counter(x.split()[0] for x in labels).most_common(1)[0][0]
        rows.append(("Abnormality (model)", f"{top} in {sum(1 for x in labels if x.split()[0] == top)} of "
                     f"{len(labels)} windows" + (f"; mean P(abnormal) {statistics.fmean(probs):.2f} "
                                                  f"(range {min(probs):.2f}-{max(probs):.2f})" if probs else "")))
    else:
        rows.append(("Abnormality (model)", "not available (classifier off or not loaded)"))
    rows.append(("S1/S2 segments", f"{sum(1 for s in p.segments if s.get('state') == 'S1')} S1, "
                                   f"{sum(1 for s in p.segments if s.get('state') == 'S2')} S2"))
    if p.quality:
        rows.append(("Signal quality", f"mean {statistics.fmean(p.quality):.2f} (0-1)"))
    return rows


def video_numbers(v: VideoSummary) -> list[tuple[str, str]]:
    n = len(v.t_ns)
    return [("Frames analysed", f"{n}"),
            ("Polyp detections", f"{sum(v.detected)} frames in {len(v.episodes)} episode(s)"
             + (f"; highest probability {max(p for _, _, p, _ in v.episodes):.2f}" if v.episodes else ""))]


def most_irregular_minute(beats: Sequence[dict[str, Any]], t0_ns: int, end_ns: int) -> tuple[int, float] | None:
    """Start (ns) and RMSSD (ms) of the minute whose successive RR differences are largest."""
    t = np.array(sorted(b["t_ns"] for b in beats), dtype=np.int64)
    if t.size < 4:
        return None
    best: tuple[int, float] | None = None
    start = t0_ns
    while start < end_ns:
        sel = t[(t >= start) & (t < start + 60 * 10**9)]
        if sel.size >= 4:
            rr = np.diff(sel) / 1e6
            r = float(np.sqrt(np.mean(np.diff(rr) ** 2)))
            if best is None or r > best[1]:
                best = (start, r)
        start += 30 * 10**9  # half-overlapping minutes
    if best is not None and best[0] + 60 * 10**9 > end_ns:
        best = (max(t0_ns, end_ns - 60 * 10**9), best[1])
    return best


# --------------------------------------------------------------------------- figures


def ecg_strip(fig: Any, rect_mm: tuple[float, float, float, float], x: np.ndarray, fs: float, *,
              mv_span: float, title: str = "", marks: Sequence[tuple[float, str]] = (),
              shade: Sequence[tuple[float, float, str]] = ()) -> Any:
    """Draw ``x`` (mV) at 25 mm/s and 10 mm/mV on a 1 mm / 5 mm grid in a box of the page.

    ``rect_mm`` is (left, bottom, width, height) in millimetres of the page; the time span is
    ``width / 25`` s and the amplitude span ``height / 10`` mV, so the scale is exact on paper.
    ``marks``: (seconds, text) above the trace (beat labels); ``shade``: (t0, t1, colour).
    """
    fw, fh = fig.get_size_inches()
    left, bottom, width, height = rect_mm
    ax = fig.add_axes((left * MM / fw, bottom * MM / fh, width * MM / fw, height * MM / fh))
    span_s, span_mv = width / 25.0, height / 10.0
    mid = float(np.nanmedian(x)) if np.isfinite(x).any() else 0.0
    lo = math.floor((mid - span_mv / 2) * 10) / 10
    ax.set_xlim(0, span_s)
    ax.set_ylim(lo, lo + span_mv)
    from matplotlib.collections import LineCollection

    vx = np.round(np.arange(0, span_s + 1e-9, 0.04), 6)  # 1 mm = 0.04 s
    hy = np.round(np.arange(lo, lo + span_mv + 1e-9, 0.1), 6)  # 1 mm = 0.1 mV
    top = lo + span_mv
    for major in (False, True):
        sx = vx[(np.abs(vx / 0.2 - np.round(vx / 0.2)) < 1e-6) == major]
        sy = hy[(np.abs(hy / 0.5 - np.round(hy / 0.5)) < 1e-6) == major]
        segs = [((v, lo), (v, top)) for v in sx] + [((0.0, v), (span_s, v)) for v in sy]
        ax.add_collection(LineCollection(segs, colors=GRID_MAJOR if major else GRID_MINOR,
                                         linewidths=0.6 if major else 0.3, zorder=0.5 if major else 0))
    for a, b, col in shade:
        ax.axvspan(max(0, a), min(span_s, b), color=col, alpha=0.18, lw=0, zorder=1)
    n = min(len(x), int(round(span_s * fs)))
    tt = np.arange(n) / fs
    ax.plot(tt, np.clip(x[:n], lo + 0.02, lo + span_mv - 0.02), color=TRACE, lw=0.6, zorder=3)
    for s, txt in marks:
        if 0 <= s <= span_s:
            ax.text(s, lo + span_mv - 0.05, txt, ha="center", va="top", fontsize=6,
                    color=CLASS_COLORS.get(txt, "#333333"), zorder=4)
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_color(GRID_MAJOR)
    if title:
        fig.text(left * MM / fw, (bottom + height + 1.2) * MM / fh, title, fontsize=7, va="bottom")
    return ax


def _page(plt: Any, title: str, sub: str = "") -> Any:
    fig = plt.figure(figsize=PAGE)
    fig.text(12 * MM / PAGE[0], 1 - 12 * MM / PAGE[1], title, fontsize=14, weight="bold", va="top")
    if sub:
        fig.text(12 * MM / PAGE[0], 1 - 19 * MM / PAGE[1], sub, fontsize=8, va="top", color="#444444")
    fig.text(0.5, 6 * MM / PAGE[1], STATEMENT, fontsize=6.5, ha="center", color="#9b2c2c")
    return fig


def _table(fig: Any, rows: Sequence[tuple[str, str]], top_mm: float, left_mm: float = 12, width_key: float = 48,
           size: float = 8.5, line_mm: float = 5.0) -> float:
    fw, fh = PAGE
    y = top_mm
    for k, v in rows:
        fig.text(left_mm * MM / fw, 1 - y * MM / fh, k, fontsize=size, weight="bold", va="top")
        fig.text((left_mm + width_key) * MM / fw, 1 - y * MM / fh, v, fontsize=size, va="top", wrap=True)
        y += line_mm
    return y


def _sig_slice(sig: Any, t_ns: int, seconds: float, lead: int = 0) -> np.ndarray:
    # index_of honours source clock steps (gaps.jsonl clock_step_ns); t0_ns is sample 0's time only
    i0 = sig.index_of(t_ns) if hasattr(sig, "index_of") else int(round((t_ns - sig.t0_ns) * sig.fs / 1e9))
    n = int(round(seconds * sig.fs))
    out = np.full(n, np.nan)
    a, b = max(0, i0), min(sig.signal.shape[0], i0 + n)
    if b > a:
        out[a - i0 : b - i0] = sig.signal[a:b, min(lead, sig.signal.shape[1] - 1)]
    return out


def _figures(rep: Report) -> list[tuple[str, Any, list[tuple[str, str]]]]:
    """(section title, figure, rows for the HTML) in report order."""
    plt = _mpl()
    figs: list[tuple[str, Any, list[tuple[str, str]]]] = []
    ids = {p for src, p in rep.patients.items() if src in {x.stream for x in [*rep.ecg, *rep.pcg, *rep.video]}}
    pid = rep.patient.get("patient") or rep.patient.get("patient_id")
    if len(ids) > 1:  # several patients in one recording: say whose each stream is, never one for all
        pid = None
    who = f"Patient {pid}" + (f" ({rep.patient['patient_name']})" if rep.patient.get("patient_name") else "") if pid \
        else "Patient not identified in the stream metadata"
    if len(ids) > 1:
        who = "Patients: " + "; ".join(f"{src} {p or 'not identified'}" for src, p in sorted(rep.patients.items())
                                        if p or src in {x.stream for x in [*rep.ecg, *rep.pcg, *rep.video]})
    elif pid is None:
        who = "Patient not identified in the stream metadata"
    enc = f", encounter {rep.patient['encounter']}" if rep.patient.get("encounter") and len(ids) <= 1 else ""
    header = (f"{who}{enc}. Recorded {_utc(rep.start_ns)} to {_utc(rep.end_ns)} "
              f"({_dur(((rep.end_ns or 0) - (rep.start_ns or 0)) / 1e9)}), folder {rep.path.name}")

    # 1. summary ---------------------------------------------------------------------------
    fig = _page(plt, "Teleconsultation report", header)
    rows: list[tuple[str, str]] = []
    y = 30.0
    for e in rep.ecg:
        fig.text(12 * MM / PAGE[0], 1 - y * MM / PAGE[1], f"ECG {e.stream}", fontsize=10, weight="bold", va="top",
                 color="#2b6cb0")
        r = ecg_numbers(e)
        y = _table(fig, r, y + 6)
        rows += [(f"ECG {e.stream}: {k}", v) for k, v in r]
        y += 2
    for p in rep.pcg:
        fig.text(12 * MM / PAGE[0], 1 - y * MM / PAGE[1], f"Heart sounds {p.stream}", fontsize=10, weight="bold",
                 va="top", color="#2b6cb0")
        r = pcg_numbers(p)
        y = _table(fig, r, y + 6)
        rows += [(f"Heart sounds {p.stream}: {k}", v) for k, v in r]
        y += 2
    for v in rep.video:
        fig.text(12 * MM / PAGE[0], 1 - y * MM / PAGE[1], f"Endoscopy {v.stream}", fontsize=10, weight="bold",
                 va="top", color="#2b6cb0")
        r = video_numbers(v)
        y = _table(fig, r, y + 6)
        rows += [(f"Endoscopy {v.stream}: {k}", v2) for k, v2 in r]
        y += 2
    fig.text(12 * MM / PAGE[0], 1 - min(y + 2, 190) * MM / PAGE[1], STATEMENT, fontsize=9, weight="bold",
             color="#9b2c2c", va="top", wrap=True)
    figs.append(("Summary", fig, rows))

    # 2. ECG trends, strips -------------------------------------------------------------------
    for e in rep.ecg:
        t0 = e.signal.start_ns if e.signal is not None else (rep.start_ns or 0)
        fig = _page(plt, f"ECG {e.stream}: heart rate, alarms, beat classes", header)
        ax = fig.add_axes((0.06, 0.50, 0.90, 0.36))
        if e.hr:
            tt = np.array([(t - t0) / 60e9 for t, _ in e.hr])
            ax.plot(tt, [v for _, v in e.hr], color="#2b6cb0", lw=0.9, label="heart rate")
        cols = {"afib": "#805ad5", "asystole": "#c53030", "tachy": "#dd6b20", "brady": "#dd6b20", "vrun": "#c53030"}
        seen: set[str] = set()
        for on, off, b in e.alarms:
            typ = str(b.get("type"))
            a = (on - t0) / 60e9
            z = ((off or on) - t0) / 60e9
            ax.axvspan(a, max(z, a + 0.05), color=cols.get(typ, "#d69e2e"), alpha=0.25, lw=0,
                       label=None if typ in seen else f"alarm {typ}")
            seen.add(typ)
        ax.set_xlabel("minutes from start")
        ax.set_ylabel("heart rate (/min)")
        ax.grid(alpha=0.3)
        if e.hr or e.alarms:
            ax.legend(fontsize=7, loc="upper right")
        ax.set_title("Heart-rate trend with alarm episodes shaded", fontsize=9)
        ax2 = fig.add_axes((0.06, 0.10, 0.40, 0.28))
        hours: dict[int, Counter[str]] = {}
        for b in e.beats:
            hours.setdefault(int((b["t_ns"] - t0) // 3_600_000_000_000), Counter())[b.get("label") or "?"] += 1
        labs = ["N", "S", "V", "F", "Q", "?"]
        xs = sorted(hours)
        bottom = np.zeros(len(xs))
        for lab in labs:
            vals = np.array([hours[h].get(lab, 0) for h in xs], dtype=float)
            if vals.sum():
                ax2.bar([f"h{h + 1}" for h in xs], vals, bottom=bottom, color=CLASS_COLORS.get(lab, "#a0aec0"), label=lab)
                bottom += vals
        ax2.set_title("Beats per class per hour", fontsize=9)
        ax2.legend(fontsize=7)
        afl = [(on, off) for on, off, b in e.alarms if str(b.get("type")).lower() in ("afib", "af")]
        lines = [f"AF episodes: {len(afl)}"] + [f"  {_utc(on)[11:19]} - {_utc(off)[11:19] if off else 'ongoing'}"
                                               f" ({((off or on) - on) / 1e9:.0f} s)" for on, off in afl[:12]]
        fig.text(0.52, 0.36, "\n".join(lines), fontsize=8, va="top", family="monospace")
        figs.append((f"ECG {e.stream}: trends", fig, []))

        if e.signal is None:
            continue
        sig = e.signal
        lead = 0
        beat_marks = [(b["t_ns"], b.get("label") or "") for b in e.beats]

        def marks_for(start_ns: int, seconds: float, marks: list[tuple[int, str]] = beat_marks) -> list[tuple[float, str]]:
            return [((t - start_ns) / 1e9, lab) for t, lab in marks if start_ns <= t < start_ns + seconds * 1e9]

        amp = np.nanpercentile(np.abs(sig.signal[:, lead]), 99.5) if np.isfinite(sig.signal[:, lead]).any() else 1.0
        h_mm = float(np.clip(math.ceil(2 * amp * 10 / 5) * 5 + 5, 20, 40))  # mm tall, 10 mm/mV
        strips = [(on, b) for on, _, b in e.alarms]
        shown = strips[: rep.max_alarm_strips]
        per_page = int((210 - 40) // (h_mm + 8))
        for k in range(0, len(shown), per_page):
            fig = _page(plt, f"ECG {e.stream}: alarm strips ({k + 1}-{min(k + per_page, len(shown))} of {len(strips)}"
                             + (f", {len(strips) - len(shown)} more not shown" if len(strips) > len(shown) else "") + ")",
                        f"{sig.channels[lead]}, 25 mm/s, 10 mm/mV, grid 1 mm / 5 mm (true scale printed at 100 %)")
            for j, (on, b) in enumerate(shown[k:k + per_page]):
                start = on - 3 * 10**9
                ybot = 210 - 32 - (j + 1) * (h_mm + 8)
                ecg_strip(fig, (15, ybot, 250, h_mm), _sig_slice(sig, start, 10.0, lead), sig.fs, mv_span=h_mm / 10,
                          title=f"alarm {b.get('type')} at {_utc(on)[11:19]} (onset 3 s into the strip)"
                                + (" - still on at end" if b.get("open_at_end") else ""),
                          marks=marks_for(start, 10.0), shade=[(2.98, 3.02, "#c53030")])
            figs.append((f"ECG {e.stream}: alarm strips", fig, []))
        mi = None  # per stretch between source clock steps (a step forward may be years long)
        for a0, b0, seg_t0 in sig.segments():
            m = most_irregular_minute(e.beats, sig.t_ns(a0), seg_t0 + round(b0 * 1e9 / sig.fs))
            if m is not None and (mi is None or m[1] > mi[1]):
                mi = m
        if mi is not None:
            fig = _page(plt, f"ECG {e.stream}: most irregular minute (RMSSD {mi[1]:.0f} ms)",
                        f"{_utc(mi[0])[11:19]} to {_utc(mi[0] + 60 * 10**9)[11:19]}; {sig.channels[lead]}, 25 mm/s, "
                        "10 mm/mV, six 10-s rows; beat classes above the trace")
            row_h = min(h_mm, 24.0)
            for row in range(6):
                start = mi[0] + row * 10 * 10**9
                ecg_strip(fig, (15, 210 - 30 - (row + 1) * (row_h + 4.5), 250, row_h), _sig_slice(sig, start, 10.0, lead),
                          sig.fs, mv_span=row_h / 10, marks=marks_for(start, 10.0))
            figs.append((f"ECG {e.stream}: most irregular minute", fig, []))

    # 3. heart sounds ----------------------------------------------------------------------------
    for p in rep.pcg:
        fig = _page(plt, f"Heart sounds {p.stream}", header)
        sig = p.signal
        colors = {"S1": "#c53030", "S2": "#2b6cb0", "systole": "#f6e05e", "diastole": "#c6f6d5"}
        if sig is not None:
            ax = fig.add_axes((0.06, 0.52, 0.90, 0.32))
            # a 4-s window with the most confident abnormality window's start, else the start
            t_start = sig.t0_ns + 2 * 10**9 if sig.duration_s > 8 else sig.t0_ns
            x = _sig_slice(sig, t_start, 4.0)
            tt = np.arange(x.size) / sig.fs
            ax.plot(tt, x, color=TRACE, lw=0.4)
            for seg in p.segments:
                sa, sb = seg.get("start_ns"), seg.get("end_ns")
                if isinstance(sa, int) and isinstance(sb, int) and sb > t_start and sa < t_start + 4 * 10**9:
                    st = str(seg.get("state"))
                    ax.axvspan((sa - t_start) / 1e9, (sb - t_start) / 1e9, color=colors.get(st, "#e2e8f0"), alpha=0.35, lw=0)
                    if st in ("S1", "S2"):
                        ax.text(((sa + sb) / 2 - t_start) / 1e9, np.nanmax(np.abs(x)) if np.isfinite(x).any() else 1,
                                st, ha="center", va="bottom", fontsize=7, color=colors[st])
            ax.set_xlim(0, 4)
            ax.set_xlabel("seconds")
            ax.set_yticks([])
            ax.set_title(f"Phonocardiogram (4 s from {_utc(t_start)[11:19]}): S1 red, systole yellow, S2 blue, "
                         "diastole green", fontsize=9)
        rows = pcg_numbers(p)
        y = _table(fig, rows, 118)
        res_lines = [f"{_utc(r['start_ns'])[11:19] if isinstance(r.get('start_ns'), int) else '?'}  "
                     f"{str(r.get('verdict') or r.get('label') or '?'):<16} P(abnormal) "
                     f"{r['abnormal_prob']:.2f}" if isinstance(r.get("abnormal_prob"), (int, float)) else str(r.get("label"))
                     for r in p.results[:14]]
        if res_lines:
            fig.text(12 * MM / PAGE[0], 1 - (y + 3) * MM / PAGE[1], "Per window:\n" + "\n".join(res_lines),
                     fontsize=7.5, va="top", family="monospace")
        figs.append((f"Heart sounds {p.stream}", fig, rows))

    # 4. endoscopy --------------------------------------------------------------------------------
    for v in rep.video:
        fig = _page(plt, f"Endoscopy {v.stream}: polyp detections", header)
        ax = fig.add_axes((0.06, 0.60, 0.90, 0.24))
        if v.t_ns:
            t0 = v.t_ns[0]
            ax.plot([(t - t0) / 1e9 for t in v.t_ns], v.prob, color="#2b6cb0", lw=0.8)
            for ea, eb, _, _ in v.episodes:
                ax.axvspan((ea - t0) / 1e9, max((eb - t0) / 1e9, (ea - t0) / 1e9 + 0.2), color="#c53030", alpha=0.2, lw=0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("seconds from the first analysed frame")
        ax.set_ylabel("polyp probability")
        ax.set_title(f"Polyp probability per analysed frame; {len(v.episodes)} detection episode(s) shaded", fontsize=9)
        thumbs = _thumbnails(v, 8)
        for i, (t, pr, img) in enumerate(thumbs):
            axi = fig.add_axes((0.04 + (i % 4) * 0.235, 0.30 - (i // 4) * 0.24, 0.21, 0.21))
            axi.imshow(img)
            axi.set_xticks([])
            axi.set_yticks([])
            axi.set_title(f"{_utc(t)[11:19]}  p={pr:.2f}", fontsize=7)
        if not thumbs:
            fig.text(0.06, 0.40, "No thumbnails: no detection, or no recorded video to take them from.", fontsize=9)
        figs.append((f"Endoscopy {v.stream}", fig, video_numbers(v)))

    # 5. models ----------------------------------------------------------------------------------
    from telediag import __version__
    from telediag.exports.fhir import card_summary

    fig = _page(plt, "Models and their measured accuracy", f"telediag {__version__}")
    rows = [(name, f"v{c.get('version', '?')} - {c.get('task', '')}. Measured: {card_summary(c)}. "
                   f"Intended use: {c.get('intended_use', 'research and engineering demonstration')}.")
            for name, c in sorted(rep.cards.items())]
    y = 32.0
    import textwrap

    for key, val in rows:
        wrapped = textwrap.fill(val, 150)
        fig.text(12 * MM / PAGE[0], 1 - y * MM / PAGE[1], key, fontsize=9, weight="bold", va="top")
        fig.text(50 * MM / PAGE[0], 1 - y * MM / PAGE[1], wrapped, fontsize=7.5, va="top")
        y += 6 + 3.5 * wrapped.count("\n")
    fig.text(12 * MM / PAGE[0], 1 - (y + 4) * MM / PAGE[1], textwrap.fill(STATEMENT, 140), fontsize=10, weight="bold",
             color="#9b2c2c", va="top")
    figs.append(("Models", fig, rows))
    return figs


def _thumbnails(v: VideoSummary, cap: int) -> list[tuple[int, float, np.ndarray]]:
    """Frames of the annotated video at each episode's most confident detection."""
    if v.mp4 is None or not v.frames or not v.episodes:
        return []
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency
        return []
    eps = sorted(v.episodes, key=lambda e: -e[2])[:cap]
    frame_t = [f.get("t0_ns") for f in v.frames]
    want: dict[int, tuple[int, float]] = {}
    for _, _, p, t in eps:
        i = int(np.argmin([abs((ft or 0) - t) for ft in frame_t]))
        want[i] = (t, p)
    out: list[tuple[int, float, np.ndarray]] = []
    try:
        with av.open(str(v.mp4)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in want:
                    img = frame.to_ndarray(format="rgb24")
                    out.append((want[i][0], want[i][1], img[::2, ::2]))
                if i >= max(want):
                    break
    except Exception:  # noqa: BLE001 - a damaged video costs the thumbnails, not the report
        return out
    return sorted(out, key=lambda x: x[0])


# --------------------------------------------------------------------------- writers


def write_pdf(rep: Report, path: str | Path) -> int:
    """Write the PDF; return its page count."""
    plt = _mpl()
    from matplotlib.backends.backend_pdf import PdfPages

    figs = _figures(rep)
    with PdfPages(str(path), metadata={"Title": f"telediag teleconsultation report {rep.path.name}",
                                       "Subject": STATEMENT}) as pdf:
        for _, fig, _ in figs:
            pdf.savefig(fig)
            plt.close(fig)
    return len(figs)


def write_html(rep: Report, path: str | Path, *, links: Sequence[tuple[str, str]] = ()) -> int:
    """Write a self-contained HTML report (figures inline as PNG); return the figure count."""
    plt = _mpl()
    figs = _figures(rep)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>telediag report {html.escape(rep.path.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#1a202c}"
             "table{border-collapse:collapse;margin:.5em 0}td{border-bottom:1px solid #e2e8f0;padding:3px 8px;"
             "vertical-align:top}td:first-child{font-weight:bold}.statement{color:#9b2c2c;font-weight:bold;"
             "border:2px solid #9b2c2c;padding:.5em}img{width:100%;border:1px solid #e2e8f0}</style></head><body>",
             "<h1>Teleconsultation report</h1>",
             f"<p class='statement' id='statement'>{html.escape(STATEMENT)}</p>"]
    if links:
        parts.append("<p>" + " · ".join(f"<a href='{html.escape(h)}'>{html.escape(t)}</a>" for t, h in links) + "</p>")
    for i, (title, fig, rows) in enumerate(figs):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        parts.append(f"<section id='s{i}'><h2>{html.escape(title)}</h2>")
        if rows:
            parts.append("<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                                             for k, v in rows) + "</table>")
        parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,"
                     f"{base64.b64encode(buf.getvalue()).decode()}'></section>")
    parts.append("</body></html>")
    Path(path).write_text("".join(parts), encoding="utf-8")
    return len(figs)
