"""Wire protocol v1: one chunk per ZeroMQ multipart message ``[topic, header, payload]``.

The normative description (frame layout, header schema, limits, error reasons and a worked
example) is ``transports/PROTOCOL.md``; this module is the reference implementation.

* :class:`Chunk` is the unit of data: a block of samples, one encoded video packet, or one
  annotation document, with its stream id, sequence number and source timestamp.
* :func:`encode` turns a chunk into three frames; the payload is a zero-copy view of the array.
* :func:`decode` turns three frames back into a chunk. It is strict: any violation raises
  :class:`telediag.errors.ProtocolError` with a short ``reason`` code (see :data:`REASONS`)
  and nothing else ever escapes, whatever the input. Nothing is ever unpickled.

Examples
--------
>>> import numpy as np
>>> x = np.zeros((360, 2))
>>> c = Chunk.signal("ecg", "bed-12/ecg", 0, 0, x, 360.0, ("MLII", "V1"), ("mV", "mV"))
>>> frames = encode(c)
>>> bytes(frames[0])
b'ecg/bed-12/ecg'
>>> decode(frames) == c
True
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np

from telediag.errors import ProtocolError

__all__ = [
    "ANNOTATION_KINDS",
    "DTYPES",
    "ENCODINGS",
    "KINDS",
    "MAX_BODY_BYTES",
    "MAX_BODY_DEPTH",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_STREAM_CHARS",
    "MAX_TOPIC_BYTES",
    "MAX_VIDEO_DIM",
    "REASONS",
    "SIGNAL_KINDS",
    "VIDEO_CODECS",
    "VIDEO_KINDS",
    "WIRE_VERSION",
    "Chunk",
    "VideoSpec",
    "decode",
    "encode",
    "physical",
    "to_physical",
]

# --------------------------------------------------------------------------- constants

WIRE_VERSION: Final = 1
MAX_HEADER_BYTES: Final = 4096
MAX_TOPIC_BYTES: Final = 256
MAX_BODY_BYTES: Final = 1 << 20  # msgpack bodies
MAX_PAYLOAD_BYTES: Final = 64 << 20  # raw / packet payloads
MAX_DIMS: Final = 4  # raw arrays have 1..MAX_DIMS dimensions
MAX_BODY_DEPTH: Final = 32  # container nesting in msgpack bodies and in ``meta``
MAX_STREAM_CHARS: Final = 128
MAX_VIDEO_DIM: Final = 16384  # largest video width/height in pixels

SIGNAL_KINDS: Final = frozenset({"ecg", "pcg"})
VIDEO_KINDS: Final = frozenset({"video"})
ANNOTATION_KINDS: Final = frozenset(
    {"beats", "hr", "hrv", "quality", "segments", "polyp", "alarm", "event", "stats"}
)
KINDS: Final = SIGNAL_KINDS | VIDEO_KINDS | ANNOTATION_KINDS
DTYPES: Final = ("<f4", "<f8", "<i2", "<i4", "<i8", "|u1", "<u2", "|i1")  # little-endian only
ENCODINGS: Final = ("raw", "msgpack", "packet")
VIDEO_CODECS: Final = frozenset({"h264", "raw"})

#: Every ``ProtocolError.reason`` that :func:`decode` (and :class:`Chunk`) can raise.
REASONS: Final = (
    "frame_count",
    "topic",
    "topic_mismatch",
    "header_too_large",
    "header_malformed",
    "bad_version",
    "unknown_kind",
    "missing_field",
    "bad_field",
    "unknown_field",
    "bad_dtype",
    "bad_shape",
    "size_mismatch",
    "non_finite",
    "payload_too_large",
    "body_malformed",
    "invalid_chunk",
)

_STREAM_RE: Final = re.compile(rf"[A-Za-z0-9._:/-]{{1,{MAX_STREAM_CHARS}}}")
_PIX_FMT_RE: Final = re.compile(r"[a-z0-9_]{1,32}")
_ITEMSIZE: Final = {d: np.dtype(d).itemsize for d in DTYPES}
_NP_DTYPE: Final = {d: np.dtype(d) for d in DTYPES}
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_BASE_KEYS: Final = ("v", "kind", "stream", "seq", "t0_ns", "enc")
_HEADER_KEYS: Final = frozenset(
    _BASE_KEYS + ("dtype", "shape", "rate_hz", "channels", "units", "video", "meta")
)
_VIDEO_KEYS: Final = ("codec", "width", "height", "pix_fmt", "fps", "keyframe")
_PEEK_HEADER_BYTES: Final = 1 << 16  # largest header read for a reject's (stream, seq)


#: Stream ids, and channel/unit tuples (by identity, with a reference held so the id stays
#: theirs; only tuples of non-empty exact ``str``, valid as channels and as units), that passed
#: their checks when a Chunk was built: both are immutable, so a pass stays a pass and the checks
#: need not run again for every chunk and record of a stream (the engine builds several a chunk).
#: Bounded: cleared when full.
_STREAMS_OK: set[str] = set()
_LABELS_OK: dict[int, tuple[str, ...]] = {}
_OK_MAX: Final = 4096


def _fail(reason: str, message: str) -> ProtocolError:
    return ProtocolError(reason, message)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value from the network, clipped so error messages stay small."""
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - repr of msgpack values never fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- field checks
# Shared by Chunk construction (which re-labels every failure "invalid_chunk") and by decode
# (which keeps the specific reason). Inputs are already of the right Python type.


def _check_kind(kind: object) -> str:
    if type(kind) is not str:
        raise _fail("bad_field", f"kind must be a string, got {type(kind).__name__}")
    if kind not in KINDS:
        raise _fail("unknown_kind", f"kind {_short(kind)} is not one of {sorted(KINDS)}")
    return kind


def _check_stream(stream: object) -> str:
    if type(stream) is not str:
        raise _fail("bad_field", f"stream must be a string, got {type(stream).__name__}")
    if (
        _STREAM_RE.fullmatch(stream) is None
        or stream.startswith("/")
        or stream.endswith("/")
        or "//" in stream
    ):
        raise _fail(
            "bad_field",
            f"stream must be 1-{MAX_STREAM_CHARS} characters of [A-Za-z0-9._:/-] with no "
            f"leading, trailing or double '/', got {_short(stream)}",
        )
    return stream


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise _fail("bad_field", f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _fail("bad_field", f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _check_positive_float(name: str, value: object) -> float:
    if type(value) not in (int, float):
        raise _fail("bad_field", f"{name} must be a number, got {type(value).__name__}")
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise _fail("non_finite", f"{name} must be finite, got {v!r}")
    if v <= 0.0:
        raise _fail("bad_field", f"{name} must be > 0, got {v!r}")
    return v


def _check_labels(name: str, values: object, *, allow_empty_items: bool) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise _fail("bad_field", f"{name} must be a list of strings, got {type(values).__name__}")
    for i, s in enumerate(values):
        if type(s) is not str:
            raise _fail("bad_field", f"{name}[{i}] must be a string, got {type(s).__name__}")
        if not s and not allow_empty_items:
            raise _fail("bad_field", f"{name}[{i}] must be a non-empty string")
    return tuple(values)


#: Exact types that are never containers: ``_check_doc`` skips its isinstance test for them.
_LEAF_TYPES: Final = frozenset({str, int, float, bool, type(None), bytes})
_NODE_TYPES: Final = (dict, list, tuple, np.ndarray)


def _check_doc(doc: object, what: str, reason: str) -> None:
    """Check that a msgpack document has str map keys and bounded nesting."""
    stack: list[tuple[object, int]] = [(doc, 0)]
    leaf, node = _LEAF_TYPES, _NODE_TYPES
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, dict):
            if depth >= MAX_BODY_DEPTH:
                raise _fail(reason, f"{what} nests deeper than {MAX_BODY_DEPTH} levels")
            for k, v in obj.items():
                if type(k) is not str:
                    raise _fail(reason, f"{what} map keys must be strings, got {type(k).__name__}")
                if type(v) not in leaf and isinstance(v, node):
                    stack.append((v, depth + 1))
        elif isinstance(obj, (list, tuple)):
            if depth >= MAX_BODY_DEPTH:
                raise _fail(reason, f"{what} nests deeper than {MAX_BODY_DEPTH} levels")
            for v in obj:
                if type(v) not in leaf and isinstance(v, node):
                    stack.append((v, depth + 1))
        elif isinstance(obj, np.ndarray) and depth + obj.ndim > MAX_BODY_DEPTH:
            raise _fail(reason, f"{what} nests deeper than {MAX_BODY_DEPTH} levels")


def _check_layout(
    kind: str,
    enc: str,
    shape: tuple[int, ...] | None,
    rate_hz: float | None,
    channels: tuple[str, ...],
    units: tuple[str, ...],
    video: VideoSpec | None,
) -> None:
    """Check that the encoding and the optional field groups fit the kind."""
    if kind in SIGNAL_KINDS:
        if enc != "raw":
            raise _fail("bad_field", f"kind {kind!r} needs enc 'raw', got {enc!r}")
        if rate_hz is None:
            raise _fail("missing_field", f"kind {kind!r} needs rate_hz")
        if not channels:
            raise _fail("missing_field", f"kind {kind!r} needs at least one channel name")
        if len(units) != len(channels):
            raise _fail(
                "bad_field",
                f"units has {len(units)} entries but channels has {len(channels)}",
            )
        assert shape is not None
        if len(shape) != 2:
            raise _fail(
                "bad_shape",
                f"kind {kind!r} needs a 2-D (n_samples, n_channels) array, got shape {list(shape)}",
            )
        if shape[1] != len(channels):
            raise _fail(
                "bad_shape",
                f"shape {list(shape)} has {shape[1]} channels but channels lists {len(channels)}",
            )
    else:
        if rate_hz is not None or channels or units:
            raise _fail(
                "bad_field",
                f"rate_hz, channels and units are only allowed for kinds {sorted(SIGNAL_KINDS)}, "
                f"not {kind!r}",
            )
    if kind in VIDEO_KINDS:
        if video is None:
            raise _fail("missing_field", f"kind {kind!r} needs a video spec")
        if enc == "msgpack":
            raise _fail("bad_field", f"kind {kind!r} needs enc 'packet' or 'raw', got 'msgpack'")
        if enc == "raw":
            if video.codec != "raw":
                raise _fail(
                    "bad_field", f"enc 'raw' video needs codec 'raw', got codec {video.codec!r}"
                )
            assert shape is not None
            if len(shape) not in (2, 3) or shape[:2] != (video.height, video.width):
                raise _fail(
                    "bad_shape",
                    f"enc 'raw' video needs shape (height, width[, components]) = "
                    f"({video.height}, {video.width}[, c]), got {list(shape)}",
                )
    else:
        if video is not None:
            raise _fail("bad_field", f"a video spec is only allowed for kind 'video', not {kind!r}")
        if enc == "packet":
            raise _fail("bad_field", f"enc 'packet' is only allowed for kind 'video', not {kind!r}")


def _index(name: str, value: object) -> int:
    """``operator.index`` that refuses bools and reports the field name."""
    if isinstance(value, bool):
        raise _fail("bad_field", f"{name} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise _fail("bad_field", f"{name} must be an integer, got {type(value).__name__}") from None


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail("bad_field", f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _seq(value: object) -> object:
    """A tuple from any non-string iterable (so ``_check_labels`` sees list/tuple)."""
    if isinstance(value, (list, tuple, str, bytes)):
        return value
    try:
        return tuple(value)  # type: ignore[arg-type,call-overload]
    except TypeError:
        return value


def _relabel(e: ProtocolError) -> ProtocolError:
    return ProtocolError("invalid_chunk", e.detail)


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """How to interpret a video chunk.

    Parameters
    ----------
    codec : str
        ``"h264"`` (payload is one Annex-B access unit) or ``"raw"`` (uncompressed pixels).
    width, height : int
        Frame size in pixels, 1..16384.
    pix_fmt : str
        FFmpeg pixel-format name, e.g. ``"yuv420p"`` or ``"rgb24"`` (``[a-z0-9_]{1,32}``).
    fps : float
        Nominal frame rate (finite, > 0).
    keyframe : bool
        True when the packet can be decoded without earlier packets.

    Examples
    --------
    >>> VideoSpec("h264", 1280, 720, "yuv420p", 30.0, keyframe=True).width
    1280
    """

    codec: str
    width: int
    height: int
    pix_fmt: str
    fps: float
    keyframe: bool = False

    def __post_init__(self) -> None:
        try:
            if type(self.codec) is not str or self.codec not in VIDEO_CODECS:
                raise _fail(
                    "bad_field",
                    f"video.codec must be one of {sorted(VIDEO_CODECS)}, got {_short(self.codec)}",
                )
            w = _check_int("video.width", _index("video.width", self.width), 1, MAX_VIDEO_DIM)
            h = _check_int("video.height", _index("video.height", self.height), 1, MAX_VIDEO_DIM)
            if type(self.pix_fmt) is not str or _PIX_FMT_RE.fullmatch(self.pix_fmt) is None:
                raise _fail(
                    "bad_field",
                    f"video.pix_fmt must match [a-z0-9_]{{1,32}}, got {_short(self.pix_fmt)}",
                )
            fps = _check_positive_float("video.fps", _real("video.fps", self.fps))
            if not isinstance(self.keyframe, (bool, np.bool_)):
                raise _fail(
                    "bad_field",
                    f"video.keyframe must be a bool, got {type(self.keyframe).__name__}",
                )
        except ProtocolError as e:
            raise _relabel(e) from None
        object.__setattr__(self, "width", w)
        object.__setattr__(self, "height", h)
        object.__setattr__(self, "fps", fps)
        object.__setattr__(self, "keyframe", bool(self.keyframe))

    def to_wire(self) -> dict[str, Any]:
        """The ``video`` header map."""
        return {
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "pix_fmt": self.pix_fmt,
            "fps": self.fps,
            "keyframe": self.keyframe,
        }


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Chunk:
    """One wire message: a block of samples, one video packet or one annotation document.

    Exactly one of ``data`` (enc ``"raw"``), ``body`` (enc ``"msgpack"``) and ``packet``
    (enc ``"packet"``) is set. Construction validates every field and raises
    :class:`~telediag.errors.ProtocolError` with reason ``"invalid_chunk"`` on any violation,
    so a chunk that exists can be encoded (except for size limits on ``body``/``meta``, which
    :func:`encode` checks). ``data`` is stored as a C-contiguous little-endian array (a
    big-endian or strided input is converted once, here); treat it as immutable, since
    :func:`encode` sends it without copying.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    stream : str
        Stream id, e.g. ``"bed-12/ecg"``: 1-128 chars of ``[A-Za-z0-9._:/-]``, no leading or
        trailing ``/``, no ``//``.
    seq : int
        Per-stream sequence number, ``0 <= seq < 2**63``, counting up by one per chunk.
    t0_ns : int
        Source timestamp of the first sample in ns (signed 64-bit, source clock).
    data : numpy.ndarray, optional
        Raw array, 1-4 dims, dtype in :data:`DTYPES` (after byte-order conversion). Signal kinds
        use shape ``(n_samples, n_channels)``.
    body : Any, optional
        A msgpack document (dict/list/str/number/bool; map keys are strings; not None).
    packet : bytes, optional
        Encoded video packet (codec in ``video.codec``).
    rate_hz : float, optional
        Sample rate; required (finite, > 0) for :data:`SIGNAL_KINDS`, forbidden otherwise.
    channels, units : tuple of str
        Channel names and units; required for signal kinds (``len == data.shape[1]``).
    video : VideoSpec, optional
        Required for :data:`VIDEO_KINDS`, forbidden otherwise.
    meta : Mapping[str, Any]
        Small extra map travelling in the header (e.g. ``{"sent_ns": ...}``).

    Examples
    --------
    >>> import numpy as np
    >>> c = Chunk.signal("ecg", "bed-12/ecg", 7, 10**9, np.zeros((360, 2), "<f4"),
    ...                  360.0, ["MLII", "V1"], ["mV", "mV"])
    >>> (c.topic, c.enc, c.n_samples)
    ('ecg/bed-12/ecg', 'raw', 360)
    >>> Chunk.record("hr", "bed-12/ecg", 0, 10**9, {"bpm": 72.5}).enc
    'msgpack'
    """

    kind: str
    stream: str
    seq: int
    t0_ns: int
    data: np.ndarray | None = None
    body: Any = None
    packet: bytes | None = None
    rate_hz: float | None = None
    channels: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    video: VideoSpec | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self._normalize()
        except ProtocolError as e:
            raise _relabel(e) from None

    def _normalize(self) -> None:
        # Each check below has a fast path for the values the engine builds (exact int / float
        # in range, an already checked stream id or label tuple, empty meta) that accepts exactly
        # what the full check accepts and leaves the value as the full check would.
        set_ = object.__setattr__
        _check_kind(self.kind)
        stream = self.stream
        if type(stream) is not str or stream not in _STREAMS_OK:
            _check_stream(stream)
            if len(_STREAMS_OK) >= _OK_MAX:
                _STREAMS_OK.clear()
            _STREAMS_OK.add(stream)
        seq = self.seq
        if type(seq) is not int or not 0 <= seq <= _I64_MAX:
            set_(self, "seq", _check_int("seq", _index("seq", seq), 0, _I64_MAX))
        t0 = self.t0_ns
        if type(t0) is not int or not _I64_MIN <= t0 <= _I64_MAX:
            set_(self, "t0_ns", _check_int("t0_ns", _index("t0_ns", t0), _I64_MIN, _I64_MAX))

        n_set = (self.data is not None) + (self.body is not None) + (self.packet is not None)
        if n_set != 1:
            raise _fail(
                "invalid_chunk",
                f"exactly one of data, body and packet must be set, got {n_set}",
            )
        shape: tuple[int, ...] | None = None
        if self.data is not None:
            set_(self, "data", _normalize_array(self.data))
            assert self.data is not None
            shape = self.data.shape
        elif self.packet is not None:
            if not isinstance(self.packet, bytes):
                if not isinstance(self.packet, (bytearray, memoryview)):
                    raise _fail(
                        "bad_field",
                        f"packet must be bytes-like, got {type(self.packet).__name__}",
                    )
                set_(self, "packet", bytes(self.packet))
            assert self.packet is not None
            if len(self.packet) > MAX_PAYLOAD_BYTES:
                raise _fail(
                    "payload_too_large",
                    f"packet is {len(self.packet)} bytes, limit is {MAX_PAYLOAD_BYTES}",
                )

        rate = self.rate_hz
        if rate is not None and not (type(rate) is float and math.isfinite(rate) and rate > 0.0):
            set_(self, "rate_hz", _check_positive_float("rate_hz", _real("rate_hz", rate)))
        ch, un = self.channels, self.units
        if not ((type(ch) is tuple and (not ch or _LABELS_OK.get(id(ch)) is ch))
                and (type(un) is tuple and (not un or _LABELS_OK.get(id(un)) is un))):
            if isinstance(ch, str) or isinstance(un, str):
                raise _fail("bad_field", "channels and units must be sequences of strings, not str")
            ch = _check_labels("channels", _seq(ch), allow_empty_items=False)
            un = _check_labels("units", _seq(un), allow_empty_items=True)
            set_(self, "channels", ch)
            set_(self, "units", un)
            if len(_LABELS_OK) >= _OK_MAX:
                _LABELS_OK.clear()
            for t in (ch, un):  # only tuples valid as channels and as units (no empty item)
                if t and all(type(v) is str and v for v in t):
                    _LABELS_OK[id(t)] = t
        if self.video is not None and not isinstance(self.video, VideoSpec):
            raise _fail("bad_field", f"video must be a VideoSpec, got {type(self.video).__name__}")

        meta = self.meta
        if meta is None or (type(meta) is dict and not meta):
            set_(self, "meta", {})
        elif not isinstance(meta, Mapping):
            raise _fail("bad_field", f"meta must be a mapping, got {type(meta).__name__}")
        else:
            meta = dict(meta)
            _check_doc(meta, "meta", "bad_field")
            set_(self, "meta", meta)
        _check_layout(
            self.kind, self.enc, shape, self.rate_hz, self.channels, self.units, self.video
        )

    # ----------------------------------------------------------------- derived properties

    @property
    def topic(self) -> str:
        """``f"{kind}/{stream}"``, the first frame; SUB sockets filter on its prefix."""
        return f"{self.kind}/{self.stream}"

    @property
    def enc(self) -> str:
        """Payload encoding: ``"raw"``, ``"msgpack"`` or ``"packet"``."""
        if self.data is not None:
            return "raw"
        if self.packet is not None:
            return "packet"
        return "msgpack"

    @property
    def n_samples(self) -> int:
        """``data.shape[0]`` for raw signal chunks, 1 for every other chunk."""
        if self.kind in SIGNAL_KINDS and self.data is not None:
            return int(self.data.shape[0])
        return 1

    # ----------------------------------------------------------------- constructors

    @classmethod
    def signal(
        cls,
        kind: str,
        stream: str,
        seq: int,
        t0_ns: int,
        data: Any,
        rate_hz: float,
        channels: Sequence[str],
        units: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> Chunk:
        """A sampled-signal chunk (enc ``"raw"``).

        ``data`` is converted with :func:`numpy.asarray`; a 1-D array is accepted when there is
        exactly one channel and becomes ``(n_samples, 1)``.

        Examples
        --------
        >>> import numpy as np
        >>> Chunk.signal("pcg", "bed-1/pcg", 0, 0, np.zeros(400, "<i2"), 4000.0,
        ...              ["pcg"], ["adu"]).data.shape
        (400, 1)
        """
        arr = np.asarray(data)
        if arr.ndim == 1 and len(channels) == 1:
            arr = arr.reshape(-1, 1)
        return cls(
            kind=kind,
            stream=stream,
            seq=seq,
            t0_ns=t0_ns,
            data=arr,
            rate_hz=rate_hz,
            channels=tuple(channels),
            units=tuple(units),
            meta={} if meta is None else meta,
        )

    @classmethod
    def record(
        cls,
        kind: str,
        stream: str,
        seq: int,
        t0_ns: int,
        body: Any,
        meta: Mapping[str, Any] | None = None,
    ) -> Chunk:
        """An annotation/event/stats chunk carrying a msgpack document (enc ``"msgpack"``).

        Examples
        --------
        >>> Chunk.record("event", "bed-12/ecg", 3, 0, {"type": "gap", "missing": 2}).topic
        'event/bed-12/ecg'
        """
        return cls(
            kind=kind,
            stream=stream,
            seq=seq,
            t0_ns=t0_ns,
            body=body,
            meta={} if meta is None else meta,
        )

    @classmethod
    def video_packet(
        cls,
        stream: str,
        seq: int,
        t0_ns: int,
        packet: bytes,
        video: VideoSpec,
        meta: Mapping[str, Any] | None = None,
    ) -> Chunk:
        """A video chunk carrying one encoded packet (enc ``"packet"``).

        Examples
        --------
        >>> spec = VideoSpec("h264", 640, 480, "yuv420p", 25.0, keyframe=True)
        >>> Chunk.video_packet("room-3/endo", 0, 0, b"\\x00\\x00\\x00\\x01", spec).enc
        'packet'
        """
        return cls(
            kind="video",
            stream=stream,
            seq=seq,
            t0_ns=t0_ns,
            packet=packet,
            video=video,
            meta={} if meta is None else meta,
        )

    # ----------------------------------------------------------------- dunder

    def __eq__(self, other: object) -> bool:
        """Field-wise equality; arrays compare bit-exactly (dtype, shape and bytes)."""
        if not isinstance(other, Chunk):
            return NotImplemented
        if (
            self.kind != other.kind
            or self.stream != other.stream
            or self.seq != other.seq
            or self.t0_ns != other.t0_ns
            or self.rate_hz != other.rate_hz
            or self.channels != other.channels
            or self.units != other.units
            or self.video != other.video
            or self.packet != other.packet
            or self.meta != other.meta
        ):
            return False
        a, b = self.data, other.data
        if (a is None) != (b is None):
            return False
        if a is not None and b is not None:
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                return False
        return bool(self.body == other.body)

    __hash__ = None  # type: ignore[assignment]  # holds arrays and dicts

    def __repr__(self) -> str:
        parts = [
            f"kind={self.kind!r}",
            f"stream={self.stream!r}",
            f"seq={self.seq}",
            f"t0_ns={self.t0_ns}",
        ]
        if self.data is not None:
            parts.append(f"data=<{self.data.dtype.str}{list(self.data.shape)}>")
        elif self.packet is not None:
            parts.append(f"packet=<{len(self.packet)} bytes>")
        else:
            parts.append(f"body={_short(self.body, 80)}")
        if self.rate_hz is not None:
            parts += [
                f"rate_hz={self.rate_hz!r}",
                f"channels={self.channels!r}",
                f"units={self.units!r}",
            ]
        if self.video is not None:
            parts.append(f"video={self.video!r}")
        if self.meta:
            parts.append(f"meta={_short(self.meta, 80)}")
        return f"Chunk({', '.join(parts)})"


def _normalize_array(data: object) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise _fail("bad_field", f"data must be a numpy.ndarray, got {type(data).__name__}")
    dt = data.dtype
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt.str not in _ITEMSIZE:
        raise _fail("bad_dtype", f"data dtype {data.dtype.str!r} is not one of {list(DTYPES)}")
    if not 1 <= data.ndim <= MAX_DIMS:
        raise _fail(
            "bad_shape", f"data must have 1-{MAX_DIMS} dimensions, got shape {list(data.shape)}"
        )
    if data.nbytes > MAX_PAYLOAD_BYTES:
        raise _fail(
            "payload_too_large", f"data is {data.nbytes} bytes, limit is {MAX_PAYLOAD_BYTES}"
        )
    if dt != data.dtype:
        data = data.astype(dt, order="C")
    if not data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
    return data


# --------------------------------------------------------------------------- encode


def _msgpack_default(obj: Any) -> Any:
    """Let numpy scalars and arrays appear in bodies and meta (as plain numbers / lists)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__!r} with msgpack")


def _pack(doc: Any, what: str) -> bytes:
    try:
        return msgpack.packb(doc, use_bin_type=True, default=_msgpack_default, datetime=False)
    except Exception as e:
        raise _fail("invalid_chunk", f"{what} is not msgpack-serialisable: {e}") from e


def _header(chunk: Chunk) -> dict[str, Any]:
    h: dict[str, Any] = {
        "v": WIRE_VERSION,
        "kind": chunk.kind,
        "stream": chunk.stream,
        "seq": chunk.seq,
        "t0_ns": chunk.t0_ns,
        "enc": chunk.enc,
    }
    if chunk.data is not None:
        h["dtype"] = chunk.data.dtype.str
        h["shape"] = list(chunk.data.shape)
    if chunk.rate_hz is not None:
        h["rate_hz"] = chunk.rate_hz
        h["channels"] = list(chunk.channels)
        h["units"] = list(chunk.units)
    if chunk.video is not None:
        h["video"] = chunk.video.to_wire()
    if chunk.meta:
        h["meta"] = chunk.meta
    return h


def encode(chunk: Chunk, *, seq: int | None = None, meta: Mapping[str, Any] | None = None,
           check_body: bool = True) -> list[bytes | memoryview]:
    """Encode a chunk as the three frames ``[topic, header, payload]`` of wire protocol v1.

    The raw payload is a zero-copy ``memoryview`` of ``chunk.data`` (already C-contiguous and
    little-endian, see :class:`Chunk`), so the array must not be modified until the message has
    been sent.

    Parameters
    ----------
    chunk : Chunk
        A validated chunk.
    seq, meta : optional
        Send the chunk with this ``seq`` and/or ``meta`` instead of its own (what a
        republisher needs, without building and re-validating a new :class:`Chunk`).
        Checked like the constructor checks them.
    check_body : bool
        Walk a msgpack ``body`` for non-string keys and excess nesting (default). Only a
        producer whose bodies are built by its own code from plain values (the engine's
        stats) may skip it; receivers check every body whatever the sender did.

    Returns
    -------
    list of bytes or memoryview
        ``[topic, header, payload]``, ready for ``socket.send_multipart``.

    Raises
    ------
    ProtocolError
        ``header_too_large`` when the header (mostly ``meta``) exceeds :data:`MAX_HEADER_BYTES`,
        ``payload_too_large`` when a msgpack body exceeds :data:`MAX_BODY_BYTES`,
        ``invalid_chunk`` when ``body``/``meta`` cannot be serialised or nest too deeply.

    Examples
    --------
    >>> import numpy as np
    >>> c = Chunk(kind="beats", stream="s", seq=0, t0_ns=0, data=np.arange(3, dtype="<i8"))
    >>> [bytes(f) for f in encode(c)][2]
    b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
    """
    if not isinstance(chunk, Chunk):
        raise TypeError(f"encode() needs a Chunk, got {type(chunk).__name__}")
    h = _header(chunk)
    try:
        if seq is not None:
            h["seq"] = _check_int("seq", _index("seq", seq), 0, _I64_MAX)
        if meta is not None:
            if not isinstance(meta, Mapping):
                raise _fail("bad_field", f"meta must be a map, got {type(meta).__name__}")
            _check_doc(meta, "meta", "bad_field")
            if meta:
                h["meta"] = meta
            else:
                h.pop("meta", None)
    except ProtocolError as e:
        raise _relabel(e) from None
    header = _pack(h, "header (channels, units or meta)")
    if len(header) > MAX_HEADER_BYTES:
        raise _fail(
            "header_too_large",
            f"header is {len(header)} bytes, limit is {MAX_HEADER_BYTES} (is meta too large?)",
        )
    payload: bytes | memoryview
    if chunk.data is not None:
        payload = memoryview(chunk.data).cast("B") if chunk.data.size else b""  # type: ignore[arg-type]
    elif chunk.packet is not None:
        payload = chunk.packet
    else:
        if check_body:
            try:
                _check_doc(chunk.body, "body", "invalid_chunk")
            except ProtocolError as e:
                raise _relabel(e) from None
        payload = _pack(chunk.body, "body")
        if len(payload) > MAX_BODY_BYTES:
            raise _fail(
                "payload_too_large",
                f"msgpack body is {len(payload)} bytes, limit is {MAX_BODY_BYTES}",
            )
    return [chunk.topic.encode(), header, payload]


# --------------------------------------------------------------------------- decode


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _as_bytes_view(frame: object, index: int) -> memoryview:
    try:
        mv = memoryview(frame)  # type: ignore[arg-type]  # bytes, memoryview, zmq.Frame
    except TypeError:
        raise _fail(
            "frame_count", f"frame {index} is not bytes-like (got {type(frame).__name__})"
        ) from None
    if mv.ndim != 1 or mv.format != "B" or not mv.c_contiguous:
        try:
            mv = mv.cast("B")
        except (TypeError, ValueError):
            raise _fail("frame_count", f"frame {index} is not a contiguous byte buffer") from None
    return mv


def _unpack_header(buf: memoryview) -> dict[Any, Any]:
    n = len(buf)
    if n > MAX_HEADER_BYTES:
        raise _fail("header_too_large", f"header is {n} bytes, limit is {MAX_HEADER_BYTES}")
    if n == 0:
        raise _fail("header_malformed", "header frame is empty")
    try:
        header = msgpack.unpackb(
            buf,
            raw=False,
            strict_map_key=True,
            ext_hook=_reject_ext,
            max_ext_len=0,
            max_bin_len=MAX_HEADER_BYTES,
            max_str_len=MAX_HEADER_BYTES,
            max_array_len=MAX_HEADER_BYTES,
            max_map_len=MAX_HEADER_BYTES,
        )
    except Exception as e:
        raise _fail(
            "header_malformed", f"header is not a valid msgpack document ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(header, dict):
        raise _fail(
            "header_malformed", f"header must be a msgpack map, got {type(header).__name__}"
        )
    for k in header:
        if type(k) is not str:
            raise _fail("header_malformed", f"header keys must be strings, got {_short(k)}")
    return header


def _unpack_body(buf: memoryview) -> Any:
    n = len(buf)
    if n > MAX_BODY_BYTES:
        raise _fail("payload_too_large", f"msgpack body is {n} bytes, limit is {MAX_BODY_BYTES}")
    if n == 0:
        raise _fail("body_malformed", "msgpack body is empty")
    try:
        body = msgpack.unpackb(
            buf,
            raw=False,
            strict_map_key=True,
            ext_hook=_reject_ext,
            max_ext_len=0,
            max_bin_len=MAX_BODY_BYTES,
            max_str_len=MAX_BODY_BYTES,
            max_array_len=MAX_BODY_BYTES,
            max_map_len=MAX_BODY_BYTES,
        )
    except Exception as e:
        raise _fail(
            "body_malformed", f"body is not a valid msgpack document ({type(e).__name__}: {e})"
        ) from e
    if body is None:
        raise _fail("body_malformed", "body is nil; send an empty map instead")
    _check_doc(body, "body", "body_malformed")
    return body


def _require(header: dict[Any, Any], key: str) -> Any:
    try:
        return header[key]
    except KeyError:
        raise _fail("missing_field", f"header has no {key!r}") from None


def _forbid(header: dict[Any, Any], keys: Sequence[str], why: str) -> None:
    for k in keys:
        if k in header:
            raise _fail("bad_field", f"header field {k!r} is not allowed {why}")


def _decode_video(v: object) -> VideoSpec:
    if not isinstance(v, dict):
        raise _fail("bad_field", f"video must be a map, got {type(v).__name__}")
    extra = [k for k in v if k not in _VIDEO_KEYS]
    if extra:
        raise _fail("unknown_field", f"unknown video field(s) {_short(sorted(map(str, extra)))}")
    for k in _VIDEO_KEYS:
        if k not in v:
            raise _fail("missing_field", f"video has no {k!r}")
    codec = v["codec"]
    if type(codec) is not str or codec not in VIDEO_CODECS:
        raise _fail(
            "bad_field", f"video.codec must be one of {sorted(VIDEO_CODECS)}, got {_short(codec)}"
        )
    width = _check_int("video.width", v["width"], 1, MAX_VIDEO_DIM)
    height = _check_int("video.height", v["height"], 1, MAX_VIDEO_DIM)
    pix_fmt = v["pix_fmt"]
    if type(pix_fmt) is not str or _PIX_FMT_RE.fullmatch(pix_fmt) is None:
        raise _fail(
            "bad_field", f"video.pix_fmt must match [a-z0-9_]{{1,32}}, got {_short(pix_fmt)}"
        )
    fps = _check_positive_float("video.fps", v["fps"])
    keyframe = v["keyframe"]
    if type(keyframe) is not bool:
        raise _fail("bad_field", f"video.keyframe must be a bool, got {type(keyframe).__name__}")
    return VideoSpec(codec, width, height, pix_fmt, fps, keyframe)


def _decode_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise _fail("bad_shape", f"shape must be a list of integers, got {type(shape).__name__}")
    if not 1 <= len(shape) <= MAX_DIMS:
        raise _fail("bad_shape", f"shape must have 1-{MAX_DIMS} dimensions, got {len(shape)}")
    for d in shape:
        if type(d) is not int:
            raise _fail("bad_shape", f"shape entries must be integers, got {_short(shape)}")
        if not 0 <= d <= MAX_PAYLOAD_BYTES:
            raise _fail(
                "bad_shape",
                f"shape entries must be in [0, {MAX_PAYLOAD_BYTES}], got {_short(shape)}",
            )
    return tuple(shape)


def _decode(frames: object) -> Chunk:
    if isinstance(frames, (str, bytes, bytearray, memoryview)) or not isinstance(frames, Sequence):
        raise _fail("frame_count", f"expected a sequence of 3 frames, got {type(frames).__name__}")
    if len(frames) != 3:
        raise _fail("frame_count", f"expected 3 frames [topic, header, payload], got {len(frames)}")
    topic_buf = _as_bytes_view(frames[0], 0)
    header_buf = _as_bytes_view(frames[1], 1)
    payload = _as_bytes_view(frames[2], 2)

    # -- topic
    if not 0 < len(topic_buf) <= MAX_TOPIC_BYTES:
        raise _fail("topic", f"topic must be 1-{MAX_TOPIC_BYTES} bytes, got {len(topic_buf)}")
    try:
        topic = str(topic_buf, "utf-8")
    except UnicodeDecodeError as e:
        raise _fail("topic", f"topic is not valid UTF-8 ({e})") from None

    # -- header: version first (a newer peer may use fields this version does not know)
    header = _unpack_header(header_buf)
    v = _require(header, "v")
    if type(v) is not int or v != WIRE_VERSION:
        raise _fail("bad_version", f"header v must be {WIRE_VERSION}, got {_short(v)}")
    unknown = [k for k in header if k not in _HEADER_KEYS]
    if unknown:
        raise _fail("unknown_field", f"unknown header field(s) {_short(sorted(unknown))}")
    for k in _BASE_KEYS:
        _require(header, k)
    kind = _check_kind(header["kind"])
    stream = _check_stream(header["stream"])
    expected_topic = f"{kind}/{stream}"
    if topic != expected_topic:
        raise _fail(
            "topic_mismatch",
            f"topic frame is {_short(topic)} but the header says {expected_topic!r}",
        )
    seq = _check_int("seq", header["seq"], 0, _I64_MAX)
    t0_ns = _check_int("t0_ns", header["t0_ns"], _I64_MIN, _I64_MAX)
    enc = header["enc"]
    if type(enc) is not str or enc not in ENCODINGS:
        raise _fail("bad_field", f"enc must be one of {list(ENCODINGS)}, got {_short(enc)}")

    # -- optional field groups
    rate_hz: float | None = None
    channels: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    if kind in SIGNAL_KINDS:
        rate_hz = _check_positive_float("rate_hz", _require(header, "rate_hz"))
        channels = _check_labels("channels", _require(header, "channels"), allow_empty_items=False)
        units = _check_labels("units", _require(header, "units"), allow_empty_items=True)
    else:
        _forbid(header, ("rate_hz", "channels", "units"), f"for kind {kind!r}")
    video: VideoSpec | None = None
    if kind in VIDEO_KINDS:
        video = _decode_video(_require(header, "video"))
    else:
        _forbid(header, ("video",), f"for kind {kind!r}")
    meta: dict[str, Any] = {}
    if "meta" in header:
        meta = header["meta"]
        if not isinstance(meta, dict):
            raise _fail("bad_field", f"meta must be a map, got {type(meta).__name__}")
        _check_doc(meta, "meta", "bad_field")

    # -- payload
    data: np.ndarray | None = None
    body: Any = None
    packet: bytes | None = None
    shape: tuple[int, ...] | None = None
    if enc == "raw":
        dtype = _require(header, "dtype")
        if type(dtype) is not str or dtype not in _ITEMSIZE:
            raise _fail("bad_dtype", f"dtype must be one of {list(DTYPES)}, got {_short(dtype)}")
        shape = _decode_shape(_require(header, "shape"))
        _check_layout(kind, enc, shape, rate_hz, channels, units, video)
        n = len(payload)
        if n > MAX_PAYLOAD_BYTES:
            raise _fail("payload_too_large", f"payload is {n} bytes, limit is {MAX_PAYLOAD_BYTES}")
        need = math.prod(shape) * _ITEMSIZE[dtype]
        if need != n:
            raise _fail(
                "size_mismatch",
                f"payload is {n} bytes but shape {list(shape)} x {dtype} needs {need}",
            )
        data = np.frombuffer(payload, dtype=_NP_DTYPE[dtype]).reshape(shape)
        data.flags.writeable = False
    else:
        _forbid(header, ("dtype", "shape"), f"with enc {enc!r}")
        _check_layout(kind, enc, None, rate_hz, channels, units, video)
        if enc == "msgpack":
            body = _unpack_body(payload)
        else:
            n = len(payload)
            if n > MAX_PAYLOAD_BYTES:
                raise _fail(
                    "payload_too_large", f"payload is {n} bytes, limit is {MAX_PAYLOAD_BYTES}"
                )
            frame = frames[2]
            packet = frame if type(frame) is bytes else payload.tobytes()

    chunk = object.__new__(Chunk)
    set_ = object.__setattr__
    set_(chunk, "kind", kind)
    set_(chunk, "stream", stream)
    set_(chunk, "seq", seq)
    set_(chunk, "t0_ns", t0_ns)
    set_(chunk, "data", data)
    set_(chunk, "body", body)
    set_(chunk, "packet", packet)
    set_(chunk, "rate_hz", rate_hz)
    set_(chunk, "channels", channels)
    set_(chunk, "units", units)
    set_(chunk, "video", video)
    set_(chunk, "meta", meta)
    return chunk


def decode(frames: Sequence[Any]) -> Chunk:
    """Decode the three frames of one wire-v1 message into a :class:`Chunk`.

    Decoding is strict and total: any input that is not a valid message raises
    :class:`~telediag.errors.ProtocolError` whose ``reason`` is one of :data:`REASONS`; no other
    exception escapes. Raw arrays are read-only zero-copy views of the payload frame (keep the
    frame alive as long as the array), with exactly the dtype that was sent.

    Parameters
    ----------
    frames : sequence of bytes, memoryview or zmq.Frame
        ``[topic, header, payload]`` as received with ``recv_multipart``.

    Returns
    -------
    Chunk

    Raises
    ------
    ProtocolError
        With ``reason`` in :data:`REASONS` and a message saying what was expected and what came.

    Examples
    --------
    >>> import numpy as np
    >>> c = decode([b"hr/s", b"\\x86\\xa1v\\x01\\xa4kind\\xa2hr\\xa6stream\\xa1s"
    ...             b"\\xa3seq\\x00\\xa5t0_ns\\x00\\xa3enc\\xa7msgpack", b"\\x81\\xa3bpm\\x48"])
    >>> c.body
    {'bpm': 72}
    >>> decode([b"hr/s"])
    Traceback (most recent call last):
    ...
    telediag.errors.ProtocolError: frame_count: expected 3 frames [topic, header, payload], got 1
    """
    try:
        return _decode(frames)
    except ProtocolError as e:
        if e.stream is None:
            e.stream, e.seq = _peek_ids(frames)
        raise
    except Exception as e:  # safety net; the fuzz tests check it is never reached
        stream, seq = _peek_ids(frames)
        raise ProtocolError(
            "invalid_chunk", f"internal decoder error ({type(e).__name__}: {e})",
            stream=stream, seq=seq,
        ) from e


def _peek_ids(frames: object) -> tuple[str | None, int | None]:
    """Best-effort ``(stream, seq)`` of a rejected message, for the reject event; never raises.

    ``stream`` is returned only when it is a valid stream id (section 3 of PROTOCOL.md) and
    ``seq`` only when it is an int in ``[0, 2**63 - 1]``; anything else gives ``None``.
    """
    try:
        if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)) or len(frames) < 2:
            return None, None
        buf = _as_bytes_view(frames[1], 1)
        if not 0 < len(buf) <= _PEEK_HEADER_BYTES:  # an oversized header still names its stream
            return None, None
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True, ext_hook=_reject_ext,
                                 max_ext_len=0, max_bin_len=_PEEK_HEADER_BYTES,
                                 max_str_len=_PEEK_HEADER_BYTES, max_array_len=_PEEK_HEADER_BYTES,
                                 max_map_len=_PEEK_HEADER_BYTES)
        if not isinstance(header, dict):
            return None, None
        stream: str | None = None
        seq: int | None = None
        try:
            stream = _check_stream(header.get("stream"))
        except ProtocolError:
            stream = None
        raw_seq = header.get("seq")
        if type(raw_seq) is int and 0 <= raw_seq <= _I64_MAX:
            seq = raw_seq
        return stream, seq
    except Exception:  # noqa: BLE001 - best effort only
        return None, None


def physical(chunk: Chunk) -> np.ndarray:
    """The samples of a signal chunk in physical units (float64), per PROTOCOL.md section 6.1.

    An integer stream MAY carry ``meta.gain`` and ``meta.baseline`` (one number per channel,
    WFDB's convention): ``physical = (adu - baseline) / gain``, in the unit ``units[j]`` names.
    Without ``gain`` the samples are returned as they are (as float64); ``baseline`` defaults
    to 0. Float streams are returned as they are (their ``gain`` would be ignored).

    Raises
    ------
    ProtocolError
        ``bad_field`` when ``gain``/``baseline`` is not a list of ``len(channels)`` finite
        numbers, or a gain is 0; ``invalid_chunk`` when ``chunk`` is not a signal.

    Examples
    --------
    >>> c = Chunk.signal("ecg", "s", 0, 0, np.array([[1224], [1024]], "<i2"), 360.0, ["II"], ["mV"],
    ...                  meta={"gain": [200.0], "baseline": [1024]})
    >>> physical(c).ravel().tolist()
    [1.0, 0.0]
    """
    if chunk.kind not in SIGNAL_KINDS or chunk.data is None:
        raise ProtocolError("invalid_chunk", f"physical() needs a signal chunk, got kind {chunk.kind!r}")
    x = np.asarray(chunk.data)
    if x.dtype.kind == "f" or "gain" not in chunk.meta:
        return x.astype(np.float64)
    n = len(chunk.channels)

    def per_channel(key: str, default: float) -> np.ndarray:
        v = chunk.meta.get(key, [default] * n)
        ok = (isinstance(v, list) and len(v) == n
              and all(type(g) in (int, float) and math.isfinite(g) for g in v))
        if not ok:
            raise ProtocolError("bad_field", f"meta.{key} must be a list of {n} finite numbers (one per "
                                             f"channel), got {_short(v)}")
        return np.asarray(v, np.float64)

    gain, base = per_channel("gain", 1.0), per_channel("baseline", 0.0)
    if np.any(gain == 0):
        raise ProtocolError("bad_field", f"meta.gain must not contain 0, got {gain.tolist()}")
    return (x.astype(np.float64) - base) / gain


def to_physical(chunk: Chunk) -> Chunk:
    """``chunk`` with its samples in physical units (float64, :func:`physical`) and no
    ``gain``/``baseline`` left in ``meta``; a chunk without ``gain`` is returned as it is.

    Raises
    ------
    ProtocolError
        As :func:`physical`.
    """
    if "gain" not in chunk.meta and "baseline" not in chunk.meta:
        return chunk
    x = physical(chunk)
    meta = {k: v for k, v in chunk.meta.items() if k not in ("gain", "baseline")}
    assert chunk.rate_hz is not None
    return Chunk.signal(chunk.kind, chunk.stream, chunk.seq, chunk.t0_ns, x, chunk.rate_hz,
                        chunk.channels, chunk.units, meta=meta)
