"""Serve the inference API over ZeroMQ and HTTP (``telediag api``).

One process, one worker pool: the ROUTER server (default ``tcp://127.0.0.1:5557``) and the
HTTP/JSON gateway (default ``127.0.0.1:8557``, OpenAPI at ``/openapi.json``) share the
operations, the model registry (package ``models/`` and ``$TELEDIAG_MODELS`` or
``~/.telediag/models``, polled for new versions) and the limits.  SIGINT/SIGTERM stop it.

Examples (shell)::

    telediag api --workers 2 --http-port 8557
    telediag api --no-http --zmq tcp://0.0.0.0:5557
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from telediag.api.http import DEFAULT_HTTP_PORT
from telediag.api.server import DEFAULT_ADDR

__all__ = ["add_arguments", "main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``telediag api``."""
    p.add_argument("--zmq", default=DEFAULT_ADDR, metavar="ADDR", help=f"ROUTER bind address (default {DEFAULT_ADDR})")
    p.add_argument("--no-zmq", action="store_true", help="do not serve ZeroMQ")
    p.add_argument("--http-host", default="127.0.0.1", help="HTTP bind host (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help=f"HTTP port (default {DEFAULT_HTTP_PORT})")
    p.add_argument("--no-http", action="store_true", help="do not serve HTTP")
    p.add_argument("--workers", type=int, default=0, help="worker threads (default: CPU count, at least 2)")
    p.add_argument("--max-pending", type=int, default=256, help="queued+running requests before 'busy' (default 256)")
    p.add_argument("--max-payload-mb", type=float, default=32.0, help="largest request payload in MiB (default 32)")
    p.add_argument("--config", metavar="FILE", help="engine TOML config for ecg.analyze (built-in default when omitted)")
    p.add_argument("--models-dir", metavar="DIR", help="user model directory (default $TELEDIAG_MODELS or ~/.telediag/models)")
    p.add_argument("--watch-s", type=float, default=2.0, help="poll the model directories every N s (0: never)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: until a signal)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (or ``--duration``)."""
    from telediag.api.http import HttpGateway
    from telediag.api.registry import ModelRegistry, default_roots
    from telediag.api.schema import Limits
    from telediag.api.server import ApiServer
    from telediag.api.service import Service
    from telediag.errors import ConfigError

    if args.no_zmq and args.no_http:
        raise ConfigError("--no-zmq and --no-http together leave nothing to serve")
    roots = default_roots()
    if args.models_dir:
        roots = [roots[0], ("user", Path(args.models_dir))]
    registry = ModelRegistry(roots)
    cfg = None
    if args.config:
        from telediag.engine.config import load_config

        cfg = load_config(args.config)
    payload = int(args.max_payload_mb * (1 << 20))
    limits = Limits(max_payload_bytes=payload, max_http_body_bytes=3 * payload + (1 << 20))
    service = Service(registry, workers=args.workers or None, max_pending=args.max_pending, limits=limits,
                      engine_config=cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread (tests)
            pass
    zsrv = None if args.no_zmq else ApiServer(service, args.zmq).start()
    gw = None if args.no_http else HttpGateway(service, args.http_host, args.http_port).start()
    if args.watch_s > 0:
        registry.start_watching(args.watch_s)
    avail = [op for op, why in service.available().items() if why is None]
    print(f"telediag api: zmq {zsrv.endpoint if zsrv else 'off'}, http {gw.url if gw else 'off'}"
          f"{' (OpenAPI at /openapi.json)' if gw else ''}; {service.workers} workers; ops {avail}; "
          f"models {registry.names()}", flush=True)
    try:
        stop.wait(args.duration if args.duration > 0 else None)
    except KeyboardInterrupt:
        pass
    registry.stop_watching()
    if gw is not None:
        gw.stop()
    if zsrv is not None:
        zsrv.stop()
    service.close()
    print("telediag api: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m telediag.api.serve_cli`` (same as ``telediag api``)."""
    p = argparse.ArgumentParser(prog="telediag api", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
