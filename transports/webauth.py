"""HTTPS, login, per-patient access and an audit log for the web viewer and the HTTP gateway.

Framework-free on purpose: :mod:`telediag.viewer.server` (aiohttp) and
:mod:`telediag.api.http` (stdlib ``http.server``) both use it.

Access file (TOML), one table per user::

    [users.dr-lee]
    password = "scrypt$16384$8$1$<salt b64>$<hash b64>"   # telediag keys user dr-lee --access FILE
    patients = ["bed-1", "bed-2"]                         # "*" = every patient
    tokens = ["sha256:<hex of the token's sha256>"]       # optional bearer tokens (stored hashed)

Passwords are hashed with scrypt (RFC 7914; N=2^14, r=8, p=1, 16-byte salt), compared in
constant time. A browser logs in once (``POST /login``) and gets a session cookie: an
HMAC-SHA256-signed ``user|expiry`` (key random per server process unless given), HttpOnly,
SameSite=Strict, Secure under TLS. Programs send ``Authorization: Bearer <token>`` or
``Authorization: Basic <user:password>``.

:func:`check_bind` is the rule "plain HTTP only on loopback": a non-loopback listen address
without TLS *and* an access file is refused at startup. :class:`AuditLog` writes one JSON line
per view, listen, alarm acknowledgement, login and refusal (who, what, when).

Examples
--------
>>> h = hash_password("correct horse")
>>> verify_password("correct horse", h), verify_password("wrong", h)
(True, False)
>>> check_bind("127.0.0.1", tls=False, auth=False)  # loopback: plain HTTP is fine
>>> check_bind("0.0.0.0", tls=False, auth=True)
Traceback (most recent call last):
...
telediag.errors.ConfigError: refusing to serve plain HTTP on 0.0.0.0 (not loopback): give --tls-cert/--tls-key (telediag keys tls makes a self-signed pair)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telediag.errors import ConfigError

__all__ = [
    "AccessConfig",
    "AuditLog",
    "Authenticator",
    "User",
    "check_bind",
    "hash_password",
    "is_loopback",
    "make_self_signed",
    "patient_of_topic",
    "server_ssl_context",
    "verify_password",
]

_SCRYPT = (1 << 14, 8, 1)  # N, r, p: ~16 MiB, tens of ms per check
SESSION_COOKIE = "td_session"


# --------------------------------------------------------------------------- passwords
def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``."""
    if not password:
        raise ConfigError("password must not be empty")
    n, r, p = _SCRYPT
    salt = salt if salt is not None else os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` string (constant-time compare)."""
    try:
        algo, n, r, p, salt_b64, h_b64 = stored.split("$")
        if algo != "scrypt":
            return False
        want = base64.b64decode(h_b64)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), n=int(n), r=int(r),
                             p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def token_hash(token: str) -> str:
    """How a bearer token is stored in the access file: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


# --------------------------------------------------------------------------- users and access
@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user and the patients they may see (``"*"``: all)."""

    name: str
    patients: frozenset[str]

    def may_see(self, patient: str) -> bool:
        return "*" in self.patients or patient in self.patients


@dataclass(slots=True)
class _Entry:
    password: str | None
    patients: frozenset[str]
    tokens: frozenset[str]


@dataclass(slots=True)
class AccessConfig:
    """Users, password hashes, bearer-token hashes and per-patient access lists."""

    users: dict[str, _Entry] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> AccessConfig:
        """Read an access file (see the module docstring); errors name the user and key."""
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read access file {p}: {e}") from e
        return cls.from_dict(doc, p)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], path: Path | None = None) -> AccessConfig:
        extra = set(doc) - {"users"}
        if extra:
            raise ConfigError(f"access file: unknown top-level keys {sorted(extra)} (expected [users.NAME])")
        users: dict[str, _Entry] = {}
        for name, u in (doc.get("users") or {}).items():
            if not isinstance(u, Mapping):
                raise ConfigError(f"access file: users.{name} must be a table")
            bad = set(u) - {"password", "patients", "tokens"}
            if bad:
                raise ConfigError(f"access file: users.{name} has unknown keys {sorted(bad)}")
            pw = u.get("password")
            if pw is not None and (not isinstance(pw, str) or not pw.startswith("scrypt$")):
                raise ConfigError(f"access file: users.{name}.password must be an scrypt$... hash "
                                  "(telediag keys user NAME --access FILE writes one)")
            pats = u.get("patients", [])
            if not isinstance(pats, list) or not all(isinstance(x, str) for x in pats):
                raise ConfigError(f"access file: users.{name}.patients must be a list of patient ids, got {pats!r}")
            toks = u.get("tokens", [])
            if not isinstance(toks, list) or not all(isinstance(t, str) and t.startswith("sha256:") for t in toks):
                raise ConfigError(f"access file: users.{name}.tokens must be a list of 'sha256:<hex>' strings")
            users[str(name)] = _Entry(pw, frozenset(pats), frozenset(toks))
        return cls(users, path)

    def save(self, path: str | Path) -> None:
        """Write the access file (mode 600)."""
        lines = []
        for name, e in sorted(self.users.items()):
            lines.append(f"[users.{json.dumps(name)}]")
            if e.password:
                lines.append(f"password = {json.dumps(e.password)}")
            lines.append(f"patients = {json.dumps(sorted(e.patients))}")
            if e.tokens:
                lines.append(f"tokens = {json.dumps(sorted(e.tokens))}")
            lines.append("")
        p = Path(path)
        p.write_text("\n".join(lines))
        p.chmod(0o600)

    def set_user(self, name: str, *, password: str | None = None, patients: Iterable[str] | None = None,
                 token: str | None = None) -> None:
        """Add or update a user (password hashed, token stored as its hash)."""
        old = self.users.get(name, _Entry(None, frozenset(), frozenset()))
        self.users[name] = _Entry(hash_password(password) if password else old.password,
                                  frozenset(patients) if patients is not None else old.patients,
                                  old.tokens | {token_hash(token)} if token else old.tokens)

    def user(self, name: str) -> User | None:
        e = self.users.get(name)
        return User(name, e.patients) if e is not None else None


class Authenticator:
    """Checks passwords, bearer tokens and session cookies against an :class:`AccessConfig`.

    Examples
    --------
    >>> acc = AccessConfig(); acc.set_user("ann", password="pw", patients=["bed-1"], token="t0k")
    >>> auth = Authenticator(acc)
    >>> auth.check_header("Bearer t0k").name, auth.check_header("Bearer nope")
    ('ann', None)
    >>> cookie = auth.session_for(auth.login("ann", "pw"))
    >>> auth.check_session(cookie).may_see("bed-2")
    False
    """

    def __init__(self, access: AccessConfig, secret: bytes | None = None, session_s: float = 12 * 3600) -> None:
        self.access = access
        self.secret = secret or secrets.token_bytes(32)
        self.session_s = session_s
        self._ok_cache: dict[str, float] = {}  # sha256(user, password) -> expiry, spares scrypt per request
        self._lock = threading.Lock()

    def login(self, name: str, password: str) -> User | None:
        e = self.access.users.get(name)
        if e is None or not e.password:
            hash_password("timing-equaliser", salt=b"0" * 16)  # same cost for unknown users
            return None
        key = hashlib.sha256(f"{name}\0{password}\0{e.password}".encode()).hexdigest()
        with self._lock:
            if self._ok_cache.get(key, 0.0) > time.monotonic():
                return self.access.user(name)
        if not verify_password(password, e.password):
            return None
        with self._lock:
            if len(self._ok_cache) > 1000:
                self._ok_cache.clear()
            self._ok_cache[key] = time.monotonic() + 60.0
        return self.access.user(name)

    def token(self, token: str) -> User | None:
        h = token_hash(token)
        for name, e in self.access.users.items():
            if any(hmac.compare_digest(h, t) for t in e.tokens):
                return self.access.user(name)
        return None

    def check_header(self, authorization: str | None) -> User | None:
        """A ``Bearer`` or ``Basic`` ``Authorization`` header's user, or ``None``."""
        if not authorization:
            return None
        scheme, _, cred = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and cred:
            return self.token(cred.strip())
        if scheme.lower() == "basic" and cred:
            try:
                name, _, pw = base64.b64decode(cred.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return self.login(name, pw)
        return None

    def session_for(self, user: User | None) -> str:
        """A signed session value ``name|expiry|sig`` for a cookie."""
        if user is None:
            raise ConfigError("no user to make a session for")
        payload = f"{base64.urlsafe_b64encode(user.name.encode()).decode()}|{int(time.time() + self.session_s)}"
        sig = hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()
        return f"{payload}|{sig}"

    def check_session(self, value: str | None) -> User | None:
        """The user of a valid, unexpired session value (re-read from the access config)."""
        if not value:
            return None
        try:
            name_b64, exp, sig = value.split("|")
            want = hmac.new(self.secret, f"{name_b64}|{exp}".encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(sig, want) or int(exp) < time.time():
                return None
            return self.access.user(base64.urlsafe_b64decode(name_b64.encode()).decode())
        except (ValueError, UnicodeDecodeError):
            return None


def patient_of_topic(topic: str) -> str:
    """The patient a topic belongs to: the first part of its stream id (``ecg/bed-1/ecg`` -> ``bed-1``)."""
    parts = topic.split("/")
    return parts[1] if len(parts) > 1 else ""


# --------------------------------------------------------------------------- audit
class AuditLog:
    """Append-only JSON lines: ``{"t", "t_ns", "user", "action", "patient", "what", "peer", "ok"}``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "audit.jsonl"
    >>> AuditLog(p).write("ann", "view", patient="bed-1", peer="127.0.0.1")
    >>> json.loads(p.read_text())["action"]
    'view'
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self.lines: list[dict[str, Any]] = []  # the last 1000, for tests and /audit

    def write(self, user: str | None, action: str, *, patient: str | None = None, what: str | None = None,
              peer: str | None = None, ok: bool = True, **extra: Any) -> None:
        t = time.time_ns()
        doc = {"t": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1e9)) + f".{t % 10**9 // 10**6:03d}Z",
               "t_ns": t, "user": user, "action": action, "patient": patient, "what": what, "peer": peer,
               "ok": ok, **extra}
        line = json.dumps(doc, separators=(",", ":"), default=str)
        with self._lock:
            self.lines.append(doc)
            del self.lines[:-1000]
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(line + "\n")


# --------------------------------------------------------------------------- TLS and binding
def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, tls: bool, auth: bool) -> None:
    """Refuse a non-loopback listen address without TLS and a login (raises :class:`ConfigError`)."""
    if is_loopback(host):
        return
    if not tls:
        raise ConfigError(f"refusing to serve plain HTTP on {host} (not loopback): give --tls-cert/--tls-key "
                          "(telediag keys tls makes a self-signed pair)")
    if not auth:
        raise ConfigError(f"refusing to serve {host} (not loopback) without a login: give --access FILE "
                          "(telediag keys user NAME --access FILE adds a user)")


def server_ssl_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or newer) from PEM certificate and key files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {e}") from e
    return ctx


def make_self_signed(cert: str | Path, key: str | Path, hosts: Iterable[str] = ("localhost", "127.0.0.1"),
                     days: int = 365) -> tuple[Path, Path]:
    """A self-signed certificate (EC P-256) for trials, with ``hosts`` as subject alt names.

    Uses the ``openssl`` command (OpenSSL 1.1.1 or newer).
    """
    exe = shutil.which("openssl")
    if exe is None:
        raise ConfigError("openssl not found: apt-get install -y openssl (needed by telediag keys tls)")
    hosts = list(hosts)
    if not hosts:
        raise ConfigError("give at least one host name or address for the certificate")
    san = ",".join(("IP:" if _is_ip(h) else "DNS:") + h for h in hosts)
    cert, key = Path(cert), Path(key)
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", str(key), "-out", str(cert), "-days", str(int(days)), "-subj", f"/CN={hosts[0]}",
           "-addext", f"subjectAltName={san}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ConfigError(f"openssl failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    key.chmod(0o600)
    return cert, key


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False
