"""Inference API v1: message layout, error codes, limits and strict validation.

The normative description is ``api/API.md``; this module is the reference implementation
shared by the ZeroMQ server (:mod:`telediag.api.server`), the HTTP gateway
(:mod:`telediag.api.http`) and the Python client (:mod:`telediag.api.client`).

ZeroMQ request (client DEALER/REQ -> server ROUTER)::

    [identity, b"", header, payload_0, payload_1, ...]

``header`` is a msgpack map ``{"v": 1, "op": str, "id": str|int, "deadline_ms": number,
"params": {...}, "dtype": str, "shape": [..], "format": str, "inputs": [...]}``; payload
frames are raw little-endian arrays (``dtype``/``shape`` in the header, as in wire v1) or
encoded images (PNG/JPEG bytes).  The reply is::

    [identity, b"", header, payload_0, ...]

with ``header = {"v": 1, "id": <echo>, "ok": bool, "error": {"code", "message"} | None,
"result": {...} | None, "timing": {"queue_ms", "run_ms"}}``.

Nothing is ever unpickled: headers are msgpack without extension types, payloads are read with
:func:`numpy.frombuffer`.

Examples
--------
>>> h = pack_header({"v": 1, "op": "health", "id": "1"})
>>> unpack_header(h, max_bytes=1024)["op"]
'health'
>>> err = ApiError("bad_request", "params.fs must be a number, got str 'x'")
>>> err.to_dict()["code"]
'bad_request'
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np

from telediag.errors import TelediagError

__all__ = [
    "API_VERSION",
    "DTYPES",
    "ERROR_CODES",
    "IMAGE_FORMATS",
    "ApiError",
    "Limits",
    "Param",
    "array_from_json",
    "array_to_json",
    "decode_array",
    "pack_header",
    "short",
    "unpack_header",
    "validate_params",
]

API_VERSION: Final = 1

#: Every error code a reply can carry: code -> (HTTP status, meaning).
ERROR_CODES: Final[dict[str, tuple[int, str]]] = {
    "bad_request": (400, "malformed frames, header, parameter or payload; the message names the field, "
                         "the expected and the actual value"),
    "unsupported_version": (400, "header 'v' is not a version this server speaks"),
    "invalid_input": (422, "well-formed request the analysis cannot process (e.g. signal too short)"),
    "unknown_op": (404, "no such operation"),
    "unknown_model": (404, "no model of that name in the registry"),
    "payload_too_large": (413, "request, payload or image larger than the server's limits"),
    "busy": (429, "too many requests queued; retry later (the client retries with back-off)"),
    "deadline_exceeded": (504, "the request could not finish before its deadline_ms"),
    "unavailable": (503, "the operation exists but its module or model is not installed"),
    "model_error": (503, "the model was refused at load (hash mismatch, input contract)"),
    "internal": (500, "unexpected server error (a bug); the message names the exception type"),
}

#: Little-endian array dtypes accepted in payloads (the wire v1 set).
DTYPES: Final = ("<f4", "<f8", "<i2", "<i4", "<i8", "|u1", "<u2", "|i1")
_NP_DTYPE: Final = {d: np.dtype(d) for d in DTYPES}
_DTYPE_ALIASES: Final = {
    "float32": "<f4", "float64": "<f8", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "uint8": "|u1", "uint16": "<u2", "int8": "|i1", "f4": "<f4", "f8": "<f8", "i2": "<i2",
    "i4": "<i4", "i8": "<i8", "u1": "|u1", "u2": "<u2", "i1": "|i1", "<u1": "|u1", "<i1": "|i1",
}
IMAGE_FORMATS: Final = ("png", "jpeg", "raw")
MAX_DIMS: Final = 4
MAX_DEPTH: Final = 16


class ApiError(TelediagError):
    """An API failure with a machine-readable ``code`` (a key of :data:`ERROR_CODES`).

    Raised by validation on the server, and by :class:`telediag.api.client.InferenceClient`
    when a reply says ``ok: false`` (``code`` is then the server's) or when no reply came in
    time (``code == "timeout"``, client side only), or when the HTTP client could not connect at
    all (``code == "unreachable"``: connection refused, unknown host; client side only).

    Examples
    --------
    >>> ApiError("unknown_op", "no op 'x'").http_status
    404
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """HTTP status of this error (500 for codes the server does not know)."""
        return ERROR_CODES.get(self.code, (500, ""))[0]

    def to_dict(self) -> dict[str, str]:
        """``{"code", "message"}`` as carried in a reply."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Limits:
    """Server limits (bytes and counts); a request over any is refused, never truncated.

    Attributes
    ----------
    max_header_bytes : int
        Largest msgpack header (ZeroMQ) accepted.
    max_payload_bytes : int
        Largest total payload (decoded bytes of all arrays/images) of one request.
    max_image_pixels : int
        Largest decoded image (width x height).
    max_http_body_bytes : int
        Largest HTTP request body (JSON text); arrays as JSON text take ~3-20 bytes a number.
    max_frames : int
        Most payload frames in one ZeroMQ request.
    """

    max_header_bytes: int = 64 << 10
    max_payload_bytes: int = 32 << 20
    max_image_pixels: int = 4096 * 4096
    max_http_body_bytes: int = 96 << 20
    max_frames: int = 16


def short(value: Any, limit: int = 60) -> str:
    """A bounded ``repr`` of a value for error messages (type name included).

    Examples
    --------
    >>> short("x" * 100, 10)
    "str 'xxxxxxxx…"
    """
    try:
        r = repr(value)
    except Exception:  # pragma: no cover - repr of a decoded msgpack value cannot fail
        r = "?"
    if len(r) > limit:
        r = r[: limit - 1] + "…"
    return f"{type(value).__name__} {r}"


# --------------------------------------------------------------------------- msgpack


def _reject_ext(code: int, data: bytes) -> Any:
    raise ApiError("bad_request", f"header: msgpack extension types are not allowed (got ext {code})")


def _check_depth(obj: Any, depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise ApiError("bad_request", f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ApiError("bad_request", f"{where}: map keys must be strings, got {short(k)}")
            _check_depth(v, depth + 1, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_depth(v, depth + 1, f"{where}[{i}]")


def unpack_header(buf: bytes | memoryview, *, max_bytes: int) -> dict[str, Any]:
    """Decode a msgpack header strictly: a map with string keys, no extension types.

    Raises
    ------
    ApiError
        ``payload_too_large`` over ``max_bytes``; ``bad_request`` for anything malformed.

    Examples
    --------
    >>> unpack_header(pack_header({"v": 1}), max_bytes=64)
    {'v': 1}
    """
    n = len(buf)
    if n > max_bytes:
        raise ApiError("payload_too_large", f"header is {n} bytes, the limit is {max_bytes}")
    if n == 0:
        raise ApiError("bad_request", "header frame is empty (expected a msgpack map)")
    try:
        doc = msgpack.unpackb(
            bytes(buf), raw=False, strict_map_key=True, ext_hook=_reject_ext, use_list=True,
            max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=max_bytes, max_map_len=max_bytes,
        )
    except ApiError:
        raise
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise ApiError("bad_request", f"header is not valid msgpack ({type(e).__name__}: {short(str(e), 80)})") from e
    if not isinstance(doc, dict):
        raise ApiError("bad_request", f"header must be a msgpack map, got {type(doc).__name__}")
    _check_depth(doc, 0, "header")
    return doc


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} in a header")


def pack_header(doc: Mapping[str, Any]) -> bytes:
    """Encode a header map as msgpack (numpy scalars/arrays become plain numbers/lists).

    Examples
    --------
    >>> len(pack_header({"v": 1})) > 0
    True
    """
    return msgpack.packb(doc, use_bin_type=True, default=_default)


# --------------------------------------------------------------------------- arrays


def normalize_dtype(value: Any, where: str) -> np.dtype:
    """Resolve a wire dtype string (``"<f4"``, ``"float32"``, ...) or raise ``bad_request``.

    Examples
    --------
    >>> normalize_dtype("float32", "dtype")
    dtype('float32')
    """
    if not isinstance(value, str):
        raise ApiError("bad_request", f"{where} must be a dtype string such as '<f4', got {short(value)}")
    d = _DTYPE_ALIASES.get(value, value)
    if d not in _NP_DTYPE:
        raise ApiError("bad_request", f"{where} must be one of {list(DTYPES)} (little-endian), got {value!r}")
    return _NP_DTYPE[d]


def check_shape(value: Any, where: str) -> tuple[int, ...]:
    """Validate a shape list (1..4 non-negative ints) or raise ``bad_request``."""
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_DIMS:
        raise ApiError("bad_request", f"{where} must be a list of 1 to {MAX_DIMS} sizes, got {short(value)}")
    out = []
    for i, s in enumerate(value):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0 or s > 1 << 40:
            raise ApiError("bad_request", f"{where}[{i}] must be a non-negative int, got {short(s)}")
        out.append(int(s))
    return tuple(out)


def decode_array(
    buf: bytes | memoryview, dtype: Any, shape: Any, where: str, *, max_bytes: int
) -> np.ndarray:
    """View a raw little-endian payload as an array (zero copy, read-only).

    Raises
    ------
    ApiError
        ``bad_request`` for a bad dtype/shape or a size that is not shape x itemsize;
        ``payload_too_large`` over ``max_bytes``.

    Examples
    --------
    >>> decode_array(np.arange(4, dtype="<f4").tobytes(), "<f4", [2, 2], "signal", max_bytes=64)
    array([[0., 1.],
           [2., 3.]], dtype=float32)
    """
    dt = normalize_dtype(dtype, f"{where}.dtype")
    shp = check_shape(shape, f"{where}.shape")
    expected = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
    if expected > max_bytes:
        raise ApiError("payload_too_large", f"{where} of shape {list(shp)} {dt.str} is {expected} bytes, "
                                            f"the limit is {max_bytes}")
    if len(buf) != expected:
        raise ApiError("bad_request", f"{where}: payload is {len(buf)} bytes, expected {expected} "
                                      f"(shape {list(shp)} x {dt.itemsize}-byte {dt.str})")
    return np.frombuffer(buf, dtype=dt).reshape(shp)


def array_from_json(obj: Any, where: str, *, max_bytes: int) -> np.ndarray:
    """An array from JSON: nested lists of numbers, or ``{"b64", "dtype", "shape"}``.

    Nested lists are read as float64; ``b64`` is standard base64 of the raw little-endian bytes.

    Examples
    --------
    >>> array_from_json([[1, 2], [3, 4]], "signal", max_bytes=1024).shape
    (2, 2)
    >>> a = np.arange(3, dtype="<i2")
    >>> array_from_json(array_to_json(a), "x", max_bytes=64).tolist()
    [0, 1, 2]
    """
    if isinstance(obj, dict):
        extra = set(obj) - {"b64", "dtype", "shape"}
        if extra:
            raise ApiError("bad_request", f"{where}: unknown keys {sorted(extra)} (expected b64, dtype, shape)")
        for k in ("b64", "dtype", "shape"):
            if k not in obj:
                raise ApiError("bad_request", f"{where}.{k} is required for a base64 array")
        raw = b64decode(obj["b64"], f"{where}.b64")
        return decode_array(raw, obj["dtype"], obj["shape"], where, max_bytes=max_bytes)
    if not isinstance(obj, list):
        raise ApiError("bad_request", f"{where} must be an array of numbers (or of rows) or an object "
                                      f"{{b64, dtype, shape}}, got {short(obj)}")
    _check_numbers(obj, where, 0)
    try:
        arr = np.array(obj, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as e:
        raise ApiError("bad_request", f"{where}: rows must all have the same length ({short(str(e), 80)})") from e
    if arr.ndim == 0 or arr.ndim > MAX_DIMS:
        raise ApiError("bad_request", f"{where} must have 1 to {MAX_DIMS} dimensions, got {arr.ndim}")
    if arr.nbytes > max_bytes:
        raise ApiError("payload_too_large", f"{where} is {arr.nbytes} bytes as float64, the limit is {max_bytes}")
    return arr


def _check_numbers(obj: list[Any], where: str, depth: int) -> None:
    if depth >= MAX_DIMS:
        raise ApiError("bad_request", f"{where} is nested deeper than {MAX_DIMS} dimensions")
    for i, v in enumerate(obj):
        if isinstance(v, list):
            _check_numbers(v, f"{where}[{i}]", depth + 1)
        elif isinstance(v, bool) or not isinstance(v, int | float) or v is None:
            raise ApiError("bad_request", f"{where}[{i}] must be a number, got {short(v)}")


def array_to_json(a: np.ndarray) -> dict[str, Any]:
    """``{"b64", "dtype", "shape"}`` of an array (little-endian; bool as ``|u1``).

    Examples
    --------
    >>> array_to_json(np.zeros(2, dtype="<f4"))["shape"]
    [2]
    """
    arr = np.asarray(a)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return {"b64": base64.b64encode(arr.tobytes()).decode("ascii"), "dtype": arr.dtype.str,
            "shape": list(arr.shape)}


def b64decode(value: Any, where: str) -> bytes:
    """Strict standard base64 (padding required) or raise ``bad_request``."""
    if not isinstance(value, str):
        raise ApiError("bad_request", f"{where} must be a base64 string, got {short(value)}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise ApiError("bad_request", f"{where} is not valid base64 ({short(str(e), 60)})") from e


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True, slots=True)
class Param:
    """One declared operation parameter: validation and its OpenAPI schema in one place.

    ``kind`` is ``"number"``, ``"integer"``, ``"string"``, ``"boolean"``, ``"strings"`` (list
    of str) or ``"index_or_name"`` (int or str).

    Examples
    --------
    >>> validate_params({"fs": 360}, [Param("fs", "number", required=True, minimum=125, maximum=2000)], "params")
    {'fs': 360.0}
    """

    name: str
    kind: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    max_len: int = 256
    doc: str = ""
    example: Any = None

    def json_schema(self) -> dict[str, Any]:
        """The OpenAPI/JSON-schema fragment of this parameter."""
        s: dict[str, Any]
        if self.kind == "number":
            s = {"type": "number"}
        elif self.kind == "integer":
            s = {"type": "integer"}
        elif self.kind == "boolean":
            s = {"type": "boolean"}
        elif self.kind == "string":
            s = {"type": "string", "maxLength": self.max_len}
            if self.choices:
                s["enum"] = list(self.choices)
        elif self.kind == "strings":
            s = {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": self.max_len}
        elif self.kind == "index_or_name":
            s = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 63},
                           {"type": "string", "minLength": 1, "maxLength": 64}]}
        else:  # pragma: no cover - programming error
            raise ValueError(self.kind)
        if self.minimum is not None and self.kind in ("number", "integer"):
            s["minimum"] = self.minimum
        if self.maximum is not None and self.kind in ("number", "integer"):
            s["maximum"] = self.maximum
        if self.doc:
            s["description"] = self.doc
        if self.default is not None:
            s["default"] = self.default
        return s

    def check(self, value: Any, where: str) -> Any:
        """Return the validated (and normalised) value or raise ``bad_request``."""
        w = f"{where}.{self.name}"
        if self.kind in ("number", "integer"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ApiError("bad_request", f"{w} must be a {self.kind}, got {short(value)}")
            if not math.isfinite(float(value)):
                raise ApiError("bad_request", f"{w} must be finite, got {value!r}")
            if self.kind == "integer":
                if float(value) != round(float(value)):
                    raise ApiError("bad_request", f"{w} must be a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
            lo, hi = self.minimum, self.maximum
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ApiError("bad_request", f"{w} must be in [{lo:g}, {hi:g}], got {value!r}"
                               if lo is not None and hi is not None else
                               f"{w} must be >= {lo}, got {value!r}" if lo is not None else
                               f"{w} must be <= {hi}, got {value!r}")
            return value
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise ApiError("bad_request", f"{w} must be true or false, got {short(value)}")
            return value
        if self.kind == "string":
            if not isinstance(value, str) or len(value) > self.max_len:
                raise ApiError("bad_request", f"{w} must be a string of at most {self.max_len} characters, "
                                              f"got {short(value)}")
            if self.choices and value not in self.choices:
                raise ApiError("bad_request", f"{w} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind == "strings":
            if not isinstance(value, list) or len(value) > self.max_len or not all(
                isinstance(v, str) and len(v) <= 64 for v in value
            ):
                raise ApiError("bad_request", f"{w} must be a list of at most {self.max_len} strings "
                                              f"(<= 64 characters each), got {short(value)}")
            return tuple(value)
        if self.kind == "index_or_name":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ApiError("bad_request", f"{w} must be a channel index or name, got {short(value)}")
            if isinstance(value, str) and not 1 <= len(value) <= 64:
                raise ApiError("bad_request", f"{w} must be 1 to 64 characters, got {short(value)}")
            return value
        raise AssertionError(self.kind)  # pragma: no cover


def validate_params(params: Any, spec: Sequence[Param], where: str = "params") -> dict[str, Any]:
    """Check a params map against its declaration: unknown keys, types, ranges, required.

    Raises
    ------
    ApiError
        ``bad_request`` naming the field, the expected and the actual value.

    Examples
    --------
    >>> validate_params({}, [Param("x", "integer", default=3)])
    {'x': 3}
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError("bad_request", f"{where} must be a map, got {short(params)}")
    known = {p.name: p for p in spec}
    extra = sorted(set(params) - set(known))
    if extra:
        raise ApiError("bad_request", f"{where}: unknown parameter(s) {extra}; expected some of {sorted(known)}")
    out: dict[str, Any] = {}
    for p in spec:
        if p.name in params and params[p.name] is not None:
            out[p.name] = p.check(params[p.name], where)
        elif p.required:
            raise ApiError("bad_request", f"{where}.{p.name} is required ({p.doc or p.kind})")
        else:
            out[p.name] = p.default
    return out


@dataclass(slots=True)
class Timing:
    """Per-request server timing (ms), returned in every reply header."""

    queue_ms: float = 0.0
    run_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"queue_ms": round(self.queue_ms, 3), "run_ms": round(self.run_ms, 3)}


@dataclass(slots=True)
class Reply:
    """A decoded reply: ``result`` (a dict) and binary ``payloads`` (mask PNG, raw arrays)."""

    id: Any
    ok: bool
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    payloads: list[bytes | memoryview] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {"v": API_VERSION, "id": self.id, "ok": self.ok, "error": self.error,
                "result": self.result, "timing": self.timing}

    @classmethod
    def failure(cls, req_id: Any, err: ApiError, timing: Timing | None = None) -> Reply:
        return cls(req_id, False, None, err.to_dict(), [], (timing or Timing()).to_dict())
