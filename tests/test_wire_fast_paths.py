"""Chunk construction's fast paths (transports/wire.py, speed work) accept exactly what the full
checks accept: a stream id or label tuple seen before is no pass for a look-alike of another type,
an empty units item never makes a tuple valid as channels, and numbers of other types are still
converted or refused as before."""

from __future__ import annotations

import numpy as np
import pytest

from telediag.errors import ProtocolError
from telediag.transports.wire import Chunk, decode, encode


class S(str):
    """A str subclass (refused as a stream id or label even when equal to an accepted one)."""


X = np.zeros((4, 2))


def _sig(**kw: object) -> Chunk:
    args: dict[str, object] = {"kind": "ecg", "stream": "bed-1/ecg", "seq": 0, "t0_ns": 0, "data": X,
                               "rate_hz": 360.0, "channels": ("MLII", "V1"), "units": ("mV", "mV")}
    args.update(kw)
    return Chunk.signal(**args)  # type: ignore[arg-type]


def test_cached_stream_and_labels_are_no_pass_for_look_alikes() -> None:
    ch = ("MLII", "V1")
    ok = _sig(channels=ch)
    assert ok.channels is ch and _sig(channels=ch).channels is ch  # checked once, kept as is
    with pytest.raises(ProtocolError, match="stream must be a string"):
        Chunk.record("hr", S("bed-1/ecg"), 0, 0, {"a": 1})
    with pytest.raises(ProtocolError, match=r"channels\[0\] must be a string"):
        _sig(channels=(S("MLII"), "V1"))
    with pytest.raises(ProtocolError, match=r"units\[1\] must be a string"):
        _sig(units=("mV", S("mV")))
    units = ("", "mV")  # an empty unit is allowed, an empty channel name is not
    assert _sig(units=units).units == units
    with pytest.raises(ProtocolError, match=r"channels\[0\] must be a non-empty string"):
        _sig(channels=units)
    with pytest.raises(ProtocolError, match="channels and units must be sequences of strings"):
        Chunk(kind="ecg", stream="bed-1/ecg", seq=0, t0_ns=0, data=X[:, :1], rate_hz=360.0,
              channels="MLII", units=("mV",))  # type: ignore[arg-type]
    assert _sig(channels=["MLII", "V1"]).channels == ("MLII", "V1")  # a list becomes a tuple
    for bad in ("bed 1/ecg", "/bed-1", "bed-1/", "a//b", "", "x" * 129):
        with pytest.raises(ProtocolError, match="stream must be"):
            Chunk.record("hr", bad, 0, 0, {"a": 1})


def test_numbers_still_converted_or_refused() -> None:
    c = _sig(seq=np.int64(5), t0_ns=np.int32(-7), rate_hz=np.float64(250.0))
    assert (type(c.seq), type(c.t0_ns), type(c.rate_hz)) == (int, int, float)
    assert (c.seq, c.t0_ns, c.rate_hz) == (5, -7, 250.0)
    assert _sig(rate_hz=360).rate_hz == 360.0 and type(_sig(rate_hz=360).rate_hz) is float
    for kw, msg in (({"seq": True}, "seq must be an integer"), ({"seq": -1}, r"seq must be in"),
                    ({"seq": 1 << 63}, "seq must be in"), ({"t0_ns": 1 << 63}, "t0_ns must be in"),
                    ({"t0_ns": 1.0}, "t0_ns must be an integer"), ({"rate_hz": float("nan")}, "finite"),
                    ({"rate_hz": float("inf")}, "finite"), ({"rate_hz": 0.0}, "> 0"),
                    ({"rate_hz": -1.0}, "> 0"), ({"rate_hz": True}, "must be a number")):
        with pytest.raises(ProtocolError, match=msg):
            _sig(**kw)


def test_meta_copied_and_checked() -> None:
    m: dict[str, object] = {}
    c = Chunk.record("hr", "bed-1/ecg", 0, 0, {"a": 1}, meta=m)
    m["late"] = 1
    assert c.meta == {} and c.meta is not m
    with pytest.raises(ProtocolError, match="meta map keys must be strings"):
        Chunk.record("hr", "bed-1/ecg", 0, 0, {"a": 1}, meta={1: 2})
    with pytest.raises(ProtocolError, match="meta must be a mapping"):
        Chunk.record("hr", "bed-1/ecg", 0, 0, {"a": 1}, meta=[1])  # type: ignore[arg-type]
    c = _sig(meta={"sent_ns": 3})
    assert decode(encode(c)) == c


def test_body_check_still_walks_every_container() -> None:
    """``_check_doc`` skips only exact scalar types: containers of any subclass are still walked."""
    from collections import OrderedDict

    def rec(body: object) -> Chunk:
        return Chunk.record("hr", "bed-1/ecg", 0, 0, body)

    ok = {"a": [1, 2.5, "x", None, True, b"b", {"c": (1, 2)}], "d": np.zeros((2, 2))}
    assert len(encode(rec(ok))) == 3
    for bad in ({"a": [OrderedDict({1: 2})]}, {"a": ({"b": {3: 4}},)}, [[{"k": {(1,): 2}}]]):
        with pytest.raises(ProtocolError, match="map keys must be strings"):
            encode(rec(bad))
    deep: object = 1.0
    for _ in range(33):
        deep = [deep]
    with pytest.raises(ProtocolError, match="nests deeper"):
        encode(rec({"x": deep}))

    class L(list):  # type: ignore[type-arg]
        pass

    deep = 1.0
    for _ in range(33):
        deep = L([deep])
    with pytest.raises(ProtocolError, match="nests deeper"):
        encode(rec(deep))
    with pytest.raises(ProtocolError, match="nests deeper"):
        encode(rec({"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[np.zeros((1, 1, 1, 1))]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}))
