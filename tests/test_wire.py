"""Unit tests for wire protocol v1 (telediag.transports.wire): round trips, every reason code."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from telediag.errors import ProtocolError
from telediag.transports import wire
from telediag.transports.wire import (
    DTYPES,
    MAX_BODY_BYTES,
    MAX_BODY_DEPTH,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    REASONS,
    Chunk,
    VideoSpec,
    decode,
    encode,
)

RNG_SEED = 20240607


# ----------------------------------------------------------------------------- helpers


def ecg(seq: int = 0, n: int = 360, dtype: str = "<f8", **kw: Any) -> Chunk:
    x = np.random.default_rng(RNG_SEED + seq).standard_normal((n, 2)).astype(dtype)
    return Chunk.signal(
        "ecg", "bed-12/ecg", seq, 1_700_000_000_000_000_000, x, 360.0, ("MLII", "V1"),
        ("mV", "mV"), **kw,
    )  # fmt: skip


def base_header(**over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "v": 1,
        "kind": "ecg",
        "stream": "bed-12/ecg",
        "seq": 3,
        "t0_ns": 10,
        "enc": "raw",
        "dtype": "<f8",
        "shape": [4, 2],
        "rate_hz": 360.0,
        "channels": ["MLII", "V1"],
        "units": ["mV", "mV"],
    }
    h.update(over)
    return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()


def deep_list(depth: int) -> Any:
    doc: Any = 0
    for _ in range(depth):
        doc = [doc]
    return doc


def frames_for(
    header: dict[str, Any] | bytes,
    payload: bytes | bytearray | None = None,
    topic: bytes | None = None,
) -> list[Any]:
    hb = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    if topic is None:
        assert isinstance(header, dict)
        topic = f"{header.get('kind')}/{header.get('stream')}".encode()
    if payload is None:
        payload = bytes(64)  # 4 x 2 x <f8
    return [topic, hb, payload]


def reason_of(frames: Any) -> str:
    with pytest.raises(ProtocolError) as ei:
        decode(frames)
    assert ei.value.reason in REASONS
    assert "internal decoder error" not in str(ei.value)
    return ei.value.reason


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (0,), (3, 4), (2, 3, 4), (1, 2, 1, 3), (0, 7)])
def test_raw_roundtrip_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.integers(0, 256, size=(int(np.prod(shape)) * np.dtype(dtype).itemsize,), dtype=np.uint8)
    arr = x.view(dtype).reshape(shape)  # arbitrary bit patterns, NaN payloads included
    c = Chunk(kind="beats", stream="a/b", seq=1, t0_ns=-5, data=arr)
    d = decode(encode(c))
    assert d == c
    assert d.data is not None
    assert d.data.dtype.str == dtype
    assert d.data.shape == shape
    assert d.data.tobytes() == arr.tobytes()
    dataclasses.replace(d)  # a decoded chunk passes the constructor's validation


def test_signal_roundtrip_fields() -> None:
    c = ecg(seq=9, meta={"sent_ns": 123, "source": "wfdb:100"})
    d = decode(encode(c))
    assert d == c
    assert (d.kind, d.stream, d.seq, d.topic, d.enc, d.n_samples) == (
        "ecg", "bed-12/ecg", 9, "ecg/bed-12/ecg", "raw", 360,
    )  # fmt: skip
    assert d.rate_hz == 360.0 and d.channels == ("MLII", "V1") and d.units == ("mV", "mV")
    assert d.meta == {"sent_ns": 123, "source": "wfdb:100"}


def test_record_and_video_roundtrip() -> None:
    body = {"beats": [{"t_ns": 1, "label": "N", "p": 0.98}], "ok": True, "blob": b"\x00\xff"}
    r = Chunk.record("beats", "bed-12/ecg", 4, 7, body)
    assert decode(encode(r)) == r and r.n_samples == 1
    spec = VideoSpec("h264", 1920, 1080, "yuv420p", 29.97, keyframe=True)
    v = Chunk.video_packet("room-3/endo", 0, 0, b"\x00\x00\x00\x01\x65" + bytes(1000), spec)
    dv = decode(encode(v))
    assert dv == v and isinstance(dv.packet, bytes) and dv.video == spec
    raw = VideoSpec("raw", 4, 3, "rgb24", 10.0)
    rv = Chunk(
        kind="video", stream="cam", seq=0, t0_ns=0, data=np.zeros((3, 4, 3), "|u1"), video=raw
    )
    assert decode(encode(rv)) == rv


def test_decode_accepts_zmq_frames_and_memoryviews() -> None:
    c = ecg()
    f = encode(c)
    assert decode([zmq.Frame(bytes(x)) for x in f]) == c
    assert decode([memoryview(bytes(x)) for x in f]) == c
    assert decode(tuple(bytearray(x) for x in f)) == c


def test_decoded_array_is_readonly_zero_copy_view() -> None:
    c = ecg()
    topic, header, payload = encode(c)
    buf = bytearray(bytes(payload))  # writable buffer: decode must still return read-only
    d = decode([topic, header, buf])
    assert d.data is not None
    assert np.shares_memory(d.data, np.frombuffer(buf, np.uint8))
    assert not d.data.flags.writeable
    with pytest.raises(ValueError):
        d.data[0, 0] = 1.0
    frame = zmq.Frame(bytes(payload))
    d2 = decode([topic, header, frame])
    assert d2.data is not None
    assert np.shares_memory(d2.data, np.frombuffer(frame.buffer, np.uint8))


def test_encode_payload_is_zero_copy() -> None:
    c = ecg()
    payload = encode(c)[2]
    assert isinstance(payload, memoryview)
    assert c.data is not None
    assert np.shares_memory(np.frombuffer(payload, np.uint8), c.data)


def test_big_endian_and_strided_arrays_are_converted() -> None:
    x = np.arange(20, dtype=">i4").reshape(10, 2)
    c = Chunk.signal("pcg", "p", 0, 0, x, 4000.0, ["a", "b"], ["adu", "adu"])
    assert c.data is not None and c.data.dtype.str == "<i4"
    payload = bytes(encode(c)[2])
    assert payload == np.arange(20, dtype="<i4").tobytes()
    d = decode(encode(c))
    assert d.data is not None
    np.testing.assert_array_equal(d.data, x)
    strided = np.arange(40.0).reshape(10, 4)[:, ::2]
    s = Chunk.signal("ecg", "e", 0, 0, strided, 250.0, ["a", "b"], ["mV", "mV"])
    np.testing.assert_array_equal(decode(encode(s)).data, strided)  # type: ignore[arg-type]


def test_signal_one_dimensional_single_channel() -> None:
    c = Chunk.signal("pcg", "s", 0, 0, np.arange(8, dtype="<i2"), 2000, ["pcg"], ["adu"])
    assert c.data is not None and c.data.shape == (8, 1) and c.rate_hz == 2000.0
    assert c.n_samples == 8


def test_numpy_scalars_in_body_and_meta_are_plain_numbers() -> None:
    r = Chunk.record("hr", "s", np.int64(2), 0, {"bpm": np.float32(71.5), "n": np.int16(3)},
                     meta={"sent_ns": np.int64(5)})  # fmt: skip
    d = decode(encode(r))
    assert d.seq == 2 and d.body == {"bpm": 71.5, "n": 3} and d.meta == {"sent_ns": 5}


def test_header_is_canonical_msgpack_map() -> None:
    topic, header, _ = encode(ecg(seq=1))
    h = msgpack.unpackb(header, raw=False)
    assert list(h)[:6] == ["v", "kind", "stream", "seq", "t0_ns", "enc"]
    assert h["v"] == 1 and h["shape"] == [360, 2] and h["dtype"] == "<f8"
    assert "meta" not in h  # omitted when empty
    assert bytes(topic) == b"ecg/bed-12/ecg"


def test_equality_and_repr() -> None:
    a, b = ecg(seq=1), ecg(seq=1)
    assert a == b and a != ecg(seq=2) and a != "x"
    with pytest.raises(TypeError):
        hash(a)
    assert "data=<<f8[360, 2]>" in repr(a)
    nan = np.array([np.nan])
    x1 = Chunk(kind="hr", stream="s", seq=0, t0_ns=0, data=nan)
    assert x1 == Chunk(kind="hr", stream="s", seq=0, t0_ns=0, data=nan.copy())  # bit-exact


# ----------------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"kind": "eeg"}, "kind 'eeg'"),
        ({"stream": "/bed"}, "stream"),
        ({"stream": "bed//x"}, "stream"),
        ({"stream": "bed x"}, "stream"),
        ({"stream": "a" * 129}, "stream"),
        ({"seq": -1}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"t0_ns": 2**63}, "t0_ns"),
        ({"rate_hz": math.nan}, "rate_hz"),
        ({"rate_hz": math.inf}, "rate_hz"),
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"rate_hz": "360"}, "rate_hz"),
        ({"rate_hz": None}, "rate_hz"),
        ({"channels": ("MLII",)}, "units"),
        ({"channels": ("MLII", "")}, "channels[1]"),
        ({"channels": "ab"}, "channels"),
        ({"units": ("mV",)}, "units"),
        ({"data": np.zeros((4, 3))}, "3 channels"),
        ({"data": np.zeros(4)}, "2-D"),
        ({"data": np.zeros((4, 2), np.complex64)}, "dtype"),
        ({"data": np.zeros((4, 2), bool)}, "dtype"),
        ({"data": np.zeros((4, 2), "<u8")}, "dtype"),
        ({"data": [[1.0, 2.0]]}, "numpy.ndarray"),
        ({"body": {"a": 1}}, "exactly one"),
        ({"data": None}, "exactly one"),
        ({"meta": {1: 2}}, "meta map keys"),
        ({"meta": [1]}, "meta must be a mapping"),
        ({"video": VideoSpec("h264", 2, 2, "gray", 1.0)}, "video spec"),
    ],
)
def test_invalid_chunk_construction(kw: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {
        "kind": "ecg",
        "stream": "bed-12/ecg",
        "seq": 0,
        "t0_ns": 0,
        "data": np.zeros((4, 2)),
        "rate_hz": 360.0,
        "channels": ("MLII", "V1"),
        "units": ("mV", "mV"),
    }
    args.update(kw)
    with pytest.raises(ProtocolError) as ei:
        Chunk(**args)
    assert ei.value.reason == "invalid_chunk"
    assert needle in str(ei.value)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"kind": "hr", "data": np.zeros(3), "rate_hz": 1.0}, "only allowed for kinds"),
        ({"kind": "hr", "packet": b"x"}, "packet"),
        ({"kind": "hr", "body": None}, "exactly one"),
        ({"kind": "video", "packet": b"x"}, "needs a video spec"),
        ({"kind": "video", "body": {}, "video": VideoSpec("h264", 2, 2, "gray", 1.0)}, "msgpack"),
        ({"kind": "video", "data": np.zeros((2, 2), "|u1"),
          "video": VideoSpec("h264", 2, 2, "gray", 1.0)}, "codec 'raw'"),
        ({"kind": "video", "data": np.zeros((3, 2), "|u1"),
          "video": VideoSpec("raw", 2, 2, "gray", 1.0)}, "(height, width"),
        ({"kind": "hr", "data": np.zeros((1, 1, 1, 1, 1))}, "1-4 dimensions"),
        ({"kind": "hr", "data": np.zeros(())}, "1-4 dimensions"),
        ({"kind": "hr", "packet": 5}, "bytes-like"),
    ],
)  # fmt: skip
def test_invalid_chunk_layouts(kw: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {"kind": "hr", "stream": "s", "seq": 0, "t0_ns": 0}
    args.update(kw)
    with pytest.raises(ProtocolError) as ei:
        Chunk(**args)
    assert ei.value.reason == "invalid_chunk"
    assert needle in str(ei.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("vp9", 2, 2, "gray", 1.0), "codec"),
        (("raw", 0, 2, "gray", 1.0), "width"),
        (("raw", 2, 16385, "gray", 1.0), "height"),
        (("raw", 2, 2, "Gray!", 1.0), "pix_fmt"),
        (("raw", 2, 2, "gray", math.nan), "fps"),
        (("raw", 2, 2, "gray", -1.0), "fps"),
        (("raw", 2, 2, "gray", 1.0, 1), "keyframe"),
    ],
)
def test_invalid_video_spec(args: tuple[Any, ...], needle: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        VideoSpec(*args)
    assert ei.value.reason == "invalid_chunk" and needle in str(ei.value)


def test_chunk_is_frozen_and_normalised() -> None:
    c = Chunk.signal("ecg", "s", np.uint8(3), np.int64(-4), np.zeros((2, 1)), np.float32(250),
                     ["a"], ["mV"])  # fmt: skip
    assert type(c.seq) is int and type(c.t0_ns) is int and type(c.rate_hz) is float
    assert c.channels == ("a",) and isinstance(c.channels, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seq = 5  # type: ignore[misc]
    meta = {"a": 1}
    r = Chunk.record("hr", "s", 0, 0, {}, meta=meta)
    meta["a"] = 2
    assert r.meta == {"a": 1}  # copied, not aliased


# ----------------------------------------------------------------------------- encode errors


def test_encode_errors() -> None:
    with pytest.raises(ProtocolError) as ei:
        encode(Chunk.record("hr", "s", 0, 0, {"x": "y" * 100}, meta={"pad": "z" * 5000}))
    assert ei.value.reason == "header_too_large"
    with pytest.raises(ProtocolError) as ei:
        encode(Chunk.record("hr", "s", 0, 0, {"x": b"\0" * MAX_BODY_BYTES}))
    assert ei.value.reason == "payload_too_large"
    with pytest.raises(ProtocolError) as ei:
        encode(Chunk.record("hr", "s", 0, 0, {"x": object()}))
    assert ei.value.reason == "invalid_chunk" and "body" in str(ei.value)
    with pytest.raises(ProtocolError) as ei:
        encode(Chunk.record("hr", "s", 0, 0, {1: 2}))
    assert ei.value.reason == "invalid_chunk" and "keys" in str(ei.value)
    deep = deep_list(MAX_BODY_DEPTH + 1)
    with pytest.raises(ProtocolError) as ei:
        encode(Chunk.record("hr", "s", 0, 0, deep))
    assert ei.value.reason == "invalid_chunk" and "deeper" in str(ei.value)
    with pytest.raises(ProtocolError) as ei:
        encode(Chunk.record("hr", "s", 0, 0, {}, meta={"t": object()}))
    assert ei.value.reason == "invalid_chunk" and "meta" in str(ei.value)
    with pytest.raises(TypeError):
        encode("not a chunk")  # type: ignore[arg-type]


def test_body_at_depth_limit_roundtrips() -> None:
    r = Chunk.record("segments", "s", 0, 0, deep_list(MAX_BODY_DEPTH))
    assert decode(encode(r)) == r


# ----------------------------------------------------------------------------- decode reasons
# One or more focused cases for every reason code, each checking the message too.


def test_reason_frame_count() -> None:
    f = frames_for(base_header())
    assert reason_of(f[:2]) == "frame_count"
    assert reason_of(f + [b""]) == "frame_count"
    assert reason_of([]) == "frame_count"
    assert reason_of(b"abc") == "frame_count"  # bytes is a sequence of ints, not of frames
    assert reason_of("abc") == "frame_count"
    assert reason_of(None) == "frame_count"
    assert reason_of(iter(f)) == "frame_count"
    assert reason_of([f[0], f[1], 12345]) == "frame_count"
    assert reason_of([f[0], "text", f[2]]) == "frame_count"
    strided = memoryview(np.arange(64, dtype=np.uint8)[::2])  # type: ignore[arg-type]
    assert reason_of([f[0], f[1], strided]) == "frame_count"
    with pytest.raises(ProtocolError, match=r"expected 3 frames \[topic, header, payload\], got 2"):
        decode(f[:2])


def test_reason_topic() -> None:
    h = base_header()
    assert reason_of(frames_for(h, topic=b"")) == "topic"
    assert reason_of(frames_for(h, topic=b"\xff\xfe")) == "topic"
    assert reason_of(frames_for(h, topic=b"e" * 257)) == "topic"
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        decode(frames_for(h, topic=b"ecg/\xc3"))


def test_reason_topic_mismatch() -> None:
    h = base_header()
    assert reason_of(frames_for(h, topic=b"ecg/bed-12")) == "topic_mismatch"
    assert reason_of(frames_for(h, topic=b"pcg/bed-12/ecg")) == "topic_mismatch"
    with pytest.raises(ProtocolError, match="topic frame is 'ecg/x' but the header says"):
        decode(frames_for(h, topic=b"ecg/x"))


def test_reason_header_too_large() -> None:
    h = base_header(meta={"pad": "x" * MAX_HEADER_BYTES})
    with pytest.raises(ProtocolError, match=r"header_too_large: header is 4\d\d\d bytes"):
        decode(frames_for(h))


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x8c\xa1v",  # truncated map
        msgpack.packb([1, 2, 3]),
        msgpack.packb(1),
        msgpack.packb({"v": 1}) + b"\x00",  # trailing bytes
        msgpack.packb({1: 1}),  # non-str key
        msgpack.packb({b"v": 1}, use_bin_type=True),  # bin key
        b"\x81\xa1v\xa2\xff\xfe",  # invalid UTF-8 string
        b"\x81\xa1v\xd6\xff\x00\x00\x00\x01",  # ext type (timestamp)
        b"\x81\xa1v\xc7\x00\x05",  # zero-length ext
        b"\x91" * 2000 + b"\x00",  # nesting beyond msgpack's stack
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements
    ],
)
def test_reason_header_malformed(header: bytes) -> None:
    assert reason_of([b"ecg/s", header, b""]) == "header_malformed"


@pytest.mark.parametrize("v", [0, 2, -1, "1", 1.0, True, None, [1]])
def test_reason_bad_version(v: Any) -> None:
    assert reason_of(frames_for(base_header(v=v))) == "bad_version"


def test_bad_version_wins_over_unknown_fields() -> None:
    f = frames_for(base_header(v=2, new_v2_field=1))
    with pytest.raises(ProtocolError, match="bad_version: header v must be 1, got 2"):
        decode(f)


@pytest.mark.parametrize("kind", ["eeg", "ECG", "", "ecg/x"])
def test_reason_unknown_kind(kind: str) -> None:
    h = base_header(kind=kind)
    assert reason_of(frames_for(h, topic=b"x/bed-12/ecg")) == "unknown_kind"


@pytest.mark.parametrize(
    "field", ["v", "kind", "stream", "seq", "t0_ns", "enc", "dtype", "shape", "rate_hz",
              "channels", "units"],
)  # fmt: skip
def test_reason_missing_field(field: str) -> None:
    h = base_header(**{field: _DROP})
    r = reason_of(frames_for(h, topic=b"ecg/bed-12/ecg"))
    assert r == "missing_field"


def test_missing_video_fields() -> None:
    spec = {"codec": "h264", "width": 2, "height": 2, "pix_fmt": "gray", "fps": 1.0,
            "keyframe": False}  # fmt: skip
    base = {"v": 1, "kind": "video", "stream": "c", "seq": 0, "t0_ns": 0, "enc": "packet"}
    assert decode(frames_for({**base, "video": spec}, b"x")).video is not None
    assert reason_of(frames_for(base, b"x")) == "missing_field"
    for k in spec:
        partial = {kk: vv for kk, vv in spec.items() if kk != k}
        with pytest.raises(ProtocolError, match=f"missing_field: video has no '{k}'"):
            decode(frames_for({**base, "video": partial}, b"x"))
    assert reason_of(frames_for({**base, "video": {**spec, "bitrate": 1}}, b"x")) == "unknown_field"


@pytest.mark.parametrize(
    "over",
    [
        {"kind": 5},
        {"stream": 5},
        {"stream": "bed 12"},
        {"stream": "bed-12/"},
        {"seq": -1},
        {"seq": 2**63},
        {"seq": 2**64 - 1},
        {"seq": 1.0},
        {"seq": True},
        {"t0_ns": 2**63},
        {"t0_ns": 2**64 - 1},
        {"t0_ns": "0"},
        {"enc": "json"},
        {"enc": None},
        {"rate_hz": -360.0},
        {"rate_hz": 0},
        {"rate_hz": "360"},
        {"rate_hz": True},
        {"channels": "MLII"},
        {"channels": ["MLII", 5]},
        {"channels": ["MLII", ""]},
        {"units": ["mV"]},
        {"units": None},
        {"meta": [1, 2]},
        {"meta": {"a": deep_list(MAX_BODY_DEPTH)}},
        {"enc": "msgpack", "dtype": _DROP, "shape": _DROP},  # signal needs raw
        {"video": {"codec": "raw"}},  # video on a signal kind
    ],
)
def test_reason_bad_field(over: dict[str, Any]) -> None:
    h = base_header(**over)
    topic = b"ecg/bed-12/ecg" if not isinstance(h.get("stream"), str) else None
    assert reason_of(frames_for(h, topic=topic)) == "bad_field"


def test_bad_field_for_annotations_and_video() -> None:
    base = {"v": 1, "kind": "hr", "stream": "s", "seq": 0, "t0_ns": 0, "enc": "msgpack"}
    body = msgpack.packb({"bpm": 60})
    assert decode(frames_for(base, body)).body == {"bpm": 60}
    assert reason_of(frames_for({**base, "rate_hz": 1.0}, body)) == "bad_field"
    assert reason_of(frames_for({**base, "dtype": "<f8"}, body)) == "bad_field"
    assert reason_of(frames_for({**base, "enc": "packet"}, body)) == "bad_field"
    vid = {"v": 1, "kind": "video", "stream": "c", "seq": 0, "t0_ns": 0, "enc": "packet"}
    spec: dict[str, Any] = {"codec": "h264", "width": 2, "height": 2, "pix_fmt": "gray",
                            "fps": 1.0, "keyframe": False}  # fmt: skip
    bads: list[dict[str, Any]] = [{"codec": "vp9"}, {"width": 0}, {"height": 1.5},
                                  {"pix_fmt": "A B"}, {"fps": -1.0}, {"fps": "x"}, {"keyframe": 1}]  # fmt: skip
    for bad in bads:
        assert reason_of(frames_for({**vid, "video": {**spec, **bad}}, b"x")) == "bad_field", bad
    assert reason_of(frames_for({**vid, "video": [1]}, b"x")) == "bad_field"
    assert reason_of(frames_for({**vid, "enc": "msgpack", "video": spec}, b"\x80")) == "bad_field"


def test_reason_unknown_field() -> None:
    with pytest.raises(ProtocolError, match=r"unknown_field: unknown header field\(s\) \['gain'\]"):
        decode(frames_for(base_header(gain=2.0)))


@pytest.mark.parametrize("dtype", [">f8", "<f2", "<u8", "|b1", "<c8", "float64", "", 5, None, "O"])
def test_reason_bad_dtype(dtype: Any) -> None:
    assert reason_of(frames_for(base_header(dtype=dtype))) == "bad_dtype"


@pytest.mark.parametrize(
    "shape",
    [[], [4], [4, 2, 1], [4, 3], [1, 1, 1, 1, 1], [-4, 2], [4.0, 2], "4x2", None, [[4], 2],
     [2**63, 0], [MAX_PAYLOAD_BYTES + 1, 0], [True, 2]],
)  # fmt: skip
def test_reason_bad_shape(shape: Any) -> None:
    assert reason_of(frames_for(base_header(shape=shape))) == "bad_shape"


def test_reason_size_mismatch() -> None:
    h = base_header(shape=[360, 2])
    with pytest.raises(
        ProtocolError,
        match=r"size_mismatch: payload is 1000 bytes but shape \[360, 2\] x <f8 needs 5760",
    ):
        decode(frames_for(h, bytes(1000)))
    assert reason_of(frames_for(base_header(), bytes(65))) == "size_mismatch"
    assert reason_of(frames_for(base_header(), bytes(63))) == "size_mismatch"
    assert reason_of(frames_for(base_header(shape=[2**26, 2]), bytes(64))) == "size_mismatch"


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"rate_hz": math.nan}, "rate_hz must be finite, got nan"),
        ({"rate_hz": math.inf}, "rate_hz"),
        ({"rate_hz": -math.inf}, "rate_hz"),
    ],
)
def test_reason_non_finite(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ProtocolError, match="non_finite") as ei:
        decode(frames_for(base_header(**over)))
    assert needle in str(ei.value)


def test_non_finite_video_fps() -> None:
    spec = {"codec": "h264", "width": 2, "height": 2, "pix_fmt": "gray", "fps": math.nan,
            "keyframe": False}  # fmt: skip
    h = {"v": 1, "kind": "video", "stream": "c", "seq": 0, "t0_ns": 0, "enc": "packet",
         "video": spec}  # fmt: skip
    assert reason_of(frames_for(h, b"x")) == "non_finite"


def test_reason_payload_too_large() -> None:
    big = bytearray(MAX_PAYLOAD_BYTES + 8)
    h = base_header(shape=[(MAX_PAYLOAD_BYTES + 8) // 16, 2])
    assert reason_of(frames_for(h, big)) == "payload_too_large"
    base = {"v": 1, "kind": "hr", "stream": "s", "seq": 0, "t0_ns": 0, "enc": "msgpack"}
    body = msgpack.packb({"x": bytes(MAX_BODY_BYTES)})
    with pytest.raises(ProtocolError, match=r"payload_too_large: msgpack body is \d+ bytes"):
        decode(frames_for(base, body))
    spec = {"codec": "h264", "width": 2, "height": 2, "pix_fmt": "gray", "fps": 1.0,
            "keyframe": False}  # fmt: skip
    vid = {"v": 1, "kind": "video", "stream": "c", "seq": 0, "t0_ns": 0, "enc": "packet",
           "video": spec}  # fmt: skip
    assert reason_of(frames_for(vid, big)) == "payload_too_large"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc0",  # nil
        b"\xc1",
        b"\x92\x01",  # truncated
        b"\x80\x00",  # trailing bytes
        b"\x81\x01\x02",  # int key
        b"\x81\xa1a\x81\x01\x02",  # nested int key
        b"\xa2\xff\xfe",  # bad UTF-8
        b"\xd7\xff" + bytes(8),  # timestamp ext
        b"\xd4\x05\x00",  # fixext1
        b"\x91" * (MAX_BODY_DEPTH + 1) + b"\x00",  # too deep
        b"\x91" * 3000 + b"\x00",  # deeper than msgpack's own stack
        b"\xdf\xff\xff\xff\xff",  # map claiming 4G entries
    ],
)
def test_reason_body_malformed(body: bytes) -> None:
    base = {"v": 1, "kind": "hr", "stream": "s", "seq": 0, "t0_ns": 0, "enc": "msgpack"}
    assert reason_of(frames_for(base, body)) == "body_malformed"


def test_every_reason_is_documented() -> None:
    from pathlib import Path

    doc = (Path(wire.__file__).parent / "PROTOCOL.md").read_text(encoding="utf-8")
    for r in REASONS:
        assert f"`{r}`" in doc, r
    assert len(set(REASONS)) == len(REASONS) == 17


def test_protocol_md_worked_example() -> None:
    """The hex dump in PROTOCOL.md is exactly what the encoder produces."""
    from pathlib import Path

    doc = (Path(wire.__file__).parent / "PROTOCOL.md").read_text(encoding="utf-8")
    block = doc.split("<!-- worked-example:begin -->")[1].split("<!-- worked-example:end -->")[0]
    frames: list[bytearray] = []
    for line in block.splitlines():
        if line.startswith("frame "):
            frames.append(bytearray())
        elif line[:4].isalnum() and line[4:6] == "  ":
            frames[-1] += bytes.fromhex(line[6:54])
    x = np.array([[0.5, -0.25], [1.0, 0.0], [-1.5, 2.0]], dtype="<f4")
    c = Chunk.signal("ecg", "bed-12/ecg", 42, 1_700_000_000_000_000_000, x, 360.0,
                     ["MLII", "V1"], ["mV", "mV"])  # fmt: skip
    assert [bytes(f) for f in frames] == [bytes(f) for f in encode(c)]
    assert decode([bytes(f) for f in frames]) == c


def test_docstring_examples() -> None:
    import doctest

    from telediag.transports import sockets

    for mod in (wire, sockets):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


def test_encode_overrides_seq_and_meta_without_touching_the_chunk() -> None:
    c = Chunk.signal("ecg", "bed-1", 3, 7, np.zeros((4, 1), np.float32), 360.0, ("I",), ("mV",), meta={"a": 1})
    d = decode(encode(c, seq=42, meta={"a": 1, "pub_ns": 9}))
    assert d.seq == 42 and dict(d.meta) == {"a": 1, "pub_ns": 9}
    assert c.seq == 3 and dict(c.meta) == {"a": 1}
    assert "meta" not in msgpack.unpackb(encode(c, meta={})[1])
    with pytest.raises(ProtocolError) as e:
        encode(c, seq=-1)
    assert e.value.reason == "invalid_chunk" and "seq" in e.value.detail
    with pytest.raises(ProtocolError) as e:
        encode(c, meta={1: "x"})  # type: ignore[dict-item]
    assert e.value.reason == "invalid_chunk" and "meta" in e.value.detail


def test_rejected_message_names_its_stream_and_seq_when_readable() -> None:
    """ProtocolError carries the header's stream id and seq (best effort) for reject events."""
    import msgpack as _mp

    from telediag.transports.wire import decode as _decode
    from telediag.transports.wire import encode as _encode

    c = Chunk.signal("ecg", "bed/ecg", 7, 0, np.zeros((3, 1)), 360.0, ["I"], ["mV"])
    f = _encode(c)
    with pytest.raises(ProtocolError) as ei:
        _decode([f[0], f[1], b"xx"])
    assert (ei.value.reason, ei.value.stream, ei.value.seq) == ("size_mismatch", "bed/ecg", 7)
    big = _mp.packb({"v": 1, "kind": "hr", "stream": "a/b", "seq": 3, "meta": {"x": "y" * 5000}})
    with pytest.raises(ProtocolError) as ei:
        _decode([b"hr/a/b", big, b""])
    assert (ei.value.reason, ei.value.stream, ei.value.seq) == ("header_too_large", "a/b", 3)
    bad_ids = _mp.packb({"v": 1, "kind": "hr", "stream": "bad stream!", "seq": True})
    with pytest.raises(ProtocolError) as ei:
        _decode([b"hr/x", bad_ids, b""])
    assert (ei.value.stream, ei.value.seq) == (None, None)
    with pytest.raises(ProtocolError) as ei:
        _decode([b"x"])
    assert (ei.value.stream, ei.value.seq) == (None, None)
