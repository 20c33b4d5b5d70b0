"""``telediag record``: persist every stream and its annotations in standard formats.

* Sampled signals (``ecg/…``, ``pcg/…``) -> WFDB records, format 32 (int32, little-endian)
  at 100,000 adu per physical unit (10 nV per step for mV signals), written as the
  samples arrive; the header is rewritten every flush so the record is readable while
  it grows. Samples that never arrived (a source gap, an engine restart, a subscriber
  that fell behind) are written as WFDB's invalid-sample value (read back as NaN) so the
  record keeps its timeline, and each lost range is listed in ``<record>.gaps.jsonl``. A source
  clock that steps (``t0_ns`` more than an hour ahead or a second back) is not filled or trimmed:
  the record goes on contiguously and the step is listed there (``samples`` 0, ``clock_step_ns``).
  The header's ``t0_ns`` stays the time of sample 0; sample ``i`` from that entry's
  ``first_sample`` on is at ``t0_ns + (every clock_step_ns so far) + i / fs`` (what
  :mod:`telediag.exports.session` reads back; the EDF+ export writes a file per stretch).
* Beats (``beats/…``) -> a WFDB annotation file ``<record>.beats`` (symbol = AAMI label,
  ``N`` when unclassified) for the signal record of the same source stream.
* Video packets (``video/…``) -> the H.264 elementary stream, remuxed to MP4 on close.
* Everything else (heart rate, HRV, quality, segments, polyp results, alarms, events)
  -> JSON lines ``<name>.<kind>.jsonl`` with the message's source timestamps.

The recorder is a plain subscriber, so it keeps recording across engine restarts (ZeroMQ
reconnects) and it never slows the engine (a recorder that falls behind loses messages,
and those ranges show up in ``gaps.jsonl``). A recorded WFDB record replays through
``telediag source ecg --wfdb``.
"""

from telediag.recorder.writer import Recorder

__all__ = ["Recorder"]
