"""Prometheus text exposition of the engine's counters and latency histograms.

Serves ``GET /metrics`` (text format 0.0.4) on the ``[engine].metrics`` address from
the stats snapshots the workers publish every ``stats_interval_s``. Per stream:
chunks, samples, records, gaps, missing chunks, out-of-order, restarts, errors, drops
and a latency histogram (source timestamp -> publish, seconds); per reason: rejected
messages. Per bound socket (``publish``, ``ingest``, ``api``) watched by a
:class:`SocketMonitor`: open connections (for ``publish``: connected subscribers),
accepted and closed connections, and handshakes refused by the CurveZMQ allow-list.

What the engine can and cannot see of slow subscribers
-----------------------------------------------------
The publish socket is an XPUB behind a libzmq proxy. XPUB never blocks: a subscriber
whose queue holds ``[engine].publish_hwm`` messages loses the newer ones (``XPUB_NODROP``
is not set, on purpose: it would stall the proxy, and so every subscriber, behind the
slowest one). libzmq keeps no per-subscriber drop counter, so the engine counts the
connections it serves, and each subscriber counts its own losses from the per-topic
``seq`` (``telediag.client.Subscriber.stats()``, ``telediag tail``, the viewer's
``/stats`` and ``/metrics``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

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


_SOCKET_COUNTERS = (
    ("accepted", "Connections accepted"),
    ("disconnected", "Connections closed"),
    ("handshakes", "ZMTP handshakes completed (peer admitted)"),
    ("auth_refused", "Handshakes refused by the CurveZMQ allow-list (unknown or revoked key)"),
    ("handshake_failed", "Handshakes failed for another reason (protocol, wrong mechanism)"),
)


class SocketMonitor:
    """Count the peers of a bound socket from libzmq's monitor events (own thread).

    Attach it **before** the socket is handed to the thread that uses it (``zmq_socket_monitor``
    is not thread-safe); it only reads its own PAIR socket afterwards, so it never touches the
    data path. ``connections`` is TCP connections open now (accepted minus closed; for the
    engine's XPUB: the connected subscribers); ``auth_refused`` counts CURVE handshakes the
    ZAP handler refused.

    Parameters
    ----------
    sock : zmq.Socket
        A socket (typically bound: XPUB, PULL, ROUTER).
    name : str
        Label in :func:`render` (``publish``, ``ingest``, ``api``).

    Examples
    --------
    >>> ctx = zmq.Context()
    >>> pub = ctx.socket(zmq.XPUB)
    >>> _ = pub.bind("tcp://127.0.0.1:*")
    >>> mon = SocketMonitor(pub, "publish")
    >>> sub = ctx.socket(zmq.SUB)
    >>> _ = sub.connect(pub.last_endpoint.decode())
    >>> mon.wait_for(lambda s: s["connections"] == 1, 5)
    True
    >>> sub.close(0); pub.close(0); mon.stop(); ctx.term()
    """

    EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def __init__(self, sock: zmq.Socket, name: str) -> None:  # type: ignore[type-arg]
        self.name = name
        self.counts = dict.fromkeys([k for k, _ in _SOCKET_COUNTERS], 0)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._mon = sock.get_monitor_socket(self.EVENTS)
        self._thread = threading.Thread(target=self._run, name=f"telediag-monitor-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        mon = self._mon
        kinds: dict[int, str] = {zmq.EVENT_ACCEPTED: "accepted", zmq.EVENT_DISCONNECTED: "disconnected",
                 zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshakes", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth_refused",
                 zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed"}
        try:
            while not self._stop.is_set():
                if not mon.poll(100):
                    continue
                ev = parse_monitor_message(mon.recv_multipart())
                if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
                    break
                key = kinds.get(int(ev["event"]))
                if key is not None:
                    with self._cond:
                        self.counts[key] += 1
                        self._cond.notify_all()
        except zmq.ZMQError:  # pragma: no cover - context terminated under us
            pass
        finally:
            mon.close(0)

    def snapshot(self) -> dict[str, int]:
        """``connections`` (open now) and the cumulative counters, as plain ints."""
        with self._cond:
            c = dict(self.counts)
        c["connections"] = max(0, c["accepted"] - c["disconnected"])
        return c

    def wait_for(self, predicate: Callable[[dict[str, int]], bool], timeout_s: float) -> bool:
        """Block until ``predicate(snapshot())`` holds (for tests and start-up checks)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._snap_locked()), timeout_s)

    def _snap_locked(self) -> dict[str, int]:
        c = dict(self.counts)
        c["connections"] = max(0, c["accepted"] - c["disconnected"])
        return c

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread (also stops by itself when the socket closes)."""
        self._stop.set()
        self._thread.join(timeout_s)


def render_sockets(sockets: dict[str, dict[str, int]]) -> list[str]:
    """Prometheus lines for :meth:`SocketMonitor.snapshot` results keyed by socket name."""
    lines: list[str] = []
    name = "telediag_socket_connections"
    lines += [f"# HELP {name} Open connections (publish: connected subscribers)", f"# TYPE {name} gauge"]
    for sock, snap in sorted(sockets.items()):
        lines.append(f'{name}{{socket="{_esc(sock)}"}} {int(snap.get("connections", 0))}')
    for key, help_text in _SOCKET_COUNTERS:
        name = f"telediag_socket_{key}_total"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for sock, snap in sorted(sockets.items()):
            lines.append(f'{name}{{socket="{_esc(sock)}"}} {int(snap.get(key, 0))}')
    return lines


def render(snapshots: list[dict[str, Any]], sockets: dict[str, dict[str, int]] | None = None) -> str:
    """Prometheus text for a list of worker stats bodies (and socket monitor snapshots)."""
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
    if sockets:
        lines += render_sockets(sockets)
    return "\n".join(lines) + "\n"


class MetricsExporter:
    """A tiny HTTP server (own thread) exposing ``/metrics``.

    Parameters
    ----------
    snapshots : callable
        Returns the latest stats body of every worker.
    address : str
        ``HOST:PORT``; port 0 picks a free port (see :attr:`port`).
    sockets : callable, optional
        Returns ``{name: SocketMonitor.snapshot()}`` (connected subscribers, refused keys).
    """

    def __init__(self, snapshots: Callable[[], list[dict[str, Any]]], address: str,
                 sockets: Callable[[], dict[str, dict[str, int]]] | None = None) -> None:
        host, _, port = address.rpartition(":")
        get = snapshots
        get_sockets = sockets

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(get(), get_sockets() if get_sockets is not None else None).encode()
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
