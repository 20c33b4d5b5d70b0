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

from collections.abc import Iterable
from typing import Final

import zmq

from telediag.transports.wire import Chunk, decode, encode

__all__ = [
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
    "subscriber",
]

DEFAULT_INGEST: Final = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH: Final = "tcp://127.0.0.1:5556"
DEFAULT_API: Final = "tcp://127.0.0.1:5557"
#: Default high-water mark, in messages (chunks). At 360-sample ECG chunks of 1 s this is
#: almost three hours of one stream; for video frames it bounds memory to HWM x frame size.
DEFAULT_HWM: Final = 10_000


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


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:  # type: ignore[type-arg]
    """Receive all frames of one multipart message without copying them.

    Examples
    --------
    >>> import zmq
    >>> ctx = zmq.Context.instance()
    >>> with puller(ctx, "inproc://doc-frames") as a, pusher(ctx, "inproc://doc-frames") as b:
    ...     b.send_multipart([b"x", b"y"])
    ...     [f.bytes for f in recv_frames(a)]
    [b'x', b'y']
    """
    return sock.recv_multipart(flags, copy=False)


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
