"""Live web viewer: a ZeroMQ -> WebSocket bridge and the page a remote physician works from.

``telediag viewer --engine tcp://127.0.0.1:5556 --port 8080`` serves the page; see
:mod:`telediag.viewer.bridge` for the browser message format and
:mod:`telediag.viewer.server` for the routes.
"""

from telediag.viewer.bridge import Bridge, DisplayDecimator, pack_binary, unpack_binary
from telediag.viewer.server import ViewerServer, ViewerThread, serve

__all__ = ["Bridge", "DisplayDecimator", "ViewerServer", "ViewerThread", "pack_binary", "serve",
           "unpack_binary"]
