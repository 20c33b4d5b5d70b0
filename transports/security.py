"""CurveZMQ encryption and client authentication (one config switch).

Keys are ZeroMQ certificate files (Z85 text): ``NAME.key`` holds the public key and
may be shared; ``NAME.key_secret`` holds both keys and stays with its owner. The
engine (server) has one key pair; every client (source agent, viewer bridge, API
caller) has its own. The server's allow-list is a folder of client ``*.key`` files:
its ZAP handler (RFC 27, pyzmq's authenticator thread) admits a CURVE handshake only
from a public key in that folder, so an unknown key is refused before any message is
read. Plain TCP (``curve = false``) is for loopback and trusted development only.

Typical setup::

    telediag keys generate engine --dir keys/           # server pair
    telediag keys generate bed-1  --dir keys/           # one pair per client
    telediag keys allow keys/bed-1.key --allow-dir keys/allowed

then in the engine config::

    [security]
    curve = true
    server_secret = "keys/engine.key_secret"
    allow_dir = "keys/allowed"

and clients pass ``--curve-secret keys/bed-1.key_secret --server-key keys/engine.key``.

The allow-list folder is **re-read on every CURVE handshake** (:class:`AllowList`), so
``telediag keys allow`` and ``telediag keys revoke`` take effect for the next connection
without a restart. A connection that was admitted before a revoke stays open until it
closes (ZeroMQ has no way to cut one peer of a bound socket); request/reply servers such as
the inference API also re-check the sender's key on every request (:meth:`AllowList.
is_allowed` with the ``User-Id`` the ZAP handler attached), so there a revoke is immediate.
See ``docs/security.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from telediag.errors import ConfigError


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair (Z85-encoded bytes; ``secret`` is None for a public-only file)."""

    public: bytes
    secret: bytes | None


def generate(name: str, directory: str | Path) -> tuple[Path, Path]:
    """Create ``NAME.key`` (public) and ``NAME.key_secret`` in ``directory``.

    Refuses to overwrite an existing pair (a lost key would lock clients out).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name must be a plain file name, got {name!r}")
    pub, sec = d / f"{name}.key", d / f"{name}.key_secret"
    if pub.exists() or sec.exists():
        raise ConfigError(f"key pair {name!r} already exists in {str(d)!r}; remove it first to replace it")
    public_file, secret_file = zmq.auth.create_certificates(str(d), name)
    Path(secret_file).chmod(0o600)
    return Path(public_file), Path(secret_file)


def load(path: str | Path) -> KeyPair:
    """Load a ``.key`` or ``.key_secret`` certificate file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"key file {str(p)!r} not found")
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except (ValueError, OSError) as e:
        raise ConfigError(f"{str(p)!r} is not a ZeroMQ certificate file: {e}") from e
    if public is None or len(public) != 40:
        raise ConfigError(f"{str(p)!r} holds no valid Z85 public key")
    return KeyPair(public=public, secret=secret)


def load_secret(path: str | Path) -> KeyPair:
    """Load a ``.key_secret`` file; error if it holds no secret key."""
    kp = load(path)
    if not kp.secret:
        raise ConfigError(f"{str(path)!r} holds only a public key; give the .key_secret file")
    return kp


def allow(public_key_file: str | Path, allow_dir: str | Path) -> Path:
    """Add a client's public key to an allow-list folder (copies the ``.key`` file)."""
    kp = load(public_key_file)
    src = Path(public_key_file)
    d = Path(allow_dir)
    d.mkdir(parents=True, exist_ok=True)
    dst = d / (src.name if src.suffix == ".key" else src.stem + ".key")
    if src.name.endswith(".key_secret"):
        # never copy a secret into the allow-list: write the public half only
        dst = d / src.name.replace(".key_secret", ".key")
        dst.write_text(
            "#   ZeroMQ CURVE Public Certificate (written by telediag keys allow)\n"
            f"metadata\ncurve\n    public-key = \"{kp.public.decode()}\"\n"
        )
    else:
        shutil.copyfile(src, dst)
    return dst


def revoke(name: str, allow_dir: str | Path) -> bool:
    """Remove ``NAME.key`` from the allow-list; True if it was there."""
    p = Path(allow_dir) / f"{name}.key"
    if p.exists():
        p.unlink()
        return True
    return False


def allowed(allow_dir: str | Path) -> dict[str, bytes]:
    """Public keys in an allow-list folder, by file stem."""
    out = {}
    for p in sorted(Path(allow_dir).glob("*.key")):
        out[p.stem] = load(p).public
    return out


class AllowList:
    """The client public keys in an allow-list folder, re-read when the folder changes.

    Used as the ZAP handler's CURVE credentials provider: :meth:`callback` re-scans the
    folder on **every handshake**, so keys added with ``telediag keys allow`` are admitted,
    and keys removed with ``telediag keys revoke`` refused, from the next connection on.
    :meth:`is_allowed` is the cheap per-message check (it re-scans only when the folder's
    modification time changed, or at most ``max_age_s`` after the last scan).

    Parameters
    ----------
    allow_dir : path
        Folder of ``NAME.key`` files (public certificates).
    max_age_s : float
        Longest time :meth:`is_allowed` trusts its cache without re-reading the folder.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> pub, _ = generate("bed-1", d / "keys")
    >>> _ = allow(pub, d / "allowed")
    >>> acl = AllowList(d / "allowed")
    >>> acl.is_allowed(load(pub).public), acl.is_allowed(b"0" * 40)
    (True, False)
    >>> revoke("bed-1", d / "allowed"), acl.callback("*", load(pub).public)
    (True, False)
    """

    def __init__(self, allow_dir: str | Path, *, max_age_s: float = 1.0) -> None:
        self.allow_dir = Path(allow_dir)
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._keys: frozenset[bytes] = frozenset()
        self._stamp: int | None = None
        self._scanned = 0.0
        self.refused = 0  # handshakes refused (unknown or revoked key)
        self.admitted = 0
        self.rescan()

    def rescan(self) -> frozenset[bytes]:
        """Re-read the folder now; unreadable files are skipped (a bad file admits nobody)."""
        try:
            stamp: int | None = os.stat(self.allow_dir).st_mtime_ns
        except OSError:
            stamp = None
        keys = set()
        if stamp is not None:
            for p in sorted(self.allow_dir.glob("*.key")):
                try:
                    keys.add(load(p).public)
                except ConfigError:
                    continue
        with self._lock:
            self._keys = frozenset(keys)
            self._stamp = stamp
            self._scanned = time.monotonic()
        return self._keys

    def _current(self) -> frozenset[bytes]:
        try:
            stamp: int | None = os.stat(self.allow_dir).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamp or time.monotonic() - self._scanned > self.max_age_s:
            return self.rescan()
        return self._keys

    def is_allowed(self, public_key: bytes | str) -> bool:
        """Whether a Z85 public key (40 characters) is in the folder (cached, see above)."""
        key = public_key.encode() if isinstance(public_key, str) else bytes(public_key)
        return key in self._current()

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq credentials-provider hook: called by the ZAP thread on each CURVE handshake."""
        ok = bytes(key) in self.rescan()
        if ok:
            self.admitted += 1
        else:
            self.refused += 1
        return ok

    def __len__(self) -> int:
        return len(self._current())


class CurveServer:
    """Server side: a ZAP handler with an allow-list, and socket setup.

    Parameters
    ----------
    ctx : zmq.Context
        The context whose sockets it secures (ZAP runs per context: one
        ``CurveServer`` per context).
    server_secret : path
        The server's ``.key_secret`` file.
    allow_dir : path
        Folder of allowed client ``.key`` files, re-read on every handshake
        (see :class:`AllowList`).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = generate("server", d)
    >>> ctx = zmq.Context()
    >>> srv = CurveServer(ctx, d / "server.key_secret", d)
    >>> with ctx.socket(zmq.ROUTER) as s:
    ...     srv.secure(s)
    ...     s.curve_server
    1
    >>> srv.stop(); ctx.term()
    """

    def __init__(self, ctx: zmq.Context, server_secret: str | Path, allow_dir: str | Path) -> None:  # type: ignore[type-arg]
        self.keys = load_secret(server_secret)
        self.allow_dir = Path(allow_dir)
        if not self.allow_dir.is_dir():
            raise ConfigError(f"allow-list folder {str(self.allow_dir)!r} not found")
        self.allow_list = AllowList(self.allow_dir)
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self.allow_list)

    def reload(self) -> None:
        """Re-read the allow-list folder now (not needed: every handshake re-reads it)."""
        self.allow_list.rescan()

    def secure(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make ``sock`` a CURVE server (call before bind)."""
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def sender_allowed(self, frame: Any) -> bool:
        """Whether the client that sent ``frame`` (a :class:`zmq.Frame`) is still allowed.

        The ZAP handler stamps every message of an admitted connection with the client's
        Z85 public key as ``User-Id``; this re-checks it against the folder, so a revoke
        also cuts off connections that were admitted before it (request/reply servers).
        """
        try:
            user = frame.get("User-Id")
        except (zmq.ZMQError, AttributeError, KeyError, TypeError):
            return False
        return isinstance(user, str | bytes) and self.allow_list.is_allowed(user)

    def stop(self) -> None:
        """Stop the ZAP handler thread."""
        self.auth.stop()


def secure_client_if(sock: zmq.Socket, client_secret: str | Path | None, server_key: str | Path | None) -> None:
    """:func:`secure_client` when both files are given, nothing when neither; one alone is an error.

    What every agent's ``--curve-secret`` / ``--server-key`` pair does.
    """
    if client_secret is None and server_key is None:
        return
    if not (client_secret and server_key):
        raise ConfigError("CurveZMQ needs both --curve-secret (this client's .key_secret) and "
                            f"--server-key (the engine's .key), got {client_secret!r} and {server_key!r}")
    secure_client(sock, client_secret, server_key)


def secure_client(sock: zmq.Socket, client_secret: str | Path, server_key: str | Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public key file is ``server_key``."""
    me = load_secret(client_secret)
    server = load(server_key)
    sock.curve_secretkey = me.secret
    sock.curve_publickey = me.public
    sock.curve_serverkey = server.public


def add_curve_arguments(p: argparse.ArgumentParser) -> None:
    """``--curve-secret`` / ``--server-key`` for clients of an engine with CurveZMQ on.

    Lives here (not in :mod:`telediag.cli`) so that source, viewer and client commands can use
    it without importing the top-level CLI (see ``tests/test_layering.py``).
    """
    g = p.add_argument_group("CurveZMQ (when the engine runs with [security].curve = true)")
    g.add_argument("--curve-secret", metavar="FILE", help="this client's .key_secret file")
    g.add_argument("--server-key", metavar="FILE", help="the engine's public .key file")
