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
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

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


class CurveServer:
    """Server side: a ZAP handler with an allow-list, and socket setup.

    Parameters
    ----------
    ctx : zmq.Context
        The context whose sockets it secures (ZAP runs per context).
    server_secret : path
        The server's ``.key_secret`` file.
    allow_dir : path
        Folder of allowed client ``.key`` files (re-read by :meth:`reload`).
    """

    def __init__(self, ctx: zmq.Context, server_secret: str | Path, allow_dir: str | Path) -> None:
        self.keys = load_secret(server_secret)
        self.allow_dir = Path(allow_dir)
        if not self.allow_dir.is_dir():
            raise ConfigError(f"allow-list folder {str(self.allow_dir)!r} not found")
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.reload()

    def reload(self) -> None:
        """Re-read the allow-list folder (after ``telediag keys allow/revoke``)."""
        self.auth.configure_curve(domain="*", location=str(self.allow_dir))

    def secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (call before bind)."""
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()


def secure_client(sock: zmq.Socket, client_secret: str | Path, server_key: str | Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public key file is ``server_key``."""
    me = load_secret(client_secret)
    server = load(server_key)
    sock.curve_secretkey = me.secret
    sock.curve_publickey = me.public
    sock.curve_serverkey = server.public
