"""Secure remote access to the viewer: TLS, login, per-patient access lists, audit log.

Driven with plain HTTP clients (aiohttp) on 127.0.0.1 only; the browser side is in
``tests/test_viewer_console.py``. Non-loopback binding is tested by its *refusal* (nothing
is opened off the machine).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
from conftest import free_port

from telediag.errors import ConfigError
from telediag.transports.webauth import AccessConfig, AuditLog, Authenticator, make_self_signed
from telediag.transports.wire import Chunk, encode
from telediag.viewer.server import ViewerServer, ViewerThread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    return make_self_signed(d / "cert.pem", d / "key.pem", ["localhost", "127.0.0.1"], days=2)


@pytest.fixture(scope="module")
def access(tmp_path_factory: pytest.TempPathFactory) -> Path:
    acc = AccessConfig()
    acc.set_user("dr-a", password="pw-a", patients=["bed-1"], token="token-a")
    acc.set_user("chief", password="pw-c", patients=["*"])
    p = tmp_path_factory.mktemp("acc") / "access.toml"
    acc.save(p)
    return p


def test_non_loopback_without_tls_or_login_is_refused_at_startup(tls: tuple[Path, Path], access: Path) -> None:
    with pytest.raises(ConfigError, match="plain HTTP on 0.0.0.0"):
        ViewerServer("tcp://127.0.0.1:1", host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="plain HTTP"):
        ViewerServer("tcp://127.0.0.1:1", host="192.168.1.7", port=0, access=access)
    with pytest.raises(ConfigError, match="without a login"):
        ViewerServer("tcp://127.0.0.1:1", host="0.0.0.0", port=0, tls_cert=tls[0], tls_key=tls[1])
    # TLS + login: allowed (constructed, not started: nothing is opened off the machine)
    ViewerServer("tcp://127.0.0.1:1", host="0.0.0.0", port=0, tls_cert=tls[0], tls_key=tls[1], access=access)
    ViewerServer("tcp://127.0.0.1:1", host="127.0.0.1", port=0)  # loopback plain HTTP: the demo


def test_access_file_round_trip_and_errors(tmp_path: Path) -> None:
    acc = AccessConfig()
    acc.set_user("x", password="secret", patients=["bed-9"])
    acc.save(tmp_path / "a.toml")
    back = AccessConfig.load(tmp_path / "a.toml")
    assert Authenticator(back).login("x", "secret").patients == frozenset({"bed-9"})  # type: ignore[union-attr]
    assert Authenticator(back).login("x", "Secret") is None
    (tmp_path / "b.toml").write_text('[users.y]\npassword = "plaintext"\n')
    with pytest.raises(ConfigError, match="scrypt"):
        AccessConfig.load(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text('[users.y]\npatient = ["bed-1"]\n')
    with pytest.raises(ConfigError, match="unknown keys"):
        AccessConfig.load(tmp_path / "c.toml")


def _basic(user: str, pw: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_tls_login_patient_access_and_audit(tls: tuple[Path, Path], access: Path, tmp_path: Path) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub.bind(ep)
    audit = tmp_path / "audit.jsonl"
    v = ViewerThread(ep, port=0, tls_cert=tls[0], tls_key=tls[1], access=access, audit=audit)
    url = v.start()
    assert url.startswith("https://127.0.0.1:")
    client_ssl = ssl.create_default_context(cafile=str(tls[0]))
    seq = {"n": 0}
    onset = time.time_ns()

    def publish() -> None:
        for stream in ("bed-1/ecg", "bed-2/ecg"):
            for c in (Chunk.record("hr", stream, seq["n"], onset, {"readings": [{"hr_bpm": 70.0}]}),
                      Chunk.record("alarm", stream, seq["n"], onset,
                                   {"type": "asystole", "state": "on", "onset_ns": onset})):
                pub.send_multipart(encode(c))
        seq["n"] += 1

    async def ws_without_login() -> None:
        conn = aiohttp.TCPConnector(ssl=client_ssl)
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.ws_connect(url + "ws", headers={"Authorization": "Bearer nope"}):
                pass

    async def session_checks() -> dict[str, Any]:
        out: dict[str, Any] = {}
        conn = aiohttp.TCPConnector(ssl=client_ssl)
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        async with aiohttp.ClientSession(connector=conn, cookie_jar=jar) as s:
            # deadline for the bridge to see both patients
            for _ in range(50):
                publish()
                async with s.get(url + "api/patients", headers={"Authorization": "Bearer token-a"}) as r:
                    out["patients_a"] = (r.status, await r.json())
                async with s.get(url + "api/patients", headers=_basic("chief", "pw-c")) as r:
                    out["patients_c"] = await r.json()
                if len(out["patients_c"]["patients"]) == 2:
                    break
                await asyncio.sleep(0.1)
            async with s.get(url + "api/patients/bed-2/alarms", headers={"Authorization": "Bearer token-a"}) as r:
                out["other_patient"] = r.status
            async with s.get(url + "api/patients/bed-1/alarms", headers={"Authorization": "Bearer token-a"}) as r:
                out["own_patient"] = (r.status, await r.json())
            # the browser's way: the login form sets a session cookie
            async with s.post(url + "login", data={"user": "dr-a", "password": "nope"}, allow_redirects=False) as r:
                out["form_bad"] = r.status
            async with s.post(url + "login", data={"user": "dr-a", "password": "pw-a"}, allow_redirects=False) as r:
                out["form_ok"] = (r.status, r.headers.get("Location"), "Secure" in r.headers.get("Set-Cookie", ""))
            async with s.get(url) as r:
                out["page"] = (r.status, "app.js" in await r.text())
            # the WebSocket with the cookie: only bed-1 arrives; bed-2 is refused
            msgs: list[dict[str, Any]] = []
            async with s.ws_connect(url + "ws") as ws:
                await ws.send_str(json.dumps({"op": "listen", "stream": "bed-2/pcg", "on": True}))
                await ws.send_str(json.dumps({"op": "ack", "key": "bed-2/ecg:asystole"}))
                await ws.send_str(json.dumps({"op": "ack", "key": "bed-1/ecg:asystole"}))
                await ws.send_str(json.dumps({"op": "view", "patient": "bed-1"}))
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    publish()
                    try:
                        m = await ws.receive(timeout=0.2)
                    except TimeoutError:
                        continue
                    if m.type == aiohttp.WSMsgType.TEXT:
                        msgs.append(json.loads(m.data))
            out["ws"] = msgs
        return out

    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            asyncio.run(ws_without_login())
        assert exc.value.status == 401
        res = asyncio.run(session_checks())
        pre = asyncio.run(_pre(url, client_ssl))
    finally:
        v.stop()
        pub.close(0)
        ctx.term()
    assert pre["plain"] != 200, "plain HTTP answered on the TLS port"
    assert pre["nologin"] == 401 and pre["badpw"] == 401
    assert pre["page_nologin"] == (302, "/login")
    assert res["patients_a"][0] == 200 and res["patients_a"][1]["patients"] == ["bed-1"]
    assert res["patients_c"]["patients"] == ["bed-1", "bed-2"]
    assert res["other_patient"] == 403
    assert res["own_patient"][0] == 200 and res["own_patient"][1]["alarms_on"] == ["bed-1/ecg:asystole"]
    assert res["form_bad"] == 401 and res["form_ok"] == (302, "/", True) and res["page"] == (200, True)
    ws = res["ws"]
    streams = {m.get("stream") for m in ws if m.get("stream")}
    assert "bed-1/ecg" in streams and not any(s.startswith("bed-2") for s in streams), streams
    refused = [m for m in ws if m["kind"] == "_refused"]
    assert {m["op"] for m in refused} == {"listen", "ack"} and all("bed-2" in m["reason"] for m in refused)
    acks = [m for m in ws if m["kind"] == "_ack"]
    assert acks and acks[-1]["key"] == "bed-1/ecg:asystole" and acks[-1]["acked_by"] == "dr-a"
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    act = {(x["user"], x["action"], x["patient"], x["ok"]) for x in lines}
    assert (None, "refused", None, False) in act                       # no login
    assert ("dr-a", "login", None, False) in act and ("dr-a", "login", None, True) in act
    assert ("dr-a", "refused", "bed-2", False) in act                  # other patient (HTTP and WS)
    assert ("dr-a", "view", "bed-1", True) in act
    assert ("dr-a", "ack", "bed-1", True) in act
    assert all(x["t"].endswith("Z") and x["t_ns"] > 0 for x in lines)


async def _pre(url: str, client_ssl: ssl.SSLContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as plain:
            async with plain.get(url.replace("https", "http") + "api/patients",
                                 timeout=aiohttp.ClientTimeout(total=3)) as r:
                out["plain"] = r.status
    except (TimeoutError, aiohttp.ClientError) as e:
        out["plain"] = type(e).__name__
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as s:
        async with s.get(url + "api/patients") as r:
            out["nologin"] = r.status
        async with s.get(url, allow_redirects=False) as r:
            out["page_nologin"] = (r.status, r.headers.get("Location"))
        async with s.get(url + "api/patients", headers=_basic("dr-a", "wrong")) as r:
            out["badpw"] = r.status
    return out


def test_audit_log_lines_are_json_with_who_what_when(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.write("dr-a", "listen", patient="bed-1", what="bed-1/pcg", peer="127.0.0.1:5")
    (doc,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert doc["user"] == "dr-a" and doc["action"] == "listen" and doc["what"] == "bed-1/pcg"


def test_http_gateway_https_login_and_audit(tls: tuple[Path, Path], access: Path, tmp_path: Path) -> None:
    """The inference API's HTTP gateway uses the same module: HTTPS, 401 without a login, audit."""
    import urllib.error
    import urllib.request

    from telediag.api.http import HttpGateway
    from telediag.api.service import Service

    with pytest.raises(ConfigError, match="plain HTTP on 0.0.0.0"):
        HttpGateway(Service(workers=1), "0.0.0.0", 0)
    svc = Service(workers=1)
    gw = HttpGateway(svc, "127.0.0.1", 0, tls_cert=str(tls[0]), tls_key=str(tls[1]), access=str(access),
                     audit=str(tmp_path / "api_audit.jsonl")).start()
    ctx = ssl.create_default_context(cafile=str(tls[0]))
    try:
        assert gw.url.startswith("https://")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(gw.url + "/v1/health", context=ctx, timeout=10)
        assert e.value.code == 401
        req = urllib.request.Request(gw.url + "/v1/health", headers={"Authorization": "Bearer token-a"})
        doc = json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())
        assert doc["ok"] and doc["result"]["status"] == "ok"
        req = urllib.request.Request(gw.url + "/v1/models", headers=_basic("chief", "pw-c"))
        assert urllib.request.urlopen(req, context=ctx, timeout=10).status == 200
        with pytest.raises(OSError):   # plain HTTP to the TLS port: dropped
            urllib.request.urlopen(gw.url.replace("https", "http") + "/v1/health", timeout=5)
    finally:
        gw.stop()
    lines = [json.loads(x) for x in (tmp_path / "api_audit.jsonl").read_text().splitlines()]
    assert [(x["user"], x["action"]) for x in lines[:3]] == [(None, "refused"), ("dr-a", "api"), ("chief", "api")]
    assert lines[1]["what"] == "GET /v1/health"


def test_recording_links_served_with_login(tmp_path: Path, access: Path) -> None:
    """Issue 19 item 5: /recording lists the session's documents, /recording/<name> serves them,
    behind the same login; names outside the index are 404 (no path traversal)."""
    import numpy as np

    from telediag.recorder import Recorder

    rec = Recorder(tmp_path / "rec")
    x = np.zeros((250, 1), np.float32)
    for k in range(4):
        rec.add(Chunk.signal("ecg", "bed-1/ecg/filtered", k, 10**18 + k * 10**9, x, 250.0, ["II"], ["mV"]))
        rec.add(Chunk.record("beats", "bed-1/ecg", k, 10**18 + k * 10**9,
                             {"beats": [{"sample": 10, "t_ns": 10**18 + k * 10**9, "label": "N"}]}))
    rec.close()
    v = ViewerThread("tcp://127.0.0.1:1", port=0, access=access)
    url = v.start()

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        h = {"Authorization": "Bearer token-a"}
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "recording", headers=h) as r:
                out["empty"] = await r.json()
            v.set_recording_dir(tmp_path / "rec")
            async with s.get(url + "recording") as r:
                out["nologin"] = r.status
            async with s.get(url + "recording", headers=h) as r:
                out["index"] = await r.json()
            async with s.get(url + "recording/bundle.json", headers=h) as r:
                out["bundle"] = (r.status, (await r.json()).get("resourceType"))
            async with s.get(url + "recording/..%2F..%2Fetc%2Fpasswd", headers=h) as r:
                out["traversal"] = r.status
        return out

    try:
        res = asyncio.run(main())
    finally:
        v.stop()
    assert res["empty"] == {} and res["nologin"] == 401
    assert res["index"]["bundle.json"] == "/recording/bundle.json" and "report.html" in res["index"]
    assert res["bundle"] == (200, "Bundle") and res["traversal"] == 404


def test_cross_origin_websocket_is_refused(access: Path) -> None:
    v = ViewerThread("tcp://127.0.0.1:1", port=0, access=access)
    url = v.start()

    async def main() -> tuple[int, bool]:
        h = {"Authorization": "Bearer token-a"}
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(url + "ws", headers={**h, "Origin": "https://evil.example"}):
                    bad = 101
            except aiohttp.WSServerHandshakeError as e:
                bad = e.status
            async with s.ws_connect(url + "ws", headers={**h, "Origin": url.rstrip("/")}) as ws:
                m = await ws.receive(timeout=5)
                good = json.loads(m.data)["kind"] == "_hello"
        return bad, good

    try:
        bad, good = asyncio.run(main())
    finally:
        v.stop()
    assert bad == 403 and good
