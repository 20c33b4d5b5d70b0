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
``GET|POST /login``  the login form (with an access file); ``GET /logout``.
``GET /recording``   the session's recording documents (report HTML/PDF, FHIR bundle, EDF+) as
                     ``{name: url}`` when a recording folder is set (``set_recording_dir``), else ``{}``.
``GET /recording/{name}``  one of them (:mod:`telediag.report.live`, built off the event loop).
``GET /api/patients``                 patients this user may see (of those streaming).
``GET /api/patients/{id}/alarms``     that patient's active alarms and acknowledgements (403
                     for a patient outside the user's access list).

Security (see :mod:`telediag.transports.webauth`): with ``tls_cert``/``tls_key`` the server
speaks HTTPS only; with an ``access`` file every route but ``/login`` needs a session cookie
(from ``/login``) or an ``Authorization: Bearer|Basic`` header, a browser sees only the
patients of its user's access list, and every view, listen, acknowledgement, login and
refusal is written to the ``audit`` log. Without TLS and login only a loopback address may be
bound (:func:`~telediag.transports.webauth.check_bind`).

Browser -> server messages on the WebSocket (JSON): ``{"op": "view", "patient"}``,
``{"op": "listen", "stream", "on"}`` (full-rate audio of that stream follows as ``audio``
messages; the page listens on a second socket ``/ws?audio=1``, opened by a Worker, that carries
nothing but audio, so rendering never delays the heart sounds), ``{"op": "ack"|"silence", "key"}`` (alarm acknowledgement / audio paused 120 s);
a refused one is answered ``{"kind": "_refused", "op", "reason"}``.

A browser that stops reading never slows the bridge or the other browsers: its messages wait
in its own bounded queue (``--queue``), the oldest are dropped and counted when it is full,
and video is latest-frame-wins per stream.

:class:`ViewerServer` runs inside an asyncio loop; :class:`ViewerThread` runs one in a
background thread (for ``telediag demo`` and tests); :func:`serve` runs one until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import signal
import socket
import ssl
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from telediag.errors import TelediagError
from telediag.transports.webauth import (
    SESSION_COOKIE,
    AccessConfig,
    AuditLog,
    Authenticator,
    User,
    check_bind,
    server_ssl_context,
)
from telediag.viewer.bridge import Bridge, Client

_USER = web.RequestKey("user", object)  # the request's authenticated User (None: no login configured)

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

    def __init__(self, engine: str | Sequence[str], host: str = "127.0.0.1", port: int = 8080, *,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 access: AccessConfig | str | Path | None = None, audit: str | Path | None = None,
                 **bridge_kw: Any) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise TelediagError("TLS needs both a certificate and a key file (--tls-cert and --tls-key)")
        self.ssl: ssl.SSLContext | None = server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
        if isinstance(access, str | Path):
            access = AccessConfig.load(access)
        self.auth: Authenticator | None = Authenticator(access) if access is not None else None
        check_bind(host, tls=self.ssl is not None, auth=self.auth is not None)
        self.audit = AuditLog(audit)
        self.recording_dir: Path | None = None
        self.bridge = Bridge(engine, **bridge_kw)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._bridge_task: asyncio.Task[None] | None = None
        self._ws: set[web.WebSocketResponse] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl is not None else 'http'}://{self.host}:{self.port}/"

    def set_recording_dir(self, path: str | Path | None) -> None:
        """The folder of the session's recording: the page then links to its report and FHIR bundle."""
        self.recording_dir = Path(path) if path is not None else None

    # -- authentication ------------------------------------------------------------------
    def _user(self, request: web.Request) -> User | None:
        assert self.auth is not None
        return self.auth.check_header(request.headers.get("Authorization")) or \
            self.auth.check_session(request.cookies.get(SESSION_COOKIE))

    @staticmethod
    def _peer(request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(request.remote)

    @web.middleware
    async def _auth_mw(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.auth is None or request.path in ("/login", "/logout"):
            request[_USER] = None
            return await handler(request)
        user = self._user(request)
        if user is None:
            self.audit.write(None, "refused", what=request.path, peer=self._peer(request), ok=False,
                             reason="no login")
            if request.method == "GET" and request.path in ("/", "/index.html"):
                raise web.HTTPFound("/login")
            return web.json_response({"error": "login required"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="telediag"'})
        request[_USER] = user
        return await handler(request)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self.auth is None:
            raise web.HTTPFound("/")
        msg = ""
        if request.method == "POST":
            form = await request.post()
            name, pw = str(form.get("user", "")), str(form.get("password", ""))
            loop = asyncio.get_running_loop()
            user = await loop.run_in_executor(None, self.auth.login, name, pw)  # scrypt off the loop
            self.audit.write(name, "login", peer=self._peer(request), ok=user is not None)
            if user is not None:
                resp = web.HTTPFound("/")
                resp.set_cookie(SESSION_COOKIE, self.auth.session_for(user), httponly=True,
                                secure=self.ssl is not None, samesite="Strict", path="/")
                raise resp
            msg = "Wrong user name or password."
        page = _LOGIN_PAGE.replace("{msg}", html.escape(msg))
        return web.Response(text=page, content_type="text/html", status=401 if msg else 200)

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        resp = web.HTTPFound("/login")
        resp.del_cookie(SESSION_COOKIE, path="/")
        raise resp

    def _may(self, request: web.Request, patient: str) -> bool:
        user: User | None = request.get(_USER)
        return user is None or user.may_see(patient)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_mw])
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

        async def patients(request: web.Request) -> web.Response:
            seen = sorted({t.split("/")[1] for t in self.bridge.status()["topics"] if t.count("/") >= 1
                           and not t.split("/")[1].startswith("engine")})
            user: User | None = request.get(_USER)
            return web.json_response({"user": user.name if user else None,
                                      "patients": [p for p in seen if self._may(request, p)]})

        async def alarms(request: web.Request) -> web.Response:
            pid = request.match_info["pid"]
            user: User | None = request.get(_USER)
            name = user.name if user else None
            if not self._may(request, pid):
                self.audit.write(name, "refused", patient=pid, what="alarms", peer=self._peer(request), ok=False,
                                 reason="not in access list")
                return web.json_response({"error": f"no access to patient {pid}"}, status=403)
            self.audit.write(name, "view", patient=pid, what="alarms", peer=self._peer(request))
            st = self.bridge.status()
            on = [k for k in st["alarms_on"] if k.split("/")[0] == pid]
            return web.json_response({"patient": pid, "alarms_on": on,
                                      "acks": {k: v for k, v in st["acks"].items() if k in on}})

        async def recording(_: web.Request) -> web.Response:
            if self.recording_dir is None:
                return web.json_response({})
            from telediag.report.live import recording_index

            return web.json_response(recording_index(self.recording_dir))

        async def recording_file(request: web.Request) -> web.Response:
            from telediag.errors import DataError
            from telediag.report.live import render

            if self.recording_dir is None:
                raise web.HTTPNotFound()
            user: User | None = request.get(_USER)
            name = request.match_info["name"]
            try:
                data, ctype = await asyncio.get_running_loop().run_in_executor(None, render, self.recording_dir, name)
            except DataError as e:
                raise web.HTTPNotFound(text=str(e)) from e
            self.audit.write(user.name if user else None, "view", what=f"recording {name}", peer=self._peer(request))
            return web.Response(body=data, content_type=ctype.split(";")[0])

        app.router.add_get("/recording", recording)
        app.router.add_get("/recording/{name}", recording_file)
        app.router.add_get("/login", self._login)
        app.router.add_post("/login", self._login)
        app.router.add_get("/logout", self._logout)
        app.router.add_get("/api/patients", patients)
        app.router.add_get("/api/patients/{pid}/alarms", alarms)
        app.router.add_get("/", page)
        app.router.add_get("/index.html", page)
        app.router.add_get("/healthz", health)
        app.router.add_get("/stats", stats)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_static("/static/", root, append_version=False)
        return app

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if self.auth is not None and origin is not None and origin.split("://", 1)[-1] != request.host:
            self.audit.write(None, "refused", what="/ws", peer=self._peer(request), ok=False,
                             reason=f"cross-origin WebSocket from {origin}")
            return web.json_response({"error": "cross-origin WebSocket refused"}, status=403)
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=1 << 16, compress=False)
        await ws.prepare(request)
        self._ws.add(ws)
        user: User | None = request.get(_USER)
        peer = self._peer(request)
        audio_only = request.query.get("audio") == "1"  # the page's listening socket (a Worker)
        client = self.bridge.add_client(peer, user.name if user else None, user.may_see if user else None,
                                        audio_only=audio_only)
        if not audio_only:
            self.audit.write(client.user, "view", patient="*" if user is None or "*" in user.patients
                             else ",".join(sorted(user.patients)), what="console", peer=peer)
        sender = asyncio.ensure_future(self._sender(ws, client))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                if msg.type == WSMsgType.TEXT:
                    self._on_browser_message(client, msg.data, peer)
        finally:
            self.bridge.remove_client(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self._ws.discard(ws)
        return ws

    def _on_browser_message(self, client: Client, text: str, peer: str) -> None:
        """A control message from the page: view, listen, ack, silence (checked and audited)."""
        try:
            m = json.loads(text)
            op = str(m["op"])
        except (ValueError, KeyError, TypeError):
            client.put(json.dumps({"kind": "_refused", "op": None, "reason": "bad message"}), "_refused")
            return
        target = str(m.get("patient") or m.get("stream") or m.get("key") or "")
        patient = target.split("/")[0].split(":")[0]
        if client.allow is not None and not client.allow(patient):
            self.audit.write(client.user, "refused", patient=patient, what=f"{op} {target}", peer=peer, ok=False,
                             reason="not in access list")
            client.put(json.dumps({"kind": "_refused", "op": op, "target": target,
                                   "reason": f"no access to patient {patient}"}), "_refused")
            return
        if op == "view":
            self.audit.write(client.user, "view", patient=patient, what="patient", peer=peer)
        elif op == "listen":
            on = bool(m.get("on", True))
            (client.listen.add if on else client.listen.discard)(target)
            self.audit.write(client.user, "listen" if on else "listen_stop", patient=patient, what=target, peer=peer)
        elif op in ("ack", "silence"):
            try:
                rec = self.bridge.acknowledge(target, client.user or "local", op)
            except KeyError:
                client.put(json.dumps({"kind": "_refused", "op": op, "target": target,
                                       "reason": "no such active alarm"}), "_refused")
                return
            self.audit.write(client.user, op, patient=patient, what=target, peer=peer,
                             **({"until_ns": rec["silenced_until_ns"]} if op == "silence" else {}))
        else:
            client.put(json.dumps({"kind": "_refused", "op": op, "reason": "unknown op"}), "_refused")

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
        site = web.SockSite(self._runner, sock, ssl_context=self.ssl)
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
        self.audit = self.server.audit
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

    def set_recording_dir(self, path: str | Path | None) -> None:
        """See :meth:`ViewerServer.set_recording_dir`."""
        self.server.set_recording_dir(path)

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


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>telediag - sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{background:#030507;color:#d8e2ea;font-family:sans-serif;display:flex;justify-content:center;
align-items:center;height:100vh;margin:0}form{background:#0a0f14;border:1px solid #1b2630;padding:24px 28px;
border-radius:6px;display:flex;flex-direction:column;gap:10px;min-width:260px}input{padding:7px;
background:#05080b;color:#fff;border:1px solid #2a3a48;border-radius:3px}button{padding:8px;background:#0f3a22;
color:#7dffb0;border:1px solid #175a33;border-radius:3px;cursor:pointer}.msg{color:#ff8080}</style></head>
<body><form method="post" action="/login"><h2>telediag console</h2>
<label>User <input name="user" autocomplete="username" autofocus required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button><div class="msg">{msg}</div></form></body></html>
"""
