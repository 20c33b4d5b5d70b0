"""Thin ZeroMQ helpers for wire protocol v1: send/receive one chunk, and socket factories.

The engine's default endpoints (see ``PROTOCOL.md``):

* :data:`DEFAULT_INGEST` - sources ``PUSH`` (connect) to the engine's ``PULL`` (bind).
* :data:`DEFAULT_PUBLISH` - the engine ``PUB`` (bind) to subscribers' ``SUB`` (connect).
* :data:`DEFAULT_API` - the inference API (engine ``ROUTER`` binds).

The factories return plain :class:`zmq.Socket` objects, which are context managers, so

>>> import zmq
>>> ctx = zmq.Context.instance()
>>> with puller(ctx, "inproc://doc-ingest") as pull, pusher(ctx, "inproc://doc-ingest") as push:
...     send_chunk(push, Chunk.record("event", "bed-1/ecg", 0, 0, {"type": "hello"}))
...     recv_chunk(pull).body
{'type': 'hello'}
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Final

import zmq

from telediag.errors import ConfigError
from telediag.transports.wire import Chunk, decode, encode

__all__ = [
    "ENDPOINT_SCHEMES",
    "PeerWatch",
    "endpoint",
    "endpoint_arg",
    "DEFAULT_API",
    "DEFAULT_HWM",
    "DEFAULT_INGEST",
    "DEFAULT_PUBLISH",
    "publisher",
    "puller",
    "pusher",
    "recv_chunk",
    "recv_frames",
    "send_chunk",
    "send_frames",
    "subscriber",
]

DEFAULT_INGEST: Final = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH: Final = "tcp://127.0.0.1:5556"
DEFAULT_API: Final = "tcp://127.0.0.1:5557"
#: Default high-water mark, in messages (chunks). At 360-sample ECG chunks of 1 s this is
#: almost three hours of one stream; for video frames it bounds memory to HWM x frame size.
DEFAULT_HWM: Final = 10_000

#: ZeroMQ transports telediag accepts in an address.
ENDPOINT_SCHEMES: Final = ("tcp", "ipc", "inproc")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*-]+):(\d{1,5}|\*)$")


def endpoint(addr: str) -> str:
    """Check a ZeroMQ address and return it in full; ``host:port`` means ``tcp://host:port``.

    Raises
    ------
    telediag.errors.ConfigError
        Not ``tcp://host:port``, ``ipc://path``, ``inproc://name`` or ``host:port``; the message
        names the address and the accepted forms.

    Examples
    --------
    >>> endpoint("localhost:5555")
    'tcp://localhost:5555'
    >>> endpoint("ipc:///tmp/telediag-ingest")
    'ipc:///tmp/telediag-ingest'
    >>> endpoint("localhost")
    Traceback (most recent call last):
    ...
    telediag.errors.ConfigError: invalid address 'localhost': expected tcp://HOST:PORT, HOST:PORT (same as tcp://HOST:PORT), ipc://PATH or inproc://NAME
    """
    a = str(addr).strip()
    forms = "tcp://HOST:PORT, HOST:PORT (same as tcp://HOST:PORT), ipc://PATH or inproc://NAME"
    if "://" not in a:
        if _HOST_PORT.match(a) and (a.endswith("*") or 0 <= int(a.rsplit(":", 1)[1]) < 65536):
            return "tcp://" + a
        raise ConfigError(f"invalid address {addr!r}: expected {forms}")
    scheme, rest = a.split("://", 1)
    if scheme not in ENDPOINT_SCHEMES or not rest:
        raise ConfigError(f"invalid address {addr!r}: expected {forms}")
    if scheme == "tcp":
        m = _HOST_PORT.match(rest)
        if not m or (not rest.endswith("*") and not 0 <= int(rest.rsplit(":", 1)[1]) < 65536):
            raise ConfigError(f"invalid address {addr!r}: a tcp address needs a host and a port 0-65535 (or *) "
                              f"(e.g. tcp://127.0.0.1:5555)")
    return a


def endpoint_arg(addr: str) -> str:
    """:func:`endpoint` as an ``argparse`` ``type=``: a bad address is a usage error, not a traceback."""
    import argparse

    try:
        return endpoint(addr)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def send_chunk(sock: zmq.Socket, chunk: Chunk, *, flags: int = 0) -> None:  # type: ignore[type-arg]
    """Send one chunk as a three-frame message; the payload is sent without copying.

    Parameters
    ----------
    sock : zmq.Socket
        A PUSH, PUB, DEALER, ... socket.
    chunk : Chunk
        The chunk; its ``data`` must not be modified until the message has left (ZeroMQ holds
        a reference to the buffer; small payloads are copied by pyzmq anyway).
    flags : int
        ``zmq.NOBLOCK`` raises :class:`zmq.Again` (nothing sent) when the socket is at its
        high-water mark. Once the first frame is accepted the whole message is.

    Raises
    ------
    ProtocolError
        When the chunk cannot be encoded (see :func:`~telediag.transports.wire.encode`).

    Examples
    --------
    >>> import zmq
    >>> ctx = zmq.Context.instance()
    >>> with puller(ctx, "inproc://doc-send") as a, pusher(ctx, "inproc://doc-send") as b:
    ...     send_chunk(b, Chunk.record("hr", "s", 0, 0, {"bpm": 60}))
    ...     recv_chunk(a).seq
    0
    """
    topic, header, payload = encode(chunk)
    sock.send(topic, flags | zmq.SNDMORE)
    sock.send(header, flags | zmq.SNDMORE)
    sock.send(payload, flags, copy=False)


# pyzmq's flags are ``enum.IntFlag`` members: ``zmq.SNDMORE | flags`` (what ``send_multipart`` does for
# each frame) and ``recv_multipart``'s ``RCVMORE`` query run Python-level enum code, about half the CPU of
# moving a 4-frame message (measured in the engine's router, session 4). The helpers below use plain ints.
_SNDMORE: Final = int(zmq.SNDMORE)
_FRAME_TYPES: Final = (bytes, zmq.Frame, memoryview)


def send_frames(sock: zmq.Socket, frames: list[object], flags: int = 0, *,  # type: ignore[type-arg]
                copy: bool = True) -> None:
    """``sock.send_multipart(frames, flags, copy=copy)``, cheaper (no enum arithmetic per frame).

    Every frame is checked to be sendable before the first one is sent (as ``send_multipart``
    does), so a bad frame never leaves half a message in the socket. With ``zmq.NOBLOCK`` a socket
    at its high-water mark refuses the first frame (:class:`zmq.Again`, nothing sent); once the
    first frame is accepted, libzmq takes the whole message.

    Examples
    --------
    >>> import zmq
    >>> ctx = zmq.Context.instance()
    >>> with puller(ctx, "inproc://doc-send-frames") as a, pusher(ctx, "inproc://doc-send-frames") as b:
    ...     send_frames(b, [b"x", b"y"])
    ...     [f.bytes for f in recv_frames(a)]
    [b'x', b'y']
    """
    for f in frames:
        if not isinstance(f, _FRAME_TYPES):
            memoryview(f)  # type: ignore[arg-type]  # raises TypeError before anything is sent
    flags = int(flags)
    more = flags | _SNDMORE
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, more if i < last else flags, copy=copy)  # type: ignore[call-overload]


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:  # type: ignore[type-arg]
    """Receive all frames of one multipart message without copying them
    (``sock.recv_multipart(flags, copy=False)``, cheaper: each frame says whether more follow).

    Examples
    --------
    >>> import zmq
    >>> ctx = zmq.Context.instance()
    >>> with puller(ctx, "inproc://doc-frames") as a, pusher(ctx, "inproc://doc-frames") as b:
    ...     b.send_multipart([b"x", b"y"])
    ...     [f.bytes for f in recv_frames(a)]
    [b'x', b'y']
    """
    flags = int(flags)
    f = sock.recv(flags, copy=False)
    parts = [f]
    while f.more:
        f = sock.recv(flags, copy=False)
        parts.append(f)
    return parts


def recv_chunk(sock: zmq.Socket, *, flags: int = 0) -> Chunk:  # type: ignore[type-arg]
    """Receive one message and decode it.

    The whole multipart message is always consumed, also when decoding then fails, so one bad
    message never desynchronises the socket.

    Raises
    ------
    ProtocolError
        When the message is not valid wire v1 (``reason`` says why).
    zmq.Again
        With ``flags=zmq.NOBLOCK`` when no message is waiting.

    Examples
    --------
    >>> import zmq
    >>> ctx = zmq.Context.instance()
    >>> from telediag.errors import ProtocolError
    >>> with puller(ctx, "inproc://doc-recv") as a, pusher(ctx, "inproc://doc-recv") as b:
    ...     b.send_multipart([b"junk"])
    ...     try:
    ...         recv_chunk(a)
    ...     except ProtocolError as e:
    ...         e.reason
    'frame_count'
    """
    return decode(recv_frames(sock, flags))


def _endpoint(sock: zmq.Socket, addr: str, bind: bool) -> None:  # type: ignore[type-arg]
    try:
        addr = endpoint(addr)
        if bind:
            sock.bind(addr)
        else:
            sock.connect(addr)
    except BaseException:
        sock.close(linger=0)
        raise


def publisher(
    ctx: zmq.Context,  # type: ignore[type-arg]
    addr: str = DEFAULT_PUBLISH,
    *,
    bind: bool = True,
    sndhwm: int = DEFAULT_HWM,
    linger_ms: int = 0,
) -> zmq.Socket:  # type: ignore[type-arg]
    """A PUB socket (the engine side of the publish stream; binds by default).

    PUB drops messages for a subscriber that is at its high-water mark; ``linger_ms=0`` because
    a publisher that is shutting down has nobody to wait for.

    Examples
    --------
    >>> import zmq
    >>> with publisher(zmq.Context.instance(), "tcp://127.0.0.1:*") as pub:
    ...     pub.last_endpoint.startswith(b"tcp://127.0.0.1:")
    True
    """
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    _endpoint(sock, addr, bind)
    return sock


def subscriber(
    ctx: zmq.Context,  # type: ignore[type-arg]
    addr: str = DEFAULT_PUBLISH,
    topics: Iterable[str | bytes] = ("",),
    *,
    bind: bool = False,
    rcvhwm: int = DEFAULT_HWM,
) -> zmq.Socket:  # type: ignore[type-arg]
    """A SUB socket subscribed to topic prefixes (``""`` = everything; ``"ecg/"`` = all ECG).

    Examples
    --------
    >>> import zmq
    >>> with subscriber(zmq.Context.instance(), "inproc://doc-pub", ["ecg/", "event/"]) as s:
    ...     s.type == zmq.SUB
    True
    """
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    for t in topics:
        sock.setsockopt(zmq.SUBSCRIBE, t.encode() if isinstance(t, str) else bytes(t))
    _endpoint(sock, addr, bind)
    return sock


def pusher(
    ctx: zmq.Context,  # type: ignore[type-arg]
    addr: str = DEFAULT_INGEST,
    *,
    bind: bool = False,
    sndhwm: int = DEFAULT_HWM,
    linger_ms: int = 2000,
) -> zmq.Socket:  # type: ignore[type-arg]
    """A PUSH socket (a source's side of ingest; connects by default).

    PUSH blocks (or raises :class:`zmq.Again` with ``NOBLOCK``) at its high-water mark instead
    of dropping, which keeps biosignals lossless. ``linger_ms`` lets queued chunks drain when
    the socket closes, bounded so a dead engine cannot hang a source forever.

    Examples
    --------
    >>> import zmq
    >>> with pusher(zmq.Context.instance(), "inproc://doc-push") as p:
    ...     p.getsockopt(zmq.LINGER)
    2000
    """
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    _endpoint(sock, addr, bind)
    return sock


def puller(
    ctx: zmq.Context,  # type: ignore[type-arg]
    addr: str = DEFAULT_INGEST,
    *,
    bind: bool = True,
    rcvhwm: int = DEFAULT_HWM,
) -> zmq.Socket:  # type: ignore[type-arg]
    """A PULL socket (the engine side of ingest; binds by default).

    Examples
    --------
    >>> import zmq
    >>> with puller(zmq.Context.instance(), "tcp://127.0.0.1:*") as p:
    ...     p.type == zmq.PULL
    True
    """
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    _endpoint(sock, addr, bind)
    return sock


class PeerWatch:
    """Watch a connecting socket's ZMTP handshakes (a socket monitor), without blocking.

    ``reached`` becomes true at the first completed handshake with a peer (after CurveZMQ
    authentication when it is on), so a source can tell "sent" from "delivered to an engine".
    """

    def __init__(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        self.reached = False
        self.connected = 0
        self.up: bool | None = None  # the last event: True handshake, False disconnect, None none yet
        self.changed_at = time.monotonic()
        self._mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)

    def poll(self, timeout_s: float = 0.0) -> bool:
        """Drain pending monitor events (waiting up to ``timeout_s`` for one); return ``reached``."""
        from zmq.utils.monitor import recv_monitor_message

        wait_ms = int(timeout_s * 1000)
        while self._mon.poll(wait_ms):
            ev = recv_monitor_message(self._mon)
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.reached = True
                self.connected += 1
                self.up, self.changed_at = True, time.monotonic()
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = max(0, self.connected - 1)
                self.up, self.changed_at = False, time.monotonic()
            wait_ms = 0
        return self.reached

    def close(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._mon.close(0)
