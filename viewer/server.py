"""The viewer's HTTP + WebSocket server (aiohttp) around a :class:`~telediag.viewer.bridge.Bridge`.

Routes
------
``GET /``            the page (``static/index.html``); plain ES modules, nothing to build.
``GET /static/...``  ``app.js``, ``style.css``.
``GET /ws``          the WebSocket: browser messages of :mod:`telediag.viewer.bridge`.
``GET /healthz``     JSON status of the bridge (clients, messages, losses, upstream idle time).
``GET /stats``       the same plus ``per_client``: every browser's id, address, queue depth,
                     messages sent, dropped (total and per topic) and video frames replaced.
``GET /metrics``     the same counters as Prometheus text (``telediag_viewer_*``).

A browser that stops reading never slows the bridge or the other browsers: its messages wait
in its own bounded queue (``--queue``), the oldest are dropped and counted when it is full,
and video is latest-frame-wins per stream.

:class:`ViewerServer` runs inside an asyncio loop; :class:`ViewerThread` runs one in a
background thread (for ``telediag demo`` and tests); :func:`serve` runs one until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from telediag.errors import TelediagError
from telediag.viewer.bridge import Bridge, Client

__all__ = ["ViewerServer", "ViewerThread", "serve", "static_dir"]


def static_dir() -> Path:
    """The folder holding ``index.html``, ``app.js`` and ``style.css``."""
    return Path(str(resources.files("telediag.viewer").joinpath("static")))


class ViewerServer:
    """Serve the live viewer: the page, its static files and the WebSocket bridge.

    Parameters
    ----------
    engine : str or sequence of str
        Publish endpoint(s) to subscribe to, e.g. ``"tcp://127.0.0.1:5556"``.
    host, port : str, int
        Where to listen (``port=0``: any free port; see :attr:`url`).
    **bridge_kw
        Passed to :class:`~telediag.viewer.bridge.Bridge` (``queue_max``,
        ``max_display_hz``, ``history_s``, ``video_max_width``, ...).

    Examples
    --------
    >>> async def main():  # doctest: +SKIP
    ...     srv = ViewerServer("tcp://127.0.0.1:5556", port=8080)
    ...     await srv.start()
    ...     print(srv.url)
    ...     await srv.stop()
    """

    def __init__(self, engine: str | Sequence[str], host: str = "127.0.0.1", port: int = 8080,
                 **bridge_kw: Any) -> None:
        self.bridge = Bridge(engine, **bridge_kw)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._bridge_task: asyncio.Task[None] | None = None
        self._ws: set[web.WebSocketResponse] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def app(self) -> web.Application:
        app = web.Application()
        root = static_dir()
        index = root / "index.html"

        async def page(_: web.Request) -> web.StreamResponse:
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

        async def health(_: web.Request) -> web.Response:
            st = self.bridge.status()
            st.pop("dropped", None)
            st.pop("per_client", None)
            return web.json_response(st)

        async def stats(_: web.Request) -> web.Response:
            return web.json_response(self.bridge.status())

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=self.bridge.metrics_text(), content_type="text/plain",
                                headers={"X-Prometheus-Format": "0.0.4"})

        app.router.add_get("/", page)
        app.router.add_get("/index.html", page)
        app.router.add_get("/healthz", health)
        app.router.add_get("/stats", stats)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_static("/static/", root, append_version=False)
        return app

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=1 << 16, compress=False)
        await ws.prepare(request)
        self._ws.add(ws)
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        client = self.bridge.add_client(f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(request.remote))
        sender = asyncio.ensure_future(self._sender(ws, client))
        try:
            async for msg in ws:  # the page sends nothing we need; keep reading for close/ping
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.bridge.remove_client(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self._ws.discard(ws)
        return ws

    @staticmethod
    async def _sender(ws: web.WebSocketResponse, client: Client) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                msg = await client.get()
                if isinstance(msg, str):
                    await ws.send_str(msg)
                else:
                    await ws.send_bytes(msg)

    async def start(self) -> None:
        """Bind, start serving and start the bridge."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            await self._runner.cleanup()
            raise TelediagError(f"viewer cannot listen on {self.host}:{self.port}: {e}") from e
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._stop.clear()
        self._bridge_task = asyncio.ensure_future(self.bridge.run(self._stop))

    async def stop(self) -> None:
        """Close every WebSocket, stop the bridge and the HTTP server."""
        self._stop.set()
        for ws in list(self._ws):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
        if self._bridge_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bridge_task, 3.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ViewerThread:
    """A :class:`ViewerServer` in a background thread with its own event loop.

    Examples
    --------
    >>> v = ViewerThread("tcp://127.0.0.1:5556", port=0)  # doctest: +SKIP
    >>> url = v.start()                                   # doctest: +SKIP
    >>> v.stop()                                          # doctest: +SKIP
    """

    def __init__(self, engine: str | Sequence[str], host: str = "127.0.0.1", port: int = 0,
                 **bridge_kw: Any) -> None:
        self.server = ViewerServer(engine, host, port, **bridge_kw)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._done: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, timeout_s: float = 10.0) -> str:
        """Start serving; returns the page URL once the server listens."""

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def body() -> None:
                self._done = asyncio.Event()
                try:
                    await self.server.start()
                except BaseException as e:  # reported to start()
                    self._error = e
                    self._ready.set()
                    return
                self._ready.set()
                await self._done.wait()
                await self.server.stop()

            try:
                loop.run_until_complete(body())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="telediag-viewer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TelediagError(f"viewer did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._done is not None and self._thread is not None \
                and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._done.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def status(self) -> dict[str, Any]:
        """The bridge's status (read from another thread: a best-effort snapshot)."""
        return self.server.bridge.status()


def serve(engine: str | Sequence[str], host: str = "127.0.0.1", port: int = 8080,
          on_ready: Any = None, **bridge_kw: Any) -> None:
    """Run the viewer until SIGINT/SIGTERM (used by ``telediag viewer``)."""

    async def main() -> None:
        srv = ViewerServer(engine, host, port, **bridge_kw)
        await srv.start()
        if on_ready is not None:
            on_ready(srv)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await srv.stop()

    asyncio.run(main())
