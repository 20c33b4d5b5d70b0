"""Wire protocol v1 throughput: encode + decode of one chunk, against naive peers.

Payloads: a 1-s ECG chunk (360 samples x 2 channels, float64; MIT-BIH rate) and a 1 MiB raw
video frame (512 x 512 RGBA). Peers, measured in the same run on the same data:

* ``wire``     - ``telediag.transports.wire.encode`` / ``decode`` (msgpack header, raw payload,
  zero-copy decode);
* ``json_b64`` - a naive JSON document with the samples base64-encoded;
* ``pickle``   - ``pickle`` protocol 5 of a dict holding the array: a speed reference only,
  measured on local data; never acceptable on a socket.

Plus ``wire_inproc``: ``send_chunk`` + ``recv_chunk`` over an inproc PUSH/PULL pair.

Run::

    pytest benchmarks/bench_wire.py --benchmark-only --benchmark-group-by=param:payload
    pytest benchmarks/bench_wire.py --benchmark-disable   # smoke mode (CI)
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from telediag.transports import (
    Chunk,
    VideoSpec,
    decode,
    encode,
    puller,
    pusher,
    recv_chunk,
    send_chunk,
)


def _ecg() -> Chunk:
    x = np.random.default_rng(0).standard_normal((360, 2))
    return Chunk.signal("ecg", "bed-12/ecg", 1, 1_700_000_000_000_000_000, x, 360.0,
                        ["MLII", "V1"], ["mV", "mV"], meta={"sent_ns": 1})  # fmt: skip


def _frame() -> Chunk:
    img = np.random.default_rng(0).integers(0, 256, (512, 512, 4), dtype=np.uint8)
    return Chunk(kind="video", stream="room-3/endo", seq=1, t0_ns=0, data=img,
                 video=VideoSpec("raw", 512, 512, "rgba", 30.0, keyframe=True))  # fmt: skip


PAYLOADS: dict[str, Callable[[], Chunk]] = {"ecg_360x2_f8": _ecg, "frame_1MiB": _frame}


# ----------------------------------------------------------------------------- peers


def _fields(c: Chunk) -> dict[str, Any]:
    assert c.data is not None
    d: dict[str, Any] = {"kind": c.kind, "stream": c.stream, "seq": c.seq, "t0_ns": c.t0_ns,
                         "dtype": c.data.dtype.str, "shape": list(c.data.shape), "meta": dict(c.meta)}  # fmt: skip
    if c.rate_hz is not None:
        d.update(rate_hz=c.rate_hz, channels=list(c.channels), units=list(c.units))
    if c.video is not None:
        d["video"] = c.video.to_wire()
    return d


def wire_roundtrip(c: Chunk) -> np.ndarray:
    out = decode(encode(c)).data
    assert out is not None
    return out


def json_b64_roundtrip(c: Chunk) -> np.ndarray:
    assert c.data is not None
    doc = _fields(c)
    doc["data"] = base64.b64encode(c.data.tobytes()).decode("ascii")
    msg = json.dumps(doc).encode()
    back = json.loads(msg)
    return np.frombuffer(base64.b64decode(back["data"]), dtype=back["dtype"]).reshape(back["shape"])


def pickle_roundtrip(c: Chunk) -> np.ndarray:
    doc = _fields(c)
    doc["data"] = c.data
    back = pickle.loads(pickle.dumps(doc, protocol=5))  # local reference only
    out: np.ndarray = back["data"]
    return out


CODECS: dict[str, Callable[[Chunk], np.ndarray]] = {
    "wire": wire_roundtrip,
    "json_b64": json_b64_roundtrip,
    "pickle": pickle_roundtrip,
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("codec", list(CODECS))
def test_encode_decode(benchmark: Any, payload: str, codec: str) -> None:
    chunk = PAYLOADS[payload]()
    fn = CODECS[codec]
    benchmark.group = f"encode+decode {payload}"
    benchmark.extra_info["bytes"] = int(chunk.data.nbytes) if chunk.data is not None else 0
    out = benchmark(fn, chunk)
    assert chunk.data is not None
    assert out.dtype == chunk.data.dtype and np.array_equal(out, chunk.data)


@pytest.fixture
def inproc_pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:  # type: ignore[type-arg]
    ctx = zmq.Context()
    pull = puller(ctx, "inproc://bench-wire")
    push = pusher(ctx, "inproc://bench-wire", linger_ms=0)
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    yield push, pull
    push.close()
    pull.close()
    ctx.term()


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_wire_inproc(benchmark: Any, inproc_pair: Any, payload: str) -> None:
    push, pull = inproc_pair
    chunk = PAYLOADS[payload]()
    benchmark.group = f"encode+decode {payload}"

    def roundtrip() -> Chunk:
        send_chunk(push, chunk)
        return recv_chunk(pull)

    assert benchmark(roundtrip) == chunk
