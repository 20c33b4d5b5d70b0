"""Prometheus text exposition of the engine's counters and latency histograms.

Serves ``GET /metrics`` (text format 0.0.4) on the ``[engine].metrics`` address from
the stats snapshots the workers publish every ``stats_interval_s``. Per stream:
chunks, samples, records, gaps, missing chunks, out-of-order, restarts, errors, drops
and a latency histogram (source timestamp -> publish, seconds); per reason: rejected
messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from telediag.engine.stats import LatencyHistogram

_COUNTERS = (
    ("chunks_in", "Chunks received"),
    ("samples_in", "Samples received"),
    ("chunks_out", "Signal chunks published"),
    ("records_out", "Annotation records published"),
    ("gaps", "Sequence gaps detected"),
    ("missing_chunks", "Chunks missing in sequence gaps"),
    ("out_of_order", "Duplicate or out-of-order chunks dropped"),
    ("restarts", "Stream restarts (new source session)"),
    ("errors", "Chunks that failed in a stage or were refused"),
    ("drops", "Chunks or frames dropped by design (latest-frame-wins)"),
)
_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snapshots: list[dict[str, Any]]) -> str:
    """Prometheus text for a list of worker stats bodies."""
    lines: list[str] = []
    streams: list[tuple[str, dict[str, Any]]] = []
    rejects: dict[str, int] = {}
    for snap in snapshots:
        for sid, st in (snap.get("streams") or {}).items():
            streams.append((sid, st))
        for reason, n in (snap.get("rejects") or {}).items():
            rejects[reason] = rejects.get(reason, 0) + int(n)
    for key, help_text in _COUNTERS:
        name = f"telediag_stream_{key}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for sid, st in streams:
            lines.append(f'{name}{{stream="{_esc(sid)}",kind="{_esc(str(st.get("kind", "")))}"}} {int(st.get(key, 0))}')
    name = "telediag_rejected_messages_total"
    lines += [f"# HELP {name} Wire messages rejected by reason", f"# TYPE {name} counter"]
    for reason, n in sorted(rejects.items()):
        lines.append(f'{name}{{reason="{_esc(reason)}"}} {n}')
    name = "telediag_latency_seconds"
    lines += [f"# HELP {name} Source timestamp to publish latency", f"# TYPE {name} histogram"]
    for sid, st in streams:
        hist = st.get("latency_hist")
        if not hist:
            continue
        counts = hist["counts"]
        label = f'stream="{_esc(sid)}"'
        for edge in _BUCKETS_S:
            n = sum(c for b, c in counts if LatencyHistogram.upper_edge(b) <= edge * 1.0001)
            lines.append(f'{name}_bucket{{{label},le="{edge:g}"}} {n}')
        lines.append(f'{name}_bucket{{{label},le="+Inf"}} {hist["count"]}')
        lines.append(f"{name}_sum{{{label}}} {hist['sum_s']:.6f}")
        lines.append(f"{name}_count{{{label}}} {hist['count']}")
    name = "telediag_worker_uptime_seconds"
    lines += [f"# HELP {name} Worker uptime", f"# TYPE {name} gauge"]
    for snap in snapshots:
        if snap:
            lines.append(f'{name}{{worker="{snap.get("worker", 0)}"}} {snap.get("uptime_s", 0)}')
    return "\n".join(lines) + "\n"


class MetricsExporter:
    """A tiny HTTP server (own thread) exposing ``/metrics``.

    Parameters
    ----------
    snapshots : callable
        Returns the latest stats body of every worker.
    address : str
        ``HOST:PORT``; port 0 picks a free port (see :attr:`port`).
    """

    def __init__(self, snapshots: Callable[[], list[dict[str, Any]]], address: str) -> None:
        host, _, port = address.rpartition(":")
        get = snapshots

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(get()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="telediag-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
