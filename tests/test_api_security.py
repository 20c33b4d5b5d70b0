"""The inference API with CurveZMQ: allow-listed keys are served, unknown and revoked keys are not.

The allow-list folder is the one ``telediag keys allow/revoke/list`` manages (the engine's).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from test_security import _Tap  # the engine's loopback byte recorder (reused, not copied)

from telediag.api.schema import pack_header, unpack_header
from telediag.api.serve_cli import add_arguments, security_of
from telediag.api.serve_cli import run as serve_run
from telediag.api.server import ApiServer
from telediag.api.service import Service
from telediag.engine.config import load_config
from telediag.errors import ConfigError
from telediag.transports import keys_cli, security

_ids = itertools.count(1)
CANARY = "plaintext-canary-7f3a"


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    for name in ("api", "lab1", "lab2", "intruder"):
        security.generate(name, d)
    for name in ("lab1", "lab2"):
        security.allow(d / f"{name}.key", d / "allowed")
    return d


@pytest.fixture()
def server(keys: Path) -> Iterator[ApiServer]:
    srv = ApiServer(Service(workers=1), "tcp://127.0.0.1:*", server_secret=keys / "api.key_secret",
                    allow_dir=keys / "allowed").start()
    yield srv
    srv.stop(close_service=True)


class _Caller:
    """A DEALER with (or without) a client key pair, speaking the API's framing directly."""

    def __init__(self, ctx: zmq.Context, addr: str, secret: Path | None, server_key: Path | None) -> None:  # type: ignore[type-arg]
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if secret is not None and server_key is not None:
            security.secure_client(self.sock, secret, server_key)
        self.sock.connect(addr)

    def health(self, timeout_s: float, req_id: Any = None) -> dict[str, Any] | None:
        rid = next(_ids) if req_id is None else req_id
        self.sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        try:  # a refused peer may have no pipe to queue on: the send itself times out then
            self.sock.send_multipart([b"", pack_header({"v": 1, "op": "health", "id": rid})])
        except zmq.Again:
            return None
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frames = self.sock.recv_multipart()
        head = unpack_header(frames[1], max_bytes=1 << 16)
        assert head["id"] == rid
        return head

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture()
def ctx() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    c: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    yield c
    c.term()


def test_allowed_key_served_unknown_and_plain_refused(server: ApiServer, keys: Path, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    ok = _Caller(ctx, server.endpoint, keys / "lab1.key_secret", keys / "api.key")
    intruder = _Caller(ctx, server.endpoint, keys / "intruder.key_secret", keys / "api.key")
    plain = _Caller(ctx, server.endpoint, None, None)
    try:
        head = ok.health(10)
        assert head is not None and head["ok"] and head["result"]["status"] == "ok"
        assert intruder.health(1.0) is None
        assert plain.health(0.5) is None
    finally:
        for c in (ok, intruder, plain):
            c.close()
    st = server.security_stats()
    assert st["curve"] and st["allowed_keys"] == 2
    assert st["handshakes_admitted"] >= 1 and st["handshakes_refused"] >= 1


def test_revoke_takes_effect_without_restart(server: ApiServer, keys: Path, ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    allowed = keys / "allowed"
    early = _Caller(ctx, server.endpoint, keys / "lab2.key_secret", keys / "api.key")
    try:
        assert early.health(10) is not None  # lab2 connected while allowed
        # revoke through the CLI, exactly as an operator would
        p = argparse.ArgumentParser()
        keys_cli.add_arguments(p)
        assert keys_cli.run(p.parse_args(["revoke", "lab2", "--allow-dir", str(allowed)])) == 0
        assert keys_cli.run(p.parse_args(["revoke", "lab2", "--allow-dir", str(allowed)])) == 1  # already gone
        # a new connection with the revoked key is refused at the handshake ...
        late = _Caller(ctx, server.endpoint, keys / "lab2.key_secret", keys / "api.key")
        assert late.health(1.0) is None
        late.close()
        # ... and the connection admitted before the revoke is refused per request
        assert early.health(1.0) is None
        assert server.security_stats()["unauthorized_requests"] == 1
        # other allowed keys are unaffected
        other = _Caller(ctx, server.endpoint, keys / "lab1.key_secret", keys / "api.key")
        assert other.health(10) is not None
        other.close()
        # re-admitting the key works for a new connection, again without a restart
        assert keys_cli.run(p.parse_args(["allow", str(keys / "lab2.key"), "--allow-dir", str(allowed)])) == 0
        again = _Caller(ctx, server.endpoint, keys / "lab2.key_secret", keys / "api.key")
        assert again.health(10) is not None
        again.close()
    finally:
        early.close()


@pytest.mark.parametrize("curve", [False, True])
def test_api_bytes_on_the_wire_are_not_plaintext(keys: Path, ctx: zmq.Context, curve: bool) -> None:  # type: ignore[type-arg]
    kw: dict[str, Any] = {"server_secret": keys / "api.key_secret", "allow_dir": keys / "allowed"} if curve else {}
    srv = ApiServer(Service(workers=1), "tcp://127.0.0.1:*", **kw).start()
    tap = _Tap(int(srv.endpoint.rsplit(":", 1)[1]))
    caller = _Caller(ctx, f"tcp://127.0.0.1:{tap.port}", keys / "lab1.key_secret" if curve else None,
                     keys / "api.key" if curve else None)
    try:
        head = caller.health(10, req_id=CANARY)
    finally:
        caller.close()
        tap.close()
        srv.stop(close_service=True)
    assert head is not None and head["ok"]  # the request went through the tap
    captured = bytes(tap.captured)
    assert (CANARY.encode() in captured) is (not curve)
    assert (b"health" in captured) is (not curve)
    if curve:
        assert b"CURVE" in captured[:200]


def test_serve_cli_security_switch(keys: Path, tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--server-secret", str(keys / "api.key_secret"), "--allow-dir", str(keys / "allowed")])
    assert security_of(args) == (str(keys / "api.key_secret"), str(keys / "allowed"))
    assert security_of(p.parse_args([])) == (None, None)
    with pytest.raises(ConfigError, match="needs both"):
        security_of(p.parse_args(["--allow-dir", str(keys / "allowed")]))
    # the engine's [security] switch applies to the API as well (paths relative to the file)
    toml = tmp_path / "engine.toml"
    toml.write_text('[security]\ncurve = true\nserver_secret = "keys/api.key_secret"\nallow_dir = "keys/allowed"\n')
    secret, allow_dir = security_of(p.parse_args([]), load_config(toml))
    assert Path(str(secret)).resolve() == (keys / "api.key_secret").resolve()
    assert Path(str(allow_dir)).resolve() == (keys / "allowed").resolve()
    # with CurveZMQ on, the plaintext HTTP gateway may not listen beyond loopback
    with pytest.raises(ConfigError, match="loopback"):
        serve_run(p.parse_args(["--server-secret", str(keys / "api.key_secret"), "--allow-dir",
                                str(keys / "allowed"), "--http-host", "0.0.0.0", "--watch-s", "0"]))


def test_server_refuses_half_configured_security(keys: Path) -> None:
    svc = Service(workers=1)
    try:
        with pytest.raises(ConfigError, match="both server_secret"):
            ApiServer(svc, "tcp://127.0.0.1:*", server_secret=keys / "api.key_secret")
        with pytest.raises(ConfigError, match="not found"):
            ApiServer(svc, "tcp://127.0.0.1:*", server_secret=keys / "api.key_secret", allow_dir=keys / "nope")
    finally:
        svc.close()


def test_inference_client_with_its_own_key(server: ApiServer, keys: Path) -> None:
    from telediag.client import InferenceClient

    with InferenceClient(server.endpoint, timeout_s=5, retries=0, curve_secret=keys / "lab1.key_secret",
                         server_key=keys / "api.key") as c:
        assert c.health()["status"] == "ok"
    with pytest.raises(ValueError, match="both"):
        InferenceClient(server.endpoint, curve_secret=keys / "lab1.key_secret")
