"""Serve the live web viewer: a page a remote physician works from.

The viewer subscribes to the engine's publish endpoint(s) and forwards every stream to
browsers over a WebSocket: ECG strips with beat labels, heart rate, HRV, alarms, heart sounds
with S1/S2 shading, endoscope video with the polyp overlay, latency/quality/drop badges.
Open the printed URL in a browser; it reconnects by itself when the engine or the viewer
restarts.
"""

from __future__ import annotations

import argparse

DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", action="append", metavar="ADDR",
                   help=f"publish address to subscribe to; repeat for several (default {DEFAULT_PUBLISH})")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0: any free port)")
    p.add_argument("--queue", type=int, default=4000,
                   help="messages queued per browser before its oldest are dropped (default 4000)")
    p.add_argument("--max-display-hz", type=float, default=500.0,
                   help="signals faster than this are min/max-decimated for display (default 500)")
    p.add_argument("--video-width", type=int, default=640, help="max width of video sent to browsers (default 640)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (telediag keys tls makes one)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--access", metavar="TOML",
                   help="users, password hashes and per-patient access lists (telediag keys user); login required")
    p.add_argument("--audit", metavar="FILE", help="append who viewed/listened/acknowledged what, as JSON lines")
    p.add_argument("--recording", metavar="DIR", help="a telediag record folder: the page links to its report and FHIR bundle")
    from telediag.transports.security import add_curve_arguments

    add_curve_arguments(p)


def run(args: argparse.Namespace) -> int:
    from telediag.errors import TelediagError
    from telediag.viewer.server import ViewerServer, serve

    engines = args.engine or [DEFAULT_PUBLISH]

    def ready(srv: ViewerServer) -> None:
        if args.recording:
            srv.set_recording_dir(args.recording)
        print(f"telediag viewer: {srv.url}  (engine {', '.join(engines)}; per-browser drops at {srv.url}stats "
              f"and {srv.url}metrics; Ctrl-C stops)", flush=True)

    try:
        serve(engines, args.host, args.port, on_ready=ready, queue_max=args.queue,
              max_display_hz=args.max_display_hz, video_max_width=args.video_width,
              curve_secret=args.curve_secret, server_key=args.server_key,
              tls_cert=args.tls_cert, tls_key=args.tls_key, access=args.access, audit=args.audit)
    except TelediagError as e:
        print(f"telediag viewer: {e}", flush=True)
        return 2
    print("telediag viewer: stopped", flush=True)
    return 0
