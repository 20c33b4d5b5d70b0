"""Socket helpers (telediag.transports.sockets) over inproc:// and tcp://127.0.0.1 (random port)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from telediag.errors import ProtocolError
from telediag.transports import (
    DEFAULT_API,
    DEFAULT_INGEST,
    DEFAULT_PUBLISH,
    Chunk,
    VideoSpec,
    publisher,
    puller,
    pusher,
    recv_chunk,
    recv_frames,
    send_chunk,
    subscriber,
)

TIMEOUT_MS = 5000


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture(params=["inproc", "tcp"])
def ingest(
    request: pytest.FixtureRequest,
    ctx: zmq.Context,  # type: ignore[type-arg]
) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:  # type: ignore[type-arg]
    """A connected (PULL, PUSH) pair; the PULL side times out instead of hanging."""
    addr = "inproc://ingest-test" if request.param == "inproc" else "tcp://127.0.0.1:*"
    with puller(ctx, addr) as pull:
        pull.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
        endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT) if request.param == "tcp" else addr
        with pusher(ctx, endpoint, linger_ms=0) as push:
            yield pull, push


def ecg(seq: int, n: int = 360) -> Chunk:
    x = np.random.default_rng(seq).standard_normal((n, 2))
    return Chunk.signal("ecg", "bed-12/ecg", seq, 1000 * seq, x, 360.0, ["MLII", "V1"],
                        ["mV", "mV"], meta={"sent_ns": time.time_ns()})  # fmt: skip


def test_default_addresses() -> None:
    assert DEFAULT_INGEST == "tcp://127.0.0.1:5555"
    assert DEFAULT_PUBLISH == "tcp://127.0.0.1:5556"
    assert DEFAULT_API == "tcp://127.0.0.1:5557"


def test_push_pull_roundtrip_every_encoding(ingest: tuple[zmq.Socket, zmq.Socket]) -> None:  # type: ignore[type-arg]
    pull, push = ingest
    sent = [
        ecg(0),
        ecg(1, n=0),
        Chunk.record("beats", "bed-12/ecg", 0, 5, {"t_ns": [1, 2], "label": ["N", "V"]}),
        Chunk(kind="quality", stream="bed-12/ecg", seq=0, t0_ns=0, data=np.arange(5, dtype="<u2")),
        Chunk.video_packet("room-1/endo", 0, 0, bytes(range(256)) * 8,
                           VideoSpec("h264", 640, 480, "yuv420p", 30.0, keyframe=True)),
    ]  # fmt: skip
    for c in sent:
        send_chunk(push, c)
    got = [recv_chunk(pull) for _ in sent]
    assert got == sent
    assert got[0].data is not None and not got[0].data.flags.writeable


def test_large_payload_roundtrip(ingest: tuple[zmq.Socket, zmq.Socket]) -> None:  # type: ignore[type-arg]
    pull, push = ingest
    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)  # 2.6 MB
    c = Chunk(kind="video", stream="cam", seq=0, t0_ns=0, data=frame,
              video=VideoSpec("raw", 1280, 720, "rgb24", 25.0))  # fmt: skip
    send_chunk(push, c)
    d = recv_chunk(pull)
    assert d == c
    assert d.data is not None and not d.data.flags.writeable


def test_recv_consumes_whole_bad_message(ingest: tuple[zmq.Socket, zmq.Socket]) -> None:  # type: ignore[type-arg]
    pull, push = ingest
    good = ecg(7)
    push.send_multipart([b"ecg/x", b"not msgpack", b"", b"extra frame"])
    push.send_multipart([b"ecg/x", b"\xc1", b""])
    send_chunk(push, good)
    with pytest.raises(ProtocolError) as ei:
        recv_chunk(pull)
    assert ei.value.reason == "frame_count"
    with pytest.raises(ProtocolError) as ei:
        recv_chunk(pull)
    assert ei.value.reason == "header_malformed"
    assert recv_chunk(pull) == good  # the stream is still in sync


def test_recv_frames_and_noblock(ingest: tuple[zmq.Socket, zmq.Socket]) -> None:  # type: ignore[type-arg]
    pull, push = ingest
    with pytest.raises(zmq.Again):
        recv_chunk(pull, flags=zmq.NOBLOCK)
    send_chunk(push, ecg(3))
    frames = recv_frames(pull)
    assert len(frames) == 3 and all(isinstance(f, zmq.Frame) for f in frames)
    assert frames[0].bytes == b"ecg/bed-12/ecg"


def test_pub_sub_prefix_filtering(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    with publisher(ctx, "tcp://127.0.0.1:*") as pub:
        endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        with subscriber(ctx, endpoint, topics=["ecg/", "event/bed-12/"]) as sub:
            sub.setsockopt(zmq.RCVTIMEO, 100)
            # slow joiner: publish until the subscription has propagated
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            hello = Chunk.record("event", "bed-12/ecg", 0, 0, {"type": "hello"})
            while True:
                send_chunk(pub, hello)
                try:
                    assert recv_chunk(sub) == hello
                    break
                except zmq.Again:
                    assert time.monotonic() < deadline, "subscription never propagated"
            sub.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
            while True:  # drain duplicates of hello
                try:
                    recv_chunk(sub, flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
            send_chunk(pub, Chunk.record("hr", "bed-12/ecg", 0, 0, {"bpm": 60}))  # filtered
            send_chunk(pub, Chunk.record("event", "bed-13/ecg", 0, 0, {"type": "x"}))  # filtered
            send_chunk(pub, ecg(1))
            got = recv_chunk(sub)
            assert got.topic == "ecg/bed-12/ecg" and got.seq == 1


def test_factory_options(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    with publisher(ctx, "inproc://opts-pub", sndhwm=7) as pub:
        assert pub.type == zmq.PUB
        assert pub.getsockopt(zmq.SNDHWM) == 7 and pub.getsockopt(zmq.LINGER) == 0
    with subscriber(ctx, "inproc://opts-pub", rcvhwm=9) as sub:
        assert sub.type == zmq.SUB and sub.getsockopt(zmq.RCVHWM) == 9
        assert sub.getsockopt(zmq.LINGER) == 0
    with pusher(ctx, "inproc://opts-pull", linger_ms=123) as push:
        assert push.type == zmq.PUSH and push.getsockopt(zmq.LINGER) == 123
    with puller(ctx, "inproc://opts-pull") as pull:
        assert pull.type == zmq.PULL and pull.getsockopt(zmq.LINGER) == 0
    assert pull.closed and push.closed


def test_bind_failure_closes_socket(ctx: zmq.Context) -> None:  # type: ignore[type-arg]
    with puller(ctx, "tcp://127.0.0.1:*") as first:
        endpoint = first.getsockopt_string(zmq.LAST_ENDPOINT)
        with pytest.raises(zmq.ZMQError):
            puller(ctx, endpoint)  # address in use


def test_send_invalid_chunk_raises_before_sending(ingest: tuple[zmq.Socket, zmq.Socket]) -> None:  # type: ignore[type-arg]
    pull, push = ingest
    bad = Chunk.record("hr", "s", 0, 0, {"x": 1}, meta={"pad": "x" * 5000})
    with pytest.raises(ProtocolError) as ei:
        send_chunk(push, bad)
    assert ei.value.reason == "header_too_large"
    send_chunk(push, ecg(2))
    assert recv_chunk(pull).seq == 2  # nothing half-sent before it
