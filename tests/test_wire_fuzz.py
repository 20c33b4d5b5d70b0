"""Property-based tests for wire protocol v1.

1. Every valid chunk (all kinds, encodings, dtypes, shapes) round-trips bit-exactly.
2. Whatever bytes arrive - random frames, mutated valid messages, hostile header maps -
   ``decode`` either returns a chunk that passes the constructor's validation and re-encodes, or
   raises ``ProtocolError`` with a documented reason. Nothing else escapes, and the decoder's
   internal safety net (which would hide a missing check) is never reached.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from telediag.errors import ProtocolError
from telediag.transports.wire import (
    ANNOTATION_KINDS,
    DTYPES,
    MAX_STREAM_CHARS,
    REASONS,
    SIGNAL_KINDS,
    Chunk,
    VideoSpec,
    decode,
    encode,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------- strategies

_STREAM_ALPHABET = "abcXYZ019._:-"
_segment = st.text(_STREAM_ALPHABET, min_size=1, max_size=12)
streams = (
    st.lists(_segment, min_size=1, max_size=4)
    .map("/".join)
    .filter(lambda s: len(s) <= MAX_STREAM_CHARS)
)
seqs = st.integers(0, 2**63 - 1)
t0s = st.integers(-(2**63), 2**63 - 1)
labels = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
rates = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
).filter(lambda d: d is not None)
metas = st.dictionaries(st.text(max_size=8), scalars, max_size=4)


@st.composite
def signal_chunks(draw: st.DrawFn) -> Chunk:
    dtype = draw(st.sampled_from(DTYPES))
    n_ch = draw(st.integers(1, 4))
    n = draw(st.integers(0, 40))
    data = draw(hnp.arrays(np.dtype(dtype), (n, n_ch)))
    return Chunk.signal(
        draw(st.sampled_from(sorted(SIGNAL_KINDS))),
        draw(streams),
        draw(seqs),
        draw(t0s),
        data,
        draw(rates),
        draw(st.lists(labels, min_size=n_ch, max_size=n_ch)),
        draw(st.lists(st.text(max_size=4), min_size=n_ch, max_size=n_ch)),
        meta=draw(metas),
    )


@st.composite
def raw_annotation_chunks(draw: st.DrawFn) -> Chunk:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    # big-endian input too: the constructor converts it
    order = draw(st.sampled_from(["<", ">"])) if np.dtype(dtype).itemsize > 1 else "|"
    data = draw(hnp.arrays(np.dtype(dtype).newbyteorder(order), shape))
    return Chunk(
        kind=draw(st.sampled_from(sorted(ANNOTATION_KINDS))),
        stream=draw(streams),
        seq=draw(seqs),
        t0_ns=draw(t0s),
        data=data,
        meta=draw(metas),
    )


@st.composite
def record_chunks(draw: st.DrawFn) -> Chunk:
    return Chunk.record(
        draw(st.sampled_from(sorted(ANNOTATION_KINDS))),
        draw(streams),
        draw(seqs),
        draw(t0s),
        draw(documents),
        meta=draw(metas),
    )


video_specs = st.builds(
    VideoSpec,
    codec=st.sampled_from(["h264", "raw"]),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    pix_fmt=st.sampled_from(["yuv420p", "rgb24", "gray", "nv12"]),
    fps=st.floats(0.1, 240.0),
    keyframe=st.booleans(),
)


@st.composite
def video_chunks(draw: st.DrawFn) -> Chunk:
    spec = draw(video_specs)
    if spec.codec == "raw" and draw(st.booleans()):
        comps = draw(st.sampled_from([(), (3,)]))
        data = draw(hnp.arrays(np.uint8, (spec.height, spec.width, *comps)))
        return Chunk(kind="video", stream=draw(streams), seq=draw(seqs), t0_ns=draw(t0s),
                     data=data, video=spec)  # fmt: skip
    return Chunk.video_packet(draw(streams), draw(seqs), draw(t0s), draw(st.binary(max_size=200)),
                              spec, meta=draw(metas))  # fmt: skip


valid_chunks = signal_chunks() | raw_annotation_chunks() | record_chunks() | video_chunks()


def _frames(chunk: Chunk) -> list[bytes]:
    return [bytes(f) for f in encode(chunk)]


def decode_or_reason(frames: Any) -> Chunk | None:
    """Decode; on failure check the error is a documented ProtocolError and return None."""
    try:
        chunk = decode(frames)
    except ProtocolError as e:
        assert e.reason in REASONS, e
        assert "internal decoder error" not in str(e), e
        return None
    # Anything decode accepts is a valid chunk that encodes again.
    dataclasses.replace(chunk)
    encode(chunk)
    return chunk


# ----------------------------------------------------------------------------- round trips


@FUZZ
@given(valid_chunks)
def test_valid_chunks_roundtrip_bit_exactly(chunk: Chunk) -> None:
    frames = encode(chunk)
    back = decode(frames)
    assert back == chunk
    assert back.topic == chunk.topic and back.enc == chunk.enc
    again = _frames(back)
    assert again == [bytes(f) for f in frames]  # encoding is deterministic
    dataclasses.replace(back)


@FUZZ
@given(valid_chunks)
def test_roundtrip_through_copies_and_frames(chunk: Chunk) -> None:
    import zmq

    frames = _frames(chunk)
    assert decode([zmq.Frame(f) for f in frames]) == chunk
    assert decode([bytearray(f) for f in frames]) == chunk


# ----------------------------------------------------------------------------- hostile input


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_arbitrary_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    decode_or_reason(frames)


@FUZZ
@given(st.lists(st.binary(max_size=64), min_size=2, max_size=2), st.binary(max_size=64))
def test_arbitrary_header_bytes(pre: list[bytes], header_tail: bytes) -> None:
    # headers that start like a msgpack map, so the fuzzer gets past the first byte
    decode_or_reason([pre[0], b"\x8b\xa1v\x01" + header_tail, pre[1]])


@st.composite
def mutated_frames(draw: st.DrawFn) -> list[bytes]:
    frames = _frames(draw(valid_chunks))
    op = draw(st.sampled_from(["flip", "truncate", "extend", "drop", "dup", "swap", "replace"]))
    i = draw(st.integers(0, len(frames) - 1))
    f = bytearray(frames[i])
    if op == "flip" and f:
        for _ in range(draw(st.integers(1, 4))):
            j = draw(st.integers(0, len(f) - 1))
            f[j] ^= draw(st.integers(1, 255))
        frames[i] = bytes(f)
    elif op == "truncate":
        frames[i] = bytes(f[: draw(st.integers(0, max(len(f) - 1, 0)))])
    elif op == "extend":
        frames[i] = bytes(f) + draw(st.binary(min_size=1, max_size=16))
    elif op == "drop":
        del frames[i]
    elif op == "dup":
        frames.insert(i, frames[i])
    elif op == "swap":
        j = draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    else:
        frames[i] = draw(st.binary(max_size=64))
    return frames


@settings(FUZZ, max_examples=400)
@given(mutated_frames())
def test_mutated_messages_raise_only_protocol_error(frames: list[bytes]) -> None:
    decode_or_reason(frames)


nasty = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([0, -1, 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
    | st.floats()  # NaN, +-inf, subnormals, -0.0
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.lists(st.integers(-(2**63), 2**64 - 1), max_size=6)  # shape-like, huge dims
    | st.lists(st.text(max_size=3), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(-5, 5) | st.floats(), max_size=3)
    | st.recursive(st.integers(0, 3), lambda x: st.lists(x, max_size=2), max_leaves=40)
)


@st.composite
def mutated_headers(draw: st.DrawFn) -> list[bytes]:
    topic, header, payload = _frames(draw(valid_chunks))
    h = msgpack.unpackb(header, raw=False)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "delete", "add", "video", "meta"]))
        if op == "set":
            h[draw(st.sampled_from(sorted(h)))] = draw(nasty)
        elif op == "delete":
            h.pop(draw(st.sampled_from(sorted(h))), None)
        elif op == "add":
            h[draw(st.sampled_from(["dtype", "shape", "rate_hz", "channels", "units", "video",
                                    "meta", "x", "V"]))] = draw(nasty)  # fmt: skip
        elif op == "video" and isinstance(h.get("video"), dict):
            h["video"][draw(st.sampled_from(["codec", "width", "height", "pix_fmt", "fps",
                                             "keyframe", "extra"]))] = draw(nasty)  # fmt: skip
        else:
            h["meta"] = draw(nasty)
    if draw(st.booleans()):
        topic = f"{h.get('kind')}/{h.get('stream')}".encode()
    if draw(st.integers(0, 4)) == 0:
        payload = draw(st.binary(max_size=64))
    return [topic, msgpack.packb(h, use_bin_type=True), payload]


@settings(FUZZ, max_examples=400)
@given(mutated_headers())
def test_mutated_headers_raise_only_protocol_error(frames: list[bytes]) -> None:
    decode_or_reason(frames)


@FUZZ
@given(documents, st.integers(0, 40))
def test_nested_bodies(doc: Any, depth: int) -> None:
    for _ in range(depth):
        doc = [doc] if depth % 2 else {"k": doc}
    body = msgpack.packb(doc, use_bin_type=True)
    h = {"v": 1, "kind": "stats", "stream": "engine", "seq": 0, "t0_ns": 0, "enc": "msgpack"}
    got = decode_or_reason([b"stats/engine", msgpack.packb(h), body])
    if got is not None:
        assert got.body == doc


@FUZZ
@given(st.floats(), st.sampled_from(sorted(SIGNAL_KINDS)))
def test_rates(rate: float, kind: str) -> None:
    h = {"v": 1, "kind": kind, "stream": "s", "seq": 0, "t0_ns": 0, "enc": "raw",
         "dtype": "<f4", "shape": [1, 1], "rate_hz": rate, "channels": ["a"], "units": ["u"]}  # fmt: skip
    frames = [f"{kind}/s".encode(), msgpack.packb(h), bytes(4)]
    if math.isfinite(rate) and rate > 0:
        assert decode(frames).rate_hz == rate
    else:
        with pytest.raises(ProtocolError) as ei:
            decode(frames)
        assert ei.value.reason == ("bad_field" if math.isfinite(rate) else "non_finite")


@FUZZ
@given(st.lists(st.integers(-(2**63), 2**64 - 1), min_size=0, max_size=6),
       st.sampled_from(DTYPES), st.integers(0, 256))  # fmt: skip
def test_shapes(shape: list[int], dtype: str, n_bytes: int) -> None:
    h = {"v": 1, "kind": "quality", "stream": "s", "seq": 0, "t0_ns": 0, "enc": "raw",
         "dtype": dtype, "shape": shape}  # fmt: skip
    frames = [b"quality/s", msgpack.packb(h), bytes(n_bytes)]
    got = decode_or_reason(frames)
    ok_shape = 1 <= len(shape) <= 4 and all(0 <= d <= 64 << 20 for d in shape)
    fits = ok_shape and math.prod(shape) * np.dtype(dtype).itemsize == n_bytes
    assert (got is not None) == fits
    if got is not None:
        assert got.data is not None and list(got.data.shape) == shape


@FUZZ
@given(st.text(max_size=140), st.sampled_from(sorted(ANNOTATION_KINDS)))
def test_stream_ids(stream: str, kind: str) -> None:
    h = {"v": 1, "kind": kind, "stream": stream, "seq": 0, "t0_ns": 0, "enc": "msgpack"}
    topic = f"{kind}/{stream}".encode()
    assume(len(topic) <= 256)
    got = decode_or_reason([topic, msgpack.packb(h), b"\x80"])
    valid = (
        1 <= len(stream) <= MAX_STREAM_CHARS
        and all(c.isascii() and (c.isalnum() or c in "._:/-") for c in stream)
        and not stream.startswith("/")
        and not stream.endswith("/")
        and "//" not in stream
    )
    assert (got is not None) == valid
