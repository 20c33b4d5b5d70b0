"""The report and FHIR bundle of a recording that is still being written, for the viewer.

A viewer (or any HTTP front end) serves ``GET /recording`` with :func:`recording_index` and
``GET /recording/{name}`` with :func:`render`: ``report.html``, ``report.pdf`` and
``bundle.json`` are built on request from what the recorder has flushed so far (it flushes
every second; a half-written last line is skipped), cached for ``max_age_s``; EDF+ files that
exist in the folder are served as they are. Only these names are served, so a request can
never reach another file.

Examples
--------
>>> recording_index("demo-recording")  # doctest: +SKIP
{'report.html': '/recording/report.html', 'report.pdf': '/recording/report.pdf', 'bundle.json': '/recording/bundle.json'}
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
from pathlib import Path

from telediag.errors import DataError

__all__ = ["recording_index", "render"]

_GENERATED = {"report.html": "text/html; charset=utf-8", "report.pdf": "application/pdf",
              "bundle.json": "application/fhir+json"}
_cache: dict[tuple[str, str], tuple[float, bytes]] = {}
_lock = threading.Lock()


def recording_index(folder: str | Path, prefix: str = "/recording/") -> dict[str, str]:
    """What can be served for ``folder`` (empty when it holds no recording yet)."""
    root = Path(folder)
    if not root.is_dir() or not (any(root.glob("*.jsonl")) or any(root.glob("*.hea"))):
        return {}
    out = {name: prefix + name for name in _GENERATED}
    for p in sorted(root.glob("*.edf")):
        out[p.name] = prefix + p.name
    return out


def render(folder: str | Path, name: str, *, max_age_s: float = 10.0) -> tuple[bytes, str]:
    """The bytes and content type of one entry of :func:`recording_index`.

    Raises
    ------
    telediag.errors.DataError
        ``name`` is not served for this folder, or there is nothing to report yet.
    """
    root = Path(folder)
    if name not in recording_index(root):
        raise DataError(f"{name!r} is not served for the recording {root}")
    if name.endswith(".edf"):
        return (root / name).read_bytes(), "application/octet-stream"
    key = (str(root.resolve()), name)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < max_age_s:
            return hit[1], _GENERATED[name]
        from telediag.exports.session import load_session

        session = load_session(root)
        if name == "bundle.json":
            from telediag.exports.fhir import session_bundle

            data = (json.dumps(session_bundle(session), indent=1) + "\n").encode()
        else:
            from telediag.report.build import build_report, write_html, write_pdf

            rep = build_report(session)
            with tempfile.TemporaryDirectory() as td:
                out = Path(td) / name
                if name == "report.pdf":
                    write_pdf(rep, out)
                else:
                    write_html(rep, out, links=[("report.pdf", "report.pdf"), ("bundle.json", "bundle.json")])
                buf = io.BytesIO(out.read_bytes())
            data = buf.getvalue()
        _cache[key] = (time.monotonic(), data)
        return data, _GENERATED[name]
