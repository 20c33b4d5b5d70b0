"""Serve the inference API over ZeroMQ and HTTP (``telediag api``).

One process, one worker pool: the ROUTER server (default ``tcp://127.0.0.1:5557``) and the
HTTP/JSON gateway (default ``127.0.0.1:8557``, OpenAPI at ``/openapi.json``) share the
operations, the model registry (package ``models/`` and ``$TELEDIAG_MODELS`` or
``~/.telediag/models``, polled for new versions) and the limits.  SIGINT/SIGTERM stop it.

Examples (shell)::

    telediag api --workers 2 --http-port 8557
    telediag api --no-http --zmq tcp://0.0.0.0:5557

Security (one switch, the same key files as the engine; see ``docs/security.md``)::

    telediag keys generate api --dir keys/ && telediag keys generate lab-1 --dir keys/
    telediag keys allow keys/lab-1.key --allow-dir keys/allowed
    telediag api --zmq tcp://0.0.0.0:5557 --server-secret keys/api.key_secret --allow-dir keys/allowed

or ``--config engine.toml`` whose ``[security]`` section has ``curve = true`` (the flags win
over the file). The ZeroMQ socket is then CurveZMQ-encrypted and admits only allow-listed
client keys (the folder is re-read on every handshake, every request is re-checked, so
``telediag keys revoke`` needs no restart). The HTTP gateway has no such protection: with
CurveZMQ on it may only listen on loopback (``--no-http`` to switch it off).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from telediag.api.http import DEFAULT_HTTP_PORT
from telediag.api.server import DEFAULT_ADDR

__all__ = ["add_arguments", "main", "run", "security_of"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``telediag api``."""
    p.add_argument("--zmq", default=DEFAULT_ADDR, metavar="ADDR", help=f"ROUTER bind address (default {DEFAULT_ADDR})")
    p.add_argument("--no-zmq", action="store_true", help="do not serve ZeroMQ")
    p.add_argument("--http-host", default="127.0.0.1", help="HTTP bind host (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help=f"HTTP port (default {DEFAULT_HTTP_PORT})")
    p.add_argument("--tls-cert", metavar="PEM", help="HTTPS for the gateway with this certificate (telediag keys tls)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--access", metavar="TOML", help="users/tokens (telediag keys user): every HTTP call needs a login")
    p.add_argument("--audit", metavar="FILE", help="append who called what over HTTP, as JSON lines")
    p.add_argument("--no-http", action="store_true", help="do not serve HTTP")
    p.add_argument("--workers", type=int, default=0, help="worker threads (default: CPU count, at least 2)")
    p.add_argument("--max-pending", type=int, default=256, help="queued+running requests before 'busy' (default 256)")
    p.add_argument("--max-payload-mb", type=float, default=32.0, help="largest request payload in MiB (default 32)")
    p.add_argument("--config", metavar="FILE", help="engine TOML config for ecg.analyze (built-in default when omitted)")
    p.add_argument("--models-dir", metavar="DIR", help="user model directory (default $TELEDIAG_MODELS or ~/.telediag/models)")
    p.add_argument("--watch-s", type=float, default=2.0, help="poll the model directories every N s (0: never)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: until a signal)")
    g = p.add_argument_group("CurveZMQ (encryption + client allow-list on the ZeroMQ socket)")
    g.add_argument("--server-secret", metavar="FILE", help="this server's .key_secret file (turns CurveZMQ on)")
    g.add_argument("--allow-dir", metavar="DIR",
                   help="folder of allowed client .key files (telediag keys allow/revoke/list)")


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def security_of(args: argparse.Namespace, cfg: Any = None) -> tuple[str | None, str | None]:
    """``(server_secret, allow_dir)`` from the flags, else from the config's ``[security]``.

    Both ``None`` means plain TCP. Raises :class:`~telediag.errors.ConfigError` when only
    one flag is given.

    Examples
    --------
    >>> security_of(argparse.Namespace(server_secret=None, allow_dir=None))
    (None, None)
    """
    from telediag.errors import ConfigError

    secret, allow_dir = getattr(args, "server_secret", None), getattr(args, "allow_dir", None)
    if (secret is None) != (allow_dir is None):
        raise ConfigError("CurveZMQ needs both --server-secret (the server's .key_secret file) and --allow-dir "
                          f"(the client allow-list folder), got --server-secret={secret!r} --allow-dir={allow_dir!r}")
    if secret is None and cfg is not None and cfg.security.curve:
        secret, allow_dir = cfg.security.server_secret, cfg.security.allow_dir
    return secret, allow_dir


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
    secret, allow_dir = security_of(args, cfg)
    if secret is not None and not args.no_http and args.http_host not in _LOOPBACK \
            and not (args.tls_cert and args.access):
        raise ConfigError(f"with CurveZMQ on, the plaintext HTTP gateway may only listen on loopback "
                          f"(--http-host 127.0.0.1), got --http-host {args.http_host!r}; or pass --no-http")
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
    zsrv = None if args.no_zmq else ApiServer(service, args.zmq, server_secret=secret, allow_dir=allow_dir).start()
    gw = None if args.no_http else HttpGateway(service, args.http_host, args.http_port, tls_cert=args.tls_cert,
                                                 tls_key=args.tls_key, access=args.access, audit=args.audit).start()
    if args.watch_s > 0:
        registry.start_watching(args.watch_s)
    avail = [op for op, why in service.available().items() if why is None]
    curve = f" (CurveZMQ, allow-list {allow_dir})" if zsrv is not None and secret is not None else ""
    print(f"telediag api: zmq {zsrv.endpoint if zsrv else 'off'}{curve}, http {gw.url if gw else 'off'}"
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
